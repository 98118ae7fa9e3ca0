//! The user agent core: calls and their dialogs (RFC 3261 §12–15) on top of
//! [`Transactions`], sans-IO in the same style. The driver feeds datagrams and time in with
//! [`UserAgent::handle_datagram`] and [`UserAgent::handle_timeout`] and drains
//! [`UserAgent::poll_transmit`], [`UserAgent::poll_event`] and [`UserAgent::poll_timeout`]; the
//! engine places, answers, rejects and hangs up calls with the commands below and learns what
//! happened from [`UaEvent`]s, one [`UaEvent::Ended`] per call.
//!
//! What lives here rather than in the transaction layer (RFC 3261 §13.3.1.4, §13.2.2.4): the
//! 2xx to an INVITE is re-sent by the UAS core until the ACK arrives (T1 doubling to T2, given
//! up after 64·T1 with a BYE), and the ACK for a 2xx is built and re-sent by the UAC core for
//! every retransmitted 2xx. Media is negotiated here too ([`crate::sdp`]): the engine says
//! where it receives RTP ([`LocalMedia`]); re-INVITEs from the peer (hold, session refresh) are
//! answered without asking the engine, which learns of them as [`UaEvent::Media`].
//!
//! Simplifications, all documented where they bite: loose routing only (a strict-routing
//! peer's Record-Route is used as if it had `;lr`); in-dialog requests go to the first route,
//! else to the remote target, else (host names need DNS, which is the driver's) to the address
//! the dialog's messages came from; no forking (the first 2xx makes the dialog, a 2xx from
//! another fork is ACKed and sent a BYE); no PRACK, no UPDATE, no session timers.

mod dialog;
pub(crate) mod msg;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rsip::common::Transport;
use rsip::{Method, Request, Response, SipMessage};

use crate::digest::{self, Challenge, Credentials, DigestRequest};
use crate::sdp::{self, Codec, Direction, LocalMedia, Negotiated, SessionDescription};
use crate::status::CallEnd;
use crate::transaction::{self, Transactions, Transmit, TxEvent, TxKey};

pub use dialog::Dialog;
pub use msg::uri_user;

/// What the user agent needs to know about itself.
#[derive(Debug, Clone)]
pub struct UaConfig {
    pub tx: transaction::Config,
    /// The address peers reach us at: Via sent-by and Contact.
    pub advertised: SocketAddr,
    pub user_agent: String,
    /// Seeds tags, branches and Call-IDs (the driver passes entropy; tests a constant).
    pub seed: u64,
    /// Codecs we accept, in order of preference.
    pub codecs: Vec<Codec>,
    /// Calls not ended yet; a new INVITE over the cap is answered `503` and `invite` fails.
    pub max_calls: usize,
    /// An inbound call neither answered nor rejected in this time is rejected with `480` (a
    /// safety net: the engine decides much sooner).
    pub answer_timeout: Duration,
}

impl Default for UaConfig {
    fn default() -> Self {
        Self {
            tx: transaction::Config::default(),
            advertised: ([127, 0, 0, 1], 5060).into(),
            user_agent: concat!("callflow/", env!("CARGO_PKG_VERSION")).to_owned(),
            seed: 0,
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            max_calls: 10_000,
            answer_timeout: Duration::from_secs(180),
        }
    }
}

/// A call handle, unique for the life of one [`UserAgent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(u64);

impl fmt::Display for CallKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call{}", self.0)
    }
}

/// Digest credentials for challenges to our requests.
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    pub username: String,
    pub password: String,
    /// Only answer challenges for this realm.
    pub realm: Option<String>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("password", &"***")
            .field("realm", &self.realm)
            .finish()
    }
}

/// An outbound call to place.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Where the INVITE goes (the trunk's gateway).
    pub gateway: SocketAddr,
    pub transport: Transport,
    /// Request-URI and To, e.g. `sip:012345678@gw.example`.
    pub uri: String,
    /// Our From URI, e.g. `sip:+15005550006@gw.example`.
    pub from: String,
    pub auth: Option<Auth>,
    /// Where we receive RTP (our offer names it).
    pub media: LocalMedia,
    /// Give up (CANCEL) when nobody answered in this time (Twilio's `Timeout`).
    pub ring_timeout: Duration,
}

/// An inbound INVITE, as the engine needs it to route the call.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub call: CallKey,
    pub source: SocketAddr,
    /// The Request-URI's user (the number called), `%2B` unescaped.
    pub to_user: Option<String>,
    /// The From URI's user (the caller).
    pub from_user: Option<String>,
    pub call_id: String,
    /// The SDP offer, if the INVITE carried one we can answer; `Err` holds why not (the
    /// engine should reject with 488).
    pub offer: Result<(), String>,
}

