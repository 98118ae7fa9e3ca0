//! Calls over SIP: inbound INVITEs become call records of the number's account, queued API
//! calls leave through a trunk, and every SIP outcome becomes the call's status. One task per
//! live call applies its SIP events to the store in order; a router task hands the SIP stack's
//! events to them; the dispatcher task takes queued calls out, in order, within each trunk's
//! calls-per-second and channel limits.
//!
//! Each call gets an RTP port from the media layer before its SDP is written; media starts
//! when SDP is agreed, and once the call is answered its [`Flow`] runs on it. Until the engine
//! runs call-flow plugins (issue 6), that is [`silent_flow`]: stay up (sending silence) until
//! either side hangs up, the API ends it, or its `TimeLimit`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callflow_media::g711::Law;
use callflow_media::rtp::StreamParams;
use callflow_media::worker::{CallMedia, Media, MediaError, MediaEvent, Reservation};

use callflow_sip::driver::Sip;
use callflow_sip::sdp::{Codec, LocalMedia, Negotiated};
use callflow_sip::trunk::{TrunkSpec, TrunkTransport, Trunks};
use callflow_sip::ua::{Auth, CallKey, Outgoing, UaEvent};
use callflow_sip::{CallEnd, end_status, rsip};
use callflow_store::{
    Call, CallStatus, Direction, NewCall, Store, TIME_LIMIT_DEFAULT, TIMEOUT_DEFAULT, Transition,
};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::calls::{Control, EngineError};
use crate::clock::now_ms;
use crate::rate::{TokenBucket, smooth_burst};
use crate::{EndRequest, Engine, Redirect};

/// What runs on a call. It gets the call record, its media, the media's events and the API's
/// redirects, and returns when the flow is over; the call is then hung up. When the call ends
/// first, the flow is dropped where it stands. An inbound call's flow may start while the call
/// still rings (when [`MediaSetup::flow_answers`]): it then gets a [`PendingAnswer`] and
/// detached media, and answers or refuses the call once it knows what to do.
pub type Flow = Arc<
    dyn Fn(
            Call,
            CallMedia,
            mpsc::UnboundedReceiver<MediaEvent>,
            mpsc::UnboundedReceiver<Redirect>,
            Option<PendingAnswer>,
        ) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// An inbound call still ringing, which its flow answers or refuses: Twilio fetches the first
/// document before answering, so `<Reject>` refuses a call that is never answered.
#[derive(Debug)]
pub struct PendingAnswer {
    decide: oneshot::Sender<AnswerDecision>,
    answered: oneshot::Receiver<(CallMedia, mpsc::UnboundedReceiver<MediaEvent>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerDecision {
    Answer,
    /// Refuse with this SIP status.
    Refuse(u16),
}

impl PendingAnswer {
    /// Answers the call: its media and events once the caller confirms, or `None` when the
    /// call ended first.
    pub async fn answer(self) -> Option<(CallMedia, mpsc::UnboundedReceiver<MediaEvent>)> {
        self.decide.send(AnswerDecision::Answer).ok()?;
        self.answered.await.ok()
    }

    /// Refuses the call unanswered with SIP status `code` (486 busy, 603 declined).
    pub fn refuse(self, code: u16) {
        let _ = self.decide.send(AnswerDecision::Refuse(code));
    }
}

/// The flow every call runs until the engine runs plugins: keep the media up (it sends
/// silence) until the call ends; should the media close first, the call is hung up.
pub fn silent_flow() -> Flow {
    Arc::new(|_call, media, mut events, _redirects, _pending| {
        Box::pin(async move {
            let _media = media;
            while let Some(e) = events.recv().await {
                if let MediaEvent::Closed { .. } = e {
                    return;
                }
            }
        })
    })
}

/// Queued calls the dispatcher reads at a time.
const QUEUE_PAGE: u32 = 100;

/// How long a call's flow may take, once the call is over, to tell its plugin.
const FLOW_GRACE: Duration = Duration::from_secs(1);

/// One number a `<Dial>` calls.
#[derive(Debug, Clone)]
pub struct DialLeg<'a> {
    pub to: &'a str,
    pub caller_id: Option<String>,
    /// Ring timeout, seconds.
    pub timeout_s: i64,
    /// Longest call, seconds.
    pub time_limit_s: i64,
    pub race: DialRace,
}

/// The legs of one `<Dial>` race to answer: the first one's sid is sent here, and only it is
/// bridged with the parent.
pub type DialRace = Arc<watch::Sender<Option<String>>>;

/// What is particular to one leg: its reserved RTP port, and for a `<Dial>`'s child the bridge
/// it runs instead of the account's flow, on its parent's media worker.
#[derive(Default)]
struct Leg {
    reservation: Option<Reservation>,
    near: Option<CallMedia>,
    flow: Option<Flow>,
    /// An inbound call not answered yet: the SDP to answer it with.
    answer_with: Option<LocalMedia>,
}

/// Calls' media: the workers and ports, the address SDP names, and what answered calls run.
#[derive(Clone)]
pub struct MediaSetup {
    pub media: Arc<Media>,
    /// The address in our SDP (`c=`): where peers send RTP.
    pub advertised_ip: IpAddr,
    pub flow: Flow,
    /// Inbound calls ring while their flow fetches its first instructions, and the flow
    /// answers or refuses them (Twilio's order); otherwise they are answered at once.
    pub flow_answers: bool,
}

/// The SIP side of the engine.
#[derive(Clone)]
pub struct Telephony {
    inner: Arc<Inner>,
}

struct Inner {
    sip: Sip,
    engine: Engine,
    trunks: Trunks,
    media: MediaSetup,
    /// Event channels of live calls by SIP handle; events for a handle not registered yet
    /// (an outbound call whose INVITE just left) wait in `early`.
    routes: Mutex<Routes>,
    /// Live calls per trunk name, for `max_channels`.
    channels: Mutex<HashMap<String, u32>>,
    /// Signalled when a call ends (a channel frees up).
    freed: Notify,
    limits: DispatchLimits,
    /// Outbound calls the dispatcher sent that have not ended, per account.
    dispatched: Mutex<HashMap<String, usize>>,
}

/// Limits on the dispatcher beyond each trunk's own; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DispatchLimits {
    /// Outbound calls live at once, all accounts together.
    pub max_calls: usize,
    /// Calls each account may start per second.
    pub account_calls_per_second: f64,
    /// Outbound calls each account may have live at once.
    pub account_max_calls: usize,
    /// Where `<Dial><Sip>` may call: public addresses only unless private ones are allowed.
    pub sip_uris: crate::webhook::EgressPolicy,
}

