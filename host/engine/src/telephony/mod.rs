//! Calls over SIP. Each live call is a [`crate::leg::CallLeg`] (pure) driven by one task
//! (`driver.rs`) that reads one channel: the SIP stack's events for its dialog, the API's
//! requests and its flow's signals. Around the legs:
//!
//! - the router (here) hands the SIP stack's events to the legs' channels, and admits each new
//!   inbound INVITE (`admission.rs`: trunk by source, account by number, a port, a channel);
//! - the dispatcher (`dispatch.rs`) takes queued API calls out within every rate and channel
//!   limit and places them (`place`);
//! - `<Dial>` places child legs ([`Dialer`]) along a [`route::Route`]: a trunk for numbers,
//!   straight to the host for a `<Sip>` URI.
//!
//! A call's flow is started by its leg (while an inbound call rings, or once a call is
//! answered) and talks to it through a [`LegLink`]: it answers or refuses a ringing call, hears
//! the API's redirects, and learns that the call is over when the link closes.

mod admission;
mod dispatch;
mod driver;
pub(crate) mod route;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use callflow_media::worker::{CallMedia, Media, MediaError, MediaEvent, Reservation};
use callflow_sip::driver::Sip;
use callflow_sip::sdp::LocalMedia;
use callflow_sip::trunk::{TrunkSpec, Trunks};
use callflow_sip::ua::{CallKey, Dialog, UaEvent};
use callflow_store::{
    Call, CallInstructions, CallLogEntry, CallStatus, Direction, NewCall, Pins, StatusCause, Store,
    StoreError, Transition,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::calls::Engine;
use crate::clock::now_ms;
use crate::control::{EndRequest, EngineError, Redirect};
use crate::leg::FlowSignal;
use crate::live::LegInput;
use route::Route;

pub use dispatch::DispatchLimits;

/// What runs on a call: started by its leg with [`FlowStart`]; when it returns the call is
/// hung up (unless it refused the call). When the call ends first, the flow's [`LegLink`]
/// closes and it has a moment to finish before it is dropped.
pub type Flow = Arc<dyn Fn(FlowStart) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What a flow starts with.
pub struct FlowStart {
    /// The call as stored when the flow starts.
    pub call: Call,
    /// The call's media; detached (it plays nothing) while the call still rings.
    pub media: CallMedia,
    /// The media's events; none while the call still rings.
    pub events: mpsc::UnboundedReceiver<MediaEvent>,
    pub leg: LegLink,
    /// Places `<Dial>` legs.
    pub dialer: Dialer,
}

/// What a leg hands its flow.
#[derive(Debug)]
pub(crate) enum ToFlow {
    /// The ringing call the flow answered is answered: its media.
    Answered(CallMedia, mpsc::UnboundedReceiver<MediaEvent>),
    Redirect(Redirect),
}

/// A flow's line to its call's leg: one channel each way. Twilio fetches the first document
/// before answering an inbound call, so a flow may start while its call rings: it then answers
/// ([`LegLink::answer`]) or refuses ([`LegLink::refuse`]) the call.
#[derive(Debug)]
pub struct LegLink {
    to_leg: mpsc::UnboundedSender<LegInput>,
    from_leg: mpsc::UnboundedReceiver<ToFlow>,
    /// Redirects that came while the flow waited for its answer.
    held: VecDeque<Redirect>,
    ringing: bool,
}

impl LegLink {
    /// The call still rings: the flow has not answered or refused it.
    pub fn ringing(&self) -> bool {
        self.ringing
    }

    /// Answers the ringing call: its media and events once the caller confirms; `None` when the
    /// call ended first.
    pub async fn answer(&mut self) -> Option<(CallMedia, mpsc::UnboundedReceiver<MediaEvent>)> {
        self.to_leg.send(LegInput::Flow(FlowSignal::Answer)).ok()?;
        loop {
            match self.from_leg.recv().await? {
                ToFlow::Answered(media, events) => {
                    self.ringing = false;
                    return Some((media, events));
                }
                ToFlow::Redirect(r) => self.held.push_back(r),
            }
        }
    }

    /// Refuses the ringing call unanswered with SIP status `code` (486 busy, 603 declined).
    pub fn refuse(&mut self, code: u16) {
        self.ringing = false;
        let _ = self.to_leg.send(LegInput::Flow(FlowSignal::Refuse(code)));
    }

    /// The API's next redirect; `None` once the call is over. Cancel-safe.
    pub async fn redirect(&mut self) -> Option<Redirect> {
        if let Some(r) = self.held.pop_front() {
            return Some(r);
        }
        loop {
            match self.from_leg.recv().await? {
                ToFlow::Redirect(r) => return Some(r),
                // only a ringing call is answered; nothing else waits for this
                ToFlow::Answered(..) => {}
            }
        }
    }
}

/// The flow every call runs in tests of the media: keep the media up (it sends silence) until
/// the call ends; should the media close first, the call is hung up.
pub fn silent_flow() -> Flow {
    Arc::new(|start: FlowStart| {
        Box::pin(async move {
            let FlowStart {
                media, mut events, ..
            } = start;
            let _media = media;
            while let Some(e) = events.recv().await {
                if let MediaEvent::Closed { .. } = e {
                    return;
                }
            }
        })
    })
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
    /// Leg channels by SIP dialog; events for a dialog not registered yet (an outbound call
    /// whose INVITE just left) wait in `early`.
    routes: Mutex<Routes>,
    /// Live legs per trunk name, for `max_channels`.
    channels: Mutex<HashMap<String, u32>>,
    /// Signalled when a leg ends (a channel frees up).
    freed: Notify,
    limits: DispatchLimits,
    /// Outbound calls the dispatcher sent that have not ended, per account.
    dispatched: Mutex<HashMap<String, usize>>,
}

#[derive(Default)]
struct Routes {
    live: HashMap<CallKey, mpsc::UnboundedSender<LegInput>>,
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
        | UaEvent::Dialog { call, .. }
        | UaEvent::Ended { call, .. } => *call,
    }
}

