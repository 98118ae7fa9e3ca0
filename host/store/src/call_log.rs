//! A call's event log, typed: one [`CallLogEntry`] variant per kind of entry. An entry is
//! stored as a `call_events` row, its kind (`flow.start`, `ringing`, …) and its detail (a JSON
//! object), in the form earlier builds wrote, so old rows read back; [`CallLogEntry::kind`],
//! [`CallLogEntry::detail`] and [`CallLogEntry::parse`] are the one place that form is
//! written and read. The store writes the status entries (`created`, each status, `updated`);
//! the engine writes the rest through [`crate::Store::append_call_event`]; `callflow replay`
//! reads them back.
//!
//! What a plugin sent or was sent (a flow's events and commands) is kept as the JSON the
//! plugin world defines: the store does not know those types.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};

use crate::model::text_enum;
use crate::{CallStatus, Direction, HttpMethod, Settlement};

/// One entry of a call's event log.
#[derive(Debug, Clone, PartialEq)]
pub enum CallLogEntry {
    /// `created`: the call was stored, in this status (logged by the store).
    Created { status: CallStatus },
    /// The call entered `status` (the kind is the status' name; logged by the store).
    Status {
        status: CallStatus,
        cause: StatusCause,
    },
    /// `updated`: the API gave the call new instructions.
    Updated(NewInstructions),
    /// `flow.start`: the call's flow starts, with what its plugin is told of the call.
    FlowStart(FlowStarted),
    /// `flow.event`: an event delivered to the flow plugin.
    FlowEvent(DeliveredEvent),
    /// `flow.command`: a command of the flow plugin, as the plugin world's JSON, before it
    /// is carried out.
    FlowCommand(Value),
    /// `flow.answered`: the flow answered the ringing call.
    FlowAnswered,
    /// `flow.refused`: the flow refused the ringing call with this SIP status.
    FlowRefused { sip: u16 },
    /// `flow.redirect`: the API redirected the running flow.
    FlowRedirect(Redirected),
    /// `flow.amd`: what answering-machine detection decided.
    FlowAmd(Amd),
    /// `flow.dial`: a `<Dial>` placed these child calls to these numbers.
    FlowDial(Dialled),
    /// `flow.media_error`: a prompt could not be made.
    FlowMediaError(MediaError),
    /// `flow.error`: something the flow needed failed.
    FlowError(FlowFailure),
    /// `<source>.log` (`flow.log`, `retry.log`, …): a log line of a plugin, or the host's
    /// note about its flow.
    Log { source: LogSource, line: LogLine },
    /// `recording.stored`: a recording was stored.
    RecordingStored(RecordingStored),
    /// `recording.discarded`: the recording plugin discarded a recording.
    RecordingDiscarded { reason: String },
    /// `recording.notify`: a recording plugin's notification could not be sent.
    RecordingNotify(NotifyFailure),
    /// `events.plugin`: the call-events plugin ran on a lifecycle event.
    EventsPlugin(EventsRun),
    /// `retry.decision`: what the retry policy decided after this attempt.
    RetryDecision(Settlement),
    /// `sip.dialog`: the call's SIP dialog as the SIP stack reported it (its INVITE sent, then
    /// answered), as that stack's JSON; the latest lets a later run end the call at the far end.
    SipDialog(Value),
}

/// Why a stored log row does not read as an entry.
#[derive(Debug, thiserror::Error)]
pub enum CallLogError {
    #[error("unknown call log entry kind {0:?}")]
    UnknownKind(String),
    #[error("call log entry {kind}: {source}")]
    Detail {
        kind: String,
        source: serde_json::Error,
    },
}

const CREATED: &str = "created";
const UPDATED: &str = "updated";
const FLOW_START: &str = "flow.start";
const FLOW_EVENT: &str = "flow.event";
const FLOW_COMMAND: &str = "flow.command";
const FLOW_ANSWERED: &str = "flow.answered";
const FLOW_REFUSED: &str = "flow.refused";
const FLOW_REDIRECT: &str = "flow.redirect";
const FLOW_AMD: &str = "flow.amd";
const FLOW_DIAL: &str = "flow.dial";
const FLOW_MEDIA_ERROR: &str = "flow.media_error";
const FLOW_ERROR: &str = "flow.error";
const RECORDING_STORED: &str = "recording.stored";
const RECORDING_DISCARDED: &str = "recording.discarded";
const RECORDING_NOTIFY: &str = "recording.notify";
const EVENTS_PLUGIN: &str = "events.plugin";
const RETRY_DECISION: &str = "retry.decision";
const SIP_DIALOG: &str = "sip.dialog";

