//! A call flow that tries to reach the network: its component imports `wasi:sockets`, which
//! callflow refuses at upload.

use callflow_sdk::PluginError;
use callflow_sdk::flow::{CallContext, Flow, FlowEvent, Output};

/// Connects to a TCP port and says whether it could.
pub struct Dialer;

impl Flow for Dialer {
    type State = ();

    fn handle(
        _: &CallContext,
        _: &mut (),
        _: FlowEvent,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let reached = std::net::TcpStream::connect("127.0.0.1:22").is_ok();
        out.say(format!("reached: {reached}"));
        Ok(())
    }
}

callflow_sdk::export_flow!(Dialer);
