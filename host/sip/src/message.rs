//! SIP message parsing: the size bound, line scanning, compact-form expansion, Content-Length
//! and the checks a transaction layer relies on, in front of rsip, which only ever sees a
//! message we have rebuilt in the canonical form it understands. Also stream framing (TCP).

use rsip::SipMessage;
use rsip::prelude::*;

use crate::scan::{self, Field};

/// The largest message we accept, in bytes, on any transport. A UDP datagram is at most 65,507
/// bytes, so on UDP this only matters for headers that would not fit anyway; on TCP it bounds
/// what one peer can make us buffer. Enforced by [`parse`] and [`frame`].
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Why a buffer is not a usable SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message (only line breaks: a keep-alive)")]
    Empty,
    #[error("message of {len} bytes exceeds the {max}-byte bound")]
    TooLarge { len: usize, max: usize },
    #[error("malformed start line")]
    BadStartLine,
    #[error("unsupported method {0:?}")]
    UnsupportedMethod(String),
    #[error("malformed header field #{index}")]
    BadHeaderLine { index: usize },
    #[error("no blank line after the header fields")]
    NoEndOfHeaders,
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("invalid {name} header: {reason}")]
    InvalidHeader { name: &'static str, reason: String },
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("missing Content-Length (required on stream transports)")]
    MissingContentLength,
    #[error("body has {actual} bytes but Content-Length declares {declared}")]
    BodyTruncated { declared: usize, actual: usize },
    #[error("rsip: {0}")]
    Rsip(String),
}

impl ParseError {
    /// The status a *request* that failed this way is answered with, when an answer is
    /// possible (see [`error_response`](crate::error_response)): 513 for size (RFC 3261
    /// §21.5.14), 501 for a method we do not know (§21.5.2), 400 otherwise (§8.2.6).
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            ParseError::TooLarge { .. } => (513, "Message Too Large"),
            ParseError::UnsupportedMethod(_) => (501, "Not Implemented"),
            _ => (400, "Bad Request"),
        }
    }
}

/// The headers every request and response must carry (RFC 3261 §8.1.1), which the transaction
/// and dialog layers read. `parse` refuses a message without them, so later code may treat their
/// absence as impossible.
const REQUIRED: [&str; 5] = ["Via", "From", "To", "Call-ID", "CSeq"];

/// Parses one SIP message from a datagram (or a frame cut by [`frame`]).
///
/// Before rsip sees the message, the head is rebuilt: leading CRLFs dropped, lines ended with
/// CRLF, folded lines joined, compact names (`f:`, `i:`, `v:`, …) expanded, whitespace around
/// the colon dropped, a Via with several values split into one field per value. The body is
/// never touched. Then:
/// - `Content-Length` larger than the body is an error; bytes past the declared length are
///   discarded, as RFC 3261 §18.3 requires for datagrams (some stacks pad with CRLF); without
///   `Content-Length` the body is the rest of the datagram.
/// - Via, From, To, Call-ID and CSeq must be present and parse as rsip typed headers; a request's
///   CSeq method must be its method.
///
/// Never panics, whatever the input.
pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ParseError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let bytes = &bytes[scan::leading_crlf(bytes)..];
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    let head = scan::scan(bytes).ok_or(ParseError::NoEndOfHeaders)?;
    let start = start_line(head.start_line)?;
    let body_start = head.body_start.ok_or(ParseError::NoEndOfHeaders)?;

    let mut fields = Vec::with_capacity(head.lines.len());
    for (i, line) in head.lines.iter().enumerate() {
        fields.push(scan::field(line).ok_or(ParseError::BadHeaderLine { index: i + 1 })?);
    }
    for name in REQUIRED {
        match fields.iter().find(|f| f.name.eq_ignore_ascii_case(name)) {
            None => return Err(ParseError::MissingHeader(name)),
            Some(f) if f.value.is_empty() => {
                return Err(ParseError::InvalidHeader {
                    name,
                    reason: "empty".into(),
                });
            }
            Some(_) => {}
        }
    }

    let mut body = &bytes[body_start..];
    if let Some(declared) = content_length(&fields)? {
        if declared > body.len() {
            return Err(ParseError::BodyTruncated {
                declared,
                actual: body.len(),
            });
        }
        body = &body[..declared];
    }

    let canonical = rebuild(&start, &fields, body);
    let msg = SipMessage::try_from(canonical.as_slice()).map_err(rsip_error)?;
    check_typed(&msg)?;
    Ok(msg)
}

