//! The media workers: plain threads, each owning the sockets of the calls given to it and
//! walking all of them from one 10 ms tick. On each tick a call drains its socket without
//! blocking, hands audio and digits to what is running (prompts, digit collection, recording),
//! and sends the frames that have fallen due. No call has a timer or a task of its own, and
//! nothing on the packet path allocates or takes a lock.
//!
//! The engine talks to a call through [`CallMedia`] (commands) and an event channel
//! ([`MediaEvent`]). Ports come from a configured range, even numbers only (RTCP would be
//! the odd one above), and go back to the pool when the call's media closes.

use std::collections::VecDeque;
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
use crate::amd::{Amd, AmdConfig, Verdict};
use crate::dtmf::{InbandDetector, Rfc4733Receiver, Rfc4733Sender, TelephoneEvent};
use crate::g711::{self, Law};
use crate::record::{Conversation, RecordOptions, Recorder, Recording, StopReason};
use crate::rtp::{Accepted, Frame, Incoming, MAX_PACKET, Outgoing, RtpStats, StreamParams};

/// The workers' tick.
pub const TICK_MS: u64 = 10;
/// A frame sent this much after it was due counts as late (the quality bar of the benchmark).
pub const LATE_MS: u64 = 40;
/// The longest conversation recorded (`<Dial record>`, `Record=true`): an hour, 57 MB of
/// audio held while it runs (both sides).
pub const MAX_CONVERSATION_MS: u64 = 3_600_000;

/// Audio a bridged call holds for its peer at most (older samples are dropped: the legs'
/// clocks drift, and a late leg must not build up delay).
const BRIDGE_MAX_SAMPLES: usize = 1600;
/// A peer that has sent no audio for this long is taken to be silent (recordings are padded).
const SILENT_PEER_MS: u64 = 200;
/// Datagrams read from one call's socket per tick at most (50 packets/s is one per 20 ms).
const READS_PER_TICK: usize = 32;
/// Length of one RFC 4733 digit we send, and the pause `w` stands for in Twilio's digits.
const DIGIT_MS: u32 = 100;
const DIGIT_GAP_MS: u32 = 60;
const DIGIT_WAIT_MS: u32 = 500;

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

/// What plays: audio, or silence (`<Pause>`).
#[derive(Debug, Clone)]
pub enum PlayItem {
    Audio(Arc<Audio>),
    Silence { ms: u32 },
}

/// Digit collection with `<Gather>`'s semantics. The timeout runs only while nothing plays,
/// and starts again after each digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collect {
    /// Stop after this many digits (None: only the timeout or the finish key end it).
    pub num_digits: Option<u32>,
    pub timeout_ms: u64,
    /// The key that ends input; it is not part of the digits.
    pub finish_on_key: Option<char>,
}

/// Why a collection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectEnd {
    NumDigits,
    FinishKey,
    Timeout,
    Stopped,
}

/// What a call's media reports.
#[derive(Debug)]
pub enum MediaEvent {
    /// Everything queued by `play` has been sent (or was cut short by a digit or `stop`).
    PlayDone {
        interrupted: bool,
    },
    /// A digit from the peer (RFC 4733, or in-band when the peer does not do RFC 4733), with
    /// the worker's time in ms.
    Digit {
        digit: char,
        at_ms: u64,
    },
    Collected {
        digits: String,
        end: CollectEnd,
    },
    Recorded(Box<Recording>),
    /// The digits queued by `send_digits` have gone out.
    DigitsSent,
    /// Answering-machine detection has decided.
    Detected(Verdict),
    /// A `stop` has been carried out: what it ended has reported before this, so anything
    /// after it is new.
    Stopped,
    /// The media is closed; the stream's counters.
    Closed {
        stats: RtpStats,
    },
}

