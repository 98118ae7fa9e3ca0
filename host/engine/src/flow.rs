//! Running a call's flow plugin on its media. Once a call is answered, the call's pinned
//! call-flow plugin (the built-in TwiML interpreter unless the account bound another) gets the
//! `start` event; the commands it returns are carried out in order (fetches through the webhook
//! client, audio through the media layer, recordings stored and made resources), and each
//! command's outcome is the next event. Every event and its outcome go into the call's event
//! log. When the plugin has nothing left to do, or asks, the call is hung up.
//!
//! A plugin that fails (trap, timeout, limit, bad output, its own error) gets Twilio's answer:
//! "an application error has occurred", then the hangup.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use callflow_media::amd::AmdConfig;
use callflow_media::record::{RecordOptions, StopReason};
use callflow_media::worker::{CallMedia, Collect, CollectEnd, MediaEvent, PlayItem};
use callflow_runtime::flow::{
    CallContext, Command, FetchResponse, FetchResult, FlowEvent, GatherResult, HttpMethod, Prompt,
    RecordResult, Redirect as FlowRedirect, RejectReason,
};
use callflow_runtime::{Limits, Plugin, Runtime, World, builtin, recording};
use callflow_store::{Call, CallUpdate, NewRecording, Store};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::clock::now_ms;
use crate::prompts::Prompts;
use crate::telephony::{DialLeg, Dialer, Flow, FlowStart, LegLink};
use crate::webhook::{Method, WebhookClient, WebhookRequest};
use crate::{Engine, Redirect};

/// The flow plugin a call runs when its account bound none.
pub const DEFAULT_FLOW: &str = "twiml";
/// Twilio's words when a call's instructions fail.
pub const APPLICATION_ERROR: &str = "We are sorry, an application error has occurred. Goodbye.";
/// Events one call may deliver to its plugin (a loop of redirects ends here).
const MAX_EVENTS: usize = 10_000;
/// What `loop="0"` (play until interrupted) is capped at.
const MAX_LOOPS: u32 = 1_000;

/// Where flows find what they need besides the call.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    /// The API's public base URL (RecordingUrl is built on it).
    pub public_url: String,
    /// The data directory: uploaded plugins under `plugins/`, recordings under `recordings/`.
    pub data_dir: PathBuf,
    pub limits: Limits,
}

/// Runs flows; [`FlowRunner::flow`] is what telephony calls for each answered call.
#[derive(Clone)]
pub struct FlowRunner {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<Runtime>,
    store: Store,
    prompts: Prompts,
    client: WebhookClient,
    config: FlowConfig,
    /// Loaded plugins by digest (built-ins by `builtin:<name>`).
    loaded: Mutex<HashMap<String, Arc<Plugin>>>,
    /// Held while a plugin is loaded, so concurrent first uses compile it once.
    loading: tokio::sync::Mutex<()>,
    /// Where recordings' notifications go (the outbox).
    engine: Engine,
}

impl std::fmt::Debug for FlowRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowRunner").finish_non_exhaustive()
    }
}

/// A plugin version pinned for one world (written when the call was created).
pub(crate) struct Pin {
    pub(crate) plugin: String,
    pub(crate) sha256: Option<String>,
    pub(crate) config: String,
    pub(crate) deadline_ms: Option<u64>,
}

/// The pin for `world` in a call's `plugins` JSON, if it has one.
pub(crate) fn pin_in(plugins: &str, world: World) -> Option<Pin> {
    let pins: Value = serde_json::from_str(plugins).unwrap_or_else(|_| json!({}));
    let p = pins.get(world.as_str())?;
    Some(Pin {
        plugin: p["plugin"].as_str().unwrap_or_default().to_owned(),
        sha256: p["sha256"].as_str().map(str::to_owned),
        config: p
            .get("config")
            .filter(|c| c.is_object())
            .map_or_else(|| "{}".to_owned(), Value::to_string),
        deadline_ms: p["deadline_ms"].as_u64(),
    })
}

/// A built-in plugin, unconfigured.
pub(crate) fn builtin_pin(name: &str) -> Pin {
    Pin {
        plugin: format!("builtin:{name}"),
        sha256: None,
        config: "{}".into(),
        deadline_ms: None,
    }
}

/// The call's call-flow pin: its binding's, or the built-in TwiML interpreter.
fn pin_of(call: &Call) -> Pin {
    pin_in(&call.plugins, World::CallFlow).unwrap_or_else(|| builtin_pin(DEFAULT_FLOW))
}

/// The plugin versions a new call will run with, by world: the most specific binding of each
/// world for the account (and the number the call uses), pinned with the version's digest and
/// config, as JSON for the call's `plugins` column. The API pins calls it creates, telephony
/// inbound calls.
pub async fn pin_for_call(
    store: &Store,
    account: &str,
    number_sid: Option<&str>,
    callout_sid: Option<&str>,
) -> Result<String, callflow_store::StoreError> {
    let mut pins = serde_json::Map::new();
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
        let config: Value = serde_json::from_str(&b.config).unwrap_or_else(|_| json!({}));
        pins.insert(
            world.as_str().to_owned(),
            json!({ "plugin": b.plugin, "sha256": sha256, "config": config, "deadline_ms": b.deadline_ms }),
        );
    }
    Ok(Value::Object(pins).to_string())
}

fn method(m: &str) -> HttpMethod {
    if m.eq_ignore_ascii_case("GET") {
        HttpMethod::Get
    } else {
        HttpMethod::Post
    }
}

