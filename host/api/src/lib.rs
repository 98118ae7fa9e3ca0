//! callflow's HTTP API: the Twilio-compatible `2010-04-01` REST API, callflow's own `/v1` API
//! (plugins, bindings, callouts, call events), `/health`, `/metrics` and `/openapi.json`, which
//! describes every route (`openapi/build.py`; `served_routes` lets a test hold it to the router).
//!
//! Architecture invariant: this is the only crate that knows Twilio's JSON, paging envelope and
//! error codes. Handlers validate and translate; state changes go through `callflow-store` and the
//! engine. `router` is tested without a socket (`tower::ServiceExt::oneshot`); `service` adds the
//! path normalisation that must run before routing.

mod accounts;
mod auth;
mod callouts;
mod calls;
mod error;
mod forward;
mod limit;
mod numbers;
mod paging;
mod params;
mod plugins;
mod recordings;
mod render;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, MethodRouter};
use callflow_engine::Engine;
use callflow_engine::blobs::Blobs;
use callflow_runtime::Runtime;
use callflow_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::Layer;

pub use error::ApiError;
pub use limit::RateLimit;

/// Whose numbers may be used as `From` of an outbound call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerIdPolicy {
    /// Only the account's own incoming phone numbers (Twilio's rule; error 21210 otherwise).
    Owned,
    /// Any number (for trunks whose operator vouches for caller IDs).
    Any,
}

/// `Debug` never shows `metrics_token`.
#[derive(Clone)]
pub struct ApiConfig {
    /// Bound on request bodies; larger ones get 413.
    pub max_body_bytes: usize,
    /// Bound on uploaded participant lists (CSV or JSON), which are far larger than forms.
    pub max_upload_bytes: usize,
    /// Per-account request rate; `None` for no limit.
    pub rate_limit: Option<RateLimit>,
    pub caller_id: CallerIdPolicy,
    /// The externally reachable base URL, for absolute URLs such as a recording's `media_url`.
    pub public_url: String,
    /// Whether recording media can be fetched without credentials (Twilio's default).
    pub recordings_public: bool,
    /// When set, `/metrics` answers only requests with `Authorization: Bearer <token>`; when
    /// `None` it is open to anyone who can reach the port.
    pub metrics_token: Option<String>,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // destructured without `..`, so a new field cannot be forgotten here
        let ApiConfig {
            max_body_bytes,
            max_upload_bytes,
            rate_limit,
            caller_id,
            public_url,
            recordings_public,
            metrics_token,
        } = self;
        f.debug_struct("ApiConfig")
            .field("max_body_bytes", max_body_bytes)
            .field("max_upload_bytes", max_upload_bytes)
            .field("rate_limit", rate_limit)
            .field("caller_id", caller_id)
            .field("public_url", public_url)
            .field("recordings_public", recordings_public)
            .field("metrics_token", &metrics_token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 1 << 20,
            max_upload_bytes: 64 << 20,
            rate_limit: None,
            caller_id: CallerIdPolicy::Owned,
            public_url: "http://127.0.0.1:8080".into(),
            recordings_public: true,
            metrics_token: None,
        }
    }
}

/// The services the API works with.
pub struct ApiParts {
    pub store: Store,
    pub engine: Engine,
    pub runtime: Arc<Runtime>,
    /// Recordings and plugin bytes.
    pub blobs: Blobs,
    pub metrics: Option<PrometheusHandle>,
}

/// Everything handlers need; cheap to clone.
#[derive(Clone)]
pub struct ApiState(Arc<Inner>);

struct Inner {
    store: Store,
    engine: Engine,
    runtime: Arc<Runtime>,
    config: ApiConfig,
    blobs: Blobs,
    metrics: Option<PrometheusHandle>,
    limiter: limit::Limiter,
}