/// Reads back a response we built from a request that passed [`parse`]: its Via, From, To,
/// Call-ID, CSeq and Record-Route are that request's, already rebuilt and checked, and the rest
/// is ours, so only rsip's own parse is left to do (the rebuild and typed checks of [`parse`]
/// were half of what answering a call cost the SIP stack).
pub(crate) fn parse_built_response(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ParseError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    SipMessage::try_from(bytes).map_err(rsip_error)
}

/// What [`frame`] found at the start of a stream buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not a whole message yet: read more.
    Incomplete,
    /// This many CR/LF bytes open the buffer: drop them (RFC 3261 §7.5). A double CRLF is an
    /// RFC 5626 keep-alive ping, which the driver answers with a single CRLF.
    KeepAlive(usize),
    /// The first message is this many bytes long: hand them to [`parse`].
    Message(usize),
}

/// Finds where the first message in a stream buffer ends, by its mandatory `Content-Length`
/// (RFC 3261 §18.3). An error means the stream cannot be resynchronised: close the connection.
/// Rescans the head on every call; the buffer is bounded by [`MAX_MESSAGE_BYTES`], so that cost
/// is bounded too.
pub fn frame(buf: &[u8]) -> Result<Frame, ParseError> {
    let skip = scan::leading_crlf(buf);
    if skip > 0 {
        return Ok(Frame::KeepAlive(skip));
    }
    let window = &buf[..buf.len().min(MAX_MESSAGE_BYTES)];
    let Some(head) = scan::scan(window) else {
        return incomplete(buf);
    };
    let Some(body_start) = head.body_start else {
        return incomplete(buf);
    };
    let fields: Vec<Field<'_>> = head.lines.iter().filter_map(|l| scan::field(l)).collect();
    let declared = content_length(&fields)?.ok_or(ParseError::MissingContentLength)?;
    let len = body_start.saturating_add(declared);
    if len > MAX_MESSAGE_BYTES {
        return Err(ParseError::TooLarge {
            len,
            max: MAX_MESSAGE_BYTES,
        });
    }
    if buf.len() < len {
        return Ok(Frame::Incomplete);
    }
    Ok(Frame::Message(len))
}

fn incomplete(buf: &[u8]) -> Result<Frame, ParseError> {
    if buf.len() >= MAX_MESSAGE_BYTES {
        return Err(ParseError::TooLarge {
            len: buf.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(Frame::Incomplete)
}

/// A start line, checked and split.
enum StartLine<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16, reason: &'a str },
}

fn start_line(line: &[u8]) -> Result<StartLine<'_>, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::BadStartLine)?;
    if let Some(rest) = strip_version(line) {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (§7.2). Some stacks leave out
        // the space before an empty reason phrase; rsip refuses that, so we put it back.
        let rest = rest.strip_prefix(' ').ok_or(ParseError::BadStartLine)?;
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::BadStartLine);
        }
        let code: u16 = code.parse().map_err(|_| ParseError::BadStartLine)?;
        if !(100..=699).contains(&code) || reason.chars().any(|c| c.is_control() && c != '\t') {
            return Err(ParseError::BadStartLine);
        }
        return Ok(StartLine::Response { code, reason });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version (§7.1), single spaces.
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadStartLine);
    };
    if method.is_empty()
        || !method.bytes().all(scan::is_token)
        || uri.is_empty()
        || uri.chars().any(char::is_control)
        || strip_version(version) != Some("")
    {
        return Err(ParseError::BadStartLine);
    }
    if method.parse::<rsip::Method>().is_err() {
        return Err(ParseError::UnsupportedMethod(method.to_owned()));
    }
    Ok(StartLine::Request { method, uri })
}

