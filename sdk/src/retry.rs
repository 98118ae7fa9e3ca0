//! Retry policies: after each final status of a callout attempt, whether and when to call the
//! participant again.
//!
//! The host asks once per finished attempt, with every attempt so far in
//! [`RetryContext::attempts`] (oldest first, the one that just ended last). A policy keeps no
//! state of its own: the attempts are its memory.

/// The generated bindings. Plugin authors use the re-exports in this module instead.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        world: "retry-policy",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_retry_policy",
        default_bindings_module: "callflow_sdk::retry::wit",
        runtime_path: "callflow_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq],
        // one copy of the shared types for every world, so `LogLine` is the same type everywhere
        with: { "callflow:plugin/types@0.1.0": callflow_sdk::flow::wit::callflow::plugin::types },
    });
}

pub use crate::flow::{LogLevel, LogLine};
pub use wit::callflow::plugin::retry_types::{Attempt, Decision, RetryContext, RetryDecision};

/// A retry policy. Implement it, then export it with
/// [`export_retry_policy!`](crate::export_retry_policy).
pub trait RetryPolicy {
    /// Decides after the last of `ctx.attempts` ended: [`Decision::RetryAt`] a time (milliseconds
    /// since the Unix epoch) or [`Decision::GiveUp`] with a reason. Log lines go into `out`.
    ///
    /// There is no error: a policy that cannot decide (bad configuration, say) gives up and says
    /// why, so the participant is never called again by accident.
    fn decide(ctx: &RetryContext, out: &mut Output) -> Decision;
}

/// The log lines a policy writes while deciding, kept with the callout.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    /// Log lines, in order.
    pub logs: Vec<LogLine>,
}

impl Output {
    /// Adds a log line.
    pub fn log(&mut self, level: LogLevel, message: impl Into<String>) -> &mut Self {
        self.logs.push(LogLine::new(level, message));
        self
    }
}

impl Decision {
    /// Gives up with `reason`, kept with the participant.
    pub fn give_up(reason: impl Into<String>) -> Decision {
        Decision::GiveUp(reason.into())
    }
}

impl RetryContext {
    /// The attempt that just ended, if there is one.
    pub fn last_attempt(&self) -> Option<&Attempt> {
        self.attempts.last()
    }
}

/// Runs `P` for one decision: what the export and the test harness both call.
#[doc(hidden)]
pub fn run<P: RetryPolicy>(ctx: &RetryContext) -> RetryDecision {
    let mut out = Output::default();
    let decision = P::decide(ctx, &mut out);
    RetryDecision {
        decision,
        logs: out.logs,
    }
}

/// Exports a [`RetryPolicy`] as the plugin's `retry-policy` world:
/// `callflow_sdk::export_retry_policy!(MyPolicy);` at the root of the plugin crate.
#[macro_export]
macro_rules! export_retry_policy {
    ($policy:ty) => {
        const _: () = {
            struct __CallflowRetryExport;
            impl $crate::retry::wit::Guest for __CallflowRetryExport {
                fn decide(ctx: $crate::retry::RetryContext) -> $crate::retry::RetryDecision {
                    $crate::retry::run::<$policy>(&ctx)
                }
            }
            $crate::retry::wit::__export_retry_policy!(__CallflowRetryExport with_types_in $crate::retry::wit);
        };
    };
}

/// Drives a [`RetryPolicy`] natively, exactly as the host would, through a sequence of attempts:
/// record an attempt with [`attempt`](Self::attempt), ask with [`decide`](Self::decide), move the
/// clock with [`at`](Self::at) to when the policy said to call again, and so on.
#[derive(Debug)]
pub struct RetryTester<P: RetryPolicy> {
    /// The context the policy sees; change it freely (the attempts are in `ctx.attempts`).
    pub ctx: RetryContext,
    _policy: std::marker::PhantomData<P>,
}

/// How long a test attempt rings before its final status.
const TEST_RING_MS: i64 = 30_000;

impl<P: RetryPolicy> RetryTester<P> {
    /// A tester with no attempts yet and `config` (JSON) as the binding's configuration.
    pub fn new(config: &str) -> Self {
        RetryTester {
            ctx: test_context(config),
            _policy: std::marker::PhantomData,
        }
    }

    /// Moves the clock to `now_ms`: the next attempt starts then.
    pub fn at(&mut self, now_ms: i64) -> &mut Self {
        self.ctx.now_ms = now_ms;
        self
    }

    /// Records an attempt that started now, ended with `status` (and `sip_code`) after ringing
    /// for 30 s, and moves the clock to its end, as the host would before asking.
    pub fn attempt(&mut self, status: &str, sip_code: Option<u16>) -> &mut Self {
        let started_ms = self.ctx.now_ms;
        let ended_ms = started_ms + TEST_RING_MS;
        self.ctx.attempts.push(Attempt {
            status: status.into(),
            sip_code,
            started_ms,
            ended_ms,
            duration_s: 0,
        });
        self.ctx.now_ms = ended_ms;
        self
    }

    /// Asks the policy about the attempts so far.
    pub fn decide(&self) -> RetryDecision {
        run::<P>(&self.ctx)
    }
}

/// A plausible context for tests: a callout participant, no attempts yet.
pub fn test_context(config: &str) -> RetryContext {
    RetryContext {
        account_sid: "AC00000000000000000000000000000000".into(),
        callout_id: Some("CO00000000000000000000000000000000".into()),
        participant_id: Some("PA00000000000000000000000000000000".into()),
        to: "+15558675310".into(),
        time_zone: None,
        now_ms: 1_800_000_000_000,
        seed: 42,
        config: config.into(),
        attempts: Vec::new(),
        metadata: "{}".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retries a busy line a minute later, twice at most.
    struct TwiceOnBusy;

    impl RetryPolicy for TwiceOnBusy {
        fn decide(ctx: &RetryContext, out: &mut Output) -> Decision {
            let Some(last) = ctx.last_attempt() else {
                return Decision::give_up("no attempt");
            };
            if last.status != "busy" || ctx.attempts.len() >= 3 {
                out.log(LogLevel::Info, format!("stop after {}", last.status));
                return Decision::give_up(last.status.clone());
            }
            Decision::RetryAt(last.ended_ms + 60_000)
        }
    }

    #[test]
    fn attempts_accumulate_and_the_clock_follows_them() {
        let mut t = RetryTester::<TwiceOnBusy>::new("{}");
        let start = t.ctx.now_ms;
        let first = t.attempt("busy", Some(486)).decide();
        assert_eq!(first.decision, Decision::RetryAt(start + 30_000 + 60_000));
        assert!(first.logs.is_empty());
        let Decision::RetryAt(next) = first.decision else {
            unreachable!()
        };
        let second = t.at(next).attempt("busy", Some(486)).decide();
        assert_eq!(second.decision, Decision::RetryAt(next + 90_000));
        let third = t.at(next + 90_000).attempt("busy", None).decide();
        assert_eq!(third.decision, Decision::give_up("busy"));
        assert_eq!(
            third.logs,
            vec![LogLine::new(LogLevel::Info, "stop after busy")]
        );
        assert_eq!(t.ctx.attempts.len(), 3);
        assert_eq!(t.ctx.attempts[2].started_ms, next + 90_000);
    }

    #[test]
    fn no_attempts_is_decided_too() {
        let t = RetryTester::<TwiceOnBusy>::new("{}");
        assert_eq!(t.decide().decision, Decision::give_up("no attempt"));
    }
}