enum Command {
    Open(Box<Call>),
    Play {
        id: u64,
        items: Vec<PlayItem>,
        loops: u32,
        barge_in: bool,
    },
    Collect {
        id: u64,
        spec: Collect,
    },
    Record {
        id: u64,
        opts: RecordOptions,
        beep: Option<Arc<Audio>>,
    },
    SendDigits {
        id: u64,
        digits: String,
    },
    Stop {
        id: u64,
    },
    Update {
        id: u64,
        params: StreamParams,
    },
    /// Answering-machine detection on the call's incoming audio.
    Detect {
        id: u64,
        config: AmdConfig,
    },
    /// Record both directions of the call until `EndConversation` or the call's close.
    RecordConversation {
        id: u64,
        max_ms: u64,
        done: oneshot::Sender<Box<Conversation>>,
    },
    EndConversation {
        id: u64,
    },
    /// Each call hears the other (both are on this worker).
    Bridge {
        id: u64,
        peer: u64,
    },
    Close {
        id: u64,
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
    workers: Vec<mpsc::Sender<Command>>,
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
    tx: mpsc::Sender<Command>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A stopped worker has closed the call already; the event channel said so.
        let _ = self.tx.send(Command::Close { id: self.id });
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
            let call = Call::new(id, socket, port, params, events);
            self.shared.open.fetch_add(1, Ordering::Relaxed);
            if let Err(mpsc::SendError(Command::Open(call))) = tx.send(Command::Open(call)) {
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
            let _ = w.send(Command::Shutdown);
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
        self.send(Command::RecordConversation {
            id: self.id(),
            max_ms: max_ms.min(MAX_CONVERSATION_MS),
            done,
        });
        rx
    }

    /// Ends the conversation recording (nothing if none runs).
    pub fn end_conversation(&self) {
        self.send(Command::EndConversation { id: self.id() });
    }

    /// Our RTP port.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Queues `items` to play `loops` times (0: until stopped). `barge_in`: a digit stops it.
    /// Replaces whatever was playing (which reports `PlayDone { interrupted: true }`).
    pub fn play(&self, items: Vec<PlayItem>, loops: u32, barge_in: bool) {
        self.send(Command::Play {
            id: self.id(),
            items,
            loops,
            barge_in,
        });
    }

    /// Starts collecting digits (digits pressed during a barge-in prompt count).
    pub fn collect(&self, spec: Collect) {
        self.send(Command::Collect {
            id: self.id(),
            spec,
        });
    }

    /// Records the peer's audio, after `beep` if given.
    pub fn record(&self, opts: RecordOptions, beep: Option<Arc<Audio>>) {
        self.send(Command::Record {
            id: self.id(),
            opts,
            beep,
        });
    }

    /// Sends digits as RFC 4733 events (`w` waits half a second). Ignored if the peer did not
    /// offer telephone-event.
    pub fn send_digits(&self, digits: &str) {
        self.send(Command::SendDigits {
            id: self.id(),
            digits: digits.to_owned(),
        });
    }

    /// Ends whatever plays, collects, records or sends digits, each reporting as stopped, then
    /// reports `Stopped`.
    pub fn stop(&self) {
        self.send(Command::Stop { id: self.id() });
    }

    /// Listens to the peer's first seconds and reports `Detected` (Twilio's
    /// `MachineDetection=Enable`).
    pub fn detect(&self, config: AmdConfig) {
        self.send(Command::Detect {
            id: self.id(),
            config,
        });
    }

    /// Connects this call's audio and `peer`'s both ways (a `<Dial>`): each hears the other
    /// whenever nothing of its own plays. `peer` must have been opened near this call
    /// ([`Media::open_near`]); false if not. The bridge ends when either closes.
    pub fn bridge(&self, peer: &CallMedia) -> bool {
        if peer.inner.worker != self.inner.worker {
            return false;
        }
        self.send(Command::Bridge {
            id: self.id(),
            peer: peer.id(),
        });
        true
    }

    /// New SDP (a re-INVITE: hold, resume, a new address).
    pub fn update(&self, params: StreamParams) {
        self.send(Command::Update {
            id: self.id(),
            params,
        });
    }

    fn id(&self) -> u64 {
        self.inner.id
    }

    fn send(&self, c: Command) {
        let _ = self.inner.tx.send(c);
    }
}

// ---------------------------------------------------------------------------------------
// One call

struct Playing {
    items: Vec<PlayItem>,
    index: usize,
    offset: usize,
    /// Rounds still to play after this one; None: forever.
    loops_left: Option<u32>,
    barge_in: bool,
}

impl Playing {
    /// Fills `frame` from the queue; returns true when the queue ran out (the rest of the
    /// frame is silence).
    fn fill(&mut self, law: Law, frame: &mut [u8]) -> bool {
        let mut at = 0;
        while at < frame.len() {
            let Some(item) = self.items.get(self.index) else {
                match &mut self.loops_left {
                    Some(0) => {
                        frame[at..].fill(silence_byte(law));
                        return true;
                    }
                    Some(n) => *n -= 1,
                    None => {}
                }
                if self.items.iter().all(is_empty_item) {
                    frame[at..].fill(silence_byte(law));
                    return true;
                }
                self.index = 0;
                self.offset = 0;
                continue;
            };
            let (len, src) = match item {
                PlayItem::Audio(a) => (a.len(), Some(a.samples(law))),
                PlayItem::Silence { ms } => (*ms as usize * 8, None),
            };
            let n = (len - self.offset.min(len)).min(frame.len() - at);
            match src {
                Some(s) => frame[at..at + n].copy_from_slice(&s[self.offset..self.offset + n]),
                None => frame[at..at + n].fill(silence_byte(law)),
            }
            at += n;
            self.offset += n;
            if self.offset >= len {
                self.index += 1;
                self.offset = 0;
            }
        }
        false
    }
}

fn is_empty_item(i: &PlayItem) -> bool {
    match i {
        PlayItem::Audio(a) => a.is_empty(),
        PlayItem::Silence { ms } => *ms == 0,
    }
}

/// The byte of silence in each law (the code for 0).
fn silence_byte(law: Law) -> u8 {
    g711::encode_sample(law, 0)
}

struct Collecting {
    spec: Collect,
    digits: String,
    deadline_ms: Option<u64>,
}

struct Recording_ {
    recorder: Recorder,
    start_ms: u64,
    /// Samples given to the recorder, to pad with silence what never arrived.
    samples: u64,
}

struct SendingDigit {
    packets: Rfc4733Sender,
    timestamp: u32,
}

enum DigitStep {
    Digit(char),
    Wait { ms: u32 },
}

struct Call {
    id: u64,
    socket: UdpSocket,
    port: u16,
    params: StreamParams,
    out: Outgoing,
    inc: Incoming,
    events: UnboundedSender<MediaEvent>,
    next_frame_ms: Option<u64>,
    playing: Option<Playing>,
    collecting: Option<Collecting>,
    recording: Option<Recording_>,
    /// A `record` waiting for its beep to finish.
    record_after_play: Option<RecordOptions>,
    digits_out: VecDeque<DigitStep>,
    sending: Option<SendingDigit>,
    wait_frames: u32,
    dtmf_in: Rfc4733Receiver,
    inband: InbandDetector,
    pcm: Vec<i16>,
    pending_digits: Vec<char>,
    /// When the peer's audio last arrived.
    last_audio_ms: u64,
    /// Answering-machine detection, while it runs.
    amd: Option<Amd>,
    /// The call this one is bridged to, on the same worker.
    bridged: Option<u64>,
    /// This call's incoming audio, waiting to go to its peer.
    bridge_out: VecDeque<i16>,
    /// The peer's audio, waiting to be sent to this call.
    bridge_in: VecDeque<i16>,
    /// `<Dial record>` or `Record=true`: both directions while it runs, and where it goes.
    conversation: Option<(Box<Conversation>, oneshot::Sender<Box<Conversation>>)>,
}

impl Call {
    fn new(
        id: u64,
        socket: UdpSocket,
        port: u16,
        params: StreamParams,
        events: UnboundedSender<MediaEvent>,
    ) -> Box<Call> {
        Box::new(Call {
            id,
            socket,
            port,
            params,
            out: Outgoing::new(rand::random(), rand::random(), rand::random()),
            inc: Incoming::default(),
            events,
            next_frame_ms: None,
            playing: None,
            collecting: None,
            recording: None,
            record_after_play: None,
            digits_out: VecDeque::new(),
            sending: None,
            wait_frames: 0,
            dtmf_in: Rfc4733Receiver::default(),
            inband: InbandDetector::default(),
            pcm: Vec::with_capacity(480),
            pending_digits: Vec::new(),
            last_audio_ms: 0,
            amd: None,
            bridged: None,
            bridge_out: VecDeque::new(),
            bridge_in: VecDeque::new(),
            conversation: None,
        })
    }

