//! The API through its router, without a socket: breadth of behaviour, Twilio's shapes and codes.

mod accounts;
mod callouts;
mod calls;
mod errors;
mod metrics;
mod numbers;
mod openapi;
mod plugins;
mod recordings;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use callflow_api::{ApiConfig, ApiParts, ApiState};
use callflow_engine::webhook::{WebhookClient, WebhookConfig};
use callflow_engine::{Engine, Outbox, OutboxConfig};
use callflow_store::{Account, Store};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use tower::ServiceExt;

pub struct TestApi {
    pub store: Store,
    pub root: Account,
    pub dir: tempfile::TempDir,
    state: ApiState,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts a Twilio error body with this HTTP status and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: u64) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["status"], status, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_eq!(
            v["more_info"],
            format!("https://www.twilio.com/docs/errors/{code}")
        );
    }
}

impl TestApi {
    pub async fn new() -> Self {
        Self::with_config(ApiConfig::default()).await
    }

    pub async fn with_config(config: ApiConfig) -> Self {
        Self::with_metrics(config, None).await
    }

    /// With a Prometheus handle behind `/metrics` (none by default: the body is empty).
    pub async fn with_metrics(config: ApiConfig, metrics: Option<PrometheusHandle>) -> Self {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let (root, _) = store.ensure_root(None, 1_000).await.unwrap();
        let client = WebhookClient::new(WebhookConfig::default()).unwrap();
        let outbox = Outbox::new(store.clone(), client, OutboxConfig::default());
        let engine = Engine::new(store.clone(), outbox);
        let dir = tempfile::tempdir().unwrap();
        let parts = ApiParts {
            store: store.clone(),
            engine,
            runtime: runtime(),
            blobs: callflow_engine::blobs::Blobs::folder(dir.path()).unwrap(),
            metrics,
        };
        let state = ApiState::new(parts, config);
        TestApi {
            store,
            root,
            dir,
            state,
        }
    }

    /// A subaccount of root.
    pub async fn account(&self) -> Account {
        self.store
            .create_account(Some(&self.root.sid), "sub", 2_000)
            .await
            .unwrap()
    }

    pub async fn raw(&self, req: Request<Body>) -> Resp {
        let resp = callflow_api::service(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        who: Option<&Account>,
        form: &[(&str, &str)],
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(a) = who {
            req = req.header("Authorization", basic(&a.sid, &a.auth_token));
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        if !form.is_empty() {
            req = req.header("Content-Type", "application/x-www-form-urlencoded");
        }
        self.raw(req.body(Body::from(body)).unwrap()).await
    }

    pub async fn get(&self, path: &str, who: &Account) -> Resp {
        self.call("GET", path, Some(who), &[]).await
    }

    pub async fn post(&self, path: &str, who: &Account, form: &[(&str, &str)]) -> Resp {
        self.call("POST", path, Some(who), form).await
    }

    /// Gives `who` a phone number to call from.
    pub async fn number(&self, who: &Account, phone: &str) -> Value {
        let r = self
            .post(
                &format!("/2010-04-01/Accounts/{}/IncomingPhoneNumbers.json", who.sid),
                who,
                &[("PhoneNumber", phone)],
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    pub async fn create_call(&self, who: &Account, form: &[(&str, &str)]) -> Resp {
        self.post(
            &format!("/2010-04-01/Accounts/{}/Calls.json", who.sid),
            who,
            form,
        )
        .await
    }
}

/// One plugin runtime for the whole test binary (an engine with its pool is not free).
pub fn runtime() -> std::sync::Arc<callflow_runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<std::sync::Arc<callflow_runtime::Runtime>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let config = callflow_runtime::RuntimeConfig {
                max_plugin_bytes: 4 << 20,
                ..Default::default()
            };
            std::sync::Arc::new(callflow_runtime::Runtime::new(config).unwrap())
        })
        .clone()
}

pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Replaces SIDs, tokens and dates so a JSON snapshot is stable.
pub fn redact(v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut l = line.to_owned();
        for prefix in ["AC", "CA", "CO", "CP", "PN", "RE"] {
            while let Some(i) = find_sid(&l, prefix) {
                l.replace_range(i..i + 34, &format!("{prefix}[sid]"));
            }
        }
        if l.contains("+0000") {
            let key_end = l.find(':').unwrap_or(0);
            l = format!(
                "{}: \"[date]\"{}",
                &l[..key_end],
                if l.ends_with(',') { "," } else { "" }
            );
        }
        if l.trim_start().starts_with("\"auth_token\"") {
            l = "  \"auth_token\": \"[token]\",".into();
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn find_sid(s: &str, prefix: &str) -> Option<usize> {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(33)).find(|&i| {
        s[i..].starts_with(prefix)
            && b[i + 2..i + 34]
                .iter()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    })
}
