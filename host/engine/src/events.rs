//! Call-events plugins: a call's lifecycle events (ringing, answered, completed) handed to the
//! `call-events` plugin pinned on the call, and the HTTP requests it asks for, both carried by
//! the webhook outbox.
//!
//! A status change that has an event writes a `call-event` row in the transaction that stores
//! the change ([`call_event`]), so a crash cannot lose the event. The outbox hands the row to
//! [`run_call_event`], which runs the plugin; the requests it returns become
//! `plugin-request` rows, stored in the transaction that marks the event handled. A request
//! with an idempotency key is stored at most once per account, so an event run twice (a crash
//! between the run and its commit) or two events asking for the same thing make one request.

use callflow_runtime::World;
use callflow_runtime::events::{EventContext, EventKind, HttpRequest, LifecycleEvent};
use callflow_store::{
    Call, CallLogEntry, CallStatus, Delivery, EventsRun, NewDelivery, RequestAsked, StoreError,
};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::plugins::{HostError, PluginHost, method_name, pinned};

/// The outbox kind of a lifecycle event waiting for its plugin.
pub(crate) const CALL_EVENT: &str = "call-event";
/// The outbox kind of a request a call-events plugin asked for.
pub(crate) const PLUGIN_REQUEST: &str = "plugin-request";

/// How many times an event whose plugin fails (traps, times out, answers badly) is tried.
pub(crate) const EVENT_MAX_ATTEMPTS: u32 = 3;

/// Requests one event (or one recording) may ask for; more is the plugin's error.
pub(crate) const MAX_REQUESTS_PER_EVENT: usize = 16;

/// The event a call entering `status` is, if any (a call's creation, `queued`, is not one).
fn kind_of(status: CallStatus) -> Option<EventKind> {
    match status {
        CallStatus::Queued => None,
        CallStatus::Ringing => Some(EventKind::Ringing),
        CallStatus::InProgress => Some(EventKind::Answered),
        _ => Some(EventKind::Completed),
    }
}

/// An event as the outbox row keeps it: what was true when it happened.
#[derive(Debug, Serialize, Deserialize)]
struct StoredEvent {
    kind: String,
    status: String,
    at: i64,
    duration_s: Option<u32>,
    sip_code: Option<u16>,
    recording_url: Option<String>,
}

fn kind_name(k: EventKind) -> &'static str {
    match k {
        EventKind::Queued => "queued",
        EventKind::Ringing => "ringing",
        EventKind::Answered => "answered",
        EventKind::Completed => "completed",
        EventKind::RecordingReady => "recording-ready",
    }
}

fn kind_parse(s: &str) -> Option<EventKind> {
    [
        EventKind::Queued,
        EventKind::Ringing,
        EventKind::Answered,
        EventKind::Completed,
        EventKind::RecordingReady,
    ]
    .into_iter()
    .find(|k| kind_name(*k) == s)
}

/// Whether `call` runs a call-events plugin.
pub(crate) fn has_plugin(call: &Call) -> bool {
    pinned(call, World::CallEvents).is_some()
}

/// The `call-event` row for `call` having just entered its current status, when the call has
/// a call-events plugin and the status is an event.
pub(crate) fn call_event(call: &Call, at: i64) -> Option<NewDelivery> {
    let kind = kind_of(call.status())?;
    event_row(call, kind, at, None)
}

/// The `call-event` row for a recording of `call` being ready at `url`.
pub(crate) fn recording_event(call: &Call, url: &str, at: i64) -> Option<NewDelivery> {
    event_row(call, EventKind::RecordingReady, at, Some(url.to_owned()))
}

fn event_row(
    call: &Call,
    kind: EventKind,
    at: i64,
    recording_url: Option<String>,
) -> Option<NewDelivery> {
    let pin = pinned(call, World::CallEvents)?;
    let event = StoredEvent {
        kind: kind_name(kind).into(),
        status: call.status().as_str().into(),
        at,
        duration_s: call.duration.and_then(|d| u32::try_from(d).ok()),
        sip_code: call.sip_response_code.and_then(|c| u16::try_from(c).ok()),
        recording_url,
    };
    Some(NewDelivery {
        account_sid: call.account_sid.clone(),
        call_sid: Some(call.sid.clone()),
        kind: CALL_EVENT.into(),
        // what the row is for, in listings; the plugin itself is the call's pin
        url: pin.plugin,
        method: "EVENT".into(),
        body: Some(serde_json::to_vec(&event).ok()?),
        ..NewDelivery::default()
    })
}

