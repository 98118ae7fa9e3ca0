//! The binding's configuration: JSON parsed and checked in full, every problem reported at once,
//! and the API token kept out of every message (`Debug` included).

use serde_json::{Map, Value};

/// The bound on the configuration's JSON, checked before parsing it (the host refuses a larger
/// `Config` when the binding is made; a plugin does not rely on that).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// Names the adapter sets in every flow start's `extra`: a constant of the same name would be
/// overwritten, so the configuration may not use them.
pub const RESERVED_EXTRA: [&str; 7] = [
    "callout",
    "participant",
    "attempt",
    "status",
    "call",
    "duration",
    "metadata",
];

/// How much of a bad value an error message quotes.
const QUOTED_CHARS: usize = 60;

/// Which final statuses start a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// Only `completed`: for a callout attempt, the call was answered.
    Answered,
    /// Every final status (completed, busy, no-answer, failed, canceled).
    Any,
}

impl On {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            On::Answered => "answered",
            On::Any => "any",
        }
    }

    /// Whether an attempt that ended with the final status `status` starts a flow.
    pub fn starts_flow(self, status: &str) -> bool {
        match self {
            On::Answered => status == "completed",
            // a canceled attempt is a stopped callout's: nobody was called
            On::Any => status != "canceled",
        }
    }
}

/// A checked configuration.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// RapidPro's base URL, without trailing slashes.
    pub base_url: String,
    /// The RapidPro API token (sent as `Authorization: Token …`; never printed).
    pub token: String,
    /// The UUID of the flow to start.
    pub flow: String,
    /// Which final statuses start a flow.
    pub on: On,
    /// Constants merged into every flow start's `extra`.
    pub extra: Map<String, Value>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("base_url", &self.base_url)
            .field("token", &"***")
            .field("flow", &self.flow)
            .field("on", &self.on)
            .field("extra", &self.extra)
            .finish()
    }
}

/// The fields a configuration may have.
const FIELDS: [&str; 5] = ["url", "token", "flow", "on", "extra"];

impl Config {
    /// The endpoint that starts flows: `{base}/api/v2/flow_starts.json`.
    pub fn flow_starts_url(&self) -> String {
        format!("{}/api/v2/flow_starts.json", self.base_url)
    }

    /// Parses and checks `json` (an empty string reads as `{}`). The error lists every problem,
    /// separated by `; `, and never quotes a value that contains the token.
    pub fn parse(json: &str) -> Result<Config, String> {
        let json = callflow_sdk::config_text(json, MAX_CONFIG_BYTES)?;
        // serde_json's syntax errors give a position, never the text around it
        let value: Value = serde_json::from_str(json)
            .map_err(|e| format!("the configuration is not valid JSON: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("the configuration must be a JSON object".into());
        };
        // read first, so that no message below quotes a value holding it
        let secret = match fields.get("token") {
            Some(Value::String(t)) if !t.is_empty() => Some(t.as_str()),
            _ => None,
        };
        let mut problems = Vec::new();
        for key in fields.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
            problems.push(format!(
                "unknown field {} (the fields are {})",
                quote(key, secret),
                FIELDS.join(", ")
            ));
        }
        let base_url = string(&fields, "url", &mut problems)
            .and_then(|u| check_url(u, secret).map_err(|p| problems.push(p)).ok());
        let token = string(&fields, "token", &mut problems)
            .and_then(|t| check_token(t).map_err(|p| problems.push(p)).ok());
        let flow = string(&fields, "flow", &mut problems)
            .and_then(|f| check_flow(f, secret).map_err(|p| problems.push(p)).ok());
        let on = match fields.get("on") {
            None | Some(Value::Null) => Some(On::Answered),
            Some(Value::String(s)) if s == "answered" => Some(On::Answered),
            Some(Value::String(s)) if s == "any" => Some(On::Any),
            Some(Value::String(s)) => {
                problems.push(format!(
                    "on must be \"answered\" or \"any\", not {}",
                    quote(s, secret)
                ));
                None
            }
            Some(_) => {
                problems.push("on must be the string \"answered\" or \"any\"".into());
                None
            }
        };
        let extra = match fields.get("extra") {
            None | Some(Value::Null) => Some(Map::new()),
            Some(Value::Object(extra)) => {
                let taken: Vec<&str> = RESERVED_EXTRA
                    .into_iter()
                    .filter(|k| extra.contains_key(*k))
                    .collect();
                if taken.is_empty() {
                    Some(extra.clone())
                } else {
                    problems.push(format!(
                        "extra may not set {}: the adapter sets {} for every flow start",
                        taken.join(", "),
                        RESERVED_EXTRA.join(", ")
                    ));
                    None
                }
            }
            Some(_) => {
                problems.push("extra must be a JSON object".into());
                None
            }
        };
        match (base_url, token, flow, on, extra) {
            (Some(base_url), Some(token), Some(flow), Some(on), Some(extra))
                if problems.is_empty() =>
            {
                Ok(Config {
                    base_url,
                    token,
                    flow,
                    on,
                    extra,
                })
            }
            _ => Err(problems.join("; ")),
        }
    }
}

