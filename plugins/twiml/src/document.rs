//! A TwiML document as the interpreter runs it: verbs with every attribute read, checked and
//! defaulted (Twilio's defaults), durations in milliseconds. URLs stay as written; they are resolved
//! against the document's URL when their verb runs.
//!
//! These types are also the interpreter's state between events (as JSON), so they hold only what
//! execution needs.

use serde::{Deserialize, Serialize};

/// The HTTP method of a TwiML fetch (`method` attributes); TwiML allows only these two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Method {
    #[serde(rename = "GET")]
    Get,
    #[default]
    #[serde(rename = "POST")]
    Post,
}

/// One verb of a `<Response>`, in document order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case")]
pub enum Verb {
    Say(SayVerb),
    Play(PlayVerb),
    /// `<Play digits="…">`: DTMF tones instead of audio.
    SendDigits {
        digits: String,
    },
    Pause {
        ms: u32,
    },
    Gather(GatherVerb),
    Record(RecordVerb),
    Dial(DialVerb),
    Redirect {
        url: String,
        method: Method,
    },
    Hangup,
    Reject {
        busy: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SayVerb {
    /// The words, whitespace collapsed (SSML tags are read as their text).
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// `loop`: 0 repeats until interrupted (the host caps it).
    pub loops: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayVerb {
    pub url: String,
    pub loops: u32,
}

/// What a `<Gather>` plays while it listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prompt {
    Say(SayVerb),
    Play(PlayVerb),
    Pause(u32),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatherVerb {
    pub prompts: Vec<Prompt>,
    /// Where the digits go; `None`: the current document's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    pub method: Method,
    pub timeout_ms: u32,
    /// One key, or empty for none.
    pub finish_on_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_digits: Option<u32>,
    /// `actionOnEmptyResult`: request the action even when nothing was entered.
    pub action_on_empty: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordVerb {
    /// Where the recording goes; `None`: the current document's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    pub method: Method,
    /// Silence that ends the recording; 0 for none.
    pub timeout_ms: u32,
    pub finish_on_key: String,
    pub max_length_ms: u32,
    pub play_beep: bool,
    pub trim_silence: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Number(String),
    Sip(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialVerb {
    pub targets: Vec<Target>,
    /// Requested when the dialled call ends; without one the document goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    pub method: Method,
    pub timeout_ms: u32,
    pub time_limit_ms: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
    pub hangup_on_star: bool,
    pub record: bool,
}

/// Twilio's defaults, in the units TwiML writes them.
pub mod defaults {
    /// `<Pause length>`, seconds.
    pub const PAUSE_S: u32 = 1;
    /// `<Gather timeout>`, seconds.
    pub const GATHER_TIMEOUT_S: u32 = 5;
    pub const GATHER_FINISH_ON_KEY: &str = "#";
    /// `<Record timeout>` (silence), seconds.
    pub const RECORD_TIMEOUT_S: u32 = 5;
    pub const RECORD_FINISH_ON_KEY: &str = "1234567890*#";
    /// `<Record maxLength>`, seconds.
    pub const RECORD_MAX_LENGTH_S: u32 = 3600;
    /// `<Dial timeout>` (ringing), seconds; Twilio accepts 5 to 600.
    pub const DIAL_TIMEOUT_S: u32 = 30;
    pub const DIAL_TIMEOUT_RANGE_S: (u32, u32) = (5, 600);
    /// `<Dial timeLimit>`, seconds (four hours).
    pub const DIAL_TIME_LIMIT_S: u32 = 14_400;
}