    fn emit(&self, e: MediaEvent) {
        let _ = self.events.send(e);
    }

    /// The first half of a tick: read and hand on (bridged audio waits in `bridge_out` for the
    /// worker to move it). [`Call::send_due`] is the second half.
    fn take_in(&mut self, now: u64, buf: &mut [u8; 2048]) {
        self.receive(now, buf);
        self.release(now, false);
        self.pad_recording(now);
        if let Some((c, _)) = self.conversation.as_mut()
            && now.saturating_sub(self.last_audio_ms) >= SILENT_PEER_MS
        {
            // a peer that sends nothing (hold, silence suppression) is silence, not a gap
            c.align_heard();
        }
        for d in std::mem::take(&mut self.pending_digits) {
            self.on_digit(now, d);
        }
        if let Some(c) = &self.collecting
            && self.playing.is_none()
            && c.deadline_ms.is_some_and(|d| now >= d)
        {
            self.finish_collect(CollectEnd::Timeout);
        }
    }

    fn receive(&mut self, now: u64, buf: &mut [u8; 2048]) {
        for _ in 0..READS_PER_TICK {
            let (n, from) = match self.socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors from earlier sends (port unreachable) and the like.
                Err(_) => continue,
            };
            match self.inc.accept(now, from, &buf[..n], &self.params) {
                Accepted::Audio => {
                    self.last_audio_ms = now;
                    if self.inc.is_full() {
                        self.release(now, false);
                    }
                }
                Accepted::Event { timestamp, payload } => {
                    if let Some(ev) = TelephoneEvent::parse(payload)
                        && let Some(d) = self.dtmf_in.on_packet(timestamp, &ev)
                    {
                        self.pending_digits.push(d);
                    }
                }
                Accepted::Dropped => {}
            }
        }
    }