/// Strips a leading `SIP/2.0` (case-insensitive, as rsip reads it).
fn strip_version(s: &str) -> Option<&str> {
    let v = s.get(..7)?;
    v.eq_ignore_ascii_case("SIP/2.0").then(|| &s[7..])
}

/// The value of Content-Length, if present. Several fields must agree (a repeated header is
/// tolerated, conflicting ones would make framing ambiguous).
fn content_length(fields: &[Field<'_>]) -> Result<Option<usize>, ParseError> {
    let mut found = None;
    for f in fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("Content-Length"))
    {
        // At most 10 digits keeps the parse within usize; the size bound does the rest.
        if f.value.is_empty() || f.value.len() > 10 || !f.value.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ParseError::BadContentLength);
        }
        let n: usize = f.value.parse().map_err(|_| ParseError::BadContentLength)?;
        if found.is_some_and(|prev| prev != n) {
            return Err(ParseError::BadContentLength);
        }
        found = Some(n);
    }
    Ok(found)
}

/// The message in the one form rsip parses: single-space start line, `Name: value` CRLF
/// lines, one Via value per field, CRLF, body.
fn rebuild(start: &StartLine<'_>, fields: &[Field<'_>], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + fields.len() * 64 + body.len());
    match start {
        StartLine::Request { method, uri } => {
            out.extend_from_slice(format!("{method} {uri} SIP/2.0\r\n").as_bytes());
        }
        StartLine::Response { code, reason } => {
            out.extend_from_slice(format!("SIP/2.0 {code} {reason}\r\n").as_bytes());
        }
    }
    for f in fields {
        match tighten_seps(f.name) {
            // A Via list becomes one field per value, so counting Via fields counts hops.
            Some(seps) if f.name.eq_ignore_ascii_case("Via") => {
                for value in scan::split_list(f.value) {
                    push_field(&mut out, "Via", &tighten(value, seps));
                }
            }
            Some(seps) => push_field(&mut out, f.name, &tighten(f.value, seps)),
            None => push_field(&mut out, f.name, f.value),
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Drops the whitespace RFC 3261 allows around the separators of a header value, outside
/// quoted strings and `<…>` (`SIP / 2.0 / UDP h ;branch=x`, `<sip:b@h> ;tag=2`). rsip fails on
/// the first and, worse, silently loses every parameter after a space before `;`: the Via
/// branch, the From or To tag.
fn tighten(value: &str, seps: &[char]) -> String {
    let mut out = String::with_capacity(value.len());
    let (mut quoted, mut escaped, mut angle) = (false, false, false);
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if !angle => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ' ' | '\t' if !quoted && !angle => {
                let before_sep = out.ends_with(seps);
                while chars.next_if(|c| matches!(c, ' ' | '\t')).is_some() {}
                let after_sep = chars.peek().is_some_and(|c| seps.contains(c));
                if !before_sep && !after_sep {
                    out.push(' ');
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// Header fields whose parameters rsip reads, and the separators around which whitespace goes.
fn tighten_seps(name: &str) -> Option<&'static [char]> {
    const ADDRESS: &[&str] = &["From", "To", "Contact", "Route", "Record-Route"];
    if name.eq_ignore_ascii_case("Via") {
        Some(&['/', ';', '='])
    } else if ADDRESS.iter().any(|a| name.eq_ignore_ascii_case(a)) {
        Some(&[';', '='])
    } else {
        None
    }
}

fn rsip_error(e: rsip::Error) -> ParseError {
    ParseError::Rsip(e.to_string())
}

/// The typed forms the transaction and dialog layers will read must exist.
fn check_typed(msg: &SipMessage) -> Result<(), ParseError> {
    let invalid = |name: &'static str| {
        move |e: rsip::Error| ParseError::InvalidHeader {
            name,
            reason: e.to_string(),
        }
    };
    msg.via_header()
        .map_err(rsip_error)?
        .typed()
        .map_err(invalid("Via"))?;
    msg.from_header()
        .map_err(rsip_error)?
        .typed()
        .map_err(invalid("From"))?;
    msg.to_header()
        .map_err(rsip_error)?
        .typed()
        .map_err(invalid("To"))?;
    let cseq = msg
        .cseq_header()
        .map_err(rsip_error)?
        .typed()
        .map_err(invalid("CSeq"))?;
    if let SipMessage::Request(req) = msg
        && req.method != cseq.method
    {
        return Err(ParseError::InvalidHeader {
            name: "CSeq",
            reason: format!("method {} differs from {}", cseq.method, req.method),
        });
    }
    Ok(())
}

/// Reason phrases for the codes we send (rsip would print its variant names).
pub(crate) fn reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        603 => "Decline",
        _ => match code {
            100..=199 => "Progress",
            200..=299 => "OK",
            300..=399 => "Redirect",
            400..=499 => "Client Error",
            500..=599 => "Server Error",
            _ => "Global Failure",
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    pub(crate) const INVITE: &str = "INVITE sip:+15550001@10.0.0.1:5060;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:+15551234@192.0.2.10>;tag=1928301774\r\n\
To: <sip:+15550001@10.0.0.1>\r\n\
Call-ID: a84b4c76e66710@192.0.2.10\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:+15551234@192.0.2.10:5060>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 131\r\n\
\r\n\
v=0\r\n\
o=- 1 1 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n";

    /// Parses and prints the message as rsip renders it (CRLF shown as a line break), or the
    /// error.
    fn check(input: &str, expect: Expect) {
        let actual = match parse(input.as_bytes()) {
            Ok(msg) => msg.to_string().replace("\r\n", "\n"),
            Err(e) => format!("error: {e}"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn the_sample_invite_parses_with_its_body() {
        let msg = parse(INVITE.as_bytes()).unwrap();
        assert_eq!(msg.body().len(), 131);
        assert!(msg.body().ends_with(b"telephone-event/8000\r\n"));
        let SipMessage::Request(req) = msg else {
            panic!("a request")
        };
        assert_eq!(req.method, rsip::Method::Invite);
        let via = req.via_header().unwrap().typed().unwrap();
        assert_eq!(via.branch().unwrap().to_string(), "z9hG4bK776asdhds");
    }

    #[test]
    fn compact_forms_become_full_names_in_the_head_only() {
        // The body mentions `f:`, `i:` and `v:` at line starts: it must come through unchanged.
        let body = "f: not a header\r\ni: nor this\r\nv=0\r\n";
        let msg = format!(
            "BYE sip:bob@10.0.0.1 SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKnashds8\r\n\
f: <sip:alice@192.0.2.10>;tag=88\r\n\
t : <sip:bob@10.0.0.1>;tag=99\r\n\
i:callid@host\r\n\
CSeq: 2 BYE\r\n\
m: <sip:alice@192.0.2.10>\r\n\
k: timer\r\n\
c: text/plain\r\n\
l: {}\r\n\
\r\n{body}",
            body.len()
        );
        check(
            &msg,
            expect![[r#"
                BYE sip:bob@10.0.0.1 SIP/2.0
                Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKnashds8
                From: <sip:alice@192.0.2.10>;tag=88
                To: <sip:bob@10.0.0.1>;tag=99
                Call-ID: callid@host
                CSeq: 2 BYE
                Contact: <sip:alice@192.0.2.10>
                Supported: timer
                Content-Type: text/plain
                Content-Length: 35

                f: not a header
                i: nor this
                v=0
            "#]],
        );
        let parsed = parse(msg.as_bytes()).unwrap();
        assert_eq!(parsed.body(), body.as_bytes());
        assert_eq!(
            parsed.call_id_header().unwrap().to_string(),
            "Call-ID: callid@host"
        );
    }

    #[test]
    fn folding_lone_lf_leading_crlf_and_a_missing_reason_phrase_are_tolerated() {
        check(
            "\r\n\r\nSIP/2.0 200\n\
Via: SIP/2.0/UDP h1;branch=z9hG4bKa ,\n SIP/2.0/UDP h2 ; branch = z9hG4bKb\n\
From: <sip:a@h1>;tag=1\n\
To: <sip:b@h2>\n ;tag=2\n\
Call-ID: x\n\
CSeq: 1 OPTIONS\n\
Content-Length: 0\n\n",
            expect![[r#"
                SIP/2.0 200 OK
                Via: SIP/2.0/UDP h1;branch=z9hG4bKa
                Via: SIP/2.0/UDP h2;branch=z9hG4bKb
                From: <sip:a@h1>;tag=1
                To: <sip:b@h2>;tag=2
                Call-ID: x
                CSeq: 1 OPTIONS
                Content-Length: 0

            "#]],
        );
    }

    #[test]
    fn spaces_in_via_do_not_lose_the_branch() {
        let msg = INVITE.replace(
            "SIP/2.0/UDP 192.0.2.10:5060;branch",
            "SIP / 2.0 / UDP 192.0.2.10:5060 ;branch",
        );
        let msg = parse(msg.as_bytes()).unwrap();
        let via = msg.via_header().unwrap().typed().unwrap();
        assert_eq!(via.branch().unwrap().to_string(), "z9hG4bK776asdhds");
    }

    #[test]
    fn content_length() {
        let head = &INVITE[..INVITE.find("\r\n\r\n").unwrap() + 4];
        let body = &INVITE[head.len()..];
        // Longer than the body: the message was cut.
        check(
            &INVITE.replace("Content-Length: 131", "Content-Length: 132"),
            expect!["error: body has 131 bytes but Content-Length declares 132"],
        );
        // Shorter: the rest of the datagram is discarded (RFC 3261 §18.3).
        let msg = parse(
            INVITE
                .replace("Content-Length: 131", "Content-Length: 5")
                .as_bytes(),
        );
        assert_eq!(msg.unwrap().body(), b"v=0\r\n");
        // Missing: the body is the rest of the datagram.
        let without = INVITE.replace("Content-Length: 131\r\n", "");
        assert_eq!(parse(without.as_bytes()).unwrap().body(), body.as_bytes());
        // Garbage, or two that disagree.
        for bad in [
            "Content-Length: -1",
            "Content-Length: 12a",
            "Content-Length: ",
        ] {
            let msg = INVITE.replace("Content-Length: 131", bad);
            assert_eq!(
                parse(msg.as_bytes()),
                Err(ParseError::BadContentLength),
                "{bad}"
            );
        }
        let twice = INVITE.replace("Content-Length: 131", "Content-Length: 131\r\nl: 12");
        assert_eq!(parse(twice.as_bytes()), Err(ParseError::BadContentLength));
        let same_twice = INVITE.replace("Content-Length: 131", "Content-Length: 131\r\nl: 131");
        assert!(parse(same_twice.as_bytes()).is_ok());
    }

    #[test]
    fn malformed_messages_are_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "error: empty message (only line breaks: a keep-alive)"),
            (
                "\r\n\r\n",
                "error: empty message (only line breaks: a keep-alive)",
            ),
            (
                "INVITE sip:a@b SIP/2.0\r\nVia: x",
                "error: no blank line after the header fields",
            ),
            (
                "INVITE sip:a@b SIP/2.0",
                "error: no blank line after the header fields",
            ),
            (
                "INVITE  sip:a@b SIP/2.0\r\n\r\n",
                "error: malformed start line",
            ),
            (
                "INVITE sip:a@b SIP/3.0\r\n\r\n",
                "error: malformed start line",
            ),
            ("SIP/2.0 99 Odd\r\n\r\n", "error: malformed start line"),
            ("SIP/2.0 700 Odd\r\n\r\n", "error: malformed start line"),
            (
                "FOO sip:a@b SIP/2.0\r\n\r\n",
                "error: unsupported method \"FOO\"",
            ),
            (
                "INVITE sip:a@b SIP/2.0\r\nno colon\r\n\r\n",
                "error: malformed header field #1",
            ),
            (
                "INVITE sip:a@b SIP/2.0\r\n folded first\r\n\r\n",
                "error: malformed header field #1",
            ),
            (
                "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
                "error: missing From header",
            ),
        ];
        for (input, want) in cases {
            let got = match parse(input.as_bytes()) {
                Ok(m) => m.to_string(),
                Err(e) => format!("error: {e}"),
            };
            assert_eq!(&got, want, "{input:?}");
        }
        check(
            &INVITE.replace("CSeq: 314159 INVITE", "CSeq: 314159 BYE"),
            expect!["error: invalid CSeq header: method BYE differs from INVITE"],
        );
        check(
            &INVITE.replace("CSeq: 314159 INVITE", "CSeq: many INVITE"),
            expect![
                "error: invalid CSeq header: rsip error: could not parse part: invalid digit found in string"
            ],
        );
        check(
            &INVITE.replace("Call-ID: a84b4c76e66710@192.0.2.10", "Call-ID:"),
            expect!["error: invalid Call-ID header: empty"],
        );
        let huge = format!(
            "{}X-Pad: {}\r\n\r\n",
            &INVITE[..INVITE.find("\r\n\r\n").unwrap() + 2],
            "a".repeat(MAX_MESSAGE_BYTES)
        );
        check(
            &huge,
            expect!["error: message of 65922 bytes exceeds the 65536-byte bound"],
        );
    }

    #[test]
    fn what_rsip_cannot_read_even_after_normalising() {
        // Pinned so that a fixed or replaced rsip shows up here. IPv6 in the Request-URI fails
        // the message; in Via, From or To it fails the typed header; a tel: Request-URI fails.
        let v6 = INVITE.replace(
            "sip:+15550001@10.0.0.1:5060;user=phone",
            "sip:+15550001@[2001:db8::1]:5060",
        );
        assert!(matches!(parse(v6.as_bytes()), Err(ParseError::Rsip(_))));
        let v6_via = INVITE.replace("192.0.2.10:5060;branch", "[2001:db8::10]:5060;branch");
        assert!(matches!(
            parse(v6_via.as_bytes()),
            Err(ParseError::InvalidHeader { name: "Via", .. })
        ));
        let tel = INVITE.replace("sip:+15550001@10.0.0.1:5060;user=phone", "tel:+15550001");
        assert!(matches!(parse(tel.as_bytes()), Err(ParseError::Rsip(_))));
        // Extension methods are refused before rsip, with their own status (501).
        let foo = INVITE.replace("INVITE", "FOO");
        assert_eq!(
            parse(foo.as_bytes()),
            Err(ParseError::UnsupportedMethod("FOO".into()))
        );
    }

    #[test]
    fn statuses_for_errors() {
        assert_eq!(ParseError::BadStartLine.status(), (400, "Bad Request"));
        assert_eq!(
            ParseError::UnsupportedMethod("FOO".into()).status(),
            (501, "Not Implemented")
        );
        assert_eq!(
            ParseError::TooLarge { len: 1, max: 0 }.status(),
            (513, "Message Too Large")
        );
    }

    #[test]
    fn framing_a_stream() {
        let two = format!("\r\n\r\n{INVITE}{INVITE}");
        let mut buf = two.as_bytes();
        assert_eq!(frame(buf), Ok(Frame::KeepAlive(4)));
        buf = &buf[4..];
        assert_eq!(frame(buf), Ok(Frame::Message(INVITE.len())));
        for cut in [0, 10, INVITE.len() - 130, INVITE.len() - 1] {
            assert_eq!(frame(&buf[..cut]), Ok(Frame::Incomplete), "cut at {cut}");
        }
        assert!(parse(&buf[..INVITE.len()]).is_ok());
        buf = &buf[INVITE.len()..];
        assert_eq!(frame(buf), Ok(Frame::Message(INVITE.len())));

        let no_length = INVITE.replace("Content-Length: 131\r\n", "");
        assert_eq!(
            frame(no_length.as_bytes()),
            Err(ParseError::MissingContentLength)
        );
        let endless = format!("INVITE sip:a@b SIP/2.0\r\n{}", "X-A: b\r\n".repeat(9000));
        assert!(matches!(
            frame(endless.as_bytes()),
            Err(ParseError::TooLarge { .. })
        ));
        let big_body = INVITE.replace("Content-Length: 131", "Content-Length: 9999999999");
        assert!(matches!(
            frame(big_body.as_bytes()),
            Err(ParseError::TooLarge { .. })
        ));
    }
}