impl CallLogEntry {
    /// The row's `kind`.
    pub fn kind(&self) -> &'static str {
        use CallLogEntry::*;
        match self {
            Created { .. } => CREATED,
            Status { status, .. } => status.as_str(),
            Updated(_) => UPDATED,
            FlowStart(_) => FLOW_START,
            FlowEvent(_) => FLOW_EVENT,
            FlowCommand(_) => FLOW_COMMAND,
            FlowAnswered => FLOW_ANSWERED,
            FlowRefused { .. } => FLOW_REFUSED,
            FlowRedirect(_) => FLOW_REDIRECT,
            FlowAmd(_) => FLOW_AMD,
            FlowDial(_) => FLOW_DIAL,
            FlowMediaError(_) => FLOW_MEDIA_ERROR,
            FlowError(_) => FLOW_ERROR,
            Log { source, .. } => source.log_kind(),
            RecordingStored(_) => RECORDING_STORED,
            RecordingDiscarded { .. } => RECORDING_DISCARDED,
            RecordingNotify(_) => RECORDING_NOTIFY,
            EventsPlugin(_) => EVENTS_PLUGIN,
            RetryDecision(_) => RETRY_DECISION,
            SipDialog(_) => SIP_DIALOG,
        }
    }

    /// The row's `detail`, a JSON object (its keys in order, as `json!` wrote them).
    pub fn detail(&self) -> Value {
        use CallLogEntry::*;
        match self {
            Created { status } => json!({ "status": status }),
            Status { cause, .. } => cause.to_value(),
            Updated(u) => value(u),
            FlowStart(s) => value(s),
            FlowEvent(e) => value(e),
            FlowCommand(c) => c.clone(),
            FlowAnswered => json!({}),
            FlowRefused { sip } => json!({ "sip": sip }),
            FlowRedirect(r) => value(r),
            FlowAmd(a) => value(a),
            FlowDial(d) => value(d),
            FlowMediaError(e) => value(e),
            FlowError(e) => value(e),
            Log { line, .. } => value(line),
            RecordingStored(r) => value(r),
            RecordingDiscarded { reason } => json!({ "reason": reason }),
            RecordingNotify(n) => value(n),
            EventsPlugin(e) => value(e),
            RetryDecision(s) => value(s),
            SipDialog(d) => d.clone(),
        }
    }

    /// The entry a row holds, from its kind and its detail parsed as JSON.
    pub fn parse(kind: &str, detail: Value) -> Result<CallLogEntry, CallLogError> {
        use CallLogEntry as E;
        Ok(match kind {
            CREATED => E::Created {
                status: read(kind, field(&detail, "status"))?,
            },
            UPDATED => E::Updated(read(kind, detail)?),
            FLOW_START => E::FlowStart(read(kind, detail)?),
            FLOW_EVENT => E::FlowEvent(read(kind, detail)?),
            FLOW_COMMAND => E::FlowCommand(detail),
            FLOW_ANSWERED => E::FlowAnswered,
            FLOW_REFUSED => E::FlowRefused {
                sip: read(kind, field(&detail, "sip"))?,
            },
            FLOW_REDIRECT => E::FlowRedirect(read(kind, detail)?),
            FLOW_AMD => E::FlowAmd(read(kind, detail)?),
            FLOW_DIAL => E::FlowDial(read(kind, detail)?),
            FLOW_MEDIA_ERROR => E::FlowMediaError(read(kind, detail)?),
            FLOW_ERROR => E::FlowError(read(kind, detail)?),
            RECORDING_STORED => E::RecordingStored(read(kind, detail)?),
            RECORDING_DISCARDED => E::RecordingDiscarded {
                reason: read(kind, field(&detail, "reason"))?,
            },
            RECORDING_NOTIFY => E::RecordingNotify(read(kind, detail)?),
            EVENTS_PLUGIN => E::EventsPlugin(read(kind, detail)?),
            RETRY_DECISION => E::RetryDecision(read(kind, detail)?),
            SIP_DIALOG => E::SipDialog(detail),
            other => {
                if let Ok(status) = other.parse::<CallStatus>() {
                    E::Status {
                        status,
                        cause: read(kind, detail)?,
                    }
                } else if let Some(source) = LogSource::of_kind(other) {
                    E::Log {
                        source,
                        line: read(kind, detail)?,
                    }
                } else {
                    return Err(CallLogError::UnknownKind(other.to_owned()));
                }
            }
        })
    }

    /// [`CallLogEntry::parse`] of a row's detail text.
    pub fn parse_text(kind: &str, detail: &str) -> Result<CallLogEntry, CallLogError> {
        let detail = serde_json::from_str(detail).map_err(|source| CallLogError::Detail {
            kind: kind.to_owned(),
            source,
        })?;
        CallLogEntry::parse(kind, detail)
    }

    /// A log line of the host's own about a plugin's work (`<source>.log`).
    pub fn log(source: LogSource, level: LogLevel, message: impl Into<String>) -> CallLogEntry {
        CallLogEntry::Log {
            source,
            line: LogLine {
                level,
                message: message.into(),
            },
        }
    }
}

