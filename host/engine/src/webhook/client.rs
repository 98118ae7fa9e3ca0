//! The HTTP client for webhooks: form-encoded POST (or GET with the parameters in the query
//! string) to the URL exactly as given, signed with `X-Twilio-Signature`, under the egress policy,
//! with connect and overall timeouts and a bound on the response body. The same client fetches
//! `<Play>` media ([`WebhookClient::fetch`]): a conditional GET, unsigned as Twilio's are.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use callflow_media::prompt::{Validators, max_age_from_cache_control};

use super::egress::EgressPolicy;
use super::signature::{sign, signed_url};

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Twilio's default is 5 s.
    pub connect_timeout: Duration,
    /// The whole request, response body included. Twilio's default is 15 s; RapidPro needs more
    /// than 60 s for some resumes, so it is configurable.
    pub timeout: Duration,
    /// Responses larger than this are an error (a TwiML document is small; this bounds memory).
    pub max_response_bytes: usize,
    pub egress: EgressPolicy,
    /// Certificate authorities trusted besides the built-in public roots (PEM).
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
            max_response_bytes: 1 << 20,
            egress: EgressPolicy::default(),
            extra_roots_pem: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    /// Twilio accepts `GET` and `POST` (any case); anything else is `None`.
    pub fn parse(s: &str) -> Option<Method> {
        if s.eq_ignore_ascii_case("GET") {
            Some(Method::Get)
        } else if s.eq_ignore_ascii_case("POST") {
            Some(Method::Post)
        } else {
            None
        }
    }
}

/// One request to make.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub url: String,
    pub method: Method,
    pub params: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct WebhookResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl WebhookResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid webhook URL: {0}")]
    InvalidUrl(String),
    #[error("egress policy refuses {0}")]
    Denied(String),
    #[error("timed out")]
    Timeout,
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("HTTP error: {0}")]
    Http(String),
}

/// The default bound on fetched media: 16 MiB, about 17 minutes of 8 kHz 16-bit WAV or of
/// 128 kbit/s MP3 (the decoder's own bound, `prompt::MAX_INPUT_BYTES`, is larger).
pub const DEFAULT_MAX_MEDIA_BYTES: usize = 16 * 1024 * 1024;

/// The answer of [`WebhookClient::fetch`].
#[derive(Debug, Clone)]
pub enum Fetched {
    /// 304: the cached copy is still good, fresh for `max_age_ms` (from `Cache-Control`).
    NotModified { max_age_ms: Option<u64> },
    /// 2xx: new content, with the validators to send next time.
    Body {
        content_type: Option<String>,
        body: Bytes,
        validators: Validators,
        /// From `Cache-Control` ([`max_age_from_cache_control`]); `None` if it says nothing.
        max_age_ms: Option<u64>,
    },
}

/// Why [`WebhookClient::fetch`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Request(#[from] WebhookError),
    #[error("HTTP status {0}")]
    Status(u16),
}

impl WebhookError {
    /// Whether trying again later could succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            WebhookError::Timeout | WebhookError::Connect(_) | WebhookError::Http(_)
        )
    }
}

/// Cheap to clone; share one per process.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    config: WebhookConfig,
}