    /// Audio released in order goes to the in-band detector and the recorder.
    fn release(&mut self, now: u64, flush: bool) {
        let Call {
            inc,
            params,
            pcm,
            recording,
            inband,
            pending_digits,
            bridged,
            bridge_out,
            amd,
            conversation,
            ..
        } = self;
        let law = params.law;
        let inband_on = params.telephone_event.is_none();
        let frame = params.frame_samples();
        let mut stop = None;
        let mut detected = None;
        inc.release(now, flush, |f| {
            pcm.clear();
            match f {
                Frame::Audio(p) => g711::decode(law, p, pcm),
                // Lost packets become silence, at most a second of it.
                Frame::Lost(n) => pcm.resize((n as usize * frame).min(8000), 0),
            }
            if inband_on && let Some(d) = inband.push(pcm) {
                pending_digits.push(d);
            }
            if let Some(a) = amd.as_mut()
                && let Some(v) = a.push(now, pcm)
            {
                detected = Some(v);
            }
            if let Some((c, _)) = conversation.as_mut() {
                c.heard(pcm);
            }
            if bridged.is_some() {
                bridge_out.extend(pcm.iter());
                let over = bridge_out.len().saturating_sub(BRIDGE_MAX_SAMPLES);
                bridge_out.drain(..over);
            }
            if let Some(r) = recording.as_mut() {
                r.samples += pcm.len() as u64;
                if stop.is_none() {
                    stop = r.recorder.push(now, pcm);
                }
            }
        });
        if let Some(reason) = stop {
            self.finish_record(reason);
        }
        // A peer that sends nothing still gets a verdict when the analysis time is up.
        if detected.is_none()
            && let Some(a) = self.amd.as_mut()
        {
            detected = a.push(now, &[]);
        }
        if let Some(v) = detected {
            self.amd = None;
            self.emit(MediaEvent::Detected(v));
        }
    }

