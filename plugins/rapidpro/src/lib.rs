//! The built-in RapidPro adapter (`builtin:rapidpro`, world `call-events`): once an attempt at a
//! callout participant reaches a final status, it starts a RapidPro flow for that participant
//! through RapidPro's API — what Somleng SCFM's "start a RapidPro flow" callout setting did.
//!
//! Configuration (the binding's JSON):
//!
//! ```json
//! {
//!   "url": "https://rapidpro.example.org",
//!   "token": "<RapidPro API token>",
//!   "flow": "8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94",
//!   "on": "answered",
//!   "extra": {"campaign": "floods"}
//! }
//! ```
//!
//! - `url`, `token`, `flow` are required: RapidPro's base URL (http or https; a path prefix is
//!   kept, trailing slashes are dropped), an API token of the RapidPro workspace, and the UUID of
//!   the flow to start.
//! - `on`: `answered` (the default) starts the flow when an attempt ends `completed`, which for a
//!   callout attempt means it was answered; `any` starts it after any final status the call
//!   reached (completed, busy, no-answer, failed; not canceled, which is a stopped callout's).
//!   With one flow start per participant, `any` starts it after the participant's first attempt,
//!   whatever its outcome.
//! - `extra`: constants added to every flow start's `extra` (not the names the adapter sets).
//!
//! What it does with one event: nothing unless the event is `completed` (the call's final status)
//! of a callout call (it has a participant; any other call, RapidPro's own calls through its
//! channel among them, is left alone, so a binding for the whole account cannot start flows in a
//! loop) whose status qualifies. Then one request:
//!
//! ```text
//! POST {url}/api/v2/flow_starts.json
//! Content-Type: application/json
//! Authorization: Token {token}
//! Accept: application/json
//!
//! {"flow": "{flow}", "urns": ["tel:{to}"],
//!  "extra": {…extra, "callout": "CO…", "participant": "PA…", "attempt": 1, "status": "completed",
//!            "call": "CA…", "duration": 42, "metadata": {…the participant's metadata}}}
//! ```
//!
//! `duration` is there when the call has one, `metadata` when the participant's metadata is a
//! JSON object. The request's idempotency key is `rapidpro-flow-start:{participant}`: the host
//! makes requests with the same key at most once per account, so a participant starts one flow,
//! even when several of its attempts qualify under `on: any`.
//!
//! A bad configuration starts nothing and logs one error line naming every problem (the world has
//! no error to return, and a guess could message people by mistake). No log line, and no error,
//! ever contains the token.
//!
//! - [`config`]: the JSON, parsed and checked.

pub mod config;

use callflow_sdk::events::{
    CallEvents, EventContext, EventKind, HttpRequest, LifecycleEvent, LogLevel, Output,
};
use serde_json::{Value, json};

pub use config::{Config, On};

/// The prefix of every flow start's idempotency key; the participant's sid follows.
pub const IDEMPOTENCY_PREFIX: &str = "rapidpro-flow-start:";

/// The built-in RapidPro adapter.
pub struct RapidPro;

impl CallEvents for RapidPro {
    fn on_event(ctx: &EventContext, out: &mut Output) {
        handle(ctx, out);
    }
}

callflow_sdk::export_call_events!(RapidPro);

/// Handles one event: the pure core, everything it needs in `ctx`.
pub fn handle(ctx: &EventContext, out: &mut Output) {
    let e = &ctx.event;
    if e.kind != EventKind::Completed {
        return;
    }
    let Some(participant) = e.participant_id.as_deref() else {
        out.log(
            LogLevel::Debug,
            format!(
                "call {} is not a callout attempt: no RapidPro flow start",
                e.call_sid
            ),
        );
        return;
    };
    let config = match Config::parse(&ctx.config) {
        Ok(config) => config,
        Err(problems) => {
            out.log(
                LogLevel::Error,
                format!(
                    "invalid rapidpro configuration: {problems}; no flow started for participant {participant}"
                ),
            );
            return;
        }
    };
    let ended = format!(
        "attempt {} at participant {participant} ended {}",
        e.attempt.map_or_else(|| "?".to_owned(), |n| n.to_string()),
        e.status
    );
    if !config.on.starts_flow(&e.status) {
        out.log(
            LogLevel::Info,
            format!(
                "{ended}: no RapidPro flow start (on = {} does not start flows for {} calls)",
                config.on.as_str(),
                e.status
            ),
        );
        return;
    }
    if e.to.is_empty() {
        out.log(
            LogLevel::Error,
            format!("{ended}: the call has no To number to start a RapidPro flow for"),
        );
        return;
    }
    let (request, metadata_note) = flow_start(&config, e, participant);
    if let Some(note) = metadata_note {
        out.log(LogLevel::Warn, note);
    }
    out.log(
        LogLevel::Info,
        format!(
            "{ended}: start RapidPro flow {} for tel:{} (idempotency key {}: made at most once)",
            config.flow,
            e.to,
            request.idempotency_key.as_deref().unwrap_or_default()
        ),
    );
    out.request(request);
}

