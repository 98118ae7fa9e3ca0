//! SDP offer/answer for G.711 calls (RFC 4566, RFC 3264): read a peer's offer or answer,
//! choose PCMU or PCMA and telephone-event, and write our answer or our own offer.
//!
//! Hand-written rather than the `sdp` crate (0.17). We need a dozen line types and write our SDP
//! from a template, and that crate is a poor fit for reading what carriers send: its parser
//! follows RFC 4566's line order strictly (a session `a=` before `t=`, or a missing `s=`/`t=`,
//! fails the whole body), and one `m=` line with a transport outside its list fails the whole
//! body where RFC 3264 wants that one stream refused with port 0. It would also bring rand, url,
//! substring and a second thiserror. This parser is lenient about order and unknown lines,
//! strict about the lines we use, and never panics (it is in the fuzz loop).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Why an SDP body cannot be used. A request carrying one is refused with
/// [`SdpError::STATUS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is not UTF-8")]
    NotUtf8,
    #[error("SDP does not open with v=0")]
    NoVersion,
    #[error("malformed SDP line {0}")]
    BadLine(usize),
    #[error("malformed m= line {0}")]
    BadMedia(usize),
    #[error("unusable connection address {0:?}")]
    BadConnection(String),
    #[error("no connection address for the audio stream")]
    NoConnection,
    #[error("no RTP/AVP audio stream")]
    NoAudio,
    #[error("no codec in common")]
    NoCommonCodec,
}

impl SdpError {
    /// The SIP status for an offer we cannot use (RFC 3261 §21.4.26).
    pub const STATUS: (u16, &'static str) = (488, "Not Acceptable Here");
}

/// The audio codecs we terminate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// G.711 µ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
}

impl Codec {
    /// Our order of preference when the peer offers both.
    pub const PREFERENCE: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];

    /// The static payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// The `a=rtpmap` encoding name.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }
}

/// The payload type we give telephone-event (RFC 4733) in our own offers.
pub const TELEPHONE_EVENT_PT: u8 = 101;

/// Default packetisation time, ms.
pub const DEFAULT_PTIME: u32 = 20;

/// Media direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_attr(name: &str) -> Option<Self> {
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|d| d.as_str() == name)
    }

    fn new(send: bool, recv: bool) -> Self {
        match (send, recv) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// An `a=rtpmap` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub kind: String,
    /// 0 means the stream is refused or disabled.
    pub port: u16,
    pub proto: String,
    pub formats: Vec<String>,
    pub connection: Option<IpAddr>,
    pub rtpmaps: Vec<RtpMap>,
    pub ptime: Option<u32>,
    pub direction: Option<Direction>,
}

/// A parsed session description: only what offer/answer for G.711 needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// The `o=` value as sent (a re-offer with the same version changes nothing).
    pub origin: Option<String>,
    pub connection: Option<IpAddr>,
    pub direction: Option<Direction>,
    pub ptime: Option<u32>,
    pub media: Vec<Media>,
}

/// Parses an SDP body. Accepts CRLF or LF, lines in any order, unknown line types and
/// attributes; refuses a body that does not open with `v=0`, lines that are not `x=…`, a
/// malformed `m=` line, and a `c=` line that is not an IPv4 or IPv6 address.
pub fn parse(body: &[u8]) -> Result<SessionDescription, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
    let mut sdp = SessionDescription {
        origin: None,
        connection: None,
        direction: None,
        ptime: None,
        media: Vec::new(),
    };
    let mut seen_version = false;
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let (kind, value) = match line.as_bytes() {
            [k, b'=', ..] if k.is_ascii_lowercase() => (*k, &line[2..]),
            _ => return Err(SdpError::BadLine(n)),
        };
        if !seen_version {
            if kind != b'v' || value.trim() != "0" {
                return Err(SdpError::NoVersion);
            }
            seen_version = true;
            continue;
        }
        match kind {
            b'o' => sdp.origin = Some(value.to_owned()),
            b'm' => sdp
                .media
                .push(media_line(value).ok_or(SdpError::BadMedia(n))?),
            b'c' => {
                let addr = connection(value)?;
                match sdp.media.last_mut() {
                    Some(m) => m.connection = Some(addr),
                    None => sdp.connection = Some(addr),
                }
            }
            b'a' => attribute(&mut sdp, value),
            _ => {}
        }
    }
    if !seen_version {
        return Err(SdpError::NoVersion);
    }
    Ok(sdp)
}

