//! The media workers: plain threads, each owning the sockets of the calls given to it and
//! walking all of them from one 10 ms tick. On each tick the worker drains every call's
//! socket without blocking into the call's [`MediaSession`], lets bridged calls pass audio to
//! each other, and sends the frames each session has due. What runs on a call, and when, is
//! the session's business (`session.rs`, pure); sockets, threads, the tick, the port pool and
//! the channels are this file's, and no other module touches them. No call has a timer or a
//! task of its own, and nothing on the packet path allocates or takes a lock.
//!
//! The engine talks to a call through [`CallMedia`] (commands) and an event channel
//! ([`MediaEvent`]). Ports come from a configured range, even numbers only (RTCP would be
//! the odd one above), and go back to the pool when the call's media closes.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;

use crate::Audio;
use crate::amd::AmdConfig;
use crate::record::{Conversation, RecordOptions};
use crate::rtp::{Outgoing, RtpStats, StreamParams};
use crate::session::{Command, MediaSession};

pub use crate::session::{Collect, CollectEnd, LATE_MS, MediaEvent, PlayItem};

/// The workers' tick.
pub const TICK_MS: u64 = 10;
/// The longest conversation recorded (`<Dial record>`, `Record=true`): an hour, 57 MB of
/// audio held while it runs (both sides).
pub const MAX_CONVERSATION_MS: u64 = 3_600_000;

/// Datagrams read from one call's socket per tick at most (50 packets/s is one per 20 ms).
const READS_PER_TICK: usize = 32;
/// The worker's receive and send buffer: any datagram we take or send fits.
const BUF_LEN: usize = 2048;

/// Where media lives.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// The address sockets bind to (and SDP names, unless the caller advertises another).
    pub ip: IpAddr,
    pub port_min: u16,
    pub port_max: u16,
    /// Worker threads; 0 = one per available core.
    pub workers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no free RTP port in {0}-{1}")]
    NoPort(u16, u16),
    #[error("media port range {0}-{1} holds no even port")]
    EmptyRange(u16, u16),
    #[error("starting a media worker: {0}")]
    Spawn(io::Error),
}

/// What a worker is told, through its channel.
enum Msg {
    Open(Box<Call>),
    /// A command for one call's session.
    Call {
        id: u64,
        command: Command,
    },
    /// Record both directions of the call until `EndConversation` or the call's close; the
    /// recording comes back through `done`.
    RecordConversation {
        id: u64,
        max_ms: u64,
        done: oneshot::Sender<Box<Conversation>>,
    },
    /// Each call hears the other (both are on this worker).
    Bridge {
        id: u64,
        peer: u64,
    },
    Shutdown,
}

struct PortPool {
    free: VecDeque<u16>,
}

struct Shared {
    ip: IpAddr,
    range: (u16, u16),
    ports: Mutex<PortPool>,
    next_id: AtomicU64,
    open: AtomicUsize,
}

impl Shared {
    fn give_back(&self, port: u16) {
        if let Ok(mut p) = self.ports.lock() {
            p.free.push_back(port);
        }
    }
}

/// The media layer: the workers and the port pool.
pub struct Media {
    shared: Arc<Shared>,
    workers: Vec<mpsc::Sender<Msg>>,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
    next_worker: AtomicUsize,
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("ip", &self.shared.ip)
            .field("workers", &self.workers.len())
            .finish()
    }
}

/// A port bound for a call whose SDP is being written; [`Media::open`] starts its media.
/// Dropped unused, the port goes back to the pool.
pub struct Reservation {
    socket: Option<UdpSocket>,
    port: u16,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("port", &self.port)
            .finish()
    }
}

impl Reservation {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.socket.take().is_some() {
            self.shared.give_back(self.port);
        }
    }
}

/// The engine's handle on one call's media (the flow holds one, the SIP side another for
/// re-INVITEs). Dropping the last clone closes the media.
#[derive(Debug, Clone)]
pub struct CallMedia {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    id: u64,
    port: u16,
    worker: usize,
    tx: mpsc::Sender<Msg>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A stopped worker has closed the call already; the event channel said so.
        let _ = self.tx.send(Msg::Call {
            id: self.id,
            command: Command::Close,
        });
    }
}

