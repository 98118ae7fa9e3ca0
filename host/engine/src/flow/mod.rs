//! Running a call's flow plugin on its media. Once a call is answered, the call's pinned
//! call-flow plugin (the built-in TwiML interpreter unless the account bound another) gets the
//! `start` event; the commands it returns are carried out in order (fetches through the webhook
//! client, audio through the media layer, recordings stored and made resources), and each
//! command's outcome is the next event. Every event and its outcome go into the call's event
//! log. When the plugin has nothing left to do, or asks, the call is hung up.
//!
//! A plugin that fails (trap, timeout, limit, bad output, its own error) gets Twilio's answer:
//! "an application error has occurred", then the hangup.

use std::collections::VecDeque;
use std::sync::Arc;

use callflow_media::amd::AmdConfig;
use callflow_media::worker::{CallMedia, Collect, CollectEnd, MediaEvent, PlayItem};
use callflow_runtime::World;
use callflow_runtime::flow::{
    CallContext, Command, FetchResponse, FetchResult, FlowEvent, GatherResult, HttpMethod, Prompt,
    Redirect as FlowRedirect, RejectReason,
};
use callflow_store::{
    Amd, Call, CallLogEntry, CallUpdate, DeliveredEvent, FlowFailure, FlowStarted, LogLevel,
    LogSource, MediaError, Pin, Redirected, Store,
};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::clock::now_ms;
use crate::plugins::{DEFAULT_FLOW, HostError, PluginHost, pinned};
use crate::prompts::Prompts;
use crate::telephony::{Dialer, Flow, FlowStart, LegLink};
use crate::webhook::{Method, WebhookClient, WebhookRequest};
use crate::{Engine, Redirect};

mod dial;
mod record;

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
    /// Recordings go under `recordings/`.
    pub blobs: crate::blobs::Blobs,
}

/// Runs flows; [`FlowRunner::flow`] is what telephony calls for each answered call.
#[derive(Clone)]
pub struct FlowRunner {
    inner: Arc<Inner>,
}

struct Inner {
    plugins: PluginHost,
    store: Store,
    prompts: Prompts,
    client: WebhookClient,
    config: FlowConfig,
    /// Where recordings' notifications go (the outbox).
    engine: Engine,
}

impl std::fmt::Debug for FlowRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowRunner").finish_non_exhaustive()
    }
}

/// The call's call-flow pin: its binding's, or the built-in TwiML interpreter.
fn pin_of(call: &Call) -> Pin {
    pinned(call, World::CallFlow).unwrap_or_else(|| Pin::builtin(DEFAULT_FLOW))
}

/// A call's webhook method as the plugin world spells it.
fn method(m: callflow_store::HttpMethod) -> HttpMethod {
    match m {
        callflow_store::HttpMethod::Get => HttpMethod::Get,
        callflow_store::HttpMethod::Post => HttpMethod::Post,
    }
}

/// What `flow.start` logs of a call about to run `pin`: the version, and what the plugin is
/// told of the call (everything a replay needs to run the same events through another build).
fn flow_started(call: &Call, pin: &Pin) -> FlowStarted {
    let i = &call.instructions;
    FlowStarted {
        plugin: pin.plugin.clone(),
        sha256: pin.sha256.clone(),
        config: pin.config.clone(),
        direction: call.direction,
        from: call.from_number.clone(),
        to: call.to_number.clone(),
        parent_call_sid: call.parent_call_sid.clone(),
        answered_by: call.answered_by.clone(),
        url: i.url.clone(),
        method: i.method,
        fallback_url: i.fallback_url.clone(),
        fallback_method: i.fallback_method,
        document: i.twiml.clone(),
    }
}

/// The context one event of a flow is delivered with: what `flow.start` logged of the call,
/// the call's status (`ringing` or `in-progress`), and the invocation's time and seed.
/// `callflow replay` builds its contexts here too.
pub fn flow_context(
    start: &FlowStarted,
    account_sid: &str,
    call_sid: &str,
    status: &str,
    now_ms: i64,
    seed: u64,
) -> CallContext {
    CallContext {
        account_sid: account_sid.to_owned(),
        call_sid: call_sid.to_owned(),
        parent_call_sid: start.parent_call_sid.clone(),
        direction: start.direction.as_str().to_owned(),
        from: start.from.clone(),
        to: start.to.clone(),
        status: status.to_owned(),
        answered_by: start.answered_by.clone(),
        now_ms,
        seed,
        config: start.config.clone(),
        url: start.url.clone(),
        method: method(start.method),
        fallback_url: start.fallback_url.clone(),
        fallback_method: method(start.fallback_method),
        document: start.document.clone(),
    }
}