fn media_line(value: &str) -> Option<Media> {
    let mut fields = value.split_ascii_whitespace();
    let kind = fields.next()?;
    // `<port>/<number of ports>`: the count is irrelevant for one RTP stream.
    let port = fields.next()?.split('/').next()?.parse().ok()?;
    let proto = fields.next()?;
    let formats: Vec<String> = fields.map(str::to_owned).collect();
    if formats.is_empty() {
        return None;
    }
    Some(Media {
        kind: kind.to_owned(),
        port,
        proto: proto.to_owned(),
        formats,
        connection: None,
        rtpmaps: Vec::new(),
        ptime: None,
        direction: None,
    })
}

/// `IN IP4 192.0.2.1`, `IN IP4 233.252.0.1/127` (multicast TTL dropped), `IN IP6 2001:db8::1`.
fn connection(value: &str) -> Result<IpAddr, SdpError> {
    let bad = || SdpError::BadConnection(value.to_owned());
    let mut fields = value.split_ascii_whitespace();
    let (Some("IN"), Some(family), Some(addr)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(bad());
    };
    let addr: IpAddr = addr
        .split('/')
        .next()
        .unwrap_or("")
        .parse()
        .map_err(|_| bad())?;
    match (family, addr) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(addr),
        _ => Err(bad()),
    }
}

/// Reads the attributes we use; ignores the rest, including malformed ones we do not need.
fn attribute(sdp: &mut SessionDescription, value: &str) {
    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
    let media = sdp.media.last_mut();
    if let Some(d) = Direction::from_attr(name) {
        match media {
            Some(m) => m.direction = Some(d),
            None => sdp.direction = Some(d),
        }
    } else if name == "ptime" {
        let ptime = arg.trim().parse().ok();
        match media {
            Some(m) => m.ptime = ptime,
            None => sdp.ptime = ptime,
        }
    } else if name == "rtpmap"
        && let Some(m) = media
        && let Some(map) = rtpmap(arg)
    {
        m.rtpmaps.push(map);
    }
}

/// `<payload type> <encoding name>/<clock rate>[/<channels>]`
fn rtpmap(arg: &str) -> Option<RtpMap> {
    let (pt, encoding) = arg.trim().split_once(' ')?;
    let mut parts = encoding.trim().split('/');
    let name = parts.next()?;
    let clock_rate = parts.next()?.parse().ok()?;
    let channels = match parts.next() {
        Some(c) => Some(c.parse().ok()?),
        None => None,
    };
    Some(RtpMap {
        payload_type: pt.parse().ok().filter(|pt| *pt < 128)?,
        encoding: name.to_owned(),
        clock_rate,
        channels,
    })
}

impl Media {
    /// Payload types in the `m=` line, in order (non-numeric formats skipped).
    fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats
            .iter()
            .filter_map(|f| f.parse().ok())
            .filter(|pt| *pt < 128)
    }

    /// The encoding of a payload type: its rtpmap, or the RFC 3551 static assignment.
    fn encoding(&self, pt: u8) -> Option<(&str, u32, Option<u8>)> {
        match self.rtpmaps.iter().find(|m| m.payload_type == pt) {
            Some(m) => Some((&m.encoding, m.clock_rate, m.channels)),
            None => [Codec::Pcmu, Codec::Pcma]
                .into_iter()
                .find(|c| c.payload_type() == pt)
                .map(|c| (c.encoding_name(), 8000, None)),
        }
    }

    fn find(&self, name: &str) -> Option<u8> {
        self.payload_types().find(|&pt| {
            self.encoding(pt).is_some_and(|(enc, clock, channels)| {
                enc.eq_ignore_ascii_case(name)
                    && clock == 8000
                    && matches!(channels, None | Some(1))
            })
        })
    }
}

