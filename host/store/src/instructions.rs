//! What a call is told to do, as its create request (or its number, or its `<Dial>`) gave it:
//! [`CallInstructions`], shared by a callout's [`crate::CallTemplate`], a [`crate::NewCall`]
//! and a stored [`crate::Call`]; and the plugin versions a call is pinned to ([`Pins`]).
//!
//! Each value is stored as the text earlier builds wrote, so existing rows and callout
//! templates read as they are.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::FromRow;

use crate::model::text_enum;
use crate::text::{StoredText, TextError, stored_as_text};
use crate::{CallStatus, TIME_LIMIT_DEFAULT, TIMEOUT_DEFAULT};

text_enum! {
    /// How a call's webhooks (its document, fallback and status callbacks) are requested;
    /// Twilio's default is POST.
    #[derive(Default)]
    pub enum HttpMethod ("HTTP method") {
        Get => "GET",
        #[default]
        Post => "POST",
    }
}

text_enum! {
    /// `MachineDetection`: answering-machine detection before the call's flow starts.
    pub enum MachineDetection ("machine detection") {
        Enable => "Enable",
        DetectMessageEnd => "DetectMessageEnd",
    }
}

text_enum! {
    /// The moments of a call its status callback can be asked for (`StatusCallbackEvent`).
    pub enum CallbackEvent ("status callback event") {
        Initiated => "initiated",
        Ringing => "ringing",
        Answered => "answered",
        Completed => "completed",
    }
}

impl CallbackEvent {
    /// The event a call entering `status` is: `queued` is initiated, `in-progress` answered,
    /// every final status completed.
    pub fn of(status: CallStatus) -> CallbackEvent {
        match status {
            CallStatus::Queued => CallbackEvent::Initiated,
            CallStatus::Ringing => CallbackEvent::Ringing,
            CallStatus::InProgress => CallbackEvent::Answered,
            _ => CallbackEvent::Completed,
        }
    }
}

/// The status callback events a call asked for, each once, in the order asked (stored as
/// that space-separated list, e.g. `initiated answered completed`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackEvents(Vec<CallbackEvent>);

impl CallbackEvents {
    /// Adds `e` unless it is there already.
    pub fn insert(&mut self, e: CallbackEvent) {
        if !self.0.contains(&e) {
            self.0.push(e);
        }
    }

    pub fn contains(&self, e: CallbackEvent) -> bool {
        self.0.contains(&e)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = CallbackEvent> + '_ {
        self.0.iter().copied()
    }
}

impl FromIterator<CallbackEvent> for CallbackEvents {
    fn from_iter<I: IntoIterator<Item = CallbackEvent>>(iter: I) -> Self {
        let mut set = CallbackEvents::default();
        for e in iter {
            set.insert(e);
        }
        set
    }
}

impl StoredText for CallbackEvents {
    fn to_text(&self) -> Cow<'_, str> {
        let names: Vec<&str> = self.iter().map(CallbackEvent::as_str).collect();
        Cow::Owned(names.join(" "))
    }

    fn from_text(text: &str) -> Result<Self, TextError> {
        text.split_whitespace().map(str::parse).collect()
    }
}

stored_as_text!(CallbackEvents);

/// The parameters of the request that created a call, as received: ordered name/value pairs
/// (stored as a JSON array of `[name, value]` pairs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParams(pub Vec<(String, String)>);

impl StoredText for RequestParams {
    fn to_text(&self) -> Cow<'_, str> {
        // a list of string pairs always serialises
        Cow::Owned(serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".into()))
    }

    fn from_text(text: &str) -> Result<Self, TextError> {
        serde_json::from_str(text)
            .map(RequestParams)
            .map_err(|_| TextError::new("request parameter list", text))
    }
}

stored_as_text!(RequestParams);