/// Why a call event's plugin gave nothing: the plugin's own failure (or a missing call), worth
/// a few retries at most, or one of the moment (no plugin thread free in time, the database
/// out of reach), worth retrying as long as a webhook is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventError {
    pub message: String,
    pub transient: bool,
}

impl From<String> for EventError {
    fn from(message: String) -> Self {
        EventError {
            message,
            transient: false,
        }
    }
}

impl From<&str> for EventError {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

impl From<StoreError> for EventError {
    fn from(e: StoreError) -> Self {
        EventError {
            transient: e.is_unavailable(),
            message: e.to_string(),
        }
    }
}

impl From<HostError> for EventError {
    fn from(e: HostError) -> Self {
        EventError {
            transient: e.is_transient(),
            message: e.to_string(),
        }
    }
}

/// Runs the call-events plugin pinned on a `call-event` row's call and returns the
/// `plugin-request` rows it asked for. The plugin's logs go to the call's event log.
pub(crate) async fn run_call_event(
    plugins: &PluginHost,
    d: &Delivery,
) -> Result<Vec<NewDelivery>, EventError> {
    let w = &d.webhook;
    let stored: StoredEvent = serde_json::from_slice(w.body.as_deref().unwrap_or_default())
        .map_err(|e| format!("the stored event is unreadable: {e}"))?;
    let kind =
        kind_parse(&stored.kind).ok_or_else(|| format!("unknown event kind {:?}", stored.kind))?;
    let call_sid = w.call_sid.as_deref().ok_or("the event names no call")?;
    let store = plugins.store();
    let call = store
        .call(&w.account_sid, call_sid)
        .await?
        .ok_or_else(|| format!("call {call_sid} no longer exists"))?;
    let pin = pinned(&call, World::CallEvents).ok_or("the call has no call-events plugin")?;
    let metadata = match (&call.callout_sid, &call.participant_sid) {
        (Some(callout), Some(participant)) => store
            .participant(&w.account_sid, callout, participant)
            .await?
            .map(|p| p.metadata),
        _ => None,
    };
    let ctx = EventContext {
        account_sid: call.account_sid.clone(),
        now_ms: now_ms(),
        seed: seed(d.id),
        config: pin.config.clone(),
        event: LifecycleEvent {
            kind,
            call_sid: call.sid.clone(),
            status: stored.status,
            direction: call.direction.as_str().to_owned(),
            from: call.from_number.clone(),
            to: call.to_number.clone(),
            duration_s: stored.duration_s,
            sip_code: stored.sip_code,
            callout_id: call.callout_sid.clone(),
            participant_id: call.participant_sid.clone(),
            attempt: call.attempt.and_then(|a| u32::try_from(a).ok()),
            recording_url: stored.recording_url,
            metadata: metadata.unwrap_or_else(|| "{}".into()),
        },
    };
    let outcome = plugins.on_event(&pin, ctx).await?;
    let run = EventsRun {
        event: stored.kind,
        plugin: pin.plugin,
        requests: outcome
            .requests
            .iter()
            .map(|r| RequestAsked {
                method: method_name(r.method).to_owned(),
                url: r.url.clone(),
                key: r.idempotency_key.clone(),
            })
            .collect(),
    };
    store.log_call_event(&call.sid, now_ms(), &CallLogEntry::EventsPlugin(run));
    if outcome.requests.len() > MAX_REQUESTS_PER_EVENT {
        return Err(format!(
            "the plugin asked for {} requests (at most {MAX_REQUESTS_PER_EVENT} per event)",
            outcome.requests.len()
        )
        .into());
    }
    Ok(outcome
        .requests
        .into_iter()
        .map(|r| plugin_request(&call, r))
        .collect::<Result<_, _>>()?)
}

/// A request a plugin asked for, as an outbox row; its URL must be http(s) (the egress policy
/// is applied when it is sent).
pub(crate) fn plugin_request(call: &Call, r: HttpRequest) -> Result<NewDelivery, String> {
    let url = url::Url::parse(&r.url).map_err(|_| "a request URL does not parse".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "a request URL is {}:, not http or https",
            url.scheme()
        ));
    }
    for h in &r.headers {
        let name = reqwest::header::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("request header name {:?} is not valid", h.name))?;
        // the HTTP client frames the message itself
        if [
            reqwest::header::HOST,
            reqwest::header::CONTENT_LENGTH,
            reqwest::header::TRANSFER_ENCODING,
            reqwest::header::CONNECTION,
        ]
        .contains(&name)
        {
            return Err(format!("request header {name} is the host's to set"));
        }
        reqwest::header::HeaderValue::from_str(&h.value)
            .map_err(|_| format!("the value of request header {name} is not valid"))?;
    }
    Ok(NewDelivery {
        account_sid: call.account_sid.clone(),
        call_sid: Some(call.sid.clone()),
        kind: PLUGIN_REQUEST.into(),
        url: r.url,
        method: method_name(r.method).into(),
        headers: r.headers.into_iter().map(|p| (p.name, p.value)).collect(),
        body: Some(r.body),
        idempotency_key: r.idempotency_key,
        ..NewDelivery::default()
    })
}