#[derive(Default)]
struct Routes {
    live: HashMap<CallKey, mpsc::UnboundedSender<UaEvent>>,
    early: HashMap<CallKey, Vec<UaEvent>>,
}

impl std::fmt::Debug for Telephony {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telephony")
            .field("sip", &self.inner.sip)
            .finish()
    }
}

fn key_of(e: &UaEvent) -> CallKey {
    match e {
        UaEvent::Incoming(i) => i.call,
        UaEvent::Progress { call, .. }
        | UaEvent::Media { call, .. }
        | UaEvent::Answered { call }
        | UaEvent::Ended { call, .. } => *call,
    }
}

impl Telephony {
    /// The engine this telephony reports calls to.
    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Starts routing the SIP stack's events and, when a trunk is configured, the outbound
    /// dispatcher. Calls a previous run left ringing or in progress are ended first (their SIP
    /// dialogs died with that process). The tasks stop when `stop` turns true.
    pub async fn start(
        sip: Sip,
        events: mpsc::UnboundedReceiver<UaEvent>,
        engine: Engine,
        trunks: Trunks,
        media: MediaSetup,
        limits: DispatchLimits,
        stop: watch::Receiver<bool>,
    ) -> Result<(Telephony, Vec<JoinHandle<()>>), EngineError> {
        let tel = Telephony {
            inner: Arc::new(Inner {
                sip,
                engine,
                trunks,
                media,
                routes: Mutex::new(Routes::default()),
                channels: Mutex::new(HashMap::new()),
                freed: Notify::new(),
                limits,
                dispatched: Mutex::new(HashMap::new()),
            }),
        };
        tel.end_orphans().await?;
        let mut tasks = vec![
            tokio::spawn(tel.clone().route(events)),
            tokio::spawn(tel.clone().gauges()),
        ];
        if tel.inner.trunks.default_trunk().is_some() {
            tasks.push(tokio::spawn(tel.clone().dispatch(stop)));
        } else {
            tracing::warn!("no SIP trunk is configured: outbound calls stay queued");
        }
        Ok((tel, tasks))
    }

    pub fn sip(&self) -> &Sip {
        &self.inner.sip
    }

    fn store(&self) -> &Store {
        &self.inner.engine.store
    }

    async fn end_orphans(&self) -> Result<(), EngineError> {
        let now = now_ms();
        for call in self.store().live_calls().await? {
            let to = if call.status() == CallStatus::InProgress {
                CallStatus::Completed
            } else {
                CallStatus::Failed
            };
            let detail = r#"{"reason":"callflow restarted during the call"}"#.to_owned();
            let t = Transition {
                to,
                at: now,
                sip_response_code: None,
                answered_by: None,
                detail,
            };
            if let Err(e) = self.inner.engine.transition(&call, t).await {
                tracing::warn!(call = %call.sid, error = %e, "could not end a call left live");
            }
        }
        Ok(())
    }

