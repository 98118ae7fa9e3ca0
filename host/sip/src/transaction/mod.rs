//! RFC 3261 §17 transactions as a sans-IO state machine: client and server, INVITE and
//! non-INVITE, timers A–K (plus L and M from RFC 6026), matching by branch (§17.1.3, §17.2.3).
//! No sockets, no clock: the driver feeds datagrams and time in and drains transmits, events
//! and the next deadline out.

mod build;
pub(crate) use build::ack_for;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rsip::common::Transport;
use rsip::message::HeadersExt;
use rsip::prelude::{ToTypedHeader, UntypedHeader};
use rsip::{Method, Request, Response, SipMessage};

pub use build::response_to;

/// The branch prefix of RFC 3261 requests (§8.1.1.7); without it a request is matched the RFC
/// 2543 way.
const MAGIC_COOKIE: &str = "z9hG4bK";

/// Timer values and bounds. The defaults are RFC 3261's (§17.1.1.1, Table 4).
#[derive(Debug, Clone)]
pub struct Config {
    /// RTT estimate: first retransmission interval (A, E, G); 64·T1 is timers B, F, H, J, L, M.
    pub t1: Duration,
    /// Cap of the non-INVITE and G retransmission intervals.
    pub t2: Duration,
    /// How long the network may hold a message: timers I and K.
    pub t4: Duration,
    /// Live transactions, client and server together. A new request over the cap is refused
    /// with a stateless `503` ([`TxEvent::Refused`]); [`Transactions::send_request`] returns
    /// [`TxError::TooMany`]. Finished transactions stay for 64·T1 (timers J and L, 32 s by
    /// default) to absorb retransmissions, so a steady 400 calls/s keeps about 26,000 alive.
    pub max_transactions: usize,
    /// Send `100 Trying` as soon as an INVITE server transaction is created (§17.2.1 asks for
    /// it within 200 ms unless the TU answers first; sending at once is simpler and stops the
    /// client's timer A).
    pub send_trying: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            max_transactions: 200_000,
            send_trying: true,
        }
    }
}

/// A transaction handle, unique for the life of one [`Transactions`] (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxKey(u64);

impl fmt::Display for TxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tx{}", self.0)
    }
}

/// Bytes for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    /// From the top Via of the request (ours for a client transaction, the peer's for a server
    /// one). Anything but UDP is reliable: no retransmissions, no waits.
    pub transport: Transport,
    pub bytes: Vec<u8>,
    /// The transaction that sent it, to report a send failure with
    /// [`Transactions::handle_transport_error`]; `None` for stateless sends.
    pub tx: Option<TxKey>,
}

/// What the transaction layer tells the TU (the dialog/core layer).
#[derive(Debug, Clone, PartialEq)]
pub enum TxEvent {
    /// A new server transaction. Answer with [`Transactions::send_response`]. For a CANCEL,
    /// `cancels` is the INVITE server transaction it matches (§9.2), if it still exists.
    Request {
        key: TxKey,
        request: Request,
        from: SocketAddr,
        cancels: Option<TxKey>,
    },
    /// An ACK that is not absorbed by an INVITE server transaction: the ACK for a 2xx, which
    /// is the dialog's (§17.2.3, §13.3.1.4).
    Ack { request: Request, from: SocketAddr },
    /// A response for a client transaction. A repeat of the last provisional response is
    /// absorbed; retransmitted 2xx responses to an INVITE are passed up (the TU re-sends its
    /// ACK); retransmitted non-2xx final responses are absorbed (the transaction re-sends the
    /// ACK for an INVITE).
    Response { key: TxKey, response: Response },
    /// A response that matches no client transaction (§18.1.2), e.g. a 2xx retransmission
    /// after the INVITE transaction ended.
    StrayResponse {
        response: Response,
        from: SocketAddr,
    },
    /// Timer B or F (no final response), or H (no ACK for our non-2xx final response).
    Timeout { key: TxKey },
    /// The driver reported a send failure (§17.1.4, §17.2.4).
    TransportError { key: TxKey },
    /// The transaction is gone; its key is no longer valid. Every transaction ends with
    /// exactly one of these.
    Terminated { key: TxKey },
    /// A new request was refused with `503` because [`Config::max_transactions`] are live.
    Refused { method: Method, from: SocketAddr },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("{live} transactions are live, the configured maximum")]
    TooMany { live: usize },
    #[error("the request's top Via has no branch starting with z9hG4bK")]
    NoBranch,
    #[error("the message lacks a usable {0} header")]
    Header(&'static str),
    #[error("{0} with this branch and method is already live")]
    Duplicate(TxKey),
    #[error("ACK is sent outside transactions: use send_stateless")]
    Ack,
    #[error("{0} is unknown or terminated")]
    Unknown(TxKey),
    #[error("{0} is a client transaction")]
    NotServer(TxKey),
    #[error("{key} cannot send {status} in state {state:?}")]
    WrongState {
        key: TxKey,
        status: u16,
        state: State,
    },
}

