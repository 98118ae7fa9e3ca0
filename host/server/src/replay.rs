//! `callflow replay CALL_SID --plugin FILE`: re-runs a call's flow events, as the server logged
//! them (with the time and seed each invocation saw), through another build of a call-flow
//! plugin in a local sandbox, and shows where its commands differ from what the call did.

use std::path::PathBuf;

use anyhow::{Context, bail};
use callflow_runtime::flow::{CallContext, Command, FlowEvent, HttpMethod};
use callflow_runtime::{Limits, Runtime, RuntimeConfig};
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

/// The call's `flow.start` entry and its steps, from its event log.
fn steps(events: &Value) -> anyhow::Result<(Value, Vec<Step>)> {
    let mut start = None;
    let mut steps: Vec<Step> = Vec::new();
    for e in events.as_array().into_iter().flatten() {
        let detail = &e["detail"];
        match e["kind"].as_str() {
            Some("flow.start") => start = Some(detail.clone()),
            Some("flow.event") => {
                let truncated = detail["truncated"].as_bool().unwrap_or(false);
                let event: Option<FlowEvent> = serde_json::from_value(detail["event"].clone()).ok();
                let label = match &detail["event"] {
                    Value::String(s) => s.clone(),
                    Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
                    _ => "?".into(),
                };
                steps.push(Step {
                    event: event.filter(|_| !truncated),
                    label,
                    now_ms: detail["now_ms"].as_i64().unwrap_or(0),
                    seed: detail["seed"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    recorded: Vec::new(),
                });
            }
            Some("flow.command") => {
                if let Some(step) = steps.last_mut() {
                    step.recorded.push(detail.clone());
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

fn method(v: &Value) -> HttpMethod {
    serde_json::from_value(v.clone()).unwrap_or(HttpMethod::Post)
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

fn replay(
    account: &str,
    call: &str,
    start: &Value,
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
        start["plugin"].as_str().unwrap_or("?"),
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
        let ctx = CallContext {
            account_sid: account.to_owned(),
            call_sid: call.to_owned(),
            parent_call_sid: text(&start["parent_call_sid"]),
            direction: text(&start["direction"]).unwrap_or_default(),
            from: text(&start["from"]).unwrap_or_default(),
            to: text(&start["to"]).unwrap_or_default(),
            status: "in-progress".into(),
            answered_by: text(&start["answered_by"]),
            now_ms: step.now_ms,
            seed: step.seed,
            config: text(&start["config"]).unwrap_or_else(|| "{}".into()),
            url: text(&start["url"]),
            method: method(&start["method"]),
            fallback_url: text(&start["fallback_url"]),
            fallback_method: method(&start["fallback_method"]),
            document: text(&start["document"]),
        };
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