/// A detail (or one of its fields) read as `T`.
fn read<T: DeserializeOwned>(kind: &str, detail: Value) -> Result<T, CallLogError> {
    serde_json::from_value(detail).map_err(|source| CallLogError::Detail {
        kind: kind.to_owned(),
        source,
    })
}

fn field(detail: &Value, name: &str) -> Value {
    detail.get(name).cloned().unwrap_or(Value::Null)
}

/// A detail as JSON. Through `Value`, so its keys are in order, as rows written with `json!`
/// have them; the detail types are plain data and always serialise.
fn value(detail: &impl Serialize) -> Value {
    serde_json::to_value(detail).unwrap_or(Value::Null)
}

/// Why a call's status changed: the detail of a status entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusCause {
    /// A SIP response moved the call on: a provisional one (ringing) or the 200 (answered).
    Sip { code: u16 },
    /// The call's dialog ended: how (the engine's name for it), with the final SIP status,
    /// and whether the other side ended it.
    Ended {
        code: Option<u16>,
        end: String,
        by_peer: bool,
    },
    /// The API asked for it (`Status=canceled|completed`; the engine's name for the request).
    Api { requested: String },
    /// The call was live when callflow stopped, and failed when it started again.
    Restarted,
    /// The call could not be placed or go on.
    Error { error: String },
    /// Nothing was said.
    Unspecified,
}

/// How a call found live at start is said to have ended.
const RESTARTED: &str = "callflow restarted during the call";

impl StatusCause {
    fn to_value(&self) -> Value {
        match self {
            StatusCause::Sip { code } => json!({ "sip": code }),
            StatusCause::Ended { code, end, by_peer } => {
                json!({ "sip": code, "end": end, "by_peer": by_peer })
            }
            StatusCause::Api { requested } => json!({ "reason": "api", "requested": requested }),
            StatusCause::Restarted => json!({ "reason": RESTARTED }),
            StatusCause::Error { error } => json!({ "error": error }),
            StatusCause::Unspecified => json!({}),
        }
    }

    fn from_value(v: &Value) -> Option<StatusCause> {
        let text = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
        let sip = |v: &Value| v.as_u64().and_then(|c| u16::try_from(c).ok());
        let o = v.as_object()?;
        Some(if let Some(end) = text("end") {
            StatusCause::Ended {
                code: o.get("sip").and_then(sip),
                end,
                by_peer: o.get("by_peer")?.as_bool()?,
            }
        } else if let Some(code) = o.get("sip") {
            StatusCause::Sip { code: sip(code)? }
        } else if let Some(reason) = text("reason") {
            match reason.as_str() {
                "api" => StatusCause::Api {
                    requested: text("requested")?,
                },
                RESTARTED => StatusCause::Restarted,
                _ => return None,
            }
        } else if let Some(error) = text("error") {
            StatusCause::Error { error }
        } else if o.is_empty() {
            StatusCause::Unspecified
        } else {
            return None;
        })
    }
}