/// A plugin version pinned for one world of a call, when the call was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// A plugin version's sid, or `builtin:<name>`.
    pub plugin: String,
    pub sha256: Option<String>,
    /// The binding's configuration: the text of a JSON object, handed to the plugin.
    pub config: String,
    /// The binding's per-event deadline, in milliseconds.
    pub deadline_ms: Option<u64>,
    /// The binding pinned, whose secrets are merged over `config` when the plugin runs (they
    /// are not copied here).
    pub binding: Option<String>,
}

impl Pin {
    /// A built-in plugin, unconfigured.
    pub fn builtin(name: &str) -> Pin {
        Pin {
            plugin: format!("builtin:{name}"),
            sha256: None,
            config: "{}".into(),
            deadline_ms: None,
            binding: None,
        }
    }

    /// A pin as stored: `config` as a JSON object (anything else reads as `{}`).
    fn from_value(v: &Value) -> Pin {
        Pin {
            plugin: v["plugin"].as_str().unwrap_or_default().to_owned(),
            sha256: v["sha256"].as_str().map(str::to_owned),
            config: v
                .get("config")
                .filter(|c| c.is_object())
                .map_or_else(|| "{}".to_owned(), Value::to_string),
            deadline_ms: v["deadline_ms"].as_u64(),
            binding: v["binding"].as_str().map(str::to_owned),
        }
    }

    fn to_value(&self) -> Value {
        let config: Value = serde_json::from_str(&self.config).unwrap_or_else(|_| json!({}));
        let mut v = json!({
            "plugin": self.plugin, "sha256": self.sha256, "config": config,
            "deadline_ms": self.deadline_ms,
        });
        if let Some(b) = &self.binding {
            v["binding"] = json!(b);
        }
        v
    }
}

/// The plugin versions a call runs with, by world name (`call-flow`, `retry-policy`, …);
/// a world with no pin runs its built-in default, if it has one. Stored as a JSON object by
/// world.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins(BTreeMap<String, Pin>);

impl Pins {
    /// The pin of `world`, if the call has one.
    pub fn get(&self, world: &str) -> Option<&Pin> {
        self.0.get(world)
    }

    pub fn insert(&mut self, world: &str, pin: Pin) {
        self.0.insert(world.to_owned(), pin);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl StoredText for Pins {
    fn to_text(&self) -> Cow<'_, str> {
        let by_world: Map<String, Value> = self
            .0
            .iter()
            .map(|(world, pin)| (world.clone(), pin.to_value()))
            .collect();
        Cow::Owned(Value::Object(by_world).to_string())
    }

    fn from_text(text: &str) -> Result<Self, TextError> {
        let bad = || TextError::new("plugin pin list", text);
        let v: Value = serde_json::from_str(text).map_err(|_| bad())?;
        let by_world = v.as_object().ok_or_else(bad)?;
        let mut pins = Pins::default();
        for (world, pin) in by_world {
            if !pin.is_object() {
                return Err(bad());
            }
            pins.insert(world, Pin::from_value(pin));
        }
        Ok(pins)
    }
}

stored_as_text!(Pins);

/// What a call does and whom it tells: the instructions of its create request (`Url`/`Twiml`
/// and their methods, callbacks, timeouts, digits, recording, detection), kept with the call.
/// A callout's template, a call to create and a stored call each hold one.
///
/// [`Default`] is Twilio's defaults: no document, POST everywhere, a status callback (if any)
/// on `completed` only, a 60 s ring timeout, a 4 h time limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, FromRow)]
pub struct CallInstructions {
    pub url: Option<String>,
    pub method: HttpMethod,
    /// An inline TwiML document, instead of `url`.
    pub twiml: Option<String>,
    pub fallback_url: Option<String>,
    pub fallback_method: HttpMethod,
    pub status_callback: Option<String>,
    pub status_callback_method: HttpMethod,
    pub status_callback_event: CallbackEvents,
    /// Ring timeout in seconds.
    pub timeout: i64,
    /// Maximum call length in seconds.
    pub time_limit: i64,
    /// Digits to send once the call is answered.
    pub send_digits: Option<String>,
    /// Record the whole call.
    #[sqlx(try_from = "crate::text::Flag")]
    pub record: bool,
    pub machine_detection: Option<MachineDetection>,
    /// The create request as received.
    pub request_params: RequestParams,
}

impl Default for CallInstructions {
    fn default() -> Self {
        CallInstructions {
            url: None,
            method: HttpMethod::Post,
            twiml: None,
            fallback_url: None,
            fallback_method: HttpMethod::Post,
            status_callback: None,
            status_callback_method: HttpMethod::Post,
            status_callback_event: CallbackEvents::from_iter([CallbackEvent::Completed]),
            timeout: TIMEOUT_DEFAULT,
            time_limit: TIME_LIMIT_DEFAULT,
            send_digits: None,
            record: false,
            machine_detection: None,
            request_params: RequestParams::default(),
        }
    }
}

/// Twilio's `RecordingStatusCallback` of a call created with `Record=true`: where and how the
/// recording's status is told, and for which of its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingCallback {
    pub url: String,
    pub method: HttpMethod,
    /// `in-progress` (the recording started), `completed`, `absent` (nothing was recorded);
    /// default `completed`.
    pub events: Vec<String>,
}

