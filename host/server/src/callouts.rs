//! `callflow callouts …`: the command line's client for the callouts API of a running callflow:
//! create one (optionally loading contacts and starting it), add contacts, start, pause, resume
//! and stop it, show or watch its progress, and export its results as CSV.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::client::{Connection, answer};

/// Where the server is and who is asking: `client::Connection`, but the server's URL is
/// `--server` (and its clap id too: global args share ids with subcommands' args), because
/// `create --url` is the calls' TwiML URL, as in Calls.json.
#[derive(Debug, Clone, clap::Args)]
pub struct Server {
    /// The server's base URL.
    #[arg(
        id = "server",
        long = "server",
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

impl From<Server> for Connection {
    fn from(s: Server) -> Connection {
        Connection {
            url: s.url,
            account: s.account,
            token: s.token,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum CalloutCommand {
    /// Create a callout; prints its sid (first line), then what loading --contacts did.
    Create(CreateArgs),
    /// Add contacts to a callout (a CSV with a phone_number or phone column, or a .json array).
    Add {
        id: String,
        #[arg(long)]
        contacts: PathBuf,
    },
    /// Start calling.
    Start { id: String },
    /// Hold the callout until resumed: no new attempts, and attempts still queued wait (calls
    /// already ringing or answered go on).
    Pause { id: String },
    /// Go on after a pause.
    Resume { id: String },
    /// Stop for good: contacts not yet called end canceled, queued calls are canceled.
    Stop { id: String },
    /// Show a callout's progress.
    Show {
        id: String,
        /// Print the API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the account's callouts, newest first.
    List,
    /// Follow a callout's progress until it is completed or stopped.
    Watch {
        id: String,
        /// Seconds between polls.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Write the results (one row per contact) as CSV to stdout.
    Export { id: String },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("instructions").required(true).args(["url", "twiml"])))]
pub struct CreateArgs {
    #[arg(long)]
    name: String,
    /// The caller ID: one of the account's numbers.
    #[arg(long)]
    from: String,
    /// Where each answered call fetches its TwiML.
    #[arg(long)]
    url: Option<String>,
    /// TwiML each answered call runs.
    #[arg(long)]
    twiml: Option<String>,
    #[arg(long)]
    calls_per_second: Option<f64>,
    /// Calls live at once (the server uses 50 when not given).
    #[arg(long)]
    max_concurrent: Option<u32>,
    /// HH:MM-HH:MM, or a JSON object {"start", "end", "days"}.
    #[arg(long)]
    calling_hours: Option<String>,
    /// IANA time zone of the calling hours (default UTC).
    #[arg(long)]
    time_zone: Option<String>,
    /// Not before this RFC 3339 time.
    #[arg(long)]
    start_time: Option<String>,
    /// The retry policy's configuration (a JSON object).
    #[arg(long)]
    retry_config: Option<String>,
    /// -100 to 100; higher goes first.
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i32>,
    /// A JSON object kept with the callout.
    #[arg(long)]
    metadata: Option<String>,
    /// Any other Calls.json parameter, as NAME=VALUE (StatusCallback, Timeout, Record, …).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Contacts to load right away (CSV, or a .json array).
    #[arg(long)]
    contacts: Option<PathBuf>,
    /// Start calling once created (and the contacts are loaded).
    #[arg(long)]
    start: bool,
}

/// The callouts API of one account.
struct Client {
    http: reqwest::Client,
    base: String,
    account: String,
    token: String,
}

impl Client {
    fn new(conn: &Connection) -> anyhow::Result<Client> {
        let (account, token) = conn.credentials()?;
        Ok(Client {
            http: reqwest::Client::new(),
            base: format!(
                "{}/v1/Accounts/{account}/Callouts",
                conn.url.trim_end_matches('/')
            ),
            account,
            token,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = self.url(path);
        let resp = self
            .http
            .get(&url)
            .basic_auth(&self.account, Some(&self.token))
            .send()
            .await
            .with_context(|| format!("asking {url}"))?;
        answer(resp).await
    }

    async fn post(&self, path: &str, form: &[(String, String)]) -> anyhow::Result<Value> {
        let url = self.url(path);
        let resp = self
            .http
            .post(&url)
            .basic_auth(&self.account, Some(&self.token))
            .form(form)
            .send()
            .await
            .with_context(|| format!("asking {url}"))?;
        answer(resp).await
    }

    async fn set_status(&self, id: &str, status: &str) -> anyhow::Result<Value> {
        self.post(&format!("/{id}"), &[("Status".into(), status.into())])
            .await
    }

    /// Loads a contacts file: `.json` as a JSON array, anything else as CSV.
    async fn add_contacts(&self, id: &str, file: &Path) -> anyhow::Result<Value> {
        let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let is_json = file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let content_type = if is_json {
            "application/json"
        } else {
            "text/csv"
        };
        let url = self.url(&format!("/{id}/Participants"));
        let resp = self
            .http
            .post(&url)
            .basic_auth(&self.account, Some(&self.token))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .with_context(|| format!("asking {url}"))?;
        answer(resp).await
    }
}

pub async fn run(server: Server, cmd: CalloutCommand) -> anyhow::Result<()> {
    let api = Client::new(&server.into())?;
    match cmd {
        CalloutCommand::Create(args) => create(&api, args).await?,
        CalloutCommand::Add { id, contacts } => {
            print_added(&api.add_contacts(&id, &contacts).await?);
        }
        CalloutCommand::Start { id } | CalloutCommand::Resume { id } => {
            print_status(&api.set_status(&id, "running").await?);
        }
        CalloutCommand::Pause { id } => print_status(&api.set_status(&id, "paused").await?),
        CalloutCommand::Stop { id } => print_status(&api.set_status(&id, "stopped").await?),
        CalloutCommand::Show { id, json } => {
            let c = api.get(&format!("/{id}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", describe(&c));
            }
        }
        CalloutCommand::List => {
            for c in api.get("").await?["callouts"]
                .as_array()
                .into_iter()
                .flatten()
            {
                println!(
                    "{}  {:<9}  {}  {}",
                    text(&c["sid"]),
                    text(&c["status"]),
                    text(&c["date_created"]),
                    text(&c["name"])
                );
            }
        }
        CalloutCommand::Watch { id, interval } => watch(&api, &id, interval).await?,
        CalloutCommand::Export { id } => export(&api, &id).await?,
    }
    Ok(())
}

async fn create(api: &Client, a: CreateArgs) -> anyhow::Result<()> {
    let mut form: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            form.push((k.to_owned(), v));
        }
    };
    put("Name", Some(a.name));
    put("From", Some(a.from));
    put("Url", a.url);
    put("Twiml", a.twiml);
    put("CallsPerSecond", a.calls_per_second.map(|x| x.to_string()));
    put("MaxConcurrent", a.max_concurrent.map(|x| x.to_string()));
    put("CallingHours", a.calling_hours);
    put("TimeZone", a.time_zone);
    put("StartTime", a.start_time);
    put("RetryConfig", a.retry_config);
    put("Priority", a.priority.map(|x| x.to_string()));
    put("Metadata", a.metadata);
    for p in a.params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--param {p:?} is not NAME=VALUE"))?;
        form.push((k.to_owned(), v.to_owned()));
    }
    let c = api.post("", &form).await?;
    let id = text(&c["sid"]).to_owned();
    println!("{id}");
    if let Some(file) = a.contacts {
        print_added(&api.add_contacts(&id, &file).await?);
    }
    if a.start {
        print_status(&api.set_status(&id, "running").await?);
    }
    Ok(())
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn count(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn print_added(r: &Value) {
    println!(
        "added {}, merged {}, invalid {}, total {}",
        count(&r["added"]),
        count(&r["merged"]),
        count(&r["invalid_count"]),
        count(&r["total"])
    );
    for e in r["invalid"].as_array().into_iter().flatten() {
        let at = match (e["line"].as_u64(), e["index"].as_u64()) {
            (Some(l), _) => format!("line {l}"),
            (None, Some(i)) => format!("index {i}"),
            _ => "?".into(),
        };
        println!("invalid {at}: {}", text(&e["error"]));
    }
    let listed = r["invalid"].as_array().map_or(0, Vec::len) as i64;
    if count(&r["invalid_count"]) > listed {
        println!(
            "(and {} more invalid rows)",
            count(&r["invalid_count"]) - listed
        );
    }
}

fn print_status(c: &Value) {
    println!("{}  {}", text(&c["sid"]), text(&c["status"]));
}

/// `show`'s text: the callout, its counts and, when fetched, its analysis.
fn describe(c: &Value) -> String {
    let s = &c["summary"];
    let mut out = format!(
        "{}  {}  {}\n",
        text(&c["sid"]),
        text(&c["status"]),
        text(&c["name"])
    );
    out += &format!(
        "contacts   {} total: {} pending, {} in progress, {} finished\n",
        count(&s["total"]),
        count(&s["pending"]),
        count(&s["in_progress"]),
        finished(s)
    );
    out += &format!(
        "finished   {} answered, {} busy, {} no-answer, {} failed, {} canceled, {} errored\n",
        count(&s["completed"]),
        count(&s["busy"]),
        count(&s["no_answer"]),
        count(&s["failed"]),
        count(&s["canceled"]),
        count(&s["errored"])
    );
    out += &format!("attempts   {}", count(&s["attempts"]));
    if let Some(rate) = c["analysis"]["answer_rate"].as_f64() {
        out += &format!(
            ", answer rate {:.1}%, {:.2} attempts per answered contact",
            rate * 100.0,
            c["analysis"]["attempts_per_answered"]
                .as_f64()
                .unwrap_or(0.0)
        );
    }
    out.push('\n');
    out
}

fn finished(s: &Value) -> i64 {
    (count(&s["total"]) - count(&s["pending"]) - count(&s["in_progress"])).max(0)
}

/// `watch`'s progress line for a summary, with the attempt rate.
fn progress_message(s: &Value, per_second: f64) -> String {
    format!(
        "answered {} · pending {} · in progress {} · busy {} · no-answer {} · failed {} · {:.1} attempts/s",
        count(&s["completed"]),
        count(&s["pending"]),
        count(&s["in_progress"]),
        count(&s["busy"]),
        count(&s["no_answer"]),
        count(&s["failed"]),
        per_second
    )
}

/// Polls in a row that may fail (the server restarting, a network hiccup) before `watch` gives up.
const WATCH_MAX_FAILURES: u32 = 5;
/// Polls the attempt rate is measured over.
const RATE_WINDOW: usize = 10;

/// Attempts per second over the last polls.
#[derive(Debug, Default)]
struct Rate(VecDeque<(Instant, i64)>);

impl Rate {
    fn record(&mut self, at: Instant, attempts: i64) -> f64 {
        self.0.push_back((at, attempts));
        if self.0.len() > RATE_WINDOW {
            self.0.pop_front();
        }
        match (self.0.front(), self.0.back()) {
            (Some((t0, a0)), Some((t1, a1))) if t1 > t0 => {
                (a1 - a0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

async fn watch(api: &Client, id: &str, interval: f64) -> anyhow::Result<()> {
    if !(interval.is_finite() && interval > 0.0) {
        bail!("--interval must be a positive number of seconds");
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .map_err(|e| anyhow::anyhow!("progress style: {e}"))?
            .progress_chars("=> "),
    );
    let mut rate = Rate::default();
    let mut failures = 0;
    loop {
        let resp = api
            .http
            .get(api.url(&format!("/{id}")))
            .basic_auth(&api.account, Some(&api.token))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        // A refusal (unknown callout, bad credentials) will not change by asking again; the
        // server restarting or a network hiccup may.
        let polled = match resp {
            Ok(r) if r.status().is_client_error() => {
                bar.abandon();
                return answer(r).await.map(drop);
            }
            Ok(r) => answer(r).await,
            Err(e) => Err(anyhow::Error::new(e)),
        };
        let c = match polled {
            Ok(c) => {
                failures = 0;
                c
            }
            Err(e) => {
                failures += 1;
                if failures >= WATCH_MAX_FAILURES {
                    bar.abandon();
                    return Err(e.context(format!("{failures} polls of {id} failed in a row")));
                }
                bar.set_message(format!("(no answer from the server: {e})"));
                tokio::time::sleep(Duration::from_secs_f64(interval)).await;
                continue;
            }
        };
        let s = &c["summary"];
        let per_second = rate.record(Instant::now(), count(&s["attempts"]));
        bar.set_length(count(&s["total"]).max(0) as u64);
        bar.set_position(finished(s) as u64);
        bar.set_message(progress_message(s, per_second));
        let status = text(&c["status"]);
        if matches!(status, "completed" | "stopped") {
            bar.finish();
            println!("{id} {status}: {}", progress_message(s, per_second));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs_f64(interval)).await;
    }
}

/// Copies Results.csv to stdout as it arrives; a closed pipe (`| head`) ends quietly.
async fn export(api: &Client, id: &str) -> anyhow::Result<()> {
    let url = api.url(&format!("/{id}/Results.csv"));
    let mut resp = api
        .http
        .get(&url)
        .basic_auth(&api.account, Some(&api.token))
        .send()
        .await
        .with_context(|| format!("asking {url}"))?;
    if !resp.status().is_success() {
        answer(resp).await?;
        bail!("the server refused the export");
    }
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = resp.chunk().await.context("reading the results")? {
        match out.write_all(&chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r.context("writing the results")?,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r.context("writing the results")?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn show_and_watch_text() {
        let c = json!({
            "sid": "CO1", "status": "running", "name": "rains",
            "summary": {"total": 10, "pending": 4, "in_progress": 2, "completed": 2, "busy": 1,
                        "no_answer": 1, "failed": 0, "canceled": 0, "errored": 0, "attempts": 7},
            "analysis": {"answer_rate": 0.5, "attempts_per_answered": 1.5},
        });
        expect_test::expect![[r#"
            CO1  running  rains
            contacts   10 total: 4 pending, 2 in progress, 4 finished
            finished   2 answered, 1 busy, 1 no-answer, 0 failed, 0 canceled, 0 errored
            attempts   7, answer rate 50.0%, 1.50 attempts per answered contact
        "#]]
        .assert_eq(&describe(&c));
        expect_test::expect![[
            "answered 2 · pending 4 · in progress 2 · busy 1 · no-answer 1 · failed 0 · 2.5 attempts/s"
        ]]
        .assert_eq(&progress_message(&c["summary"], 2.5));
    }

    #[test]
    fn the_rate_is_measured_over_the_last_polls() {
        let mut r = Rate::default();
        let t = Instant::now();
        assert_eq!(r.record(t, 0), 0.0);
        assert_eq!(r.record(t + Duration::from_secs(2), 10), 5.0);
        for i in 3..=20 {
            r.record(t + Duration::from_secs(i), 10);
        }
        assert_eq!(r.0.len(), RATE_WINDOW);
        assert_eq!(r.record(t + Duration::from_secs(21), 10), 0.0);
    }
}