/// The outcome of offer/answer for the audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Index in [`SessionDescription::media`] of the stream we use.
    pub media_index: usize,
    pub codec: Codec,
    /// The peer's payload type for `codec` (its rtpmap may remap the static number).
    pub payload_type: u8,
    /// The peer's telephone-event/8000 payload type, if it offers RFC 4733 DTMF.
    pub telephone_event: Option<u8>,
    /// 20 or 30 ms: the peer's `a=ptime` if it is one of those, else [`DEFAULT_PTIME`].
    pub ptime: u32,
    /// Where to send RTP. An unspecified address (`0.0.0.0`, RFC 2543 hold) means do not send.
    pub remote: SocketAddr,
    /// The direction the peer declared.
    pub remote_direction: Direction,
    /// Our direction: the mirror of the peer's, without sending when it gave no address.
    pub direction: Direction,
}

impl Negotiated {
    /// The peer has put the call on hold: it will not receive our media.
    pub fn on_hold(&self) -> bool {
        !self.remote_direction.receives() || self.remote.ip().is_unspecified()
    }
}

/// Chooses the first usable audio stream of a peer's SDP (offer, or answer to our offer) and,
/// in it, the first codec of `prefs` the peer lists, with its telephone-event, ptime, address
/// and direction.
pub fn negotiate(sdp: &SessionDescription, prefs: &[Codec]) -> Result<Negotiated, SdpError> {
    let mut audio_seen = false;
    for (i, m) in sdp.media.iter().enumerate() {
        if m.kind != "audio" || m.port == 0 || !m.proto.eq_ignore_ascii_case("RTP/AVP") {
            continue;
        }
        audio_seen = true;
        let Some((codec, payload_type)) = prefs
            .iter()
            .find_map(|&c| m.find(c.encoding_name()).map(|pt| (c, pt)))
        else {
            continue;
        };
        let addr = m
            .connection
            .or(sdp.connection)
            .ok_or(SdpError::NoConnection)?;
        let remote_direction = m.direction.or(sdp.direction).unwrap_or(Direction::SendRecv);
        let direction = Direction::new(
            remote_direction.receives() && !addr.is_unspecified(),
            remote_direction.sends(),
        );
        let ptime = match m.ptime.or(sdp.ptime) {
            Some(p @ (20 | 30)) => p,
            _ => DEFAULT_PTIME,
        };
        return Ok(Negotiated {
            media_index: i,
            codec,
            payload_type,
            telephone_event: m.find("telephone-event"),
            ptime,
            remote: SocketAddr::new(addr, m.port),
            remote_direction,
            direction,
        });
    }
    Err(if audio_seen {
        SdpError::NoCommonCodec
    } else {
        SdpError::NoAudio
    })
}

/// Our side of the session: where we receive RTP, and the `o=` identity (RFC 4566 §5.2: the
/// version must grow whenever our description changes, e.g. going on hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMedia {
    pub ip: IpAddr,
    pub port: u16,
    pub session_id: u64,
    pub session_version: u64,
}

fn session_head(out: &mut String, local: &LocalMedia) {
    let family = if local.ip.is_ipv4() { "IP4" } else { "IP6" };
    let _ = write!(
        out,
        "v=0\r\no=callflow {} {} IN {family} {ip}\r\ns=callflow\r\nc=IN {family} {ip}\r\nt=0 0\r\n",
        local.session_id,
        local.session_version,
        ip = local.ip
    );
}

fn audio_attributes(
    out: &mut String,
    codecs: &[(Codec, u8)],
    te: Option<u8>,
    ptime: u32,
    dir: Direction,
) {
    for (codec, pt) in codecs {
        let _ = write!(out, "a=rtpmap:{pt} {}/8000\r\n", codec.encoding_name());
    }
    if let Some(te) = te {
        let _ = write!(
            out,
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
        );
    }
    let _ = write!(out, "a=ptime:{ptime}\r\na={}\r\n", dir.as_str());
}