/// Progress of a call, for the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum UaEvent {
    /// A new inbound call: answer it ([`UserAgent::answer`]), ring it, or reject it.
    Incoming(Incoming),
    /// A provisional response to our INVITE (180, 183; `early_media` when it carried SDP).
    Progress {
        call: CallKey,
        status: u16,
        early_media: bool,
    },
    /// Media is agreed: our INVITE was answered (outbound), or our 200 sent (inbound), or a
    /// re-INVITE changed it (hold, resume, new address).
    Media { call: CallKey, media: Negotiated },
    /// An outbound call was answered (2xx, ACK sent), or the caller ACKed our 200.
    Answered { call: CallKey },
    /// The call's dialog as it now stands: sent with our INVITE (a CANCEL can end it) and
    /// again once the call is answered (a BYE can). Kept, it lets a later run end the call
    /// ([`UserAgent::end_left`]).
    Dialog { call: CallKey, dialog: Box<Dialog> },
    /// The call is over; exactly one per call. `code` is the final SIP status that decided it
    /// (the rejection, or 487 for a cancelled INVITE), `by_peer` whether the other side ended
    /// it (BYE or CANCEL from them).
    Ended {
        call: CallKey,
        end: CallEnd,
        code: Option<u16>,
        by_peer: bool,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UaError {
    #[error("{0} is unknown or over")]
    Unknown(CallKey),
    #[error("{0} cannot do that in its current state")]
    State(CallKey),
    #[error("{live} calls are live, the configured maximum")]
    TooMany { live: usize },
    #[error("bad URI: {0}")]
    Uri(String),
    #[error(transparent)]
    Tx(#[from] transaction::TxError),
    #[error("the offer cannot be answered: {0}")]
    Sdp(String),
    #[error("the SIP stack has stopped")]
    Stopped,
}

/// Live counts, for metrics and the benchmark's "back to zero".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UaStats {
    /// Calls held, ended ones included until their transactions finish.
    pub calls: usize,
    /// Calls not ended yet (what `max_calls` bounds).
    pub live_calls: usize,
    pub transactions: usize,
    pub retransmissions: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Outbound: INVITE sent, no final response yet.
    Inviting,
    /// Inbound: INVITE received, not answered yet.
    Offered,
    /// Inbound: 200 sent, waiting for the ACK.
    Accepting,
    Confirmed,
    /// Ended and reported; kept until its transactions are gone.
    Over,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Invite,
    Cancel,
    Bye,
    /// A server transaction of ours: nothing to do with its events.
    Server,
}

struct Call {
    outbound: bool,
    phase: Phase,
    call_id: String,
    local_tag: String,
    remote_tag: Option<String>,
    /// Our URI (From of our requests) and theirs (To of our requests), as name-addr values
    /// without tags.
    local_uri: String,
    remote_uri: String,
    /// Where in-dialog requests go (the peer's Contact).
    remote_target: String,
    route_set: Vec<String>,
    /// Where the dialog's messages came from, for when neither route nor target is an IP.
    peer: SocketAddr,
    transport: Transport,
    local_cseq: u32,
    remote_cseq: Option<u32>,
    /// The INVITE we sent (outbound) or received (inbound), for CANCEL, ACK and responses.
    invite: Option<Request>,
    invite_tx: Option<TxKey>,
    /// Our ACK for the 2xx, re-sent for each retransmitted 2xx.
    ack: Option<Vec<u8>>,
    /// The 2xx we re-send until the ACK: bytes, next send, interval, give-up time.
    ok: Option<OkRetransmit>,
    ring_deadline: Option<Instant>,
    /// We want to CANCEL but have had no provisional response yet (§9.1): send it with the
    /// first one.
    cancel_pending: bool,
    /// A provisional response (100 included) arrived for our INVITE: CANCEL may be sent.
    provisional: bool,
    /// We hung up an inbound call between our 2xx and its ACK: BYE when the ACK comes.
    bye_after_ack: bool,
    /// After our CANCEL, how long we wait for the INVITE's final response before dropping its
    /// transaction (§9.1: 64·T1), so a peer that never sends 487 leaks nothing.
    cancel_deadline: Option<Instant>,
    /// How we ended it before the final response arrived (our CANCEL): the outcome to report.
    cancelled: Option<CallEnd>,
    auth: Option<Auth>,
    auth_tries: u8,
    media: Option<LocalMedia>,
    offer: Option<SessionDescription>,
    negotiated: Option<Negotiated>,
    live_txs: usize,
    /// The wake time last pushed onto the timer heap, so each is pushed once.
    deadline_since: Option<Instant>,
}

struct OkRetransmit {
    bytes: Vec<u8>,
    seq: u32,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

impl Call {
    /// A call with nothing sent, received or decided yet: the fields each way of starting one
    /// (our INVITE, theirs, a dialog a dead run left) then sets.
    fn fresh(outbound: bool, phase: Phase, peer: SocketAddr, transport: Transport) -> Call {
        Call {
            outbound,
            phase,
            call_id: String::new(),
            local_tag: String::new(),
            remote_tag: None,
            local_uri: String::new(),
            remote_uri: String::new(),
            remote_target: String::new(),
            route_set: Vec::new(),
            peer,
            transport,
            local_cseq: 0,
            remote_cseq: None,
            invite: None,
            invite_tx: None,
            ack: None,
            ok: None,
            ring_deadline: None,
            cancel_pending: false,
            provisional: false,
            bye_after_ack: false,
            cancel_deadline: None,
            cancelled: None,
            auth: None,
            auth_tries: 0,
            media: None,
            offer: None,
            negotiated: None,
            live_txs: 0,
            deadline_since: None,
        }
    }

    fn wake(&self) -> Option<Instant> {
        let ok = self.ok.as_ref().map(|o| o.next.min(o.give_up));
        [ok, self.ring_deadline, self.cancel_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// The name-addr with our tag / theirs, for From / To of in-dialog requests.
    fn local_with_tag(&self) -> String {
        format!("{};tag={}", self.local_uri, self.local_tag)
    }

    fn remote_with_tag(&self) -> String {
        match &self.remote_tag {
            Some(t) => format!("{};tag={t}", self.remote_uri),
            None => self.remote_uri.clone(),
        }
    }

    /// Where an in-dialog request goes (see the module notes).
    fn next_hop(&self) -> SocketAddr {
        self.route_set
            .first()
            .and_then(|r| msg::uri_addr(msg::uri_of(r)))
            .or_else(|| msg::uri_addr(&self.remote_target))
            .unwrap_or(self.peer)
    }
}

/// The user agent: transactions, calls and dialogs.
pub struct UserAgent {
    config: UaConfig,
    tx: Transactions,
    rng: StdRng,
    next_call: u64,
    calls: HashMap<CallKey, Call>,
    /// Calls not over yet (`calls` also holds ended calls until their transactions finish).
    live: usize,
    /// (Call-ID, our tag) → call, for in-dialog requests and stray responses.
    dialogs: HashMap<(String, String), CallKey>,
    owners: HashMap<TxKey, (CallKey, Purpose)>,
    events: VecDeque<UaEvent>,
    timers: BinaryHeap<Reverse<(Instant, CallKey)>>,
    draining: bool,
    /// What the engine needs to take calls (its database) is unreachable: refuse like draining,
    /// until it is back.
    unavailable: bool,
    allow_source: Box<dyn Fn(IpAddr) -> bool + Send>,
}

impl fmt::Debug for UserAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserAgent")
            .field("calls", &self.calls.len())
            .field("transactions", &self.tx.len())
            .finish()
    }
}

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS";

impl UserAgent {
    pub fn new(config: UaConfig) -> Self {
        Self {
            tx: Transactions::new(config.tx.clone()),
            rng: StdRng::seed_from_u64(config.seed),
            config,
            next_call: 0,
            calls: HashMap::new(),
            live: 0,
            dialogs: HashMap::new(),
            owners: HashMap::new(),
            events: VecDeque::new(),
            timers: BinaryHeap::new(),
            draining: false,
            unavailable: false,
            allow_source: Box::new(|_| true),
        }
    }

    /// Which source addresses may send requests (INVITE and OPTIONS from others get `403`).
    pub fn set_source_filter(&mut self, allow: impl Fn(IpAddr) -> bool + Send + 'static) {
        self.allow_source = Box::new(allow);
    }

    /// While draining, OPTIONS are answered `503` and new INVITEs refused with `503`; live
    /// calls go on.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// While unavailable (the engine lost its database), OPTIONS are answered `503` and new
    /// INVITEs refused with `503`, as while draining; unlike draining, it is undone when the
    /// database is back.
    pub fn set_unavailable(&mut self, unavailable: bool) {
        self.unavailable = unavailable;
    }

    pub fn stats(&self) -> UaStats {
        UaStats {
            calls: self.calls.len(),
            live_calls: self.live,
            transactions: self.tx.len(),
            retransmissions: self.tx.stats().retransmissions,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.tx.poll_transmit()
    }

    pub fn poll_event(&mut self) -> Option<UaEvent> {
        self.events.pop_front()
    }

    /// The next instant [`UserAgent::handle_timeout`] must be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            match self.calls.get(&key).and_then(Call::wake) {
                Some(w) if w == at => break,
                _ => {
                    self.timers.pop();
                }
            }
        }
        let ours = self.timers.peek().map(|Reverse((at, _))| *at);
        match (ours, self.tx.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Feeds a datagram received from `from`. Malformed requests are answered `400` when a
    /// response is possible; nothing here panics on input.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8], from: SocketAddr) {
        self.handle_message(now, bytes, from, Transport::Udp);
    }

    /// Feeds one message framed from a TCP connection with `from` (see [`crate::frame`]).
    pub fn handle_stream_message(&mut self, now: Instant, bytes: &[u8], from: SocketAddr) {
        self.handle_message(now, bytes, from, Transport::Tcp);
    }

    fn handle_message(
        &mut self,
        now: Instant,
        bytes: &[u8],
        from: SocketAddr,
        transport: Transport,
    ) {
        match crate::parse(bytes) {
            Ok(SipMessage::Request(mut req)) => {
                msg::stamp_via(&mut req, from);
                self.tx.handle_incoming(now, SipMessage::Request(req), from);
            }
            Ok(msg) => self.tx.handle_incoming(now, msg, from),
            Err(e) => {
                let code = e.status();
                let resp = if code.0 == 400 {
                    crate::bad_request(bytes)
                } else {
                    crate::error_response(bytes, code.0, code.1)
                };
                if let Some(resp) = resp {
                    self.tx.send_raw(resp, from, transport);
                }
            }
        }
        self.pump(now);
    }

    /// Fires every timer due at `now`: transactions', then 2xx retransmission and ring timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.calls.get(&key).and_then(Call::wake) == Some(at) {
                self.fire(now, key);
            }
        }
        self.pump(now);
    }

    /// The driver could not send a transmit: the transaction (and a call waiting on it) fails.
    pub fn handle_transport_error(&mut self, now: Instant, key: TxKey) {
        self.tx.handle_transport_error(now, key);
        self.pump(now);
    }

    /// Places an outbound call: INVITE with our SDP offer to the gateway.
    pub fn invite(&mut self, now: Instant, out: Outgoing) -> Result<CallKey, UaError> {
        if self.live >= self.config.max_calls {
            return Err(UaError::TooMany { live: self.live });
        }
        if msg::uri_user(&out.uri).is_none() && msg::uri_addr(&out.uri).is_none() {
            // Only a sanity check: rsip parses the rest.
            if !out.uri.starts_with("sip:") {
                return Err(UaError::Uri(out.uri));
            }
        }
        let key = self.new_call_key();
        let local_tag = self.token(8);
        let call_id = format!("{}@callflow", self.token(12));
        let mut call = Call {
            call_id,
            local_tag,
            local_uri: format!("<{}>", out.from),
            remote_uri: format!("<{}>", out.uri),
            remote_target: out.uri.clone(),
            local_cseq: 1,
            ring_deadline: Some(now + out.ring_timeout),
            auth: out.auth,
            media: Some(out.media),
            ..Call::fresh(true, Phase::Inviting, out.gateway, out.transport)
        };
        let body = sdp::offer(&out.media, &self.config.codecs, Direction::SendRecv);
        let req = self
            .build_invite(&InviteParts::of(&call), &out.uri, body.as_bytes(), None)
            .ok_or_else(|| UaError::Uri(out.uri.clone()))?;
        let tx = self.tx.send_request(now, req.clone(), out.gateway)?;
        call.invite = Some(req);
        call.invite_tx = Some(tx);
        call.live_txs = 1;
        self.events.push_back(UaEvent::Dialog {
            call: key,
            dialog: Box::new(call.dialog()),
        });
        self.owners.insert(tx, (key, Purpose::Invite));
        self.dialogs
            .insert((call.call_id.clone(), call.local_tag.clone()), key);
        self.calls.insert(key, call);
        self.live += 1;
        self.schedule(key);
        self.pump(now);
        Ok(key)
    }

    /// Sends `180 Ringing` for an inbound call not yet answered.
    pub fn ring(&mut self, now: Instant, key: CallKey) -> Result<(), UaError> {
        self.respond_invite(now, key, 180, None, false)
    }

    /// Answers an inbound call: `200` with our SDP answer for `media`, re-sent until the ACK.
    /// If the offer cannot be answered the call is rejected with `488` and this fails.
    pub fn answer(&mut self, now: Instant, key: CallKey, media: LocalMedia) -> Result<(), UaError> {
        let call = self.calls.get_mut(&key).ok_or(UaError::Unknown(key))?;
        if call.outbound || call.phase != Phase::Offered {
            return Err(UaError::State(key));
        }
        let negotiated = match &call.offer {
            Some(offer) => match sdp::negotiate(offer, &self.config.codecs) {
                Ok(n) => n,
                Err(e) => {
                    self.respond_invite(now, key, 488, None, false)?;
                    return Err(UaError::Sdp(e.to_string()));
                }
            },
            None => {
                self.respond_invite(now, key, 488, None, false)?;
                return Err(UaError::Sdp("the INVITE has no SDP offer".into()));
            }
        };
        call.media = Some(media);
        let offer = call.offer.as_ref().expect("checked above");
        let body = sdp::answer(offer, &negotiated, &media);
        call.negotiated = Some(negotiated.clone());
        self.respond_invite(now, key, 200, Some(body.into_bytes()), false)?;
        self.events.push_back(UaEvent::Media {
            call: key,
            media: negotiated,
        });
        if let Some(call) = self.calls.get(&key) {
            self.events.push_back(UaEvent::Dialog {
                call: key,
                dialog: Box::new(call.dialog()),
            });
        }
        self.pump(now);
        Ok(())
    }

    /// Rejects an inbound call not yet answered with `status` (4xx–6xx).
    pub fn reject(&mut self, now: Instant, key: CallKey, status: u16) -> Result<(), UaError> {
        if !(300..700).contains(&status) {
            return Err(UaError::State(key));
        }
        self.respond_invite(now, key, status, None, false)
    }

    /// Ends a call from our side: BYE when it is answered, CANCEL while an outbound call rings
    /// (reported as [`CallEnd::Canceled`]), `487` to an inbound call not yet answered.
    pub fn hangup(&mut self, now: Instant, key: CallKey) -> Result<(), UaError> {
        let call = self.calls.get(&key).ok_or(UaError::Unknown(key))?;
        match call.phase {
            Phase::Inviting => self.cancel(now, key, CallEnd::Canceled),
            Phase::Offered => self.respond_invite(now, key, 487, None, false),
            Phase::Accepting => {
                // §15: no BYE before the ACK for our 2xx (or the 64·T1 wait) is over.
                if let Some(call) = self.calls.get_mut(&key) {
                    call.bye_after_ack = true;
                }
                self.end(key, CallEnd::Answered, None, false);
                self.pump(now);
                Ok(())
            }
            Phase::Confirmed => {
                self.send_bye(now, key);
                self.end(key, CallEnd::Answered, None, false);
                self.pump(now);
                Ok(())
            }
            Phase::Over => Err(UaError::Unknown(key)),
        }
    }

    fn new_call_key(&mut self) -> CallKey {
        let key = CallKey(self.next_call);
        self.next_call += 1;
        key
    }

    fn token(&mut self, bytes: usize) -> String {
        (0..bytes)
            .map(|_| format!("{:02x}", self.rng.random::<u8>()))
            .collect()
    }

    fn via(&mut self, transport: Transport) -> String {
        let branch = self.token(8);
        format!(
            "SIP/2.0/{} {};branch=z9hG4bK{branch};rport",
            transport_name(transport),
            self.config.advertised,
        )
    }

    fn contact(&self, transport: Transport) -> String {
        match transport {
            Transport::Udp => format!("<sip:callflow@{}>", self.config.advertised),
            t => format!(
                "<sip:callflow@{};transport={}>",
                self.config.advertised,
                transport_name(t).to_ascii_lowercase()
            ),
        }
    }

    fn build_invite(
        &mut self,
        parts: &InviteParts,
        uri: &str,
        body: &[u8],
        authorization: Option<(&str, &str)>,
    ) -> Option<Request> {
        let via = self.via(parts.transport);
        let cseq = format!("{} INVITE", parts.cseq);
        let contact = self.contact(parts.transport);
        let mut headers = vec![
            ("Via", via.as_str()),
            ("Max-Forwards", "70"),
            ("From", parts.from.as_str()),
            ("To", parts.to.as_str()),
            ("Call-ID", parts.call_id.as_str()),
            ("CSeq", cseq.as_str()),
            ("Contact", contact.as_str()),
            ("Allow", ALLOW),
            ("User-Agent", self.config.user_agent.as_str()),
        ];
        if let Some(a) = authorization {
            headers.push(a);
        }
        msg::request("INVITE", uri, &headers, Some(("application/sdp", body)))
    }

    /// An in-dialog request (BYE, re-INVITE) with the next CSeq.
    fn in_dialog(&mut self, key: CallKey, method: &str) -> Option<(Request, SocketAddr)> {
        let call = self.calls.get_mut(&key)?;
        call.local_cseq += 1;
        let seq = call.local_cseq;
        self.dialog_request(key, method, seq, true)
    }

    /// A request within the dialog of `key` (§12.2.1.1): Request-URI the remote target, From
    /// and To with the tags, the route set as Route headers; and where it goes.
    fn dialog_request(
        &mut self,
        key: CallKey,
        method: &str,
        seq: u32,
        user_agent: bool,
    ) -> Option<(Request, SocketAddr)> {
        let transport = self.calls.get(&key)?.transport;
        let via = self.via(transport);
        let call = &self.calls[&key];
        let from = call.local_with_tag();
        let to = call.remote_with_tag();
        let cseq = format!("{seq} {method}");
        let mut headers = vec![
            ("Via", via.as_str()),
            ("Max-Forwards", "70"),
            ("From", from.as_str()),
            ("To", to.as_str()),
            ("Call-ID", call.call_id.as_str()),
            ("CSeq", cseq.as_str()),
        ];
        if user_agent {
            headers.push(("User-Agent", self.config.user_agent.as_str()));
        }
        for r in &call.route_set {
            headers.push(("Route", r.as_str()));
        }
        let req = msg::request(method, &call.remote_target, &headers, None)?;
        Some((req, call.next_hop()))
    }

    /// A 2xx from a second fork of our INVITE (§13.2.2.4): we keep the first dialog, so this one
    /// is ACKed and ended with a BYE, both built for its own tag, target and route set.
    fn end_fork(&mut self, now: Instant, key: CallKey, resp: &Response, tag: Option<String>) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let seq = msg::cseq(&resp.headers).map_or(call.local_cseq, |c| c.0);
        let target = msg::header(&resp.headers, "contact")
            .map(msg::uri_of)
            .filter(|c| msg::usable_target(c))
            .map_or_else(|| call.remote_target.clone(), str::to_owned);
        let mut routes = msg::header_list(&resp.headers, "record-route");
        routes.reverse();
        let first = (
            std::mem::replace(&mut call.remote_tag, tag),
            std::mem::replace(&mut call.remote_target, target),
            std::mem::replace(&mut call.route_set, routes),
        );
        let ack = self.dialog_request(key, "ACK", seq, false);
        let bye = self.dialog_request(key, "BYE", seq + 1, true);
        let call = self.calls.get_mut(&key).expect("present");
        (call.remote_tag, call.remote_target, call.route_set) = first;
        let transport = call.transport;
        if let Some((ack, hop)) = ack {
            self.tx
                .send_raw(ack.to_string().into_bytes(), hop, transport);
        }
        if let Some((bye, hop)) = bye {
            self.start_client(now, key, bye, hop, Purpose::Bye);
        }
    }

    fn send_bye(&mut self, now: Instant, key: CallKey) {
        let Some((req, to)) = self.in_dialog(key, "BYE") else {
            return;
        };
        if let Some(call) = self.calls.get_mut(&key) {
            call.ok = None;
        }
        self.start_client(now, key, req, to, Purpose::Bye);
    }

    fn start_client(
        &mut self,
        now: Instant,
        key: CallKey,
        req: Request,
        to: SocketAddr,
        purpose: Purpose,
    ) -> Option<TxKey> {
        match self.tx.send_request(now, req, to) {
            Ok(tx) => {
                self.owners.insert(tx, (key, purpose));
                if let Some(call) = self.calls.get_mut(&key) {
                    call.live_txs += 1;
                }
                Some(tx)
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "could not send an in-dialog request");
                None
            }
        }
    }

    /// CANCEL an outbound INVITE (or remember to, until a provisional response arrives) and
    /// report the call ended with `end` now.
    fn cancel(&mut self, now: Instant, key: CallKey, end: CallEnd) -> Result<(), UaError> {
        let call = self.calls.get_mut(&key).ok_or(UaError::Unknown(key))?;
        if call.phase != Phase::Inviting {
            return Err(UaError::State(key));
        }
        call.cancelled = Some(end);
        call.ring_deadline = None;
        if call.provisional {
            self.send_cancel(now, key);
        } else {
            // §9.1: no provisional response yet; CANCEL when one comes (or timer B ends it).
            call.cancel_pending = true;
        }
        self.end(key, end, None, false);
        self.pump(now);
        Ok(())
    }

    fn send_cancel(&mut self, now: Instant, key: CallKey) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.cancel_pending = false;
        call.cancel_deadline = Some(now + 64 * self.config.tx.t1);
        let Some(invite) = call.invite.clone() else {
            return;
        };
        let peer = call.peer;
        // §9.1: same Request-URI, Call-ID, From, To (no tag), CSeq number and top Via.
        let mut headers: Vec<(&str, String)> = Vec::new();
        if let Some(v) = msg::header(&invite.headers, "via") {
            headers.push(("Via", v.to_owned()));
        }
        for name in ["from", "to", "call-id"] {
            if let Some(v) = msg::header(&invite.headers, name) {
                headers.push((canonical(name), v.to_owned()));
            }
        }
        let seq = msg::cseq(&invite.headers).map_or(1, |c| c.0);
        headers.push(("CSeq", format!("{seq} CANCEL")));
        headers.push(("Max-Forwards", "70".into()));
        for r in msg::header_list(&invite.headers, "route") {
            headers.push(("Route", r));
        }
        let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        if let Some(req) = msg::request("CANCEL", &invite.uri.to_string(), &refs, None) {
            self.start_client(now, key, req, peer, Purpose::Cancel);
        }
        self.schedule(key);
    }

    /// A response to the inbound INVITE of `key`.
    fn respond_invite(
        &mut self,
        now: Instant,
        key: CallKey,
        status: u16,
        body: Option<Vec<u8>>,
        by_peer: bool,
    ) -> Result<(), UaError> {
        let ua = self.config.user_agent.clone();
        let t1 = self.config.tx.t1;
        let transport = self.calls.get(&key).ok_or(UaError::Unknown(key))?.transport;
        let contact = self.contact(transport);
        let call = self.calls.get_mut(&key).ok_or(UaError::Unknown(key))?;
        if call.outbound || call.phase != Phase::Offered {
            return Err(UaError::State(key));
        }
        let (Some(invite), Some(tx)) = (call.invite.as_ref(), call.invite_tx) else {
            // The INVITE's transaction is gone (it could not be answered in time, or a send
            // failed): the call cannot be answered any more; end it so nothing waits on it.
            self.end(key, CallEnd::TransportFailure, None, false);
            self.reap(key);
            return Err(UaError::State(key));
        };
        let mut extra = vec![("User-Agent", ua.as_str())];
        if status < 300 {
            extra.push(("Contact", contact.as_str()));
            extra.push(("Allow", ALLOW));
        }
        let resp = msg::response(
            invite,
            status,
            Some(&call.local_tag),
            &extra,
            body.as_deref().map(|b| ("application/sdp", b)),
        );
        let sent = match resp {
            Some(resp) => {
                if (200..300).contains(&status) {
                    call.phase = Phase::Accepting;
                    call.ring_deadline = None;
                    let seq = msg::cseq(&invite.headers).map_or(0, |c| c.0);
                    call.ok = Some(OkRetransmit {
                        bytes: resp.to_string().into_bytes(),
                        seq,
                        next: now + t1,
                        interval: t1,
                        give_up: now + 64 * t1,
                    });
                }
                self.tx.send_response(now, tx, resp).map_err(UaError::from)
            }
            None => Err(UaError::State(key)),
        };
        if status >= 300 || sent.is_err() {
            let end = match (status, &sent) {
                (_, Err(_)) => CallEnd::TransportFailure,
                (487, _) => CallEnd::Canceled,
                _ => CallEnd::Rejected(status),
            };
            self.end(key, end, Some(status), by_peer);
        }
        self.schedule(key);
        self.pump(now);
        sent
    }

    /// Marks a call over and reports it, once.
    fn end(&mut self, key: CallKey, end: CallEnd, code: Option<u16>, by_peer: bool) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.phase == Phase::Over {
            return;
        }
        call.phase = Phase::Over;
        call.ring_deadline = None;
        self.live -= 1;
        self.events.push_back(UaEvent::Ended {
            call: key,
            end,
            code,
            by_peer,
        });
    }

    /// Forgets a call that is over once none of its transactions or retransmissions remain.
    fn reap(&mut self, key: CallKey) {
        let done = self
            .calls
            .get(&key)
            .is_some_and(|c| c.phase == Phase::Over && c.live_txs == 0 && c.ok.is_none());
        if done && let Some(call) = self.calls.remove(&key) {
            self.dialogs.remove(&(call.call_id, call.local_tag));
        }
    }

    fn schedule(&mut self, key: CallKey) {
        if let Some(call) = self.calls.get_mut(&key)
            && let Some(at) = call.wake()
            && call.deadline_since != Some(at)
        {
            call.deadline_since = Some(at);
            self.timers.push(Reverse((at, key)));
        }
    }

    fn fire(&mut self, now: Instant, key: CallKey) {
        let t2 = self.config.tx.t2;
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.deadline_since = None;
        if let Some(ok) = call.ok.as_mut() {
            if ok.give_up <= now {
                // §13.3.1.4: no ACK in 64·T1: end the dialog with a BYE.
                call.ok = None;
                // The ACK for our 2xx (to the INVITE, or to a re-INVITE) never came: the
                // dialog is dead (§13.3.1.4, §14.2).
                if matches!(call.phase, Phase::Accepting | Phase::Confirmed) || call.bye_after_ack {
                    call.bye_after_ack = false;
                    self.send_bye(now, key);
                    self.end(key, CallEnd::Answered, None, false);
                }
            } else if ok.next <= now {
                ok.interval = (ok.interval * 2).min(t2);
                ok.next = now + ok.interval;
                let (bytes, peer, transport) = (ok.bytes.clone(), call.peer, call.transport);
                self.tx.send_raw(bytes, peer, transport);
            }
        }
        if let Some(call) = self.calls.get_mut(&key)
            && call.cancel_deadline.is_some_and(|d| d <= now)
        {
            call.cancel_deadline = None;
            if let Some(tx) = call.invite_tx {
                self.tx.abandon(now, tx);
            }
        }
        if let Some(call) = self.calls.get(&key)
            && call.ring_deadline.is_some_and(|d| d <= now)
        {
            match call.phase {
                Phase::Inviting => drop(self.cancel(now, key, CallEnd::RingTimeout)),
                Phase::Offered => drop(self.respond_invite(now, key, 480, None, false)),
                _ => {}
            }
        }
        self.schedule(key);
        self.reap(key);
    }

    /// Drains the transaction layer's events into call state.
    fn pump(&mut self, now: Instant) {
        while let Some(ev) = self.tx.poll_event() {
            match ev {
                TxEvent::Request {
                    key,
                    request,
                    from,
                    cancels,
                } => self.on_request(now, key, request, from, cancels),
                TxEvent::Ack { request, from } => self.on_ack(now, request, from),
                TxEvent::Response { key, response } => self.on_response(now, key, response),
                TxEvent::StrayResponse { response, from } => self.on_stray(now, response, from),
                TxEvent::Timeout { key } | TxEvent::TransportError { key } => {
                    self.on_failure(now, key)
                }
                TxEvent::Terminated { key } => {
                    if let Some((call, _)) = self.owners.remove(&key) {
                        if let Some(c) = self.calls.get_mut(&call) {
                            c.live_txs = c.live_txs.saturating_sub(1);
                            if c.invite_tx == Some(key) {
                                c.invite_tx = None;
                                // An INVITE transaction gone before the call was decided (a
                                // send failed, or we gave up after our CANCEL): it is over.
                                if matches!(c.phase, Phase::Offered | Phase::Inviting) {
                                    let end = c.cancelled.unwrap_or(CallEnd::TransportFailure);
                                    self.end(call, end, None, false);
                                }
                            }
                        }
                        self.reap(call);
                    }
                }
                TxEvent::Refused { .. } => {}
            }
        }
    }

    fn simple_response(&mut self, now: Instant, tx: TxKey, req: &Request, code: u16) {
        let extra: Vec<(&str, &str)> = match code {
            200 | 405 => vec![("Allow", ALLOW)],
            _ => Vec::new(),
        };
        let tag = self.token(4);
        let Some(resp) = msg::response(req, code, Some(&tag), &extra, None) else {
            return;
        };
        if let Err(e) = self.tx.send_response(now, tx, resp) {
            tracing::debug!(error = %e, "response not sent");
        }
    }

    fn on_request(
        &mut self,
        now: Instant,
        tx: TxKey,
        req: Request,
        from: SocketAddr,
        cancels: Option<TxKey>,
    ) {
        let to_tag = msg::tag(&req.headers, "to");
        let call_id = msg::header(&req.headers, "call-id")
            .unwrap_or_default()
            .to_owned();
        let dialog = to_tag
            .as_ref()
            .and_then(|t| self.dialogs.get(&(call_id.clone(), t.clone())).copied());
        match req.method {
            Method::Cancel => {
                let target = cancels.and_then(|k| self.owners.get(&k).map(|o| o.0));
                match target {
                    Some(key)
                        if self
                            .calls
                            .get(&key)
                            .is_some_and(|c| c.phase == Phase::Offered) =>
                    {
                        self.caller_gave_up(now, tx, &req, key)
                    }
                    Some(_) => self.simple_response(now, tx, &req, 200),
                    None => self.simple_response(now, tx, &req, 481),
                }
            }
            Method::Invite if to_tag.is_none() => self.on_invite(now, tx, req, from),
            Method::Invite => match dialog {
                Some(key) => self.on_reinvite(now, tx, key, req),
                None => self.simple_response(now, tx, &req, 481),
            },
            Method::Bye => match dialog {
                // A BYE in an early dialog (before answer): the caller gave up (our INVITE
                // server transaction still needs its final response), or the callee did.
                Some(key)
                    if self
                        .calls
                        .get(&key)
                        .is_some_and(|c| c.phase == Phase::Offered) =>
                {
                    self.caller_gave_up(now, tx, &req, key)
                }
                Some(key)
                    if self
                        .calls
                        .get(&key)
                        .is_some_and(|c| c.phase == Phase::Inviting) =>
                {
                    self.simple_response(now, tx, &req, 200);
                    let _ = self.cancel(now, key, CallEnd::Rejected(487));
                }
                Some(key) => {
                    self.simple_response(now, tx, &req, 200);
                    if let Some(call) = self.calls.get_mut(&key) {
                        call.ok = None;
                    }
                    self.end(key, CallEnd::Answered, None, true);
                    self.reap(key);
                }
                None => self.simple_response(now, tx, &req, 481),
            },
            Method::Options => {
                let code = if dialog.is_some() {
                    200
                } else if !(self.allow_source)(from.ip()) {
                    403
                } else if self.draining || self.unavailable {
                    503
                } else {
                    200
                };
                self.simple_response(now, tx, &req, code);
            }
            Method::Info if dialog.is_some() => self.simple_response(now, tx, &req, 200),
            Method::Register | Method::Subscribe | Method::Publish | Method::Message => {
                self.simple_response(now, tx, &req, 405)
            }
            _ if to_tag.is_some() && dialog.is_none() => self.simple_response(now, tx, &req, 481),
            _ => self.simple_response(now, tx, &req, 501),
        }
    }

    /// The caller of an unanswered inbound call gave up (CANCEL, or BYE in the early dialog):
    /// `200` to that request, `487` to the INVITE, the call ended as cancelled by the peer.
    fn caller_gave_up(&mut self, now: Instant, tx: TxKey, req: &Request, key: CallKey) {
        self.simple_response(now, tx, req, 200);
        let _ = self.respond_invite(now, key, 487, None, true);
    }

    fn on_invite(&mut self, now: Instant, tx: TxKey, req: Request, from: SocketAddr) {
        if !(self.allow_source)(from.ip()) {
            return self.simple_response(now, tx, &req, 403);
        }
        if self.draining || self.unavailable || self.live >= self.config.max_calls {
            return self.simple_response(now, tx, &req, 503);
        }
        let (Some(from_v), Some(to_v), Some(call_id)) = (
            msg::header(&req.headers, "from").map(str::to_owned),
            msg::header(&req.headers, "to").map(str::to_owned),
            msg::header(&req.headers, "call-id").map(str::to_owned),
        ) else {
            return self.simple_response(now, tx, &req, 400);
        };
        let Some(remote_tag) = msg::param(&from_v, "tag").map(str::to_owned) else {
            return self.simple_response(now, tx, &req, 400);
        };
        let transport = via_transport(&req);
        let key = self.new_call_key();
        let local_tag = self.token(8);
        let offer = if req.body.is_empty() {
            Err("the INVITE has no SDP offer (offerless INVITEs are not supported)".to_owned())
        } else {
            sdp::parse(&req.body)
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    sdp::negotiate(&s, &self.config.codecs)
                        .map(|_| s)
                        .map_err(|e| e.to_string())
                })
        };
        let remote_target = msg::header(&req.headers, "contact")
            .map(|c| msg::uri_of(c).to_owned())
            .unwrap_or_else(|| msg::uri_of(&from_v).to_owned());
        if !msg::usable_target(&remote_target) {
            // We could never send this caller a BYE: refuse the call now.
            return self.simple_response(now, tx, &req, 400);
        }
        let incoming = Incoming {
            call: key,
            source: from,
            to_user: msg::uri_user(&req.uri.to_string()),
            from_user: msg::uri_user(msg::uri_of(&from_v)),
            call_id: call_id.clone(),
            offer: offer.as_ref().map(|_| ()).map_err(Clone::clone),
        };
        let call = Call {
            call_id: call_id.clone(),
            local_tag: local_tag.clone(),
            remote_tag: Some(remote_tag),
            local_uri: strip_tag(&to_v),
            remote_uri: strip_tag(&from_v),
            remote_target,
            // §12.1.1: the UAS's route set is the Record-Route values in order.
            route_set: msg::header_list(&req.headers, "record-route"),
            remote_cseq: msg::cseq(&req.headers).map(|c| c.0),
            invite: Some(req),
            invite_tx: Some(tx),
            ring_deadline: Some(now + self.config.answer_timeout),
            offer: offer.ok(),
            live_txs: 1,
            ..Call::fresh(false, Phase::Offered, from, transport)
        };
        self.owners.insert(tx, (key, Purpose::Server));
        self.dialogs.insert((call_id, local_tag), key);
        self.calls.insert(key, call);
        self.live += 1;
        self.schedule(key);
        self.events.push_back(UaEvent::Incoming(incoming));
    }

    /// A re-INVITE from the peer (hold, resume, session refresh): answered with the same
    /// media, our direction mirroring theirs, a new SDP version.
    fn on_reinvite(&mut self, now: Instant, tx: TxKey, key: CallKey, req: Request) {
        self.owners.insert(tx, (key, Purpose::Server));
        let t1 = self.config.tx.t1;
        let codecs = self.config.codecs.clone();
        let Some(transport) = self.calls.get(&key).map(|c| c.transport) else {
            return;
        };
        let contact = self.contact(transport);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.live_txs += 1;
        let seq = msg::cseq(&req.headers).map_or(0, |c| c.0);
        if call.phase == Phase::Over {
            if let Some(resp) = msg::response(&req, 481, None, &[], None) {
                let _ = self.tx.send_response(now, tx, resp);
            }
            return;
        }
        if call.phase != Phase::Confirmed || call.ok.is_some() {
            // §14.2: a re-INVITE while ours or an earlier one is pending.
            if let Some(resp) = msg::response(&req, 491, None, &[], None) {
                let _ = self.tx.send_response(now, tx, resp);
            }
            return;
        }
        if call.remote_cseq.is_some_and(|r| seq <= r) {
            if let Some(resp) = msg::response(&req, 500, None, &[], None) {
                let _ = self.tx.send_response(now, tx, resp);
            }
            return;
        }
        call.remote_cseq = Some(seq);
        if let Some(c) = msg::header(&req.headers, "contact").map(msg::uri_of)
            && msg::usable_target(c)
        {
            call.remote_target = c.to_owned();
        }
        let Some(mut media) = call.media else {
            return;
        };
        // An offerless re-INVITE gets our current description as the offer in the 200; the
        // peer's answer comes in the ACK, which we accept as it is.
        let body = if req.body.is_empty() {
            media.session_version += 1;
            sdp::offer(&media, &codecs, Direction::SendRecv)
        } else {
            let parsed = sdp::parse(&req.body).and_then(|s| {
                let n = sdp::negotiate(&s, &codecs)?;
                Ok((s, n))
            });
            match parsed {
                Ok((offer, negotiated)) => {
                    media.session_version += 1;
                    let body = sdp::answer(&offer, &negotiated, &media);
                    call.negotiated = Some(negotiated.clone());
                    self.events.push_back(UaEvent::Media {
                        call: key,
                        media: negotiated,
                    });
                    body
                }
                Err(_) => {
                    if let Some(resp) = msg::response(&req, 488, None, &[], None) {
                        let _ = self.tx.send_response(now, tx, resp);
                    }
                    return;
                }
            }
        };
        call.media = Some(media);
        let Some(resp) = msg::response(
            &req,
            200,
            None,
            &[("Contact", contact.as_str()), ("Allow", ALLOW)],
            Some(("application/sdp", body.as_bytes())),
        ) else {
            return;
        };
        call.ok = Some(OkRetransmit {
            bytes: resp.to_string().into_bytes(),
            seq,
            next: now + t1,
            interval: t1,
            give_up: now + 64 * t1,
        });
        let _ = self.tx.send_response(now, tx, resp);
        self.schedule(key);
    }

    fn on_ack(&mut self, now: Instant, req: Request, _from: SocketAddr) {
        let Some(tag) = msg::tag(&req.headers, "to") else {
            return;
        };
        let call_id = msg::header(&req.headers, "call-id").unwrap_or_default();
        let Some(&key) = self.dialogs.get(&(call_id.to_owned(), tag)) else {
            return;
        };
        let seq = msg::cseq(&req.headers).map_or(0, |c| c.0);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.ok.as_ref().is_some_and(|o| o.seq == seq) {
            call.ok = None;
        }
        if call.phase == Phase::Accepting {
            call.phase = Phase::Confirmed;
            self.events.push_back(UaEvent::Answered { call: key });
        }
        if call.bye_after_ack {
            call.bye_after_ack = false;
            self.send_bye(now, key);
        }
        self.reap(key);
    }

    fn on_response(&mut self, now: Instant, tx: TxKey, resp: Response) {
        let Some(&(key, purpose)) = self.owners.get(&tx) else {
            return;
        };
        if purpose != Purpose::Invite {
            // BYE, CANCEL: nothing depends on their answers (the call was reported at once).
            return;
        }
        let code = resp.status_code.code();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if code < 200 {
            call.provisional = true;
            if code > 100 {
                if let Some(t) = msg::tag(&resp.headers, "to") {
                    call.remote_tag.get_or_insert(t);
                }
                if call.phase == Phase::Inviting {
                    self.events.push_back(UaEvent::Progress {
                        call: key,
                        status: code,
                        early_media: !resp.body.is_empty(),
                    });
                }
            }
            if call.cancel_pending {
                self.send_cancel(now, key);
            }
            return;
        }
        if code < 300 {
            return self.on_invite_ok(now, key, resp);
        }
        if matches!(code, 401 | 407)
            && call.phase == Phase::Inviting
            && call.cancelled.is_none()
            && call.auth_tries < 2
            && let Some(auth) = call.auth.clone()
            && self.retry_with_auth(now, key, &resp, &auth)
        {
            return;
        }
        let end = self.calls[&key]
            .cancelled
            .unwrap_or(CallEnd::Rejected(code));
        self.end(key, end, Some(code), false);
        // The ended event may already be out (our CANCEL): attach the code when it is the
        // last event of this call still queued.
        for ev in self.events.iter_mut().rev() {
            if let UaEvent::Ended { call, code: c, .. } = ev
                && *call == key
            {
                c.get_or_insert(code);
                break;
            }
        }
    }

    fn retry_with_auth(
        &mut self,
        now: Instant,
        key: CallKey,
        resp: &Response,
        auth: &Auth,
    ) -> bool {
        let name = if resp.status_code.code() == 401 {
            "www-authenticate"
        } else {
            "proxy-authenticate"
        };
        let values = msg::header_all(&resp.headers, name);
        let Ok(challenge) = Challenge::best(values) else {
            return false;
        };
        if auth.realm.as_deref().is_some_and(|r| r != challenge.realm) {
            return false;
        }
        let cnonce = self.token(8);
        let call = self.calls.get_mut(&key).expect("caller checked");
        call.auth_tries += 1;
        call.local_cseq += 1;
        let Some(invite) = call.invite.clone() else {
            return false;
        };
        let uri = invite.uri.to_string();
        let value = challenge.authorization(
            &Credentials {
                username: &auth.username,
                password: &auth.password,
            },
            &DigestRequest {
                method: "INVITE",
                uri: &uri,
                body: &invite.body,
                cnonce: &cnonce,
                nc: 1,
            },
        );
        let header =
            digest::authorization_header_name(resp.status_code.code()).expect("401 or 407");
        let parts = InviteParts::of(&self.calls[&key]);
        let Some(req) = self.build_invite(&parts, &uri, &invite.body, Some((header, &value)))
        else {
            return false;
        };
        let peer = self.calls[&key].peer;
        let Some(tx) = self.start_client(now, key, req.clone(), peer, Purpose::Invite) else {
            return false;
        };
        let call = self.calls.get_mut(&key).expect("present");
        call.invite = Some(req);
        call.invite_tx = Some(tx);
        call.remote_tag = None;
        // A CANCEL must wait for a provisional response to this INVITE, not the last one.
        call.provisional = false;
        true
    }

    fn on_invite_ok(&mut self, now: Instant, key: CallKey, resp: Response) {
        let codecs = self.config.codecs.clone();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let remote_tag = msg::tag(&resp.headers, "to");
        if let Some(ack) = call.ack.clone() {
            if remote_tag == call.remote_tag {
                // A retransmitted 2xx: ACK again.
                self.tx.send_raw(ack, call.next_hop(), call.transport);
            } else {
                self.end_fork(now, key, &resp, remote_tag);
            }
            return;
        }
        call.remote_tag = remote_tag;
        // An unusable Contact leaves the target where the INVITE went.
        if let Some(c) = msg::header(&resp.headers, "contact").map(msg::uri_of)
            && msg::usable_target(c)
        {
            call.remote_target = c.to_owned();
        }
        // §12.1.2: the UAC's route set is the Record-Route values in reverse order.
        let mut routes = msg::header_list(&resp.headers, "record-route");
        routes.reverse();
        call.route_set = routes;
        let seq = msg::cseq(&resp.headers).map_or(call.local_cseq, |c| c.0);
        let transport = call.transport;
        let Some((ack, hop)) = self.dialog_request(key, "ACK", seq, false) else {
            return;
        };
        let ack_bytes = ack.to_string().into_bytes();
        self.tx.send_raw(ack_bytes.clone(), hop, transport);
        let call = self.calls.get_mut(&key).expect("present");
        call.ack = Some(ack_bytes);
        call.ring_deadline = None;
        if call.cancelled.is_some() || call.phase == Phase::Over {
            // We cancelled (or timed out) and the 200 crossed our CANCEL: the call was
            // answered after all; end it at once (§9.1 leaves this to the UAC).
            call.phase = Phase::Over;
            self.send_bye(now, key);
            return;
        }
        let negotiated = sdp::parse(&resp.body)
            .ok()
            .and_then(|s| sdp::negotiate(&s, &codecs).ok());
        call.phase = Phase::Confirmed;
        self.events.push_back(UaEvent::Dialog {
            call: key,
            dialog: Box::new(call.dialog()),
        });
        match negotiated {
            Some(n) => {
                call.negotiated = Some(n.clone());
                self.events.push_back(UaEvent::Media {
                    call: key,
                    media: n,
                });
                self.events.push_back(UaEvent::Answered { call: key });
            }
            None => {
                // Answered with nothing we can use: say so with a BYE (RFC 3261 §13.2.1).
                self.events.push_back(UaEvent::Answered { call: key });
                self.send_bye(now, key);
                self.end(key, CallEnd::Answered, Some(488), false);
            }
        }
        self.schedule(key);
    }

    fn on_stray(&mut self, _now: Instant, resp: Response, _from: SocketAddr) {
        let code = resp.status_code.code();
        if code >= 300 {
            // The final response to an INVITE an earlier run sent and we cancelled
            // (`end_left`): its transaction is not ours, but the ACK stops its retransmission.
            if let (Some(tag), Some(call_id)) = (
                msg::tag(&resp.headers, "from"),
                msg::header(&resp.headers, "call-id"),
            ) && let Some(&key) = self.dialogs.get(&(call_id.to_owned(), tag))
                && let Some(call) = self.calls.get(&key)
                && call.invite_tx.is_none()
                && let Some(invite) = &call.invite
                && msg::cseq(&resp.headers).is_some_and(|c| c.1 == "INVITE")
            {
                let ack = crate::transaction::ack_for(invite, &resp);
                self.tx
                    .send_raw(ack.to_string().into_bytes(), call.peer, call.transport);
            }
            return;
        }
        // A 2xx retransmission after the INVITE transaction ended: re-send our ACK.
        if !(200..300).contains(&code) {
            return;
        }
        let (Some(tag), Some(call_id)) = (
            msg::tag(&resp.headers, "from"),
            msg::header(&resp.headers, "call-id"),
        ) else {
            return;
        };
        if let Some(&key) = self.dialogs.get(&(call_id.to_owned(), tag))
            && let Some(call) = self.calls.get(&key)
            && let Some(ack) = call.ack.clone()
        {
            self.tx.send_raw(ack, call.next_hop(), call.transport);
        }
    }

    fn on_failure(&mut self, _now: Instant, tx: TxKey) {
        let Some(&(key, purpose)) = self.owners.get(&tx) else {
            return;
        };
        match purpose {
            Purpose::Invite => {
                let end = self
                    .calls
                    .get(&key)
                    .and_then(|c| c.cancelled)
                    .unwrap_or(CallEnd::TransportFailure);
                self.end(key, end, Some(408), false);
            }
            Purpose::Bye | Purpose::Cancel | Purpose::Server => {}
        }
    }
}