impl FlowRunner {
    pub fn new(
        runtime: Arc<Runtime>,
        engine: Engine,
        prompts: Prompts,
        client: WebhookClient,
        config: FlowConfig,
    ) -> FlowRunner {
        let store = engine.store.clone();
        FlowRunner {
            inner: Arc::new(Inner {
                runtime,
                store,
                prompts,
                client,
                config,
                loaded: Mutex::new(HashMap::new()),
                loading: tokio::sync::Mutex::new(()),
                engine,
            }),
        }
    }

    /// The [`Flow`] telephony runs on calls (inbound ones while they still ring).
    pub fn flow(&self) -> Flow {
        let me = self.clone();
        Arc::new(move |start: FlowStart| {
            let me = me.clone();
            Box::pin(async move { me.run(start).await })
        })
    }

    pub(crate) async fn load(&self, pin: &Pin) -> Result<Arc<Plugin>, String> {
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
            None => {
                let path = self
                    .inner
                    .config
                    .data_dir
                    .join("plugins")
                    .join(format!("{key}.wasm"));
                tokio::fs::read(&path)
                    .await
                    .map_err(|e| format!("reading plugin {}: {e}", pin.plugin))?
            }
        };
        let runtime = self.inner.runtime.clone();
        let plugin = tokio::task::spawn_blocking(move || runtime.load(&wasm))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("loading plugin {}: {e}", pin.plugin))?;
        self.lock_loaded().insert(key, plugin.clone());
        Ok(plugin)
    }

    /// Compiles the built-in call flow every call runs unless bound to another, in the
    /// background, so the first call finds it ready (or waits for this compile instead of
    /// starting a second one). Other plugins compile at first use, on one core.
    pub fn warm_up(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            match me.load(&builtin_pin(DEFAULT_FLOW)).await {
                Ok(_) => {
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(ms, plugin = DEFAULT_FLOW, "built-in call flow ready");
                }
                Err(e) => tracing::error!(error = %e, "the built-in call flow does not load"),
            }
        });
    }

    pub(crate) fn runtime(&self) -> &Arc<Runtime> {
        &self.inner.runtime
    }

    /// The limits of an invocation of `pin`'s plugin: the configured ones, with the binding's
    /// own deadline.
    pub(crate) fn limits_for(&self, pin: &Pin) -> Limits {
        let mut limits = self.inner.config.limits;
        if let Some(ms) = pin.deadline_ms {
            limits.deadline = std::time::Duration::from_millis(ms.clamp(1, 1_000));
        }
        limits
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Plugin>>> {
        self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(&self, start: FlowStart) {
        let FlowStart {
            call,
            media,
            events,
            leg,
            dialer,
        } = start;
        let mut s = Session {
            runner: self.clone(),
            token: String::new(),
            call,
            media,
            events,
            leg,
            dialer,
            state: Vec::new(),
        };
        // `Record=true` on create: the whole call, both sides, from the answer
        if s.call.record {
            // it comes back when the call's media closes, and is stored by a task of its own:
            // the flow may be gone by then
            let limit_ms = u64::try_from(s.call.time_limit).unwrap_or(0) * 1000;
            let done = s.media.record_conversation(limit_ms);
            let (me, call, started) = (self.clone(), s.call.clone(), now_ms());
            tokio::spawn(async move {
                me.store_conversation(&call, done, started, "OutboundAPI")
                    .await
            });
        }
        self.start_and_drive(&mut s).await;
    }

    /// A conversation recording once the media hands it over: mixed off the async threads,
    /// stored as a Recording of `call` with its recording-ready event. `None` when there was
    /// nothing (or it could not be stored: logged on the call).
    async fn store_conversation(
        &self,
        call: &Call,
        done: tokio::sync::oneshot::Receiver<Box<callflow_media::record::Conversation>>,
        started: i64,
        source: &str,
    ) -> Option<callflow_runtime::flow::DialRecording> {
        let conversation = done.await.ok()?;
        let pcm = tokio::task::spawn_blocking(move || conversation.finish())
            .await
            .ok()?;
        if pcm.is_empty() {
            return None;
        }
        let duration_ms = pcm.len() as u64 / 8;
        let stored = self
            .store_recording(call, &pcm, duration_ms, started, source, Vec::new())
            .await;
        let (kind, detail) = match &stored {
            Ok((sid, _)) => (
                "recording.stored",
                json!({ "recording_sid": sid, "source": source }),
            ),
            Err(why) => ("flow.error", json!({ "recording": why, "source": source })),
        };
        let _ = self
            .inner
            .store
            .append_call_event(&call.sid, now_ms(), kind, &detail.to_string())
            .await;
        let (sid, url) = stored.ok()?;
        Some(callflow_runtime::flow::DialRecording {
            sid,
            url,
            duration_s: u32::try_from(duration_ms.div_ceil(1000)).unwrap_or(u32::MAX),
        })
    }

    /// Creates the Recording resource and writes its WAV and MP3 before anyone hears of it;
    /// `notify` (a recording plugin's requests) and the call's recording-ready event are stored
    /// in the transaction that says the media is there. Returns the sid and the URL.
    async fn store_recording(
        &self,
        call: &Call,
        pcm: &[i16],
        duration_ms: u64,
        started: i64,
        source: &str,
        notify: Vec<callflow_store::NewDelivery>,
    ) -> Result<(String, String), String> {
        let store = &self.inner.store;
        let new = NewRecording {
            call_sid: call.sid.clone(),
            status: "completed".into(),
            source: source.into(),
            channels: 1,
            duration: i64::try_from(duration_ms.div_ceil(1000)).unwrap_or(i64::MAX),
            start_time: started,
            wav_path: None,
            mp3_path: None,
        };
        let rec = store
            .create_recording(&call.account_sid, &new, now_ms())
            .await
            .map_err(|e| e.to_string())?;
        let dir = self.inner.config.data_dir.join("recordings");
        let (wav, mp3) = (
            format!("recordings/{}.wav", rec.sid),
            format!("recordings/{}.mp3", rec.sid),
        );
        let (wav_path, mp3_path) = (
            dir.join(format!("{}.wav", rec.sid)),
            dir.join(format!("{}.mp3", rec.sid)),
        );
        let pcm = pcm.to_vec();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            callflow_media::files::write_wav(&wav_path, &pcm).map_err(|e| e.to_string())?;
            callflow_media::files::write_mp3(&mp3_path, &pcm).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Recordings/{}",
            self.inner.config.public_url.trim_end_matches('/'),
            rec.account_sid,
            rec.sid
        );
        let now = now_ms();
        let mut rows = notify;
        rows.extend(crate::events::recording_event(call, &url, now));
        store
            .set_recording_media(&rec.sid, Some(&wav), Some(&mp3), now, &rows)
            .await
            .map_err(|e| e.to_string())?;
        if !rows.is_empty() {
            self.wake_outbox();
        }
        Ok((rec.sid, url))
    }

    /// Rows were stored in the outbox: it need not wait for its next poll.
    fn wake_outbox(&self) {
        self.inner.engine.wake_outbox();
    }

    async fn start_and_drive(&self, s: &mut Session) {
        let pin = pin_of(&s.call);
        let plugin = match self.load(&pin).await {
            Ok(p) => p,
            Err(why) => return s.application_error(&why).await,
        };
        match self.inner.store.account(&s.call.account_sid).await {
            Ok(Some(a)) => s.token = a.auth_token,
            _ => return s.application_error("the call's account is gone").await,
        }
        let limits = self.limits_for(&pin);
        if s.call.machine_detection.as_deref().is_some_and(|m| {
            m.eq_ignore_ascii_case("Enable") || m.eq_ignore_ascii_case("DetectMessageEnd")
        }) && !s.detect().await
        {
            return;
        }
        s.drive(plugin, &pin, limits).await;
    }
}