    /// Publishes the SIP stack's live counts every second (`/metrics`): what the benchmark
    /// checks returns to zero after a run.
    async fn gauges(self) {
        loop {
            if let Ok(s) = self.inner.sip.stats().await {
                metrics::gauge!("callflow_sip_dialogs").set(s.calls as f64);
                metrics::gauge!("callflow_sip_transactions").set(s.transactions as f64);
                metrics::counter!("callflow_sip_retransmissions_total").absolute(s.retransmissions);
            }
            metrics::gauge!("callflow_live_calls").set(self.inner.engine.live_calls() as f64);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Hands each SIP event to its call's task; a new inbound call gets a task.
    async fn route(self, mut events: mpsc::UnboundedReceiver<UaEvent>) {
        while let Some(ev) = events.recv().await {
            let key = key_of(&ev);
            if let UaEvent::Incoming(inc) = ev {
                let (tx, rx) = mpsc::unbounded_channel();
                self.lock_routes().live.insert(key, tx);
                tokio::spawn(self.clone().inbound(inc, rx));
                continue;
            }
            let mut routes = self.lock_routes();
            match routes.live.get(&key) {
                Some(tx) => {
                    let _ = tx.send(ev);
                }
                None => routes.early.entry(key).or_default().push(ev),
            }
        }
    }

    fn lock_routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.inner.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an outbound call's handle, delivering anything that arrived before.
    fn register(&self, key: CallKey) -> mpsc::UnboundedReceiver<UaEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut routes = self.lock_routes();
        for ev in routes.early.remove(&key).unwrap_or_default() {
            let _ = tx.send(ev);
        }
        routes.live.insert(key, tx);
        rx
    }

    /// Forgets a refused inbound call's route once the SIP stack has reported it ended (its
    /// `Ended` follows the reject), so no event is left behind in `early`.
    async fn close_route(&self, key: CallKey, events: &mut mpsc::UnboundedReceiver<UaEvent>) {
        let ended = async {
            while let Some(ev) = events.recv().await {
                if matches!(ev, UaEvent::Ended { .. }) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
        self.unregister(key);
    }

    fn unregister(&self, key: CallKey) {
        let mut routes = self.lock_routes();
        routes.live.remove(&key);
        routes.early.remove(&key);
    }

    /// Places a `<Dial>`'s child call to `to` through the default trunk and, once answered,
    /// bridges it with the parent's media. The child is an `outbound-dial` call of the
    /// parent's account with its own statuses; the handle finishes when it has ended.
    pub async fn dial(
        &self,
        parent: &Call,
        parent_media: CallMedia,
        leg: DialLeg<'_>,
    ) -> Result<(Call, JoinHandle<()>), String> {
        let DialLeg {
            to,
            caller_id,
            timeout_s,
            time_limit_s,
            race,
        } = leg;
        let trunk = if to.get(..4).is_some_and(|s| s.eq_ignore_ascii_case("sip:")) {
            // a <Sip> target: straight to the URI's host, as the egress policy allows
            self.sip_uri_route(to).await?
        } else {
            self.inner
                .trunks
                .default_trunk()
                .cloned()
                .ok_or("no SIP trunk is configured")?
        };
        let new = NewCall {
            direction: Direction::OutboundDial,
            parent_call_sid: Some(parent.sid.clone()),
            to: to.to_owned(),
            from: caller_id.unwrap_or_else(|| parent.from_number.clone()),
            phone_number_sid: None,
            status: CallStatus::Queued,
            url: None,
            method: "POST".into(),
            twiml: None,
            fallback_url: None,
            fallback_method: "POST".into(),
            status_callback: None,
            status_callback_method: "POST".into(),
            status_callback_event: "completed".into(),
            timeout: timeout_s,
            time_limit: time_limit_s,
            send_digits: None,
            record: false,
            machine_detection: None,
            request_params: "[]".into(),
            plugins: "{}".into(),
        };
        let child = self
            .store()
            .create_call(&parent.account_sid, &new, now_ms())
            .await
            .map_err(|e| e.to_string())?;
        if !self.take_channel(&trunk) {
            let detail = serde_json::json!({ "error": "trunk channels full" });
            self.set_status(&child, CallStatus::Failed, None, detail)
                .await;
            return Ok((child, tokio::spawn(async {})));
        }
        let control = self.register_live(&child.sid);
        let bridge_to = parent_media.clone();
        let bridge: Flow = Arc::new(move |call, media, mut events, _redirects, _pending| {
            let parent = bridge_to.clone();
            let race = race.clone();
            Box::pin(async move {
                // The first leg to answer is bridged; one answering after it is hung up.
                let won = race.send_if_modified(|w| {
                    let first = w.is_none();
                    if first {
                        *w = Some(call.sid.clone());
                    }
                    first
                });
                if !won {
                    return;
                }
                media.bridge(&parent);
                while let Some(e) = events.recv().await {
                    if let MediaEvent::Closed { .. } = e {
                        return;
                    }
                }
            })
        });
        let leg = Leg {
            near: Some(parent_media),
            flow: Some(bridge),
            ..Leg::default()
        };
        let task = tokio::spawn(self.clone().outbound(child.clone(), trunk, control, leg));
        Ok((child, task))
    }

    /// The route of a `<Dial><Sip>` call: a trunk of its own to the URI's host (no credentials,
    /// no channel limit), once the host resolves to addresses the egress policy allows.
    async fn sip_uri_route(&self, uri: &str) -> Result<TrunkSpec, String> {
        let target = SipTarget::parse(uri)?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{} has no address", target.host));
        }
        if let Some(refused) = addrs
            .iter()
            .find(|a| !self.inner.limits.sip_uris.allows(a.ip()))
        {
            return Err(format!(
                "the egress policy refuses {} ({}): private addresses are not allowed for <Sip>",
                target.host,
                refused.ip()
            ));
        }
        // the INVITE goes to the address checked here, not to a second lookup of the name
        let checked = addrs[0];
        let ours = match self.inner.media.advertised_ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        Ok(TrunkSpec {
            name: SIP_URI_ROUTE.into(),
            host: checked.ip().to_string(),
            port: checked.port(),
            transport: target.transport,
            from_domain: Some(ours),
            max_channels: 0,
            ..TrunkSpec::default()
        })
    }

    /// Ends a call this node is driving (a `<Dial>`'s child when its parent moves on).
    pub fn end_leg(&self, sid: &str) {
        if let Some(leg) = self.inner.engine.live_leg(sid) {
            let (tx, _) = oneshot::channel();
            let _ = leg.send(Control::End(EndRequest::Completed, tx));
        }
    }

    /// A bound RTP port for a call about to describe its media, and that description.
    fn reserve_media(&self) -> Result<(Reservation, LocalMedia), MediaError> {
        let r = self.inner.media.media.reserve()?;
        let local = LocalMedia {
            ip: self.inner.media.advertised_ip,
            port: r.port(),
            session_id: now_ms().unsigned_abs(),
            session_version: 1,
        };
        Ok((r, local))
    }

    fn take_channel(&self, trunk: &TrunkSpec) -> bool {
        let mut ch = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = ch.entry(trunk.name.clone()).or_insert(0);
        if trunk.max_channels != 0 && *n >= trunk.max_channels {
            return false;
        }
        *n += 1;
        true
    }

    fn release_channel(&self, trunk: &str) {
        let mut ch = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = ch.get_mut(trunk) {
            *n = n.saturating_sub(1);
        }
        drop(ch);
        self.inner.freed.notify_waiters();
    }

    fn register_live(&self, sid: &str) -> mpsc::UnboundedReceiver<Control> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .engine
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sid.to_owned(), tx);
        rx
    }