/// Its detail's JSON text.
impl std::fmt::Display for StatusCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_value())
    }
}

impl Serialize for StatusCause {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for StatusCause {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        StatusCause::from_value(&v)
            .ok_or_else(|| D::Error::custom(format!("not a status change's cause: {v}")))
    }
}

/// New instructions from the API: the URL, whether a document came, the method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInstructions {
    pub url: Option<String>,
    pub twiml: bool,
    pub method: Option<HttpMethod>,
}

/// What a call's flow plugin is told of the call, with the pinned version: everything a
/// replay needs to run the same events through another build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStarted {
    pub plugin: String,
    pub sha256: Option<String>,
    /// The binding's configuration (a JSON object's text).
    pub config: String,
    pub direction: Direction,
    pub from: String,
    pub to: String,
    pub parent_call_sid: Option<String>,
    pub answered_by: Option<String>,
    pub url: Option<String>,
    #[serde(with = "context_method")]
    pub method: HttpMethod,
    pub fallback_url: Option<String>,
    #[serde(with = "context_method")]
    pub fallback_method: HttpMethod,
    /// An inline document, instead of the URL.
    pub document: Option<String>,
}

/// `flow.start` spells methods as the plugin world's context does (`Get`, `Post`).
mod context_method {
    use super::*;

    pub fn serialize<S: Serializer>(m: &HttpMethod, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match m {
            HttpMethod::Get => "Get",
            HttpMethod::Post => "Post",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HttpMethod, D::Error> {
        match String::deserialize(d)?.as_str() {
            "Get" => Ok(HttpMethod::Get),
            "Post" => Ok(HttpMethod::Post),
            other => Err(D::Error::custom(format!("unknown method {other:?}"))),
        }
    }
}

/// An event delivered to a call's flow plugin, with the time and seed its invocation saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveredEvent {
    /// The event, as the plugin world's JSON (without a fetched body when `truncated`).
    pub event: Value,
    pub now_ms: i64,
    /// Written as a string: a u64 does not survive every JSON reader.
    #[serde(with = "seed_text")]
    pub seed: u64,
    /// The event was too large to keep whole: a replay cannot re-run it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

mod seed_text {
    use super::*;

    pub fn serialize<S: Serializer>(seed: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&seed.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// New instructions reaching a running flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirected {
    pub url: Option<String>,
    /// A document came instead of a URL.
    pub document: bool,
}

/// Answering-machine detection's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amd {
    /// Twilio's `AnsweredBy`.
    pub answered_by: String,
    /// Which rule decided.
    pub reason: String,
    pub after_ms: u64,
}

/// The child calls a `<Dial>` placed, and the numbers it dialled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialled {
    pub children: Vec<String>,
    pub to: Vec<String>,
}

/// A prompt that could not be made: speech (`say`) or audio from a URL (`play`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaError {
    Say(String),
    Play(String),
}

/// What failed in a flow, by its detail's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FlowFailure {
    /// A recording could not be stored (`source`: a conversation's, when it was one).
    Recording {
        #[serde(rename = "recording")]
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// A `<Dial>` (or one of its targets, `to`) could not be placed.
    Dial {
        #[serde(rename = "dial")]
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// The recording plugin failed (the recording was kept whole).
    RecordingPlugin {
        #[serde(rename = "recording_plugin")]
        error: String,
    },
    /// The flow could not go on: Twilio's application error was played.
    Application { error: String },
}

text_enum! {
    /// Whose log line: the plugin world (or the host's work for it) it came from.
    pub enum LogSource ("log source") {
        Flow => "flow",
        Retry => "retry",
        Recording => "recording",
        Events => "events",
    }
}

impl LogSource {
    fn log_kind(self) -> &'static str {
        match self {
            LogSource::Flow => "flow.log",
            LogSource::Retry => "retry.log",
            LogSource::Recording => "recording.log",
            LogSource::Events => "events.log",
        }
    }

    fn of_kind(kind: &str) -> Option<LogSource> {
        LogSource::ALL
            .iter()
            .copied()
            .find(|s| s.log_kind() == kind)
    }
}