/// One call's flow.
struct Session {
    runner: FlowRunner,
    token: String,
    call: Call,
    media: CallMedia,
    events: UnboundedReceiver<MediaEvent>,
    /// The call's leg. While the call still rings it is answered before the first command
    /// other than a fetch, or refused unanswered by a `<Reject>` that comes first; until then
    /// `media` is detached.
    leg: LegLink,
    dialer: Dialer,
    state: Vec<u8>,
}

/// What carrying out one command led to.
enum Outcome {
    Event(FlowEvent),
    /// The flow asked to end the call.
    Hangup,
    /// The call ended under us.
    Gone,
    /// The API gave new instructions: what was running is abandoned.
    Redirected(Redirect),
}

/// What came while a command ran.
enum Next {
    Media(MediaEvent),
    Gone,
    Redirected(Redirect),
}

impl Session {
    fn inner(&self) -> &Inner {
        &self.runner.inner
    }

    fn context(&self, config: &str, now: i64, seed: u64) -> CallContext {
        let c = &self.call;
        CallContext {
            account_sid: c.account_sid.clone(),
            call_sid: c.sid.clone(),
            parent_call_sid: c.parent_call_sid.clone(),
            direction: c.direction.clone(),
            from: c.from_number.clone(),
            to: c.to_number.clone(),
            status: if self.leg.ringing() {
                "ringing"
            } else {
                "in-progress"
            }
            .into(),
            answered_by: c.answered_by.clone(),
            now_ms: now,
            seed,
            config: config.to_owned(),
            url: c.url.clone(),
            method: method(&c.method),
            fallback_url: c.fallback_url.clone(),
            fallback_method: method(&c.fallback_method),
            document: c.twiml.clone(),
        }
    }

    async fn log(&self, kind: &str, detail: Value) {
        let r = self
            .inner()
            .store
            .append_call_event(&self.call.sid, now_ms(), kind, &detail.to_string())
            .await;
        if let Err(e) = r {
            tracing::warn!(call = %self.call.sid, error = %e, "call event not logged");
        }
    }

    /// `MachineDetection`: listens to the callee's first seconds before the flow starts and
    /// records `AnsweredBy` on the call (the flow's first fetch carries it). False when the
    /// call ended meanwhile.
    async fn detect(&mut self) -> bool {
        self.media.detect(AmdConfig::default());
        let verdict = loop {
            match self.next_media().await {
                Next::Gone => return false,
                Next::Redirected(_) => return true,
                Next::Media(MediaEvent::Detected(v)) => break v,
                Next::Media(_) => {}
            }
        };
        let answered_by = verdict.answered_by.as_str().to_owned();
        self.log(
            "flow.amd",
            json!({"answered_by": answered_by, "reason": verdict.reason, "after_ms": verdict.decided_after_ms}),
        )
        .await;
        let update = CallUpdate {
            answered_by: Some(answered_by.clone()),
            ..CallUpdate::default()
        };
        match self
            .inner()
            .store
            .update_call(&self.call.account_sid, &self.call.sid, &update, now_ms())
            .await
        {
            Ok(c) => self.call = c,
            Err(e) => {
                tracing::warn!(call = %self.call.sid, error = %e, "AnsweredBy not stored");
                self.call.answered_by = Some(answered_by);
            }
        }
        true
    }

