//! `callflow replay CALL_SID --plugin FILE`: re-runs a call's flow events, as the server logged
//! them (with the time and seed each invocation saw), through another build of a call-flow
//! plugin in a local sandbox, and shows where its commands differ from what the call did.

use std::path::PathBuf;

use anyhow::{Context, bail};
use callflow_engine::flow::flow_context;
use callflow_runtime::flow::{Command, FlowEvent};
use callflow_runtime::{Limits, Runtime, RuntimeConfig};
use callflow_store::{CallLogEntry, FlowStarted};
use serde_json::Value;

use crate::client::Connection;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The call whose events to re-run (CA…).
    pub call: String,
    /// The plugin build to run them through (.wasm for wasm32-wasip2).
    #[arg(long)]
    pub plugin: PathBuf,
    #[command(flatten)]
    pub connection: Connection,
}

/// One delivered event and the commands the call carried out after it.
struct Step {
    event: Option<FlowEvent>,
    label: String,
    now_ms: i64,
    seed: u64,
    recorded: Vec<Value>,
}

/// Runs the replay; Ok(true) when every step gave the same commands.
pub async fn run(args: ReplayArgs) -> anyhow::Result<bool> {
    let conn = &args.connection;
    let (Some(account), Some(token)) = (conn.account.clone(), conn.token.clone()) else {
        bail!("give the account and token: --account/CALLFLOW_ACCOUNT_SID and CALLFLOW_AUTH_TOKEN");
    };
    let url = format!(
        "{}/v1/Accounts/{account}/Calls/{}/Events",
        conn.url.trim_end_matches('/'),
        args.call
    );
    let resp = reqwest::Client::new()
        .get(&url)
        .basic_auth(&account, Some(&token))
        .send()
        .await
        .with_context(|| format!("asking {url}"))?;
    let body = crate::client::answer(resp).await?;
    let wasm = std::fs::read(&args.plugin)
        .with_context(|| format!("reading {}", args.plugin.display()))?;
    let (start, steps) = steps(&body["events"])?;
    let plugin_path = args.plugin.clone();
    tokio::task::spawn_blocking(move || {
        replay(&account, &args.call, &start, steps, &wasm, &plugin_path)
    })
    .await?
}

/// The call's `flow.start` entry and its steps, from its event log (the API's rows, each
/// read as the call log entry it is).
fn steps(events: &Value) -> anyhow::Result<(FlowStarted, Vec<Step>)> {
    let mut start = None;
    let mut steps: Vec<Step> = Vec::new();
    for (i, e) in events.as_array().into_iter().flatten().enumerate() {
        let kind = e["kind"].as_str().unwrap_or_default();
        let entry = match CallLogEntry::parse(kind, e["detail"].clone()) {
            Ok(entry) => entry,
            // another build's entry; none of this build's flow entries is left out
            Err(why) => {
                eprintln!("note: entry {} of the call's log is not read: {why}", i + 1);
                continue;
            }
        };
        match entry {
            CallLogEntry::FlowStart(s) => start = Some(s),
            CallLogEntry::FlowEvent(d) => {
                let event: Option<FlowEvent> = serde_json::from_value(d.event.clone()).ok();
                let label = match &d.event {
                    Value::String(s) => s.clone(),
                    Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
                    _ => "?".into(),
                };
                steps.push(Step {
                    event: event.filter(|_| !d.truncated),
                    label,
                    now_ms: d.now_ms,
                    seed: d.seed,
                    recorded: Vec::new(),
                });
            }
            CallLogEntry::FlowCommand(c) => {
                if let Some(step) = steps.last_mut() {
                    step.recorded.push(c);
                }
            }
            _ => {}
        }
    }
    let Some(start) = start else {
        bail!("the call's log has no flow (it never ran one, or ran before flows were logged)");
    };
    Ok((start, steps))
}

