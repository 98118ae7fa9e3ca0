//! HTTP Basic authentication with AccountSid and AuthToken (compared in constant time), account
//! status, per-account rate limiting, and the rule that a request only reaches its own account;
//! also the optional bearer token that guards `/metrics`.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use callflow_engine::clock::now_ms;
use callflow_store::Account;
use subtle::ConstantTimeEq;

use crate::ApiState;
use crate::error::{ApiError, ApiResult};

/// The authenticated account making the request.
#[derive(Debug, Clone)]
pub struct Caller(pub Account);

impl Caller {
    /// Requests under `/Accounts/{sid}/…` reach only the caller's own account. Another account's
    /// resources, a subaccount's included, look exactly like missing ones.
    pub fn scope(&self, path_account: &str) -> ApiResult<&Account> {
        if self.0.sid == path_account {
            Ok(&self.0)
        } else {
            Err(ApiError::not_found(&format!("/Accounts/{path_account}")))
        }
    }
}

/// The caller's own account, named by `{account}` in the path, and the path's other segments.
/// Every handler under `/Accounts/{account}/…` takes this, so none can forget the scope check.
#[derive(Debug, Clone)]
pub struct Scoped {
    pub account: Account,
    segments: HashMap<String, String>,
}

impl Scoped {
    /// A path segment by name, without a `.json` suffix.
    pub fn sid(&self, name: &str) -> &str {
        let s = self.raw(name);
        s.strip_suffix(".json").unwrap_or(s)
    }

    /// A path segment by name, as sent.
    pub fn raw(&self, name: &str) -> &str {
        self.segments.get(name).map_or("", String::as_str)
    }
}

impl FromRequestParts<ApiState> for Scoped {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let Caller(caller) = Caller::from_request_parts(parts, state).await?;
        let Path(segments) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found("path"))?;
        let named = segments.get("account").map_or("", String::as_str);
        let account = Caller(caller).scope(named)?.clone();
        Ok(Scoped { account, segments })
    }
}

/// The authenticated account when credentials were sent; `None` when none were.
#[derive(Debug, Clone)]
pub struct MaybeCaller(pub Option<Account>);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(ApiError::unauthorized)?;
        authenticate(header.as_bytes(), state).await.map(Caller)
    }
}

impl FromRequestParts<ApiState> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        match parts.headers.get(header::AUTHORIZATION) {
            None => Ok(MaybeCaller(None)),
            Some(h) => authenticate(h.as_bytes(), state)
                .await
                .map(|a| MaybeCaller(Some(a))),
        }
    }
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Whether `given` is `expected`, in time that depends only on their lengths: the one comparison
/// of secrets in the API.
fn same_secret(expected: &str, given: &str) -> bool {
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// `Bearer <token>` → the token.
fn bearer_token(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, token) = text.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Leave to read `/metrics`: granted when no `metrics_token` is configured, or when the request
/// carries `Authorization: Bearer <metrics_token>`. A refusal is a plain-text 401, not Twilio's
/// JSON: scrapers, not API clients, call this route.
pub struct MetricsReader;

impl FromRequestParts<ApiState> for MetricsReader {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let Some(expected) = &state.config().metrics_token else {
            return Ok(MetricsReader);
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| bearer_token(h.as_bytes()));
        match given {
            Some(given) if same_secret(expected, given) => Ok(MetricsReader),
            _ => Err((
                StatusCode::UNAUTHORIZED,
                [
                    (
                        header::WWW_AUTHENTICATE,
                        r#"Bearer realm="callflow metrics""#,
                    ),
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                ],
                "/metrics needs Authorization: Bearer <metrics token>\n",
            )
                .into_response()),
        }
    }
}

async fn authenticate(header: &[u8], state: &ApiState) -> ApiResult<Account> {
    let (user, password) = basic_credentials(header).ok_or_else(ApiError::unauthorized)?;
    let account = state.store().account(&user).await?;
    // compare against a dummy token when the account is unknown, so timing tells nothing
    let expected = account
        .as_ref()
        .map_or("00000000000000000000000000000000", |a| {
            a.auth_token.as_str()
        });
    let matches = same_secret(expected, &password);
    let account = match account {
        Some(a) if matches => a,
        _ => {
            metrics::counter!("callflow_api_auth_failures_total").increment(1);
            return Err(ApiError::unauthorized());
        }
    };
    if account.status != "active" {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            20005,
            "Account not active",
        ));
    }
    if let Some(limit) = state.config().rate_limit
        && !state.limiter().allow(&account.sid, now_ms(), limit)
    {
        metrics::counter!("callflow_api_rate_limited_total").increment(1);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            20429,
            "Too Many Requests",
        ));
    }
    Ok(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_basic_credentials_and_rejects_the_rest() {
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ACx:tok:en")
        );
        assert_eq!(
            basic_credentials(h.as_bytes()),
            Some(("ACx".into(), "tok:en".into()))
        );
        assert_eq!(basic_credentials(b"Bearer abc"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        let no_colon = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ACx")
        );
        assert_eq!(basic_credentials(no_colon.as_bytes()), None);
    }

    #[test]
    fn parses_bearer_tokens_and_compares_secrets() {
        assert_eq!(bearer_token(b"Bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token(b"bearer  s3cret "), Some("s3cret"));
        assert_eq!(bearer_token(b"Basic s3cret"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cret", "s3creT"));
        assert!(!same_secret("s3cret", "s3cre"));
        assert!(!same_secret("s3cret", ""));
    }
}
