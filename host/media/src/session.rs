//! One call's media as a pure state machine: the peer's RTP in, our frames out, what runs on
//! the call (a prompt, a digit collection, a recording, digits going out) and the events it
//! reports. No sockets, channels or clock: the worker (`worker.rs`) reads the call's socket and
//! hands each datagram in, says what time it is, sends what comes out and carries the events
//! to the engine. Our stream's random starting values come in with the [`Outgoing`] it is
//! given.
//!
//! Inputs: [`MediaSession::handle_packet`], [`MediaSession::handle_tick`] and
//! [`MediaSession::handle_command`]. Outputs: [`MediaSession::poll_transmit`],
//! [`MediaSession::poll_event`], [`MediaSession::poll_conversation`] and
//! [`MediaSession::poll_timeout`]. A driver's tick, for each call: every datagram received
//! since the last tick (`handle_packet`), then `handle_tick(now)`; once every call has had its
//! input, bridged calls exchange audio ([`MediaSession::pass_audio_to`]); then
//! `poll_transmit(now, buf)` until it returns `None`, `poll_event` until it returns `None`,
//! and `poll_timeout` for when the call next needs a tick. After each command, drain
//! `poll_event` and `poll_conversation`, and give the call a tick. Time is the driver's clock
//! in milliseconds, never going back.
//!
//! A driver may tick a call at every tick of its own, or only at the ticks where a packet or
//! a command came for it or `poll_timeout` fell due: both see the same packets and events.
//!
//! Nothing on the packet path allocates: the reorder buffer is fixed slots, a frame is built
//! on the stack and its packet in the caller's buffer, and the queues (events, digits, a
//! bridge's audio) keep what they have grown to.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::Audio;
use crate::amd::{Amd, AmdConfig, Verdict};
use crate::dtmf::{InbandDetector, Rfc4733Receiver, Rfc4733Sender, TelephoneEvent};
use crate::g711::{self, Law};
use crate::record::{Conversation, RecordOptions, Recorder, Recording, StopReason};
use crate::rtp::{Accepted, Frame, Incoming, MAX_PAYLOAD, Outgoing, RtpStats, StreamParams};
use crate::spool::{Spool, Tape};

/// A frame sent this much after it was due counts as late (the quality bar of the benchmark).
pub const LATE_MS: u64 = 40;

/// Audio a bridged call holds for its peer at most (older samples are dropped: the legs'
/// clocks drift, and a late leg must not build up delay).
const BRIDGE_MAX_SAMPLES: usize = 1600;
/// A peer that has sent no audio for this long is taken to be silent (recordings are padded).
const SILENT_PEER_MS: u64 = 200;
/// Length of one RFC 4733 digit we send, the pause after it, and the pause `w` stands for in
/// Twilio's digits.
const DIGIT_MS: u32 = 100;
const DIGIT_GAP_MS: u32 = 60;
const DIGIT_WAIT_MS: u32 = 500;

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

/// What the engine asks of a call's media (through `CallMedia`), as the session takes it.
#[derive(Debug)]
pub enum Command {
    /// Plays `items` `loops` times (0: until stopped); `barge_in`: a digit stops it.
    Play {
        items: Vec<PlayItem>,
        loops: u32,
        barge_in: bool,
    },
    /// Collects digits; during a prompt, the timeout starts when it ends.
    Collect(Collect),
    /// Records the peer, after `beep` if given.
    Record {
        opts: RecordOptions,
        beep: Option<Arc<Audio>>,
    },
    /// Sends RFC 4733 digits (`w`: wait half a second).
    SendDigits(String),
    /// Ends what plays, collects, records or sends digits (each reports as stopped; digits
    /// still to go are dropped), then reports [`MediaEvent::Stopped`].
    Stop,
    /// New SDP: hold, resume, a new address.
    Update(StreamParams),
    /// Answering-machine detection on the peer's audio, from now.
    Detect(AmdConfig),
    /// Records both directions until `EndConversation` or the close, for at most `max_ms`.
    /// Ignored while one runs (see [`MediaSession::records_conversation`]).
    /// `dual`: on two channels rather than mixed.
    RecordConversation {
        max_ms: u64,
        tape: String,
        dual: bool,
    },
    /// Hands the conversation recording over ([`MediaSession::poll_conversation`]).
    EndConversation,
    /// The call is over: what runs reports (a recording as [`StopReason::Hangup`]), the
    /// conversation recording is handed over, and the session takes nothing more.
    Close,
}

/// A datagram for the driver to send: `buf[..len]` of the buffer given to
/// [`MediaSession::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub len: usize,
}

/// What the call sends of its own: nothing (then the bridged peer's audio, or silence), a
/// prompt, or digits. One at a time: `play` replaces a prompt (which reports
/// `PlayDone { interrupted: true }`) or digits (dropped without a word); `send_digits` ends a
/// prompt the same way, or queues behind digits still going out.
///
/// Beside it runs what the call listens for ([`Listening`]), and any of the one goes with any
/// of the other: `<Gather>` is a prompt and a collection, `<Record>` a beep and a recording,
/// and a prompt may play all through a recording. Two rules tie them, both kept by
/// `MediaSession::prompt_ended`, which runs whenever a prompt stops other than by being
/// replaced by another prompt: a collection's timeout runs only while no prompt plays, and a
/// recording waiting for its beep starts when the prompt stops.
///
/// Beside both, independently: answering-machine detection (it only listens, and Twilio runs
/// it beside the call's instructions), a conversation recording (`<Dial record>`,
/// `Record=true`: both directions, whatever runs) and a bridge to another call.
#[derive(Debug, Default)]
enum Sending {
    #[default]
    Nothing,
    Prompt(Prompt),
    Digits(DigitsOut),
}

/// What the peer's audio and digits go to, besides detection, the conversation recording and
/// the bridge: nothing, a digit collection or a recording. One at a time: `collect` and
/// `record` end what ran here (a collection reports `Collected` with `Stopped`, a recording
/// `Recorded` with `Stopped`, a recording still waiting for its beep nothing).
#[derive(Debug, Default)]
enum Listening {
    #[default]
    Nothing,
    Collecting(Collecting),
    Recording(Rec),
}

/// A queue of audio playing.
#[derive(Debug)]
struct Prompt {
    items: Vec<PlayItem>,
    index: usize,
    offset: usize,
    /// Rounds still to play after this one; None: forever.
    loops_left: Option<u32>,
    barge_in: bool,
}