fn replay(
    account: &str,
    call: &str,
    start: &FlowStarted,
    steps: Vec<Step>,
    wasm: &[u8],
    path: &std::path::Path,
) -> anyhow::Result<bool> {
    // replays run on this thread (`call_flow_blocking`): the pool is the smallest there is
    let runtime = Runtime::new(RuntimeConfig {
        scheduling: callflow_runtime::FairConfig::for_threads(2),
        ..RuntimeConfig::default()
    })?;
    let plugin = runtime
        .load(wasm)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    println!(
        "replaying {} events of {call} (ran {}) through {}",
        steps.len(),
        start.plugin,
        path.display()
    );
    let total = steps.len();
    let mut state = Vec::new();
    let mut same = true;
    for (i, step) in steps.into_iter().enumerate() {
        let n = i + 1;
        let Some(event) = step.event else {
            println!(
                "  {n:>3} {}: not replayable (its event was not kept whole)",
                step.label
            );
            same = false;
            continue;
        };
        let ctx = flow_context(start, account, call, "in-progress", step.now_ms, step.seed);
        let replayed: Vec<Value> =
            match runtime.call_flow_blocking(&plugin, &ctx, &state, &event, Limits::default()) {
                Ok(out) => {
                    state = out.state;
                    out.commands.iter().map(command_value).collect()
                }
                Err(e) => {
                    println!("  {n:>3} {}: the plugin failed: {e}", step.label);
                    same = false;
                    continue;
                }
            };
        // A call that ended while its last step's commands ran logged only those it began.
        let compared = if n == total && step.recorded.len() < replayed.len() {
            &replayed[..step.recorded.len()]
        } else {
            &replayed[..]
        };
        if compared == step.recorded.as_slice() {
            println!(
                "  {n:>3} {}: same ({} commands)",
                step.label,
                step.recorded.len()
            );
        } else {
            same = false;
            println!("  {n:>3} {}: DIFFERENT", step.label);
            println!("        call:     {}", list(&step.recorded));
            println!("        replayed: {}", list(&replayed));
        }
    }
    println!(
        "{}",
        if same {
            "no differences"
        } else {
            "differences found"
        }
    );
    Ok(same)
}

fn command_value(c: &Command) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

fn list(v: &[Value]) -> String {
    if v.is_empty() {
        return "(nothing)".into();
    }
    v.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A call's log as the Events API renders it: the flow's start, each delivered event with
    /// the commands carried out after it; other entries (and kinds this build does not know)
    /// are passed over.
    #[test]
    fn a_logged_flow_reads_as_its_start_and_steps() {
        let start = json!({
            "answered_by": null, "config": "{}", "direction": "inbound", "document": null,
            "fallback_method": "Post", "fallback_url": null, "from": "+15551", "method": "Get",
            "parent_call_sid": null, "plugin": "builtin:twiml", "sha256": null, "to": "+15552",
            "url": "http://example.com/voice",
        });
        let events = json!([
            {"at": 1, "kind": "created", "detail": {"status": "ringing"}},
            {"at": 2, "kind": "flow.start", "detail": start},
            {"at": 3, "kind": "flow.event", "detail": {"event": "Start", "now_ms": 5, "seed": "18446744073709551615"}},
            {"at": 3, "kind": "flow.log", "detail": {"level": "info", "message": "fetching"}},
            {"at": 3, "kind": "flow.command", "detail": {"Say": {"language": null, "loops": 1, "text": "Hi", "voice": null}}},
            {"at": 4, "kind": "flow.exploded", "detail": {}},
            {"at": 4, "kind": "flow.command", "detail": "Hangup"},
            {"at": 5, "kind": "flow.event", "detail": {"event": {"Fetched": {"Response": {"body": "", "content_type": null, "status": 200, "url": "http://example.com/"}}}, "now_ms": 6, "seed": "1", "truncated": true}},
        ]);
        let (start, steps) = steps(&events).unwrap();
        assert_eq!(
            (start.plugin.as_str(), start.method),
            ("builtin:twiml", callflow_store::HttpMethod::Get)
        );
        assert_eq!(steps.len(), 2);
        assert!(matches!(steps[0].event, Some(FlowEvent::Start)));
        assert_eq!((steps[0].now_ms, steps[0].seed), (5, u64::MAX));
        assert_eq!(
            steps[0].recorded,
            [events[4]["detail"].clone(), json!("Hangup")]
        );
        assert_eq!(steps[1].label, "Fetched");
        assert!(
            steps[1].event.is_none(),
            "a truncated event is not replayed"
        );
    }

    #[test]
    fn a_log_without_a_flow_is_refused() {
        let events = json!([{"at": 1, "kind": "created", "detail": {"status": "queued"}}]);
        let err = steps(&events).err().unwrap();
        assert!(err.to_string().contains("has no flow"), "{err}");
    }
}