    async fn drive(&mut self, plugin: Arc<Plugin>, pin: &Pin, limits: Limits) {
        let config = pin.config.as_str();
        // Everything a replay needs to run the same events through another build.
        let ctx = self.context(config, 0, 0);
        self.log(
            "flow.start",
            json!({
                "plugin": pin.plugin, "sha256": pin.sha256, "config": config,
                "direction": ctx.direction, "from": ctx.from, "to": ctx.to,
                "parent_call_sid": ctx.parent_call_sid, "answered_by": ctx.answered_by,
                "url": ctx.url, "method": ctx.method, "fallback_url": ctx.fallback_url,
                "fallback_method": ctx.fallback_method, "document": ctx.document,
            }),
        )
        .await;
        let mut queue = VecDeque::from([FlowEvent::Start]);
        let mut delivered = 0;
        while let Some(event) = queue.pop_front() {
            delivered += 1;
            if delivered > MAX_EVENTS {
                return self.application_error("too many flow events").await;
            }
            let commands = match self.deliver(&plugin, config, limits, event).await {
                Ok(c) => c,
                Err(e) => {
                    return self
                        .application_error(&format!("the flow plugin failed: {e}"))
                        .await;
                }
            };
            for command in commands {
                self.log("flow.command", json!(command)).await;
                if self.leg.ringing() {
                    match command {
                        Command::Fetch(_) => {}
                        // Twilio: <Reject> first is the only way not to answer a call (a
                        // <Hangup> or an empty document answers it, then hangs up)
                        Command::Reject(reason) => return self.refuse(reject_code(reason)).await,
                        _ => {
                            if !self.answer().await {
                                return;
                            }
                        }
                    }
                }
                match self.apply(command).await {
                    Outcome::Event(e) => queue.push_back(e),
                    Outcome::Hangup => return,
                    Outcome::Gone => {
                        // The other side hung up mid-flow: the plugin hears of it last (what
                        // it answers has no call left to act on, only its logs are kept).
                        let _ = self
                            .deliver(&plugin, config, limits, FlowEvent::Hangup)
                            .await;
                        return;
                    }
                    Outcome::Redirected(r) => {
                        self.log(
                            "flow.redirect",
                            json!({"url": r.url, "document": r.twiml.is_some()}),
                        )
                        .await;
                        queue.clear();
                        queue.push_back(FlowEvent::Redirected(FlowRedirect {
                            url: r.url,
                            method: method(&r.method),
                            document: r.twiml,
                        }));
                        break;
                    }
                }
            }
        }
        // a ringing call whose flow ended without a verb: Twilio answers it, then hangs up
        self.answer().await;
    }

    /// Hands one event to the plugin: the event is logged (whole, with the time and seed the
    /// invocation sees, for replays), the plugin's new state kept and its log lines logged; its
    /// commands are returned.
    async fn deliver(
        &mut self,
        plugin: &Arc<Plugin>,
        config: &str,
        limits: Limits,
        event: FlowEvent,
    ) -> Result<Vec<Command>, callflow_runtime::InvokeError> {
        let (now, seed) = (now_ms(), rand::random::<u64>());
        self.log("flow.event", event_entry(&event, now, seed)).await;
        let state = std::mem::take(&mut self.state);
        let ctx = self.context(config, now, seed);
        let runtime = self.inner().runtime.clone();
        let step = runtime
            .call_flow(plugin.clone(), ctx, state, event, limits)
            .await?;
        self.state = step.state;
        for l in &step.logs {
            self.log(
                "flow.log",
                json!({"level": level_name(l.level), "message": l.message}),
            )
            .await;
        }
        Ok(step.commands)
    }

    /// Answers a call still ringing (a no-op once answered): the call's media replaces the
    /// detached one. False when the call ended first.
    async fn answer(&mut self) -> bool {
        if !self.leg.ringing() {
            return true;
        }
        match self.leg.answer().await {
            Some((media, events)) => {
                self.media = media;
                self.events = events;
                self.log("flow.answered", json!({})).await;
                true
            }
            None => false,
        }
    }

    /// Refuses a call still ringing with SIP status `code`; it is never answered.
    async fn refuse(&mut self, code: u16) {
        if self.leg.ringing() {
            self.log("flow.refused", json!({ "sip": code })).await;
            self.leg.refuse(code);
        }
    }

    /// Says Twilio's application-error words, logs why, and returns (the call is hung up).
    async fn application_error(&mut self, why: &str) {
        tracing::warn!(call = %self.call.sid, why, "application error");
        self.log("flow.error", json!({ "error": why })).await;
        // Twilio answers a ringing call to say so
        if !self.answer().await {
            return;
        }
        if let Ok(audio) = self
            .inner()
            .prompts
            .say(None, None, APPLICATION_ERROR)
            .await
        {
            self.media.play(vec![PlayItem::Audio(audio)], 1, false);
            self.wait_play().await;
        }
    }

    /// The next media event, unless the media is gone or the API redirects the call (then
    /// what was running is stopped and its late reports are dropped).
    async fn next_media(&mut self) -> Next {
        tokio::select! {
            e = self.events.recv() => match e {
                None | Some(MediaEvent::Closed { .. }) => Next::Gone,
                Some(e) => Next::Media(e),
            },
            r = self.leg.redirect() => {
                // the leg's end closes when the call is over
                let Some(r) = r else { return Next::Gone };
                // What the stop ends reports before `Stopped`; none of it is for the new
                // instructions.
                self.media.stop();
                loop {
                    match self.events.recv().await {
                        None | Some(MediaEvent::Closed { .. }) => return Next::Gone,
                        Some(MediaEvent::Stopped) => return Next::Redirected(r),
                        Some(_) => {}
                    }
                }
            }
        }
    }

