//! One call's RTP, without I/O: our sequence and timestamp going out, and coming in the peer's
//! packets checked, latched (symmetric RTP), put back in order and handed on with gaps named.
//!
//! Headers are read and written with `rtp-rs`; everything else is ours. Time is an argument
//! (milliseconds on the worker's clock). Nothing here allocates per packet: the reorder
//! buffer is a few fixed slots.

use std::net::SocketAddr;

use rtp_rs::{RtpPacketBuilder, RtpReader, Seq};

/// Largest audio payload we take: 60 ms of G.711. Bigger packets are dropped as malformed.
pub const MAX_PAYLOAD: usize = 480;
/// Size of a buffer that holds any packet we send.
pub const MAX_PACKET: usize = 12 + MAX_PAYLOAD;
/// Packets held back for reordering; one that waited `HOLD_MS` is released regardless.
const SLOTS: usize = 8;
const HOLD_MS: u64 = 20;
/// A latched peer that has been silent this long may be replaced by a new source address.
const RELATCH_AFTER_MS: u64 = 2000;

/// What the call agreed in SDP, as the media layer needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParams {
    pub law: crate::g711::Law,
    /// The peer's payload type for the audio codec.
    pub payload_type: u8,
    /// The peer's telephone-event payload type, if it does RFC 4733.
    pub telephone_event: Option<u8>,
    /// 20 or 30.
    pub ptime_ms: u32,
    /// Where the SDP says to send; replaced by where the peer's packets come from.
    pub remote: Option<SocketAddr>,
    /// False while the peer holds the call (or gave no address): nothing is sent.
    pub send: bool,
}

impl StreamParams {
    /// The common offer: PCMU at payload type 0, telephone-event at 101, 20 ms frames, sending
    /// to `remote` (or, with `None`, to where the peer's packets come from).
    pub fn pcmu(remote: Option<SocketAddr>) -> StreamParams {
        StreamParams {
            law: crate::g711::Law::Mu,
            payload_type: 0,
            telephone_event: Some(101),
            ptime_ms: 20,
            remote,
            send: true,
        }
    }

    /// Samples (= G.711 bytes) in one frame.
    pub fn frame_samples(&self) -> usize {
        self.ptime_ms as usize * 8
    }
}

/// Counters of one stream, summed by the worker into its metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RtpStats {
    pub sent: u64,
    pub received: u64,
    /// Not RTP version 2, truncated, padded wrongly, or too large.
    pub malformed: u64,
    /// From an address other than the latched peer.
    pub foreign: u64,
    /// RTCP (ignored; multiplexed or sent to our port by mistake).
    pub rtcp: u64,
    /// A payload type the SDP did not agree.
    pub unknown_payload: u64,
    /// Arrived after its place had been passed, or a duplicate.
    pub late: u64,
    /// Sequence numbers never seen.
    pub lost: u64,
}

impl RtpStats {
    /// Packets received but not used, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.malformed + self.foreign + self.rtcp + self.unknown_payload + self.late
    }

    pub fn add(&mut self, o: &RtpStats) {
        self.sent += o.sent;
        self.received += o.received;
        self.malformed += o.malformed;
        self.foreign += o.foreign;
        self.rtcp += o.rtcp;
        self.unknown_payload += o.unknown_payload;
        self.late += o.late;
        self.lost += o.lost;
    }
}

/// Our outgoing stream: SSRC, sequence number and timestamp.
#[derive(Debug, Clone)]
pub struct Outgoing {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    marker: bool,
}

impl Outgoing {
    /// A stream with random-looking starting values chosen by the caller (RFC 3550 §5.1).
    pub fn new(ssrc: u32, seq: u16, timestamp: u32) -> Outgoing {
        Outgoing {
            ssrc,
            seq,
            timestamp,
            marker: true,
        }
    }