/// A transaction's state (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2; Accepted from RFC 6026).
/// `Calling` is the INVITE client's first state, `Trying` the non-INVITE ones'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Calling,
    Trying,
    Proceeding,
    Completed,
    Accepted,
    Confirmed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InviteClient,
    NonInviteClient,
    InviteServer,
    NonInviteServer,
}

/// What a request or response is matched on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MatchKey {
    /// §17.1.3: top Via branch and CSeq method.
    Client { branch: String, method: String },
    /// §17.2.3: branch, sent-by and method (ACK counted as INVITE). For an RFC 2543 branch,
    /// `branch` is built from Call-ID, From tag, CSeq number and the whole top Via.
    Server {
        branch: String,
        sent_by: String,
        method: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    B,
    D,
    F,
    H,
    I,
    J,
    K,
    L,
    M,
}

#[derive(Debug)]
struct Tx {
    kind: Kind,
    state: State,
    reliable: bool,
    transport: Transport,
    peer: SocketAddr,
    match_key: MatchKey,
    /// Client: the request sent (kept to build the ACK). Server: `None`.
    request: Option<Request>,
    /// Client: the request's bytes, for A/E retransmissions.
    request_bytes: Vec<u8>,
    /// Server: the last response sent, re-sent on a request retransmission and by timer G.
    /// Client: the last provisional received (to absorb repeats).
    last_response: Option<Vec<u8>>,
    /// Client INVITE in Completed: the ACK re-sent for each retransmitted final response.
    ack: Option<Vec<u8>>,
    /// A, E or G: when it fires next and its current interval.
    retransmit: Option<(Instant, Duration)>,
    deadline: Option<(Instant, Wait)>,
}

impl Tx {
    fn wake(&self) -> Option<Instant> {
        match (self.retransmit, self.deadline) {
            (Some((r, _)), Some((d, _))) => Some(r.min(d)),
            (Some((r, _)), None) => Some(r),
            (None, Some((d, _))) => Some(d),
            (None, None) => None,
        }
    }
}

/// Counters for the driver's metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests and responses re-sent by timers A, E and G.
    pub retransmissions: u64,
    /// Request and response retransmissions from the peer absorbed by a transaction.
    pub absorbed: u64,
    /// Messages dropped because they cannot be matched (no top Via, bad CSeq).
    pub dropped: u64,
    /// New requests refused with 503 over the cap.
    pub refused: u64,
}

/// All transactions of one endpoint.
///
/// Inputs: [`handle_incoming`](Self::handle_incoming) for every parsed message,
/// [`handle_timeout`](Self::handle_timeout) when the deadline from
/// [`poll_timeout`](Self::poll_timeout) is reached,
/// [`handle_transport_error`](Self::handle_transport_error) when a send failed; commands
/// [`send_request`](Self::send_request), [`send_response`](Self::send_response) and
/// [`send_stateless`](Self::send_stateless).
///
/// **Drain order** after any input or command: [`poll_transmit`](Self::poll_transmit) until
/// `None` (send in that order), then [`poll_event`](Self::poll_event) until `None` (the TU may
/// issue commands while handling them; drain transmits again afterwards), then
/// [`poll_timeout`](Self::poll_timeout) to re-arm the single timer. Transmits are queued
/// before the events they cause, so sending first keeps the wire order.
///
/// **2xx responses to an INVITE are the TU's to retransmit** (§13.3.1.4): the server
/// transaction sends the first 2xx, then stays in Accepted (RFC 6026, timer L = 64·T1) where it
/// absorbs INVITE retransmissions and sends every further 2xx the TU passes to
/// [`send_response`](Self::send_response); the TU repeats the 2xx (T1 doubling up to T2) until
/// the ACK arrives as [`TxEvent::Ack`]. Likewise the ACK for a 2xx is the TU's, sent with
/// [`send_stateless`](Self::send_stateless).
///
/// Responses go to the source address of the request (symmetric response routing, as with
/// `rport`); honouring Via `received`/`maddr` is the driver's concern.
#[derive(Debug)]
pub struct Transactions {
    config: Config,
    next_id: u64,
    txs: HashMap<TxKey, Tx>,
    index: HashMap<MatchKey, TxKey>,
    /// Wake-ups by time. Entries go stale when a transaction's timers change; a stale entry
    /// is skipped when it reaches the top. At most a few per transaction (one per state
    /// change), so the heap is bounded by `max_transactions` times a small constant.
    timers: BinaryHeap<Reverse<(Instant, TxKey)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
    stats: Stats,
}

