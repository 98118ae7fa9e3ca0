//! The media workers: plain threads, each owning the sockets of the calls given to it and
//! driving them from one 10 ms tick. On each tick the worker runs the calls that need it: those
//! whose socket became readable (one `epoll` per worker, through `mio`, asked without waiting),
//! those a command came for, and those whose session asked for this tick
//! ([`MediaSession::poll_timeout`]: its next frame, a deadline, or every tick while it
//! records). It drains their sockets into their sessions, lets bridged calls pass audio to
//! each other, and sends the frames due. A call with nothing to send and nothing running (on
//! hold, or before the peer's address is known) costs no work at all; one that sends silence
//! costs a send per frame. What runs on a call, and when, is the session's business
//! (`session.rs`, pure); sockets, threads, the tick, the port pool and the channels are this
//! file's, and no other module touches them. No call has a timer or a task of its own, and
//! nothing on the packet path allocates or takes a lock.
//!
//! The engine talks to a call through [`CallMedia`] (commands) and an event channel
//! ([`MediaEvent`]). Ports come from a configured range, even numbers only (RTCP would be
//! the odd one above). A port's socket is bound the first time the port is used and kept:
//! when the call's media closes it goes back to the pool, and it is drained of stale
//! datagrams when it is reserved again.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;

use crate::Audio;
use crate::amd::AmdConfig;
use crate::record::{Conversation, RecordOptions};
use crate::rtp::{Outgoing, RtpStats, StreamParams};
use crate::session::{Command, MediaSession};
use crate::spool::Spool;

pub use crate::session::{Collect, CollectEnd, LATE_MS, MediaEvent, PlayItem};

/// The workers' tick.
pub const TICK_MS: u64 = 10;
/// The longest conversation recorded (`<Dial record>`, `Record=true`): an hour, 57 MB of
/// audio held while it runs (both sides).
pub const MAX_CONVERSATION_MS: u64 = 3_600_000;

/// Datagrams read from one call's socket per tick at most (50 packets/s is one per 20 ms); a
/// socket that holds more is read again at the next tick.
const READS_PER_TICK: usize = 32;
/// The worker's receive and send buffer: any datagram we take or send fits.
const BUF_LEN: usize = 2048;
/// Readiness events taken from the worker's `epoll` per call of `poll` (more are taken by
/// further calls in the same tick).
const EVENTS: usize = 1024;
/// Stale datagrams drained from a pooled socket when it is reserved again at most; a socket
/// still not empty then (someone floods the port) is closed and the port bound afresh.
const MAX_STALE: usize = 1024;

/// Where media lives.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// The address sockets bind to (and SDP names, unless the caller advertises another).
    pub ip: IpAddr,
    pub port_min: u16,
    pub port_max: u16,
    /// Worker threads; 0 = one per available core.
    pub workers: usize,
    /// Where recordings are written as they are made ([`crate::spool`]).
    pub spool_dir: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no free RTP port in {0}-{1}")]
    NoPort(u16, u16),
    #[error("media port range {0}-{1} holds no even port")]
    EmptyRange(u16, u16),
    #[error("starting a media worker: {0}")]
    Spawn(io::Error),
    #[error("starting the recording spool in {0}: {1}")]
    Spool(std::path::PathBuf, io::Error),
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
        tape: String,
        dual: bool,
        done: oneshot::Sender<Box<Conversation>>,
    },
    /// Each call hears the other (both are on this worker).
    Bridge {
        id: u64,
        peer: u64,
    },
    Shutdown,
}

/// The ports not in use, the longest free first (a port is reused as late as possible), each
/// with the socket bound to it once it has been used: at most one socket per port of the
/// configured range.
struct PortPool {
    free: VecDeque<(u16, Option<UdpSocket>)>,
}

struct Shared {
    ip: IpAddr,
    range: (u16, u16),
    ports: Mutex<PortPool>,
    next_id: AtomicU64,
    open: AtomicUsize,
}

