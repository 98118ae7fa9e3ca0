//! The callflow plugin SDK.
//!
//! A callflow plugin is a pure function the host calls once per event. This crate hides the
//! WebAssembly plumbing: implement one trait, export it with one macro, test it with plain
//! `cargo test`, and build it with `cargo build --release --target wasm32-wasip2`.
//!
//! | world | trait | export macro | native tester | module |
//! |---|---|---|---|---|
//! | call flow | [`flow::Flow`] | [`export_flow!`] | [`flow::FlowTester`] | [`flow`] |
//! | retry policy | [`retry::RetryPolicy`] | [`export_retry_policy!`] | [`retry::RetryTester`] | [`retry`] |
//! | recording | [`recording::RecordingBehaviour`] | [`export_recording!`] | [`recording::RecordingTester`] | [`recording`] |
//! | call events | [`events::CallEvents`] | [`export_call_events!`] | [`events::EventTester`] | [`events`] |
//!
//! Each module re-exports its world's types and has an `Output` that collects what the plugin
//! asks for (commands, notifications or requests, and log lines). The tester runs the plugin
//! natively through the same code as the export. The types every world shares ([`PluginError`],
//! `LogLine`, `HttpRequest`, `Param`, …) are one type each, whichever module names them;
//! [`recording::HttpRequest`] has builders for the common requests, such as a JSON POST.
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
//!
//! Export one world per crate: the host runs a plugin as exactly one of the four kinds.

#![warn(missing_docs)]

// The generated bindings name this crate by its public path, also from inside it.
extern crate self as callflow_sdk;

pub mod events;
pub mod flow;
pub mod recording;
pub mod retry;

/// An error a plugin reports on purpose; the host applies nothing from that invocation and runs
/// the account's fallback.
pub use flow::wit::callflow::plugin::types::PluginError;

use flow::wit::callflow::plugin::types::{HttpMethod, HttpRequest, LogLevel, LogLine, Param};

// One helper for every plugin's configuration, kept in the pure crate the host shares.
pub use callflow_callout_rules::config_text;

impl PluginError {
    /// An error with a machine-readable `code` and a message for people.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        PluginError {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl LogLine {
    /// A log line at `level`.
    pub fn new(level: LogLevel, message: impl Into<String>) -> LogLine {
        LogLine {
            level,
            message: message.into(),
        }
    }
}

impl HttpRequest {
    /// A `method` request to `url` with no headers, no body and no idempotency key.
    pub fn new(method: HttpMethod, url: impl Into<String>) -> HttpRequest {
        HttpRequest {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            idempotency_key: None,
        }
    }

    /// A POST of `body` as JSON, with `Content-Type: application/json`.
    pub fn post_json(url: impl Into<String>, body: &serde_json::Value) -> HttpRequest {
        HttpRequest::new(HttpMethod::Post, url)
            .header("Content-Type", "application/json")
            // a `Value` always serialises: its map keys are strings and its numbers finite
            .body(serde_json::to_vec(body).unwrap_or_default())
    }

    /// Adds a header (sent in the order added).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> HttpRequest {
        self.headers.push(Param {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> HttpRequest {
        self.body = body.into();
        self
    }

    /// Sets the idempotency key: requests with the same key are made at most once per account.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> HttpRequest {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// Plumbing the export macros expand to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}