impl ApiState {
    pub fn new(parts: ApiParts, config: ApiConfig) -> Self {
        let ApiParts {
            store,
            engine,
            runtime,
            blobs,
            metrics,
        } = parts;
        ApiState(Arc::new(Inner {
            store,
            engine,
            runtime,
            config,
            blobs,
            metrics,
            limiter: limit::Limiter::default(),
        }))
    }

    pub(crate) fn store(&self) -> &Store {
        &self.0.store
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.0.engine
    }

    pub(crate) fn runtime(&self) -> &Arc<Runtime> {
        &self.0.runtime
    }

    pub(crate) fn config(&self) -> &ApiConfig {
        &self.0.config
    }

    pub(crate) fn blobs(&self) -> &Blobs {
        &self.0.blobs
    }

    pub(crate) fn limiter(&self) -> &limit::Limiter {
        &self.0.limiter
    }
}

/// `s` without `suffix`, for path segments such as `CA….json`.
pub(crate) fn strip_suffix<'a>(s: &'a str, suffix: &str) -> &'a str {
    s.strip_suffix(suffix).unwrap_or(s)
}

/// One method of a route and its handler.
type Endpoint = (Method, MethodRouter<ApiState>);

fn get<H: Handler<T, ApiState>, T: 'static>(handler: H) -> Endpoint {
    (Method::GET, routing::get(handler))
}

fn post<H: Handler<T, ApiState>, T: 'static>(handler: H) -> Endpoint {
    (Method::POST, routing::post(handler))
}

fn delete<H: Handler<T, ApiState>, T: 'static>(handler: H) -> Endpoint {
    (Method::DELETE, routing::delete(handler))
}

/// Every route: its path (axum's syntax) and the handler of each method it serves. `router` is
/// built from this table and `served_routes` lists it, so what is served and what the OpenAPI
/// test compares with `/openapi.json` cannot drift apart.
fn routes() -> Vec<(String, Vec<Endpoint>)> {
    const A: &str = "/2010-04-01/Accounts/{account}";
    const V1: &str = "/v1/Accounts/{account}";
    // Collections answer with and without the `.json` suffix.
    let collections: Vec<(String, Vec<Endpoint>)> = vec![
        (
            "/2010-04-01/Accounts".into(),
            vec![get(accounts::list), post(accounts::create)],
        ),
        (
            format!("{A}/Calls"),
            vec![get(calls::list), post(calls::create)],
        ),
        (
            format!("{A}/Calls/{{call}}/Recordings"),
            vec![get(recordings::list_for_call)],
        ),
        (
            format!("{A}/IncomingPhoneNumbers"),
            vec![get(numbers::list), post(numbers::create)],
        ),
        (format!("{A}/Recordings"), vec![get(recordings::list)]),
        (
            format!("{V1}/Plugins"),
            vec![get(plugins::list), post(plugins::create)],
        ),
        (
            format!("{V1}/PluginBindings"),
            vec![get(plugins::list_bindings), post(plugins::bind)],
        ),
        (
            format!("{V1}/Callouts"),
            vec![get(callouts::list), post(callouts::create)],
        ),
        (
            format!("{V1}/Callouts/{{callout}}/Participants"),
            vec![
                get(callouts::list_participants),
                post(callouts::add_participants),
            ],
        ),
    ];
    // A single resource's `{sid}` takes its `.json` (or a recording's `.wav`, `.mp3`) suffix.
    let mut all: Vec<(String, Vec<Endpoint>)> = vec![
        ("/health".into(), vec![get(health)]),
        ("/metrics".into(), vec![get(metrics_text)]),
        ("/openapi.json".into(), vec![get(openapi)]),
        (A.into(), vec![get(accounts::fetch), post(accounts::update)]),
        (
            format!("{A}/Calls/{{sid}}"),
            vec![get(calls::fetch), post(calls::update)],
        ),
        (
            format!("{A}/Calls/{{call}}/Recordings/{{sid}}"),
            vec![get(recordings::fetch_for_call), delete(recordings::delete)],
        ),
        (
            format!("{A}/IncomingPhoneNumbers/{{sid}}"),
            vec![
                get(numbers::fetch),
                post(numbers::update),
                delete(numbers::delete),
            ],
        ),
        (
            format!("{A}/Recordings/{{sid}}"),
            vec![get(recordings::fetch), delete(recordings::delete)],
        ),
        (
            format!("{V1}/Plugins/{{sid}}"),
            vec![get(plugins::fetch), delete(plugins::delete)],
        ),
        (
            format!("{V1}/Calls/{{sid}}/Events"),
            vec![get(calls::events)],
        ),
        (
            format!("{V1}/Plugins/{{sid}}/Invocations"),
            vec![post(plugins::invoke)],
        ),
        (
            format!("{V1}/PluginBindings/{{sid}}"),
            vec![get(plugins::fetch_binding), delete(plugins::delete_binding)],
        ),
        (
            format!("{V1}/Callouts/{{sid}}"),
            vec![get(callouts::fetch), post(callouts::update)],
        ),
        (
            format!("{V1}/Callouts/{{callout}}/Participants/{{sid}}"),
            vec![get(callouts::fetch_participant)],
        ),
        (
            format!("{V1}/Callouts/{{callout}}/Results.csv"),
            vec![get(callouts::results)],
        ),
        (
            format!("{V1}/Callouts/{{callout}}/Results"),
            vec![get(callouts::results)],
        ),
    ];
    for (path, endpoints) in collections {
        all.push((format!("{path}.json"), endpoints.clone()));
        all.push((path, endpoints));
    }
    all
}