impl Shared {
    fn give_back(&self, port: u16, socket: Option<UdpSocket>) {
        if let Ok(mut p) = self.ports.lock() {
            p.free.push_back((port, socket));
        }
    }

    fn take_port(&self) -> Option<(u16, Option<UdpSocket>)> {
        self.ports.lock().ok()?.free.pop_front()
    }

    /// The port's socket, ready for a new call: the pooled one drained of what came since its
    /// last call, or a new one.
    fn ready_socket(&self, port: u16, pooled: Option<UdpSocket>) -> io::Result<UdpSocket> {
        // a flooded one is closed, and the port bound afresh
        if let Some(socket) = pooled
            && drain(&socket)
        {
            return Ok(socket);
        }
        let socket = UdpSocket::bind(SocketAddr::new(self.ip, port))?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }
}

/// Reads and drops what waits on a pooled socket (the last call's peer may have gone on
/// sending); true once it is empty, false if it is not after [`MAX_STALE`] datagrams.
fn drain(socket: &UdpSocket) -> bool {
    // a datagram longer than the buffer is cut, and the rest dropped with it
    let mut buf = [0u8; 16];
    for _ in 0..MAX_STALE {
        match socket.recv_from(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            // ICMP errors from the last call's sends and the like
            Err(_) => {}
        }
    }
    false
}

