//! DTMF: RFC 4733 telephone-events (payload, receiver, sender) and an in-band Goertzel detector.
//!
//! All pure: the RTP session hands in payloads with their RTP timestamp, or decoded 8 kHz audio,
//! and sends what the sender yields.

use std::collections::VecDeque;

/// One RFC 4733 telephone-event payload (§2.3): event, end bit, volume, duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TelephoneEvent {
    /// 0-9, 10 = `*`, 11 = `#`, 12-15 = A-D; other values are other events (16 = flash).
    pub event: u8,
    /// The E bit: this packet ends the event.
    pub end: bool,
    /// Power level as -dBm0, 0..=63 (6 bits).
    pub volume: u8,
    /// Duration so far in RTP timestamp units (samples at 8 kHz), from the event's timestamp.
    pub duration: u16,
}

impl TelephoneEvent {
    /// The payload size.
    pub const LEN: usize = 4;

    /// Parses the first event of a payload. Shorter than 4 bytes is `None`; anything after the
    /// first 4 bytes (further events packed into one packet, RFC 4733 §2.5.1.5) is ignored. The
    /// reserved bit is ignored.
    pub fn parse(payload: &[u8]) -> Option<TelephoneEvent> {
        let &[event, flags, d0, d1, ..] = payload else {
            return None;
        };
        Some(TelephoneEvent {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3f,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    /// The 4-byte payload; a volume above 63 is cut to its low 6 bits.
    pub fn to_bytes(&self) -> [u8; 4] {
        let flags = if self.end { 0x80 } else { 0 } | (self.volume & 0x3f);
        let [d0, d1] = self.duration.to_be_bytes();
        [self.event, flags, d0, d1]
    }
}

/// The key of a DTMF event code: 0-9, 10 = `*`, 11 = `#`, 12-15 = `A`-`D`; other codes (flash and
/// the like) are not keys.
pub fn event_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// The event code of a key; `a`-`d` are accepted as `A`-`D`.
pub fn digit_event(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

/// Turns the telephone-event packets of one RTP stream (one SSRC) into key presses, each exactly
/// once.
///
/// An event is keyed by its RTP timestamp, which stays the same in every packet of the event,
/// retransmissions included (the end packet is sent 3 times, by some senders with one sequence
/// number, so sequence numbers cannot be used). The key is reported at the first packet seen with
/// a new timestamp, so a digit is known 1 packet after it starts and a lost start packet only
/// delays it. A few recent timestamps are remembered, so a late retransmission of the previous
/// event's end does not report it again. Call [`Rfc4733Receiver::reset`] when the SSRC changes.
#[derive(Debug, Default)]
pub struct Rfc4733Receiver {
    /// The last few event timestamps handled, newest at `recent_next - 1`.
    recent: [Option<u32>; RECENT_EVENTS],
    recent_next: usize,
    current: Option<CurrentEvent>,
}

/// How many past event timestamps the receiver remembers. Retransmissions of an end come within
/// a few packets of it, and no two key presses arrive within one packet time.
const RECENT_EVENTS: usize = 4;

/// A segment of a long event reaches at least this duration before the sender starts the next
/// segment (RFC 4733 §2.5.1.3: the duration field would overflow at 0xffff). The slack covers the
/// last packets of a segment being lost.
const LONG_EVENT_SEGMENT: u16 = 0xf000;

#[derive(Debug, Clone, Copy)]
struct CurrentEvent {
    timestamp: u32,
    event: u8,
    ended: bool,
    duration: u16,
}

impl Rfc4733Receiver {
    pub fn new() -> Rfc4733Receiver {
        Rfc4733Receiver::default()
    }

    /// Handles one telephone-event packet (its RTP timestamp and parsed payload). Returns the key
    /// when this packet is the first seen of a key press; `None` for the rest of its packets and
    /// for events that are not keys.
    pub fn on_packet(&mut self, timestamp: u32, ev: &TelephoneEvent) -> Option<char> {
        if self.recent.contains(&Some(timestamp)) {
            if let Some(cur) = self.current.as_mut().filter(|c| c.timestamp == timestamp) {
                cur.ended |= ev.end;
                cur.duration = cur.duration.max(ev.duration);
            }
            return None;
        }
        self.remember(timestamp);
        let continues = self.current.is_some_and(|cur| {
            cur.event == ev.event
                && !cur.ended
                && cur.duration >= LONG_EVENT_SEGMENT
                && (1..=0x1_0000).contains(&timestamp.wrapping_sub(cur.timestamp))
        });
        self.current = Some(CurrentEvent {
            timestamp,
            event: ev.event,
            ended: ev.end,
            duration: ev.duration,
        });
        if continues {
            None
        } else {
            event_digit(ev.event)
        }
    }

    /// Forgets every event, for a new SSRC (whose timestamps start anywhere).
    pub fn reset(&mut self) {
        *self = Rfc4733Receiver::default();
    }

    fn remember(&mut self, timestamp: u32) {
        self.recent[self.recent_next] = Some(timestamp);
        self.recent_next = (self.recent_next + 1) % RECENT_EVENTS;
    }
}

/// The length of a key press we send, like Twilio's `sendDigits`.
pub const DEFAULT_TONE_MS: u32 = 100;

/// The volume we send, as -dBm0 (a usual DTMF level; SIPp and most phones send 10).
pub const DEFAULT_VOLUME: u8 = 10;

/// Longer key presses are cut to this, so one event never needs RFC 4733 long-event segments
/// (the duration field would overflow at 65535 samples, 8.19 s).
pub const MAX_TONE_MS: u32 = 8000;

/// How many times the end packet is sent (RFC 4733 §2.5.1.4).
const END_PACKETS: u16 = 3;

/// The telephone-event payloads of one key press, one per packet time.
///
/// Yields `(payload, marker)`: the tone packets, whose duration grows by one packet time each
/// (the first has the marker bit), then the end packet 3 times (E bit, the final duration).
///
/// The caller sends one item per packet time, with the payload type negotiated for
/// telephone-event (usually 101). Every packet of the event carries the **same RTP timestamp**
/// (that of the event's start, where the next audio packet would have been) and a **new sequence
/// number**. No audio is sent while the event lasts; audio resumes with its timestamp advanced by
/// [`Rfc4733Sender::tone_samples`] (or by the time actually spent).
#[derive(Debug, Clone)]
pub struct Rfc4733Sender {
    event: u8,
    volume: u8,
    /// Samples per packet time.
    step: u16,
    tone_packets: u16,
    /// Items yielded so far.
    sent: u16,
}

impl Rfc4733Sender {
    /// A key press of `digit` lasting `duration_ms` (rounded up to whole packets, at least one,
    /// at most [`MAX_TONE_MS`]), sent every `ptime_ms`. `None` if `digit` is not a DTMF key or
    /// `ptime_ms` is not in 1..=200.
    pub fn new(digit: char, ptime_ms: u32, duration_ms: u32) -> Option<Rfc4733Sender> {
        let event = digit_event(digit)?;
        if !(1..=200).contains(&ptime_ms) {
            return None;
        }
        let duration_ms = duration_ms.clamp(1, MAX_TONE_MS);
        // ptime <= 200 and duration <= 8000 ms: step <= 1600 and step * packets <= 65535 fit.
        let tone_packets = duration_ms.div_ceil(ptime_ms);
        let step = ptime_ms * 8;
        let max_packets = u32::from(u16::MAX) / step;
        Some(Rfc4733Sender {
            event,
            volume: DEFAULT_VOLUME,
            step: u16::try_from(step).ok()?,
            tone_packets: u16::try_from(tone_packets.min(max_packets)).ok()?,
            sent: 0,
        })
    }

    /// The event's duration in samples (RTP timestamp units), as the end packets carry it.
    pub fn tone_samples(&self) -> u16 {
        self.tone_packets.saturating_mul(self.step)
    }

    fn packets(&self) -> u16 {
        self.tone_packets + END_PACKETS
    }
}

impl Iterator for Rfc4733Sender {
    type Item = ([u8; 4], bool);

    fn next(&mut self) -> Option<([u8; 4], bool)> {
        if self.sent >= self.packets() {
            return None;
        }
        let i = self.sent;
        self.sent += 1;
        let end = i >= self.tone_packets;
        let duration = if end {
            self.tone_samples()
        } else {
            (i + 1).saturating_mul(self.step)
        };
        let ev = TelephoneEvent {
            event: self.event,
            end,
            volume: self.volume,
            duration,
        };
        Some((ev.to_bytes(), i == 0))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::from(self.packets().saturating_sub(self.sent));
        (left, Some(left))
    }
}

impl ExactSizeIterator for Rfc4733Sender {}

/// Samples per Goertzel block: 25.6 ms at 8 kHz. 205 is the classic choice: its bins (39 Hz)
/// separate the DTMF frequencies, which are 73 Hz or more apart.
const BLOCK: usize = 205;

const ROW_HZ: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COL_HZ: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// The weakest tone detected, as the RMS level of each of the two tones. Phones send about
/// -7 to -10 dBm0 per tone (-10 to -13 dBFS); this leaves room for lossy lines.
const MIN_TONE_DBFS: f32 = -40.0;
/// The row (low) tone may be this much louder than the column tone ("normal" twist: lines lose
/// more of the high frequencies)...
const MAX_NORMAL_TWIST_DB: f32 = 8.0;
/// ...and the column tone this much louder than the row tone.
const MAX_REVERSE_TWIST_DB: f32 = 4.0;
/// The strongest row (and column) must beat the others in its group by this much.
const MIN_RELATIVE_PEAK_DB: f32 = 8.0;
/// The two tones must carry this share of the block's energy: rejects speech and noise, whose
/// energy is spread over the band.
const MIN_TONE_ENERGY_SHARE: f32 = 0.5;

/// How many pending digits [`InbandDetector`] keeps when the caller pushes much audio at once;
/// further digits are dropped.
const MAX_PENDING: usize = 16;

/// In-band DTMF detection on 8 kHz audio: 8 Goertzel filters over blocks of 205 samples (25.6 ms).
///
/// A block holds a key when the strongest row and column tones are both above the minimum level,
/// within the allowed twist, clearly above the other tones of their group, and together carry
/// at least half of the block's energy (so the tone must fill more than half of the block). A
/// key is reported once it holds for 2 consecutive blocks, then not again until a block without
/// it. Hence, wherever they fall on block boundaries: tones of 52 ms or more are always
/// detected, bursts of 25 ms or less never, and a gap of 26 ms or more between two presses of one
/// key is always seen.
#[derive(Debug)]
pub struct InbandDetector {
    /// 2·cos(2πf/8000) for the 4 row then 4 column frequencies.
    coeffs: [f32; 8],
    s1: [f32; 8],
    s2: [f32; 8],
    /// Σx² over the block so far.
    energy: f32,
    /// Samples in the block so far.
    filled: usize,
    /// Goertzel power of a tone at [`MIN_TONE_DBFS`] over one block.
    min_power: f32,
    /// The key the previous block held.
    last_block: Option<char>,
    /// The key reported and still held, if any.
    reported: Option<char>,
    pending: VecDeque<char>,
}

impl Default for InbandDetector {
    fn default() -> InbandDetector {
        InbandDetector::new()
    }
}

impl InbandDetector {
    pub fn new() -> InbandDetector {
        let mut coeffs = [0.0; 8];
        for (c, f) in coeffs.iter_mut().zip(ROW_HZ.iter().chain(&COL_HZ)) {
            *c = 2.0 * (2.0 * std::f32::consts::PI * f / 8000.0).cos();
        }
        // A sine of amplitude A (full scale = 1) gives a Goertzel power of (A·N/2)²; its RMS
        // level is A/√2.
        let amplitude = std::f32::consts::SQRT_2 * 10f32.powf(MIN_TONE_DBFS / 20.0);
        let min_power = (amplitude * BLOCK as f32 / 2.0).powi(2);
        InbandDetector {
            coeffs,
            s1: [0.0; 8],
            s2: [0.0; 8],
            energy: 0.0,
            filled: 0,
            min_power,
            last_block: None,
            reported: None,
            pending: VecDeque::with_capacity(MAX_PENDING),
        }
    }

    /// Feeds 8 kHz audio of any length. Returns the oldest key detected and not yet returned;
    /// when one push spans several key presses, the others come from the next pushes or from
    /// [`InbandDetector::poll_digit`].
    pub fn push(&mut self, pcm: &[i16]) -> Option<char> {
        for &s in pcm {
            let x = f32::from(s) / 32768.0;
            self.energy += x * x;
            for k in 0..8 {
                let s0 = x + self.coeffs[k] * self.s1[k] - self.s2[k];
                self.s2[k] = self.s1[k];
                self.s1[k] = s0;
            }
            self.filled += 1;
            if self.filled == BLOCK {
                let key = self.block_key();
                self.s1 = [0.0; 8];
                self.s2 = [0.0; 8];
                self.energy = 0.0;
                self.filled = 0;
                self.handle_block(key);
            }
        }
        self.pending.pop_front()
    }

    /// The next key detected and not yet returned.
    pub fn poll_digit(&mut self) -> Option<char> {
        self.pending.pop_front()
    }

    fn handle_block(&mut self, key: Option<char>) {
        match key {
            None => self.reported = None,
            Some(k) if self.last_block == Some(k) && self.reported != Some(k) => {
                self.reported = Some(k);
                if self.pending.len() < MAX_PENDING {
                    self.pending.push_back(k);
                }
            }
            Some(_) => {}
        }
        self.last_block = key;
    }

    /// The key this block holds, if it passes every check.
    fn block_key(&self) -> Option<char> {
        let mut power = [0.0f32; 8];
        for (k, p) in power.iter_mut().enumerate() {
            let (s1, s2) = (self.s1[k], self.s2[k]);
            *p = s1 * s1 + s2 * s2 - self.coeffs[k] * s1 * s2;
        }
        let (rows, cols) = power.split_at(4);
        let (row, row_power) = strongest(rows);
        let (col, col_power) = strongest(cols);
        if row_power < self.min_power || col_power < self.min_power {
            return None;
        }
        if row_power > col_power * db_to_power(MAX_NORMAL_TWIST_DB)
            || col_power > row_power * db_to_power(MAX_REVERSE_TWIST_DB)
        {
            return None;
        }
        let peak = db_to_power(MIN_RELATIVE_PEAK_DB);
        let dominates = |group: &[f32], best: usize, best_power: f32| {
            group
                .iter()
                .enumerate()
                .all(|(i, &p)| i == best || p * peak < best_power)
        };
        if !dominates(rows, row, row_power) || !dominates(cols, col, col_power) {
            return None;
        }
        // A tone's energy over the block is 2·power/N (see `min_power`).
        let tone_energy = 2.0 * (row_power + col_power) / BLOCK as f32;
        if tone_energy < MIN_TONE_ENERGY_SHARE * self.energy {
            return None;
        }
        Some(KEYS[row][col])
    }
}

/// The index and power of the strongest filter of a group.
fn strongest(group: &[f32]) -> (usize, f32) {
    group.iter().copied().enumerate().fold(
        (0, f32::MIN),
        |best, (i, p)| if p > best.1 { (i, p) } else { best },
    )
}

fn db_to_power(db: f32) -> f32 {
    10f32.powf(db / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g711;

    // --- payload ---

    #[test]
    fn parse_and_serialise() {
        let ev = TelephoneEvent::parse(&[5, 0x8a, 0x08, 0xc0]).unwrap();
        assert_eq!(
            ev,
            TelephoneEvent {
                event: 5,
                end: true,
                volume: 10,
                duration: 2240
            }
        );
        assert_eq!(ev.to_bytes(), [5, 0x8a, 0x08, 0xc0]);
        // The reserved bit is ignored; trailing bytes too.
        let ev = TelephoneEvent::parse(&[11, 0x4a, 0x01, 0x40, 0xff, 0xff]).unwrap();
        assert_eq!(
            ev,
            TelephoneEvent {
                event: 11,
                end: false,
                volume: 10,
                duration: 320
            }
        );
        // Volume is 6 bits.
        let ev = TelephoneEvent {
            event: 1,
            end: false,
            volume: 0xff,
            duration: 0,
        };
        assert_eq!(ev.to_bytes(), [1, 0x3f, 0, 0]);
    }

    #[test]
    fn parse_never_panics_on_short_or_odd_input() {
        for len in 0..4 {
            assert_eq!(TelephoneEvent::parse(&[0xff; 4][..len]), None);
        }
        for b in 0..=255u8 {
            let ev = TelephoneEvent::parse(&[b, b, b, b]).unwrap();
            assert_eq!(TelephoneEvent::parse(&ev.to_bytes()), Some(ev));
            assert_eq!(ev.to_bytes()[1], b & 0xbf); // round trip drops only the reserved bit
        }
    }

    #[test]
    fn digits_and_events() {
        let all = "0123456789*#ABCD";
        for (code, digit) in all.chars().enumerate() {
            assert_eq!(event_digit(code as u8), Some(digit));
            assert_eq!(digit_event(digit), Some(code as u8));
        }
        for (lower, code) in ('a'..='d').zip(12..) {
            assert_eq!(digit_event(lower), Some(code));
        }
        for code in 16..=255 {
            assert_eq!(event_digit(code), None);
        }
        for c in ['e', 'E', 'w', ' ', '+', 'é', '\0'] {
            assert_eq!(digit_event(c), None);
        }
    }

    // --- receiver on SIPp's captures ---

    /// One RTP packet out of a capture.
    #[derive(Debug)]
    struct Rtp<'a> {
        marker: bool,
        payload_type: u8,
        seq: u16,
        timestamp: u32,
        payload: &'a [u8],
    }

    /// The RTP packets of a classic pcap file of Ethernet/IPv4/UDP frames; anything else is
    /// skipped.
    fn pcap_rtp(file: &[u8]) -> Vec<Rtp<'_>> {
        let magic = &file[..4];
        let le = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
            _ => panic!("not a pcap file: magic {magic:x?}"),
        };
        let u32_at = |b: &[u8], at: usize| {
            let bytes = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            if le {
                u32::from_le_bytes(bytes)
            } else {
                u32::from_be_bytes(bytes)
            }
        };
        assert_eq!(u32_at(file, 20), 1, "link type must be Ethernet");
        let mut packets = Vec::new();
        let mut at = 24;
        while at + 16 <= file.len() {
            let captured = u32_at(file, at + 8) as usize;
            let frame = &file[at + 16..at + 16 + captured];
            at += 16 + captured;
            // Ethernet: 14 bytes, ethertype IPv4.
            if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
                continue;
            }
            let ip = &frame[14..];
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || ip[9] != 17 {
                continue;
            }
            let udp = &ip[ihl..];
            let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
            let rtp = &udp[8..udp_len];
            assert_eq!(rtp[0] >> 6, 2, "RTP version");
            let csrcs = usize::from(rtp[0] & 0x0f);
            let mut header = 12 + 4 * csrcs;
            if rtp[0] & 0x10 != 0 {
                let words = usize::from(u16::from_be_bytes([rtp[header + 2], rtp[header + 3]]));
                header += 4 + 4 * words;
            }
            let mut end = rtp.len();
            if rtp[0] & 0x20 != 0 {
                end -= usize::from(rtp[end - 1]);
            }
            packets.push(Rtp {
                marker: rtp[1] & 0x80 != 0,
                payload_type: rtp[1] & 0x7f,
                seq: u16::from_be_bytes([rtp[2], rtp[3]]),
                timestamp: u32::from_be_bytes([rtp[4], rtp[5], rtp[6], rtp[7]]),
                payload: &rtp[header..end],
            });
        }
        packets
    }

    /// SIPp's captures (see testdata/dtmf_2833.README), with the key each holds.
    const SIPP_CAPTURES: [(&[u8], char); 12] = [
        (include_bytes!("../testdata/dtmf_2833_0.pcap"), '0'),
        (include_bytes!("../testdata/dtmf_2833_1.pcap"), '1'),
        (include_bytes!("../testdata/dtmf_2833_2.pcap"), '2'),
        (include_bytes!("../testdata/dtmf_2833_3.pcap"), '3'),
        (include_bytes!("../testdata/dtmf_2833_4.pcap"), '4'),
        (include_bytes!("../testdata/dtmf_2833_5.pcap"), '5'),
        (include_bytes!("../testdata/dtmf_2833_6.pcap"), '6'),
        (include_bytes!("../testdata/dtmf_2833_7.pcap"), '7'),
        (include_bytes!("../testdata/dtmf_2833_8.pcap"), '8'),
        (include_bytes!("../testdata/dtmf_2833_9.pcap"), '9'),
        (include_bytes!("../testdata/dtmf_2833_star.pcap"), '*'),
        (include_bytes!("../testdata/dtmf_2833_pound.pcap"), '#'),
    ];

    fn telephone_events<'a>(packets: &'a [Rtp<'a>]) -> Vec<(u32, TelephoneEvent)> {
        packets
            .iter()
            .filter(|p| p.payload_type == 101 && p.payload.len() == TelephoneEvent::LEN)
            .map(|p| (p.timestamp, TelephoneEvent::parse(p.payload).unwrap()))
            .collect()
    }

    #[test]
    fn sipp_captures_give_one_key_each() {
        for (file, key) in SIPP_CAPTURES {
            let packets = pcap_rtp(file);
            let events = telephone_events(&packets);
            assert_eq!(events.len(), 10, "{key}");
            let mut rx = Rfc4733Receiver::new();
            let got: Vec<char> = events
                .iter()
                .filter_map(|(ts, ev)| rx.on_packet(*ts, ev))
                .collect();
            assert_eq!(got, [key]);
            // Reported at the first packet.
            let mut rx = Rfc4733Receiver::new();
            assert_eq!(rx.on_packet(events[0].0, &events[0].1), Some(key));
        }
    }

    #[test]
    fn sipp_captures_look_as_documented() {
        let packets = pcap_rtp(SIPP_CAPTURES[5].0);
        assert!(packets[0].marker);
        assert!(packets[1..].iter().all(|p| !p.marker));
        // The end packet three times with one sequence number.
        let ends: Vec<_> = packets
            .iter()
            .filter(|p| p.payload[1] & 0x80 != 0)
            .collect();
        assert_eq!(ends.len(), 3);
        assert!(ends.iter().all(|p| p.seq == ends[0].seq));
        let durations: Vec<u16> = telephone_events(&packets)
            .iter()
            .map(|(_, e)| e.duration)
            .collect();
        assert_eq!(
            durations,
            [0, 320, 640, 960, 1280, 1600, 1920, 2240, 2240, 2240]
        );
    }

    #[test]
    fn sipp_captures_with_lost_packets() {
        for (file, key) in SIPP_CAPTURES {
            let packets = pcap_rtp(file);
            let events = telephone_events(&packets);
            // Only the end packets arrive: still one key.
            let mut rx = Rfc4733Receiver::new();
            let got: Vec<char> = events[7..]
                .iter()
                .filter_map(|(ts, ev)| rx.on_packet(*ts, ev))
                .collect();
            assert_eq!(got, [key]);
            // Only one middle packet arrives.
            let mut rx = Rfc4733Receiver::new();
            assert_eq!(rx.on_packet(events[4].0, &events[4].1), Some(key));
        }
    }

    #[test]
    fn all_captures_in_a_row_give_every_key_in_order() {
        let mut rx = Rfc4733Receiver::new();
        let mut got = String::new();
        for (file, _) in SIPP_CAPTURES {
            let packets = pcap_rtp(file);
            got.extend(
                telephone_events(&packets)
                    .iter()
                    .filter_map(|(ts, ev)| rx.on_packet(*ts, ev)),
            );
        }
        assert_eq!(got, "0123456789*#");
    }

    // --- receiver, synthetic ---

    fn ev(event: u8, end: bool, duration: u16) -> TelephoneEvent {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
    }

    #[test]
    fn same_key_twice_is_two_presses() {
        let mut rx = Rfc4733Receiver::new();
        assert_eq!(rx.on_packet(1000, &ev(1, false, 160)), Some('1'));
        assert_eq!(rx.on_packet(1000, &ev(1, true, 800)), None);
        assert_eq!(rx.on_packet(1000, &ev(1, true, 800)), None);
        assert_eq!(rx.on_packet(2600, &ev(1, false, 160)), Some('1'));
        assert_eq!(rx.on_packet(2600, &ev(1, true, 800)), None);
    }

    #[test]
    fn late_retransmission_of_the_previous_end_is_not_reported() {
        let mut rx = Rfc4733Receiver::new();
        assert_eq!(rx.on_packet(1000, &ev(4, true, 800)), Some('4'));
        assert_eq!(rx.on_packet(1800, &ev(7, false, 160)), Some('7'));
        assert_eq!(rx.on_packet(1000, &ev(4, true, 800)), None);
        assert_eq!(rx.on_packet(1800, &ev(7, true, 800)), None);
    }

    #[test]
    fn events_that_are_not_keys_are_not_reported() {
        let mut rx = Rfc4733Receiver::new();
        assert_eq!(rx.on_packet(5, &ev(16, false, 160)), None); // flash
        assert_eq!(rx.on_packet(5, &ev(16, true, 320)), None);
        assert_eq!(rx.on_packet(900, &ev(15, false, 160)), Some('D'));
    }

    #[test]
    fn timestamps_wrap() {
        let mut rx = Rfc4733Receiver::new();
        assert_eq!(rx.on_packet(u32::MAX - 100, &ev(2, true, 800)), Some('2'));
        assert_eq!(rx.on_packet(700, &ev(3, false, 160)), Some('3'));
    }

    #[test]
    fn long_event_segments_are_one_press() {
        // RFC 4733 §2.5.1.3: past 0xffff the sender starts a new segment at ts + duration.
        let mut rx = Rfc4733Receiver::new();
        assert_eq!(rx.on_packet(10, &ev(0, false, 160)), Some('0'));
        assert_eq!(rx.on_packet(10, &ev(0, false, 0xffff)), None);
        assert_eq!(rx.on_packet(10 + 0xffff, &ev(0, false, 160)), None);
        assert_eq!(rx.on_packet(10 + 0xffff, &ev(0, true, 4000)), None);
        // A new press of the same key after the end.
        assert_eq!(
            rx.on_packet(10 + 0xffff + 5000, &ev(0, false, 160)),
            Some('0')
        );
    }

    #[test]
    fn reset_forgets() {
        let mut rx = Rfc4733Receiver::new();
        assert_eq!(rx.on_packet(10, &ev(9, false, 160)), Some('9'));
        rx.reset();
        assert_eq!(rx.on_packet(10, &ev(9, false, 320)), Some('9'));
    }

    // --- sender ---

    #[test]
    fn sender_packets() {
        let tx = Rfc4733Sender::new('#', 20, DEFAULT_TONE_MS).unwrap();
        assert_eq!(tx.len(), 5 + 3);
        assert_eq!(tx.tone_samples(), 800);
        let packets: Vec<_> = tx.collect();
        let events: Vec<_> = packets
            .iter()
            .map(|(p, _)| TelephoneEvent::parse(p).unwrap())
            .collect();
        let markers: Vec<bool> = packets.iter().map(|(_, m)| *m).collect();
        assert_eq!(
            markers,
            [true, false, false, false, false, false, false, false]
        );
        let durations: Vec<u16> = events.iter().map(|e| e.duration).collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800, 800]);
        let ends: Vec<bool> = events.iter().map(|e| e.end).collect();
        assert_eq!(ends, [false, false, false, false, false, true, true, true]);
        assert!(
            events
                .iter()
                .all(|e| e.event == 11 && e.volume == DEFAULT_VOLUME)
        );
    }

    #[test]
    fn sender_rounds_and_bounds() {
        // 30 ms packets: 100 ms rounds up to 4 packets.
        let tx = Rfc4733Sender::new('5', 30, 100).unwrap();
        assert_eq!((tx.len(), tx.tone_samples()), (7, 960));
        // Zero duration is one packet.
        let tx = Rfc4733Sender::new('5', 20, 0).unwrap();
        assert_eq!((tx.len(), tx.tone_samples()), (4, 160));
        // Very long presses stop before the duration field overflows.
        for ptime in [1, 20, 30, 60, 200] {
            let tx = Rfc4733Sender::new('5', ptime, u32::MAX).unwrap();
            assert!(
                u32::from(tx.tone_samples()) >= MAX_TONE_MS * 8 - ptime * 8,
                "{ptime}"
            );
            let last = TelephoneEvent::parse(&tx.last().unwrap().0).unwrap();
            assert!(last.end);
        }
        assert!(Rfc4733Sender::new('x', 20, 100).is_none());
        assert!(Rfc4733Sender::new('1', 0, 100).is_none());
        assert!(Rfc4733Sender::new('1', 201, 100).is_none());
    }

    #[test]
    fn sender_to_receiver_round_trip() {
        let mut rx = Rfc4733Receiver::new();
        let mut got = String::new();
        let mut timestamp = 123_456u32;
        for digit in "0123456789*#ABCD11".chars() {
            let tx = Rfc4733Sender::new(digit, 20, DEFAULT_TONE_MS).unwrap();
            let samples = u32::from(tx.tone_samples());
            for (payload, _) in tx {
                let ev = TelephoneEvent::parse(&payload).unwrap();
                got.extend(rx.on_packet(timestamp, &ev));
            }
            timestamp = timestamp.wrapping_add(samples + 3 * 160 + 400);
        }
        assert_eq!(got, "0123456789*#ABCD11");
    }

    // --- in-band ---

    fn tones(freqs: &[(f64, f64)], ms: usize) -> Vec<i16> {
        (0..ms * 8)
            .map(|n| {
                let t = n as f64 / 8000.0;
                let v: f64 = freqs
                    .iter()
                    .map(|(f, amp)| amp * (2.0 * std::f64::consts::PI * f * t).sin())
                    .sum();
                (v * 32767.0).round().clamp(-32768.0, 32767.0) as i16
            })
            .collect()
    }

    fn key_freqs(key: char) -> (f64, f64) {
        for (r, row) in KEYS.iter().enumerate() {
            if let Some(c) = row.iter().position(|&k| k == key) {
                return (f64::from(ROW_HZ[r]), f64::from(COL_HZ[c]));
            }
        }
        panic!("not a DTMF key: {key}");
    }

    /// A key press: each tone at `amp` (peak, full scale 1).
    fn dtmf(key: char, ms: usize, amp: f64) -> Vec<i16> {
        let (row, col) = key_freqs(key);
        tones(&[(row, amp), (col, amp)], ms)
    }

    fn silence(ms: usize) -> Vec<i16> {
        vec![0; ms * 8]
    }

    /// Deterministic white noise (a 32-bit LCG), peak `amp`.
    fn noise(ms: usize, amp: f64) -> Vec<i16> {
        let mut state = 0x1234_5678u32;
        (0..ms * 8)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let u = f64::from(state >> 8) / f64::from(1u32 << 24) * 2.0 - 1.0;
                (u * amp * 32767.0) as i16
            })
            .collect()
    }

    /// Every key the detector reports for `pcm`, pushed in 20 ms frames.
    fn detect(pcm: &[i16]) -> String {
        let mut det = InbandDetector::new();
        let mut got = String::new();
        for frame in pcm.chunks(160) {
            got.extend(det.push(frame));
        }
        got.extend(std::iter::from_fn(|| det.poll_digit()));
        got
    }

    #[test]
    fn inband_detects_all_16_keys() {
        for key in "0123456789*#ABCD".chars() {
            let mut pcm = silence(40);
            pcm.extend(dtmf(key, 100, 0.3));
            pcm.extend(silence(60));
            assert_eq!(detect(&pcm), key.to_string(), "{key} {:?}", key_freqs(key));
        }
    }

    #[test]
    fn inband_detects_a_sequence_pushed_at_once() {
        let mut pcm = Vec::new();
        for key in "159#".chars() {
            pcm.extend(dtmf(key, 100, 0.3));
            pcm.extend(silence(100));
        }
        let mut det = InbandDetector::new();
        let mut got: String = det.push(&pcm).into_iter().collect();
        got.extend(std::iter::from_fn(|| det.poll_digit()));
        assert_eq!(got, "159#");
    }

    #[test]
    fn inband_same_key_twice_with_a_gap_is_two_presses() {
        let mut pcm = dtmf('7', 100, 0.3);
        pcm.extend(silence(60));
        pcm.extend(dtmf('7', 100, 0.3));
        assert_eq!(detect(&pcm), "77");
        // A long press is one.
        assert_eq!(detect(&dtmf('7', 1500, 0.3)), "7");
    }

    #[test]
    fn inband_levels_and_twist() {
        // -40 dBFS RMS per tone is the floor: 10 dB above it is detected, 6 dB below is not.
        let rms_to_amp = |db: f64| std::f64::consts::SQRT_2 * 10f64.powf(db / 20.0);
        assert_eq!(detect(&dtmf('5', 100, rms_to_amp(-30.0))), "5");
        assert_eq!(detect(&dtmf('5', 100, rms_to_amp(-46.0))), "");
        // Loud but not clipping.
        assert_eq!(detect(&dtmf('5', 100, 0.49)), "5");
        let (row, col) = key_freqs('9');
        let twisted =
            |row_db: f64| tones(&[(row, 0.2 * 10f64.powf(row_db / 20.0)), (col, 0.2)], 100);
        assert_eq!(detect(&twisted(6.0)), "9"); // row 6 dB louder: allowed
        assert_eq!(detect(&twisted(-3.0)), "9"); // column 3 dB louder: allowed
        assert_eq!(detect(&twisted(11.0)), "");
        assert_eq!(detect(&twisted(-7.0)), "");
    }

    #[test]
    fn inband_survives_noise_and_g711() {
        let mut pcm = dtmf('3', 120, 0.3);
        for (s, n) in pcm.iter_mut().zip(noise(120, 0.05)) {
            *s = s.saturating_add(n);
        }
        let mut coded = Vec::new();
        g711::encode(g711::Law::Mu, &pcm, &mut coded);
        let mut decoded = Vec::new();
        g711::decode(g711::Law::Mu, &coded, &mut decoded);
        assert_eq!(detect(&decoded), "3");
    }

    #[test]
    fn inband_rejects_what_is_not_dtmf() {
        assert_eq!(detect(&silence(1000)), "");
        assert_eq!(detect(&noise(1000, 0.5)), "");
        // Every DTMF frequency alone, and common tones (dial tone 350+440, ringback 440+480,
        // busy 480+620, 1 kHz test tone).
        for f in ROW_HZ.iter().chain(&COL_HZ) {
            assert_eq!(detect(&tones(&[(f64::from(*f), 0.4)], 500)), "", "{f} Hz");
        }
        for pair in [
            [350.0, 440.0],
            [440.0, 480.0],
            [480.0, 620.0],
            [1000.0, 1000.0],
        ] {
            assert_eq!(
                detect(&tones(&[(pair[0], 0.3), (pair[1], 0.3)], 500)),
                "",
                "{pair:?}"
            );
        }
        // Two rows at once, two columns at once.
        assert_eq!(
            detect(&tones(&[(697.0, 0.3), (770.0, 0.3), (1209.0, 0.3)], 200)),
            ""
        );
        assert_eq!(
            detect(&tones(&[(697.0, 0.3), (1209.0, 0.3), (1336.0, 0.3)], 200)),
            ""
        );
        // A vowel-like harmonic series (120 Hz fundamental, falling harmonics to 3.4 kHz).
        let vowel: Vec<(f64, f64)> = (1..=28)
            .map(|h| (120.0 * f64::from(h), 0.25 / f64::from(h)))
            .collect();
        assert_eq!(detect(&tones(&vowel, 1000)), "");
        // A key press buried in loud noise.
        let mut pcm = dtmf('1', 100, 0.05);
        for (s, n) in pcm.iter_mut().zip(noise(100, 0.5)) {
            *s = s.saturating_add(n);
        }
        assert_eq!(detect(&pcm), "");
    }

    /// `key` for `ms`, starting `lead` samples into the audio, then silence.
    fn burst(key: char, ms: usize, lead: usize) -> Vec<i16> {
        let mut pcm = vec![0; lead];
        pcm.extend(dtmf(key, ms, 0.3));
        pcm.extend(silence(100));
        pcm
    }

    #[test]
    fn inband_duration_limits_hold_at_every_alignment() {
        for lead in 0..BLOCK {
            assert_eq!(detect(&burst('8', 25, lead)), "", "25 ms, lead {lead}");
            assert_eq!(detect(&burst('8', 52, lead)), "8", "52 ms, lead {lead}");
        }
    }

    #[test]
    fn inband_short_gap_at_every_alignment() {
        for lead in (0..BLOCK).step_by(3) {
            let mut pcm = vec![0; lead];
            pcm.extend(dtmf('0', 80, 0.3));
            pcm.extend(silence(26));
            pcm.extend(dtmf('0', 80, 0.3));
            pcm.extend(silence(60));
            assert_eq!(detect(&pcm), "00", "lead {lead}");
        }
    }

    #[test]
    fn inband_bounds_pending_keys() {
        let mut pcm = Vec::new();
        for _ in 0..(MAX_PENDING + 5) {
            pcm.extend(dtmf('2', 100, 0.3));
            pcm.extend(silence(100));
        }
        let mut det = InbandDetector::new();
        let first = det.push(&pcm);
        let rest = std::iter::from_fn(|| det.poll_digit()).count();
        assert_eq!(first, Some('2'));
        assert_eq!(1 + rest, MAX_PENDING);
    }
}