impl FlowRunner {
    pub fn new(
        plugins: PluginHost,
        engine: Engine,
        prompts: Prompts,
        client: WebhookClient,
        config: FlowConfig,
    ) -> FlowRunner {
        let store = engine.store.clone();
        FlowRunner {
            inner: Arc::new(Inner {
                plugins,
                store,
                prompts,
                client,
                config,
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
            amd_pending: false,
        };
        // `Record=true` on create: the whole call, both sides, from the answer
        if s.call.instructions.record {
            self.record_call(&s.call, &s.media);
        }
        self.start_and_drive(&mut s).await;
    }

    /// Rows were stored in the outbox: it need not wait for its next poll.
    fn wake_outbox(&self) {
        self.inner.engine.wake_outbox();
    }

    async fn start_and_drive(&self, s: &mut Session) {
        let pin = pin_of(&s.call);
        match self.inner.store.account(&s.call.account_sid).await {
            Ok(Some(a)) => s.token = a.auth_token,
            _ => {
                return s
                    .application_error("host", "the call's account is gone")
                    .await;
            }
        }
        // Twilio's `SendDigits`: keyed to the far end as soon as it answers (an extension, a
        // PBX's menu), before detection and the flow
        if let Some(digits) = s.call.instructions.send_digits.clone()
            && !digits.is_empty()
            && !s.send_digits(&digits).await
        {
            return;
        }
        // Enable and DetectMessageEnd both wait for the verdict before the flow starts, unless
        // `AsyncAmd=true`: then the flow starts at once and the verdict goes to its callback
        if s.call.instructions.machine_detection.is_some() {
            if s.call.instructions.async_amd().is_some() {
                s.media.detect(amd_config(&s.call.instructions));
                s.amd_pending = true;
            } else if !s.detect().await {
                return;
            }
        }
        s.drive(&pin).await;
    }
}

/// The detector's bounds, with Twilio's `MachineDetection*` tuning of the call where given:
/// `Timeout` (s) bounds the analysis, `SpeechThreshold` (ms) is the voice that makes a
/// greeting a machine's, `SpeechEndThreshold` (ms) the silence after it that makes it a
/// person's, `SilenceTimeout` (ms) the silence at the start that ends it as `unknown`.
fn amd_config(i: &callflow_store::CallInstructions) -> AmdConfig {
    let d = AmdConfig::default();
    let ms =
        |name: &str, scale: i64, or: u64| i.amd_tuning(name).map_or(or, |v| (v * scale) as u64);
    AmdConfig {
        total_analysis_ms: ms("MachineDetectionTimeout", 1000, d.total_analysis_ms),
        greeting_ms: ms("MachineDetectionSpeechThreshold", 1, d.greeting_ms),
        after_greeting_silence_ms: ms(
            "MachineDetectionSpeechEndThreshold",
            1,
            d.after_greeting_silence_ms,
        ),
        initial_silence_ms: ms("MachineDetectionSilenceTimeout", 1, d.initial_silence_ms),
        ..d
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
    /// `AsyncAmd=true`: detection runs beside the flow, its verdict still to come.
    amd_pending: bool,
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

    /// Logs `entry` on the call through the store's journal (committed with others within a
    /// few milliseconds, before the call's log is read or its status changes).
    async fn log(&self, entry: CallLogEntry) {
        self.inner()
            .store
            .log_call_event(&self.call.sid, now_ms(), &entry);
    }

    /// `MachineDetection`: listens to the callee's first seconds before the flow starts and
    /// records `AnsweredBy` on the call (the flow's first fetch carries it). False when the
    /// call ended meanwhile.
    /// Sends `digits` as RFC 4733 events; false if the call ended meanwhile.
    async fn send_digits(&mut self, digits: &str) -> bool {
        self.media.send_digits(digits);
        let sent = self
            .wait_for(|e| matches!(e, MediaEvent::DigitsSent).then_some(FlowEvent::PromptDone))
            .await;
        self.log(CallLogEntry::log(
            LogSource::Flow,
            LogLevel::Info,
            format!("SendDigits {digits:?} sent on answer"),
        ))
        .await;
        !matches!(sent, Outcome::Gone)
    }

    async fn detect(&mut self) -> bool {
        self.media.detect(amd_config(&self.call.instructions));
        let verdict = loop {
            match self.next_media().await {
                Next::Gone => return false,
                Next::Redirected(_) => return true,
                Next::Media(MediaEvent::Detected(v)) => break v,
                Next::Media(_) => {}
            }
        };
        self.detected(verdict).await;
        true
    }

    /// What detection decided: logged, and the call's `AnsweredBy`; told to the
    /// `AsyncAmdStatusCallback` when it ran beside the flow.
    async fn detected(&mut self, verdict: callflow_media::amd::Verdict) {
        let answered_by = verdict.answered_by.as_str().to_owned();
        if std::mem::take(&mut self.amd_pending)
            && let Some((Some(url), method)) = self.call.instructions.async_amd()
        {
            let row = callflow_store::NewDelivery {
                account_sid: self.call.account_sid.clone(),
                call_sid: Some(self.call.sid.clone()),
                kind: "amd-status-callback".into(),
                url: url.to_owned(),
                method: method.as_str().into(),
                params: vec![
                    ("AccountSid".into(), self.call.account_sid.clone()),
                    ("CallSid".into(), self.call.sid.clone()),
                    ("AnsweredBy".into(), answered_by.clone()),
                    (
                        "MachineDetectionDuration".into(),
                        verdict.decided_after_ms.to_string(),
                    ),
                ],
                ..callflow_store::NewDelivery::default()
            };
            match self.inner().engine.enqueue(&[row], now_ms()).await {
                Ok(()) => self.runner.wake_outbox(),
                Err(e) => {
                    tracing::warn!(call = %self.call.sid, error = %e, "the AsyncAmdStatusCallback was not stored")
                }
            }
        }
        self.log(CallLogEntry::FlowAmd(Amd {
            answered_by: answered_by.clone(),
            reason: verdict.reason.to_owned(),
            after_ms: verdict.decided_after_ms,
        }))
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
    }

    async fn drive(&mut self, pin: &Pin) {
        let start = flow_started(&self.call, pin);
        self.log(CallLogEntry::FlowStart(start.clone())).await;
        let mut queue = VecDeque::from([FlowEvent::Start]);
        let mut delivered = 0;
        while let Some(event) = queue.pop_front() {
            delivered += 1;
            if delivered > MAX_EVENTS {
                return self.application_error("host", "too many flow events").await;
            }
            let commands = match self.deliver(pin, &start, event).await {
                Ok(c) => c,
                Err(e) => {
                    return self
                        .application_error("plugin", &format!("the flow plugin failed: {e}"))
                        .await;
                }
            };
            for command in commands {
                self.log(CallLogEntry::FlowCommand(json!(command))).await;
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
                        let _ = self.deliver(pin, &start, FlowEvent::Hangup).await;
                        return;
                    }
                    Outcome::Redirected(r) => {
                        self.log(CallLogEntry::FlowRedirect(Redirected {
                            url: r.url.clone(),
                            document: r.twiml.is_some(),
                        }))
                        .await;
                        queue.clear();
                        queue.push_back(FlowEvent::Redirected(FlowRedirect {
                            url: r.url,
                            method: method(r.method),
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
        pin: &Pin,
        start: &FlowStarted,
        event: FlowEvent,
    ) -> Result<Vec<Command>, HostError> {
        let (now, seed) = (now_ms(), rand::random::<u64>());
        self.log(CallLogEntry::FlowEvent(event_entry(&event, now, seed)))
            .await;
        let status = if self.leg.ringing() {
            "ringing"
        } else {
            "in-progress"
        };
        let ctx = flow_context(
            start,
            &self.call.account_sid,
            &self.call.sid,
            status,
            now,
            seed,
        );
        let plugins = self.inner().plugins.clone();
        plugins.call_flow(pin, ctx, &mut self.state, event).await
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
                self.log(CallLogEntry::FlowAnswered).await;
                true
            }
            None => false,
        }
    }

    /// Refuses a call still ringing with SIP status `code`; it is never answered.
    async fn refuse(&mut self, code: u16) {
        if self.leg.ringing() {
            self.log(CallLogEntry::FlowRefused { sip: code }).await;
            self.leg.refuse(code);
        }
    }

    /// Says Twilio's application-error words, logs why, and returns (the call is hung up).
    async fn application_error(&mut self, kind: &str, why: &str) {
        crate::plugins::report_application_error(&self.call.sid, kind, why);
        self.log(CallLogEntry::FlowError(FlowFailure::Application {
            error: why.to_owned(),
        }))
        .await;
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
        loop {
            match self.next_media_event().await {
                // an asynchronous detection's verdict is the host's, not the flow's
                Next::Media(MediaEvent::Detected(v)) if self.amd_pending => self.detected(v).await,
                next => return next,
            }
        }
    }

    async fn next_media_event(&mut self) -> Next {
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
                self.log(CallLogEntry::FlowMediaError(MediaError::Say(e.to_string())))
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
                self.log(CallLogEntry::FlowMediaError(MediaError::Play(
                    e.to_string(),
                )))
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
}

/// The SIP status `<Reject reason=…>` refuses a ringing call with (`486 Busy Here`, `603
/// Decline`).
fn reject_code(reason: RejectReason) -> u16 {
    match reason {
        RejectReason::Busy => 486,
        RejectReason::Rejected => 603,
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
fn event_entry(e: &FlowEvent, now: i64, seed: u64) -> DeliveredEvent {
    let entry = |event: &FlowEvent, truncated| DeliveredEvent {
        event: json!(event),
        now_ms: now,
        seed,
        truncated,
    };
    if let FlowEvent::Fetched(FetchResult::Response(r)) = e
        && r.body.len() > MAX_LOGGED_EVENT_BYTES
    {
        let without_body = FlowEvent::Fetched(FetchResult::Response(FetchResponse {
            status: r.status,
            content_type: r.content_type.clone(),
            body: String::new(),
            url: r.url.clone(),
        }));
        return entry(&without_body, true);
    }
    entry(e, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilios_machine_detection_tuning_sets_the_detectors_bounds() {
        let mut i = callflow_store::CallInstructions::default();
        assert_eq!(amd_config(&i), AmdConfig::default());
        i.request_params = callflow_store::RequestParams(vec![
            ("MachineDetectionTimeout".into(), "10".into()),
            ("MachineDetectionSpeechThreshold".into(), "3000".into()),
            ("MachineDetectionSpeechEndThreshold".into(), "99999".into()),
            ("MachineDetectionSilenceTimeout".into(), "4000".into()),
        ]);
        let c = amd_config(&i);
        assert_eq!(
            (
                c.total_analysis_ms,
                c.greeting_ms,
                c.after_greeting_silence_ms,
                c.initial_silence_ms
            ),
            (10_000, 3_000, 5_000, 4_000)
        );
        assert_eq!(c.max_words, AmdConfig::default().max_words);
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
            let entry = CallLogEntry::FlowEvent(event_entry(&e, 5, u64::MAX)).detail();
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

    /// `flow.start` logs what the plugin is told, as it did when it was written from the
    /// context by hand (methods as the plugin world spells them), and the contexts of the
    /// flow's events (and of a replay) are made from it.
    #[test]
    fn the_flow_start_entry_is_what_the_plugin_is_told() {
        let mut call =
            crate::test_support::call(callflow_store::CallStatus::InProgress, "completed");
        call.instructions.url = Some("http://example.com/flow".into());
        call.instructions.method = callflow_store::HttpMethod::Get;
        call.answered_by = Some("human".into());
        let start = flow_started(&call, &Pin::builtin(DEFAULT_FLOW));
        // how the context's methods were written into `flow.start` before it was typed
        assert_eq!(json!(HttpMethod::Post), json!("Post"));
        assert_eq!(json!(HttpMethod::Get), json!("Get"));
        expect_test::expect![[r#"{"answered_by":"human","config":"{}","direction":"outbound-api","document":null,"fallback_method":"Post","fallback_url":null,"from":"+15552","method":"Get","parent_call_sid":null,"plugin":"builtin:twiml","sha256":null,"to":"+15551","url":"http://example.com/flow"}"#]]
            .assert_eq(&CallLogEntry::FlowStart(start.clone()).detail().to_string());
        let ctx = flow_context(&start, "AC1", "CA1", "ringing", 7, 9);
        assert_eq!(
            (
                ctx.method,
                ctx.fallback_method,
                ctx.direction.as_str(),
                ctx.status.as_str()
            ),
            (HttpMethod::Get, HttpMethod::Post, "outbound-api", "ringing")
        );
        assert_eq!((ctx.now_ms, ctx.seed, ctx.config.as_str()), (7, 9, "{}"));
        assert_eq!(ctx.url.as_deref(), Some("http://example.com/flow"));
    }
}
