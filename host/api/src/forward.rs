//! Requests for a live call another node drives (issue 17): `POST Calls/{Sid}.json` (redirect,
//! hang up, cancel) changes what a SIP leg does, and the leg lives on the node that received
//! or sent the call, so the request is sent there, as it came (its Authorization, its
//! parameters), and the owner's answer is the answer. A forwarded request carries
//! [`FORWARDED`] and is never forwarded again; a call whose node is not running (dead, being
//! swept) is handled here like any call this node does not drive.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use callflow_store::Call;

use crate::ApiState;
use crate::error::{ApiError, ApiResult};
use crate::params::Params;

/// Marks a request one node sent another.
pub const FORWARDED: &str = "x-callflow-forwarded-by";

/// How long the owner has to answer (ending a call waits a few seconds for its leg at most).
const TIMEOUT: Duration = Duration::from_secs(15);

/// The base URL of the node driving `call`, when that is another node that is running and
/// this request was not forwarded already.
pub async fn owner_elsewhere(
    state: &ApiState,
    call: &Call,
    headers: &HeaderMap,
) -> ApiResult<Option<String>> {
    let Some(owner) = call.node.as_deref() else {
        return Ok(None);
    };
    if headers.contains_key(FORWARDED)
        || owner == state.engine().node()
        || call.status().is_final()
        || !state.store().is_shared()
    {
        return Ok(None);
    }
    let node = state
        .store()
        .nodes()
        .await?
        .into_iter()
        .find(|n| n.name == owner && n.is_running() && !n.http_url.is_empty());
    Ok(node.map(|n| n.http_url))
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}

/// Sends the request (`uri`, its Authorization and `params` as a form) to the node at `base`
/// and answers with what it answered. An owner that cannot be reached is a 503 with
/// Retry-After: it is either back in a moment or declared dead within seconds, after which
/// this node handles the call.
pub async fn forward(
    base: &str,
    uri: &Uri,
    headers: &HeaderMap,
    params: &Params,
) -> ApiResult<Response> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.0.iter())
        .finish();
    let mut request = client()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header(FORWARDED, "1")
        .body(body);
    for name in ["authorization", "accept", "user-agent"] {
        if let Some(v) = headers.get(name) {
            request = request.header(name, v.as_bytes());
        }
    }
    let answer = match request.send().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(node = %base, error = %e, "the node driving a call cannot be reached");
            return Err(ApiError::unavailable(
                "the node driving this call cannot be reached; try again in a moment",
            ));
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer.headers().get("content-type").cloned();
    let retry_after = answer.headers().get("retry-after").cloned();
    let bytes = answer.bytes().await.map_err(|e| {
        tracing::warn!(node = %base, error = %e, "the node driving a call did not finish its answer");
        ApiError::unavailable("the node driving this call did not answer; try again in a moment")
    })?;
    let mut response = (status, bytes).into_response();
    let h = response.headers_mut();
    for (name, value) in [("content-type", content_type), ("retry-after", retry_after)] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
            h.insert(name, v);
        }
    }
    Ok(response)
}
