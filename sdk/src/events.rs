//! Call events: lifecycle events of an account's calls (queued, ringing, answered, completed,
//! recording ready), answered with HTTP requests for the host to make, such as starting a RapidPro
//! flow once a callout call completes.
//!
//! The host makes the requests through its webhook client (egress policy, timeouts) and retries
//! them until they succeed; requests with the same idempotency key are made at most once.

/// The generated bindings. Plugin authors use the re-exports in this module instead.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        world: "call-events",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_call_events",
        default_bindings_module: "callflow_sdk::events::wit",
        runtime_path: "callflow_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq],
        // one copy of the shared types for every world, so `HttpRequest` is the same type everywhere
        with: { "callflow:plugin/types@0.1.0": callflow_sdk::flow::wit::callflow::plugin::types },
    });
}

pub use crate::flow::wit::callflow::plugin::types::HttpRequest;
pub use crate::flow::{HttpMethod, LogLevel, LogLine, Param};
pub use wit::callflow::plugin::event_types::{
    EventContext, EventKind, EventOutcome, LifecycleEvent,
};

/// A call-events handler. Implement it, then export it with
/// [`export_call_events!`](crate::export_call_events).
pub trait CallEvents {
    /// Handles one lifecycle event: pushes HTTP requests and log lines into `out`.
    ///
    /// There is no error: an event the handler cannot use is logged and left alone.
    fn on_event(ctx: &EventContext, out: &mut Output);
}

/// The requests and log lines a handler produces for one event, in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    /// Requests for the host to make.
    pub requests: Vec<HttpRequest>,
    /// Log lines, kept with the call.
    pub logs: Vec<LogLine>,
}

impl Output {
    /// Asks the host to make `request` (see [`HttpRequest`]'s builders, such as
    /// [`HttpRequest::post_json`]).
    pub fn request(&mut self, request: HttpRequest) -> &mut Self {
        self.requests.push(request);
        self
    }

    /// Adds a log line.
    pub fn log(&mut self, level: LogLevel, message: impl Into<String>) -> &mut Self {
        self.logs.push(LogLine::new(level, message));
        self
    }
}

impl EventKind {
    /// Twilio's call status when an event of this kind happens (`recording-ready` comes once
    /// the call has completed).
    pub fn status(self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Ringing => "ringing",
            EventKind::Answered => "in-progress",
            EventKind::Completed | EventKind::RecordingReady => "completed",
        }
    }
}

/// Runs `E` for one event: what the export and the test harness both call.
#[doc(hidden)]
pub fn run<E: CallEvents>(ctx: &EventContext) -> EventOutcome {
    let mut out = Output::default();
    E::on_event(ctx, &mut out);
    EventOutcome {
        requests: out.requests,
        logs: out.logs,
    }
}

/// Exports a [`CallEvents`] handler as the plugin's `call-events` world:
/// `callflow_sdk::export_call_events!(MyHandler);` at the root of the plugin crate.
#[macro_export]
macro_rules! export_call_events {
    ($handler:ty) => {
        const _: () = {
            struct __CallflowEventsExport;
            impl $crate::events::wit::Guest for __CallflowEventsExport {
                fn on_event(ctx: $crate::events::EventContext) -> $crate::events::EventOutcome {
                    $crate::events::run::<$handler>(&ctx)
                }
            }
            $crate::events::wit::__export_call_events!(__CallflowEventsExport with_types_in $crate::events::wit);
        };
    };
}

/// Drives a [`CallEvents`] handler natively, exactly as the host would.
#[derive(Debug)]
pub struct EventTester<E: CallEvents> {
    /// The context the handler sees (the first attempt of a callout participant); change it
    /// freely between events.
    pub ctx: EventContext,
    _handler: std::marker::PhantomData<E>,
}

impl<E: CallEvents> EventTester<E> {
    /// A tester with `config` (JSON) as the binding's configuration.
    pub fn new(config: &str) -> Self {
        EventTester {
            ctx: test_context(config),
            _handler: std::marker::PhantomData,
        }
    }

    /// Delivers an event of `kind` (setting the event's kind and Twilio status; the other fields
    /// stay as they are in `ctx.event`) and returns what the handler asked for.
    pub fn send(&mut self, kind: EventKind) -> EventOutcome {
        self.ctx.event.kind = kind;
        self.ctx.event.status = kind.status().into();
        run::<E>(&self.ctx)
    }
}

/// A plausible context for tests: an outbound callout call, first attempt, just answered.
pub fn test_context(config: &str) -> EventContext {
    EventContext {
        account_sid: "AC00000000000000000000000000000000".into(),
        now_ms: 1_800_000_000_000,
        seed: 42,
        config: config.into(),
        event: LifecycleEvent {
            kind: EventKind::Answered,
            call_sid: "CA00000000000000000000000000000000".into(),
            status: EventKind::Answered.status().into(),
            direction: "outbound-api".into(),
            from: "+15005550006".into(),
            to: "+15558675310".into(),
            duration_s: None,
            sip_code: None,
            callout_id: Some("CO00000000000000000000000000000000".into()),
            participant_id: Some("PA00000000000000000000000000000000".into()),
            attempt: Some(1),
            recording_url: None,
            metadata: "{}".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a flow when a call completes; logs everything else.
    struct StartFlow;

    impl CallEvents for StartFlow {
        fn on_event(ctx: &EventContext, out: &mut Output) {
            let e = &ctx.event;
            if e.kind != EventKind::Completed {
                out.log(LogLevel::Debug, format!("{} ignored", e.status));
                return;
            }
            out.request(
                HttpRequest::post_json(
                    ctx.config.clone(),
                    &serde_json::json!({ "call": e.call_sid, "duration": e.duration_s }),
                )
                .idempotency_key(format!("completed:{}", e.call_sid)),
            );
        }
    }

    #[test]
    fn completed_calls_start_a_flow_and_the_rest_is_logged() {
        let mut t = EventTester::<StartFlow>::new("https://flows.example.com/start");
        let answered = t.send(EventKind::Answered);
        assert!(answered.requests.is_empty());
        assert_eq!(
            answered.logs,
            vec![LogLine::new(LogLevel::Debug, "in-progress ignored")]
        );
        t.ctx.event.duration_s = Some(42);
        let done = t.send(EventKind::Completed);
        assert_eq!(t.ctx.event.status, "completed");
        let [req] = &done.requests[..] else {
            panic!("{done:?}")
        };
        assert_eq!(req.url, "https://flows.example.com/start");
        assert_eq!(
            req.body,
            br#"{"call":"CA00000000000000000000000000000000","duration":42}"#
        );
        assert_eq!(
            req.idempotency_key.as_deref(),
            Some("completed:CA00000000000000000000000000000000")
        );
        assert!(done.logs.is_empty());
    }
}