impl WebhookClient {
    pub fn new(config: WebhookConfig) -> Result<Self, WebhookError> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &config.extra_roots_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| WebhookError::Http(format!("extra CA certificates: {e}")))?;
            if roots.is_empty() {
                return Err(WebhookError::Http(
                    "extra CA certificates: no certificate in the PEM".into(),
                ));
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let http = builder
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            // a redirect could lead to an address the policy refuses; webhooks go where they are told
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(std::sync::Arc::new(PolicyResolver {
                policy: config.egress,
            }))
            .user_agent(concat!(
                "TwilioProxy/1.1 callflow/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| WebhookError::Http(e.to_string()))?;
        Ok(WebhookClient { http, config })
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// Sends `req`, signed with `auth_token`, and reads at most `max_response_bytes` of the answer.
    pub async fn send(
        &self,
        req: &WebhookRequest,
        auth_token: &str,
    ) -> Result<WebhookResponse, WebhookError> {
        self.check_url(&req.url)?;
        let builder = match req.method {
            Method::Post => {
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&req.params)
                    .finish();
                self.http
                    .post(&req.url)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .header(
                        "X-Twilio-Signature",
                        sign(auth_token, &req.url, &req.params),
                    )
                    .body(body)
            }
            Method::Get => {
                let url = signed_url(&req.url, &req.params);
                let sig = sign(auth_token, &url, &[]);
                self.http.get(url).header("X-Twilio-Signature", sig)
            }
        };
        let mut resp = builder.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_body(&mut resp, self.config.max_response_bytes).await?;
        Ok(WebhookResponse {
            status,
            content_type,
            body,
        })
    }

    /// Makes a request a plugin asked for (a notification): any method, the plugin's headers
    /// and body, unsigned (the plugin's own headers carry any credentials), under the same
    /// egress policy, timeouts and redirect refusal. Returns the status; the body is read (at
    /// most `max_response_bytes`) and dropped.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<u16, WebhookError> {
        self.check_url(url)?;
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| WebhookError::Http(e.to_string()))?;
        let mut builder = self.http.request(method, url).body(body);
        for (name, value) in headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let mut resp = builder.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        read_body(&mut resp, self.config.max_response_bytes).await?;
        Ok(status)
    }

    /// Fetches media (a `<Play>` URL) with a GET, conditional on `validators` when it has any
    /// (`If-None-Match`, `If-Modified-Since`), reading at most `max_bytes` of body: the caller
    /// chooses the bound, since audio is far larger than TwiML ([`DEFAULT_MAX_MEDIA_BYTES`]).
    /// Same egress policy, timeouts and redirect refusal as [`Self::send`]; not signed, as
    /// Twilio's media fetches are not. A status other than 2xx or 304 is
    /// [`FetchError::Status`].
    pub async fn fetch(
        &self,
        url: &str,
        validators: &Validators,
        max_bytes: usize,
    ) -> Result<Fetched, FetchError> {
        self.check_url(url)?;
        let mut builder = self.http.get(url);
        if let Some(etag) = &validators.etag {
            builder = builder.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(date) = &validators.last_modified {
            builder = builder.header(reqwest::header::IF_MODIFIED_SINCE, date);
        }
        let mut resp = builder.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let header = |name: reqwest::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let max_age_ms = header(reqwest::header::CACHE_CONTROL)
            .as_deref()
            .and_then(max_age_from_cache_control);
        if status == 304 {
            return Ok(Fetched::NotModified { max_age_ms });
        }
        if !(200..300).contains(&status) {
            return Err(FetchError::Status(status));
        }
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let validators = Validators {
            etag: header(reqwest::header::ETAG),
            last_modified: header(reqwest::header::LAST_MODIFIED),
        };
        let body = read_body(&mut resp, max_bytes).await?;
        Ok(Fetched::Body {
            content_type,
            body,
            validators,
            max_age_ms,
        })
    }

    /// The URL must be http(s), and an IP literal must pass the egress policy.
    fn check_url(&self, url: &str) -> Result<(), WebhookError> {
        let parsed = url::Url::parse(url).map_err(|e| WebhookError::InvalidUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(WebhookError::InvalidUrl(format!(
                "scheme {} is not http or https",
                parsed.scheme()
            )));
        }
        // IP literals are not resolved, so the resolver's check does not see them: check here.
        if let Some(url::Host::Ipv4(ip)) = parsed.host() {
            self.check(IpAddr::V4(ip))?;
        }
        if let Some(url::Host::Ipv6(ip)) = parsed.host() {
            self.check(IpAddr::V6(ip))?;
        }
        Ok(())
    }

    fn check(&self, ip: IpAddr) -> Result<(), WebhookError> {
        if self.config.egress.allows(ip) {
            Ok(())
        } else {
            Err(WebhookError::Denied(ip.to_string()))
        }
    }
}

