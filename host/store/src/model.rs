//! Records as stored, and the call status machine shared by the API and the engine.

use sqlx::FromRow;

use crate::{CallInstructions, CallLogEntry, CallLogError, HttpMethod, Pins};

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct Account {
    pub seq: i64,
    pub sid: String,
    /// `None` for the root account.
    pub parent_sid: Option<String>,
    #[sqlx(try_from = "crate::text::Flag")]
    pub is_root: bool,
    pub friendly_name: String,
    pub auth_token: String,
    pub status: String,
    pub date_created: i64,
    pub date_updated: i64,
}

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct IncomingNumber {
    pub seq: i64,
    pub sid: String,
    pub account_sid: String,
    pub phone_number: String,
    pub friendly_name: String,
    pub voice_url: Option<String>,
    pub voice_method: HttpMethod,
    pub voice_fallback_url: Option<String>,
    pub voice_fallback_method: HttpMethod,
    pub status_callback: Option<String>,
    pub status_callback_method: HttpMethod,
    pub date_created: i64,
    pub date_updated: i64,
}

/// A closed set of names kept in a TEXT column: the enum, `ALL`, `as_str`, `Display`,
/// `FromStr`, and its column and serde forms (the name; see [`crate::text`]).
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::text::TextError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|c| c.as_str() == s)
                    .ok_or_else(|| $crate::text::TextError::new($what, s))
            }
        }

        impl $crate::text::StoredText for $name {
            fn to_text(&self) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed(self.as_str())
            }
            fn from_text(text: &str) -> Result<Self, $crate::text::TextError> {
                text.parse()
            }
        }

        $crate::text::stored_as_text!($name);
    };
}

pub(crate) use text_enum;

text_enum! {
    /// Twilio's call statuses. `queued`, `ringing` and `in-progress` are live; the rest are final.
    pub enum CallStatus ("call status") {
        Queued => "queued",
        Ringing => "ringing",
        InProgress => "in-progress",
        Completed => "completed",
        Busy => "busy",
        Failed => "failed",
        NoAnswer => "no-answer",
        Canceled => "canceled",
    }
}

impl CallStatus {
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            CallStatus::Queued | CallStatus::Ringing | CallStatus::InProgress
        )
    }

    /// Whether a call may move from `self` to `next`.
    ///
    /// Calls only move forward: queued → ringing → in-progress → completed. Before answer a call can
    /// end busy, no-answer, failed or canceled (never completed); once answered it can only complete
    /// or fail. Final statuses never change.
    pub fn can_become(self, next: CallStatus) -> bool {
        use CallStatus::*;
        matches!(
            (self, next),
            (
                Queued,
                Ringing | InProgress | Busy | Failed | NoAnswer | Canceled
            ) | (Ringing, InProgress | Busy | Failed | NoAnswer | Canceled)
                | (InProgress, Completed | Failed)
        )
    }
}

text_enum! {
    /// Twilio's call directions.
    pub enum Direction ("call direction") {
        Inbound => "inbound",
        OutboundApi => "outbound-api",
        OutboundDial => "outbound-dial",
    }
}

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct Call {
    pub seq: i64,
    pub sid: String,
    pub account_sid: String,
    pub parent_call_sid: Option<String>,
    pub direction: Direction,
    pub to_number: String,
    pub from_number: String,
    pub phone_number_sid: Option<String>,
    pub status: CallStatus,
    pub answered_by: Option<String>,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    /// Seconds from answer to hang-up, once final.
    pub duration: Option<i64>,
    pub sip_response_code: Option<i64>,
    #[sqlx(flatten)]
    pub instructions: CallInstructions,
    /// The plugin versions the call runs with, pinned at creation.
    pub plugins: Pins,
    /// For a callout's attempt: the callout, the participant and which attempt (1-based).
    pub callout_sid: Option<String>,
    pub participant_sid: Option<String>,
    pub attempt: Option<i64>,
    /// The dispatcher takes higher priorities first, then older calls.
    pub priority: i64,
    /// The node that drives the call (none while it waits in the queue).
    pub node: Option<String>,
    pub date_created: i64,
    pub date_updated: i64,
}

impl Call {
    pub fn status(&self) -> CallStatus {
        self.status
    }
}

/// A row of a call's event log, as stored.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct CallEvent {
    pub id: i64,
    pub call_sid: String,
    pub at: i64,
    pub kind: String,
    /// JSON object.
    pub detail: String,
}

impl CallEvent {
    /// The entry this row holds.
    pub fn entry(&self) -> Result<CallLogEntry, CallLogError> {
        CallLogEntry::parse_text(&self.kind, &self.detail)
    }
}

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct Recording {
    pub seq: i64,
    pub sid: String,
    pub account_sid: String,
    pub call_sid: String,
    pub status: String,
    pub source: String,
    pub channels: i64,
    /// Seconds.
    pub duration: i64,
    pub start_time: i64,
    pub error_code: Option<i64>,
    pub wav_path: Option<String>,
    pub mp3_path: Option<String>,
    pub date_created: i64,
    pub date_updated: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_text() {
        for &s in CallStatus::ALL {
            assert_eq!(s.as_str().parse::<CallStatus>(), Ok(s));
        }
        assert!("done".parse::<CallStatus>().is_err());
    }

    #[test]
    fn unanswered_calls_never_complete_and_final_statuses_stay() {
        use CallStatus::*;
        assert!(!Queued.can_become(Completed));
        assert!(!Ringing.can_become(Completed));
        assert!(InProgress.can_become(Completed));
        assert!(!InProgress.can_become(Busy));
        assert!(!InProgress.can_become(Canceled));
        for fin in CallStatus::ALL.iter().copied().filter(|s| s.is_final()) {
            for &next in CallStatus::ALL {
                assert!(!fin.can_become(next), "{fin} -> {next}");
            }
        }
    }
}