    /// The timestamp the next audio frame will carry.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    /// Time passed with nothing sent (hold): the timestamp moves on, and the next packet
    /// starts a talkspurt.
    pub fn skip(&mut self, samples: u32) {
        self.timestamp = self.timestamp.wrapping_add(samples);
        self.marker = true;
    }

    /// Writes an audio packet for `payload` (G.711: one byte per sample) into `out`,
    /// returning its length, and advances sequence number and timestamp.
    pub fn audio(&mut self, payload_type: u8, payload: &[u8], out: &mut [u8]) -> usize {
        let n = self.write(payload_type, self.marker, self.timestamp, payload, out);
        self.marker = false;
        self.timestamp = self.timestamp.wrapping_add(payload.len() as u32);
        n
    }

    /// Writes an RFC 4733 event packet: every packet of one event carries the event's start
    /// timestamp (`event_timestamp`) and a new sequence number. Our own timestamp is not
    /// moved: call [`Outgoing::skip`] for the time the event took.
    pub fn event(
        &mut self,
        payload_type: u8,
        payload: &[u8; 4],
        marker: bool,
        event_timestamp: u32,
        out: &mut [u8],
    ) -> usize {
        self.write(payload_type, marker, event_timestamp, payload, out)
    }

    fn write(&mut self, pt: u8, marker: bool, ts: u32, payload: &[u8], out: &mut [u8]) -> usize {
        let built = RtpPacketBuilder::new()
            .payload_type(pt & 0x7f)
            .marked(marker)
            .ssrc(self.ssrc)
            .sequence(Seq::from(self.seq))
            .timestamp(ts)
            .payload(payload)
            .build_into(out);
        self.seq = self.seq.wrapping_add(1);
        // Only a buffer smaller than MAX_PACKET could fail; ours never are.
        built.unwrap_or(0)
    }
}

/// What one datagram from the network turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted<'a> {
    /// Audio, now in the reorder buffer: [`Incoming::release`] hands it on.
    Audio,
    /// An RFC 4733 payload with its RTP timestamp, to be given to the DTMF receiver now.
    Event { timestamp: u32, payload: &'a [u8] },
    /// Dropped and counted.
    Dropped,
}

/// A frame released in order by [`Incoming::release`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Audio(&'a [u8]),
    /// This many packets never came (the caller fills them with silence).
    Lost(u16),
}

#[derive(Clone, Copy)]
struct Slot {
    used: bool,
    seq: u16,
    arrived_ms: u64,
    len: u16,
    data: [u8; MAX_PAYLOAD],
}

const EMPTY: Slot = Slot {
    used: false,
    seq: 0,
    arrived_ms: 0,
    len: 0,
    data: [0; MAX_PAYLOAD],
};

/// The peer's incoming stream.
pub struct Incoming {
    latched: Option<SocketAddr>,
    last_heard_ms: u64,
    ssrc: Option<u32>,
    /// The next sequence number to release; None until the first packet.
    next: Option<u16>,
    slots: [Slot; SLOTS],
    held: usize,
    pub stats: RtpStats,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("latched", &self.latched)
            .field("ssrc", &self.ssrc)
            .field("held", &self.held)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for Incoming {
    fn default() -> Self {
        Incoming {
            latched: None,
            last_heard_ms: 0,
            ssrc: None,
            next: None,
            slots: [EMPTY; SLOTS],
            held: 0,
            stats: RtpStats::default(),
        }
    }
}

/// `a - b` in sequence space: positive when `a` is after `b`.
fn seq_delta(a: u16, b: u16) -> i16 {
    a.wrapping_sub(b) as i16
}

impl Incoming {
    /// Where to send: the address the peer's packets come from, once one has come.
    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched
    }

    /// Packets wait in the reorder buffer (for a gap to fill, or `HOLD_MS`): releasing them
    /// needs time to pass.
    pub fn holds_packets(&self) -> bool {
        self.held > 0
    }

    /// Every slot of the reorder buffer is taken: call [`Incoming::release`] before accepting
    /// more.
    pub fn is_full(&self) -> bool {
        self.held == SLOTS
    }

