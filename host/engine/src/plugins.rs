//! The one host of plugins for the engine, for all four worlds: a call's pins (the plugin
//! versions it runs with, fixed at creation), loading a pinned version (built-in, or uploaded
//! under the data directory) once per process, invoking it with its limits, and writing the
//! log lines it returns to the call's event log. Flows, recordings, call events and retry
//! decisions all go through [`PluginHost`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use callflow_runtime::flow::{HttpMethod, LogLevel, LogLine};
use callflow_runtime::{InvokeError, Limits, Plugin, Runtime, World, builtin};
use callflow_store::{Call, CallLogEntry, LogSource, Pin, Pins, Store};

use crate::blobs::Blobs;
use crate::clock::now_ms;

/// The flow plugin a call runs when its account bound none.
pub const DEFAULT_FLOW: &str = "twiml";

/// The pin of `world` on `call`, if it has one.
pub(crate) fn pinned(call: &Call, world: World) -> Option<Pin> {
    call.plugins.get(world.as_str()).cloned()
}

/// The plugin versions a new call will run with, by world: the most specific binding of each
/// world for the account (and the number the call uses), pinned with the version's digest and
/// config.
pub async fn pin_for_call(
    store: &Store,
    account: &str,
    number_sid: Option<&str>,
    callout_sid: Option<&str>,
) -> Result<Pins, callflow_store::StoreError> {
    let mut pins = Pins::default();
    for world in World::ALL {
        let Some(b) = store
            .resolve_binding(account, world.as_str(), number_sid, callout_sid)
            .await?
        else {
            continue;
        };
        let sha256 = match b.plugin.strip_prefix("builtin:") {
            Some(name) => builtin::sha256(name).map(str::to_owned),
            None => store.plugin(account, &b.plugin).await?.map(|p| p.sha256),
        };
        let Some(sha256) = sha256 else {
            tracing::warn!(binding = %b.sid, plugin = %b.plugin, "binding names a plugin that no longer exists");
            continue;
        };
        let pin = Pin {
            plugin: b.plugin,
            sha256: Some(sha256),
            config: b.config,
            deadline_ms: u64::try_from(b.deadline_ms).ok(),
            // its secrets stay in the binding: merged in when the plugin runs
            binding: (b.secrets.trim() != "{}").then_some(b.sid),
        };
        pins.insert(world.as_str(), pin);
    }
    Ok(pins)
}

/// Why a plugin gave nothing: it could not be loaded, or its invocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostError {
    #[error("{0}")]
    Load(String),
    #[error(transparent)]
    Invoke(#[from] InvokeError),
}

impl HostError {
    /// Whether the same invocation may well succeed later (see [`InvokeError::is_transient`]).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, HostError::Invoke(e) if e.is_transient())
    }
}

/// What a world's invocation returns, with its log lines.
pub(crate) trait Logged {
    fn take_logs(&mut self) -> Vec<LogLine>;
}

impl Logged for callflow_runtime::flow::FlowStep {
    fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.logs)
    }
}

impl Logged for callflow_runtime::retry::RetryDecision {
    fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.logs)
    }
}

impl Logged for callflow_runtime::recording::RecordingPlan {
    fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.logs)
    }
}

impl Logged for callflow_runtime::events::EventOutcome {
    fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.logs)
    }
}