/// A required string field: a problem when it is absent, empty or not a string.
fn string<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
    problems: &mut Vec<String>,
) -> Option<&'a str> {
    match fields.get(name) {
        None | Some(Value::Null) => problems.push(format!("{name} is missing")),
        Some(Value::String(s)) if s.is_empty() => problems.push(format!("{name} is empty")),
        Some(Value::String(s)) => return Some(s),
        Some(_) => problems.push(format!("{name} must be a string")),
    }
    None
}

/// RapidPro's base URL, such as `https://rapidpro.example.org` or `https://example.org/rapidpro`:
/// http or https, a host, no credentials, query or fragment. Trailing slashes are dropped.
fn check_url(url: &str, secret: Option<&str>) -> Result<String, String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("url contains whitespace or a control character".into());
    }
    let lower = url.to_ascii_lowercase();
    let Some(rest) = ["https://", "http://"]
        .into_iter()
        .find_map(|scheme| lower.starts_with(scheme).then(|| &url[scheme.len()..]))
    else {
        return Err(format!(
            "url must start with http:// or https://, not {}",
            quote(url, secret)
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        // the credentials are not quoted back: they are secret
        return Err(
            "url must not contain credentials (user:password@): the API token goes in token".into(),
        );
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("url has no host: {}", quote(url, secret)));
    }
    if url.contains(['?', '#']) {
        return Err(format!(
            "url must be RapidPro's base URL, without a query or fragment, not {}",
            quote(url, secret)
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The token becomes a header value: a line break would end the header (and could add others).
fn check_token(token: &str) -> Result<String, String> {
    if token.contains(['\r', '\n']) {
        return Err("token contains a line break (CR or LF)".into());
    }
    if token.chars().any(char::is_control) {
        return Err("token contains a control character".into());
    }
    if token.trim() != token {
        return Err("token starts or ends with whitespace".into());
    }
    Ok(token.to_owned())
}

/// A flow is named by its UUID (`8-4-4-4-12` hexadecimal digits), as in its RapidPro address.
fn check_flow(flow: &str, secret: Option<&str>) -> Result<String, String> {
    let groups: Vec<&str> = flow.split('-').collect();
    let shaped = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    if shaped {
        Ok(flow.to_ascii_lowercase())
    } else {
        Err(format!(
            "flow must be the flow's UUID (such as 8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94), not {}",
            quote(flow, secret)
        ))
    }
}

/// `s` in quotes, cut to a few dozen characters (log lines are bounded by the host as well); not
/// shown at all when it contains the token (someone pasted the token into the wrong field).
fn quote(s: &str, secret: Option<&str>) -> String {
    if secret.is_some_and(|t| s.contains(t)) {
        return "a value that contains the token (not shown)".into();
    }
    if s.chars().count() > QUOTED_CHARS {
        let cut: String = s.chars().take(QUOTED_CHARS).collect();
        format!("{cut:?}…")
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    const GOOD: &str = r#"{"url": "https://rapidpro.example.org/", "token": "0123456789abcdef",
        "flow": "8E4A2F0C-6B1D-4C3E-9F7A-2D5B8C1E0A94"}"#;

    fn check(json: &str, expect: Expect) {
        let shown = match Config::parse(json) {
            Ok(c) => format!("{c:?}"),
            Err(e) => format!("error: {e}"),
        };
        // a trailing newline keeps the snapshot in the block form, which rustfmt leaves alone
        expect.assert_eq(&format!("{shown}\n"));
    }

    #[test]
    fn a_good_configuration_and_its_defaults() {
        check(
            GOOD,
            expect![[r#"
                Config { base_url: "https://rapidpro.example.org", token: "***", flow: "8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94", on: Answered, extra: {} }
            "#]],
        );
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.token, "0123456789abcdef");
        assert_eq!(
            c.flow_starts_url(),
            "https://rapidpro.example.org/api/v2/flow_starts.json"
        );
        let any = Config::parse(
            r#"{"url": "http://10.0.0.5:8000/rp//", "token": "t", "on": "any",
                "flow": "8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94", "extra": {"campaign": "floods"}}"#,
        )
        .unwrap();
        assert_eq!(any.on, On::Any);
        assert_eq!(
            any.flow_starts_url(),
            "http://10.0.0.5:8000/rp/api/v2/flow_starts.json"
        );
        assert_eq!(any.extra["campaign"], "floods");
    }

    #[test]
    fn every_problem_is_named() {
        check(
            "",
            expect![[r#"
                error: url is missing; token is missing; flow is missing
            "#]],
        );
        check(
            r#"{"url": "ftp://rapidpro.example.org", "token": "", "flow": "flood-warning",
                "on": "answred", "extra": ["x"]}"#,
            expect![[r#"
                error: url must start with http:// or https://, not "ftp://rapidpro.example.org"; token is empty; flow must be the flow's UUID (such as 8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94), not "flood-warning"; on must be "answered" or "any", not "answred"; extra must be a JSON object
            "#]],
        );
        check(
            r#"{"url": "https:///x", "token": 42, "flow": null, "on": true,
                "extra": {"status": 1, "call": 2, "campaign": 3}}"#,
            expect![[r#"
                error: url has no host: "https:///x"; token must be a string; flow is missing; on must be the string "answered" or "any"; extra may not set status, call: the adapter sets callout, participant, attempt, status, call, duration, metadata for every flow start
            "#]],
        );
        check(
            r#"{"url": "https://rapidpro.example.org/?org=1", "token": "0123456789abcdef",
                "flow": "8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94"}"#,
            expect![[r#"
                error: url must be RapidPro's base URL, without a query or fragment, not "https://rapidpro.example.org/?org=1"
            "#]],
        );
        check(
            r#"{"url": " https://rapidpro.example.org", "token": "0123456789abcdef",
                "flow": "8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94"}"#,
            expect![[r#"
                error: url contains whitespace or a control character
            "#]],
        );
        check(
            r#"{"url": "https://rapidpro.example.org", "tokn": "t"}"#,
            expect![[r#"
                error: unknown field "tokn" (the fields are url, token, flow, on, extra); token is missing; flow is missing
            "#]],
        );
        check(
            r#"{"url": "ftp://rapidpro.example.org", "token": "t", "flow": "x", "on": "at"}"#,
            expect![[r#"
                error: url must start with http:// or https://, not a value that contains the token (not shown); flow must be the flow's UUID (such as 8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94), not "x"; on must be "answered" or "any", not a value that contains the token (not shown)
            "#]],
        );
        check(
            "[1]",
            expect![[r#"
                error: the configuration must be a JSON object
            "#]],
        );
        let big = format!(
            r#"{{"extra": {{"pad": "{}"}}}}"#,
            "x".repeat(MAX_CONFIG_BYTES)
        );
        check(
            &big,
            expect![[r#"
                error: the configuration is 65558 bytes, over the limit of 65536
            "#]],
        );
    }

    #[test]
    fn the_token_never_appears_in_an_error() {
        let secret = "s3cr3t-t0ken";
        let configs = [
            format!(r#"{{"url": "https://{secret}:x@rapidpro.example.org", "token": "{secret}"}}"#),
            format!(
                r#"{{"url": "https://rapidpro.example.org", "token": "{secret}\r\nX-Evil: 1"}}"#
            ),
            format!(
                r#"{{"url": "{secret}", "token": "{secret}", "flow": "{secret}", "on": "{secret}"}}"#
            ),
            format!(r#"{{"token": " {secret}", "extra": {{"status": "{secret}"}}}}"#),
            format!(r#"{{"token": "{secret}\u0007"}}"#),
        ];
        for json in &configs {
            let e = Config::parse(json).unwrap_err();
            assert!(!e.contains(secret), "{e}");
        }
        check(
            &configs[1],
            expect![[r#"
                error: token contains a line break (CR or LF); flow is missing
            "#]],
        );
        check(
            &configs[0],
            expect![[r#"
                error: url must not contain credentials (user:password@): the API token goes in token; flow is missing
            "#]],
        );
        check(
            &configs[2],
            expect![[r#"
                error: url must start with http:// or https://, not a value that contains the token (not shown); flow must be the flow's UUID (such as 8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94), not a value that contains the token (not shown); on must be "answered" or "any", not a value that contains the token (not shown)
            "#]],
        );
        check(
            &configs[4],
            expect![[r#"
                error: url is missing; token contains a control character; flow is missing
            "#]],
        );
    }
}
