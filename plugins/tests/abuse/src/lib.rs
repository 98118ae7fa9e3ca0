//! A call flow that misbehaves on purpose, to test the host's sandbox. The binding's config picks
//! the abuse: `{"abuse": "loop" | "memory" | "trap" | "huge-state" | "many-commands" | "huge-logs"
//! | "error" | "none"}`. With `none` it behaves: one `say` per event.

use callflow_sdk::PluginError;
use callflow_sdk::flow::{CallContext, Flow, FlowEvent, LogLevel, Output};

/// The misbehaving flow.
pub struct Abuse;

impl Flow for Abuse {
    type State = String;

    fn handle(
        ctx: &CallContext,
        state: &mut String,
        _event: FlowEvent,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let config: serde_json::Value = serde_json::from_str(&ctx.config).unwrap_or_default();
        match config
            .get("abuse")
            .and_then(|a| a.as_str())
            .unwrap_or("none")
        {
            "loop" => {
                let mut x: u64 = ctx.seed;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(Vec::with_capacity(1 << 20));
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("this plugin traps on purpose"),
            "huge-state" => *state = "x".repeat(2 << 20),
            "many-commands" => {
                for i in 0..10_000 {
                    out.say(format!("line {i}"));
                }
            }
            "huge-logs" => {
                for _ in 0..1_000 {
                    out.log(LogLevel::Info, "x".repeat(1_000));
                }
                out.say("logged a lot");
            }
            "error" => {
                return Err(PluginError::new(
                    "on-purpose",
                    "this plugin fails on purpose",
                ));
            }
            _ => {
                out.say(format!("event for {}", ctx.call_sid));
            }
        }
        Ok(())
    }
}

callflow_sdk::export_flow!(Abuse);