/// A seed for the plugin's randomness, the same each time one row is run.
fn seed(id: i64) -> u64 {
    (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_events() {
        assert!(kind_of(CallStatus::Queued).is_none());
        assert!(matches!(
            kind_of(CallStatus::Ringing),
            Some(EventKind::Ringing)
        ));
        assert!(matches!(
            kind_of(CallStatus::InProgress),
            Some(EventKind::Answered)
        ));
        for s in [
            CallStatus::Completed,
            CallStatus::Busy,
            CallStatus::NoAnswer,
            CallStatus::Failed,
            CallStatus::Canceled,
        ] {
            assert!(matches!(kind_of(s), Some(EventKind::Completed)), "{s:?}");
        }
        for k in [
            EventKind::Queued,
            EventKind::RecordingReady,
            EventKind::Completed,
        ] {
            assert_eq!(kind_parse(kind_name(k)).map(kind_name), Some(kind_name(k)));
        }
        assert!(kind_parse("exploded").is_none());
    }

    fn call() -> Call {
        crate::test_support::call(CallStatus::Completed, "completed")
    }

    fn request(url: &str, headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: callflow_runtime::events::HttpMethod::Post,
            url: url.into(),
            headers: headers
                .iter()
                .map(|(n, v)| callflow_runtime::events::Param {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            body: b"{}".to_vec(),
            idempotency_key: Some("k".into()),
        }
    }

    #[test]
    fn plugin_requests_are_checked_before_they_are_stored() {
        let ok = plugin_request(
            &call(),
            request("https://rp.example/api", &[("Authorization", "Token t")]),
        )
        .unwrap();
        assert_eq!(
            (ok.kind.as_str(), ok.method.as_str()),
            (PLUGIN_REQUEST, "POST")
        );
        assert_eq!(ok.idempotency_key.as_deref(), Some("k"));
        for (url, headers, why) in [
            ("ftp://rp.example/", vec![], "not http"),
            ("not a url", vec![], "does not parse"),
            ("https://rp.example/", vec![("Bad Name", "x")], "not valid"),
            (
                "https://rp.example/",
                vec![("X-A", "a\r\nInjected: 1")],
                "not valid",
            ),
            (
                "https://rp.example/",
                vec![("Host", "elsewhere")],
                "host's to set",
            ),
            (
                "https://rp.example/",
                vec![("content-length", "1")],
                "host's to set",
            ),
        ] {
            let err = plugin_request(&call(), request(url, &headers)).unwrap_err();
            assert!(err.contains(why), "{url} {headers:?}: {err}");
            // no header value (a token) is quoted back
            assert!(!err.contains("Injected"), "{err}");
        }
    }
}
