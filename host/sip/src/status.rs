//! How a call attempt ended, in SIP terms, mapped to the Twilio call status it gives (busy for
//! 486/600, no-answer for 408/480/487 and the ring timeout, failed otherwise). The engine turns
//! [`EndStatus`] into the store's `CallStatus`; this crate does not depend on the store.

/// How a call ended, as the SIP layer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// Answered (2xx), then ended by either side.
    Answered,
    /// A final non-2xx response to our INVITE, with its status code.
    Rejected(u16),
    /// Nobody answered within the ring timeout (Twilio's `Timeout`); we sent CANCEL.
    RingTimeout,
    /// We cancelled before answer because we were asked to (API or flow), not on timeout.
    Canceled,
    /// No response at all (timer B), or the transport failed.
    TransportFailure,
}

/// The final Twilio call status for a [`CallEnd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndStatus {
    Completed,
    Busy,
    NoAnswer,
    Failed,
    Canceled,
}

impl EndStatus {
    /// Twilio's spelling, the same as the store's `CallStatus`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndStatus::Completed => "completed",
            EndStatus::Busy => "busy",
            EndStatus::NoAnswer => "no-answer",
            EndStatus::Failed => "failed",
            EndStatus::Canceled => "canceled",
        }
    }
}

/// 486 Busy Here and 600 Busy Everywhere → `busy`; 408 Request Timeout, 480 Temporarily
/// Unavailable, 487 Request Terminated (cancelled by someone else, e.g. the far end's own
/// timer) and our ring timeout → `no-answer`; any other rejection, 3xx included (we do not
/// follow redirects), and transport failure → `failed`; our CANCEL → `canceled`.
pub fn end_status(end: CallEnd) -> EndStatus {
    match end {
        CallEnd::Answered => EndStatus::Completed,
        CallEnd::Rejected(486 | 600) => EndStatus::Busy,
        CallEnd::Rejected(408 | 480 | 487) | CallEnd::RingTimeout => EndStatus::NoAnswer,
        CallEnd::Rejected(_) | CallEnd::TransportFailure => EndStatus::Failed,
        CallEnd::Canceled => EndStatus::Canceled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn table() {
        let ends = [
            CallEnd::Answered,
            CallEnd::Rejected(486),
            CallEnd::Rejected(600),
            CallEnd::Rejected(408),
            CallEnd::Rejected(480),
            CallEnd::Rejected(487),
            CallEnd::RingTimeout,
            CallEnd::Rejected(302),
            CallEnd::Rejected(403),
            CallEnd::Rejected(404),
            CallEnd::Rejected(488),
            CallEnd::Rejected(500),
            CallEnd::Rejected(503),
            CallEnd::Rejected(603),
            CallEnd::Rejected(604),
            CallEnd::TransportFailure,
            CallEnd::Canceled,
        ];
        let table: String = ends
            .iter()
            .map(|&e| format!("{e:?} -> {}\n", end_status(e).as_str()))
            .collect();
        expect![[r#"
            Answered -> completed
            Rejected(486) -> busy
            Rejected(600) -> busy
            Rejected(408) -> no-answer
            Rejected(480) -> no-answer
            Rejected(487) -> no-answer
            RingTimeout -> no-answer
            Rejected(302) -> failed
            Rejected(403) -> failed
            Rejected(404) -> failed
            Rejected(488) -> failed
            Rejected(500) -> failed
            Rejected(503) -> failed
            Rejected(603) -> failed
            Rejected(604) -> failed
            TransportFailure -> failed
            Canceled -> canceled
        "#]]
        .assert_eq(&table);
    }
}
