//! `/openapi.json` against the router: every route served is described, every route described is
//! served, each described operation reaches a handler that asks for the credentials the document
//! says it needs, and every `$ref` in the document resolves.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use serde_json::Value;

use crate::TestApi;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// What the router's fallback answers for a path it does not serve.
const NO_ROUTE: &str = "The requested resource path was not found";

/// A route as the comparison reads it: its segments, each path parameter (with any suffix it
/// carries, as Twilio's `{Sid}.json` does) as `{}`, without a final `.json` (the router answers
/// a collection with and without it, and a single resource's parameter takes it).
fn shape(path: &str) -> String {
    let path = path.strip_suffix(".json").unwrap_or(path);
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "{}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every `(path, method)` the document describes, the method upper-case.
fn described(doc: &Value) -> Vec<(String, String)> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                ops.push((path.clone(), method.to_ascii_uppercase()));
            }
        }
    }
    ops
}

async fn document(api: &TestApi) -> Value {
    let r = api.call("GET", "/openapi.json", None, &[]).await;
    assert_eq!(r.status, 200);
    r.json()
}

#[tokio::test]
async fn the_document_describes_exactly_the_routes_served() {
    let api = TestApi::new().await;
    let doc = document(&api).await;
    let served: BTreeSet<(String, String)> = callflow_api::served_routes()
        .into_iter()
        .map(|(path, method)| (shape(&path), method.to_string()))
        .collect();
    let described: BTreeSet<(String, String)> = described(&doc)
        .into_iter()
        .map(|(path, method)| (shape(&path), method))
        .collect();
    let undescribed: Vec<_> = served.difference(&described).collect();
    assert!(
        undescribed.is_empty(),
        "served but not in /openapi.json (describe them in host/api/openapi/callflow.json and run build.py): {undescribed:#?}"
    );
    let unserved: Vec<_> = described.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "in /openapi.json but not served: {unserved:#?}"
    );
}

/// Each operation, sent as described without credentials, reaches a route (no fallback 404, no
/// 405); one the document says needs credentials answers 401, one that needs none does not.
#[tokio::test]
async fn every_described_operation_reaches_its_handler() {
    let api = TestApi::new().await;
    let doc = document(&api).await;
    for (path, method) in described(&doc) {
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        let security = op.get("security").unwrap_or(&doc["security"]);
        let open = security.as_array().is_none_or(|alternatives| {
            alternatives.is_empty()
                || alternatives
                    .iter()
                    .any(|a| a.as_object().is_some_and(|a| a.is_empty()))
        });
        // any value reaches the handler: credentials are checked before a SID is looked up
        let uri: String = path
            .split('/')
            .map(|segment| match segment.find('}') {
                Some(end) if segment.starts_with('{') => {
                    format!("XX00000000000000000000000000000000{}", &segment[end + 1..])
                }
                _ => segment.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/");
        let req = Request::builder()
            .method(method.as_str())
            .uri(&uri)
            .body(Body::empty())
            .unwrap();
        let r = api.raw(req).await;
        let body = String::from_utf8_lossy(&r.body);
        assert_ne!(r.status, 405, "{method} {uri}: {body}");
        assert!(
            !(r.status == 404 && body.contains(NO_ROUTE)),
            "{method} {uri}: no route"
        );
        if open {
            assert_ne!(r.status, 401, "{method} {uri} needs no credentials: {body}");
        } else {
            r.assert_error(401, 20003);
        }
    }
}

#[test]
fn shapes_ignore_parameter_names_and_the_json_suffix() {
    assert_eq!(
        shape("/2010-04-01/Accounts/{Sid}.json"),
        shape("/2010-04-01/Accounts/{account}")
    );
    assert_eq!(
        shape("/v1/Accounts/{account}/Callouts.json"),
        "/v1/Accounts/{}/Callouts"
    );
    assert_eq!(
        shape("/v1/Accounts/{AccountSid}/Callouts/{CalloutSid}/Results.csv"),
        "/v1/Accounts/{}/Callouts/{}/Results.csv"
    );
}

#[tokio::test]
async fn every_reference_in_the_document_resolves() {
    fn walk(node: &Value, doc: &Value, broken: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v.as_str()) {
                        ("$ref", Some(target)) => {
                            let found = target
                                .strip_prefix('#')
                                .and_then(|pointer| doc.pointer(pointer));
                            if found.is_none() {
                                broken.push(target.to_owned());
                            }
                        }
                        _ => walk(v, doc, broken),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, doc, broken)),
            _ => {}
        }
    }
    let api = TestApi::new().await;
    let doc = document(&api).await;
    let mut broken = Vec::new();
    walk(&doc, &doc, &mut broken);
    assert!(broken.is_empty(), "unresolved references: {broken:?}");
}