    /// Waits for the media event `pick` accepts, turning it into the flow's next event.
    async fn wait_for(&mut self, pick: impl Fn(MediaEvent) -> Option<FlowEvent>) -> Outcome {
        loop {
            match self.next_media().await {
                Next::Gone => return Outcome::Gone,
                Next::Redirected(r) => return Outcome::Redirected(r),
                Next::Media(e) => {
                    if let Some(ev) = pick(e) {
                        return Outcome::Event(ev);
                    }
                }
            }
        }
    }

    async fn wait_play(&mut self) -> Outcome {
        self.wait_for(|e| matches!(e, MediaEvent::PlayDone { .. }).then_some(FlowEvent::PromptDone))
            .await
    }

    async fn prompt_items(&self, prompts: Vec<Prompt>) -> Vec<PlayItem> {
        let mut items = Vec::with_capacity(prompts.len());
        for p in prompts {
            let (audio, loops) = match p {
                Prompt::Pause(ms) => {
                    items.push(PlayItem::Silence { ms });
                    continue;
                }
                Prompt::Say(s) => (self.say(&s.voice, &s.language, &s.text).await, s.loops),
                Prompt::Play(p) => (self.play(&p.url).await, p.loops),
            };
            if let Some(a) = audio {
                for _ in 0..loops_of(loops) {
                    items.push(PlayItem::Audio(a.clone()));
                }
            }
        }
        items
    }

    async fn say(
        &self,
        voice: &Option<String>,
        language: &Option<String>,
        text: &str,
    ) -> Option<Arc<callflow_media::Audio>> {
        match self
            .inner()
            .prompts
            .say(voice.as_deref(), language.as_deref(), text)
            .await
        {
            Ok(a) => Some(a),
            Err(e) => {
                self.log("flow.media_error", json!({"say": e.to_string()}))
                    .await;
                None
            }
        }
    }

    async fn play(&self, url: &str) -> Option<Arc<callflow_media::Audio>> {
        match self
            .inner()
            .prompts
            .play_url(url, now_ms().max(0) as u64)
            .await
        {
            Ok(a) => Some(a),
            Err(e) => {
                self.log("flow.media_error", json!({"play": e.to_string()}))
                    .await;
                None
            }
        }
    }

    async fn apply(&mut self, command: Command) -> Outcome {
        match command {
            Command::Fetch(f) => Outcome::Event(FlowEvent::Fetched(self.fetch(f).await)),
            Command::Say(s) => {
                let audio = self.say(&s.voice, &s.language, &s.text).await;
                self.play_audio(audio, loops_of(s.loops)).await
            }
            Command::Play(p) => {
                let audio = self.play(&p.url).await;
                self.play_audio(audio, loops_of(p.loops)).await
            }
            Command::Pause(ms) => {
                self.media.play(vec![PlayItem::Silence { ms }], 1, false);
                self.wait_play().await
            }
            Command::SendDigits(d) => {
                self.media.send_digits(&d);
                self.wait_for(|e| {
                    matches!(e, MediaEvent::DigitsSent).then_some(FlowEvent::PromptDone)
                })
                .await
            }
            Command::Gather(g) => {
                let items = self.prompt_items(g.prompts).await;
                if !items.is_empty() {
                    self.media.play(items, 1, true);
                }
                self.media.collect(Collect {
                    num_digits: g.num_digits.filter(|&n| n > 0),
                    timeout_ms: u64::from(g.timeout_ms),
                    finish_on_key: g.finish_on_key.chars().next(),
                });
                self.wait_for(|e| match e {
                    MediaEvent::Collected { digits, end } => {
                        let timed_out = end == CollectEnd::Timeout && digits.is_empty();
                        Some(FlowEvent::Gathered(GatherResult { digits, timed_out }))
                    }
                    _ => None,
                })
                .await
            }
            Command::Record(r) => self.record(r).await,
            Command::Dial(d) => self.dial(d).await,
            Command::Hangup | Command::Reject(_) => Outcome::Hangup,
        }
    }

