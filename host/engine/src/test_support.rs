//! Fixtures the engine's unit tests share.

use callflow_store::text::StoredText;
use callflow_store::{
    Call, CallInstructions, CallStatus, CallbackEvents, Direction, HttpMethod, Pins,
};

/// A stored call for unit tests: `status`, asking for status callbacks on `events`.
pub(crate) fn call(status: CallStatus, events: &str) -> Call {
    Call {
        seq: 1,
        sid: "CA1".into(),
        account_sid: "AC1".into(),
        parent_call_sid: None,
        direction: Direction::OutboundApi,
        to_number: "+15551".into(),
        from_number: "+15552".into(),
        phone_number_sid: None,
        status,
        answered_by: None,
        start_time: None,
        end_time: None,
        duration: Some(61),
        sip_response_code: Some(486),
        instructions: CallInstructions {
            status_callback: Some("http://example.com/cb?x=1".into()),
            status_callback_method: HttpMethod::Get,
            status_callback_event: CallbackEvents::from_text(events).unwrap(),
            ..CallInstructions::default()
        },
        plugins: Pins::default(),
        callout_sid: None,
        participant_sid: None,
        attempt: None,
        priority: 0,
        node: None,
        date_created: 0,
        date_updated: 0,
    }
}