impl Prompt {
    fn new(items: Vec<PlayItem>, loops: u32, barge_in: bool) -> Prompt {
        Prompt {
            items,
            index: 0,
            offset: 0,
            loops_left: loops.checked_sub(1),
            barge_in,
        }
    }

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

#[derive(Debug)]
struct Collecting {
    spec: Collect,
    digits: String,
    /// None only while a prompt plays that was playing when the collection began (or
    /// replaced one that was): the timeout starts when it stops.
    deadline_ms: Option<u64>,
}

#[derive(Debug)]
enum Rec {
    /// The beep plays (as [`Sending::Prompt`]); the recording starts when it stops.
    AfterBeep(RecordOptions),
    Running(Running),
}

#[derive(Debug)]
struct Running {
    recorder: Recorder,
    start_ms: u64,
    /// Samples given to the recorder, to pad with silence what never arrived.
    samples: u64,
}

impl Running {
    fn new(opts: RecordOptions, now: u64, tape: Tape) -> Running {
        // Audio already waiting belongs before the recording.
        Running {
            recorder: Recorder::new(opts, now, tape),
            start_ms: now,
            samples: 0,
        }
    }
}

#[derive(Debug)]
enum DigitStep {
    Digit(char),
    Wait { ms: u32 },
}

/// Digits going out, one frame time at a time: each digit's event packets take the place of
/// audio, then a gap of audio; `DigitsSent` comes at the end of the last gap.
#[derive(Debug)]
struct DigitsOut {
    queue: VecDeque<DigitStep>,
    now: DigitNow,
}

#[derive(Debug)]
enum DigitNow {
    /// Between steps: the next frame takes the next one.
    Between,
    /// A digit's packets, all with the event's start timestamp.
    Tone {
        packets: Rfc4733Sender,
        timestamp: u32,
    },
    /// Frames of audio still to go before the next step.
    Wait(u32),
}

/// What the digits make of one frame.
enum DigitFrame {
    /// An event packet of this length is in the buffer.
    Event(usize),
    /// The frame is audio (a gap, a wait).
    Audio,
    /// The frame is audio, and the last gap has ended: `DigitsSent`.
    Done,
}

impl DigitsOut {
    fn frame(&mut self, params: &StreamParams, out: &mut Outgoing, buf: &mut [u8]) -> DigitFrame {
        let ptime = params.ptime_ms.max(1);
        if matches!(self.now, DigitNow::Between) {
            self.now = match self.queue.pop_front() {
                Some(DigitStep::Wait { ms }) => DigitNow::Wait(ms.div_ceil(ptime).max(1)),
                Some(DigitStep::Digit(d)) => match Rfc4733Sender::new(d, ptime, DIGIT_MS) {
                    Some(packets) => DigitNow::Tone {
                        packets,
                        timestamp: out.timestamp(),
                    },
                    None => DigitNow::Wait(1),
                },
                // Only a queue that was empty from the start; nothing to wait for.
                None => return DigitFrame::Done,
            };
        }
        match &mut self.now {
            DigitNow::Wait(n) => {
                *n -= 1;
                if *n > 0 {
                    return DigitFrame::Audio;
                }
                self.now = DigitNow::Between;
                if self.queue.is_empty() {
                    DigitFrame::Done
                } else {
                    DigitFrame::Audio
                }
            }
            DigitNow::Tone { packets, timestamp } => {
                match (packets.next(), params.telephone_event) {
                    (Some((payload, marker)), Some(pt)) => {
                        DigitFrame::Event(out.event(pt, &payload, marker, *timestamp, buf))
                    }
                    _ => {
                        // The event is over: this frame is audio again, a talkspurt.
                        out.skip(0);
                        self.now = DigitNow::Wait(DIGIT_GAP_MS.div_ceil(ptime));
                        DigitFrame::Audio
                    }
                }
            }
            DigitNow::Between => DigitFrame::Audio,
        }
    }
}

/// A bridge to another call: what this call hears waits in `to_peer` until the driver passes
/// it on ([`MediaSession::pass_audio_to`]); the peer's audio waits in `from_peer` to be sent.
#[derive(Debug)]
struct Bridge {
    to_peer: VecDeque<i16>,
    from_peer: VecDeque<i16>,
}

/// One call's media. See the module's documentation for the order of inputs and outputs.
///
/// What runs on the call is in two lanes. What it sends of its own: nothing, a prompt or
/// digits; `Play` and `SendDigits` replace what ran there (a prompt reports
/// `PlayDone { interrupted: true }`), except that digits queue behind digits. What it listens
/// for: nothing, a collection or a recording; `Collect` and `Record` replace what ran there
/// (it reports as stopped). The lanes combine freely (a prompt during a collection is
/// `<Gather>`, a beep before a recording `<Record>`); a collection's timeout waits for the
/// prompt to stop, and so does a recording after its beep. Beside both, independently:
/// answering-machine detection, a conversation recording, a bridge. (The private `Sending`
/// and `Listening` types say it in detail.)
#[derive(Debug)]
pub struct MediaSession {
    params: StreamParams,
    out: Outgoing,
    inc: Incoming,
    /// When the next frame is due; None until the first poll (and after a new packet time).
    next_frame_ms: Option<u64>,
    sending: Sending,
    listening: Listening,
    /// Answering-machine detection, while it runs.
    detector: Option<Amd>,
    /// Where recordings are written as they are made (none: kept in memory, for tests).
    spool: Option<Spool>,
    /// `<Dial record>` or `Record=true`: both directions while it runs.
    conversation: Option<Box<Conversation>>,
    /// An ended conversation recording, waiting for [`MediaSession::poll_conversation`].
    finished_conversation: Option<Box<Conversation>>,
    bridge: Option<Bridge>,
    dtmf_in: Rfc4733Receiver,
    inband: InbandDetector,
    /// Digits received and not yet acted on (they are, in order, at the next tick).
    pending_digits: Vec<char>,
    /// When the peer's audio last arrived.
    last_audio_ms: u64,
    /// Scratch for decoded audio.
    pcm: Vec<i16>,
    events: VecDeque<MediaEvent>,
    /// Frames sent late or skipped since the last [`MediaSession::take_late_frames`].
    late: u64,
    closed: bool,
    /// The latest time the driver gave.
    now_ms: u64,
    /// At the last `poll_transmit`, no frame was wanted ([`MediaSession::poll_timeout`] said
    /// None): the frames that fell due since pass unbuilt.
    dormant: bool,
}

impl MediaSession {
    /// A session for what SDP agreed, sending with `out` (its SSRC, sequence number and
    /// timestamp chosen at random by the caller, RFC 3550 §5.1).
    pub fn new(params: StreamParams, out: Outgoing) -> MediaSession {
        MediaSession {
            params,
            out,
            inc: Incoming::default(),
            next_frame_ms: None,
            sending: Sending::Nothing,
            listening: Listening::Nothing,
            detector: None,
            spool: None,
            conversation: None,
            finished_conversation: None,
            bridge: None,
            dtmf_in: Rfc4733Receiver::default(),
            inband: InbandDetector::default(),
            pending_digits: Vec::new(),
            last_audio_ms: 0,
            pcm: Vec::with_capacity(480),
            events: VecDeque::new(),
            late: 0,
            closed: false,
            now_ms: 0,
            dormant: false,
        }
    }

    /// The stream's counters. `sent` is not among them: only the driver knows which
    /// datagrams the socket took.
    pub fn stats(&self) -> RtpStats {
        self.inc.stats
    }

    /// Whether the session has been closed ([`Command::Close`]); it takes nothing more.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a conversation recording runs (a second one is not started).
    pub fn records_conversation(&self) -> bool {
        self.conversation.is_some()
    }

    /// From now on, what this call hears is kept for a peer ([`MediaSession::pass_audio_to`]),
    /// and the peer's audio is what this call sends whenever nothing of its own plays.
    pub fn bridge(&mut self) {
        if self.bridge.is_none() {
            self.bridge = Some(Bridge {
                to_peer: VecDeque::with_capacity(BRIDGE_MAX_SAMPLES),
                from_peer: VecDeque::with_capacity(BRIDGE_MAX_SAMPLES + 480),
            });
        }
    }

    /// The peer is gone: this call sends its own audio or silence again.
    pub fn unbridge(&mut self) {
        self.bridge = None;
    }

    /// Moves what this call heard since the last time to `peer` (both bridged), which sends
    /// it when nothing of its own plays. Neither side holds more than 200 ms.
    pub fn pass_audio_to(&mut self, peer: &mut MediaSession) {
        let (Some(from), Some(to)) = (self.bridge.as_mut(), peer.bridge.as_mut()) else {
            return;
        };
        to.from_peer.extend(from.to_peer.drain(..));
        let over = to.from_peer.len().saturating_sub(BRIDGE_MAX_SAMPLES);
        to.from_peer.drain(..over);
    }