    /// Checks one datagram from `from`. Audio goes into the reorder buffer; an RFC 4733 event
    /// is returned for immediate handling; anything else is counted and dropped.
    pub fn accept<'a>(
        &mut self,
        now_ms: u64,
        from: SocketAddr,
        data: &'a [u8],
        params: &StreamParams,
    ) -> Accepted<'a> {
        // RTCP (payload types 200-204 read with the marker bit) sent to the RTP port.
        if data.len() >= 2 && data[0] >> 6 == 2 && (200..=204).contains(&data[1]) {
            self.stats.rtcp += 1;
            return Accepted::Dropped;
        }
        let Ok(rtp) = RtpReader::new(data) else {
            self.stats.malformed += 1;
            return Accepted::Dropped;
        };
        let pt = rtp.payload_type();
        let is_audio = pt == params.payload_type;
        let is_event = Some(pt) == params.telephone_event;
        if !is_audio && !is_event {
            // Comfort noise (13) and anything not agreed.
            self.stats.unknown_payload += 1;
            return Accepted::Dropped;
        }
        match self.latched {
            Some(peer) if peer == from => {}
            Some(_) if now_ms.saturating_sub(self.last_heard_ms) < RELATCH_AFTER_MS => {
                self.stats.foreign += 1;
                return Accepted::Dropped;
            }
            _ => self.latched = Some(from),
        }
        self.last_heard_ms = now_ms;
        let payload = rtp.payload();
        if payload.len() > MAX_PAYLOAD {
            self.stats.malformed += 1;
            return Accepted::Dropped;
        }
        self.stats.received += 1;
        if self.ssrc != Some(rtp.ssrc()) {
            // A new source (first packet, or the peer restarted its stream): start afresh.
            self.ssrc = Some(rtp.ssrc());
            self.next = None;
            self.slots.iter_mut().for_each(|s| s.used = false);
            self.held = 0;
        }
        if is_event {
            return Accepted::Event {
                timestamp: rtp.timestamp(),
                payload,
            };
        }
        let seq = u16::from(rtp.sequence_number());
        if let Some(next) = self.next
            && seq_delta(seq, next) < 0
        {
            self.stats.late += 1;
            return Accepted::Dropped;
        }
        if self.slots.iter().any(|s| s.used && s.seq == seq) {
            self.stats.late += 1;
            return Accepted::Dropped;
        }
        // Full (the caller releases whenever `is_full`, so only a caller that does not gets
        // here): the packet cannot be kept.
        let Some(slot) = self.slots.iter_mut().find(|s| !s.used) else {
            self.stats.late += 1;
            return Accepted::Dropped;
        };
        slot.used = true;
        slot.seq = seq;
        slot.arrived_ms = now_ms;
        slot.len = payload.len() as u16;
        slot.data[..payload.len()].copy_from_slice(payload);
        self.held += 1;
        if self.next.is_none() {
            self.next = Some(seq);
        }
        Accepted::Audio
    }

    /// Hands on, in sequence order, every held packet that is next in line, and packets held
    /// `HOLD_MS` or longer (or all of them when `flush`) after naming the gap before them.
    pub fn release(&mut self, now_ms: u64, flush: bool, mut out: impl FnMut(Frame<'_>)) {
        while self.held > 0 {
            let Some(next) = self.next else { return };
            let mut best: Option<usize> = None;
            for (i, s) in self.slots.iter().enumerate() {
                if s.used && best.is_none_or(|b| seq_delta(s.seq, self.slots[b].seq) < 0) {
                    best = Some(i);
                }
            }
            let Some(i) = best else { return };
            let slot = &mut self.slots[i];
            let gap = seq_delta(slot.seq, next);
            if gap > 0 {
                let waited = now_ms.saturating_sub(slot.arrived_ms) >= HOLD_MS;
                if !(waited || flush || self.held == SLOTS) {
                    return;
                }
                self.stats.lost += gap as u64;
                out(Frame::Lost(gap as u16));
            }
            slot.used = false;
            self.held -= 1;
            self.next = Some(slot.seq.wrapping_add(1));
            out(Frame::Audio(&slot.data[..slot.len as usize]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> StreamParams {
        StreamParams::pcmu(None)
    }

    fn packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        RtpPacketBuilder::new()
            .payload_type(pt)
            .sequence(Seq::from(seq))
            .timestamp(ts)
            .ssrc(ssrc)
            .payload(payload)
            .build()
            .unwrap()
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    fn released(inc: &mut Incoming, now: u64, flush: bool) -> Vec<String> {
        let mut v = Vec::new();
        inc.release(now, flush, |f| {
            v.push(match f {
                Frame::Audio(p) => format!("a{}", p[0]),
                Frame::Lost(n) => format!("lost{n}"),
            })
        });
        v
    }

    #[test]
    fn outgoing_advances_sequence_and_timestamp_and_marks_talkspurts() {
        let mut out = Outgoing::new(7, 65535, 1000);
        let mut buf = [0u8; MAX_PACKET];
        let n = out.audio(0, &[0xff; 160], &mut buf);
        let r = RtpReader::new(&buf[..n]).unwrap();
        assert_eq!(
            (r.mark(), u16::from(r.sequence_number()), r.timestamp()),
            (true, 65535, 1000)
        );
        assert_eq!(r.payload().len(), 160);
        let n = out.audio(0, &[0xff; 160], &mut buf);
        let r = RtpReader::new(&buf[..n]).unwrap();
        assert_eq!(
            (r.mark(), u16::from(r.sequence_number()), r.timestamp()),
            (false, 0, 1160)
        );
        out.skip(320);
        let n = out.event(101, &[1, 0, 0, 160], true, 1320, &mut buf);
        let r = RtpReader::new(&buf[..n]).unwrap();
        assert_eq!((r.payload_type(), r.timestamp(), r.ssrc()), (101, 1320, 7));
        let n = out.audio(0, &[0xff; 160], &mut buf);
        let r = RtpReader::new(&buf[..n]).unwrap();
        assert!(r.mark(), "after a skip the next audio starts a talkspurt");
        assert_eq!(r.timestamp(), 1000 + 2 * 160 + 320);
        assert_eq!(
            u16::from(r.sequence_number()),
            2,
            "the event took a sequence number"
        );
    }

    #[test]
    fn in_order_audio_is_released_at_once() {
        let mut inc = Incoming::default();
        for seq in 10..13u16 {
            let p = packet(0, seq, 0, 1, &[seq as u8; 160]);
            assert_eq!(inc.accept(0, peer(), &p, &params()), Accepted::Audio);
        }
        assert_eq!(released(&mut inc, 0, false), ["a10", "a11", "a12"]);
        assert_eq!(inc.stats.received, 3);
    }

    #[test]
    fn reordered_audio_is_put_back_in_order() {
        let mut inc = Incoming::default();
        for seq in [1u16, 3, 2, 5, 4] {
            inc.accept(
                0,
                peer(),
                &packet(0, seq, 0, 1, &[seq as u8; 160]),
                &params(),
            );
        }
        assert_eq!(released(&mut inc, 0, false), ["a1", "a2", "a3", "a4", "a5"]);
        assert_eq!(inc.stats.lost, 0);
    }

    #[test]
    fn a_gap_is_waited_for_then_named() {
        let mut inc = Incoming::default();
        inc.accept(0, peer(), &packet(0, 1, 0, 1, &[1; 160]), &params());
        inc.accept(0, peer(), &packet(0, 4, 0, 1, &[4; 160]), &params());
        assert_eq!(
            released(&mut inc, 5, false),
            ["a1"],
            "4 is held while 2 and 3 may come"
        );
        assert_eq!(released(&mut inc, 25, false), ["lost2", "a4"]);
        assert_eq!(inc.stats.lost, 2);
        // 2 arriving now is late
        assert_eq!(
            inc.accept(30, peer(), &packet(0, 2, 0, 1, &[2; 160]), &params()),
            Accepted::Dropped
        );
        assert_eq!(inc.stats.late, 1);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut inc = Incoming::default();
        for seq in [65534u16, 0, 65535, 1] {
            inc.accept(
                0,
                peer(),
                &packet(0, seq, 0, 1, &[seq as u8; 160]),
                &params(),
            );
        }
        assert_eq!(released(&mut inc, 0, false), ["a254", "a255", "a0", "a1"]);
    }

    #[test]
    fn duplicates_foreign_sources_rtcp_and_garbage_are_dropped_and_counted() {
        let mut inc = Incoming::default();
        let p = packet(0, 1, 0, 1, &[1; 160]);
        assert_eq!(inc.accept(0, peer(), &p, &params()), Accepted::Audio);
        assert_eq!(inc.accept(0, peer(), &p, &params()), Accepted::Dropped);
        let other: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            inc.accept(10, other, &packet(0, 2, 0, 1, &[2; 160]), &params()),
            Accepted::Dropped
        );
        let rtcp = [0x80, 200, 0, 6, 0, 0, 0, 1];
        assert_eq!(inc.accept(10, peer(), &rtcp, &params()), Accepted::Dropped);
        assert_eq!(
            inc.accept(10, peer(), &[1, 2, 3], &params()),
            Accepted::Dropped
        );
        assert_eq!(
            inc.accept(10, peer(), &[0u8; 40], &params()),
            Accepted::Dropped
        );
        assert_eq!(
            inc.accept(10, peer(), &packet(13, 2, 0, 1, &[0; 1]), &params()),
            Accepted::Dropped
        );
        assert_eq!(
            inc.accept(
                10,
                peer(),
                &packet(0, 2, 0, 1, &[0; MAX_PAYLOAD + 1]),
                &params()
            ),
            Accepted::Dropped
        );
        let s = inc.stats;
        assert_eq!(
            (
                s.received,
                s.late,
                s.foreign,
                s.rtcp,
                s.malformed,
                s.unknown_payload
            ),
            (2, 1, 1, 1, 3, 1)
        );
        assert_eq!(inc.latched(), Some(peer()));
    }

    #[test]
    fn a_silent_peer_may_be_replaced_by_a_new_source() {
        let mut inc = Incoming::default();
        inc.accept(0, peer(), &packet(0, 1, 0, 1, &[1; 160]), &params());
        let moved: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let p = packet(0, 500, 0, 9, &[2; 160]);
        assert_eq!(inc.accept(1000, moved, &p, &params()), Accepted::Dropped);
        assert_eq!(inc.accept(3000, moved, &p, &params()), Accepted::Audio);
        assert_eq!(inc.latched(), Some(moved));
        assert_eq!(
            released(&mut inc, 3000, false),
            ["a2"],
            "a new SSRC starts afresh"
        );
    }

    #[test]
    fn events_are_returned_at_once() {
        let mut inc = Incoming::default();
        let p = packet(101, 1, 8000, 1, &[5, 0x0a, 0, 160]);
        assert_eq!(
            inc.accept(0, peer(), &p, &params()),
            Accepted::Event {
                timestamp: 8000,
                payload: &[5, 0x0a, 0, 160]
            }
        );
    }

    #[test]
    fn a_full_buffer_releases_past_a_gap_without_waiting() {
        let mut inc = Incoming::default();
        inc.accept(0, peer(), &packet(0, 1, 0, 1, &[1; 10]), &params());
        released(&mut inc, 0, false);
        for seq in 3..3 + SLOTS as u16 {
            inc.accept(
                0,
                peer(),
                &packet(0, seq, 0, 1, &[seq as u8; 10]),
                &params(),
            );
        }
        let out = released(&mut inc, 0, false);
        assert_eq!(out[0], "lost1");
        assert_eq!(out.len(), 1 + SLOTS);
    }
}