/// Hosts the plugins calls are pinned to. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<Runtime>,
    store: Store,
    /// Uploaded plugins are `plugins/<sha256>.wasm` there.
    blobs: Blobs,
    limits: Limits,
    /// Loaded plugins by digest (built-ins by `builtin:<name>`).
    loaded: Mutex<HashMap<String, Arc<Plugin>>>,
    /// Held while a plugin is loaded, so concurrent first uses compile it once.
    loading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// A host running plugins on `runtime` with `limits` (a binding may set its own deadline).
    pub fn new(runtime: Arc<Runtime>, store: Store, blobs: Blobs, limits: Limits) -> Self {
        PluginHost {
            inner: Arc::new(Inner {
                runtime,
                store,
                blobs,
                limits,
                loaded: Mutex::new(HashMap::new()),
                loading: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    fn lock_loaded(&self) -> MutexGuard<'_, HashMap<String, Arc<Plugin>>> {
        self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pinned version, compiled once per process.
    async fn load(&self, pin: &Pin) -> Result<Arc<Plugin>, String> {
        let key = match pin.plugin.strip_prefix("builtin:") {
            Some(_) => pin.plugin.clone(),
            None => pin.sha256.clone().ok_or("the pin names no digest")?,
        };
        if let Some(p) = self.lock_loaded().get(&key) {
            return Ok(p.clone());
        }
        let _one_at_a_time = self.inner.loading.lock().await;
        if let Some(p) = self.lock_loaded().get(&key) {
            return Ok(p.clone());
        }
        let wasm = match pin.plugin.strip_prefix("builtin:") {
            Some(name) => builtin::get(name)
                .ok_or_else(|| format!("no built-in plugin {name}"))?
                .to_vec(),
            None => self
                .inner
                .blobs
                .get(&format!("plugins/{key}.wasm"))
                .await
                .map_err(|e| format!("reading plugin {}: {e}", pin.plugin))?
                .ok_or_else(|| format!("plugin {} is not in storage", pin.plugin))?
                .to_vec(),
        };
        let runtime = self.inner.runtime.clone();
        let plugin = tokio::task::spawn_blocking(move || runtime.load(&wasm))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("loading plugin {}: {e}", pin.plugin))?;
        self.lock_loaded().insert(key, plugin.clone());
        Ok(plugin)
    }

    /// Compiles the built-in call flow every call runs unless bound to another (or loads it
    /// from the compile cache), before the node takes calls, so no call waits for it: on a
    /// fresh data directory that compile is the first call's ~300 ms. Other plugins compile at
    /// first use, on one core.
    pub async fn warm_up(&self) {
        let started = std::time::Instant::now();
        match self.load(&Pin::builtin(DEFAULT_FLOW)).await {
            Ok(_) => {
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(ms, plugin = DEFAULT_FLOW, "built-in call flow ready");
            }
            Err(e) => tracing::error!(error = %e, "the built-in call flow does not load"),
        }
    }

    /// The limits of an invocation of `pin`'s plugin: the configured ones, with the binding's
    /// own deadline.
    fn limits_for(&self, pin: &Pin) -> Limits {
        let mut limits = self.inner.limits;
        if let Some(ms) = pin.deadline_ms {
            limits.deadline = std::time::Duration::from_millis(ms.clamp(1, 1_000));
        }
        limits
    }

    /// `config` (the text of a JSON object) with the secrets of `pin`'s binding merged over it,
    /// for one invocation; `config` itself when the pin has none. A binding that is gone leaves
    /// the configuration without them (the plugin says what it misses).
    async fn with_secrets(
        &self,
        pin: &Pin,
        account: &str,
        config: &str,
    ) -> Result<String, HostError> {
        let Some(binding) = &pin.binding else {
            return Ok(config.to_owned());
        };
        let secrets = match self.inner.store.binding(account, binding).await {
            Ok(Some(b)) => b.secrets,
            Ok(None) => return Ok(config.to_owned()),
            Err(e) => {
                return Err(HostError::Load(format!(
                    "reading the binding's secrets: {e}"
                )));
            }
        };
        let mut merged: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(config).unwrap_or_default();
        let secrets: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&secrets).unwrap_or_default();
        merged.extend(secrets);
        Ok(serde_json::Value::Object(merged).to_string())
    }

    /// Loads `pin`'s plugin, runs `invoke` on it with its limits, and writes the log lines it
    /// returned to `call`'s event log as `<log_as>.log` entries (none without a call).
    async fn invoke<O: Logged, F: Future<Output = Result<O, InvokeError>>>(
        &self,
        pin: &Pin,
        call: Option<&str>,
        log_as: LogSource,
        invoke: impl FnOnce(Arc<Runtime>, Arc<Plugin>, Limits) -> F,
    ) -> Result<O, HostError> {
        let plugin = self.load(pin).await.map_err(HostError::Load)?;
        let limits = self.limits_for(pin);
        let mut out = invoke(self.inner.runtime.clone(), plugin, limits).await?;
        if let Some(call) = call {
            for line in out.take_logs() {
                if log_as == LogSource::Flow
                    && line.level == LogLevel::Error
                    && let Some(rest) = line.message.strip_prefix("application error")
                {
                    // the flow gave up on the call (`plugins/twiml`: "application error 11200:
                    // …"): the operator hears of it too
                    let code = rest.trim_start().split(':').next().unwrap_or("");
                    let kind = if code.len() == 5 && code.bytes().all(|b| b.is_ascii_digit()) {
                        code
                    } else {
                        "other"
                    };
                    report_application_error(call, kind, &line.message);
                }
                let entry = CallLogEntry::log(log_as, level(line.level), line.message);
                self.inner.store.log_call_event(call, now_ms(), &entry);
            }
        }
        Ok(out)
    }

    /// One event for a call's flow plugin; `state` is the plugin's, kept between events.
    pub(crate) async fn call_flow(
        &self,
        pin: &Pin,
        ctx: callflow_runtime::flow::CallContext,
        state: &mut Vec<u8>,
        event: callflow_runtime::flow::FlowEvent,
    ) -> Result<Vec<callflow_runtime::flow::Command>, HostError> {
        let call = ctx.call_sid.clone();
        let mut ctx = ctx;
        ctx.config = self
            .with_secrets(pin, &ctx.account_sid, &ctx.config)
            .await?;
        let before = std::mem::take(state);
        let step = self
            .invoke(
                pin,
                Some(&call),
                LogSource::Flow,
                |rt, plugin, limits| async move {
                    rt.call_flow(plugin, ctx, before, event, limits).await
                },
            )
            .await?;
        *state = step.state;
        Ok(step.commands)
    }

    /// A retry policy's decision after an attempt (`call`: the attempt, whose log gets the
    /// policy's lines).
    pub(crate) async fn decide_retry(
        &self,
        pin: &Pin,
        call: &str,
        mut ctx: callflow_runtime::retry::RetryContext,
    ) -> Result<callflow_runtime::retry::RetryDecision, HostError> {
        ctx.config = self
            .with_secrets(pin, &ctx.account_sid, &ctx.config)
            .await?;
        self.invoke(
            pin,
            Some(call),
            LogSource::Retry,
            |rt, plugin, limits| async move { rt.decide_retry(plugin, ctx, limits).await },
        )
        .await
    }

    /// A recording plugin's plan for a finished recording.
    pub(crate) async fn process_recording(
        &self,
        pin: &Pin,
        mut ctx: callflow_runtime::recording::RecordingContext,
        audio: Vec<i16>,
    ) -> Result<callflow_runtime::recording::RecordingPlan, HostError> {
        ctx.config = self
            .with_secrets(pin, &ctx.account_sid, &ctx.config)
            .await?;
        let call = ctx.call_sid.clone();
        self.invoke(pin, Some(&call), LogSource::Recording, |rt, plugin, limits| async move {
            rt.process_recording(plugin, ctx, audio, limits).await
        })
        .await
    }

    /// A call-events plugin's answer to a lifecycle event.
    pub(crate) async fn on_event(
        &self,
        pin: &Pin,
        mut ctx: callflow_runtime::events::EventContext,
    ) -> Result<callflow_runtime::events::EventOutcome, HostError> {
        ctx.config = self
            .with_secrets(pin, &ctx.account_sid, &ctx.config)
            .await?;
        let call = ctx.event.call_sid.clone();
        self.invoke(
            pin,
            Some(&call),
            LogSource::Events,
            |rt, plugin, limits| async move { rt.on_event(plugin, ctx, limits).await },
        )
        .await
    }
}

/// Tells the operator that a call met an application error (a document that could not be
/// fetched or read, a flow plugin that failed): a warning in the server log with the call and
/// why (any credentials in a URL replaced by `***`), and `callflow_application_errors_total` by
/// `kind` (Twilio's error code, or `plugin` / `host` for the host's own reasons).
pub(crate) fn report_application_error(call: &str, kind: &str, why: &str) {
    let why = redact_userinfo(why);
    tracing::warn!(call = %call, kind = %kind, why = %why, "application error");
    metrics::counter!("callflow_application_errors_total", "kind" => kind.to_owned()).increment(1);
}

/// `text` with the user and password of every URL in it (`scheme://user:password@host`)
/// replaced by `***`.
pub(crate) fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // the authority ends at the first of / ? # or whitespace; userinfo is before its last @
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// A plugin log line's level in the call's log.
fn level(l: LogLevel) -> callflow_store::LogLevel {
    match l {
        LogLevel::Debug => callflow_store::LogLevel::Debug,
        LogLevel::Info => callflow_store::LogLevel::Info,
        LogLevel::Warn => callflow_store::LogLevel::Warn,
        LogLevel::Error => callflow_store::LogLevel::Error,
    }
}

/// A plugin's HTTP request method.
pub(crate) fn method_name(m: HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Delete => "DELETE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_never_reach_the_log() {
        assert_eq!(
            redact_userinfo("https://ann:s3cret@example.com/voice?x=1 answered HTTP 401"),
            "https://***@example.com/voice?x=1 answered HTTP 401"
        );
        assert_eq!(
            redact_userinfo(
                "from http://a:b@h/x to \"ftp://u@h2\" and mailto:me@x, http://plain/a@b"
            ),
            "from http://***@h/x to \"ftp://***@h2\" and mailto:me@x, http://plain/a@b"
        );
        assert_eq!(redact_userinfo("no url here"), "no url here");
        assert_eq!(redact_userinfo("http://p:q@"), "http://***@");
    }
}