    /// A peer that sends nothing is recorded as silence, so that silence and length limits
    /// end the recording in time. A peer whose packets are merely late (a busy machine, a
    /// stalled tick) is not padded: its audio is on its way and would land after the padding.
    fn pad_recording(&mut self, now: u64) {
        let Some(r) = self.recording.as_mut() else {
            return;
        };
        if now.saturating_sub(self.last_audio_ms.max(r.start_ms)) < SILENT_PEER_MS {
            return;
        }
        let expected = now.saturating_sub(r.start_ms) * 8;
        let slack = 60 * 8;
        if r.samples + slack >= expected {
            return;
        }
        let missing = (expected - r.samples - slack / 2) as usize;
        self.pcm.clear();
        self.pcm.resize(missing.min(8000), 0);
        r.samples += self.pcm.len() as u64;
        if let Some(reason) = r.recorder.push(now, &self.pcm) {
            self.finish_record(reason);
        }
    }

    fn on_digit(&mut self, now: u64, digit: char) {
        self.emit(MediaEvent::Digit { digit, at_ms: now });
        if self.playing.as_ref().is_some_and(|p| p.barge_in) {
            self.playing = None;
            self.emit(MediaEvent::PlayDone { interrupted: true });
            self.after_play(now);
        }
        if let Some(r) = self.recording.as_mut() {
            if let Some(reason) = r.recorder.digit(digit) {
                self.finish_record(reason);
            }
            return;
        }
        let Some(c) = self.collecting.as_mut() else {
            return;
        };
        if Some(digit) == c.spec.finish_on_key {
            self.finish_collect(CollectEnd::FinishKey);
            return;
        }
        c.digits.push(digit);
        if c.spec
            .num_digits
            .is_some_and(|n| c.digits.chars().count() >= n as usize)
        {
            self.finish_collect(CollectEnd::NumDigits);
            return;
        }
        c.deadline_ms = Some(now + c.spec.timeout_ms);
    }

    fn finish_collect(&mut self, end: CollectEnd) {
        if let Some(c) = self.collecting.take() {
            self.emit(MediaEvent::Collected {
                digits: c.digits,
                end,
            });
        }
    }

    fn finish_record(&mut self, reason: StopReason) {
        if let Some(r) = self.recording.take() {
            self.emit(MediaEvent::Recorded(Box::new(r.recorder.finish(reason))));
        }
    }

    /// Play has ended: the collection's timeout starts, a recording waiting for its beep
    /// begins.
    fn after_play(&mut self, now: u64) {
        if let Some(c) = self.collecting.as_mut()
            && c.deadline_ms.is_none()
        {
            c.deadline_ms = Some(now + c.spec.timeout_ms);
        }
        if let Some(opts) = self.record_after_play.take() {
            self.start_record(now, opts);
        }
    }

    fn start_record(&mut self, now: u64, opts: RecordOptions) {
        // Audio already waiting belongs before the recording.
        self.recording = Some(Recording_ {
            recorder: Recorder::new(opts, now),
            start_ms: now,
            samples: 0,
        });
    }