/// Twilio's machine detection tuning on create: name, least, most (more counts as the most).
pub const AMD_TUNING: [(&str, i64, i64); 4] = [
    ("MachineDetectionTimeout", 3, 59),
    ("MachineDetectionSpeechThreshold", 1000, 6000),
    ("MachineDetectionSpeechEndThreshold", 500, 5000),
    ("MachineDetectionSilenceTimeout", 2000, 10000),
];

/// The events a recording status callback may ask for.
pub const RECORDING_EVENTS: [&str; 3] = ["in-progress", "completed", "absent"];

impl RecordingCallback {
    /// The callback that the create request's `params` ask for: none without
    /// `RecordingStatusCallback`; `Err((parameter, why))` for a method or an event Twilio would
    /// refuse. (The URL itself is checked by the API, which alone knows its rules.)
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Result<Option<RecordingCallback>, (&'static str, String)> {
        let get = |name: &str| {
            params
                .clone()
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v)
        };
        let Some(url) = get("RecordingStatusCallback").filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let method = match get("RecordingStatusCallbackMethod") {
            None | Some("") => HttpMethod::Post,
            Some(m) => HttpMethod::from_text(&m.to_ascii_uppercase()).map_err(|_| {
                (
                    "RecordingStatusCallbackMethod",
                    "must be GET or POST".to_owned(),
                )
            })?,
        };
        let mut events = Vec::new();
        for (_, value) in params
            .into_iter()
            .filter(|(n, _)| *n == "RecordingStatusCallbackEvent")
        {
            for e in value.split([' ', ',']).filter(|e| !e.is_empty()) {
                if !RECORDING_EVENTS.contains(&e) {
                    return Err((
                        "RecordingStatusCallbackEvent",
                        format!("{e:?} is not one of in-progress, completed, absent"),
                    ));
                }
                if !events.iter().any(|x| x == e) {
                    events.push(e.to_owned());
                }
            }
        }
        if events.is_empty() {
            events.push("completed".into());
        }
        Ok(Some(RecordingCallback {
            url: url.to_owned(),
            method,
            events,
        }))
    }

    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }
}