text_enum! {
    pub enum LogLevel ("log level") {
        Debug => "debug",
        Info => "info",
        Warn => "warn",
        Error => "error",
    }
}

/// A log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// A recording stored as a Recording resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingStored {
    pub recording_sid: String,
    /// Twilio's `Source` (`RecordVerb`, `DialVerb`, `OutboundAPI`).
    pub source: String,
}

/// A recording plugin's notification that is not sent: why, and which request when it was
/// one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyFailure {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub error: String,
}

/// A call-events plugin's run on a lifecycle event: the requests it asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsRun {
    /// The lifecycle event (`ringing`, `answered`, `completed`, `recording-ready`, …).
    pub event: String,
    pub plugin: String,
    pub requests: Vec<RequestAsked>,
}

/// One HTTP request a plugin asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAsked {
    pub method: String,
    pub url: String,
    /// Its idempotency key.
    pub key: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows as the store's triggers and the engine wrote them before the log was typed (the
    /// detail texts of `json!`, keys in order): each reads as an entry that writes it again.
    const ROWS: &[(&str, &str)] = &[
        ("created", r#"{"status":"queued"}"#),
        ("ringing", r#"{"sip":180}"#),
        ("in-progress", r#"{"sip":200}"#),
        (
            "completed",
            r#"{"by_peer":true,"end":"Answered","sip":200}"#,
        ),
        (
            "busy",
            r#"{"by_peer":true,"end":"Rejected(486)","sip":486}"#,
        ),
        (
            "failed",
            r#"{"by_peer":false,"end":"TransportFailure","sip":null}"#,
        ),
        ("canceled", r#"{"reason":"api","requested":"Canceled"}"#),
        (
            "failed",
            r#"{"reason":"callflow restarted during the call"}"#,
        ),
        ("failed", r#"{"error":"trunk channels full"}"#),
        ("canceled", "{}"),
        (
            "updated",
            r#"{"method":"GET","twiml":false,"url":"http://example.com/next"}"#,
        ),
        ("updated", r#"{"method":null,"twiml":true,"url":null}"#),
        (
            "flow.start",
            r#"{"answered_by":null,"config":"{}","direction":"outbound-api","document":null,"fallback_method":"Post","fallback_url":null,"from":"+15005550006","method":"Get","parent_call_sid":null,"plugin":"builtin:twiml","sha256":null,"to":"+15558675310","url":"http://127.0.0.1:1/flow"}"#,
        ),
        (
            "flow.event",
            r#"{"event":"Start","now_ms":1700000000000,"seed":"18446744073709551615"}"#,
        ),
        (
            "flow.event",
            r#"{"event":{"Fetched":{"Response":{"body":"","content_type":null,"status":200,"url":"https://a.example/"}}},"now_ms":5,"seed":"7","truncated":true}"#,
        ),
        (
            "flow.command",
            r#"{"Say":{"language":null,"loops":1,"text":"Hello","voice":null}}"#,
        ),
        ("flow.command", r#""Hangup""#),
        ("flow.answered", "{}"),
        ("flow.refused", r#"{"sip":486}"#),
        ("flow.redirect", r#"{"document":true,"url":null}"#),
        (
            "flow.amd",
            r#"{"after_ms":2510,"answered_by":"machine_start","reason":"long-greeting"}"#,
        ),
        (
            "flow.dial",
            r#"{"children":["CA1","CA2"],"to":["+15551","sip:bob@example.com"]}"#,
        ),
        ("flow.media_error", r#"{"say":"no voice"}"#),
        ("flow.media_error", r#"{"play":"404"}"#),
        ("flow.error", r#"{"error":"the flow plugin failed: trap"}"#),
        ("flow.error", r#"{"recording_plugin":"timeout"}"#),
        ("flow.error", r#"{"recording":"disk full"}"#),
        (
            "flow.error",
            r#"{"recording":"disk full","source":"DialVerb"}"#,
        ),
        ("flow.error", r#"{"dial":"a <Dial> with nothing to call"}"#),
        ("flow.error", r#"{"dial":"no trunk","to":"+15551"}"#),
        (
            "flow.log",
            r#"{"level":"warn","message":"only the first 10 targets"}"#,
        ),
        ("retry.log", r#"{"level":"info","message":"retrying"}"#),
        ("recording.log", r#"{"level":"debug","message":"trimmed"}"#),
        ("events.log", r#"{"level":"error","message":"no URN"}"#),
        (
            "recording.stored",
            r#"{"recording_sid":"RE1","source":"OutboundAPI"}"#,
        ),
        ("recording.discarded", r#"{"reason":"too short"}"#),
        ("recording.notify", r#"{"error":"the outbox is gone"}"#),
        (
            "recording.notify",
            r#"{"error":"a request URL does not parse","method":"PUT","url":"nope"}"#,
        ),
        (
            "events.plugin",
            r#"{"event":"completed","plugin":"builtin:rapidpro","requests":[{"key":"PA1","method":"POST","url":"https://rp.example/api/v2/flow_starts.json"},{"key":null,"method":"GET","url":"https://a.example/"}]}"#,
        ),
        (
            "retry.decision",
            r#"{"at":1700000060000,"decision":"retry"}"#,
        ),
        (
            "retry.decision",
            r#"{"decision":"done","outcome":"busy","reason":"the host's limit of 10 attempts"}"#,
        ),
    ];

    #[test]
    fn stored_rows_read_back_and_write_the_same_row() {
        for (kind, detail) in ROWS {
            let entry = CallLogEntry::parse_text(kind, detail)
                .unwrap_or_else(|e| panic!("{kind} {detail}: {e}"));
            assert_eq!(entry.kind(), *kind, "{entry:?}");
            assert_eq!(entry.detail().to_string(), *detail, "{kind}");
        }
    }

    #[test]
    fn entries_read_as_their_kinds() {
        let read = |kind, detail| CallLogEntry::parse_text(kind, detail).unwrap();
        assert_eq!(
            read(
                "busy",
                r#"{"by_peer":true,"end":"Rejected(486)","sip":486}"#
            ),
            CallLogEntry::Status {
                status: CallStatus::Busy,
                cause: StatusCause::Ended {
                    code: Some(486),
                    end: "Rejected(486)".into(),
                    by_peer: true
                }
            }
        );
        let CallLogEntry::FlowStart(start) = read(ROWS[12].0, ROWS[12].1) else {
            panic!("a flow start");
        };
        assert_eq!(
            (start.direction, start.method, start.fallback_method),
            (Direction::OutboundApi, HttpMethod::Get, HttpMethod::Post)
        );
        let CallLogEntry::FlowEvent(e) = read(ROWS[13].0, ROWS[13].1) else {
            panic!("a flow event");
        };
        assert_eq!((e.seed, e.truncated), (u64::MAX, false));
        assert_eq!(
            read("flow.error", r#"{"dial":"no trunk","to":"+15551"}"#),
            CallLogEntry::FlowError(FlowFailure::Dial {
                error: "no trunk".into(),
                to: Some("+15551".into())
            })
        );
        assert_eq!(
            read("retry.log", r#"{"level":"info","message":"m"}"#),
            CallLogEntry::log(LogSource::Retry, LogLevel::Info, "m")
        );
        assert_eq!(
            read("retry.decision", r#"{"at":5,"decision":"retry"}"#),
            CallLogEntry::RetryDecision(Settlement::Retry { at: 5 })
        );
    }

    #[test]
    fn what_is_not_an_entry_is_an_error() {
        let err = |kind, detail| CallLogEntry::parse_text(kind, detail).unwrap_err();
        assert!(matches!(
            err("flow.exploded", "{}"),
            CallLogError::UnknownKind(_)
        ));
        assert!(matches!(
            err("flow.start", "{}"),
            CallLogError::Detail { .. }
        ));
        assert!(matches!(
            err("flow.event", "not json"),
            CallLogError::Detail { .. }
        ));
        assert!(matches!(
            err("ringing", r#"{"sip":"loud"}"#),
            CallLogError::Detail { .. }
        ));
        assert!(matches!(
            err("flow.event", r#"{"event":"Start","now_ms":1,"seed":"-1"}"#),
            CallLogError::Detail { .. }
        ));
    }
}