    fn send_due(&mut self, now: u64, buf: &mut [u8; 2048]) -> (u64, u64) {
        let ptime = self.params.ptime_ms as u64;
        let due = *self.next_frame_ms.get_or_insert(now);
        if now < due {
            return (0, 0);
        }
        // A worker that fell far behind does not burst: the missed frames are skipped (and
        // counted late: they never left).
        let mut due = due;
        let (mut sent, mut late) = (0, 0);
        if now - due > 3 * ptime {
            let missed = (now - due) / ptime;
            self.out.skip((missed * ptime * 8) as u32);
            if let Some((c, _)) = self.conversation.as_mut() {
                c.said(None, (missed * ptime * 8) as usize);
            }
            due += missed * ptime;
            if self.params.send {
                late += missed;
            }
        }
        while due <= now {
            if self.send_frame(now, buf) {
                sent += 1;
                if now - due > LATE_MS {
                    late += 1;
                }
            }
            due += ptime;
        }
        self.next_frame_ms = Some(due);
        (sent, late)
    }

    /// Sends one frame's worth: a DTMF event packet, prompt audio, or silence. Returns whether
    /// a packet left.
    fn send_frame(&mut self, now: u64, buf: &mut [u8; 2048]) -> bool {
        let samples = self.params.frame_samples();
        let dest = self.inc.latched().or(self.params.remote);
        let sending = self.params.send && dest.is_some_and(|d| !d.ip().is_unspecified());
        let mut packet = [0u8; MAX_PACKET];
        let mut len = 0;
        // Digits take the place of audio while they last.
        if self.sending.is_none() && self.wait_frames == 0 {
            self.next_digit_step();
        }
        if self.wait_frames > 0 {
            self.wait_frames -= 1;
            if self.wait_frames == 0 && self.sending.is_none() && self.digits_out.is_empty() {
                self.emit(MediaEvent::DigitsSent);
            }
        } else if let Some(s) = self.sending.as_mut() {
            match (s.packets.next(), self.params.telephone_event) {
                (Some((payload, marker)), Some(pt)) => {
                    len = self
                        .out
                        .event(pt, &payload, marker, s.timestamp, &mut packet);
                }
                _ => {
                    self.sending = None;
                    self.out.skip(0);
                    self.wait_frames = DIGIT_GAP_MS.div_ceil(self.params.ptime_ms);
                }
            }
        }
        let frame = &mut buf[..samples];
        if len == 0 {
            let done = match self.playing.as_mut() {
                Some(p) => p.fill(self.params.law, frame),
                None if self.bridged.is_some() => {
                    // The peer's audio; silence for what has not come.
                    let law = self.params.law;
                    for b in frame.iter_mut() {
                        *b = g711::encode_sample(law, self.bridge_in.pop_front().unwrap_or(0));
                    }
                    false
                }
                None => {
                    frame.fill(silence_byte(self.params.law));
                    false
                }
            };
            if let Some((c, _)) = self.conversation.as_mut() {
                self.pcm.clear();
                g711::decode(self.params.law, frame, &mut self.pcm);
                c.said(Some(&self.pcm), samples);
            }
            if done {
                self.playing = None;
                self.emit(MediaEvent::PlayDone { interrupted: false });
                self.after_play(now);
            }
            if sending {
                len = self.out.audio(self.params.payload_type, frame, &mut packet);
            } else {
                self.out.skip(samples as u32);
            }
        } else {
            // The event packet stands for this frame's time.
            self.out.skip(samples as u32);
            if let Some((c, _)) = self.conversation.as_mut() {
                c.said(None, samples);
            }
        }
        if !sending || len == 0 {
            return false;
        }
        if let Some(dest) = dest {
            match self.socket.send_to(&packet[..len], dest) {
                Ok(_) => {
                    self.inc.stats.sent += 1;
                    return true;
                }
                Err(_) => return false,
            }
        }
        false
    }