impl Media {
    /// Starts the workers.
    pub fn start(config: &MediaConfig) -> Result<Media, MediaError> {
        let first = config.port_min + config.port_min % 2;
        let free: VecDeque<u16> = (first..=config.port_max).step_by(2).collect();
        if free.is_empty() {
            return Err(MediaError::EmptyRange(config.port_min, config.port_max));
        }
        let shared = Arc::new(Shared {
            ip: config.ip,
            range: (config.port_min, config.port_max),
            ports: Mutex::new(PortPool { free }),
            next_id: AtomicU64::new(1),
            open: AtomicUsize::new(0),
        });
        let n = match config.workers {
            0 => thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let epoch = Instant::now();
        let mut workers = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::channel();
            let shared = shared.clone();
            let t = thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || Worker::new(shared, epoch).run(rx))
                .map_err(MediaError::Spawn)?;
            workers.push(tx);
            threads.push(t);
        }
        Ok(Media {
            shared,
            workers,
            threads: Mutex::new(threads),
            next_worker: AtomicUsize::new(0),
        })
    }

    /// The address media sockets are bound to.
    pub fn ip(&self) -> IpAddr {
        self.shared.ip
    }

    /// Calls whose media is open.
    pub fn open_calls(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Ports not in use.
    pub fn free_ports(&self) -> usize {
        self.shared.ports.lock().map_or(0, |p| p.free.len())
    }

    /// Binds a free port for a call about to describe its media.
    pub fn reserve(&self) -> Result<Reservation, MediaError> {
        let (lo, hi) = self.shared.range;
        let mut pool = self
            .shared
            .ports
            .lock()
            .map_err(|_| MediaError::NoPort(lo, hi))?;
        // A port another program holds is skipped (and kept for later), at most once round.
        for _ in 0..pool.free.len() {
            let Some(port) = pool.free.pop_front() else {
                break;
            };
            match UdpSocket::bind(SocketAddr::new(self.shared.ip, port))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
            {
                Ok(socket) => {
                    return Ok(Reservation {
                        socket: Some(socket),
                        port,
                        shared: self.shared.clone(),
                    });
                }
                Err(_) => pool.free.push_back(port),
            }
        }
        Err(MediaError::NoPort(lo, hi))
    }

    /// Starts media on a reserved port with what SDP agreed; events arrive on the receiver.
    pub fn open(
        &self,
        reservation: Reservation,
        params: StreamParams,
    ) -> (CallMedia, UnboundedReceiver<MediaEvent>) {
        self.open_near(reservation, params, None)
    }

    /// As [`Media::open`], on the worker of `near` when given (calls to be bridged must share
    /// a worker).
    pub fn open_near(
        &self,
        mut reservation: Reservation,
        params: StreamParams,
        near: Option<&CallMedia>,
    ) -> (CallMedia, UnboundedReceiver<MediaEvent>) {
        let (events, rx) = unbounded_channel();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let worker = match near {
            Some(m) if m.inner.worker < self.workers.len() => m.inner.worker,
            _ => self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len(),
        };
        let tx = self.workers[worker].clone();
        let port = reservation.port;
        if let Some(socket) = reservation.socket.take() {
            let call = Box::new(Call {
                id,
                socket,
                port,
                events,
                session: MediaSession::new(
                    params,
                    Outgoing::new(rand::random(), rand::random(), rand::random()),
                ),
                bridged: None,
                conversation_done: None,
                sent: 0,
            });
            self.shared.open.fetch_add(1, Ordering::Relaxed);
            if let Err(mpsc::SendError(Msg::Open(call))) = tx.send(Msg::Open(call)) {
                // The worker is gone (shutdown): the call's media is closed at once.
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
                let _ = call.events.send(MediaEvent::Closed {
                    stats: RtpStats::default(),
                });
                self.shared.give_back(port);
            }
        }
        (
            CallMedia {
                inner: Arc::new(Handle {
                    id,
                    port,
                    worker,
                    tx,
                }),
            },
            rx,
        )
    }

    /// Stops the workers after closing every call's media.
    pub fn shutdown(&self) {
        for w in &self.workers {
            let _ = w.send(Msg::Shutdown);
        }
        let threads = self.threads.lock().map(|mut t| std::mem::take(&mut *t));
        for t in threads.unwrap_or_default() {
            let _ = t.join();
        }
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl CallMedia {
    /// Media for a call that has none yet (an inbound call still ringing while its flow fetches
    /// what to do): every command goes nowhere and no event ever comes.
    pub fn detached() -> CallMedia {
        let (tx, _) = mpsc::channel();
        CallMedia {
            inner: Arc::new(Handle {
                id: 0,
                port: 0,
                worker: usize::MAX,
                tx,
            }),
        }
    }

    /// Starts recording the conversation, both directions (what the peer says and what is sent
    /// to it), for at most `max_ms` (and [`MAX_CONVERSATION_MS`]). It comes back through the
    /// returned channel when `end_conversation` ends it or the media closes, whatever became of
    /// the caller's events (mix it with [`Conversation::finish`], off the async threads); the
    /// channel closes with nothing if another conversation recording was already running.
    pub fn record_conversation(&self, max_ms: u64) -> oneshot::Receiver<Box<Conversation>> {
        let (done, rx) = oneshot::channel();
        let _ = self.inner.tx.send(Msg::RecordConversation {
            id: self.id(),
            max_ms: max_ms.min(MAX_CONVERSATION_MS),
            done,
        });
        rx
    }

    /// Ends the conversation recording (nothing if none runs).
    pub fn end_conversation(&self) {
        self.send(Command::EndConversation);
    }

    /// Our RTP port.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Queues `items` to play `loops` times (0: until stopped). `barge_in`: a digit stops it.
    /// Replaces whatever was playing (which reports `PlayDone { interrupted: true }`) or
    /// digits still going out; a collection or recording goes on (see [`MediaSession`]).
    pub fn play(&self, items: Vec<PlayItem>, loops: u32, barge_in: bool) {
        self.send(Command::Play {
            items,
            loops,
            barge_in,
        });
    }

    /// Starts collecting digits (digits pressed during a barge-in prompt count), ending a
    /// recording or collection that ran; a prompt playing goes on, and the timeout waits for
    /// it.
    pub fn collect(&self, spec: Collect) {
        self.send(Command::Collect(spec));
    }

    /// Records the peer's audio, after `beep` if given (which replaces what was playing),
    /// ending a recording or collection that ran.
    pub fn record(&self, opts: RecordOptions, beep: Option<Arc<Audio>>) {
        self.send(Command::Record { opts, beep });
    }

    /// Sends digits as RFC 4733 events (`w` waits half a second), after any still going out;
    /// a prompt playing ends. Ignored if the peer did not offer telephone-event (`DigitsSent`
    /// comes at once).
    pub fn send_digits(&self, digits: &str) {
        self.send(Command::SendDigits(digits.to_owned()));
    }

    /// Ends whatever plays, collects, records or sends digits, each reporting as stopped, then
    /// reports `Stopped`.
    pub fn stop(&self) {
        self.send(Command::Stop);
    }

    /// Listens to the peer's first seconds and reports `Detected` (Twilio's
    /// `MachineDetection=Enable`).
    pub fn detect(&self, config: AmdConfig) {
        self.send(Command::Detect(config));
    }

    /// Connects this call's audio and `peer`'s both ways (a `<Dial>`): each hears the other
    /// whenever nothing of its own plays. `peer` must have been opened near this call
    /// ([`Media::open_near`]); false if not. The bridge ends when either closes.
    pub fn bridge(&self, peer: &CallMedia) -> bool {
        if peer.inner.worker != self.inner.worker {
            return false;
        }
        let _ = self.inner.tx.send(Msg::Bridge {
            id: self.id(),
            peer: peer.id(),
        });
        true
    }

    /// New SDP (a re-INVITE: hold, resume, a new address).
    pub fn update(&self, params: StreamParams) {
        self.send(Command::Update(params));
    }

    fn id(&self) -> u64 {
        self.inner.id
    }

    fn send(&self, command: Command) {
        let _ = self.inner.tx.send(Msg::Call {
            id: self.id(),
            command,
        });
    }
}

// ---------------------------------------------------------------------------------------
// The worker thread

/// One call on a worker: its socket and port, where its events go, and its session.
struct Call {
    id: u64,
    socket: UdpSocket,
    port: u16,
    events: UnboundedSender<MediaEvent>,
    session: MediaSession,
    /// The call this one is bridged to, on the same worker.
    bridged: Option<u64>,
    /// Where the running conversation recording goes.
    conversation_done: Option<oneshot::Sender<Box<Conversation>>>,
    /// Datagrams the socket took.
    sent: u64,
}

impl Call {
    /// Reads what has arrived (at most [`READS_PER_TICK`] datagrams) into the session, then
    /// ends its input for this tick.
    fn take_in(&mut self, now: u64, buf: &mut [u8; BUF_LEN]) {
        for _ in 0..READS_PER_TICK {
            match self.socket.recv_from(buf) {
                Ok((n, from)) => self.session.handle_packet(now, &buf[..n], from),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors from earlier sends (port unreachable) and the like.
                Err(_) => continue,
            }
        }
        self.session.handle_tick(now);
    }

    /// Sends the frames due, then hands the events on.
    fn send_due(&mut self, now: u64, buf: &mut [u8; BUF_LEN]) -> u64 {
        while let Some(t) = self.session.poll_transmit(now, buf) {
            if self.socket.send_to(&buf[..t.len], t.to).is_ok() {
                self.sent += 1;
            }
        }
        self.hand_on();
        self.session.take_late_frames()
    }

    /// Events go to the engine, a finished conversation recording to whoever waits for it.
    fn hand_on(&mut self) {
        while let Some(e) = self.session.poll_event() {
            let _ = self.events.send(e);
        }
        if let Some(c) = self.session.poll_conversation()
            && let Some(done) = self.conversation_done.take()
        {
            let _ = done.send(c);
        }
    }

    fn stats(&self) -> RtpStats {
        let mut s = self.session.stats();
        s.sent = self.sent;
        s
    }
}

struct Worker {
    shared: Arc<Shared>,
    epoch: Instant,
    calls: Vec<Box<Call>>,
    /// Where each call is in `calls`.
    index: HashMap<u64, usize>,
    buf: Box<[u8; BUF_LEN]>,
    totals: RtpStats,
    flushed: RtpStats,
    late: u64,
    last_flush_ms: u64,
}

impl Worker {
    fn new(shared: Arc<Shared>, epoch: Instant) -> Worker {
        Worker {
            shared,
            epoch,
            calls: Vec::new(),
            index: HashMap::new(),
            buf: Box::new([0; BUF_LEN]),
            totals: RtpStats::default(),
            flushed: RtpStats::default(),
            late: 0,
            last_flush_ms: 0,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut next = Instant::now();
        loop {
            let now = self.now_ms();
            loop {
                match rx.try_recv() {
                    Ok(Msg::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => {
                        self.close_all(now);
                        self.flush_metrics(now, true);
                        return;
                    }
                    Ok(m) => self.message(now, m),
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            // Every call's input first, then bridged audio, then sends: a bridged call's
            // audio reaches its peer in the tick it arrived.
            for call in &mut self.calls {
                call.take_in(now, &mut self.buf);
            }
            self.move_bridged_audio();
            for call in &mut self.calls {
                self.late += call.send_due(now, &mut self.buf);
            }
            self.flush_metrics(now, false);
            next += Duration::from_millis(TICK_MS);
            let t = Instant::now();
            if next > t {
                thread::sleep(next - t);
            } else if t - next > Duration::from_millis(LATE_MS) {
                // Far behind (the machine stalled): start afresh rather than spin.
                next = t;
            }
        }
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.index.get(&id).copied()
    }

    fn message(&mut self, now: u64, m: Msg) {
        match m {
            Msg::Open(call) => {
                self.index.insert(call.id, self.calls.len());
                self.calls.push(call);
            }
            Msg::Call { id, command } => {
                let Some(i) = self.position(id) else { return };
                self.calls[i].session.handle_command(now, command);
                if self.calls[i].session.is_closed() {
                    let call = self.calls.swap_remove(i);
                    self.index.remove(&call.id);
                    if let Some(moved) = self.calls.get(i) {
                        self.index.insert(moved.id, i);
                    }
                    self.close(call);
                } else {
                    self.calls[i].hand_on();
                }
            }
            Msg::RecordConversation { id, max_ms, done } => {
                let Some(i) = self.position(id) else { return };
                let call = &mut self.calls[i];
                // one at a time: a second start leaves the running one alone (and its
                // channel closes empty)
                if !call.session.records_conversation() {
                    call.conversation_done = Some(done);
                    call.session
                        .handle_command(now, Command::RecordConversation { max_ms });
                }
            }
            Msg::Bridge { id, peer } => {
                if let (Some(a), Some(b)) = (self.position(id), self.position(peer))
                    && a != b
                {
                    for (i, other) in [(a, peer), (b, id)] {
                        let call = &mut self.calls[i];
                        call.bridged = Some(other);
                        call.session.bridge();
                    }
                }
            }
            Msg::Shutdown => {}
        }
    }

    /// Hands each bridged call's new incoming audio to its peer.
    fn move_bridged_audio(&mut self) {
        for i in 0..self.calls.len() {
            let Some(peer) = self.calls[i].bridged else {
                continue;
            };
            let Some(j) = self.position(peer) else {
                self.calls[i].bridged = None;
                self.calls[i].session.unbridge();
                continue;
            };
            if let Ok([from, to]) = self.calls.get_disjoint_mut([i, j]) {
                from.session.pass_audio_to(&mut to.session);
            }
        }
    }

    fn close_all(&mut self, now: u64) {
        self.index.clear();
        for mut call in std::mem::take(&mut self.calls) {
            call.session.handle_command(now, Command::Close);
            self.close(call);
        }
    }

    /// Ends a closed call's media: what ran reports, the socket closes and its port goes back,
    /// and then the call hears `Closed` (so whoever waits for it finds the port free).
    fn close(&mut self, mut call: Box<Call>) {
        call.hand_on();
        let stats = call.stats();
        self.totals.add(&stats);
        let Call {
            socket,
            port,
            events,
            ..
        } = *call;
        drop(socket);
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        self.shared.give_back(port);
        let _ = events.send(MediaEvent::Closed { stats });
    }

    /// Counters go to `metrics` once a second (closed calls' totals plus open calls' own).
    fn flush_metrics(&mut self, now: u64, force: bool) {
        if !force && now.saturating_sub(self.last_flush_ms) < 1000 {
            return;
        }
        self.last_flush_ms = now;
        let mut cur = self.totals;
        for c in &self.calls {
            cur.add(&c.stats());
        }
        let f = self.flushed;
        metrics::counter!("callflow_media_packets_sent_total").increment(cur.sent - f.sent);
        metrics::counter!("callflow_media_packets_received_total")
            .increment(cur.received - f.received);
        metrics::counter!("callflow_media_packets_dropped_total")
            .increment(cur.dropped() - f.dropped());
        metrics::counter!("callflow_media_packets_lost_total").increment(cur.lost - f.lost);
        metrics::counter!("callflow_media_frames_late_total").increment(self.late);
        metrics::gauge!("callflow_media_calls")
            .set(self.shared.open.load(Ordering::Relaxed) as f64);
        self.late = 0;
        self.flushed = cur;
    }
}