    /// One datagram received on the call's port from `from`: audio goes into the reorder
    /// buffer, a digit is noted for the next tick, anything else is counted and dropped.
    pub fn handle_packet(&mut self, now: u64, bytes: &[u8], from: SocketAddr) {
        if self.closed {
            return;
        }
        self.now_ms = self.now_ms.max(now);
        match self.inc.accept(now, from, bytes, &self.params) {
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

    /// The tick's input is in: audio released in order goes to whatever listens (a
    /// recording, detection, the bridge, the conversation recording), digits act, a
    /// collection's timeout runs out, a silent peer's recording is padded with silence.
    pub fn handle_tick(&mut self, now: u64) {
        if self.closed {
            return;
        }
        self.now_ms = self.now_ms.max(now);
        self.release(now, false);
        self.pad_recording(now);
        if let Some(c) = self.conversation.as_mut()
            && now.saturating_sub(self.last_audio_ms) >= SILENT_PEER_MS
        {
            // a peer that sends nothing (hold, silence suppression) is silence, not a gap
            c.align_heard();
        }
        for i in 0..self.pending_digits.len() {
            let d = self.pending_digits[i];
            self.on_digit(now, d);
        }
        self.pending_digits.clear();
        if let Listening::Collecting(c) = &self.listening
            && !matches!(self.sending, Sending::Prompt(_))
            && c.deadline_ms.is_some_and(|d| now >= d)
        {
            self.finish_collect(CollectEnd::Timeout);
        }
    }

    /// A command from the engine (see [`MediaSession`] for what it does to what runs).
    pub fn handle_command(&mut self, now: u64, command: Command) {
        if self.closed {
            return;
        }
        self.now_ms = self.now_ms.max(now);
        match command {
            Command::Play {
                items,
                loops,
                barge_in,
            } => {
                let prompt = Prompt::new(items, loops, barge_in);
                self.replace_sending(now, Sending::Prompt(prompt));
            }
            Command::Collect(spec) => {
                self.end_listening(StopReason::Stopped);
                let prompt = matches!(self.sending, Sending::Prompt(_));
                self.listening = Listening::Collecting(Collecting {
                    deadline_ms: (!prompt).then_some(now + spec.timeout_ms),
                    spec,
                    digits: String::new(),
                });
            }
            Command::Record { opts, beep } => {
                self.end_listening(StopReason::Stopped);
                match beep {
                    Some(b) => {
                        self.listening = Listening::Recording(Rec::AfterBeep(opts));
                        let beep = Prompt::new(vec![PlayItem::Audio(b)], 1, false);
                        self.replace_sending(now, Sending::Prompt(beep));
                    }
                    None => {
                        let tape = self.tape(&opts.tape);
                        self.listening =
                            Listening::Recording(Rec::Running(Running::new(opts, now, tape)))
                    }
                }
            }
            Command::SendDigits(digits) => {
                if self.params.telephone_event.is_none() {
                    // the peer takes no digits: said at once, and what runs goes on
                    self.emit(MediaEvent::DigitsSent);
                    return;
                }
                let steps = digits.chars().map(|d| match d {
                    'w' | 'W' => DigitStep::Wait { ms: DIGIT_WAIT_MS },
                    d => DigitStep::Digit(d),
                });
                if let Sending::Digits(d) = &mut self.sending {
                    d.queue.extend(steps);
                    return;
                }
                let queue: VecDeque<DigitStep> = steps.collect();
                if queue.is_empty() {
                    self.emit(MediaEvent::DigitsSent);
                    return;
                }
                self.replace_sending(
                    now,
                    Sending::Digits(DigitsOut {
                        queue,
                        now: DigitNow::Between,
                    }),
                );
            }
            Command::Stop => {
                self.end_all(StopReason::Stopped);
                self.emit(MediaEvent::Stopped);
            }
            Command::Update(params) => {
                if params.ptime_ms != self.params.ptime_ms {
                    self.next_frame_ms = None;
                }
                self.params = params;
            }
            Command::Detect(config) => self.detector = Some(Amd::new(config, now)),
            Command::RecordConversation { max_ms, tape, dual } => {
                // one at a time: a second start leaves the running one alone
                if self.conversation.is_none() {
                    let tape = self.tape(&tape);
                    let c = Conversation::new(max_ms, tape);
                    self.conversation = Some(Box::new(if dual { c.dual() } else { c }));
                }
            }
            Command::EndConversation => self.end_conversation(),
            Command::Close => {
                self.release(now, true);
                self.end_all(StopReason::Hangup);
                self.end_conversation();
                self.bridge = None;
                self.closed = true;
            }
        }
    }

    /// The next datagram due by `now`, written into `buf` (at least
    /// [`crate::rtp::MAX_PACKET`] bytes): an RFC 4733 event, prompt audio, the bridged peer's
    /// audio, or silence, one per packet time. Frames fall due whether or not they can be sent
    /// (on hold, or with nowhere to send, time and prompts move on). A driver that fell more
    /// than three frames behind gets no burst: the missed frames are skipped and counted late.
    pub fn poll_transmit(&mut self, now: u64, buf: &mut [u8]) -> Option<Transmit> {
        if self.closed {
            return None;
        }
        self.now_ms = self.now_ms.max(now);
        let ptime = u64::from(self.params.ptime_ms.max(1));
        loop {
            let mut due = *self.next_frame_ms.get_or_insert(now);
            if std::mem::take(&mut self.dormant) && due < now {
                // Frames nobody wanted (nothing to send, nothing playing): skipped as they
                // would have been built, unsent, by a driver ticking all along; not late.
                let missed = (now - due).div_ceil(ptime);
                let samples = self.params.frame_samples().min(MAX_PAYLOAD) as u64;
                self.out.skip((missed * samples) as u32);
                due += missed * ptime;
                self.next_frame_ms = Some(due);
            }
            if now < due {
                self.dormant = !self.frames_wanted();
                return None;
            }
            if now - due > 3 * ptime {
                let missed = (now - due) / ptime;
                let samples = (missed * ptime * 8) as usize;
                self.out.skip(samples as u32);
                if let Some(c) = self.conversation.as_mut() {
                    c.said(None, samples);
                }
                due += missed * ptime;
                if self.params.send {
                    self.late += missed;
                }
            }
            self.next_frame_ms = Some(due + ptime);
            if let Some(t) = self.frame_due(now, buf) {
                if now - due > LATE_MS {
                    self.late += 1;
                }
                return Some(t);
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// When the call next needs `handle_tick` and `poll_transmit` if no packet or command
    /// comes first (poll it after `poll_transmit`): its next frame, a collection's timeout, or
    /// a time already past (the driver's next tick) before its first frame and while
    /// something runs that watches the clock (a recording, answering-machine detection, a
    /// conversation recording, packets held for reordering). None: nothing until a packet or a command comes, for nothing is
    /// sent and nothing runs (on hold, or before the peer's address is known, with nothing
    /// playing); the frames that fall due meanwhile are skipped then, unsent and not late.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.closed {
            return None;
        }
        let watches_clock = matches!(self.listening, Listening::Recording(Rec::Running(_)))
            || self.detector.is_some()
            || self.conversation.is_some()
            || self.inc.holds_packets()
            || !self.pending_digits.is_empty();
        // no frame yet (or a new packet time): the first one sets the frames' times
        if watches_clock || self.next_frame_ms.is_none() {
            return Some(self.now_ms);
        }
        let frame = self.frames_wanted().then_some(self.next_frame_ms).flatten();
        let timeout = match &self.listening {
            Listening::Collecting(c) if !matches!(self.sending, Sending::Prompt(_)) => {
                c.deadline_ms
            }
            _ => None,
        };
        match (frame, timeout) {
            (Some(f), Some(t)) => Some(f.min(t)),
            (f, t) => f.or(t),
        }
    }

    /// Recordings go to `spool` as they are made.
    pub fn with_spool(mut self, spool: Spool) -> MediaSession {
        self.spool = Some(spool);
        self
    }

    /// The conversation recording, once ended (by [`Command::EndConversation`] or the close),
    /// unmixed: mixing a long one on the worker would stall every call of it. Poll after each
    /// command.
    pub fn poll_conversation(&mut self) -> Option<Box<Conversation>> {
        self.finished_conversation.take()
    }

    /// Frames sent more than [`LATE_MS`] after they were due, or skipped, since the last call.
    pub fn take_late_frames(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    fn emit(&mut self, e: MediaEvent) {
        self.events.push_back(e);
    }

    /// Where our frames go: the peer's latched address or SDP's, unless on hold.
    fn destination(&self) -> Option<SocketAddr> {
        let dest = self.inc.latched().or(self.params.remote)?;
        (self.params.send && !dest.ip().is_unspecified()).then_some(dest)
    }

    /// Whether frames must be built as they fall due: one goes out, or building it moves
    /// something on (a prompt or digits, also on hold; the bridge; the conversation recording).
    fn frames_wanted(&self) -> bool {
        !matches!(self.sending, Sending::Nothing)
            || self.bridge.is_some()
            || self.conversation.is_some()
            || self.destination().is_some()
    }

    /// Builds one frame's worth: a DTMF event packet, prompt audio, the peer's audio or
    /// silence. Returns the datagram if it is to be sent.
    fn frame_due(&mut self, now: u64, buf: &mut [u8]) -> Option<Transmit> {
        // SDP agrees 20 or 30 ms; a longer packet time is cut to what one packet holds.
        let samples = self.params.frame_samples().min(MAX_PAYLOAD);
        let dest = self.destination();
        let sending = dest.is_some();
        let mut len = 0;
        // Digits take the place of audio while they last.
        if let Sending::Digits(d) = &mut self.sending {
            match d.frame(&self.params, &mut self.out, buf) {
                DigitFrame::Event(n) => len = n,
                DigitFrame::Audio => {}
                DigitFrame::Done => {
                    self.sending = Sending::Nothing;
                    self.emit(MediaEvent::DigitsSent);
                }
            }
        }
        if len == 0 {
            let law = self.params.law;
            let mut frame = [0u8; MAX_PAYLOAD];
            let frame = &mut frame[..samples];
            let done = match &mut self.sending {
                Sending::Prompt(p) => p.fill(law, frame),
                _ => {
                    match self.bridge.as_mut() {
                        // The peer's audio; silence for what has not come.
                        Some(b) => {
                            for s in frame.iter_mut() {
                                *s = g711::encode_sample(law, b.from_peer.pop_front().unwrap_or(0));
                            }
                        }
                        None => frame.fill(silence_byte(law)),
                    }
                    false
                }
            };
            if let Some(c) = self.conversation.as_mut() {
                self.pcm.clear();
                g711::decode(law, frame, &mut self.pcm);
                c.said(Some(&self.pcm), samples);
            }
            if done {
                self.end_prompt(now);
            }
            if sending {
                len = self.out.audio(self.params.payload_type, frame, buf);
            } else {
                self.out.skip(samples as u32);
            }
        } else {
            // The event packet stands for this frame's time.
            self.out.skip(samples as u32);
            if let Some(c) = self.conversation.as_mut() {
                c.said(None, samples);
            }
        }
        match dest {
            Some(to) if len > 0 => Some(Transmit { to, len }),
            _ => None,
        }
    }

    /// Audio released in order goes to the in-band detector, answering-machine detection,
    /// the conversation recording, the bridge and the recorder.
    fn release(&mut self, now: u64, flush: bool) {
        let MediaSession {
            inc,
            params,
            pcm,
            listening,
            inband,
            pending_digits,
            bridge,
            detector,
            conversation,
            ..
        } = self;
        let law = params.law;
        let inband_on = params.telephone_event.is_none();
        let frame = params.frame_samples();
        let mut recording = match listening {
            Listening::Recording(Rec::Running(r)) => Some(r),
            _ => None,
        };
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
            if let Some(a) = detector.as_mut()
                && let Some(v) = a.push(now, pcm)
            {
                detected = Some(v);
            }
            if let Some(c) = conversation.as_mut() {
                c.heard(pcm);
            }
            if let Some(b) = bridge.as_mut() {
                b.to_peer.extend(pcm.iter());
                let over = b.to_peer.len().saturating_sub(BRIDGE_MAX_SAMPLES);
                b.to_peer.drain(..over);
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
            && let Some(a) = self.detector.as_mut()
        {
            detected = a.push(now, &[]);
        }
        if let Some(v) = detected {
            self.detector = None;
            self.emit(MediaEvent::Detected(v));
        }
    }

    /// A peer that sends nothing is recorded as silence, so that silence and length limits
    /// end the recording in time. A peer whose packets are merely late (a busy machine, a
    /// stalled tick) is not padded: its audio is on its way and would land after the padding.
    fn pad_recording(&mut self, now: u64) {
        let Listening::Recording(Rec::Running(r)) = &mut self.listening else {
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
        if let Sending::Prompt(p) = &self.sending
            && p.barge_in
        {
            self.sending = Sending::Nothing;
            self.emit(MediaEvent::PlayDone { interrupted: true });
            self.prompt_ended(now);
        }
        match &mut self.listening {
            Listening::Recording(Rec::Running(r)) => {
                if let Some(reason) = r.recorder.digit(digit) {
                    self.finish_record(reason);
                }
            }
            Listening::Collecting(c) => {
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
            Listening::Nothing | Listening::Recording(Rec::AfterBeep(_)) => {}
        }
    }

    /// The prompt has played out.
    fn end_prompt(&mut self, now: u64) {
        if let Sending::Prompt(_) = self.sending {
            self.sending = Sending::Nothing;
            self.emit(MediaEvent::PlayDone { interrupted: false });
            self.prompt_ended(now);
        }
    }

    /// A prompt has stopped (played out, cut by a digit, or replaced by digits): a
    /// collection's timeout starts, a recording waiting for its beep begins.
    fn prompt_ended(&mut self, now: u64) {
        match &mut self.listening {
            Listening::Collecting(c) => {
                c.deadline_ms.get_or_insert(now + c.spec.timeout_ms);
            }
            Listening::Recording(Rec::AfterBeep(_)) => {
                if let Listening::Recording(Rec::AfterBeep(opts)) =
                    std::mem::take(&mut self.listening)
                {
                    let tape = self.tape(&opts.tape);
                    self.listening =
                        Listening::Recording(Rec::Running(Running::new(opts, now, tape)));
                }
            }
            Listening::Nothing | Listening::Recording(Rec::Running(_)) => {}
        }
    }

    /// What the call sends of its own becomes `new`: a prompt it replaces reports as
    /// interrupted, digits are dropped. A prompt replaced by another is not over for what
    /// waits on it (a collection's timeout, a recording after its beep).
    fn replace_sending(&mut self, now: u64, new: Sending) {
        let next_is_prompt = matches!(new, Sending::Prompt(_));
        if let Sending::Prompt(_) = std::mem::replace(&mut self.sending, new) {
            self.emit(MediaEvent::PlayDone { interrupted: true });
            if !next_is_prompt {
                self.prompt_ended(now);
            }
        }
    }

    fn finish_collect(&mut self, end: CollectEnd) {
        if let Listening::Collecting(c) = std::mem::take(&mut self.listening) {
            self.emit(MediaEvent::Collected {
                digits: c.digits,
                end,
            });
        }
    }

    fn finish_record(&mut self, reason: StopReason) {
        match std::mem::take(&mut self.listening) {
            Listening::Recording(Rec::Running(r)) => {
                self.emit(MediaEvent::Recorded(Box::new(r.recorder.finish(reason))));
            }
            other => self.listening = other,
        }
    }

    /// Ends what listens: a collection reports as stopped, a recording with `reason`, a
    /// recording still waiting for its beep says nothing.
    fn end_listening(&mut self, reason: StopReason) {
        match std::mem::take(&mut self.listening) {
            Listening::Nothing | Listening::Recording(Rec::AfterBeep(_)) => {}
            Listening::Collecting(c) => self.emit(MediaEvent::Collected {
                digits: c.digits,
                end: CollectEnd::Stopped,
            }),
            Listening::Recording(Rec::Running(r)) => {
                self.emit(MediaEvent::Recorded(Box::new(r.recorder.finish(reason))));
            }
        }
    }

    /// `stop` or the close: the prompt reports first, then what listened (a recording with
    /// `reason`); digits going out and a recording still waiting for its beep end silently.
    fn end_all(&mut self, reason: StopReason) {
        if let Listening::Recording(Rec::AfterBeep(_)) = self.listening {
            self.listening = Listening::Nothing;
        }
        if let Sending::Prompt(_) = std::mem::take(&mut self.sending) {
            self.emit(MediaEvent::PlayDone { interrupted: true });
        }
        self.end_listening(reason);
    }

    /// A tape for a recording: in the spool if the session has one, else in memory.
    fn tape(&self, name: &str) -> Tape {
        match &self.spool {
            Some(spool) => spool.tape(name),
            None => Tape::memory(),
        }
    }

    fn end_conversation(&mut self) {
        if let Some(c) = self.conversation.take() {
            self.finished_conversation = Some(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amd::AnsweredBy;
    use crate::rtp::MAX_PACKET;
    use rtp_rs::RtpReader;

    const TICK: u64 = 10;
    const LOUD: i16 = 8000;
    /// Our stream's first timestamp.
    const T0: u32 = 8000;

    fn peer() -> SocketAddr {
        "192.0.2.7:4000".parse().unwrap()
    }

    fn params(telephone_event: Option<u8>) -> StreamParams {
        StreamParams {
            law: Law::Mu,
            payload_type: 0,
            telephone_event,
            ptime_ms: 20,
            remote: Some(peer()),
            send: true,
        }
    }

    fn audio(samples: usize, value: i16) -> Arc<Audio> {
        Arc::new(Audio::from_pcm(&vec![value; samples]))
    }

    fn play(samples: usize, barge_in: bool) -> Command {
        Command::Play {
            items: vec![PlayItem::Audio(audio(samples, LOUD))],
            loops: 1,
            barge_in,
        }
    }

    fn collect(num_digits: Option<u32>, timeout_ms: u64) -> Command {
        Command::Collect(Collect {
            num_digits,
            timeout_ms,
            finish_on_key: Some('#'),
        })
    }

    fn record(max_length_ms: u64, silence_timeout_ms: u64) -> RecordOptions {
        RecordOptions {
            max_length_ms,
            silence_timeout_ms,
            finish_on_key: "#".into(),
            trim: false,
            tape: String::new(),
        }
    }

    /// An event in a few words, for assertions.
    fn brief(e: &MediaEvent) -> String {
        match e {
            MediaEvent::PlayDone { interrupted: false } => "PlayDone".into(),
            MediaEvent::PlayDone { interrupted: true } => "PlayDone interrupted".into(),
            MediaEvent::Digit { digit, .. } => format!("Digit {digit}"),
            MediaEvent::Collected { digits, end } => format!("Collected {digits:?} {end:?}"),
            MediaEvent::Recorded(r) => format!(
                "Recorded {:?} {} ms{}",
                r.reason,
                r.duration_ms,
                if r.heard_audio { " heard" } else { "" }
            ),
            MediaEvent::DigitsSent => "DigitsSent".into(),
            MediaEvent::Detected(v) => format!("Detected {} {}", v.answered_by.as_str(), v.reason),
            MediaEvent::Stopped => "Stopped".into(),
            MediaEvent::Closed { .. } => "Closed".into(),
        }
    }

    /// A packet we sent, read back.
    #[derive(Debug, PartialEq)]
    struct Sent {
        at: u64,
        to: SocketAddr,
        pt: u8,
        marker: bool,
        seq: u16,
        ts: u32,
        payload: Vec<u8>,
    }

    impl Sent {
        fn is_audio_of(&self, value: i16) -> bool {
            self.pt == 0
                && self
                    .payload
                    .iter()
                    .all(|&b| b == g711::encode_sample(Law::Mu, value))
        }
    }

    /// One session on a simulated clock, driven as the worker drives it (a tick every 10 ms:
    /// the peer's packets, `handle_tick`, transmits, events), with the peer's stream built by
    /// the crate's own RTP writer.
    struct Sim {
        s: MediaSession,
        now: u64,
        peer: Outgoing,
        sent: Vec<Sent>,
        events: Vec<(u64, MediaEvent)>,
        /// The session gets a tick only when `poll_timeout` says or a packet or command came
        /// (as the worker drives it), not at every tick.
        lazy: bool,
        /// A packet or command came since the last tick.
        input: bool,
        /// Ticks the session got.
        ticked: u64,
    }

    impl Sim {
        fn new(params: StreamParams) -> Sim {
            Sim {
                s: MediaSession::new(params, Outgoing::new(0x5eed, 1000, T0)),
                now: 0,
                peer: Outgoing::new(0xfeed, 1, 0),
                sent: Vec::new(),
                events: Vec::new(),
                lazy: false,
                input: false,
                ticked: 0,
            }
        }

        fn lazy(params: StreamParams) -> Sim {
            Sim {
                lazy: true,
                ..Sim::new(params)
            }
        }

        fn command(&mut self, c: Command) {
            self.input = true;
            self.s.handle_command(self.now, c);
            self.drain_events();
        }

        /// One 20 ms frame from the peer, every sample `value`, arriving now.
        fn speak(&mut self, value: i16) {
            let payload = [g711::encode_sample(Law::Mu, value); 160];
            let mut buf = [0u8; MAX_PACKET];
            let n = self.peer.audio(0, &payload, &mut buf);
            self.input = true;
            self.s.handle_packet(self.now, &buf[..n], peer());
        }

        /// A key pressed at the peer: its RFC 4733 start packet and three end packets, now.
        fn press(&mut self, digit: char) {
            let event = crate::dtmf::digit_event(digit).unwrap();
            let ts = self.peer.timestamp();
            let mut buf = [0u8; MAX_PACKET];
            self.input = true;
            for (end, duration) in [(false, 160), (true, 800), (true, 800), (true, 800)] {
                let ev = TelephoneEvent {
                    event,
                    end,
                    volume: 10,
                    duration,
                };
                let n = self.peer.event(101, &ev.to_bytes(), !end, ts, &mut buf);
                self.s.handle_packet(self.now, &buf[..n], peer());
            }
            self.peer.skip(800);
        }

        fn drain_events(&mut self) {
            while let Some(e) = self.s.poll_event() {
                self.events.push((self.now, e));
            }
        }

        /// The rest of the tick at `now` (after the peer's packets), then time moves on.
        fn tick(&mut self) {
            let input = std::mem::take(&mut self.input);
            let due = self.s.poll_timeout().is_some_and(|t| t <= self.now);
            if self.lazy && !input && !due {
                self.now += TICK;
                return;
            }
            self.ticked += 1;
            self.s.handle_tick(self.now);
            let mut buf = [0u8; MAX_PACKET];
            while let Some(t) = self.s.poll_transmit(self.now, &mut buf) {
                let r = RtpReader::new(&buf[..t.len]).unwrap();
                self.sent.push(Sent {
                    at: self.now,
                    to: t.to,
                    pt: r.payload_type(),
                    marker: r.mark(),
                    seq: u16::from(r.sequence_number()),
                    ts: r.timestamp(),
                    payload: r.payload().to_vec(),
                });
            }
            self.drain_events();
            self.now += TICK;
        }

        /// Ticks until `until_ms` (exclusive), calling `peer` at the start of each tick.
        fn run_until(&mut self, until_ms: u64, mut peer: impl FnMut(&mut Sim)) {
            while self.now < until_ms {
                peer(self);
                self.tick();
            }
        }

        fn idle_until(&mut self, until_ms: u64) {
            self.run_until(until_ms, |_| {});
        }

        /// The peer speaks a frame every 20 ms.
        fn talk_until(&mut self, until_ms: u64, value: i16) {
            self.run_until(until_ms, |s| {
                if s.now % 20 == 0 {
                    s.speak(value);
                }
            });
        }

        fn log(&self) -> Vec<String> {
            self.events
                .iter()
                .map(|(at, e)| format!("{at} {}", brief(e)))
                .collect()
        }

        /// When frames of `value` were sent.
        fn audio_at(&self, value: i16) -> Vec<u64> {
            self.sent
                .iter()
                .filter(|p| p.is_audio_of(value))
                .map(|p| p.at)
                .collect()
        }
    }

    #[test]
    fn a_prompt_plays_frame_by_frame_and_reports_play_done_at_its_end() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(play(800, false)); // 100 ms
        sim.idle_until(200);
        assert_eq!(sim.audio_at(LOUD), [0, 20, 40, 60, 80]);
        assert_eq!(sim.log(), ["100 PlayDone"], "in the frame after its last");
        // one packet per 20 ms, in sequence, timestamps a frame apart, one talkspurt
        assert_eq!(sim.sent.len(), 10);
        for (i, p) in sim.sent.iter().enumerate() {
            assert_eq!(p.at, 20 * i as u64);
            assert_eq!(p.to, peer());
            assert_eq!(p.seq, 1000 + i as u16);
            assert_eq!(p.ts, T0 + 160 * i as u32);
            assert_eq!(p.marker, i == 0);
        }
        assert!(
            sim.sent[5..].iter().all(|p| p.is_audio_of(0)),
            "then silence"
        );
    }

    #[test]
    fn loops_and_pauses_add_up() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::Play {
            items: vec![
                PlayItem::Audio(audio(400, LOUD)),
                PlayItem::Silence { ms: 50 },
            ],
            loops: 2,
            barge_in: false,
        });
        sim.idle_until(300);
        let loud: usize = sim
            .sent
            .iter()
            .map(|p| {
                p.payload
                    .iter()
                    .filter(|&&b| b == g711::encode_sample(Law::Mu, LOUD))
                    .count()
            })
            .sum();
        assert_eq!(loud, 800, "the audio twice");
        assert_eq!(sim.log(), ["200 PlayDone"], "2 × 100 ms = 10 frames");
    }

    #[test]
    fn a_digit_cuts_a_barge_in_prompt_and_the_timeout_runs_from_it() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(play(40_000, true));
        sim.command(collect(None, 300));
        sim.idle_until(100);
        sim.press('5');
        sim.idle_until(600);
        assert_eq!(
            sim.log(),
            [
                "100 Digit 5",
                "100 PlayDone interrupted",
                "400 Collected \"5\" Timeout"
            ]
        );
        assert_eq!(
            sim.audio_at(LOUD),
            [0, 20, 40, 60, 80],
            "silence from the digit on"
        );
    }

    #[test]
    fn without_barge_in_the_prompt_plays_on_and_the_timeout_waits_for_its_end() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(play(4000, false)); // 500 ms
        sim.command(collect(None, 300));
        sim.idle_until(100);
        sim.press('5');
        sim.idle_until(900);
        assert_eq!(
            sim.log(),
            [
                "100 Digit 5",
                "500 PlayDone",
                // the digit's own deadline (400) had passed while the prompt played
                "510 Collected \"5\" Timeout"
            ]
        );
        assert_eq!(sim.audio_at(LOUD).len(), 25);
    }

    #[test]
    fn a_collection_ends_on_num_digits_the_finish_key_or_the_timeout() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(collect(Some(2), 5000));
        sim.idle_until(50);
        sim.press('1');
        sim.idle_until(90);
        sim.press('2');
        sim.idle_until(100);
        assert_eq!(
            sim.log(),
            ["50 Digit 1", "90 Digit 2", "90 Collected \"12\" NumDigits"]
        );

        let mut sim = Sim::new(params(Some(101)));
        sim.command(collect(Some(5), 5000));
        sim.idle_until(50);
        sim.press('1');
        sim.idle_until(90);
        sim.press('#');
        sim.idle_until(100);
        assert_eq!(
            sim.log(),
            ["50 Digit 1", "90 Digit #", "90 Collected \"1\" FinishKey"],
            "the finish key is not a digit of the result"
        );

        // Gather with a prompt: the timeout starts when the prompt ends.
        let mut sim = Sim::new(params(Some(101)));
        sim.command(play(4000, true));
        sim.command(collect(None, 300));
        sim.idle_until(1000);
        assert_eq!(sim.log(), ["500 PlayDone", "800 Collected \"\" Timeout"]);

        // Without one, from the start; a digit starts it again.
        let mut sim = Sim::new(params(Some(101)));
        sim.command(collect(None, 300));
        sim.idle_until(200);
        sim.press('7');
        sim.idle_until(1000);
        assert_eq!(sim.log(), ["200 Digit 7", "500 Collected \"7\" Timeout"]);
    }

    #[test]
    fn a_recording_stops_at_its_max_length() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::Record {
            opts: record(1000, 0),
            beep: None,
        });
        sim.talk_until(1500, LOUD);
        // the 50th frame (at 980 ms) makes a second of audio
        assert_eq!(sim.log(), ["980 Recorded MaxLength 1000 ms heard"]);
    }

    #[test]
    fn a_recording_stops_after_silence_even_when_the_peer_sends_nothing() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::Record {
            opts: record(60_000, 500),
            beep: None,
        });
        sim.talk_until(300, LOUD);
        sim.talk_until(1500, 0);
        // the last loud frame came at 280 ms
        assert_eq!(sim.log(), ["780 Recorded Silence 800 ms heard"]);

        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::Record {
            opts: record(60_000, 500),
            beep: None,
        });
        sim.idle_until(1000);
        // padded with silence, less a jitter allowance, in steps: the silence is judged as
        // each step comes
        assert_eq!(sim.log(), ["520 Recorded Silence 490 ms"]);
    }