/// How long a call's flow may take, once the call is over, to tell its plugin.
const FLOW_GRACE: Duration = Duration::from_secs(1);

/// What is particular to a leg besides its call: its dialog, its route's trunk (for the
/// channel it holds), its reserved port, and for a `<Dial>`'s child the parent's media (its
/// worker) and the bridge it runs instead of the account's flow.
pub(crate) struct LegSetup {
    pub(crate) key: CallKey,
    pub(crate) trunk: Option<String>,
    pub(crate) reservation: Reservation,
    pub(crate) near: Option<CallMedia>,
    pub(crate) flow: Option<Flow>,
    pub(crate) inbox: mpsc::UnboundedReceiver<LegInput>,
    pub(crate) to_leg: mpsc::UnboundedSender<LegInput>,
}

impl Telephony {
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
        // what this node's previous run left
        let node = tel.inner.engine.node.clone();
        tel.end_calls_of(&node, StatusCause::Restarted).await?;
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

    /// Places `<Dial>` legs for flows.
    pub fn dialer(&self) -> Dialer {
        Dialer { tel: self.clone() }
    }

    /// Ends the calls `node` left ringing or in progress (this node's previous run, at start;
    /// a node declared dead, on the leader): at the far end first (a BYE for an answered call,
    /// a CANCEL for an outbound call still ringing, from the dialog the call logged), then in
    /// the store (answered ones `completed`, the rest `failed`), for `cause`.
    pub(crate) async fn end_calls_of(
        &self,
        node: &str,
        cause: StatusCause,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        for call in self.store().live_calls_of(node).await? {
            self.end_left_dialog(&call.sid).await;
            let to = if call.status() == CallStatus::InProgress {
                CallStatus::Completed
            } else {
                CallStatus::Failed
            };
            let t = Transition {
                to,
                at: now,
                sip_response_code: None,
                answered_by: None,
                cause: cause.clone(),
            };
            if let Err(e) = self.inner.engine.transition(&call, t).await {
                tracing::warn!(call = %call.sid, error = %e, "could not end a call left live");
            }
        }
        Ok(())
    }

