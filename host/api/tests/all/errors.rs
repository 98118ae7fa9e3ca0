//! Authentication, unknown paths and methods, body limits, rate limits, path normalisation.

use axum::body::Body;
use axum::http::Request;
use callflow_api::{ApiConfig, RateLimit};

use crate::{TestApi, basic};

#[tokio::test]
async fn bad_or_missing_credentials_get_401_20003() {
    let api = TestApi::new().await;
    let path = format!("/2010-04-01/Accounts/{}.json", api.root.sid);
    let r = api.call("GET", &path, None, &[]).await;
    r.assert_error(401, 20003);
    assert!(r.headers.contains_key("www-authenticate"));
    let wrong = Request::get(&path)
        .header("Authorization", basic(&api.root.sid, "nope"))
        .body(Body::empty())
        .unwrap();
    api.raw(wrong).await.assert_error(401, 20003);
    let unknown = Request::get(&path)
        .header(
            "Authorization",
            basic("AC00000000000000000000000000000000", &api.root.auth_token),
        )
        .body(Body::empty())
        .unwrap();
    api.raw(unknown).await.assert_error(401, 20003);
    let garbage = Request::get(&path)
        .header("Authorization", "Basic %%%")
        .body(Body::empty())
        .unwrap();
    api.raw(garbage).await.assert_error(401, 20003);
}

#[tokio::test]
async fn unknown_paths_404_and_wrong_methods_405_in_twilios_body() {
    let api = TestApi::new().await;
    api.get("/2010-04-01/Nope.json", &api.root)
        .await
        .assert_error(404, 20404);
    let path = format!("/2010-04-01/Accounts/{}/Calls.json", api.root.sid);
    api.call("DELETE", &path, Some(&api.root), &[])
        .await
        .assert_error(405, 20004);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let api = TestApi::with_config(ApiConfig {
        max_body_bytes: 1_000,
        ..Default::default()
    })
    .await;
    let path = format!("/2010-04-01/Accounts/{}/Calls.json", api.root.sid);
    let big = "x".repeat(2_000);
    api.post(&path, &api.root, &[("Twiml", &big)])
        .await
        .assert_error(413, 20001);
    // a declared Content-Length over the bound is refused before reading
    let req = Request::post(&path)
        .header("Authorization", basic(&api.root.sid, &api.root.auth_token))
        .header("Content-Length", "2000")
        .body(Body::from(big))
        .unwrap();
    api.raw(req).await.assert_error(413, 20001);
}

#[tokio::test]
async fn rate_limit_is_per_account() {
    let limit = RateLimit {
        per_second: 0.001,
        burst: 3.0,
    };
    let api = TestApi::with_config(ApiConfig {
        rate_limit: Some(limit),
        ..Default::default()
    })
    .await;
    let sub = api.account().await;
    let path = format!("/2010-04-01/Accounts/{}.json", api.root.sid);
    for _ in 0..3 {
        assert_eq!(api.get(&path, &api.root).await.status, 200);
    }
    api.get(&path, &api.root).await.assert_error(429, 20429);
    assert_eq!(
        api.get(&format!("/2010-04-01/Accounts/{}.json", sub.sid), &sub)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn double_slash_from_a_trailing_slash_base_url_routes_normally() {
    let api = TestApi::new().await;
    let r = api
        .get(
            &format!("//2010-04-01/Accounts/{}.json", api.root.sid),
            &api.root,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["sid"], api.root.sid.as_str());
}

#[tokio::test]
async fn health_metrics_and_openapi_answer() {
    let api = TestApi::new().await;
    assert_eq!(api.call("GET", "/health", None, &[]).await.status, 200);
    assert_eq!(api.call("GET", "/metrics", None, &[]).await.status, 200);
    let spec = api.call("GET", "/openapi.json", None, &[]).await.json();
    assert!(spec["paths"]["/2010-04-01/Accounts/{AccountSid}/Calls.json"]["post"].is_object());
    assert!(
        spec["paths"]
            .get("/2010-04-01/Accounts/{AccountSid}/Messages.json")
            .is_none()
    );
}

#[tokio::test]
async fn an_unreachable_database_is_a_503_with_retry_after_not_a_500() {
    let api = TestApi::new().await;
    let path = format!("/2010-04-01/Accounts/{}/Calls.json", api.root.sid);
    assert_eq!(api.get(&path, &api.root).await.status, 200);
    // the database goes away (its pool closes: every query fails as it would on a lost server)
    api.store.close().await;
    let r = api.get(&path, &api.root).await;
    r.assert_error(503, 20503);
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
}