/// What an INVITE of a call is built from, copied out so the call need not stay borrowed.
struct InviteParts {
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    transport: Transport,
}

impl InviteParts {
    fn of(call: &Call) -> Self {
        Self {
            from: call.local_with_tag(),
            to: call.remote_uri.clone(),
            call_id: call.call_id.clone(),
            cseq: call.local_cseq,
            transport: call.transport,
        }
    }
}

fn canonical(name: &str) -> &'static str {
    match name {
        "from" => "From",
        "to" => "To",
        _ => "Call-ID",
    }
}

fn strip_tag(value: &str) -> String {
    match value.rfind('>') {
        Some(i) => value[..=i].trim().to_owned(),
        None => format!("<{}>", value.split(';').next().unwrap_or(value).trim()),
    }
}

fn via_transport(req: &Request) -> Transport {
    let via = msg::header(&req.headers, "via").unwrap_or("");
    let proto = via.split_whitespace().next().unwrap_or("");
    match proto
        .rsplit('/')
        .next()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("TCP") => Transport::Tcp,
        Some("TLS") => Transport::Tls,
        _ => Transport::Udp,
    }
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS",
        Transport::Sctp => "SCTP",
        Transport::Ws => "WS",
        Transport::Wss => "WSS",
        _ => "UDP",
    }
}