/// The flow start for `participant` after event `e`, and a note when the participant's metadata
/// could not be passed on.
pub fn flow_start(
    config: &Config,
    e: &LifecycleEvent,
    participant: &str,
) -> (HttpRequest, Option<String>) {
    let mut extra = config.extra.clone();
    extra.insert("callout".into(), json!(e.callout_id));
    extra.insert("participant".into(), json!(participant));
    extra.insert("attempt".into(), json!(e.attempt));
    extra.insert("status".into(), json!(e.status));
    extra.insert("call".into(), json!(e.call_sid));
    if let Some(duration) = e.duration_s {
        extra.insert("duration".into(), json!(duration));
    }
    let mut note = None;
    match serde_json::from_str::<Value>(&e.metadata) {
        Ok(Value::Object(metadata)) => {
            extra.insert("metadata".into(), Value::Object(metadata));
        }
        // no metadata at all is not worth a line
        _ if e.metadata.trim().is_empty() => {}
        _ => {
            note = Some(format!(
                "the metadata of participant {participant} is not a JSON object: left out of extra"
            ))
        }
    }
    let body = json!({
        "flow": config.flow,
        "urns": [format!("tel:{}", e.to)],
        "extra": Value::Object(extra),
    });
    let request = HttpRequest::post_json(config.flow_starts_url(), &body)
        .header("Authorization", format!("Token {}", config.token))
        .header("Accept", "application/json")
        .idempotency_key(format!("{IDEMPOTENCY_PREFIX}{participant}"));
    (request, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use callflow_sdk::events::{EventOutcome, EventTester, HttpMethod};
    use expect_test::{Expect, expect};

    const TOKEN: &str = "f00dfacef00dfacef00dfacef00dfacef00dface";
    const FLOW: &str = "8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94";

    fn config(url: &str, on: Option<&str>) -> String {
        let mut c = json!({"url": url, "token": TOKEN, "flow": FLOW});
        if let Some(on) = on {
            c["on"] = json!(on);
        }
        c.to_string()
    }

    /// A tester for an answered callout attempt of 42 s, with metadata.
    fn tester(config: &str) -> EventTester<RapidPro> {
        let mut t = EventTester::new(config);
        t.ctx.event.duration_s = Some(42);
        t.ctx.event.metadata = r#"{"name": "Amina", "district": "Tana River"}"#.into();
        t
    }

    /// An outcome as text: each request (method, URL, headers, key, body) and each log line.
    fn render(o: &EventOutcome) -> String {
        let mut s = String::new();
        for r in &o.requests {
            let method = match r.method {
                HttpMethod::Get => "GET",
                HttpMethod::Post => "POST",
                HttpMethod::Put => "PUT",
                HttpMethod::Patch => "PATCH",
                HttpMethod::Delete => "DELETE",
            };
            s.push_str(&format!("{method} {}\n", r.url));
            for h in &r.headers {
                s.push_str(&format!("{}: {}\n", h.name, h.value));
            }
            s.push_str(&format!(
                "idempotency-key: {}\n",
                r.idempotency_key.as_deref().unwrap_or("-")
            ));
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            s.push_str(&serde_json::to_string_pretty(&body).unwrap());
            s.push('\n');
        }
        for l in &o.logs {
            let level = match l.level {
                LogLevel::Debug => "debug",
                LogLevel::Info => "info",
                LogLevel::Warn => "warn",
                LogLevel::Error => "error",
            };
            s.push_str(&format!("{level}: {}\n", l.message));
        }
        s
    }

    fn check(o: &EventOutcome, expect: Expect) {
        expect.assert_eq(&render(o));
    }

    /// Every log line of `o`, none of which may hold the token.
    fn assert_no_token(o: &EventOutcome) {
        for l in &o.logs {
            assert!(!l.message.contains(TOKEN), "{}", l.message);
            assert!(!l.message.contains("f00dface"), "{}", l.message);
        }
    }

    #[test]
    fn an_answered_callout_attempt_starts_the_flow() {
        let mut t = tester(&config("https://rapidpro.example.org/", None));
        for kind in [EventKind::Queued, EventKind::Ringing, EventKind::Answered] {
            let o = t.send(kind);
            assert!(
                o.requests.is_empty() && o.logs.is_empty(),
                "{kind:?}: {o:?}"
            );
        }
        let o = t.send(EventKind::Completed);
        assert_no_token(&o);
        check(
            &o,
            expect![[r#"
                POST https://rapidpro.example.org/api/v2/flow_starts.json
                Content-Type: application/json
                Authorization: Token f00dfacef00dfacef00dfacef00dfacef00dface
                Accept: application/json
                idempotency-key: rapidpro-flow-start:PA00000000000000000000000000000000
                {
                  "extra": {
                    "attempt": 1,
                    "call": "CA00000000000000000000000000000000",
                    "callout": "CO00000000000000000000000000000000",
                    "duration": 42,
                    "metadata": {
                      "district": "Tana River",
                      "name": "Amina"
                    },
                    "participant": "PA00000000000000000000000000000000",
                    "status": "completed"
                  },
                  "flow": "8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94",
                  "urns": [
                    "tel:+15558675310"
                  ]
                }
                info: attempt 1 at participant PA00000000000000000000000000000000 ended completed: start RapidPro flow 8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94 for tel:+15558675310 (idempotency key rapidpro-flow-start:PA00000000000000000000000000000000: made at most once)
            "#]],
        );
        // the recording that comes after the call starts nothing more
        let o = t.send(EventKind::RecordingReady);
        assert!(o.requests.is_empty() && o.logs.is_empty(), "{o:?}");
    }

    #[test]
    fn answered_starts_only_completed_attempts_and_any_every_status_but_canceled() {
        let finals = ["busy", "no-answer", "failed", "canceled", "completed"];
        let mut answered = tester(&config("https://rapidpro.example.org", None));
        let mut any = tester(&config("https://rapidpro.example.org", Some("any")));
        for (n, status) in (1..).zip(finals) {
            for t in [&mut answered, &mut any] {
                t.ctx.event.kind = EventKind::Completed;
                t.ctx.event.status = status.into();
                t.ctx.event.attempt = Some(n);
                t.ctx.event.duration_s = (status == "completed").then_some(42);
            }
            let a = run(&answered);
            assert_no_token(&a);
            assert_eq!(
                a.requests.len(),
                usize::from(status == "completed"),
                "{status}"
            );
            let o = run(&any);
            assert_no_token(&o);
            if status == "canceled" {
                assert!(o.requests.is_empty(), "{o:?}");
                continue;
            }
            let [req] = &o.requests[..] else {
                panic!("{status}: {o:?}")
            };
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            assert_eq!(body["extra"]["status"], status);
            assert_eq!(body["extra"]["attempt"], n);
            assert_eq!(
                body["extra"].get("duration").is_some(),
                status == "completed"
            );
            // every attempt of the participant carries the same key: the host makes one request
            assert_eq!(
                req.idempotency_key.as_deref(),
                Some("rapidpro-flow-start:PA00000000000000000000000000000000")
            );
        }
        answered.ctx.event.status = "busy".into();
        check(
            &run(&answered),
            expect![[r#"
                info: attempt 5 at participant PA00000000000000000000000000000000 ended busy: no RapidPro flow start (on = answered does not start flows for busy calls)
            "#]],
        );
    }

    fn run(t: &EventTester<RapidPro>) -> EventOutcome {
        callflow_sdk::events::run::<RapidPro>(&t.ctx)
    }

    #[test]
    fn calls_that_are_not_callout_attempts_are_left_alone() {
        // RapidPro's own calls through its channel, with an account-wide binding: no loop
        let mut t = tester(&config("https://rapidpro.example.org", Some("any")));
        t.ctx.event.callout_id = None;
        t.ctx.event.participant_id = None;
        t.ctx.event.attempt = None;
        check(
            &t.send(EventKind::Completed),
            expect![[r#"
                debug: call CA00000000000000000000000000000000 is not a callout attempt: no RapidPro flow start
            "#]],
        );
        // …even when the binding's configuration is bad: nothing is said about it for them
        t.ctx.config = "{}".into();
        assert!(t.send(EventKind::Completed).requests.is_empty());
        t.ctx.event.direction = "inbound".into();
        assert!(t.send(EventKind::Completed).requests.is_empty());
    }

    #[test]
    fn constants_and_metadata_go_into_extra() {
        let mut t = tester(
            &json!({"url": "http://rapidpro.internal:8000/rp", "token": TOKEN, "flow": FLOW,
                    "extra": {"campaign": "floods", "wave": 2}})
            .to_string(),
        );
        t.ctx.event.duration_s = None;
        t.ctx.event.metadata = "[1, 2]".into();
        let o = t.send(EventKind::Completed);
        assert_no_token(&o);
        check(
            &o,
            expect![[r#"
                POST http://rapidpro.internal:8000/rp/api/v2/flow_starts.json
                Content-Type: application/json
                Authorization: Token f00dfacef00dfacef00dfacef00dfacef00dface
                Accept: application/json
                idempotency-key: rapidpro-flow-start:PA00000000000000000000000000000000
                {
                  "extra": {
                    "attempt": 1,
                    "call": "CA00000000000000000000000000000000",
                    "callout": "CO00000000000000000000000000000000",
                    "campaign": "floods",
                    "participant": "PA00000000000000000000000000000000",
                    "status": "completed",
                    "wave": 2
                  },
                  "flow": "8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94",
                  "urns": [
                    "tel:+15558675310"
                  ]
                }
                warn: the metadata of participant PA00000000000000000000000000000000 is not a JSON object: left out of extra
                info: attempt 1 at participant PA00000000000000000000000000000000 ended completed: start RapidPro flow 8e4a2f0c-6b1d-4c3e-9f7a-2d5b8c1e0a94 for tel:+15558675310 (idempotency key rapidpro-flow-start:PA00000000000000000000000000000000: made at most once)
            "#]],
        );
        t.ctx.event.metadata = String::new();
        assert!(t.send(EventKind::Completed).logs.len() == 1);
    }

    #[test]
    fn a_bad_configuration_starts_nothing_and_says_why_without_the_token() {
        let mut t = tester(r#"{"url": "rapidpro.example.org", "on": "sometimes"}"#);
        check(
            &t.send(EventKind::Completed),
            expect![[r#"
                error: invalid rapidpro configuration: url must start with http:// or https://, not "rapidpro.example.org"; token is missing; flow is missing; on must be "answered" or "any", not "sometimes"; no flow started for participant PA00000000000000000000000000000000
            "#]],
        );
        for bad in [
            json!({"url": "https://rapidpro.example.org", "token": format!("{TOKEN}\r\nX-Injected: 1"), "flow": FLOW}),
            json!({"url": "https://rapidpro.example.org", "token": format!("{TOKEN}\n"), "flow": FLOW}),
            json!({"url": TOKEN, "token": TOKEN, "flow": TOKEN, "on": TOKEN}),
            json!({"url": format!("https://x:{TOKEN}@rapidpro.example.org"), "token": TOKEN, "flow": FLOW}),
            json!({"url": "https://rapidpro.example.org", "token": TOKEN, "flow": FLOW, "extra": {"call": TOKEN}}),
        ] {
            t.ctx.config = bad.to_string();
            let o = t.send(EventKind::Completed);
            assert!(o.requests.is_empty(), "{bad}");
            let [line] = &o.logs[..] else { panic!("{o:?}") };
            assert_eq!(line.level, LogLevel::Error);
            assert!(
                line.message.starts_with("invalid rapidpro configuration: "),
                "{line:?}"
            );
            assert_no_token(&o);
        }
        t.ctx.config = json!({"url": "https://rapidpro.example.org", "token": format!("{TOKEN}\r\nX: 1"), "flow": FLOW}).to_string();
        check(
            &t.send(EventKind::Completed),
            expect![[r#"
                error: invalid rapidpro configuration: token contains a line break (CR or LF); no flow started for participant PA00000000000000000000000000000000
            "#]],
        );
    }

    #[test]
    fn an_attempt_without_a_number_starts_nothing() {
        let mut t = tester(&config("https://rapidpro.example.org", None));
        t.ctx.event.to = String::new();
        let o = t.send(EventKind::Completed);
        assert!(o.requests.is_empty());
        assert_eq!(o.logs[0].level, LogLevel::Error);
    }
}