impl CallInstructions {
    /// The recording status callback the create request asked for (checked by the API when
    /// the call was created; read from the request as received, like Twilio's parameters).
    pub fn recording_callback(&self) -> Option<RecordingCallback> {
        let params = self
            .request_params
            .0
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()));
        RecordingCallback::from_params(params).ok().flatten()
    }

    /// A parameter of the create request as received.
    pub fn request_param(&self, name: &str) -> Option<&str> {
        self.request_params
            .0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// One of [`AMD_TUNING`] as the create request gave it, within Twilio's bounds (`None`
    /// when absent).
    pub fn amd_tuning(&self, name: &str) -> Option<i64> {
        let (_, least, most) = AMD_TUNING.iter().find(|(n, _, _)| *n == name)?;
        let v: i64 = self.request_param(name)?.trim().parse().ok()?;
        Some(v.clamp(*least, *most))
    }

    /// `AsyncAmd=true`: where and how detection's verdict is told while the flow runs (no
    /// URL: it is only stored on the call).
    pub fn async_amd(&self) -> Option<(Option<&str>, HttpMethod)> {
        if self.request_param("AsyncAmd") != Some("true") {
            return None;
        }
        let method = match self.request_param("AsyncAmdStatusCallbackMethod") {
            Some(m) if m.eq_ignore_ascii_case("GET") => HttpMethod::Get,
            _ => HttpMethod::Post,
        };
        Some((self.request_param("AsyncAmdStatusCallback"), method))
    }

    /// Twilio's `RecordingChannels` of a `Record=true` call: 2 for `dual`, else 1 (checked by
    /// the API; read from the request as received).
    pub fn recording_channels(&self) -> u16 {
        let dual = self
            .request_params
            .0
            .iter()
            .any(|(n, v)| n == "RecordingChannels" && v == "dual");
        if dual { 2 } else { 1 }
    }

    /// Whether the call's status callback is due when the call enters `status`.
    pub fn wants_callback(&self, status: CallStatus) -> bool {
        self.status_callback.is_some()
            && self
                .status_callback_event
                .contains(CallbackEvent::of(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_callback_reads_twilios_parameters_and_defaults() {
        let p = |pairs: &[(&'static str, &'static str)]| {
            RecordingCallback::from_params(pairs.iter().copied())
        };
        assert_eq!(p(&[("Record", "true")]), Ok(None));
        let cb = p(&[("RecordingStatusCallback", "https://a.example/r")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (cb.method, cb.events),
            (HttpMethod::Post, vec!["completed".to_owned()])
        );
        let cb = p(&[
            ("RecordingStatusCallback", "https://a.example/r"),
            ("RecordingStatusCallbackMethod", "get"),
            ("RecordingStatusCallbackEvent", "in-progress completed"),
            ("RecordingStatusCallbackEvent", "absent,completed"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(cb.method, HttpMethod::Get);
        assert_eq!(cb.events, ["in-progress", "completed", "absent"]);
        assert_eq!(
            p(&[
                ("RecordingStatusCallback", "u"),
                ("RecordingStatusCallbackEvent", "paused")
            ])
            .unwrap_err()
            .0,
            "RecordingStatusCallbackEvent"
        );
        assert!(
            p(&[
                ("RecordingStatusCallback", "u"),
                ("RecordingStatusCallbackMethod", "PUT")
            ])
            .is_err()
        );
    }

    #[test]
    fn methods_detection_and_events_read_what_is_stored() {
        assert_eq!(HttpMethod::from_text("GET"), Ok(HttpMethod::Get));
        assert_eq!(HttpMethod::Post.to_text(), "POST");
        assert!(HttpMethod::from_text("PUT").is_err());
        for m in MachineDetection::ALL {
            assert_eq!(MachineDetection::from_text(m.as_str()), Ok(*m));
        }
        assert_eq!(
            MachineDetection::from_text("DetectMessageEnd"),
            Ok(MachineDetection::DetectMessageEnd)
        );
        let events = CallbackEvents::from_text("completed initiated completed").unwrap();
        assert!(events.contains(CallbackEvent::Initiated));
        assert!(!events.contains(CallbackEvent::Ringing));
        // written back once each, in the order asked
        assert_eq!(events.to_text(), "completed initiated");
        assert_eq!(
            CallbackEvents::from_text("initiated ringing answered completed")
                .unwrap()
                .to_text(),
            "initiated ringing answered completed"
        );
        assert!(CallbackEvents::from_text("exploded").is_err());
        assert_eq!(
            CallbackEvent::of(CallStatus::Busy),
            CallbackEvent::Completed
        );
    }

    #[test]
    fn request_params_keep_order_and_duplicates() {
        let stored = r#"[["To","+15558675310"],["StatusCallbackEvent","answered"],["StatusCallbackEvent","completed"]]"#;
        let p = RequestParams::from_text(stored).unwrap();
        assert_eq!(p.0.len(), 3);
        assert_eq!(p.0[2], ("StatusCallbackEvent".into(), "completed".into()));
        assert_eq!(p.to_text(), stored);
        assert_eq!(RequestParams::default().to_text(), "[]");
        assert!(RequestParams::from_text(r#"{"To":"x"}"#).is_err());
    }

    /// A `plugins` value as the engine's `pin_for_call` wrote it before pins were typed.
    const STORED_PINS: &str = r#"{"call-flow":{"config":{"greeting":"number"},"deadline_ms":10,"plugin":"ZP0123","sha256":"ab12"},"retry-policy":{"config":{},"deadline_ms":1000,"plugin":"builtin:retry","sha256":"cd34"}}"#;

    #[test]
    fn pins_read_and_write_the_stored_object() {
        let pins = Pins::from_text(STORED_PINS).unwrap();
        assert_eq!(
            pins.get("call-flow"),
            Some(&Pin {
                plugin: "ZP0123".into(),
                sha256: Some("ab12".into()),
                config: r#"{"greeting":"number"}"#.into(),
                deadline_ms: Some(10),
                binding: None,
            })
        );
        assert_eq!(pins.get("retry-policy").unwrap().plugin, "builtin:retry");
        // a pin whose binding has secrets names the binding, and holds none of the secrets
        let mut with = Pins::default();
        let pin = Pin {
            binding: Some("ZB1".into()),
            ..Pin::builtin("rapidpro")
        };
        with.insert("call-events", pin.clone());
        let text = with.to_text().into_owned();
        assert!(text.contains(r#""binding":"ZB1""#), "{text}");
        assert_eq!(
            Pins::from_text(&text).unwrap().get("call-events"),
            Some(&pin)
        );
        assert_eq!(pins.get("recording"), None);
        assert_eq!(pins.to_text(), STORED_PINS);
        assert_eq!(Pins::from_text("{}").unwrap(), Pins::default());
        assert_eq!(Pins::default().to_text(), "{}");
        assert!(Pins::from_text("not json").is_err());
        assert!(Pins::from_text("[]").is_err());
    }

    #[test]
    fn a_pin_reads_leniently_as_the_engine_did() {
        let pins = Pins::from_text(
            r#"{"call-flow": {"plugin": "ZP1", "sha256": "ab", "config": {"x": 1}, "deadline_ms": 20},
                "retry-policy": {"plugin": "builtin:retry", "sha256": "cd", "config": "not an object"}}"#,
        )
        .unwrap();
        assert_eq!(pins.get("call-flow").unwrap().config, r#"{"x":1}"#);
        let retry = pins.get("retry-policy").unwrap();
        assert_eq!((retry.config.as_str(), retry.deadline_ms), ("{}", None));
        assert_eq!(Pin::builtin("twiml").plugin, "builtin:twiml");
    }

    #[test]
    fn instructions_default_to_twilios() {
        let d = CallInstructions::default();
        assert_eq!(
            (d.method, d.fallback_method, d.status_callback_method),
            (HttpMethod::Post, HttpMethod::Post, HttpMethod::Post)
        );
        assert_eq!(d.status_callback_event.to_text(), "completed");
        assert_eq!((d.timeout, d.time_limit), (60, 14_400));
        assert!(
            !d.wants_callback(CallStatus::Completed),
            "no URL, no callback"
        );
        let with_url = CallInstructions {
            status_callback: Some("http://example.com/cb".into()),
            ..d
        };
        assert!(with_url.wants_callback(CallStatus::Failed));
        assert!(!with_url.wants_callback(CallStatus::Ringing));
    }
}
