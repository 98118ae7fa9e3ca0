//! A call flow that tries to read the host's files: its component imports `wasi:filesystem`,
//! which callflow refuses at upload.

use callflow_sdk::PluginError;
use callflow_sdk::flow::{CallContext, Flow, FlowEvent, Output};

/// Reads `/etc/passwd` and says it.
pub struct Snoop;

impl Flow for Snoop {
    type State = ();

    fn handle(
        _: &CallContext,
        _: &mut (),
        _: FlowEvent,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        out.say(text);
        Ok(())
    }
}

callflow_sdk::export_flow!(Snoop);
