//! Call flows: what happens on a call, one event at a time.
//!
//! The host starts the flow with [`FlowEvent::Start`] and reports the outcome of every command
//! (`Fetched`, `PromptDone`, `Gathered`, `Recorded`, `DialDone`) as a further event. Between events
//! the plugin's [`Flow::State`] is kept by the host (serialised as JSON), so any node can deliver
//! the next event.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The generated bindings. Plugin authors use the re-exports in this module instead.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        world: "call-flow",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_call_flow",
        default_bindings_module: "callflow_sdk::flow::wit",
        runtime_path: "callflow_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq],
    });
}

pub use wit::callflow::plugin::flow_types::{
    CallContext, Command, DialResult, DialTarget, FetchResponse, FetchResult, FlowEvent, FlowStep,
    Gather, GatherResult, Play, Prompt, Record, RecordResult, Redirect, RejectReason, Say,
};
pub use wit::callflow::plugin::flow_types::{Dial, DialRecording, Fetch};
pub use wit::callflow::plugin::types::{HttpMethod, LogLevel, LogLine, Param};

use crate::PluginError;

/// A call flow. Implement it, then export it with [`export_flow!`](crate::export_flow).
pub trait Flow {
    /// What the flow remembers between events. Starts as `Default::default()`.
    type State: Serialize + DeserializeOwned + Default;

    /// Handles one event: update `state`, push commands and log lines into `out`.
    ///
    /// Returning an error discards `out` and the state change; the host runs the account's
    /// fallback for the call.
    fn handle(
        ctx: &CallContext,
        state: &mut Self::State,
        event: FlowEvent,
        out: &mut Output,
    ) -> Result<(), PluginError>;
}

/// The commands and log lines a flow produces for one event, in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    /// Commands for the host to run, in order.
    pub commands: Vec<Command>,
    /// Log lines, kept with the call.
    pub logs: Vec<LogLine>,
}

impl Output {
    /// Adds any command.
    pub fn push(&mut self, c: Command) -> &mut Self {
        self.commands.push(c);
        self
    }

    /// Speaks `text` once, in the default voice.
    pub fn say(&mut self, text: impl Into<String>) -> &mut Self {
        self.push(Command::Say(Say {
            text: text.into(),
            voice: None,
            language: None,
            loops: 1,
        }))
    }

    /// Plays the audio at `url` once.
    pub fn play(&mut self, url: impl Into<String>) -> &mut Self {
        self.push(Command::Play(Play {
            url: url.into(),
            loops: 1,
        }))
    }

    /// Silence for `ms` milliseconds.
    pub fn pause(&mut self, ms: u32) -> &mut Self {
        self.push(Command::Pause(ms))
    }

    /// Plays `prompts` and collects up to `num_digits` digits (Twilio's defaults otherwise:
    /// 5 s timeout, `#` ends input).
    pub fn gather(&mut self, prompts: Vec<Prompt>, num_digits: Option<u32>) -> &mut Self {
        self.push(Command::Gather(Gather {
            prompts,
            timeout_ms: 5_000,
            finish_on_key: "#".into(),
            num_digits,
        }))
    }

    /// Asks the host to fetch `url` with `method` and form `params`; answered by `Fetched`.
    pub fn fetch(
        &mut self,
        url: impl Into<String>,
        method: HttpMethod,
        params: Vec<Param>,
    ) -> &mut Self {
        self.push(Command::Fetch(Fetch {
            url: url.into(),
            method,
            params,
        }))
    }

    /// Hangs up.
    pub fn hangup(&mut self) -> &mut Self {
        self.push(Command::Hangup)
    }

    /// Adds a log line.
    pub fn log(&mut self, level: LogLevel, message: impl Into<String>) -> &mut Self {
        self.logs.push(LogLine {
            level,
            message: message.into(),
        });
        self
    }
}

impl Prompt {
    /// A spoken prompt in the default voice.
    pub fn say(text: impl Into<String>) -> Prompt {
        Prompt::Say(Say {
            text: text.into(),
            voice: None,
            language: None,
            loops: 1,
        })
    }
}