    fn is_live(&self, sid: &str) -> bool {
        self.inner
            .engine
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(sid)
    }

    fn unregister_live(&self, sid: &str) {
        self.inner
            .engine
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sid);
    }

    /// Moves a call on, logging (not failing) when the store refuses: the SIP outcome is what
    /// it is whatever the API did meanwhile.
    async fn set_status(
        &self,
        call: &Call,
        to: CallStatus,
        code: Option<u16>,
        detail: serde_json::Value,
    ) -> Option<Call> {
        let t = Transition {
            to,
            at: now_ms(),
            sip_response_code: code.map(i64::from),
            answered_by: None,
            detail: detail.to_string(),
        };
        // A busy or failing store is retried (the SIP outcome must not be lost); a conflict
        // (the API ended the call meanwhile) is final.
        for attempt in 0..5u32 {
            match self.inner.engine.transition(call, t.clone()).await {
                Ok(c) => return Some(c),
                Err(e @ (EngineError::NotLive(_) | EngineError::NotFound)) => {
                    tracing::debug!(call = %call.sid, %to, error = %e, "status not applied");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(call = %call.sid, %to, error = %e, attempt, "status not stored; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        tracing::error!(call = %call.sid, %to, "status lost after retries");
        None
    }

    /// An inbound INVITE: find the number's account, record the call, run the trivial flow.
    async fn inbound(
        self,
        inc: callflow_sip::ua::Incoming,
        mut events: mpsc::UnboundedReceiver<UaEvent>,
    ) {
        let sip = self.inner.sip.clone();
        let key = inc.call;
        let reject = |code: u16, why: &'static str| {
            let sip = sip.clone();
            async move {
                tracing::info!(%key, code, why, "inbound call refused");
                let _ = sip.reject(key, code).await;
            }
        };
        let Some(trunk) = self.inner.trunks.by_source(inc.source.ip()).cloned() else {
            reject(403, "unknown source").await;
            return self.close_route(key, &mut events).await;
        };
        let to = inc.to_user.as_deref().map(|u| trunk.inbound.apply(u));
        let from = inc.from_user.as_deref().map(|u| trunk.inbound.apply(u));
        let number = match &to {
            Some(to) => self.store().number_owner(to).await,
            None => Ok(None),
        };
        let number = match number {
            Ok(Some(n)) => n,
            Ok(None) => {
                reject(404, "unknown number").await;
                return self.close_route(key, &mut events).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "number lookup failed");
                reject(500, "store error").await;
                return self.close_route(key, &mut events).await;
            }
        };
        if inc.offer.is_err() {
            reject(488, "no usable SDP offer").await;
            return self.close_route(key, &mut events).await;
        }
        let (reservation, local) = match self.reserve_media() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "no media for an inbound call");
                reject(503, "no media port").await;
                return self.close_route(key, &mut events).await;
            }
        };
        if !self.take_channel(&trunk) {
            reject(503, "trunk channels full").await;
            return self.close_route(key, &mut events).await;
        }
        let created = async {
            let plugins = crate::flow::pin_for_call(
                self.store(),
                &number.account_sid,
                Some(&number.sid),
                None,
            )
            .await?;
            let new = NewCall {
                direction: Direction::Inbound,
                parent_call_sid: None,
                to: number.phone_number.clone(),
                from: from.unwrap_or_else(|| "anonymous".into()),
                phone_number_sid: Some(number.sid.clone()),
                status: CallStatus::Ringing,
                url: number.voice_url.clone(),
                method: number.voice_method.clone(),
                twiml: None,
                fallback_url: number.voice_fallback_url.clone(),
                fallback_method: number.voice_fallback_method.clone(),
                status_callback: number.status_callback.clone(),
                status_callback_method: number.status_callback_method.clone(),
                status_callback_event: "completed".into(),
                timeout: TIMEOUT_DEFAULT,
                time_limit: TIME_LIMIT_DEFAULT,
                send_digits: None,
                record: false,
                machine_detection: None,
                request_params: "[]".into(),
                plugins,
            };
            // created ringing: its first event goes to call-events plugins with it
            self.store()
                .create_call_with(&number.account_sid, &new, now_ms(), |c| {
                    crate::events::call_event(c, c.date_created)
                        .into_iter()
                        .collect()
                })
                .await
        }
        .await;
        let call = match created {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "could not record an inbound call");
                self.release_channel(&trunk.name);
                reject(500, "store error").await;
                return self.close_route(key, &mut events).await;
            }
        };
        tracing::info!(call = %call.sid, account = %call.account_sid, %key, "inbound call");
        if crate::events::has_plugin(&call) {
            self.inner.engine.wake_outbox();
        }
        let control = self.register_live(&call.sid);
        self.follow(
            call,
            key,
            &trunk.name,
            &mut events,
            control,
            Leg {
                reservation: Some(reservation),
                answer_with: Some(local),
                ..Leg::default()
            },
        )
        .await;
    }

    /// Applies a live call's SIP events to its record until it ends, and the API's requests
    /// to end it to its SIP leg.
    async fn follow(
        &self,
        mut call: Call,
        key: CallKey,
        trunk: &str,
        events: &mut mpsc::UnboundedReceiver<UaEvent>,
        mut control: mpsc::UnboundedReceiver<Control>,
        leg: Leg,
    ) {
        let mut reply: Option<oneshot::Sender<Result<Call, EngineError>>> = None;
        let mut reservation = leg.reservation;
        // The call's media once SDP is agreed, and its events until the flow takes them.
        let mut media: Option<(CallMedia, Option<mpsc::UnboundedReceiver<MediaEvent>>)> = None;
        let mut flow: Option<JoinHandle<()>> = None;
        let (redirect, redirects) = mpsc::unbounded_channel();
        let mut redirects = Some(redirects);
        let (flow_done, mut flow_ended) = mpsc::channel::<()>(1);
        // Whether the SIP leg was answered, whatever the store managed to record.
        let mut answered = false;
        // An inbound call: answered now, or by its flow, which starts while the call rings.
        let mut decision = None;
        let mut hand_over = None;
        // A call its flow refused ends as Twilio's <Reject> says: busy, or no-answer.
        let mut refused: Option<CallStatus> = None;
        if let Some(local) = leg.answer_with {
            if self.inner.media.flow_answers
                && let Some(redirects) = redirects.take()
            {
                let (decide, decided) = oneshot::channel();
                let (media_tx, media_rx) = oneshot::channel();
                decision = Some(decided);
                hand_over = Some(media_tx);
                let pending = PendingAnswer {
                    decide,
                    answered: media_rx,
                };
                let _ = self.inner.sip.ring(key).await;
                let (_, no_events) = mpsc::unbounded_channel();
                let run = (self.inner.media.flow)(
                    call.clone(),
                    CallMedia::detached(),
                    no_events,
                    redirects,
                    Some(pending),
                );
                let done = flow_done.clone();
                flow = Some(tokio::spawn(async move {
                    run.await;
                    let _ = done.send(()).await;
                }));
            } else if let Err(e) = self.inner.sip.answer(key, local).await {
                tracing::warn!(call = %call.sid, error = %e, "could not answer");
            }
        }
        let limit = Duration::from_secs(call.time_limit.max(1) as u64);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    match ev {
                        UaEvent::Progress { status, .. } => {
                            if call.status() == CallStatus::Queued {
                                match self
                                    .set_status(&call, CallStatus::Ringing, None,
                                        serde_json::json!({"sip": status}))
                                    .await
                                {
                                    Some(c) => call = c,
                                    None => self.hang_up_if_ended(&call, key).await,
                                }
                            }
                        }
                        UaEvent::Answered { .. } => {
                            answered = true;
                            deadline = Some(tokio::time::Instant::now() + limit);
                            match self
                                .set_status(&call, CallStatus::InProgress, Some(200),
                                    serde_json::json!({"sip": 200}))
                                .await
                            {
                                Some(c) => call = c,
                                None => self.hang_up_if_ended(&call, key).await,
                            }
                            if let Some((m, rx @ Some(_))) = media.as_mut()
                                && let Some(rx) = rx.take()
                                && call.status() == CallStatus::InProgress
                            {
                                if let Some(to_flow) = hand_over.take() {
                                    // the flow that answered goes on with the call's media
                                    let _ = to_flow.send((m.clone(), rx));
                                    continue;
                                }
                                let Some(redirects) = redirects.take() else { continue };
                                let run =
                                    (leg.flow.as_ref().unwrap_or(&self.inner.media.flow))(call.clone(), m.clone(), rx, redirects, None);
                                let done = flow_done.clone();
                                flow = Some(tokio::spawn(async move {
                                    run.await;
                                    let _ = done.send(()).await;
                                }));
                            }
                        }
                        UaEvent::Media { media: agreed, .. } => {
                            let params = stream_params(&agreed);
                            match (&media, reservation.take()) {
                                (Some((m, _)), _) => m.update(params),
                                (None, Some(r)) => {
                                    let (m, rx) =
                                        self.inner.media.media.open_near(r, params, leg.near.as_ref());
                                    media = Some((m, Some(rx)));
                                }
                                (None, None) => {}
                            }
                        }
                        UaEvent::Incoming(_) => {}
                        UaEvent::Ended { end, code, by_peer, .. } => {
                            let mut status = refused.unwrap_or_else(|| status_of(end));
                            if status == CallStatus::Completed && !answered {
                                // Answered but never confirmed (no ACK): it never got going.
                                status = CallStatus::Failed;
                            }
                            let code = code.or(match end {
                                CallEnd::Answered => Some(200),
                                CallEnd::Canceled | CallEnd::RingTimeout => Some(487),
                                CallEnd::TransportFailure => Some(408),
                                CallEnd::Rejected(c) => Some(c),
                            });
                            let detail = serde_json::json!({
                                "sip": code, "end": format!("{end:?}"), "by_peer": by_peer,
                            });
                            let ended = self.set_status(&call, status, code, detail).await;
                            let stored = match ended {
                                Some(c) => Ok(c),
                                None => self
                                    .store()
                                    .call(&call.account_sid, &call.sid)
                                    .await
                                    .map_err(EngineError::from)
                                    .and_then(|c| c.ok_or(EngineError::NotFound)),
                            };
                            if let Some(r) = reply.take() {
                                let _ = r.send(stored);
                            }
                            break;
                        }
                    }
                }
                Some(c) = control.recv() => match c {
                    // Before the flow runs, the stored Url/Twiml (already updated) is what it
                    // will start with.
                    Control::Redirect(r) => {
                        let _ = redirect.send(r);
                    }
                    Control::End(req, r) => {
                        let answered = call.status() == CallStatus::InProgress;
                        if answered && req == EndRequest::Canceled {
                            let _ = r.send(Ok(call.clone()));
                            continue;
                        }
                        if reply.is_some() {
                            // Already ending: this caller gets the call as it stands.
                            let _ = r.send(Ok(call.clone()));
                            continue;
                        }
                        reply = Some(r);
                        if let Err(e) = self.inner.sip.hangup(key).await {
                            tracing::debug!(call = %call.sid, error = %e, "hangup refused");
                        }
                    }
                },
                d = async {
                    match decision.as_mut() {
                        Some(rx) => rx.await,
                        None => std::future::pending().await,
                    }
                } => {
                    decision = None;
                    // a flow gone without deciding has ended: its end hangs the call up
                    let (Ok(d), Some(local)) = (d, leg.answer_with) else { continue };
                    let r = match d {
                        AnswerDecision::Answer => self.inner.sip.answer(key, local).await,
                        AnswerDecision::Refuse(code) => {
                            let r = self.inner.sip.reject(key, code).await;
                            if r.is_ok() {
                                refused = Some(refused_status(code));
                            }
                            r
                        }
                    };
                    if let Err(e) = r {
                        tracing::warn!(call = %call.sid, error = %e, ?d, "could not answer or refuse");
                    }
                }
                () = timer => {
                    deadline = None;
                    tracing::info!(call = %call.sid, "time limit reached");
                    let _ = self.inner.sip.hangup(key).await;
                }
                Some(()) = flow_ended.recv() => {
                    // a refusal the flow made as it ended is its last word, not a hang-up
                    if let Some(Ok(AnswerDecision::Refuse(code))) =
                        decision.take().map(|mut d| d.try_recv())
                    {
                        match self.inner.sip.reject(key, code).await {
                            Ok(()) => refused = Some(refused_status(code)),
                            Err(e) => {
                                tracing::warn!(call = %call.sid, error = %e, code, "could not refuse")
                            }
                        }
                        continue;
                    }
                    tracing::debug!(call = %call.sid, "flow over; hanging up");
                    let _ = self.inner.sip.hangup(key).await;
                }
            }
        }
        // The flow hears that the call is over (its redirect channel closes; a flow waiting to
        // answer hears it from its pending answer) and has a moment to tell its plugin; one busy
        // elsewhere (a slow fetch) is dropped.
        drop(redirect);
        drop(hand_over);
        drop(decision);
        if let Some(f) = flow {
            let abort = f.abort_handle();
            if tokio::time::timeout(FLOW_GRACE, f).await.is_err() {
                abort.abort();
            }
        }
        drop(media);
        self.unregister_live(&call.sid);
        self.unregister(key);
        self.release_channel(trunk);
    }

    /// A status the leg reached was refused: if the stored call is already over (the API ended
    /// it while the INVITE was on its way), end the leg too rather than leave it up.
    async fn hang_up_if_ended(&self, call: &Call, key: CallKey) {
        if let Ok(Some(stored)) = self.store().call(&call.account_sid, &call.sid).await
            && stored.status().is_final()
        {
            tracing::info!(call = %call.sid, status = %stored.status(), "call ended meanwhile; hanging up its leg");
            let _ = self.inner.sip.hangup(key).await;
        }
    }

    /// Takes queued API calls out through the default trunk, highest priority first, then
    /// oldest, while every limit allows: the trunk's calls per second and channels, the global
    /// cap on dispatched calls, and each account's calls per second and concurrent calls. A call
    /// whose account is at its limit waits without holding up other accounts' calls.
    async fn dispatch(self, mut stop: watch::Receiver<bool>) {
        let Some(trunk) = self.inner.trunks.default_trunk().cloned() else {
            return;
        };
        let limits = self.inner.limits;
        let mut bucket = TokenBucket::new(trunk.cps, smooth_burst(trunk.cps), now_ms());
        let mut accounts: HashMap<String, TokenBucket> = HashMap::new();
        // Where the next page of the queue starts: calls an account's limit skipped stay behind
        // while the dispatcher reads on, so they never hold up other accounts' calls.
        let mut cursor: Option<(i64, i64)> = None;
        loop {
            // Calls marked sent leave the queue; the few between the read and the mark are
            // skipped as live below.
            let batch = match self.store().queued_calls(QUEUE_PAGE, cursor).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "reading the call queue failed");
                    Vec::new()
                }
            };
            // When to look again if nothing else wakes us: a second, or sooner when an
            // account's bucket refills.
            let mut wake = now_ms() + 1_000;
            let mut blocked = false;
            let full = batch.len() == QUEUE_PAGE as usize;
            let last = batch.last().map(|c| (c.priority, c.seq));
            for call in batch {
                if self.is_live(&call.sid) {
                    continue;
                }
                let now = now_ms();
                if limits.account_calls_per_second > 0.0 {
                    let b = accounts.entry(call.account_sid.clone()).or_insert_with(|| {
                        TokenBucket::new(
                            limits.account_calls_per_second,
                            smooth_burst(limits.account_calls_per_second),
                            now,
                        )
                    });
                    let ready = b.ready_at(now);
                    if ready > now {
                        wake = wake.min(ready);
                        continue;
                    }
                }
                if limits.account_max_calls != 0
                    && self.dispatched(&call.account_sid) >= limits.account_max_calls
                {
                    continue;
                }
                if limits.max_calls != 0 && self.dispatched_total() >= limits.max_calls {
                    blocked = true;
                    break;
                }
                // Smooth rate: wait for the trunk's token, then for a free channel.
                loop {
                    let now = now_ms();
                    if bucket.try_take(now) {
                        break;
                    }
                    let wait = (bucket.ready_at(now) - now).clamp(1, 1_000) as u64;
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        _ = stop.changed() => return,
                    }
                }
                loop {
                    let freed = self.inner.freed.notified();
                    if self.take_channel(&trunk) {
                        break;
                    }
                    tokio::select! {
                        () = freed => {}
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => return,
                    }
                }
                if *stop.borrow() {
                    return;
                }
                if let Some(b) = accounts.get_mut(&call.account_sid) {
                    b.try_take(now_ms());
                }
                // Registered before the task starts, so the next queue read skips it.
                let control = self.register_live(&call.sid);
                let account = call.account_sid.clone();
                self.count_dispatched(&account, true);
                let me = self.clone();
                let trunk = trunk.clone();
                tokio::spawn(async move {
                    me.clone()
                        .outbound(call, trunk, control, Leg::default())
                        .await;
                    me.count_dispatched(&account, false);
                });
            }
            if full && !blocked {
                cursor = last;
                continue;
            }
            cursor = None;
            let freed = self.inner.freed.notified();
            let pause = Duration::from_millis((wake - now_ms()).clamp(1, 1_000) as u64);
            tokio::select! {
                () = self.inner.engine.dispatch.notified() => {}
                () = freed, if blocked => {}
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Outbound calls the dispatcher has sent that have not ended, of `account`.
    fn dispatched(&self, account: &str) -> usize {
        let d = self.lock_dispatched();
        d.get(account).copied().unwrap_or(0)
    }

    fn dispatched_total(&self) -> usize {
        self.lock_dispatched().values().sum()
    }

    fn count_dispatched(&self, account: &str, up: bool) {
        let mut d = self.lock_dispatched();
        let n = d.entry(account.to_owned()).or_insert(0);
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                d.remove(account);
            }
            drop(d);
            self.inner.freed.notify_waiters();
        }
    }

    fn lock_dispatched(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.inner
            .dispatched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// One queued call out through `trunk` (whose channel is already taken).
    async fn outbound(
        self,
        call: Call,
        trunk: TrunkSpec,
        control: mpsc::UnboundedReceiver<Control>,
        leg: Leg,
    ) {
        // The API may have cancelled it between the queue read and now (a read error leaves it
        // queued, for the dispatcher's next pass).
        let fresh = match self.store().call(&call.account_sid, &call.sid).await {
            Ok(Some(c)) if c.status() == CallStatus::Queued => c,
            _ => {
                self.unregister_live(&call.sid);
                return self.release_channel(&trunk.name);
            }
        };
        // Marked sent before the INVITE can leave: after a crash it is ended, not sent again.
        if !matches!(
            self.store().mark_dispatched(&fresh.sid, now_ms()).await,
            Ok(true)
        ) {
            self.unregister_live(&call.sid);
            return self.release_channel(&trunk.name);
        }
        let (reservation, local) = match self.reserve_media() {
            Ok(r) => r,
            Err(e) => {
                let detail = serde_json::json!({ "error": e.to_string() });
                self.set_status(&fresh, CallStatus::Failed, None, detail)
                    .await;
                self.unregister_live(&call.sid);
                return self.release_channel(&trunk.name);
            }
        };
        let placed = match self.outgoing(&fresh, &trunk, local).await {
            Ok(out) => self.inner.sip.invite(out).await.map_err(|e| e.to_string()),
            Err(why) => Err(why),
        };
        let key = match placed {
            Ok(k) => k,
            Err(why) => {
                let detail = serde_json::json!({ "error": why });
                self.set_status(&fresh, CallStatus::Failed, None, detail)
                    .await;
                self.unregister_live(&call.sid);
                return self.release_channel(&trunk.name);
            }
        };
        tracing::info!(call = %fresh.sid, %key, trunk = %trunk.name, "outbound call placed");
        let mut events = self.register(key);
        self.follow(
            fresh,
            key,
            &trunk.name,
            &mut events,
            control,
            Leg {
                reservation: Some(reservation),
                ..leg
            },
        )
        .await;
    }

    async fn outgoing(
        &self,
        call: &Call,
        trunk: &TrunkSpec,
        media: LocalMedia,
    ) -> Result<Outgoing, String> {
        let gateway: SocketAddr = tokio::net::lookup_host((trunk.host.as_str(), trunk.port))
            .await
            .map_err(|e| {
                format!(
                    "cannot resolve trunk {} host {}: {e}",
                    trunk.name, trunk.host
                )
            })?
            .next()
            .ok_or_else(|| format!("trunk {} host {} has no address", trunk.name, trunk.host))?;
        let host = if trunk.port == 5060 {
            trunk.host.clone()
        } else {
            format!("{}:{}", trunk.host, trunk.port)
        };
        let uri = if trunk.name == SIP_URI_ROUTE {
            // a <Sip> target is called at the URI exactly as written (checked when routed)
            call.to_number.clone()
        } else {
            format!(
                "sip:{}@{host}",
                escape_user(&trunk.dial.apply(&call.to_number))
            )
        };
        let caller = trunk.caller_id.apply(&call.from_number);
        let auth = match (&trunk.username, &trunk.password) {
            (Some(u), Some(p)) => Some(Auth {
                username: u.clone(),
                password: p.clone(),
                realm: trunk.realm.clone(),
            }),
            _ => None,
        };
        Ok(Outgoing {
            gateway,
            transport: match trunk.transport {
                TrunkTransport::Udp => rsip::common::Transport::Udp,
                TrunkTransport::Tcp => rsip::common::Transport::Tcp,
            },
            uri,
            from: format!("sip:{}@{}", escape_user(&caller), trunk.from_host()),
            auth,
            media,
            ring_timeout: Duration::from_secs(call.timeout.clamp(1, 600) as u64),
        })
    }
}

