//! A call flow that misbehaves on purpose, to test the host's sandbox. The binding's config picks
//! the abuse: `{"abuse": "loop" | "memory" | "trap" | "huge-state" | "many-commands" | "huge-logs"
//! | "error" | "none"}`, or a way of waiting for time or input that must never hold a host
//! thread: `"sleep"` (`std::thread::sleep` for `secs`, default 5), `"timer-block"` (a WASI timer
//! blocked on), `"timer-poll"` (`wasi:io/poll` on a timer), `"timer-spin"` (a loop asking a
//! timer whether it is ready), `"clock-spin"` (a loop until `Instant` has moved a second),
//! `"stdin"` (reads standard input to its end, and says how many bytes it got), `"exit"`
//! (`std::process::exit(3)`). `"work"` computes for `iterations` steps (default a million),
//! then says so: honest work of a chosen length. With `none` it behaves: one `say` per event.

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
            "work" => {
                let n = config
                    .get("iterations")
                    .and_then(|n| n.as_u64())
                    .unwrap_or(1_000_000);
                let mut x: u64 = ctx.seed;
                for _ in 0..n {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                out.say(format!("worked {n} steps"));
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
            "sleep" => {
                let secs = config.get("secs").and_then(|s| s.as_u64()).unwrap_or(5);
                std::thread::sleep(std::time::Duration::from_secs(secs));
                out.say("slept");
            }
            "clock-spin" => {
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_secs(1) {
                    std::hint::black_box(());
                }
                out.say("a second went by");
            }
            "stdin" => {
                let mut input = Vec::new();
                let got = std::io::Read::read_to_end(&mut std::io::stdin(), &mut input);
                out.say(format!("stdin: {} bytes ({})", input.len(), got.is_ok()));
            }
            "exit" => std::process::exit(3),
            "timer-block" | "timer-poll" | "timer-spin" => {
                let abuse = config.get("abuse").and_then(|a| a.as_str()).unwrap_or("");
                wait_on_timer(abuse);
                out.say("the timer fired");
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

/// Waits for a one-second WASI timer the way `how` says.
#[cfg(target_os = "wasi")]
fn wait_on_timer(how: &str) {
    use wasip2::clocks::monotonic_clock::subscribe_duration;
    let timer = subscribe_duration(1_000_000_000);
    match how {
        "timer-block" => timer.block(),
        "timer-poll" => {
            let _ = wasip2::io::poll::poll(&[&timer]);
        }
        _ => while !timer.ready() {},
    }
}

/// Natively there is no WASI timer: the guest is only ever run as a component.
#[cfg(not(target_os = "wasi"))]
fn wait_on_timer(_how: &str) {}

callflow_sdk::export_flow!(Abuse);