    /// `<Dial>`: a child call to every number at once; the first to answer is bridged with
    /// this call until either side hangs up, the others are ended; its outcome is the flow's
    /// next event.
    async fn dial(&mut self, d: callflow_runtime::flow::Dial) -> Outcome {
        use callflow_runtime::flow::{DialResult, DialTarget};
        let failed = |why: &str| {
            (
                json!({ "dial": why }),
                Outcome::Event(FlowEvent::DialDone(DialResult {
                    status: "failed".into(),
                    call_sid: None,
                    duration_s: 0,
                    recording: None,
                })),
            )
        };
        // numbers go through the trunk, SIP URIs straight to their host (telephony decides)
        let numbers: Vec<String> = d
            .targets
            .iter()
            .map(|t| match t {
                DialTarget::Number(n) | DialTarget::Sip(n) => n.clone(),
            })
            .take(MAX_DIAL_NUMBERS)
            .collect();
        if numbers.is_empty() {
            let (log, out) = failed("a <Dial> with nothing to call");
            self.log("flow.error", log).await;
            return out;
        }
        if numbers.len() < d.targets.len() {
            self.log(
                "flow.log",
                json!({"level": "warn", "message": format!(
                    "only the first {MAX_DIAL_NUMBERS} targets of a <Dial> are called"
                )}),
            )
            .await;
        }
        let tel = self.dialer.clone();
        // Every number rings at once; the first to answer is bridged, the others are ended.
        let (race, mut decided) = tokio::sync::watch::channel(None::<String>);
        let race = Arc::new(race);
        let mut children = Vec::new();
        let mut legs = Vec::new();
        for number in &numbers {
            let placed = tel
                .dial(
                    &self.call,
                    self.media.clone(),
                    DialLeg {
                        to: number,
                        caller_id: d.caller_id.clone(),
                        timeout_s: i64::from(d.timeout_ms.div_ceil(1000).max(1)),
                        time_limit_s: i64::from(d.time_limit_ms.div_ceil(1000).max(1)),
                        race: race.clone(),
                    },
                )
                .await;
            match placed {
                Ok((child, leg)) => {
                    children.push(child);
                    legs.push(leg);
                }
                Err(why) => {
                    self.log("flow.error", json!({ "dial": why, "to": number }))
                        .await
                }
            }
        }
        if children.is_empty() {
            return failed("no leg could be placed").1;
        }
        let sids: Vec<&str> = children.iter().map(|c| c.sid.as_str()).collect();
        self.log("flow.dial", json!({"children": sids, "to": numbers}))
            .await;
        // Whatever happens to this call, the children do not outlive it.
        let guards: Vec<EndLeg> = children
            .iter()
            .map(|c| EndLeg {
                dialer: tel.clone(),
                sid: Some(c.sid.clone()),
            })
            .collect();
        let (all_done, mut ended) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            for leg in legs {
                let _ = leg.await;
            }
            let _ = all_done.send(());
        });
        if d.record && self.call.record {
            self.log(
                "flow.log",
                json!({"level": "info", "message":
                    "the whole call is being recorded (Record=true): <Dial record> adds no second recording"}),
            )
            .await;
        }
        let mut winner: Option<String> = None;
        let mut recording = None;
        loop {
            tokio::select! {
                _ = &mut ended => break,
                Ok(()) = decided.changed(), if winner.is_none() => {
                    winner = decided.borrow().clone();
                    for c in children.iter().filter(|c| Some(&c.sid) != winner.as_ref()) {
                        tel.end_leg(&c.sid);
                    }
                    if d.record && recording.is_none() && !self.call.record {
                        // record-from-answer: both sides, from the bridge to the end
                        let done = self.media.record_conversation(u64::from(d.time_limit_ms));
                        recording = Some((done, now_ms()));
                    }
                }
                e = self.events.recv() => match e {
                    None | Some(MediaEvent::Closed { .. }) => {
                        // the caller hung up: what was recorded is kept all the same
                        self.keep_recording_in_background(recording.take());
                        return Outcome::Gone;
                    }
                    Some(MediaEvent::Digit { digit: '*', .. }) if d.hangup_on_star => {
                        for c in &children {
                            tel.end_leg(&c.sid);
                        }
                    }
                    Some(_) => {}
                },
                Some(r) = self.leg.redirect() => {
                    for c in &children {
                        tel.end_leg(&c.sid);
                    }
                    let _ = (&mut ended).await;
                    drop(guards);
                    self.keep_recording_in_background(recording.take());
                    return Outcome::Redirected(r);
                }
            }
        }
        for g in guards {
            g.disarm();
        }
        let mut stored = Vec::new();
        for c in &children {
            let fresh = self
                .inner()
                .store
                .call(&c.account_sid, &c.sid)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| c.clone());
            stored.push(fresh);
        }
        let pick = winner
            .as_ref()
            .and_then(|w| stored.iter().find(|c| &c.sid == w))
            .unwrap_or(&stored[0]);
        let status = match &winner {
            Some(_) => pick.status().as_str().to_owned(),
            None => unanswered_status(stored.iter().map(|c| c.status().as_str())),
        };
        let recording = match recording {
            Some((done, started)) => {
                self.media.end_conversation();
                self.runner
                    .store_conversation(&self.call, done, started, "DialVerb")
                    .await
            }
            None => None,
        };
        Outcome::Event(FlowEvent::DialDone(DialResult {
            status,
            call_sid: Some(pick.sid.clone()),
            duration_s: u32::try_from(pick.duration.unwrap_or(0)).unwrap_or(0),
            recording,
        }))
    }

    /// A `<Dial record>` the call left early (hung up, redirected): ended and stored by a
    /// task of its own.
    fn keep_recording_in_background(
        &self,
        recording: Option<(
            tokio::sync::oneshot::Receiver<Box<callflow_media::record::Conversation>>,
            i64,
        )>,
    ) {
        let Some((done, started)) = recording else {
            return;
        };
        self.media.end_conversation();
        let (runner, call) = (self.runner.clone(), self.call.clone());
        tokio::spawn(async move {
            runner
                .store_conversation(&call, done, started, "DialVerb")
                .await
        });
    }

    async fn play_audio(
        &mut self,
        audio: Option<Arc<callflow_media::Audio>>,
        loops: u32,
    ) -> Outcome {
        match audio {
            Some(a) => {
                self.media.play(vec![PlayItem::Audio(a)], loops, false);
                self.wait_play().await
            }
            None => Outcome::Event(FlowEvent::PromptDone),
        }
    }

    async fn fetch(&self, f: callflow_runtime::flow::Fetch) -> FetchResult {
        let method = match f.method {
            HttpMethod::Get => Method::Get,
            HttpMethod::Post => Method::Post,
            other => return FetchResult::Failed(format!("{other:?} is not allowed for a fetch")),
        };
        let req = WebhookRequest {
            url: f.url.clone(),
            method,
            params: f.params.into_iter().map(|p| (p.name, p.value)).collect(),
        };
        match self.inner().client.send(&req, &self.token).await {
            Ok(resp) => FetchResult::Response(FetchResponse {
                status: resp.status,
                content_type: resp.content_type,
                body: String::from_utf8_lossy(&resp.body).into_owned(),
                url: f.url,
            }),
            Err(e) => FetchResult::Failed(e.to_string()),
        }
    }

    async fn record(&mut self, r: callflow_runtime::flow::Record) -> Outcome {
        let opts = RecordOptions {
            max_length_ms: u64::from(r.max_length_ms.max(1000)),
            silence_timeout_ms: u64::from(r.timeout_ms),
            finish_on_key: r.finish_on_key,
            trim: r.trim_silence,
        };
        let beep = r
            .play_beep
            .then(|| Arc::new(callflow_media::prompt::beep()));
        let started = now_ms();
        self.media.record(opts, beep);
        let rec = loop {
            match self.next_media().await {
                Next::Gone => return Outcome::Gone,
                Next::Redirected(r) => return Outcome::Redirected(r),
                Next::Media(MediaEvent::Recorded(rec)) => break rec,
                Next::Media(_) => {}
            }
        };
        let digits = match (rec.digit, rec.reason) {
            (Some(d), _) => d.to_string(),
            (None, StopReason::Hangup) => "hangup".into(),
            _ => String::new(),
        };
        let nothing = |digits: String| {
            Outcome::Event(FlowEvent::Recorded(RecordResult {
                recording_sid: None,
                recording_url: None,
                duration_ms: 0,
                digits,
                empty: true,
            }))
        };
        if !rec.heard_audio || rec.pcm.is_empty() {
            return nothing(digits);
        }
        // The account's recording plugin, if it binds one, decides what is kept.
        let mut pcm = rec.pcm;
        let mut notify = Vec::new();
        match self.recording_plan(&pcm, rec.reason, rec.digit).await {
            Ok(None) => {}
            Ok(Some(plan)) => {
                notify = plan.notify;
                match plan.action {
                    recording::Action::Keep(k) => {
                        pcm.truncate(k.end as usize);
                        pcm.drain(..k.start as usize);
                    }
                    recording::Action::Discard(why) => {
                        self.log("recording.discarded", json!({ "reason": why }))
                            .await;
                        let rows = self.notification_rows(notify).await;
                        self.enqueue(rows).await;
                        return nothing(digits);
                    }
                }
            }
            // A failing plugin must not lose the caller's message: keep it all.
            Err(why) => {
                self.log("flow.error", json!({ "recording_plugin": why }))
                    .await;
            }
        }
        let rows = self.notification_rows(notify).await;
        if pcm.is_empty() {
            self.enqueue(rows).await;
            return nothing(digits);
        }
        let duration_ms = pcm.len() as u64 / 8;
        let stored = self
            .runner
            .store_recording(&self.call, &pcm, duration_ms, started, "RecordVerb", rows)
            .await;
        match stored {
            Ok((sid, url)) => Outcome::Event(FlowEvent::Recorded(RecordResult {
                recording_sid: Some(sid),
                recording_url: Some(url),
                duration_ms: u32::try_from(duration_ms).unwrap_or(u32::MAX),
                digits,
                empty: false,
            })),
            Err(why) => {
                self.log("flow.error", json!({"recording": why})).await;
                Outcome::Event(FlowEvent::Recorded(RecordResult {
                    recording_sid: None,
                    recording_url: None,
                    duration_ms: 0,
                    digits,
                    empty: true,
                }))
            }
        }
    }

    /// Runs the call's pinned recording plugin on a finished recording; `None` when the call
    /// has none.
    async fn recording_plan(
        &self,
        pcm: &[i16],
        reason: StopReason,
        digit: Option<char>,
    ) -> Result<Option<recording::RecordingPlan>, String> {
        let Some(pin) = pin_in(&self.call.plugins, World::Recording) else {
            return Ok(None);
        };
        let plugin = self.runner.load(&pin).await?;
        let ctx = recording::RecordingContext {
            account_sid: self.call.account_sid.clone(),
            call_sid: self.call.sid.clone(),
            now_ms: now_ms(),
            seed: rand::random(),
            config: pin.config.clone(),
            sample_rate: 8_000,
            reason: match reason {
                StopReason::MaxLength => "max-length",
                StopReason::Silence => "silence",
                StopReason::FinishKey(_) => "key",
                StopReason::Hangup | StopReason::Stopped => "hangup",
            }
            .into(),
            digits: digit.map(String::from).unwrap_or_default(),
        };
        let limits = self.runner.limits_for(&pin);
        let plan = self
            .inner()
            .runtime
            .process_recording(plugin, ctx, pcm.to_vec(), limits)
            .await
            .map_err(|e| e.to_string())?;
        for line in &plan.logs {
            self.log(
                "recording.log",
                json!({ "level": level_name(line.level), "message": line.message }),
            )
            .await;
        }
        Ok(Some(plan))
    }

    /// A recording plugin's notifications as outbox rows (at most as many as an event may ask
    /// for; one the host cannot make is logged on the call and left out).
    async fn notification_rows(
        &self,
        requests: Vec<recording::HttpRequest>,
    ) -> Vec<callflow_store::NewDelivery> {
        if requests.len() > crate::events::MAX_REQUESTS_PER_EVENT {
            let detail = json!({ "error": format!(
                "the recording plugin asked for {} notifications (at most {}); none is sent",
                requests.len(), crate::events::MAX_REQUESTS_PER_EVENT) });
            self.log("recording.notify", detail).await;
            return Vec::new();
        }
        let mut rows = Vec::new();
        for r in requests {
            let (method, url) = (method_name(r.method), r.url.clone());
            match crate::events::plugin_request(&self.call, r) {
                Ok(row) => rows.push(row),
                Err(e) => {
                    let detail = json!({ "url": url, "method": method, "error": e });
                    self.log("recording.notify", detail).await;
                }
            }
        }
        rows
    }

    /// Notifications with no recording to go with (it was discarded, or nothing was kept).
    async fn enqueue(&self, rows: Vec<callflow_store::NewDelivery>) {
        if rows.is_empty() {
            return;
        }
        let enqueued = self
            .inner()
            .engine
            .enqueue(&rows, now_ms())
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = enqueued {
            self.log("recording.notify", json!({ "error": e })).await;
        }
    }
}

