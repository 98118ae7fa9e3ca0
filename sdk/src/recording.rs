//! Recording behaviours: what to keep of a recording when it ends, before anything is stored.
//!
//! The host hands over the whole recording as 16-bit signed PCM samples (mono, at
//! [`RecordingContext::sample_rate`]). The behaviour answers with an [`Action`] (keep a range of
//! samples, or discard the recording) and, in its [`Output`], HTTP requests the host makes once
//! the recording is stored (notifications) and log lines.

use std::ops::Range;

/// The generated bindings. Plugin authors use the re-exports in this module instead.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        world: "recording",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_recording",
        default_bindings_module: "callflow_sdk::recording::wit",
        runtime_path: "callflow_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq],
        // one copy of the shared types for every world, so `PluginError` is the same type everywhere
        with: { "callflow:plugin/types@0.1.0": callflow_sdk::flow::wit::callflow::plugin::types },
    });
}

pub use crate::flow::wit::callflow::plugin::types::HttpRequest;
pub use crate::flow::{HttpMethod, LogLevel, LogLine, Param};
pub use wit::callflow::plugin::recording_types::{Action, Keep, RecordingContext, RecordingPlan};

use crate::PluginError;

/// A recording behaviour. Implement it, then export it with
/// [`export_recording!`](crate::export_recording).
pub trait RecordingBehaviour {
    /// Decides what to keep of `audio`; notifications and log lines go into `out`.
    ///
    /// A [`Action::Keep`] range must lie within `audio` (checked, as a `keep` error). Returning an
    /// error discards `out`: the host applies nothing from this invocation and runs its fallback.
    fn process(
        ctx: &RecordingContext,
        audio: &[i16],
        out: &mut Output,
    ) -> Result<Action, PluginError>;
}

/// The notifications and log lines a behaviour produces for one recording, in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    /// Requests for the host to make once the recording is stored.
    pub notify: Vec<HttpRequest>,
    /// Log lines, kept with the call.
    pub logs: Vec<LogLine>,
}

impl Output {
    /// Asks the host to make `request` once the recording is stored (see [`HttpRequest`]'s
    /// builders, such as [`HttpRequest::post_json`]).
    pub fn notify(&mut self, request: HttpRequest) -> &mut Self {
        self.notify.push(request);
        self
    }

    /// Adds a log line.
    pub fn log(&mut self, level: LogLevel, message: impl Into<String>) -> &mut Self {
        self.logs.push(LogLine::new(level, message));
        self
    }
}

impl Action {
    /// Keeps the samples in `range` (indices into the audio).
    pub fn keep(range: Range<usize>) -> Action {
        // a recording's samples are counted in u32 by the host, so real indices always fit
        let at = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        Action::Keep(Keep {
            start: at(range.start),
            end: at(range.end),
        })
    }

    /// Stores nothing; `reason` is logged with the call.
    pub fn discard(reason: impl Into<String>) -> Action {
        Action::Discard(reason.into())
    }
}

impl Keep {
    /// The kept samples as a range of indices into the audio.
    pub fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

impl RecordingContext {
    /// How long `samples` samples last at this recording's sample rate, in milliseconds (0 when
    /// the rate is unknown).
    pub fn duration_ms(&self, samples: usize) -> u64 {
        if self.sample_rate == 0 {
            return 0;
        }
        samples as u64 * 1_000 / u64::from(self.sample_rate)
    }

    /// How many samples last `ms` milliseconds at this recording's sample rate.
    pub fn samples_in(&self, ms: u32) -> usize {
        usize::try_from(u64::from(ms) * u64::from(self.sample_rate) / 1_000).unwrap_or(usize::MAX)
    }
}

/// Runs `R` for one recording: what the export and the test harness both call.
#[doc(hidden)]
pub fn run<R: RecordingBehaviour>(
    ctx: &RecordingContext,
    audio: &[i16],
) -> Result<RecordingPlan, PluginError> {
    let mut out = Output::default();
    let action = R::process(ctx, audio, &mut out)?;
    if let Action::Keep(k) = &action
        && (k.start > k.end || k.end as usize > audio.len())
    {
        return Err(PluginError::new(
            "keep",
            format!(
                "cannot keep samples {}..{} of a recording of {} samples",
                k.start,
                k.end,
                audio.len()
            ),
        ));
    }
    Ok(RecordingPlan {
        action,
        notify: out.notify,
        logs: out.logs,
    })
}

/// Exports a [`RecordingBehaviour`] as the plugin's `recording` world:
/// `callflow_sdk::export_recording!(MyBehaviour);` at the root of the plugin crate.
#[macro_export]
macro_rules! export_recording {
    ($behaviour:ty) => {
        const _: () = {
            struct __CallflowRecordingExport;
            impl $crate::recording::wit::Guest for __CallflowRecordingExport {
                fn process(
                    ctx: $crate::recording::RecordingContext,
                    audio: ::std::vec::Vec<i16>,
                ) -> ::std::result::Result<$crate::recording::RecordingPlan, $crate::PluginError>
                {
                    $crate::recording::run::<$behaviour>(&ctx, &audio)
                }
            }
            $crate::recording::wit::__export_recording!(__CallflowRecordingExport with_types_in $crate::recording::wit);
        };
    };
}

/// Drives a [`RecordingBehaviour`] natively, exactly as the host would.
#[derive(Debug)]
pub struct RecordingTester<R: RecordingBehaviour> {
    /// The context the behaviour sees (8 kHz audio, ended by silence); change it freely.
    pub ctx: RecordingContext,
    _behaviour: std::marker::PhantomData<R>,
}

impl<R: RecordingBehaviour> RecordingTester<R> {
    /// A tester with `config` (JSON) as the binding's configuration.
    pub fn new(config: &str) -> Self {
        RecordingTester {
            ctx: test_context(config),
            _behaviour: std::marker::PhantomData,
        }
    }

