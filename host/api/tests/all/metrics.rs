//! `/metrics`: open without a configured token; with one, only `Authorization: Bearer <token>`
//! reads it, and a refusal shows none of the figures.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use callflow_api::ApiConfig;
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::{Resp, TestApi, basic};

const TOKEN: &str = "scrape-s3cret";

/// An API whose `/metrics` renders one counter, guarded by `token` when given.
async fn api(token: Option<&str>) -> TestApi {
    let recorder = PrometheusBuilder::new().build_recorder();
    ::metrics::with_local_recorder(&recorder, || {
        ::metrics::counter!("callflow_test_marker_total").increment(1);
    });
    let config = ApiConfig {
        metrics_token: token.map(str::to_owned),
        ..Default::default()
    };
    TestApi::with_metrics(config, Some(recorder.handle())).await
}

async fn scrape(api: &TestApi, authorization: Option<&str>) -> Resp {
    let mut req = Request::builder().method("GET").uri("/metrics");
    if let Some(a) = authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    api.raw(req.body(Body::empty()).unwrap()).await
}

fn text(r: &Resp) -> &str {
    std::str::from_utf8(&r.body).unwrap()
}

#[track_caller]
fn assert_refused(r: &Resp) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", text(r));
    assert_eq!(
        r.headers[header::WWW_AUTHENTICATE],
        r#"Bearer realm="callflow metrics""#
    );
    assert!(text(r).contains("Bearer"), "{}", text(r));
    assert!(
        !text(r).contains("callflow_test_marker_total"),
        "{}",
        text(r)
    );
    assert!(!text(r).contains(TOKEN), "{}", text(r));
}

#[tokio::test]
async fn open_without_a_token() {
    let api = api(None).await;
    let r = scrape(&api, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        text(&r).contains("callflow_test_marker_total 1"),
        "{}",
        text(&r)
    );
    // a stray Authorization header does not close an open /metrics
    assert_eq!(scrape(&api, Some("Bearer whatever")).await.status, 200);
}

#[tokio::test]
async fn a_token_refuses_scrapes_without_it_or_with_a_wrong_one() {
    let api = api(Some(TOKEN)).await;
    assert_refused(&scrape(&api, None).await);
    assert_refused(&scrape(&api, Some("Bearer wrong-token")).await);
    assert_refused(&scrape(&api, Some("Bearer scrape-s3cre")).await);
    assert_refused(&scrape(&api, Some("Bearer scrape-s3cretX")).await);
    assert_refused(&scrape(&api, Some(&format!("Basic {TOKEN}"))).await);
    assert_refused(&scrape(&api, Some(TOKEN)).await);
    // the root account's own credentials are not the metrics token
    let root = basic(&api.root.sid, &api.root.auth_token);
    assert_refused(&scrape(&api, Some(&root)).await);
}

#[tokio::test]
async fn the_right_token_reads_the_metrics() {
    let api = api(Some(TOKEN)).await;
    let r = scrape(&api, Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    assert!(
        text(&r).contains("callflow_test_marker_total 1"),
        "{}",
        text(&r)
    );
    // the scheme is case-insensitive (RFC 9110), the token is not
    let r = scrape(&api, Some(&format!("bearer {TOKEN}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    // the other open routes stay open
    assert_eq!(api.call("GET", "/health", None, &[]).await.status, 200);
}

#[test]
fn debug_never_shows_the_token() {
    let config = ApiConfig {
        metrics_token: Some(TOKEN.into()),
        ..Default::default()
    };
    let dbg = format!("{config:?}");
    assert!(!dbg.contains(TOKEN), "{dbg}");
    assert!(dbg.contains("metrics_token: Some(\"***\")"), "{dbg}");
}