/// The route name of `<Dial><Sip>` calls (trunk names cannot contain `:`).
const SIP_URI_ROUTE: &str = "sip:uri";

/// Where a `<Sip>` noun's URI says to call.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SipTarget {
    host: String,
    port: u16,
    transport: TrunkTransport,
}

impl SipTarget {
    /// `sip:[user@]host[:port][;params]`; `transport=udp|tcp` is honoured, `sips:` and other
    /// transports are refused (no TLS here), and so is anything that could break the message.
    fn parse(uri: &str) -> Result<SipTarget, String> {
        let bad = |why: &str| format!("<Sip>{uri}</Sip>: {why}");
        if uri.len() > 512
            || uri
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "<>\"".contains(c))
        {
            return Err(bad("not a usable SIP URI"));
        }
        let rest = match uri.get(..4) {
            Some(s) if s.eq_ignore_ascii_case("sip:") => &uri[4..],
            _ => {
                return Err(bad(
                    "only sip: URIs can be dialled (sips: needs TLS, which callflow does not speak)",
                ));
            }
        };
        if rest.contains('?') {
            return Err(bad("URI headers (`?…`) cannot be sent in a request URI"));
        }
        let (addr, params) = rest.split_once(';').unwrap_or((rest, ""));
        let hostport = addr.rsplit_once('@').map_or(addr, |(_, h)| h);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed IPv6 address"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("bad port"))?,
            None => 5060,
        };
        let mut transport = TrunkTransport::Udp;
        for param in params.split(';') {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            if name.eq_ignore_ascii_case("transport") {
                transport = match value.to_ascii_lowercase().as_str() {
                    "udp" => TrunkTransport::Udp,
                    "tcp" => TrunkTransport::Tcp,
                    other => {
                        return Err(bad(&format!(
                            "transport {other} is not supported (udp or tcp)"
                        )));
                    }
                };
            }
        }
        Ok(SipTarget {
            host: host.to_owned(),
            port,
            transport,
        })
    }
}

