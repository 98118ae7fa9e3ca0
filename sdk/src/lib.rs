//! The callflow plugin SDK.
//!
//! A callflow plugin is a pure function the host calls once per event. This crate hides the
//! WebAssembly plumbing: implement one trait, export it with one macro, test it with plain
//! `cargo test`, and build it with `cargo build --release --target wasm32-wasip2`.
//!
//! | world | trait | export macro | module |
//! |---|---|---|---|
//! | call flow | [`flow::Flow`] | [`export_flow!`] | [`flow`] |
//!
//! ```no_run
//! use callflow_sdk::flow::{CallContext, Flow, FlowEvent, Output};
//! use callflow_sdk::PluginError;
//!
//! /// Greets the caller, then hangs up.
//! struct Hello;
//!
//! impl Flow for Hello {
//!     type State = ();
//!
//!     fn handle(_ctx: &CallContext, _state: &mut (), event: FlowEvent, out: &mut Output) -> Result<(), PluginError> {
//!         if let FlowEvent::Start = event {
//!             out.say("Hello from callflow").hangup();
//!         }
//!         Ok(())
//!     }
//! }
//!
//! callflow_sdk::export_flow!(Hello);
//! ```
//!
//! Plugins import nothing: time ([`flow::CallContext::now_ms`]), a random seed and the account's
//! configuration (JSON) arrive in the context, and everything the plugin wants done comes back as
//! data. The same code therefore runs identically under `cargo test` and in the host.

#![warn(missing_docs)]

// The generated bindings name this crate by its public path, also from inside it.
extern crate self as callflow_sdk;

pub mod flow;

/// An error a plugin reports on purpose; the host applies nothing from that invocation and runs
/// the account's fallback.
pub use flow::wit::callflow::plugin::types::PluginError;

impl PluginError {
    /// An error with a machine-readable `code` and a message for people.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        PluginError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Plumbing the export macros expand to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}