/// The SIP status `<Reject reason=…>` refuses a ringing call with (`486 Busy Here`, `603
/// Decline`).
fn reject_code(reason: RejectReason) -> u16 {
    match reason {
        RejectReason::Busy => 486,
        RejectReason::Rejected => 603,
    }
}

/// The numbers one `<Dial>` rings at once (Twilio's limit).
const MAX_DIAL_NUMBERS: usize = 10;

/// `DialCallStatus` when no leg answered: the legs' common status, else `no-answer` if any leg
/// rang out, else `busy` if any was busy, else `failed`.
fn unanswered_status<'a>(statuses: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = statuses.collect();
    let pick = if all.windows(2).all(|w| w[0] == w[1]) {
        all.first().copied().unwrap_or("failed")
    } else if all.contains(&"no-answer") {
        "no-answer"
    } else if all.contains(&"busy") {
        "busy"
    } else {
        "failed"
    };
    pick.to_owned()
}

/// A plugin log line's level as the call log writes it.
pub(crate) fn level_name(l: callflow_runtime::flow::LogLevel) -> &'static str {
    use callflow_runtime::flow::LogLevel;
    match l {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
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

fn loops_of(n: u32) -> u32 {
    if n == 0 { MAX_LOOPS } else { n.min(MAX_LOOPS) }
}

/// Largest event kept whole in the call's log (a fetched document bigger than this is logged
/// without its body, and a replay says it cannot re-run that step).
const MAX_LOGGED_EVENT_BYTES: usize = 256 << 10;

/// A delivered event as the call's log keeps it: whole (a replay re-runs it), with the time and
/// seed its invocation saw.
fn event_entry(e: &FlowEvent, now: i64, seed: u64) -> Value {
    if let FlowEvent::Fetched(FetchResult::Response(r)) = e
        && r.body.len() > MAX_LOGGED_EVENT_BYTES
    {
        let without_body = FlowEvent::Fetched(FetchResult::Response(FetchResponse {
            status: r.status,
            content_type: r.content_type.clone(),
            body: String::new(),
            url: r.url.clone(),
        }));
        return json!({
            "event": without_body, "now_ms": now, "seed": seed.to_string(), "truncated": true,
        });
    }
    json!({ "event": e, "now_ms": now, "seed": seed.to_string() })
}

/// Ends a `<Dial>`'s child call when dropped, unless disarmed.
struct EndLeg {
    dialer: Dialer,
    sid: Option<String>,
}

impl EndLeg {
    fn disarm(mut self) {
        self.sid = None;
    }
}

impl Drop for EndLeg {
    fn drop(&mut self) {
        if let Some(sid) = self.sid.take() {
            self.dialer.end_leg(&sid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dial_nobody_answered_reports_the_most_telling_status() {
        let of = |v: &[&str]| unanswered_status(v.iter().copied());
        assert_eq!(of(&["busy", "busy"]), "busy");
        assert_eq!(of(&["failed"]), "failed");
        assert_eq!(of(&["busy", "no-answer", "failed"]), "no-answer");
        assert_eq!(of(&["busy", "failed"]), "busy");
        assert_eq!(of(&["canceled", "failed"]), "failed");
    }

    #[test]
    fn logged_events_come_back_as_the_same_events() {
        let big = "x".repeat(MAX_LOGGED_EVENT_BYTES + 1);
        for (e, whole) in [
            (FlowEvent::Start, true),
            (
                FlowEvent::Gathered(GatherResult {
                    digits: "12".into(),
                    timed_out: false,
                }),
                true,
            ),
            (
                FlowEvent::Fetched(FetchResult::Response(FetchResponse {
                    status: 200,
                    content_type: Some("text/xml".into()),
                    body: "<Response/>".into(),
                    url: "https://a.example/".into(),
                })),
                true,
            ),
            (
                FlowEvent::Fetched(FetchResult::Response(FetchResponse {
                    status: 200,
                    content_type: None,
                    body: big,
                    url: "https://a.example/".into(),
                })),
                false,
            ),
        ] {
            let entry = event_entry(&e, 5, u64::MAX);
            assert_eq!(entry["seed"], json!(u64::MAX.to_string()));
            let back: Result<FlowEvent, _> = serde_json::from_value(entry["event"].clone());
            if whole {
                assert_eq!(json!(back.unwrap()), json!(e));
            } else {
                assert_eq!(entry["truncated"], json!(true));
                assert!(entry.to_string().len() < 1000, "the body is not kept");
            }
        }
    }
}
