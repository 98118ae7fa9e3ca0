//! Stateless error responses to requests that could not be parsed (RFC 3261 §8.2.6): built
//! from whatever header lines can be salvaged, without rsip, since rsip is what failed.

use sha2::{Digest, Sha256};

use crate::message::MAX_MESSAGE_BYTES;
use crate::scan;

/// A `400 Bad Request` for a malformed request, or `None` when no response is possible and the
/// message must be dropped: it is not a request, it is an ACK (never answered, §17.2.3), or one
/// of Via, From, To, Call-ID and CSeq cannot be found.
pub fn bad_request(raw: &[u8]) -> Option<Vec<u8>> {
    error_response(raw, 400, "Bad Request")
}

/// The response bytes for `status` (400–699) to a request that failed to parse, as for
/// [`bad_request`]; [`ParseError::status`](crate::ParseError::status) picks the status.
///
/// Via (every value, in order), From, To, Call-ID and CSeq are copied (§8.2.6.2). A To without a
/// tag gets one derived from the request, so a retransmitted request gets the same response, as
/// §8.2.7 asks of stateless answers. Only the first [`MAX_MESSAGE_BYTES`] of `raw` are read, so
/// the response is bounded too.
pub fn error_response(raw: &[u8], status: u16, reason: &'static str) -> Option<Vec<u8>> {
    if !(400..=699).contains(&status) || reason.contains(['\r', '\n']) {
        return None;
    }
    let raw = &raw[..raw.len().min(MAX_MESSAGE_BYTES)];
    let raw = &raw[scan::leading_crlf(raw)..];
    let head = scan::scan(raw)?;
    if !looks_like_request(head.start_line) {
        return None;
    }

    let mut vias = Vec::new();
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for line in &head.lines {
        let Some(f) = scan::field(line) else { continue };
        if f.value.is_empty() || f.value.chars().any(|c| c.is_control() && c != '\t') {
            continue;
        }
        let slot = match f.name.to_ascii_lowercase().as_str() {
            "via" => {
                vias.push(f.value);
                continue;
            }
            "from" => &mut from,
            "to" => &mut to,
            "call-id" => &mut call_id,
            "cseq" => &mut cseq,
            _ => continue,
        };
        slot.get_or_insert(f.value);
    }
    let (Some(top_via), Some(from), Some(to), Some(call_id), Some(cseq)) =
        (vias.first(), from, to, call_id, cseq)
    else {
        return None;
    };

    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    for via in &vias {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    out.push_str(&format!("From: {from}\r\n"));
    if has_tag(to) {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        let tag = stateless_tag(&[call_id, from, cseq, top_via]);
        out.push_str(&format!("To: {to};tag={tag}\r\n"));
    }
    out.push_str(&format!(
        "Call-ID: {call_id}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n"
    ));
    Some(out.into_bytes())
}

/// `TOKEN SP anything SP SIP/…`, and not ACK. The request line may be what is malformed (a URI
/// rsip refuses), so only its shape is checked.
fn looks_like_request(line: &[u8]) -> bool {
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let method = &line[..sp];
    let version_at = line.iter().rposition(|&b| b == b' ').unwrap_or(sp);
    let version = &line[version_at + 1..];
    !method.is_empty()
        && method.iter().all(|&b| scan::is_token(b))
        && !method.eq_ignore_ascii_case(b"ACK")
        && version_at > sp
        && version.len() >= 4
        && version[..4].eq_ignore_ascii_case(b"SIP/")
}

/// Whether a From/To value carries a `tag` parameter (header parameters follow the `>` of a
/// name-addr, or the whole value of a bare addr-spec).
fn has_tag(value: &str) -> bool {
    let params = value.rsplit_once('>').map_or(value, |(_, p)| p);
    params.split(';').skip(1).any(|p| {
        let name = p.split('=').next().unwrap_or("").trim();
        name.eq_ignore_ascii_case("tag")
    })
}

/// 16 hex digits of SHA-256 over the fields that identify the request.
fn stateless_tag(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn check(raw: &str, expect: Expect) {
        let actual = match bad_request(raw.as_bytes()) {
            Some(bytes) => String::from_utf8(bytes).unwrap().replace("\r\n", "\n"),
            None => "(dropped)".to_owned(),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn copies_via_from_to_call_id_and_cseq_and_adds_a_to_tag() {
        // Content-Length promises more than the datagram holds; compact forms and folding are
        // understood; every Via value is copied in order.
        check(
            "INVITE sip:+15550001@10.0.0.1 SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKp1, SIP/2.0/UDP 192.0.2.10:5060\r\n ;branch=z9hG4bK776;rport\r\n\
Via: SIP/2.0/TCP 192.0.2.20;branch=z9hG4bK2\r\n\
f: \"Alice\" <sip:alice@192.0.2.10>;tag=1928301774\r\n\
t: <sip:+15550001@10.0.0.1>\r\n\
i: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
Content-Length: 999\r\n\
\r\n\
v=0\r\n",
            expect![[r#"
                SIP/2.0 400 Bad Request
                Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKp1, SIP/2.0/UDP 192.0.2.10:5060 ;branch=z9hG4bK776;rport
                Via: SIP/2.0/TCP 192.0.2.20;branch=z9hG4bK2
                From: "Alice" <sip:alice@192.0.2.10>;tag=1928301774
                To: <sip:+15550001@10.0.0.1>;tag=516ba0c711ac1bb2
                Call-ID: a84b4c76e66710
                CSeq: 314159 INVITE
                Content-Length: 0

            "#]],
        );
    }

    #[test]
    fn keeps_an_existing_to_tag_and_answers_a_garbled_request_line() {
        check(
            "BYE sip:bob@[::1 SIP/2.0\r\n\
Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: sip:a@h;tag=1\r\n\
To: sip:b@h ; TAG=2\r\n\
Call-ID: c\r\n\
CSeq: 2 BYE\r\n\r\n",
            expect![[r#"
                SIP/2.0 400 Bad Request
                Via: SIP/2.0/UDP h;branch=z9hG4bK1
                From: sip:a@h;tag=1
                To: sip:b@h ; TAG=2
                Call-ID: c
                CSeq: 2 BYE
                Content-Length: 0

            "#]],
        );
    }

    #[test]
    fn drops_what_cannot_be_answered() {
        let full = "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n";
        // ACK is never answered.
        check(
            &format!("ACK sip:b@h SIP/2.0\r\n{full}"),
            expect!["(dropped)"],
        );
        // A response is never answered.
        check(&format!("SIP/2.0 200 OK\r\n{full}"), expect!["(dropped)"]);
        // Garbage, or a request with a required field missing.
        check("\u{1}\u{2}\u{3}", expect!["(dropped)"]);
        check(
            &format!(
                "OPTIONS sip:b@h SIP/2.0\r\n{}",
                full.replace("Call-ID: c\r\n", "")
            ),
            expect!["(dropped)"],
        );
        // A field whose value holds control characters is not echoed.
        check(
            &format!(
                "OPTIONS sip:b@h SIP/2.0\r\n{}",
                full.replace("Call-ID: c", "Call-ID: c\u{0}")
            ),
            expect!["(dropped)"],
        );
    }

    #[test]
    fn our_response_parses() {
        let raw = crate::message::tests::INVITE.replace("CSeq: 314159 INVITE", "CSeq: 314159 BYE");
        assert!(crate::parse(raw.as_bytes()).is_err());
        let resp = bad_request(raw.as_bytes()).unwrap();
        let rsip::SipMessage::Response(resp) = crate::parse(&resp).unwrap() else {
            panic!("a response")
        };
        assert_eq!(resp.status_code, rsip::StatusCode::BadRequest);
    }

    #[test]
    fn the_same_request_gets_the_same_response() {
        let raw = b"OPTIONS sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n";
        assert_eq!(bad_request(raw), bad_request(raw));
        let other = String::from_utf8_lossy(raw).replace("Call-ID: c", "Call-ID: d");
        assert_ne!(bad_request(raw), bad_request(other.as_bytes()));
    }

    #[test]
    fn other_statuses() {
        let raw = b"FOO sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 FOO\r\n\r\n";
        let err = crate::parse(raw).unwrap_err();
        let (code, reason) = err.status();
        let resp = error_response(raw, code, reason).unwrap();
        assert!(resp.starts_with(b"SIP/2.0 501 Not Implemented\r\n"));
        assert_eq!(error_response(raw, 200, "OK"), None);
    }
}