    /// Sends the BYE or CANCEL that ends a left call at the far end, from the latest dialog its
    /// log holds (none for a call that never reached the wire); its SIP events are absorbed.
    async fn end_left_dialog(&self, sid: &str) {
        let events = match self.store().call_events(sid).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(call = %sid, error = %e, "could not read a left call's log");
                return;
            }
        };
        let Some(dialog) = events.iter().rev().find_map(|e| match e.entry() {
            Ok(CallLogEntry::SipDialog(d)) => Some(d),
            _ => None,
        }) else {
            return;
        };
        let dialog: Dialog = match serde_json::from_value(dialog) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(call = %sid, error = %e, "a left call's dialog does not read");
                return;
            }
        };
        let what = if dialog.invite.is_some() {
            "CANCEL"
        } else {
            "BYE"
        };
        match self.inner.sip.end_left(dialog).await {
            Ok(key) => {
                // nobody drives this call: its events (the end) are dropped when they come
                let (to_leg, mut inbox) = mpsc::unbounded_channel();
                self.register_route(key, &to_leg);
                let tel = self.clone();
                tokio::spawn(async move {
                    while let Some(input) = inbox.recv().await {
                        if let LegInput::Sip(UaEvent::Ended { .. }) = input {
                            break;
                        }
                    }
                    tel.unregister_route(key);
                });
                tracing::info!(call = %sid, "a call its node left is ended at the far end ({what})");
            }
            Err(e) => {
                tracing::warn!(call = %sid, error = %e, "could not end a left call at the far end")
            }
        }
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

    /// Hands each SIP event to its leg; a new inbound call is admitted (or refused) by a task
    /// of its own.
    async fn route(self, mut events: mpsc::UnboundedReceiver<UaEvent>) {
        while let Some(ev) = events.recv().await {
            let key = key_of(&ev);
            if let UaEvent::Incoming(inc) = ev {
                let (to_leg, inbox) = mpsc::unbounded_channel();
                self.lock_routes().live.insert(key, to_leg.clone());
                tokio::spawn(self.clone().admit(inc, to_leg, inbox));
                continue;
            }
            let mut routes = self.lock_routes();
            match routes.live.get(&key) {
                Some(tx) => {
                    let _ = tx.send(LegInput::Sip(ev));
                }
                None => routes.early.entry(key).or_default().push(ev),
            }
        }
    }

    fn lock_routes(&self) -> MutexGuard<'_, Routes> {
        self.inner.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an outbound leg's dialog, delivering anything that arrived before.
    fn register_route(&self, key: CallKey, to_leg: &mpsc::UnboundedSender<LegInput>) {
        let mut routes = self.lock_routes();
        for ev in routes.early.remove(&key).unwrap_or_default() {
            let _ = to_leg.send(LegInput::Sip(ev));
        }
        routes.live.insert(key, to_leg.clone());
    }

    fn unregister_route(&self, key: CallKey) {
        let mut routes = self.lock_routes();
        routes.live.remove(&key);
        routes.early.remove(&key);
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
        let mut ch = self.lock_channels();
        let n = ch.entry(trunk.name.clone()).or_insert(0);
        // this node's share of the trunk's channels
        let cap = self.inner.engine.share().cap(trunk.max_channels as usize);
        if trunk.max_channels != 0 && *n as usize >= cap {
            return false;
        }
        *n += 1;
        true
    }

    fn release_channel(&self, trunk: Option<&str>) {
        if let Some(trunk) = trunk
            && let Some(n) = self.lock_channels().get_mut(trunk)
        {
            *n = n.saturating_sub(1);
        }
        self.inner.freed.notify_waiters();
    }

    fn lock_channels(&self) -> MutexGuard<'_, HashMap<String, u32>> {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A channel to a new leg of `sid`, registered so the API can reach it.
    fn register_live(
        &self,
        sid: &str,
    ) -> (
        mpsc::UnboundedSender<LegInput>,
        mpsc::UnboundedReceiver<LegInput>,
    ) {
        let (to_leg, inbox) = mpsc::unbounded_channel();
        self.inner.engine.live.register(sid, to_leg.clone());
        (to_leg, inbox)
    }

    /// Moves a call on, logging (not failing) when the store refuses; a busy or failing store
    /// is retried (the SIP outcome must not be lost); a conflict (the API ended the call
    /// meanwhile) is final. `None` when it was not applied.
    async fn set_status(
        &self,
        call: &Call,
        to: CallStatus,
        code: Option<u16>,
        cause: StatusCause,
    ) -> Option<Call> {
        let t = Transition {
            to,
            at: now_ms(),
            sip_response_code: code.map(i64::from),
            answered_by: None,
            cause,
        };
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

    /// Places a queued call along `route` (whose channel, if a trunk's, is already taken) and
    /// drives its leg until it ends. `near` and `flow` are a `<Dial>` child's.
    async fn place(
        self,
        call: Call,
        route: Route,
        (to_leg, inbox): (
            mpsc::UnboundedSender<LegInput>,
            mpsc::UnboundedReceiver<LegInput>,
        ),
        near: Option<CallMedia>,
        flow: Option<Flow>,
    ) {
        let trunk = route.trunk().map(|t| t.name.clone());
        let give_up = |me: &Telephony| {
            me.inner.engine.live.unregister(&call.sid);
            me.release_channel(trunk.as_deref());
        };
        // The API may have cancelled it between the queue read and now (a read error leaves it
        // queued, for the dispatcher's next pass).
        let fresh = match self.store().call(&call.account_sid, &call.sid).await {
            Ok(Some(c)) if c.status() == CallStatus::Queued => c,
            _ => return give_up(&self),
        };
        // Marked sent before the INVITE can leave: after a crash it is ended, not sent again.
        if !matches!(
            self.store()
                .mark_dispatched(&fresh.sid, now_ms(), &self.inner.engine.node)
                .await,
            Ok(true)
        ) {
            return give_up(&self);
        }
        let (reservation, local) = match self.reserve_media() {
            Ok(r) => r,
            Err(e) => {
                let cause = StatusCause::Error {
                    error: e.to_string(),
                };
                self.set_status(&fresh, CallStatus::Failed, None, cause)
                    .await;
                return give_up(&self);
            }
        };
        let placed = match route.outgoing(&fresh, local).await {
            Ok(out) => self.inner.sip.invite(out).await.map_err(|e| e.to_string()),
            Err(why) => Err(why),
        };
        let key = match placed {
            Ok(k) => k,
            Err(why) => {
                let cause = StatusCause::Error { error: why };
                self.set_status(&fresh, CallStatus::Failed, None, cause)
                    .await;
                return give_up(&self);
            }
        };
        tracing::info!(call = %fresh.sid, %key, route = %route.name(), "outbound call placed");
        self.register_route(key, &to_leg);
        let setup = LegSetup {
            key,
            trunk,
            reservation,
            near,
            flow,
            inbox,
            to_leg,
        };
        self.drive(
            crate::leg::CallLeg::new(fresh, crate::leg::Origin::Outbound),
            setup,
        )
        .await;
    }
}