    #[test]
    fn a_recording_stops_on_its_finish_key_and_starts_after_its_beep() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::Record {
            opts: record(60_000, 0),
            beep: Some(audio(800, LOUD)),
        });
        // a key during the beep is only a digit (the beep has no barge-in)
        sim.run_until(300, |s| {
            if s.now == 40 {
                s.press('#');
            }
            if s.now % 20 == 0 {
                s.speak(LOUD);
            }
        });
        sim.press('#');
        sim.idle_until(400);
        assert_eq!(
            sim.log(),
            [
                "40 Digit #",
                "100 PlayDone",
                "300 Digit #",
                // the peer's frames after the beep's end (120 to 280 ms)
                "300 Recorded FinishKey('#') 180 ms heard"
            ]
        );
        assert_eq!(sim.audio_at(LOUD), [0, 20, 40, 60, 80], "the beep");
        match &sim.events[3].1 {
            MediaEvent::Recorded(r) => assert_eq!(r.digit, Some('#')),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn digits_go_out_as_rfc_4733_events_in_place_of_audio() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::SendDigits("1w2".into()));
        sim.idle_until(1100);
        let events: Vec<(u64, u8, bool, u16, u32)> = sim
            .sent
            .iter()
            .filter(|p| p.pt == 101)
            .map(|p| {
                let ev = TelephoneEvent::parse(&p.payload).unwrap();
                (p.at, ev.event, ev.end, ev.duration, p.ts)
            })
            .collect();
        // A digit: 100 ms of tone (five packets, growing duration), the end three times, all
        // with the event's start timestamp; then 60 ms (and the frame the event ended in) of
        // audio. `w` waits half a second.
        let digit = |start: u64, event: u8, ts: u32| -> Vec<(u64, u8, bool, u16, u32)> {
            (0..8u16)
                .map(|i| {
                    let end = i >= 5;
                    let duration = if end { 800 } else { 160 * (i + 1) };
                    (start + 20 * u64::from(i), event, end, duration, ts)
                })
                .collect()
        };
        let mut expected = digit(0, 1, T0);
        expected.extend(digit(740, 2, T0 + 37 * 160));
        assert_eq!(events, expected);
        assert_eq!(sim.log(), ["960 DigitsSent"], "at the end of the last gap");
        // Nothing missing: one packet per frame, sequence numbers without a gap; the
        // marker on each event's first packet and on the audio after it.
        assert_eq!(sim.sent.len(), 1100 / 20);
        for (i, p) in sim.sent.iter().enumerate() {
            assert_eq!(p.seq, 1000 + i as u16);
            let first_after = [0, 8, 37, 45].contains(&i);
            assert_eq!(p.marker, first_after, "packet {i} at {} ms", p.at);
        }
        let resumed = &sim.sent[8];
        assert_eq!((resumed.pt, resumed.ts), (0, T0 + 8 * 160));
    }

    #[test]
    fn digits_to_a_peer_without_telephone_event_are_done_at_once() {
        let mut sim = Sim::new(params(None));
        sim.command(play(4000, false));
        sim.command(Command::SendDigits("123".into()));
        sim.idle_until(200);
        assert_eq!(sim.log(), ["0 DigitsSent"], "and the prompt plays on");
        assert!(sim.sent.iter().all(|p| p.is_audio_of(LOUD)));
    }

    #[test]
    fn answering_machine_detection_decides_on_the_peers_audio_or_on_time() {
        let config = AmdConfig::default();
        let verdict = |sim: &Sim| -> Vec<(u64, AnsweredBy, &'static str)> {
            sim.events
                .iter()
                .filter_map(|(at, e)| match e {
                    MediaEvent::Detected(v) => Some((*at, v.answered_by, v.reason)),
                    _ => None,
                })
                .collect()
        };
        // a greeting that goes on: a machine, after 1.5 s of voice
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::Detect(config.clone()));
        sim.talk_until(6000, LOUD);
        assert_eq!(
            verdict(&sim),
            [(1480, AnsweredBy::MachineStart, "long-greeting")]
        );
        // silence: nobody there to judge
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::Detect(config.clone()));
        sim.talk_until(6000, 0);
        assert_eq!(
            verdict(&sim),
            [(2480, AnsweredBy::Unknown, "initial-silence")]
        );
        // no audio at all: the analysis time runs out all the same; a prompt playing
        // meanwhile does not disturb it
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::Detect(config));
        sim.command(play(8000, false));
        sim.idle_until(6000);
        assert_eq!(
            verdict(&sim),
            [(5000, AnsweredBy::Unknown, "analysis-time")]
        );
        assert_eq!(sim.log()[0], "1000 PlayDone");
    }

    #[test]
    fn bridged_sessions_carry_each_others_audio_in_the_tick_it_arrives() {
        let mut a = Sim::new(params(Some(101)));
        let mut b = Sim::new(StreamParams {
            law: Law::A,
            payload_type: 8,
            ..params(Some(101))
        });
        a.s.bridge();
        b.s.bridge();
        let mut buf = [0u8; MAX_PACKET];
        let mut heard_by_b = Vec::new();
        let mut sent_to_a = Vec::new();
        for now in (0..400).step_by(10) {
            a.now = now;
            b.now = now;
            if now % 20 == 0 {
                a.speak(5000);
            }
            if now == 200 {
                b.command(play(800, false));
            }
            // the worker's order: every session's input, then the bridge, then sends
            a.s.handle_tick(now);
            b.s.handle_tick(now);
            a.s.pass_audio_to(&mut b.s);
            b.s.pass_audio_to(&mut a.s);
            while let Some(t) = b.s.poll_transmit(now, &mut buf) {
                let r = RtpReader::new(&buf[..t.len]).unwrap();
                assert_eq!(r.payload_type(), 8, "B's own codec");
                let mut pcm = Vec::new();
                g711::decode(Law::A, r.payload(), &mut pcm);
                heard_by_b.push((now, pcm.iter().all(|s| (4500..5500).contains(s))));
            }
            while let Some(t) = a.s.poll_transmit(now, &mut buf) {
                sent_to_a.push(RtpReader::new(&buf[..t.len]).unwrap().payload().to_vec());
            }
        }
        let loud: Vec<u64> = heard_by_b.iter().filter(|h| h.1).map(|h| h.0).collect();
        let expected: Vec<u64> = (0..400)
            .step_by(20)
            .filter(|t| !(200..=300).contains(t))
            .collect();
        // (the frame that finds the prompt's end is silence)
        assert_eq!(
            loud, expected,
            "A's voice, except while B's own prompt plays"
        );
        assert!(
            sent_to_a.iter().all(|p| p.iter().all(|&b| b == 0xff)),
            "B's peer is silent"
        );
        // Once unbridged, B sends silence.
        b.s.unbridge();
        a.speak(5000);
        a.s.handle_tick(400);
        a.s.pass_audio_to(&mut b.s);
        let t = b.s.poll_transmit(400, &mut buf).unwrap();
        let r = RtpReader::new(&buf[..t.len]).unwrap();
        assert!(r.payload().iter().all(|&x| x == silence_byte(Law::A)));
    }

    #[test]
    fn on_hold_nothing_is_sent_but_time_and_prompts_move_on() {
        let mut sim = Sim::new(params(Some(101)));
        sim.idle_until(100);
        sim.command(Command::Update(StreamParams {
            send: false,
            ..params(Some(101))
        }));
        sim.command(play(800, false));
        sim.idle_until(300);
        assert_eq!(sim.sent.len(), 5, "only before the hold");
        assert_eq!(sim.log(), ["200 PlayDone"], "the prompt ran its time");
        sim.command(Command::Update(params(Some(101))));
        sim.idle_until(340);
        let resumed = &sim.sent[5];
        assert_eq!(resumed.at, 300);
        assert_eq!(resumed.seq, 1005, "no sequence gap");
        assert_eq!(resumed.ts, T0 + 15 * 160, "the timestamp kept time");
        assert!(resumed.marker, "a new talkspurt");
        assert_eq!(sim.s.take_late_frames(), 0, "held frames are not late");
    }

    #[test]
    fn a_stalled_driver_gets_no_burst_and_the_skipped_frames_count_late() {
        let mut sim = Sim::new(params(Some(101)));
        sim.tick();
        sim.now = 200;
        sim.tick();
        assert_eq!(sim.sent.len(), 2);
        assert_eq!(sim.sent[1].ts, T0 + 10 * 160);
        assert!(sim.sent[1].marker);
        assert_eq!(sim.s.take_late_frames(), 9);
        assert_eq!(sim.s.take_late_frames(), 0);
    }

    #[test]
    fn we_send_where_the_peers_packets_come_from() {
        let mut sim = Sim::new(params(Some(101)));
        sim.tick();
        let moved: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        let mut buf = [0u8; MAX_PACKET];
        let n = sim.peer.audio(0, &[0xff; 160], &mut buf);
        sim.s.handle_packet(sim.now, &buf[..n], moved);
        sim.idle_until(40);
        let to: Vec<SocketAddr> = sim.sent.iter().map(|p| p.to).collect();
        assert_eq!(to, [peer(), moved]);
        assert_eq!(sim.s.stats().received, 1);
    }

    #[test]
    fn stop_reports_what_it_ended_then_stopped_and_drops_digits_silently() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(play(4000, true));
        sim.command(collect(None, 5000));
        sim.idle_until(100);
        sim.command(Command::Stop);
        assert_eq!(
            sim.log(),
            [
                "100 PlayDone interrupted",
                "100 Collected \"\" Stopped",
                "100 Stopped"
            ]
        );

        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::SendDigits("123".into()));
        sim.idle_until(30);
        sim.command(Command::Stop);
        sim.idle_until(2000);
        assert_eq!(sim.log(), ["30 Stopped"]);
        assert_eq!(
            sim.sent.iter().filter(|p| p.pt == 101).count(),
            2,
            "nothing after the stop"
        );
    }

    #[test]
    fn a_prompt_plays_through_a_recording() {
        // what the load bench runs: every call plays a prompt and records the peer
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::Play {
            items: vec![PlayItem::Audio(audio(800, LOUD))],
            loops: 0,
            barge_in: false,
        });
        sim.command(Command::Record {
            opts: record(60_000, 0),
            beep: None,
        });
        sim.talk_until(400, 3000);
        assert_eq!(sim.audio_at(LOUD).len(), 20, "the prompt, looping");
        sim.command(Command::Stop);
        assert_eq!(
            sim.log(),
            [
                "400 PlayDone interrupted",
                "400 Recorded Stopped 400 ms heard",
                "400 Stopped"
            ]
        );
    }

    #[test]
    fn a_command_replaces_what_runs_in_its_own_lane_only() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::Record {
            opts: record(60_000, 0),
            beep: None,
        });
        sim.command(play(4000, true));
        sim.idle_until(100);
        // listening: a collection ends the recording; the prompt plays on, so the
        // collection's timeout waits
        sim.command(collect(None, 300));
        // sending: digits end the prompt, and so the timeout starts
        sim.command(Command::SendDigits("1".into()));
        sim.idle_until(1000);
        assert_eq!(
            sim.log(),
            [
                "100 Recorded Stopped 0 ms",
                "100 PlayDone interrupted",
                // 8 event packets from 100 ms, then the frame it ended in and 60 ms
                "320 DigitsSent",
                "400 Collected \"\" Timeout"
            ]
        );
        // a prompt replaces digits still to go, without a word, and holds a collection's
        // timeout while it plays (the timeout began with the collection: no prompt played)
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::SendDigits("123".into()));
        sim.idle_until(100);
        sim.command(collect(None, 300));
        sim.command(play(800, false));
        sim.command(play(800, false));
        sim.idle_until(1000);
        assert_eq!(
            sim.log(),
            [
                "100 PlayDone interrupted",
                "200 PlayDone",
                "400 Collected \"\" Timeout"
            ]
        );
        assert_eq!(sim.sent.iter().filter(|p| p.pt == 101).count(), 5);
        // a Gather whose prompt is replaced: its timeout waits for the new prompt
        let mut sim = Sim::new(params(Some(101)));
        sim.command(play(800, true));
        sim.command(collect(None, 300));
        sim.idle_until(50);
        sim.command(play(800, true));
        sim.idle_until(1000);
        assert_eq!(
            sim.log(),
            [
                "50 PlayDone interrupted",
                "160 PlayDone",
                "460 Collected \"\" Timeout"
            ]
        );
    }

    #[test]
    fn a_conversation_is_recorded_beside_anything_and_handed_over_once() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::RecordConversation {
            max_ms: 60_000,
            tape: String::new(),
            dual: false,
        });
        assert!(sim.s.records_conversation());
        sim.command(play(1600, false)); // 200 ms said
        sim.talk_until(400, 3000);
        sim.command(Command::EndConversation);
        assert!(!sim.s.records_conversation());
        let c = sim.s.poll_conversation().expect("handed over");
        assert!(sim.s.poll_conversation().is_none());
        let taped = c.finish();
        let mixed = taped.memory();
        assert_eq!(mixed.len(), 400 * 8, "both sides, aligned");
        // the first 200 ms hold the prompt and the peer, the rest only the peer
        assert!(mixed[..1600].iter().all(|&s| s > LOUD));
        assert!(mixed[1600..].iter().all(|&s| (2800..3200).contains(&s)));
    }

    #[test]
    fn a_closed_session_reports_what_ran_and_takes_nothing_more() {
        let mut sim = Sim::new(params(Some(101)));
        sim.command(Command::RecordConversation {
            max_ms: 60_000,
            tape: String::new(),
            dual: false,
        });
        sim.command(Command::Record {
            opts: record(60_000, 0),
            beep: None,
        });
        sim.talk_until(200, LOUD);
        sim.command(Command::Close);
        assert!(sim.s.is_closed());
        assert_eq!(sim.log(), ["200 Recorded Hangup 200 ms heard"]);
        assert!(sim.s.poll_conversation().is_some(), "the conversation too");
        let (sent, stats) = (sim.sent.len(), sim.s.stats());
        sim.command(play(800, false));
        sim.command(Command::Stop);
        sim.talk_until(400, LOUD);
        assert_eq!(sim.log().len(), 1, "no event after the close");
        assert_eq!(sim.sent.len(), sent, "nothing sent");
        assert_eq!(sim.s.stats(), stats, "nothing received");
        assert!(sim.s.poll_conversation().is_none());

        // a Gather at the close: its prompt and its collection report
        let mut sim = Sim::new(params(Some(101)));
        sim.command(play(4000, true));
        sim.command(collect(None, 300));
        sim.idle_until(100);
        sim.command(Command::Close);
        assert_eq!(
            sim.log(),
            ["100 PlayDone interrupted", "100 Collected \"\" Stopped"]
        );
    }
    /// A call's life with a bit of everything, the same for a session ticked at every tick
    /// and one ticked only when it asks (or a packet or command comes).
    fn a_bit_of_everything(sim: &mut Sim) {
        // silence, then a <Gather>: a digit cuts its prompt, the timeout ends it
        sim.idle_until(200);
        sim.command(play(2400, true));
        sim.command(collect(None, 500));
        sim.idle_until(400);
        sim.press('1');
        sim.idle_until(1200);
        // a <Record>: the peer speaks, then nothing, until the silence timeout
        sim.command(Command::Record {
            opts: record(5_000, 300),
            beep: None,
        });
        sim.talk_until(1500, LOUD);
        sim.idle_until(2000);
        // on hold with nothing playing, then back
        sim.command(Command::Update(StreamParams {
            send: false,
            ..params(Some(101))
        }));
        sim.idle_until(3010);
        sim.command(Command::Update(params(Some(101))));
        sim.idle_until(3200);
        // digits out, answering-machine detection, a conversation recording
        sim.command(Command::SendDigits("1w2".into()));
        sim.idle_until(4500);
        sim.command(Command::Detect(AmdConfig::default()));
        sim.command(Command::RecordConversation {
            max_ms: 60_000,
            tape: String::new(),
            dual: false,
        });
        sim.talk_until(5000, LOUD);
        sim.idle_until(9000);
        sim.command(Command::EndConversation);
        sim.idle_until(9500);
        sim.command(Command::Close);
    }

    /// What a session without the peer's address does until the peer's first packet: nothing
    /// to send, then a prompt and a collection.
    fn waiting_for_the_peer(sim: &mut Sim) {
        sim.idle_until(530);
        sim.speak(0);
        sim.idle_until(710);
        sim.command(play(800, false));
        sim.command(collect(Some(2), 400));
        sim.idle_until(1000);
        sim.press('4');
        sim.idle_until(2000);
    }

    /// Asserts that two runs sent the same packets and reported the same events, naming the
    /// first difference briefly.
    fn assert_same(asked: &Sim, every: &Sim) {
        let brief = |p: &Sent| (p.at, p.pt, p.marker, p.seq, p.ts, p.payload[0]);
        let first = asked.sent.iter().zip(&every.sent).position(|(a, e)| a != e);
        if let Some(i) = first {
            panic!(
                "packet {i} differs: {:?} (ticked when asked) vs {:?} (ticked always)",
                brief(&asked.sent[i]),
                brief(&every.sent[i])
            );
        }
        assert_eq!(asked.sent.len(), every.sent.len(), "packets sent");
        assert_eq!(asked.log(), every.log());
        assert_eq!(asked.s.stats(), every.s.stats());
    }

    #[test]
    fn ticking_only_when_asked_changes_nothing_and_an_idle_call_asks_little() {
        let mut every = Sim::new(params(Some(101)));
        let mut asked = Sim::lazy(params(Some(101)));
        a_bit_of_everything(&mut every);
        a_bit_of_everything(&mut asked);
        assert_eq!(
            every.log(),
            [
                "400 Digit 1",
                "400 PlayDone interrupted",
                "900 Collected \"1\" Timeout",
                "1800 Recorded Silence 570 ms heard",
                "4160 DigitsSent",
                "9500 Detected unknown analysis-time"
            ]
        );
        assert_same(&asked, &every);
        assert_eq!(asked.s.take_late_frames(), every.s.take_late_frames());
        assert!(
            asked.ticked < every.ticked * 3 / 4,
            "{} of {} ticks",
            asked.ticked,
            every.ticked
        );

        let no_address = StreamParams {
            remote: None,
            ..params(Some(101))
        };
        let mut every = Sim::new(no_address);
        let mut asked = Sim::lazy(no_address);
        waiting_for_the_peer(&mut every);
        waiting_for_the_peer(&mut asked);
        assert_same(&asked, &every);
        assert_eq!(
            every.sent[0].at, 540,
            "sent from the peer's first packet on"
        );
        assert_eq!(
            every.log(),
            [
                "820 PlayDone",
                "1000 Digit 4",
                "1400 Collected \"4\" Timeout"
            ]
        );
        assert_eq!(asked.s.take_late_frames(), 0);
        // Before the peer's first packet the session asked for no tick but its first.
        assert!(asked.ticked < every.ticked - 50);
    }

    #[test]
    fn poll_timeout_names_the_next_frame_a_deadline_or_nothing() {
        let mut sim = Sim::new(params(Some(101)));
        assert_eq!(sim.s.poll_timeout(), Some(0), "the first frame at once");
        sim.idle_until(50);
        // silence goes out every 20 ms: frames at 0, 20, 40, the next at 60
        assert_eq!(sim.s.poll_timeout(), Some(60));

        // on hold with nothing playing: nothing to do until something comes
        sim.command(Command::Update(StreamParams {
            send: false,
            ..params(Some(101))
        }));
        sim.idle_until(70);
        assert_eq!(sim.s.poll_timeout(), None);
        // a collection's timeout is a time to wake at
        sim.command(collect(None, 1000));
        assert_eq!(sim.s.poll_timeout(), Some(1070));
        // a prompt moves on frame by frame, even on hold (the frame at 60 was built)
        sim.command(play(800, false));
        assert_eq!(sim.s.poll_timeout(), Some(80));
        sim.idle_until(90);
        assert_eq!(sim.s.poll_timeout(), Some(100));
        // a recording watches the clock: every tick
        sim.command(Command::Record {
            opts: record(60_000, 0),
            beep: None,
        });
        assert_eq!(sim.s.poll_timeout(), Some(90), "now: the next tick");
        sim.idle_until(110);
        assert_eq!(
            sim.s.poll_timeout(),
            Some(100),
            "a time past: the next tick"
        );
        sim.command(Command::Close);
        assert_eq!(sim.s.poll_timeout(), None);
    }
}
