//! The built-in TwiML interpreter: a call flow that runs Twilio's TwiML with Twilio's semantics
//! and defaults. It fetches the call's URL (or runs its inline document), runs the verbs one at a
//! time, requests `action` URLs with Twilio's parameters, falls back to the call's fallback URL
//! once, and answers anything it cannot run with Twilio's application error.
//!
//! - [`parse`]: TwiML text → [`document::Verb`]s plus diagnostics (never fails on a `<Response>`).
//! - [`interp`]: the state machine over the call-flow world's events.
//! - this file: the [`Flow`] the host runs (`export_flow!`).
//!
//! Nothing here does I/O: fetches, audio and calls are commands for the host, and their outcomes
//! come back as events. The state (the document being run, what the last command waits for) is
//! JSON, bounded below the host's 64 KiB.

pub mod document;
pub mod interp;
pub mod parse;

use callflow_sdk::PluginError;
use callflow_sdk::flow::{CallContext, Flow, FlowEvent, Output};

pub use interp::{APPLICATION_ERROR, State};

/// The TwiML interpreter flow. It ignores its binding's configuration.
pub struct Twiml;

impl Flow for Twiml {
    type State = State;

    fn handle(
        ctx: &CallContext,
        state: &mut State,
        event: FlowEvent,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        interp::handle(ctx, state, event, out);
        Ok(())
    }
}

// Only in the component: natively the export's unmangled symbols would clash with any other
// flow plugin linked into the same binary (the runtime's benchmark links the menu example too).
#[cfg(target_arch = "wasm32")]
callflow_sdk::export_flow!(Twiml);

/// `warn`, `error`, …: a log level as transcripts show it.
#[cfg(test)]
fn level_name(level: callflow_sdk::flow::LogLevel) -> &'static str {
    use callflow_sdk::flow::LogLevel;
    match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}