impl Param {
    /// A name/value pair.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Param {
        Param {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Runs `F` for one event over encoded state: what the export and the test harness both call.
#[doc(hidden)]
pub fn run<F: Flow>(
    ctx: &CallContext,
    state: &[u8],
    event: FlowEvent,
) -> Result<FlowStep, PluginError> {
    let mut typed: F::State = if state.is_empty() {
        F::State::default()
    } else {
        serde_json::from_slice(state)
            .map_err(|e| PluginError::new("state", format!("cannot decode state: {e}")))?
    };
    let mut out = Output::default();
    F::handle(ctx, &mut typed, event, &mut out)?;
    let state = serde_json::to_vec(&typed)
        .map_err(|e| PluginError::new("state", format!("cannot encode state: {e}")))?;
    Ok(FlowStep {
        state,
        commands: out.commands,
        logs: out.logs,
    })
}

/// Exports a [`Flow`] as the plugin's `call-flow` world: `callflow_sdk::export_flow!(MyFlow);`
/// at the root of the plugin crate.
#[macro_export]
macro_rules! export_flow {
    ($flow:ty) => {
        const _: () = {
            struct __CallflowFlowExport;
            impl $crate::flow::wit::Guest for __CallflowFlowExport {
                fn handle(
                    ctx: $crate::flow::CallContext,
                    state: ::std::vec::Vec<u8>,
                    event: $crate::flow::FlowEvent,
                ) -> ::std::result::Result<$crate::flow::FlowStep, $crate::PluginError> {
                    $crate::flow::run::<$flow>(&ctx, &state, event)
                }
            }
            $crate::flow::wit::__export_call_flow!(__CallflowFlowExport with_types_in $crate::flow::wit);
        };
    };
}

/// Drives a [`Flow`] natively, exactly as the host would: state is encoded and decoded between
/// events, so what passes here passes in the host.
#[derive(Debug)]
pub struct FlowTester<F: Flow> {
    /// The context every event sees; change it between events as the call changes.
    pub ctx: CallContext,
    state: Vec<u8>,
    _flow: std::marker::PhantomData<F>,
}

impl<F: Flow> FlowTester<F> {
    /// A tester for an answered outbound call with `config` (JSON) as the binding's configuration.
    pub fn new(config: &str) -> Self {
        FlowTester {
            ctx: test_context(config),
            state: Vec::new(),
            _flow: std::marker::PhantomData,
        }
    }

    /// Delivers `event` and returns what the flow did. On error the state is left unchanged.
    pub fn send(&mut self, event: FlowEvent) -> Result<Output, PluginError> {
        let step = run::<F>(&self.ctx, &self.state, event)?;
        self.state = step.state;
        Ok(Output {
            commands: step.commands,
            logs: step.logs,
        })
    }

    /// The flow's current state, decoded.
    pub fn state(&self) -> F::State {
        if self.state.is_empty() {
            return F::State::default();
        }
        serde_json::from_slice(&self.state).expect("the state was encoded by this flow")
    }
}

/// A plausible context for tests: an answered outbound call.
pub fn test_context(config: &str) -> CallContext {
    CallContext {
        account_sid: "AC00000000000000000000000000000000".into(),
        call_sid: "CA00000000000000000000000000000000".into(),
        parent_call_sid: None,
        direction: "outbound-api".into(),
        from: "+15005550006".into(),
        to: "+15558675310".into(),
        status: "in-progress".into(),
        answered_by: None,
        now_ms: 1_800_000_000_000,
        seed: 42,
        config: config.into(),
        url: None,
        method: HttpMethod::Post,
        fallback_url: None,
        fallback_method: HttpMethod::Post,
        document: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Count {
        events: u32,
    }

    struct Counter;

    impl Flow for Counter {
        type State = Count;
        fn handle(
            _: &CallContext,
            state: &mut Count,
            event: FlowEvent,
            out: &mut Output,
        ) -> Result<(), PluginError> {
            state.events += 1;
            match event {
                FlowEvent::Start => {
                    out.gather(vec![Prompt::say("Press a key")], Some(1));
                }
                FlowEvent::Gathered(g) if g.digits == "9" => {
                    return Err(PluginError::new("nine", "no nines"));
                }
                FlowEvent::Gathered(g) => {
                    out.say(format!("You pressed {}", g.digits))
                        .hangup()
                        .log(LogLevel::Info, "done");
                }
                _ => {}
            }
            Ok(())
        }
    }

    #[test]
    fn state_survives_between_events_and_errors_leave_it_alone() {
        let mut t = FlowTester::<Counter>::new("{}");
        let first = t.send(FlowEvent::Start).unwrap();
        assert!(matches!(&first.commands[..], [Command::Gather(g)] if g.num_digits == Some(1)));
        let err = t.send(FlowEvent::Gathered(GatherResult {
            digits: "9".into(),
            timed_out: false,
        }));
        assert_eq!(err.unwrap_err().code, "nine");
        assert_eq!(t.state(), Count { events: 1 });
        let out = t
            .send(FlowEvent::Gathered(GatherResult {
                digits: "3".into(),
                timed_out: false,
            }))
            .unwrap();
        assert_eq!(out.commands.len(), 2);
        assert!(matches!(&out.commands[0], Command::Say(s) if s.text == "You pressed 3"));
        assert_eq!(out.logs.len(), 1);
        assert_eq!(t.state(), Count { events: 2 });
    }

    #[test]
    fn undecodable_state_is_a_plugin_error_not_a_panic() {
        let err = run::<Counter>(&test_context("{}"), b"not json", FlowEvent::Start).unwrap_err();
        assert_eq!(err.code, "state");
    }
}