/// Reads the body, failing as soon as it passes `limit` bytes (so memory stays bounded).
async fn read_body(resp: &mut reqwest::Response, limit: usize) -> Result<Bytes, WebhookError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > limit {
            return Err(WebhookError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn classify(e: reqwest::Error) -> WebhookError {
    // reqwest's messages can carry the URL, which may hold credentials: keep only the kind.
    let e = e.without_url();
    if e.is_timeout() {
        return WebhookError::Timeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(denied) = s.downcast_ref::<DeniedHost>() {
            return WebhookError::Denied(denied.0.clone());
        }
        source = s.source();
    }
    if e.is_connect() {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg = format!("{msg}: {s}");
            source = s.source();
        }
        return WebhookError::Connect(msg);
    }
    WebhookError::Http(e.to_string())
}

#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to addresses the egress policy refuses")]
struct DeniedHost(String);

/// Resolves names with the system resolver and drops every address the policy refuses.
struct PolicyResolver {
    policy: EgressPolicy,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = resolved.filter(|a| policy.allows(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(DeniedHost(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use axum::extract::{RawQuery, State};
    use axum::http::HeaderMap;
    use axum::routing::any;

    type Seen = Arc<Mutex<Vec<(String, Option<String>, String, String)>>>;

    /// A loopback server that records (method, query, signature, body) and answers `status`.
    async fn server(status: u16, body: &'static str) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let app = axum::Router::new()
            .route(
                "/{*path}",
                any(
                    move |State(seen): State<Seen>,
                          method: axum::http::Method,
                          RawQuery(q): RawQuery,
                          headers: HeaderMap,
                          text: String| async move {
                        let sig = headers
                            .get("x-twilio-signature")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        seen.lock()
                            .unwrap()
                            .push((method.to_string(), q, sig, text));
                        (axum::http::StatusCode::from_u16(status).unwrap(), body)
                    },
                ),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    fn client(allow_private: bool, max: usize) -> WebhookClient {
        WebhookClient::new(WebhookConfig {
            egress: EgressPolicy { allow_private },
            max_response_bytes: max,
            ..Default::default()
        })
        .unwrap()
    }

    fn params() -> Vec<(String, String)> {
        vec![
            ("CallSid".into(), "CA1".into()),
            ("To".into(), "+1 555".into()),
        ]
    }

    #[tokio::test]
    async fn post_is_form_encoded_to_the_exact_url_and_signed() {
        let (base, seen) = server(200, "<Response/>").await;
        let url = format!("{base}/hook?a=1&b=two");
        let req = WebhookRequest {
            url: url.clone(),
            method: Method::Post,
            params: params(),
        };
        let resp = client(true, 1024).send(&req, "secret").await.unwrap();
        assert_eq!((resp.status, &resp.body[..]), (200, &b"<Response/>"[..]));
        let seen = seen.lock().unwrap();
        let (method, query, sig, body) = &seen[0];
        assert_eq!(
            (method.as_str(), query.as_deref()),
            ("POST", Some("a=1&b=two"))
        );
        assert_eq!(body, "CallSid=CA1&To=%2B1+555");
        assert_eq!(sig, &sign("secret", &url, &params()));
    }

    #[tokio::test]
    async fn get_carries_params_in_the_query_and_signs_the_full_url() {
        let (base, seen) = server(204, "").await;
        let url = format!("{base}/hook?a=1");
        let req = WebhookRequest {
            url: url.clone(),
            method: Method::Get,
            params: params(),
        };
        client(true, 1024).send(&req, "secret").await.unwrap();
        let seen = seen.lock().unwrap();
        let (method, query, sig, _) = &seen[0];
        assert_eq!(
            (method.as_str(), query.as_deref()),
            ("GET", Some("a=1&CallSid=CA1&To=%2B1+555"))
        );
        assert_eq!(sig, &sign("secret", &signed_url(&url, &params()), &[]));
    }

    #[tokio::test]
    async fn egress_policy_refuses_loopback_by_literal_and_by_name() {
        let (base, seen) = server(200, "").await;
        let c = client(false, 1024);
        let literal = WebhookRequest {
            url: format!("{base}/x"),
            method: Method::Post,
            params: vec![],
        };
        assert!(matches!(
            c.send(&literal, "t").await,
            Err(WebhookError::Denied(_))
        ));
        let port = base.rsplit(':').next().unwrap();
        let named = WebhookRequest {
            url: format!("http://localhost:{port}/x"),
            method: Method::Post,
            params: vec![],
        };
        let err = c.send(&named, "t").await.unwrap_err();
        assert!(matches!(err, WebhookError::Denied(_)), "{err:?}");
        assert!(!err.is_transient());
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn oversized_responses_and_bad_urls_are_errors() {
        let (base, _) = server(200, "0123456789abcdef").await;
        let req = WebhookRequest {
            url: format!("{base}/x"),
            method: Method::Post,
            params: vec![],
        };
        assert!(matches!(
            client(true, 8).send(&req, "t").await,
            Err(WebhookError::TooLarge(8))
        ));
        for bad in ["not a url", "ftp://example.com/x"] {
            let req = WebhookRequest {
                url: bad.into(),
                method: Method::Post,
                params: vec![],
            };
            assert!(matches!(
                client(true, 8).send(&req, "t").await,
                Err(WebhookError::InvalidUrl(_))
            ));
        }
    }

    #[tokio::test]
    async fn refused_connection_is_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let req = WebhookRequest {
            url: format!("http://127.0.0.1:{port}/x"),
            method: Method::Post,
            params: vec![],
        };
        let err = client(true, 8).send(&req, "t").await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }
}