/// Our answer to `offer`, as negotiated: one codec (with the offer's payload type),
/// telephone-event if offered, the ptime, our direction; every other `m=` line of the offer
/// refused with port 0, as RFC 3264 §6 requires (same number and order of streams).
pub fn answer(offer: &SessionDescription, neg: &Negotiated, local: &LocalMedia) -> String {
    let mut out = String::with_capacity(320);
    session_head(&mut out, local);
    for (i, m) in offer.media.iter().enumerate() {
        if i != neg.media_index {
            let _ = write!(
                out,
                "m={} 0 {} {}\r\n",
                m.kind,
                m.proto,
                m.formats.join(" ")
            );
            continue;
        }
        let _ = write!(out, "m=audio {} RTP/AVP {}", local.port, neg.payload_type);
        if let Some(te) = neg.telephone_event {
            let _ = write!(out, " {te}");
        }
        out.push_str("\r\n");
        audio_attributes(
            &mut out,
            &[(neg.codec, neg.payload_type)],
            neg.telephone_event,
            neg.ptime,
            neg.direction,
        );
    }
    out
}

/// Our offer for an outbound call (or a re-INVITE, e.g. `SendOnly` to hold): `codecs` in order
/// of preference with their static payload types, telephone-event as
/// [`TELEPHONE_EVENT_PT`], ptime 20.
pub fn offer(local: &LocalMedia, codecs: &[Codec], direction: Direction) -> String {
    let mut out = String::with_capacity(320);
    session_head(&mut out, local);
    let _ = write!(out, "m=audio {} RTP/AVP", local.port);
    for c in codecs {
        let _ = write!(out, " {}", c.payload_type());
    }
    let _ = write!(out, " {TELEPHONE_EVENT_PT}\r\n");
    let pts: Vec<(Codec, u8)> = codecs.iter().map(|&c| (c, c.payload_type())).collect();
    audio_attributes(
        &mut out,
        &pts,
        Some(TELEPHONE_EVENT_PT),
        DEFAULT_PTIME,
        direction,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    const LOCAL: LocalMedia = LocalMedia {
        ip: IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 5)),
        port: 20000,
        session_id: 1700000000,
        session_version: 1,
    };

    /// Negotiates with our preference and prints the outcome and our answer.
    fn check(offer: &str, expect: Expect) {
        let actual = match parse(offer.as_bytes()).and_then(|sdp| {
            let neg = negotiate(&sdp, &Codec::PREFERENCE)?;
            Ok(format!(
                "{:?} pt={} te={:?} ptime={} remote={} peer={} hold={}\n{}",
                neg.codec,
                neg.payload_type,
                neg.telephone_event,
                neg.ptime,
                neg.remote,
                neg.remote_direction.as_str(),
                neg.on_hold(),
                answer(&sdp, &neg, &LOCAL).replace("\r\n", "\n")
            ))
        }) {
            Ok(s) => s,
            Err(e) => format!("error: {e}"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn plain_g711_offer_with_dtmf() {
        check(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 49170 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
            expect![[r#"
                Pcmu pt=0 te=Some(101) ptime=20 remote=192.0.2.10:49170 peer=sendrecv hold=false
                v=0
                o=callflow 1700000000 1 IN IP4 203.0.113.5
                s=callflow
                c=IN IP4 203.0.113.5
                t=0 0
                m=audio 20000 RTP/AVP 0 101
                a=rtpmap:0 PCMU/8000
                a=rtpmap:101 telephone-event/8000
                a=fmtp:101 0-16
                a=ptime:20
                a=sendrecv
            "#]],
        );
    }

    #[test]
    fn sipp_pcma_only_at_30ms_with_carrier_quirks() {
        // Media-level c=, b=, vendor attributes, LF only, no trailing newline, a session
        // attribute before t=, and no s= at all.
        check(
            "v=0\no=sipp 1 1 IN IP4 198.51.100.7\na=X-vendor:1\nt=0 0\n\
m=audio 6000 RTP/AVP 8 96\nc=IN IP4 198.51.100.7\nb=AS:64\n\
a=rtpmap:96 telephone-event/8000\na=fmtp:96 0-11,16\na=silenceSupp:off - - - -\na=ptime:30",
            expect![[r#"
                Pcma pt=8 te=Some(96) ptime=30 remote=198.51.100.7:6000 peer=sendrecv hold=false
                v=0
                o=callflow 1700000000 1 IN IP4 203.0.113.5
                s=callflow
                c=IN IP4 203.0.113.5
                t=0 0
                m=audio 20000 RTP/AVP 8 96
                a=rtpmap:8 PCMA/8000
                a=rtpmap:96 telephone-event/8000
                a=fmtp:96 0-16
                a=ptime:30
                a=sendrecv
            "#]],
        );
    }

    #[test]
    fn hold_by_direction_and_by_zero_address() {
        check(
            "v=0\r\nc=IN IP4 192.0.2.10\r\nm=audio 49170 RTP/AVP 0\r\na=sendonly\r\n",
            expect![[r#"
                Pcmu pt=0 te=None ptime=20 remote=192.0.2.10:49170 peer=sendonly hold=true
                v=0
                o=callflow 1700000000 1 IN IP4 203.0.113.5
                s=callflow
                c=IN IP4 203.0.113.5
                t=0 0
                m=audio 20000 RTP/AVP 0
                a=rtpmap:0 PCMU/8000
                a=ptime:20
                a=recvonly
            "#]],
        );
        check(
            "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 49170 RTP/AVP 0\r\n",
            expect![[r#"
                Pcmu pt=0 te=None ptime=20 remote=0.0.0.0:49170 peer=sendrecv hold=true
                v=0
                o=callflow 1700000000 1 IN IP4 203.0.113.5
                s=callflow
                c=IN IP4 203.0.113.5
                t=0 0
                m=audio 20000 RTP/AVP 0
                a=rtpmap:0 PCMU/8000
                a=ptime:20
                a=recvonly
            "#]],
        );
        check(
            "v=0\r\nc=IN IP4 192.0.2.10\r\na=inactive\r\nm=audio 49170 RTP/AVP 0\r\n",
            expect![[r#"
                Pcmu pt=0 te=None ptime=20 remote=192.0.2.10:49170 peer=inactive hold=true
                v=0
                o=callflow 1700000000 1 IN IP4 203.0.113.5
                s=callflow
                c=IN IP4 203.0.113.5
                t=0 0
                m=audio 20000 RTP/AVP 0
                a=rtpmap:0 PCMU/8000
                a=ptime:20
                a=inactive
            "#]],
        );
    }

    #[test]
    fn other_streams_are_refused_in_place() {
        // Video first, then SRTP audio we cannot do, then the plain audio we take; ptime 40 is
        // not one we use.
        check(
            "v=0\r\nc=IN IP6 2001:db8::7\r\n\
m=video 5000 RTP/AVP 31\r\n\
m=audio 5002 RTP/SAVP 0\r\n\
m=audio 5004 RTP/AVP 18 8\r\na=ptime:40\r\na=recvonly\r\n",
            expect![[r#"
                Pcma pt=8 te=None ptime=20 remote=[2001:db8::7]:5004 peer=recvonly hold=false
                v=0
                o=callflow 1700000000 1 IN IP4 203.0.113.5
                s=callflow
                c=IN IP4 203.0.113.5
                t=0 0
                m=video 0 RTP/AVP 31
                m=audio 0 RTP/SAVP 0
                m=audio 20000 RTP/AVP 8
                a=rtpmap:8 PCMA/8000
                a=ptime:20
                a=sendonly
            "#]],
        );
    }

    #[test]
    fn dynamic_payload_type_for_pcmu_is_honoured() {
        let sdp = parse(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 98 99\r\na=rtpmap:98 pcmu/8000/1\r\na=rtpmap:99 telephone-event/48000\r\n").unwrap();
        let neg = negotiate(&sdp, &Codec::PREFERENCE).unwrap();
        assert_eq!((neg.codec, neg.payload_type), (Codec::Pcmu, 98));
        assert_eq!(
            neg.telephone_event, None,
            "only telephone-event/8000 fits G.711"
        );
    }

    #[test]
    fn unusable_offers() {
        let cases = [
            ("", "error: SDP does not open with v=0"),
            (
                "o=- 1 1 IN IP4 h\r\nv=0\r\n",
                "error: SDP does not open with v=0",
            ),
            ("v=0\r\nnot a line\r\n", "error: malformed SDP line 2"),
            (
                "v=0\r\nm=audio port RTP/AVP 0\r\n",
                "error: malformed m= line 2",
            ),
            (
                "v=0\r\nm=audio 4000 RTP/AVP\r\n",
                "error: malformed m= line 2",
            ),
            (
                "v=0\r\nc=IN IP4 host.example\r\n",
                "error: unusable connection address \"IN IP4 host.example\"",
            ),
            (
                "v=0\r\nc=IN IP6 192.0.2.1\r\n",
                "error: unusable connection address \"IN IP6 192.0.2.1\"",
            ),
            (
                "v=0\r\nm=audio 4000 RTP/AVP 0\r\n",
                "error: no connection address for the audio stream",
            ),
            (
                "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 18 9\r\n",
                "error: no codec in common",
            ),
            (
                "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 0 RTP/AVP 0\r\nm=video 4000 RTP/AVP 31\r\n",
                "error: no RTP/AVP audio stream",
            ),
            (
                "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n",
                "ok",
            ),
        ];
        for (input, want) in cases {
            let got = parse(input.as_bytes())
                .and_then(|sdp| negotiate(&sdp, &Codec::PREFERENCE))
                .map_or_else(|e| format!("error: {e}"), |_| "ok".to_owned());
            assert_eq!(got, want, "{input:?}");
        }
        assert_eq!(parse(b"v=0\r\n\xff"), Err(SdpError::NotUtf8));
        assert_eq!(SdpError::STATUS, (488, "Not Acceptable Here"));
    }

    #[test]
    fn our_offer_and_the_answer_to_it() {
        let ours = offer(&LOCAL, &Codec::PREFERENCE, Direction::SendRecv);
        expect![[r#"
            v=0
            o=callflow 1700000000 1 IN IP4 203.0.113.5
            s=callflow
            c=IN IP4 203.0.113.5
            t=0 0
            m=audio 20000 RTP/AVP 0 8 101
            a=rtpmap:0 PCMU/8000
            a=rtpmap:8 PCMA/8000
            a=rtpmap:101 telephone-event/8000
            a=fmtp:101 0-16
            a=ptime:20
            a=sendrecv
        "#]]
        .assert_eq(&ours.replace("\r\n", "\n"));
        // Our offer reads back as itself, and the peer answering with PCMA only is accepted.
        let neg = negotiate(&parse(ours.as_bytes()).unwrap(), &Codec::PREFERENCE).unwrap();
        assert_eq!(neg.telephone_event, Some(TELEPHONE_EVENT_PT));
        let reply = b"v=0\r\no=peer 5 5 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8\r\n";
        let neg = negotiate(&parse(reply).unwrap(), &Codec::PREFERENCE).unwrap();
        assert_eq!(neg.codec, Codec::Pcma);
        assert_eq!(neg.remote, "192.0.2.9:7000".parse().unwrap());
        // Holding the peer: a re-offer with sendonly and a new version.
        let hold = offer(
            &LocalMedia {
                session_version: 2,
                ..LOCAL
            },
            &[Codec::Pcma],
            Direction::SendOnly,
        );
        assert!(
            hold.contains("o=callflow 1700000000 2 IN IP4") && hold.ends_with("a=sendonly\r\n")
        );
    }
}