/// Keeps a SIP URI user part to the characters RFC 3261 allows unescaped that numbers use.
fn escape_user(user: &str) -> String {
    user.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '*' | '#' | '-' | '.' | '_'))
        .map(|c| {
            if c == '#' {
                "%23".to_owned()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// What SDP agreed, as the media layer takes it.
fn stream_params(n: &Negotiated) -> StreamParams {
    StreamParams {
        law: match n.codec {
            Codec::Pcmu => Law::Mu,
            Codec::Pcma => Law::A,
        },
        payload_type: n.payload_type,
        telephone_event: n.telephone_event,
        ptime_ms: n.ptime,
        remote: Some(n.remote).filter(|r| !r.ip().is_unspecified()),
        send: n.direction.sends() && !n.on_hold(),
    }
}

/// How a call its flow refused with SIP `code` ends (Twilio's `<Reject>`: `busy` for the
/// busy reason, `no-answer` otherwise).
fn refused_status(code: u16) -> CallStatus {
    if code == 486 {
        CallStatus::Busy
    } else {
        CallStatus::NoAnswer
    }
}

fn status_of(end: CallEnd) -> CallStatus {
    match end_status(end) {
        callflow_sip::EndStatus::Completed => CallStatus::Completed,
        callflow_sip::EndStatus::Busy => CallStatus::Busy,
        callflow_sip::EndStatus::NoAnswer => CallStatus::NoAnswer,
        callflow_sip::EndStatus::Failed => CallStatus::Failed,
        callflow_sip::EndStatus::Canceled => CallStatus::Canceled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_targets_parse_and_refuse_what_cannot_be_called() {
        let t = SipTarget::parse("sip:alice@example.org").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.transport),
            ("example.org", 5060, TrunkTransport::Udp)
        );
        let t = SipTarget::parse("SIP:+1555@10.0.0.2:5070;transport=TCP;x=y").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.transport),
            ("10.0.0.2", 5070, TrunkTransport::Tcp)
        );
        let t = SipTarget::parse("sip:[2001:db8::1]:5062").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("2001:db8::1", 5062));
        for bad in [
            "sips:alice@example.org",
            "tel:+15551234",
            "sip:alice@",
            "sip:alice@host:0",
            "sip:alice@host:99999",
            "sip:alice@host;transport=tls",
            "sip:alice@host\r\nVia: x",
            "sip:al ice@host",
            "sip:<alice@host>",
            "sip:bob@pbx.example?X-Header=1",
        ] {
            assert!(SipTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_sip_end_maps_to_a_store_status() {
        assert_eq!(status_of(CallEnd::Answered), CallStatus::Completed);
        assert_eq!(status_of(CallEnd::Rejected(486)), CallStatus::Busy);
        assert_eq!(status_of(CallEnd::RingTimeout), CallStatus::NoAnswer);
        assert_eq!(status_of(CallEnd::Rejected(503)), CallStatus::Failed);
        assert_eq!(status_of(CallEnd::Canceled), CallStatus::Canceled);
        assert_eq!(escape_user("+1 555#"), "+1555%23");
    }
}