/// One number or SIP URI a `<Dial>` calls.
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

/// How flows place `<Dial>` legs and end them.
#[derive(Clone, Debug)]
pub struct Dialer {
    tel: Telephony,
}

impl Dialer {
    /// Places a `<Dial>`'s child call to `leg.to` (a number through the default trunk, a
    /// `<Sip>` URI straight to its host as the egress policy allows) and, once answered and
    /// first, bridges it with the parent's media. The child is an `outbound-dial` call of the
    /// parent's account with its own statuses; the handle finishes when it has ended.
    pub async fn dial(
        &self,
        parent: &Call,
        parent_media: CallMedia,
        leg: DialLeg<'_>,
    ) -> Result<(Call, JoinHandle<()>), String> {
        let tel = &self.tel;
        let DialLeg {
            to,
            caller_id,
            timeout_s,
            time_limit_s,
            race,
        } = leg;
        let route = if route::is_sip_uri(to) {
            Route::sip_uri(to, tel.inner.limits.sip_uris, tel.inner.media.advertised_ip).await?
        } else {
            Route::Trunk(
                tel.inner
                    .trunks
                    .default_trunk()
                    .cloned()
                    .ok_or("no SIP trunk is configured")?,
            )
        };
        let new = NewCall {
            direction: Direction::OutboundDial,
            parent_call_sid: Some(parent.sid.clone()),
            to: to.to_owned(),
            from: caller_id.unwrap_or_else(|| parent.from_number.clone()),
            phone_number_sid: None,
            status: CallStatus::Queued,
            // Twilio's defaults: a child runs no document and sends no callbacks of its own
            instructions: CallInstructions {
                timeout: timeout_s,
                time_limit: time_limit_s,
                ..CallInstructions::default()
            },
            plugins: Pins::default(),
            // queued: the node that sends it takes it (`mark_dispatched`)
            node: None,
        };
        let child = tel
            .store()
            .create_call(&parent.account_sid, &new, now_ms())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(trunk) = route.trunk()
            && !tel.take_channel(trunk)
        {
            let cause = StatusCause::Error {
                error: "trunk channels full".into(),
            };
            tel.set_status(&child, CallStatus::Failed, None, cause)
                .await;
            return Ok((child, tokio::spawn(async {})));
        }
        let channel = tel.register_live(&child.sid);
        let bridge_to = parent_media.clone();
        let bridge: Flow = Arc::new(move |start: FlowStart| {
            let parent = bridge_to.clone();
            let race = race.clone();
            Box::pin(async move {
                let FlowStart {
                    call,
                    media,
                    mut events,
                    ..
                } = start;
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
        let task = tokio::spawn(tel.clone().place(
            child.clone(),
            route,
            channel,
            Some(parent_media),
            Some(bridge),
        ));
        Ok((child, task))
    }

    /// Ends a leg this node is driving (a `<Dial>`'s child when its parent moves on).
    pub fn end_leg(&self, sid: &str) {
        let (tx, _) = tokio::sync::oneshot::channel();
        self.tel
            .inner
            .engine
            .live
            .send(sid, LegInput::End(EndRequest::Completed, tx));
    }
}
