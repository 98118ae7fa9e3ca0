//! Request parameters: the form body of a POST (Twilio's clients send
//! `application/x-www-form-urlencoded`), read under the configured size bound, with typed getters
//! that turn bad values into Twilio errors.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use callflow_store::{HttpMethod, RequestParams};
use http_body_util::{BodyExt, Limited};

use crate::ApiState;
use crate::error::{ApiError, ApiResult};

/// Form parameters in the order they were sent.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Vec<(String, String)>);

impl FromRequest<ApiState> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let body = read_body(req, state.config().max_body_bytes).await?;
        Ok(Params::parse(&body))
    }
}

/// The request body, refused with 413 when it is (or says it will be) over `limit` bytes.
pub async fn read_body(req: Request, limit: usize) -> ApiResult<axum::body::Bytes> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            20001,
            format!("Request body exceeds {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let collected = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                ApiError::invalid(20001, "Could not read the request body")
            }
        })?;
    Ok(collected.to_bytes())
}

impl Params {
    pub fn parse(body: &[u8]) -> Params {
        Params(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first non-empty value of `name` (Twilio treats an empty value as absent).
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    pub fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// An absolute http(s) URL, or `None` when absent or empty; `code` is the error code.
    pub fn url(&self, name: &str, code: u32) -> ApiResult<Option<String>> {
        self.text(name)
            .map(|v| check_url(name, v, code))
            .transpose()
    }

    /// `GET` or `POST` in any case, returned upper-case.
    pub fn method(&self, name: &str) -> ApiResult<Option<HttpMethod>> {
        self.text(name)
            .map(|v| {
                v.to_ascii_uppercase()
                    .parse()
                    .map_err(|_| ApiError::param(name, "must be GET or POST"))
            })
            .transpose()
    }

    /// An integer, clamped to `max` (Twilio caps rather than rejects large values); below `min` is an error.
    pub fn int(&self, name: &str, min: i64, max: i64) -> ApiResult<Option<i64>> {
        self.text(name)
            .map(|v| match v.parse::<i64>() {
                Ok(n) if n >= min => Ok(n.min(max)),
                Ok(_) => Err(ApiError::param(name, &format!("must be at least {min}"))),
                Err(_) => Err(ApiError::param(name, "must be an integer")),
            })
            .transpose()
    }

    pub fn bool(&self, name: &str) -> ApiResult<Option<bool>> {
        self.text(name)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(ApiError::param(name, "must be true or false")),
            })
            .transpose()
    }

    /// Every parameter, for storing the request as received.
    pub fn request_params(&self) -> RequestParams {
        RequestParams(self.0.clone())
    }
}

/// Checks that `v` is an absolute http or https URL with a host.
pub fn check_url(name: &str, v: &str, code: u32) -> ApiResult<String> {
    match url::Url::parse(v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(v.to_owned()),
        _ => Err(ApiError::invalid(
            code,
            format!("{name} is not a valid URL: {v}"),
        )),
    }
}

/// A phone number as Twilio stores it: `+` and digits, with common punctuation removed.
/// `None` if what is left is not 3 to 15 digits.
pub fn e164(v: &str) -> Option<String> {
    let stripped: String = v
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let digits = stripped.strip_prefix('+').unwrap_or(&stripped);
    let ok = (3..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| format!("+{digits}"))
}

/// A call destination: a phone number (normalised to E.164), or a `sip:`/`client:` address kept as given.
pub fn destination(v: &str) -> Option<String> {
    let lower = v.to_ascii_lowercase();
    if let Some(rest) = lower
        .strip_prefix("sip:")
        .or_else(|| lower.strip_prefix("sips:"))
    {
        let ok = rest.contains('@') || rest.contains('.');
        return (ok && !v.chars().any(char::is_whitespace)).then(|| v.to_owned());
    }
    if let Some(rest) = lower.strip_prefix("client:") {
        return (!rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .then(|| v.to_owned());
    }
    e164(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getters_validate_and_normalise() {
        let p = Params::parse(
            b"Url=http%3A%2F%2Fx.test%2Fa&Method=get&Timeout=900&Bad=&Record=True&E=a&E=b",
        );
        assert_eq!(
            p.url("Url", 21205).unwrap().as_deref(),
            Some("http://x.test/a")
        );
        assert_eq!(
            p.method("Method").unwrap().map(HttpMethod::as_str),
            Some("GET")
        );
        assert_eq!(p.int("Timeout", 1, 600).unwrap(), Some(600));
        assert_eq!(p.text("Bad"), None);
        assert_eq!(p.bool("Record").unwrap(), Some(true));
        assert_eq!(p.all("E").collect::<Vec<_>>(), ["a", "b"]);
        let bad = Params::parse(b"Url=ftp%3A%2F%2Fx&Method=PUT&Timeout=ten&Record=yes");
        assert_eq!(bad.url("Url", 21205).unwrap_err().code, 21205);
        assert_eq!(bad.method("Method").unwrap_err().code, 20001);
        assert_eq!(bad.int("Timeout", 1, 600).unwrap_err().code, 20001);
        assert!(bad.bool("Record").is_err());
    }

    #[test]
    fn phone_numbers_and_destinations() {
        assert_eq!(e164("+1 (500) 555-0006").as_deref(), Some("+15005550006"));
        assert_eq!(e164("15005550006").as_deref(), Some("+15005550006"));
        assert_eq!(e164("hello"), None);
        assert_eq!(e164("+12"), None);
        assert_eq!(
            destination("sip:alice@example.com").as_deref(),
            Some("sip:alice@example.com")
        );
        assert_eq!(destination("client:bob").as_deref(), Some("client:bob"));
        assert_eq!(destination("sip:"), None);
        assert_eq!(destination("hello"), None);
    }
}
