//! Fixtures the engine's unit tests share.

use callflow_store::{Call, CallStatus, StoredStatus};

/// A stored call for unit tests: `status`, asking for status callbacks on `events`.
pub(crate) fn call(status: CallStatus, events: &str) -> Call {
    Call {
        seq: 1,
        sid: "CA1".into(),
        account_sid: "AC1".into(),
        parent_call_sid: None,
        direction: "outbound-api".into(),
        to_number: "+15551".into(),
        from_number: "+15552".into(),
        phone_number_sid: None,
        status: StoredStatus(status),
        answered_by: None,
        start_time: None,
        end_time: None,
        duration: Some(61),
        sip_response_code: Some(486),
        url: None,
        method: "POST".into(),
        twiml: None,
        fallback_url: None,
        fallback_method: "POST".into(),
        status_callback: Some("http://example.com/cb?x=1".into()),
        status_callback_method: "GET".into(),
        status_callback_event: events.into(),
        timeout: 60,
        time_limit: 14_400,
        send_digits: None,
        record: false,
        machine_detection: None,
        request_params: "[]".into(),
        plugins: "{}".into(),
        callout_sid: None,
        participant_sid: None,
        attempt: None,
        priority: 0,
        date_created: 0,
        date_updated: 0,
    }
}
