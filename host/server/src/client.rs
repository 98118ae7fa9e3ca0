//! `callflow plugins …`: the command line's client for the plugin API of a running callflow.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::Value;

/// Where the server is and who is asking.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The server's base URL.
    #[arg(
        long,
        env = "CALLFLOW_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// The account to act as (its AccountSid).
    #[arg(long, env = "CALLFLOW_ACCOUNT_SID", global = true)]
    pub account: Option<String>,
    /// The account's AuthToken (prefer the environment variable: flags show up in `ps`).
    #[arg(
        long,
        env = "CALLFLOW_AUTH_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
}

impl Connection {
    /// The account and token, or an error saying how to give them.
    pub fn credentials(&self) -> anyhow::Result<(String, String)> {
        match (&self.account, &self.token) {
            (Some(a), Some(t)) => Ok((a.clone(), t.clone())),
            _ => bail!(
                "give the account and token: --account/CALLFLOW_ACCOUNT_SID and CALLFLOW_AUTH_TOKEN"
            ),
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Upload a plugin (.wasm built for wasm32-wasip2); optionally bind it right away.
    Upload {
        file: PathBuf,
        /// A name for the plugin (defaults to the file name).
        #[arg(long)]
        name: Option<String>,
        /// Bind the new version to its world for the account.
        #[arg(long)]
        bind: bool,
        /// With --bind: the configuration handed to the plugin (a JSON object).
        #[arg(long)]
        config: Option<String>,
        /// With --bind: bind for this incoming number (PN…) only.
        #[arg(long)]
        number: Option<String>,
    },
    /// List the account's plugin versions.
    List,
    /// Bind a plugin version (ZP…) or a built-in (builtin:NAME) to its world.
    Bind {
        plugin: String,
        #[arg(long)]
        config: Option<String>,
        #[arg(long)]
        number: Option<String>,
    },
    /// List the account's bindings.
    Bindings,
    /// Run one event through an uploaded call-flow plugin in the server's sandbox; prints the
    /// commands, the new state (pass it back with --state) and the log lines, as JSON.
    Run {
        plugin: String,
        /// start, prompt-done, gathered, fetched or hangup.
        #[arg(long, default_value = "start")]
        event: String,
        /// With --event gathered: the digits pressed.
        #[arg(long)]
        digits: Option<String>,
        /// The state a previous run printed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        config: Option<String>,
    },
}

pub async fn run(conn: Connection, cmd: PluginCommand) -> anyhow::Result<()> {
    let (account, token) = conn.credentials()?;
    let base = format!("{}/v1/Accounts/{account}", conn.url.trim_end_matches('/'));
    let http = reqwest::Client::new();
    match cmd {
        PluginCommand::Upload {
            file,
            name,
            bind,
            config,
            number,
        } => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let name = name.unwrap_or_else(|| {
                file.file_stem()
                    .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned())
            });
            let resp = http
                .post(format!("{base}/Plugins"))
                .query(&[("Name", name.as_str())])
                .basic_auth(&account, Some(&token))
                .header("Content-Type", "application/wasm")
                .body(wasm)
                .send()
                .await?;
            let version = answer(resp).await?;
            println!(
                "{}  {}  {}  sha256:{}",
                version["sid"].as_str().unwrap_or("?"),
                version["world"].as_str().unwrap_or("?"),
                version["name"].as_str().unwrap_or("?"),
                version["sha256"].as_str().unwrap_or("?")
            );
            if bind {
                let plugin = version["sid"].as_str().unwrap_or_default().to_owned();
                bind_plugin(&http, &base, &account, &token, &plugin, config, number).await?;
            }
        }
        PluginCommand::List => {
            let resp = http
                .get(format!("{base}/Plugins"))
                .basic_auth(&account, Some(&token))
                .send()
                .await?;
            for p in answer(resp).await?["plugins"]
                .as_array()
                .into_iter()
                .flatten()
            {
                println!(
                    "{}  {:<12}  {:<20}  {} bytes  {}",
                    p["sid"].as_str().unwrap_or("?"),
                    p["world"].as_str().unwrap_or("?"),
                    p["name"].as_str().unwrap_or("?"),
                    p["size"],
                    p["date_created"].as_str().unwrap_or("?")
                );
            }
        }
        PluginCommand::Bind {
            plugin,
            config,
            number,
        } => {
            bind_plugin(&http, &base, &account, &token, &plugin, config, number).await?;
        }
        PluginCommand::Run {
            plugin,
            event,
            digits,
            state,
            config,
        } => {
            let mut form = vec![("Event", event)];
            for (name, value) in [("Digits", digits), ("State", state), ("Config", config)] {
                if let Some(v) = value {
                    form.push((name, v));
                }
            }
            let resp = http
                .post(format!("{base}/Plugins/{plugin}/Invocations"))
                .basic_auth(&account, Some(&token))
                .form(&form)
                .send()
                .await?;
            println!("{}", serde_json::to_string_pretty(&answer(resp).await?)?);
        }
        PluginCommand::Bindings => {
            let resp = http
                .get(format!("{base}/PluginBindings"))
                .basic_auth(&account, Some(&token))
                .send()
                .await?;
            for b in answer(resp).await?["bindings"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let scope = b["phone_number_sid"]
                    .as_str()
                    .or(b["callout_sid"].as_str())
                    .unwrap_or("account");
                println!(
                    "{}  {:<12}  {:<36}  {}  {}",
                    b["sid"].as_str().unwrap_or("?"),
                    b["world"].as_str().unwrap_or("?"),
                    b["plugin"].as_str().unwrap_or("?"),
                    scope,
                    b["config"]
                );
            }
        }
    }
    Ok(())
}

async fn bind_plugin(
    http: &reqwest::Client,
    base: &str,
    account: &str,
    token: &str,
    plugin: &str,
    config: Option<String>,
    number: Option<String>,
) -> anyhow::Result<()> {
    let mut form = vec![("Plugin", plugin.to_owned())];
    if let Some(c) = config {
        form.push(("Config", c));
    }
    if let Some(n) = number {
        form.push(("PhoneNumberSid", n));
    }
    let resp = http
        .post(format!("{base}/PluginBindings"))
        .basic_auth(account, Some(token))
        .form(&form)
        .send()
        .await?;
    let b = answer(resp).await?;
    println!(
        "bound {} to {} ({})",
        b["plugin"].as_str().unwrap_or("?"),
        b["world"].as_str().unwrap_or("?"),
        b["sid"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// The JSON body of a successful answer, or the server's error message.
pub(crate) async fn answer(resp: reqwest::Response) -> anyhow::Result<Value> {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{status}: {}",
            body["message"].as_str().unwrap_or("no message")
        );
    }
    Ok(body)
}
