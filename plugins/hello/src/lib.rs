//! The first built-in call flow, until the TwiML interpreter replaces it: on start it says a
//! greeting (the binding's `{"greeting": "…"}`, or a default) and hangs up.

use callflow_sdk::PluginError;
use callflow_sdk::flow::{CallContext, Flow, FlowEvent, LogLevel, Output};

/// Says the greeting, then hangs up.
pub struct Hello;

const DEFAULT_GREETING: &str = "Hello from callflow.";

impl Flow for Hello {
    type State = ();

    fn handle(
        ctx: &CallContext,
        _state: &mut (),
        event: FlowEvent,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        if let FlowEvent::Start = event {
            let config: serde_json::Value = serde_json::from_str(&ctx.config).map_err(|e| {
                PluginError::new("config", format!("the configuration is not JSON: {e}"))
            })?;
            let greeting = config
                .get("greeting")
                .and_then(|g| g.as_str())
                .unwrap_or(DEFAULT_GREETING);
            out.say(greeting)
                .hangup()
                .log(LogLevel::Info, format!("greeted {}", ctx.to));
        }
        Ok(())
    }
}

callflow_sdk::export_flow!(Hello);

#[cfg(test)]
mod tests {
    use super::*;
    use callflow_sdk::flow::{Command, FlowTester};

    #[test]
    fn greets_then_hangs_up() {
        let mut t = FlowTester::<Hello>::new(r#"{"greeting": "Flood warning"}"#);
        let out = t.send(FlowEvent::Start).unwrap();
        assert!(
            matches!(&out.commands[..], [Command::Say(s), Command::Hangup] if s.text == "Flood warning")
        );
        let mut t = FlowTester::<Hello>::new("{}");
        let out = t.send(FlowEvent::Start).unwrap();
        assert!(matches!(&out.commands[0], Command::Say(s) if s.text == DEFAULT_GREETING));
        assert!(t.send(FlowEvent::PromptDone).unwrap().commands.is_empty());
    }

    #[test]
    fn bad_config_is_a_plugin_error() {
        let mut t = FlowTester::<Hello>::new("not json");
        assert_eq!(t.send(FlowEvent::Start).unwrap_err().code, "config");
    }
}