    /// Hands `audio` to the behaviour and returns its plan (with the `keep` range checked).
    pub fn process(&self, audio: &[i16]) -> Result<RecordingPlan, PluginError> {
        run::<R>(&self.ctx, audio)
    }
}

/// A plausible context for tests: telephone audio (8 kHz) that ended on silence.
pub fn test_context(config: &str) -> RecordingContext {
    RecordingContext {
        account_sid: "AC00000000000000000000000000000000".into(),
        call_sid: "CA00000000000000000000000000000000".into(),
        now_ms: 1_800_000_000_000,
        seed: 42,
        config: config.into(),
        sample_rate: 8_000,
        reason: "silence".into(),
        digits: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what its config says, and tells a hook about it.
    struct Fixed;

    impl RecordingBehaviour for Fixed {
        fn process(
            ctx: &RecordingContext,
            audio: &[i16],
            out: &mut Output,
        ) -> Result<Action, PluginError> {
            match ctx.config.as_str() {
                "error" => Err(PluginError::new("nope", "on purpose")),
                "past-the-end" => Ok(Action::keep(0..audio.len() + 1)),
                "backwards" => Ok(Action::Keep(Keep { start: 2, end: 1 })),
                "silence" => Ok(Action::discard("silence")),
                _ => {
                    out.notify(
                        HttpRequest::post_json(
                            "https://hooks.example.com/rec",
                            &serde_json::json!({ "samples": audio.len() }),
                        )
                        .header("Authorization", "Bearer t")
                        .idempotency_key(ctx.call_sid.clone()),
                    )
                    .log(LogLevel::Info, "kept");
                    Ok(Action::keep(1..audio.len()))
                }
            }
        }
    }

    #[test]
    fn plans_carry_the_action_notifications_and_logs() {
        let t = RecordingTester::<Fixed>::new("{}");
        let plan = t.process(&[0, 1, 2, 3]).unwrap();
        assert_eq!(plan.action, Action::Keep(Keep { start: 1, end: 4 }));
        let Action::Keep(k) = &plan.action else {
            unreachable!()
        };
        assert_eq!(k.range(), 1..4);
        let [req] = &plan.notify[..] else {
            panic!("{:?}", plan.notify)
        };
        assert_eq!(req.method, HttpMethod::Post);
        assert_eq!(req.url, "https://hooks.example.com/rec");
        assert_eq!(req.body, br#"{"samples":4}"#);
        assert_eq!(
            req.headers,
            vec![
                Param::new("Content-Type", "application/json"),
                Param::new("Authorization", "Bearer t"),
            ]
        );
        assert_eq!(
            req.idempotency_key.as_deref(),
            Some(t.ctx.call_sid.as_str())
        );
        assert_eq!(plan.logs, vec![LogLine::new(LogLevel::Info, "kept")]);
    }

    #[test]
    fn keep_ranges_outside_the_audio_are_errors() {
        let mut t = RecordingTester::<Fixed>::new("past-the-end");
        assert_eq!(t.process(&[0, 1]).unwrap_err().code, "keep");
        t.ctx.config = "backwards".into();
        assert_eq!(t.process(&[0, 1, 2, 3]).unwrap_err().code, "keep");
        t.ctx.config = "error".into();
        assert_eq!(t.process(&[]).unwrap_err().code, "nope");
        t.ctx.config = "silence".into();
        let plan = t.process(&[]).unwrap();
        assert_eq!(plan.action, Action::discard("silence"));
        assert!(plan.notify.is_empty() && plan.logs.is_empty());
    }

    #[test]
    fn durations_follow_the_sample_rate() {
        let mut ctx = test_context("{}");
        assert_eq!(ctx.duration_ms(8_000), 1_000);
        assert_eq!(ctx.samples_in(250), 2_000);
        ctx.sample_rate = 16_000;
        assert_eq!(ctx.duration_ms(8_000), 500);
        ctx.sample_rate = 0;
        assert_eq!(ctx.duration_ms(8_000), 0);
    }
}