impl Transactions {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            next_id: 1,
            txs: HashMap::new(),
            index: HashMap::new(),
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A transaction's state, `None` once it is terminated.
    pub fn state(&self, key: TxKey) -> Option<State> {
        self.txs.get(&key).map(|t| t.state)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if self.txs.get(&key).and_then(Tx::wake) == Some(at) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// Starts a client transaction for `req` (not ACK) sent to `to`. The request must carry a
    /// top Via with a `z9hG4bK` branch; a CANCEL carries its INVITE's branch and gets its own
    /// transaction (matched with method CANCEL).
    pub fn send_request(
        &mut self,
        now: Instant,
        req: Request,
        to: SocketAddr,
    ) -> Result<TxKey, TxError> {
        if req.method == Method::Ack {
            return Err(TxError::Ack);
        }
        let via = req
            .via_header()
            .ok()
            .and_then(|v| v.typed().ok())
            .ok_or(TxError::Header("Via"))?;
        let branch = via
            .branch()
            .map(|b| b.to_string())
            .filter(|b| b.starts_with(MAGIC_COOKIE))
            .ok_or(TxError::NoBranch)?;
        let match_key = MatchKey::Client {
            branch,
            method: req.method.to_string(),
        };
        if let Some(&key) = self.index.get(&match_key) {
            return Err(TxError::Duplicate(key));
        }
        if self.txs.len() >= self.config.max_transactions {
            return Err(TxError::TooMany {
                live: self.txs.len(),
            });
        }
        let reliable = via.transport != Transport::Udp;
        let invite = req.method == Method::Invite;
        let t1 = self.config.t1;
        let key = self.new_key();
        let bytes = req.to_string().into_bytes();
        let tx = Tx {
            kind: if invite {
                Kind::InviteClient
            } else {
                Kind::NonInviteClient
            },
            state: if invite {
                State::Calling
            } else {
                State::Trying
            },
            reliable,
            transport: via.transport,
            peer: to,
            match_key: match_key.clone(),
            request: Some(req),
            request_bytes: bytes.clone(),
            last_response: None,
            ack: None,
            retransmit: (!reliable).then_some((now + t1, t1)),
            deadline: Some((now + 64 * t1, if invite { Wait::B } else { Wait::F })),
        };
        self.transmit(to, via.transport, bytes, Some(key));
        self.index.insert(match_key, key);
        self.txs.insert(key, tx);
        self.schedule(key);
        Ok(key)
    }

    /// Sends `resp` in server transaction `key`. Provisional responses keep it proceeding;
    /// a final one completes it (non-2xx to an INVITE: timer G re-sends it until the ACK);
    /// a 2xx to an INVITE moves it to Accepted, where further 2xx (the TU's retransmissions)
    /// are accepted too.
    pub fn send_response(
        &mut self,
        now: Instant,
        key: TxKey,
        resp: Response,
    ) -> Result<(), TxError> {
        let t1 = self.config.t1;
        let tx = self.txs.get_mut(&key).ok_or(TxError::Unknown(key))?;
        let status = resp.status_code.code();
        let wrong = |state| TxError::WrongState { key, status, state };
        let bytes = resp.to_string().into_bytes();
        let provisional = status < 200;
        match (tx.kind, tx.state) {
            (Kind::InviteClient | Kind::NonInviteClient, _) => return Err(TxError::NotServer(key)),
            (Kind::InviteServer, State::Proceeding) => {
                if provisional {
                } else if status < 300 {
                    tx.state = State::Accepted;
                    tx.deadline = Some((now + 64 * t1, Wait::L));
                } else {
                    tx.state = State::Completed;
                    if !tx.reliable {
                        tx.retransmit = Some((now + t1, t1));
                    }
                    tx.deadline = Some((now + 64 * t1, Wait::H));
                }
            }
            (Kind::InviteServer, State::Accepted) if (200..300).contains(&status) => {}
            (Kind::NonInviteServer, State::Trying | State::Proceeding) => {
                if provisional {
                    tx.state = State::Proceeding;
                } else {
                    tx.state = State::Completed;
                    tx.deadline = Some((
                        now + if tx.reliable { Duration::ZERO } else { 64 * t1 },
                        Wait::J,
                    ));
                }
            }
            (_, state) => return Err(wrong(state)),
        }
        tx.last_response = Some(bytes.clone());
        let (peer, transport) = (tx.peer, tx.transport);
        self.transmit(peer, transport, bytes, Some(key));
        self.schedule(key);
        self.expire_zero_waits(now, key);
        Ok(())
    }

    /// Queues `msg` for `to` outside any transaction: the ACK for a 2xx, a stateless response.
    pub fn send_stateless(&mut self, msg: SipMessage, to: SocketAddr) {
        let transport = msg
            .via_header()
            .ok()
            .and_then(|v| v.typed().ok())
            .map_or(Transport::Udp, |v| v.transport);
        self.transmit(to, transport, msg.to_string().into_bytes(), None);
    }

    /// Queues bytes for `to` outside any transaction: a response built for a message we could
    /// not parse, the UAS core's 2xx retransmissions, the UAC core's ACK for a 2xx.
    pub fn send_raw(&mut self, bytes: Vec<u8>, to: SocketAddr, transport: Transport) {
        self.transmit(to, transport, bytes, None);
    }

    /// Feeds one parsed message (see [`crate::parse`]) received from `from`.
    pub fn handle_incoming(&mut self, now: Instant, msg: SipMessage, from: SocketAddr) {
        match msg {
            SipMessage::Request(req) => self.incoming_request(now, req, from),
            SipMessage::Response(resp) => self.incoming_response(now, resp, from),
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.txs.get(&key).and_then(Tx::wake) == Some(at) {
                self.fire(now, key);
            }
        }
    }

    /// The TU gives up on `key` (e.g. an INVITE we cancelled whose final response never
    /// came): it ends now, with its `Terminated` event.
    pub fn abandon(&mut self, _now: Instant, key: TxKey) {
        self.terminate(key);
    }

    /// The driver could not send a transmit of `key`: the transaction ends.
    pub fn handle_transport_error(&mut self, _now: Instant, key: TxKey) {
        if self.txs.contains_key(&key) {
            self.events.push_back(TxEvent::TransportError { key });
            self.terminate(key);
        }
    }

    fn new_key(&mut self) -> TxKey {
        let key = TxKey(self.next_id);
        self.next_id += 1;
        key
    }

    fn transmit(
        &mut self,
        to: SocketAddr,
        transport: Transport,
        bytes: Vec<u8>,
        tx: Option<TxKey>,
    ) {
        self.transmits.push_back(Transmit {
            to,
            transport,
            bytes,
            tx,
        });
    }

    fn schedule(&mut self, key: TxKey) {
        if let Some(at) = self.txs.get(&key).and_then(Tx::wake) {
            self.timers.push(Reverse((at, key)));
        }
    }

    fn terminate(&mut self, key: TxKey) {
        if let Some(tx) = self.txs.remove(&key) {
            self.index.remove(&tx.match_key);
            self.events.push_back(TxEvent::Terminated { key });
        }
    }

    /// Reliable transports wait zero in D, I, J and K: end the transaction at once rather
    /// than through a timer.
    fn expire_zero_waits(&mut self, now: Instant, key: TxKey) {
        if let Some(tx) = self.txs.get(&key)
            && matches!(tx.deadline, Some((at, Wait::D | Wait::I | Wait::J | Wait::K)) if at <= now)
        {
            self.terminate(key);
        }
    }

    fn fire(&mut self, now: Instant, key: TxKey) {
        let t2 = self.config.t2;
        let Some(tx) = self.txs.get_mut(&key) else {
            return;
        };
        if let Some((at, wait)) = tx.deadline
            && at <= now
        {
            if matches!(wait, Wait::B | Wait::F | Wait::H) {
                self.events.push_back(TxEvent::Timeout { key });
            }
            self.terminate(key);
            return;
        }
        if let Some((at, interval)) = tx.retransmit
            && at <= now
        {
            let next = match (tx.kind, tx.state) {
                (Kind::InviteClient, _) => interval * 2,
                (Kind::NonInviteClient, State::Proceeding) => t2,
                _ => (interval * 2).min(t2),
            };
            tx.retransmit = Some((now + next, next));
            let bytes = match tx.kind {
                Kind::InviteClient | Kind::NonInviteClient => tx.request_bytes.clone(),
                Kind::InviteServer | Kind::NonInviteServer => {
                    tx.last_response.clone().unwrap_or_default()
                }
            };
            let (peer, transport) = (tx.peer, tx.transport);
            self.stats.retransmissions += 1;
            self.transmit(peer, transport, bytes, Some(key));
        }
        self.schedule(key);
    }

    fn incoming_request(&mut self, now: Instant, req: Request, from: SocketAddr) {
        let Some((match_key, transport)) = server_key(&req) else {
            self.stats.dropped += 1;
            return;
        };
        let t4 = self.config.t4;
        if req.method == Method::Ack {
            let Some(&key) = self.index.get(&match_key) else {
                self.events.push_back(TxEvent::Ack { request: req, from });
                return;
            };
            let Some(tx) = self.txs.get_mut(&key) else {
                return;
            };
            match tx.state {
                State::Completed => {
                    tx.state = State::Confirmed;
                    tx.retransmit = None;
                    let wait = if tx.reliable { Duration::ZERO } else { t4 };
                    tx.deadline = Some((now + wait, Wait::I));
                    self.schedule(key);
                    self.expire_zero_waits(now, key);
                }
                State::Accepted => self.events.push_back(TxEvent::Ack { request: req, from }),
                _ => self.stats.absorbed += 1,
            }
            return;
        }
        if let Some(&key) = self.index.get(&match_key) {
            self.stats.absorbed += 1;
            let Some(tx) = self.txs.get(&key) else {
                return;
            };
            // A retransmitted request gets the last response again; in Accepted the TU's own
            // 2xx retransmissions cover it (RFC 6026 §7.1).
            if tx.state != State::Accepted
                && let Some(bytes) = tx.last_response.clone()
            {
                let (peer, transport) = (tx.peer, tx.transport);
                self.transmit(peer, transport, bytes, Some(key));
            }
            return;
        }
        if self.txs.len() >= self.config.max_transactions {
            self.stats.refused += 1;
            let resp = response_to(&req, 503, None);
            self.transmit(from, transport, resp.to_string().into_bytes(), None);
            self.events.push_back(TxEvent::Refused {
                method: req.method,
                from,
            });
            return;
        }
        let cancels = match (&req.method, &match_key) {
            (
                Method::Cancel,
                MatchKey::Server {
                    branch, sent_by, ..
                },
            ) => self
                .index
                .get(&MatchKey::Server {
                    branch: branch.clone(),
                    sent_by: sent_by.clone(),
                    method: Method::Invite.to_string(),
                })
                .copied(),
            _ => None,
        };
        let invite = req.method == Method::Invite;
        let key = self.new_key();
        let mut tx = Tx {
            kind: if invite {
                Kind::InviteServer
            } else {
                Kind::NonInviteServer
            },
            state: if invite {
                State::Proceeding
            } else {
                State::Trying
            },
            reliable: transport != Transport::Udp,
            transport,
            peer: from,
            match_key: match_key.clone(),
            request: None,
            request_bytes: Vec::new(),
            last_response: None,
            ack: None,
            retransmit: None,
            deadline: None,
        };
        if invite && self.config.send_trying {
            let trying = response_to(&req, 100, None).to_string().into_bytes();
            tx.last_response = Some(trying.clone());
            self.transmit(from, transport, trying, Some(key));
        }
        self.index.insert(match_key, key);
        self.txs.insert(key, tx);
        self.events.push_back(TxEvent::Request {
            key,
            request: req,
            from,
            cancels,
        });
    }

    fn incoming_response(&mut self, now: Instant, resp: Response, from: SocketAddr) {
        let Some(match_key) = client_key(&resp) else {
            self.stats.dropped += 1;
            return;
        };
        let Some(&key) = self.index.get(&match_key) else {
            self.events.push_back(TxEvent::StrayResponse {
                response: resp,
                from,
            });
            return;
        };
        let Some(tx) = self.txs.get_mut(&key) else {
            return;
        };
        let (t1, t4) = (self.config.t1, self.config.t4);
        let status = resp.status_code.code();
        let mut pass_up = true;
        match (tx.kind, tx.state) {
            (_, State::Calling | State::Trying | State::Proceeding) if status < 200 => {
                let bytes = resp.to_string().into_bytes();
                if tx.last_response.as_ref() == Some(&bytes) {
                    pass_up = false;
                } else {
                    tx.last_response = Some(bytes);
                }
                if tx.kind == Kind::InviteClient {
                    // Timer B covers Calling only: once the far end proceeds, how long to
                    // ring is the TU's decision.
                    tx.retransmit = None;
                    tx.deadline = None;
                }
                tx.state = State::Proceeding;
            }
            (Kind::InviteClient, State::Calling | State::Proceeding) if status < 300 => {
                tx.state = State::Accepted;
                tx.retransmit = None;
                tx.deadline = Some((now + 64 * t1, Wait::M));
            }
            (Kind::InviteClient, State::Calling | State::Proceeding) => {
                let ack = tx.request.as_ref().map(|req| build::ack_for(req, &resp));
                let ack = ack.map(|a| a.to_string().into_bytes()).unwrap_or_default();
                tx.ack = Some(ack.clone());
                tx.state = State::Completed;
                tx.retransmit = None;
                let wait = if tx.reliable {
                    Duration::ZERO
                } else {
                    // Timer D: at least 32 s, to absorb the final response's retransmissions.
                    (64 * t1).max(Duration::from_secs(32))
                };
                tx.deadline = Some((now + wait, Wait::D));
                let (peer, transport) = (tx.peer, tx.transport);
                self.transmit(peer, transport, ack, Some(key));
            }
            (Kind::InviteClient, State::Completed) => {
                pass_up = false;
                if let Some(ack) = tx.ack.clone() {
                    let (peer, transport) = (tx.peer, tx.transport);
                    self.transmit(peer, transport, ack, Some(key));
                }
            }
            (Kind::InviteClient, State::Accepted) => pass_up = (200..300).contains(&status),
            (Kind::NonInviteClient, State::Trying | State::Proceeding) => {
                tx.state = State::Completed;
                tx.retransmit = None;
                let wait = if tx.reliable { Duration::ZERO } else { t4 };
                tx.deadline = Some((now + wait, Wait::K));
            }
            _ => pass_up = false,
        }
        if pass_up {
            self.events.push_back(TxEvent::Response {
                key,
                response: resp,
            });
        } else {
            self.stats.absorbed += 1;
        }
        self.schedule(key);
        self.expire_zero_waits(now, key);
    }
}

/// The top Via, typed.
fn top_via(msg: &impl HeadersExt) -> Option<rsip::typed::Via> {
    msg.via_header().ok()?.typed().ok()
}

fn cseq_method(msg: &impl HeadersExt) -> Option<(u32, Method)> {
    let c = msg.cseq_header().ok()?.typed().ok()?;
    Some((c.seq, c.method))
}

/// §17.1.3: branch of the top Via and CSeq method.
fn client_key(resp: &Response) -> Option<MatchKey> {
    let branch = top_via(resp)?.branch()?.to_string();
    let (_, method) = cseq_method(resp)?;
    Some(MatchKey::Client {
        branch,
        method: method.to_string(),
    })
}

/// §17.2.3: branch, sent-by and method, ACK as INVITE. Also returns the top Via's transport.
fn server_key(req: &Request) -> Option<(MatchKey, Transport)> {
    let via = top_via(req)?;
    let sent_by = via
        .sent_by()
        .host_with_port
        .to_string()
        .to_ascii_lowercase();
    let method = match req.method {
        Method::Ack => Method::Invite,
        m => m,
    }
    .to_string();
    let branch = match via.branch() {
        Some(b) if b.to_string().starts_with(MAGIC_COOKIE) => b.to_string(),
        // RFC 2543 peers: an approximation of §17.2.3's rules, enough for retransmissions
        // and the ACK of a non-2xx (same Call-ID, From tag, CSeq number and top Via).
        _ => {
            let (seq, _) = cseq_method(req)?;
            let call_id = req.call_id_header().ok()?.value().to_string();
            let from_tag = req
                .from_header()
                .ok()?
                .tag()
                .ok()
                .flatten()
                .map(|t| t.to_string())
                .unwrap_or_default();
            let via = req.via_header().ok()?.value().to_string();
            format!("2543;{call_id};{from_tag};{seq};{via}")
        }
    };
    Some((
        MatchKey::Server {
            branch,
            sent_by,
            method,
        },
        via.transport,
    ))
}