    fn next_digit_step(&mut self) {
        let Some(step) = self.digits_out.pop_front() else {
            return;
        };
        let ptime = self.params.ptime_ms;
        match step {
            DigitStep::Wait { ms } => self.wait_frames = ms.div_ceil(ptime).max(1),
            DigitStep::Digit(d) => match Rfc4733Sender::new(d, ptime, DIGIT_MS) {
                Some(packets) => {
                    self.sending = Some(SendingDigit {
                        packets,
                        timestamp: self.out.timestamp(),
                    })
                }
                None => self.wait_frames = 1,
            },
        }
    }

    fn command(&mut self, now: u64, c: Command) {
        match c {
            Command::Play {
                items,
                loops,
                barge_in,
                ..
            } => {
                if self.playing.take().is_some() {
                    self.emit(MediaEvent::PlayDone { interrupted: true });
                }
                self.playing = Some(Playing {
                    items,
                    index: 0,
                    offset: 0,
                    loops_left: loops.checked_sub(1),
                    barge_in,
                });
            }
            Command::Collect { spec, .. } => {
                self.finish_collect(CollectEnd::Stopped);
                let deadline_ms = self.playing.is_none().then_some(now + spec.timeout_ms);
                self.collecting = Some(Collecting {
                    spec,
                    digits: String::new(),
                    deadline_ms,
                });
            }
            Command::Record { opts, beep, .. } => {
                self.finish_record(StopReason::Stopped);
                match beep {
                    Some(b) => {
                        self.command(
                            now,
                            Command::Play {
                                id: self.id,
                                items: vec![PlayItem::Audio(b)],
                                loops: 1,
                                barge_in: false,
                            },
                        );
                        self.record_after_play = Some(opts);
                    }
                    None => self.start_record(now, opts),
                }
            }
            Command::SendDigits { digits, .. } => {
                if self.params.telephone_event.is_none() {
                    self.emit(MediaEvent::DigitsSent);
                    return;
                }
                for d in digits.chars() {
                    self.digits_out.push_back(match d {
                        'w' | 'W' => DigitStep::Wait { ms: DIGIT_WAIT_MS },
                        d => DigitStep::Digit(d),
                    });
                }
            }
            Command::Stop { .. } => {
                if self.playing.take().is_some() {
                    self.emit(MediaEvent::PlayDone { interrupted: true });
                }
                self.record_after_play = None;
                self.digits_out.clear();
                self.sending = None;
                self.wait_frames = 0;
                self.finish_collect(CollectEnd::Stopped);
                self.finish_record(StopReason::Stopped);
                self.emit(MediaEvent::Stopped);
            }
            Command::Update { params, .. } => {
                if params.ptime_ms != self.params.ptime_ms {
                    self.next_frame_ms = None;
                }
                self.params = params;
            }
            Command::Detect { config, .. } => self.amd = Some(Amd::new(config, now)),
            Command::RecordConversation { max_ms, done, .. } => {
                // one at a time: a second start leaves the running one alone (and its
                // channel closes empty)
                if self.conversation.is_none() {
                    self.conversation = Some((Box::new(Conversation::new(max_ms)), done));
                }
            }
            Command::EndConversation { .. } => self.end_conversation(),
            Command::Open(_)
            | Command::Close { .. }
            | Command::Bridge { .. }
            | Command::Shutdown => {}
        }
    }

    /// The call is over: what was running reports. (`Closed` follows once its port is back.)
    fn wind_up(&mut self, now: u64) {
        self.release(now, true);
        if self.playing.take().is_some() {
            self.emit(MediaEvent::PlayDone { interrupted: true });
        }
        self.finish_collect(CollectEnd::Stopped);
        self.finish_record(StopReason::Hangup);
        self.end_conversation();
    }