/// Every route and method the router serves, in axum's path syntax (`/v1/Accounts/{account}/…`).
/// A `GET` also answers `HEAD`, as axum's `get` does.
pub fn served_routes() -> Vec<(String, Method)> {
    routes()
        .into_iter()
        .flat_map(|(path, endpoints)| {
            endpoints
                .into_iter()
                .map(move |(method, _)| (path.clone(), method))
        })
        .collect()
}

/// The routes, without path normalisation (see `service`).
pub fn router(state: ApiState) -> Router {
    let mut r = Router::new();
    for (path, endpoints) in routes() {
        let methods = endpoints
            .into_iter()
            .fold(MethodRouter::new(), |all, (_, one)| all.merge(one));
        r = r.route(&path, methods);
    }
    r.fallback(|| async { ApiError::not_found("path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, 20004, "Method not allowed")
        })
        .layer(middleware::from_fn(observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            tracing::error!("handler panicked");
            ApiError::internal().into_response()
        }))
        .with_state(state)
}

/// The router behind path normalisation: `//2010-04-01/…` (a base URL with a trailing slash, as
/// RapidPro configures it) routes like `/2010-04-01/…`.
pub fn service(
    state: ApiState,
) -> impl tower::Service<
    Request,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    axum::middleware::map_request(collapse_slashes).layer(router(state))
}

async fn collapse_slashes(mut req: Request) -> Request {
    let path = req.uri().path();
    if path.contains("//") {
        let mut clean = String::with_capacity(path.len());
        for c in path.chars() {
            if !(c == '/' && clean.ends_with('/')) {
                clean.push(c);
            }
        }
        let pq = match req.uri().query() {
            Some(q) => format!("{clean}?{q}"),
            None => clean,
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

/// Counts and times every request by route and status; logs server errors (never their bodies).
async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    let labels = [
        ("method", method.clone()),
        ("route", route.clone()),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("callflow_http_requests_total", &labels).increment(1);
    metrics::histogram!("callflow_http_request_duration_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    if status.is_server_error() {
        tracing::error!(%method, %route, status = status.as_u16(), "request failed");
    }
    resp
}

async fn health(State(state): State<ApiState>) -> Response {
    match state.store().ping().await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "unavailable"})),
            )
                .into_response()
        }
    }
}

async fn metrics_text(_: auth::MetricsReader, State(state): State<ApiState>) -> Response {
    let text = state
        .0
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi/openapi.json"),
    )
        .into_response()
}