/// The media layer: the workers and the port pool.
pub struct Media {
    shared: Arc<Shared>,
    spool: Spool,
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
        if let Some(socket) = self.socket.take() {
            self.shared.give_back(self.port, Some(socket));
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
        let free: VecDeque<(u16, Option<UdpSocket>)> = (first..=config.port_max)
            .step_by(2)
            .map(|p| (p, None))
            .collect();
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
        let spool = Spool::start(&config.spool_dir)
            .map_err(|e| MediaError::Spool(config.spool_dir.clone(), e))?;
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
            let poll = Poll::new().map_err(MediaError::Spawn)?;
            let t = thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || Worker::new(shared, epoch, poll).run(rx))
                .map_err(MediaError::Spawn)?;
            workers.push(tx);
            threads.push(t);
        }
        Ok(Media {
            shared,
            spool,
            workers,
            threads: Mutex::new(threads),
            next_worker: AtomicUsize::new(0),
        })
    }

    /// Where recordings are written as they are made.
    pub fn spool(&self) -> &Spool {
        &self.spool
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

    /// Takes a free port for a call about to describe its media, with its socket (bound
    /// now, or kept from the port's last call and drained).
    pub fn reserve(&self) -> Result<Reservation, MediaError> {
        let (lo, hi) = self.shared.range;
        // A port another program holds is skipped (and kept for later), at most once round.
        for _ in 0..self.free_ports() {
            let Some((port, pooled)) = self.shared.take_port() else {
                break;
            };
            match self.shared.ready_socket(port, pooled) {
                Ok(socket) => {
                    return Ok(Reservation {
                        socket: Some(socket),
                        port,
                        shared: self.shared.clone(),
                    });
                }
                Err(_) => self.shared.give_back(port, None),
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
                socket: mio::net::UdpSocket::from_std(socket),
                port,
                events,
                session: MediaSession::new(
                    params,
                    Outgoing::new(rand::random(), rand::random(), rand::random()),
                )
                .with_spool(self.spool.clone()),
                bridged: None,
                conversation_done: None,
                sent: 0,
                readable: false,
                watched: false,
                queued_at: 0,
            });
            self.shared.open.fetch_add(1, Ordering::Relaxed);
            if let Err(mpsc::SendError(Msg::Open(call))) = tx.send(Msg::Open(call)) {
                // The worker is gone (shutdown): the call's media is closed at once.
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
                let Call { socket, events, .. } = *call;
                let _ = events.send(MediaEvent::Closed {
                    stats: RtpStats::default(),
                });
                self.shared.give_back(port, Some(socket.into()));
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
    /// `tape` names its spool file; `dual` puts the sides on two channels.
    pub fn record_conversation(
        &self,
        max_ms: u64,
        tape: String,
        dual: bool,
    ) -> oneshot::Receiver<Box<Conversation>> {
        let (done, rx) = oneshot::channel();
        let _ = self.inner.tx.send(Msg::RecordConversation {
            id: self.id(),
            max_ms: max_ms.min(MAX_CONVERSATION_MS),
            tape,
            dual,
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
    socket: mio::net::UdpSocket,
    port: u16,
    events: UnboundedSender<MediaEvent>,
    session: MediaSession,
    /// The call this one is bridged to, on the same worker.
    bridged: Option<u64>,
    /// Where the running conversation recording goes.
    conversation_done: Option<oneshot::Sender<Box<Conversation>>>,
    /// Datagrams the socket took.
    sent: u64,
    /// The socket may hold datagrams: read it at this tick.
    readable: bool,
    /// The socket is registered with the worker's `epoll` (if registering failed, it is read
    /// at every tick instead).
    watched: bool,
    /// The last tick the call was queued to run in (it runs once per tick at most).
    queued_at: u64,
}

impl Call {
    /// Reads what has arrived (at most [`READS_PER_TICK`] datagrams) into the session, then
    /// ends its input for this tick. True if the socket may hold more.
    fn take_in(&mut self, now: u64, buf: &mut [u8; BUF_LEN]) -> bool {
        let mut more = false;
        if std::mem::take(&mut self.readable) {
            // `epoll` says so once per arrival (edge-triggered): read until it is empty
            more = true;
            for _ in 0..READS_PER_TICK {
                match self.socket.recv_from(buf) {
                    Ok((n, from)) => self.session.handle_packet(now, &buf[..n], from),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        more = false;
                        break;
                    }
                    // ICMP errors from earlier sends (port unreachable) and the like.
                    Err(_) => continue,
                }
            }
        }
        self.session.handle_tick(now);
        more || !self.watched
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

/// When a call whose session said nothing (`poll_timeout` None) needs a tick: never, until a
/// packet or a command comes.
const NEVER: u64 = u64::MAX;

struct Worker {
    shared: Arc<Shared>,
    epoch: Instant,
    /// Readiness of the calls' sockets; a call's token is its slot.
    poll: Poll,
    events: Events,
    /// The calls by slot; None: a free slot (in `free_slots`).
    slots: Vec<Option<Box<Call>>>,
    free_slots: Vec<usize>,
    /// When each slot's call next needs a tick, in ms ([`NEVER`] for free slots): one word
    /// per call, scanned at every tick.
    due: Vec<u64>,
    /// Where each call is in `slots`, by id.
    index: HashMap<u64, usize>,
    /// The slots to run at this tick, each once.
    queue: Vec<usize>,
    /// Slots whose sockets are to be read at the next tick (more waited than a tick reads,
    /// or the socket is not watched).
    unread: Vec<usize>,
    /// Ticks so far.
    tick: u64,
    buf: Box<[u8; BUF_LEN]>,
    totals: RtpStats,
    flushed: RtpStats,
    late: u64,
    last_flush_ms: u64,
}

/// Queues the call in `slot` to run at `tick` (once), its socket to be read if `read`.
fn enqueue(
    slots: &mut [Option<Box<Call>>],
    queue: &mut Vec<usize>,
    tick: u64,
    slot: usize,
    read: bool,
) {
    let Some(Some(call)) = slots.get_mut(slot) else {
        return;
    };
    call.readable |= read;
    if call.queued_at != tick {
        call.queued_at = tick;
        queue.push(slot);
    }
}

impl Worker {
    fn new(shared: Arc<Shared>, epoch: Instant, poll: Poll) -> Worker {
        Worker {
            shared,
            epoch,
            poll,
            events: Events::with_capacity(EVENTS),
            slots: Vec::new(),
            free_slots: Vec::new(),
            due: Vec::new(),
            index: HashMap::new(),
            queue: Vec::new(),
            unread: Vec::new(),
            tick: 0,
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
            self.tick += 1;
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
            self.gather(now);
            self.run_queued(now);
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

    /// Queues the calls to run at this tick: readable sockets, sockets left unread, and
    /// calls whose time has come (a command or an opening makes it now).
    fn gather(&mut self, now: u64) {
        let Worker {
            poll,
            events,
            slots,
            queue,
            unread,
            due,
            tick,
            ..
        } = self;
        // Each ready socket is reported once; a full batch may leave some for another call.
        // Bounded: a batch holds at least one new socket, and there are so many.
        for _ in 0..=slots.len() / EVENTS {
            if poll.poll(events, Some(Duration::ZERO)).is_err() {
                // interrupted: the rest at the next tick
                break;
            }
            let mut taken = 0;
            for e in events.iter() {
                taken += 1;
                enqueue(slots, queue, *tick, e.token().0, true);
            }
            if taken < EVENTS {
                break;
            }
        }
        for slot in unread.drain(..) {
            enqueue(slots, queue, *tick, slot, true);
        }
        for (slot, &at) in due.iter().enumerate() {
            if at <= now {
                enqueue(slots, queue, *tick, slot, false);
            }
        }
    }

    /// Runs the queued calls: every call's input first, then bridged audio, then sends (a
    /// bridged call's audio reaches its peer in the tick it arrived); then each says when it
    /// next needs a tick.
    fn run_queued(&mut self, now: u64) {
        for &slot in &self.queue {
            if let Some(call) = self.slots[slot].as_mut()
                && call.take_in(now, &mut self.buf)
            {
                self.unread.push(slot);
            }
        }
        self.move_bridged_audio();
        for &slot in &self.queue {
            if let Some(call) = self.slots[slot].as_mut() {
                self.late += call.send_due(now, &mut self.buf);
                // a time already past: the next tick
                self.due[slot] = call
                    .session
                    .poll_timeout()
                    .map_or(NEVER, |t| t.max(now + 1));
            }
        }
        self.queue.clear();
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.index.get(&id).copied()
    }

    fn call_mut(&mut self, id: u64) -> Option<(usize, &mut Call)> {
        let slot = self.position(id)?;
        Some((slot, self.slots[slot].as_deref_mut()?))
    }

    fn message(&mut self, now: u64, m: Msg) {
        match m {
            Msg::Open(mut call) => {
                let slot = match self.free_slots.pop() {
                    Some(s) => s,
                    None => {
                        self.slots.push(None);
                        self.due.push(NEVER);
                        self.slots.len() - 1
                    }
                };
                call.watched = self
                    .poll
                    .registry()
                    .register(&mut call.socket, Token(slot), Interest::READABLE)
                    .is_ok();
                // what came before it was watched
                call.readable = true;
                self.index.insert(call.id, slot);
                self.slots[slot] = Some(call);
                self.due[slot] = now;
            }
            Msg::Call { id, command } => {
                let Some((slot, call)) = self.call_mut(id) else {
                    return;
                };
                call.session.handle_command(now, command);
                if call.session.is_closed() {
                    self.close(slot);
                } else {
                    call.hand_on();
                    self.due[slot] = now;
                }
            }
            Msg::RecordConversation {
                id,
                max_ms,
                tape,
                dual,
                done,
            } => {
                let Some((slot, call)) = self.call_mut(id) else {
                    return;
                };
                // one at a time: a second start leaves the running one alone (and its
                // channel closes empty)
                if !call.session.records_conversation() {
                    call.conversation_done = Some(done);
                    call.session
                        .handle_command(now, Command::RecordConversation { max_ms, tape, dual });
                    self.due[slot] = now;
                }
            }
            Msg::Bridge { id, peer } => {
                if let (Some(a), Some(b)) = (self.position(id), self.position(peer))
                    && a != b
                {
                    for (slot, other) in [(a, peer), (b, id)] {
                        if let Some(call) = self.slots[slot].as_mut() {
                            call.bridged = Some(other);
                            call.session.bridge();
                            self.due[slot] = now;
                        }
                    }
                }
            }
            Msg::Shutdown => {}
        }
    }

    /// Hands the new incoming audio of each queued bridged call to its peer (a call hears
    /// audio only in a tick it runs in).
    fn move_bridged_audio(&mut self) {
        for i in 0..self.queue.len() {
            let a = self.queue[i];
            let Some(peer) = self.slots[a].as_ref().and_then(|c| c.bridged) else {
                continue;
            };
            match self.position(peer) {
                Some(b) => {
                    if let Ok([Some(from), Some(to)]) = self.slots.get_disjoint_mut([a, b]) {
                        from.session.pass_audio_to(&mut to.session);
                    }
                }
                None => {
                    if let Some(call) = self.slots[a].as_mut() {
                        call.bridged = None;
                        call.session.unbridge();
                    }
                }
            }
        }
    }

    fn close_all(&mut self, now: u64) {
        for slot in 0..self.slots.len() {
            if let Some(call) = self.slots[slot].as_mut() {
                call.session.handle_command(now, Command::Close);
                self.close(slot);
            }
        }
    }

    /// Ends a closed call's media: what ran reports, its socket goes back to the pool with its
    /// port, and then the call hears `Closed` (so whoever waits for it finds the port free).
    fn close(&mut self, slot: usize) {
        let Some(mut call) = self.slots[slot].take() else {
            return;
        };
        self.free_slots.push(slot);
        self.due[slot] = NEVER;
        self.index.remove(&call.id);
        call.hand_on();
        let stats = call.stats();
        self.totals.add(&stats);
        if call.watched {
            let _ = self.poll.registry().deregister(&mut call.socket);
        }
        let Call {
            socket,
            port,
            events,
            ..
        } = *call;
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        self.shared.give_back(port, Some(socket.into()));
        let _ = events.send(MediaEvent::Closed { stats });
    }

    /// Counters go to `metrics` once a second (closed calls' totals plus open calls' own).
    fn flush_metrics(&mut self, now: u64, force: bool) {
        if !force && now.saturating_sub(self.last_flush_ms) < 1000 {
            return;
        }
        self.last_flush_ms = now;
        let mut cur = self.totals;
        for c in self.slots.iter().flatten() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g711::Law;
    use std::os::fd::AsRawFd;

    /// The socket behind a reservation, as the kernel names it (`socket:[inode]`).
    fn socket_id(r: &Reservation) -> std::path::PathBuf {
        let fd = r.socket.as_ref().map(|s| s.as_raw_fd()).unwrap();
        std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap()
    }

    #[test]
    fn a_freed_port_keeps_its_socket_for_the_next_call() {
        let pid = std::process::id() as u16;
        let media = (0..50)
            .find_map(|i| {
                let port = 40_000 + (pid.wrapping_add(i * 7) % 1000) * 2;
                Media::start(&MediaConfig {
                    ip: [127, 0, 0, 1].into(),
                    port_min: port,
                    port_max: port,
                    workers: 1,
                    spool_dir: std::env::temp_dir().join("callflow-test-spool"),
                })
                .ok()
                .filter(|m| m.reserve().is_ok())
            })
            .expect("a free port");
        let r = media.reserve().unwrap();
        let first = socket_id(&r);
        assert!(first.to_string_lossy().starts_with("socket:"), "{first:?}");
        drop(r);
        let r = media.reserve().unwrap();
        assert_eq!(socket_id(&r), first, "kept after a reservation unused");
        let params = StreamParams {
            law: Law::Mu,
            payload_type: 0,
            telephone_event: None,
            ptime_ms: 20,
            remote: None,
            send: true,
        };
        let (call, mut events) = media.open(r, params);
        drop(call);
        while !matches!(
            events.blocking_recv(),
            Some(MediaEvent::Closed { .. }) | None
        ) {}
        let r = media.reserve().unwrap();
        assert_eq!(socket_id(&r), first, "kept after a call");
        assert!(media.reserve().is_err(), "one port, one socket");
    }
}