    /// Hands the conversation recording over, unmixed: mixing a long one here would stall
    /// every call of the worker.
    fn end_conversation(&mut self) {
        if let Some((c, done)) = self.conversation.take() {
            let _ = done.send(c);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The worker thread

struct Worker {
    shared: Arc<Shared>,
    epoch: Instant,
    calls: Vec<Box<Call>>,
    /// Where each call is in `calls`.
    index: std::collections::HashMap<u64, usize>,
    buf: Box<[u8; 2048]>,
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
            index: std::collections::HashMap::new(),
            buf: Box::new([0; 2048]),
            totals: RtpStats::default(),
            flushed: RtpStats::default(),
            late: 0,
            last_flush_ms: 0,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut next = Instant::now();
        loop {
            let now = self.now_ms();
            loop {
                match rx.try_recv() {
                    Ok(Command::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => {
                        self.close_all(now);
                        self.flush_metrics(now, true);
                        return;
                    }
                    Ok(c) => self.command(now, c),
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            for call in &mut self.calls {
                call.take_in(now, &mut self.buf);
            }
            self.move_bridged_audio();
            for call in &mut self.calls {
                let (_, late) = call.send_due(now, &mut self.buf);
                self.late += late;
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

    fn command(&mut self, now: u64, c: Command) {
        let id = match &c {
            Command::Open(_) | Command::Shutdown => 0,
            Command::Play { id, .. }
            | Command::Collect { id, .. }
            | Command::Record { id, .. }
            | Command::SendDigits { id, .. }
            | Command::Stop { id }
            | Command::Update { id, .. }
            | Command::Bridge { id, .. }
            | Command::Detect { id, .. }
            | Command::RecordConversation { id, .. }
            | Command::EndConversation { id }
            | Command::Close { id } => *id,
        };
        match c {
            Command::Open(call) => {
                self.index.insert(call.id, self.calls.len());
                self.calls.push(call);
            }
            Command::Bridge { peer, .. } => {
                if let (Some(a), Some(b)) = (self.position(id), self.position(peer))
                    && a != b
                {
                    for (i, other) in [(a, peer), (b, id)] {
                        let call = &mut self.calls[i];
                        call.bridged = Some(other);
                        call.bridge_out.reserve(BRIDGE_MAX_SAMPLES);
                        call.bridge_in.reserve(BRIDGE_MAX_SAMPLES + 480);
                    }
                }
            }
            Command::Close { .. } => {
                if let Some(i) = self.position(id) {
                    let call = self.calls.swap_remove(i);
                    self.index.remove(&call.id);
                    if let Some(moved) = self.calls.get(i) {
                        self.index.insert(moved.id, i);
                    }
                    self.close(now, call);
                }
            }
            c => {
                if let Some(i) = self.position(id) {
                    self.calls[i].command(now, c);
                }
            }
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
                continue;
            };
            let mut moving = std::mem::take(&mut self.calls[i].bridge_out);
            let into = &mut self.calls[j].bridge_in;
            into.extend(moving.drain(..));
            let over = into.len().saturating_sub(BRIDGE_MAX_SAMPLES);
            into.drain(..over);
            self.calls[i].bridge_out = moving;
        }
    }

    fn close_all(&mut self, now: u64) {
        self.index.clear();
        for call in std::mem::take(&mut self.calls) {
            self.close(now, call);
        }
    }

    /// Ends a call's media: what ran reports, the socket closes and its port goes back, and
    /// then the call hears `Closed` (so whoever waits for it finds the port free).
    fn close(&mut self, now: u64, mut call: Box<Call>) {
        call.wind_up(now);
        self.add_stats(&call.inc.stats);
        let Call {
            socket,
            port,
            events,
            inc,
            ..
        } = *call;
        drop(socket);
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        self.shared.give_back(port);
        let _ = events.send(MediaEvent::Closed { stats: inc.stats });
    }

    fn add_stats(&mut self, s: &RtpStats) {
        self.totals.add(s);
    }

    /// Counters go to `metrics` once a second (closed calls' totals plus open calls' own).
    fn flush_metrics(&mut self, now: u64, force: bool) {
        if !force && now.saturating_sub(self.last_flush_ms) < 1000 {
            return;
        }
        self.last_flush_ms = now;
        let mut cur = self.totals;
        for c in &self.calls {
            cur.add(&c.inc.stats);
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
