//! Messages the transaction layer builds itself: the ACK for a non-2xx final response
//! (RFC 3261 §17.1.1.3) and responses to a request (100 Trying, the 503 refusal), the latter
//! also offered to the TU.

use rsip::headers::{self, ToTypedHeader, UntypedHeader};
use rsip::message::HeadersExt;
use rsip::{Header, Headers, Method, Request, Response, StatusCode};

/// A response to `req` with `status` (RFC 3261 §8.2.6.2): every Via in order, From, To, Call-ID
/// and CSeq copied, `Content-Length: 0`. `to_tag` is added to To when To has no tag yet (a
/// 100 Trying carries none; every other response to a dialog-creating request needs one).
/// The reason phrase is the RFC's (rsip would print its variant name, `BusyHere`).
pub fn response_to(req: &Request, status: u16, to_tag: Option<&str>) -> Response {
    let mut headers = Headers::default();
    for h in req.headers.iter() {
        match h {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone())
            }
            Header::To(to) => {
                let has_tag = matches!(to.tag(), Ok(Some(_)));
                match to_tag {
                    Some(tag) if !has_tag => headers.push(Header::To(headers::To::new(format!(
                        "{};tag={tag}",
                        to.value()
                    )))),
                    _ => headers.push(h.clone()),
                }
            }
            _ => {}
        }
    }
    headers.push(Header::ContentLength(headers::ContentLength::new("0")));
    Response {
        status_code: StatusCode::Other(status, crate::message::reason(status).into()),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// The ACK for a non-2xx final response to `invite` (§17.1.1.3): same Request-URI, Call-ID,
/// From and CSeq number, To from the response (it carries the tag), only the top Via of the
/// INVITE (same branch: the ACK belongs to the INVITE's transaction), its Route headers.
pub(crate) fn ack_for(invite: &Request, resp: &Response) -> Request {
    let mut headers = Headers::default();
    if let Some(via) = invite.headers.iter().find(|h| matches!(h, Header::Via(_))) {
        headers.push(via.clone());
    }
    for h in invite.headers.iter() {
        if matches!(h, Header::Route(_)) {
            headers.push(h.clone());
        }
    }
    for h in invite.headers.iter() {
        match h {
            Header::From(_) | Header::CallId(_) => headers.push(h.clone()),
            _ => {}
        }
    }
    if let Ok(to) = resp.to_header() {
        headers.push(Header::To(to.clone()));
    }
    let seq = invite
        .cseq_header()
        .ok()
        .and_then(|c| c.typed().ok())
        .map_or(1, |c| c.seq);
    headers.push(Header::CSeq(headers::CSeq::new(format!("{seq} ACK"))));
    headers.push(Header::MaxForwards(headers::MaxForwards::new("70")));
    headers.push(Header::ContentLength(headers::ContentLength::new("0")));
    Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn invite() -> Request {
        let raw = "INVITE sip:bob@b.example SIP/2.0\r\n\
            Via: SIP/2.0/UDP a.example:5060;branch=z9hG4bK1\r\n\
            Via: SIP/2.0/UDP proxy.example;branch=z9hG4bKp\r\n\
            Route: <sip:proxy.example;lr>\r\n\
            Max-Forwards: 70\r\n\
            From: <sip:alice@a.example>;tag=a1\r\n\
            To: <sip:bob@b.example>\r\n\
            Call-ID: c1\r\n\
            CSeq: 7 INVITE\r\n\
            Content-Length: 0\r\n\r\n";
        match crate::parse(raw.as_bytes()).unwrap() {
            rsip::SipMessage::Request(r) => r,
            rsip::SipMessage::Response(_) => unreachable!("a request"),
        }
    }

    #[test]
    fn response_and_ack() {
        let resp = response_to(&invite(), 486, Some("b9"));
        expect![[r#"
            SIP/2.0 486 Busy Here
            Via: SIP/2.0/UDP a.example:5060;branch=z9hG4bK1
            Via: SIP/2.0/UDP proxy.example;branch=z9hG4bKp
            From: <sip:alice@a.example>;tag=a1
            To: <sip:bob@b.example>;tag=b9
            Call-ID: c1
            CSeq: 7 INVITE
            Content-Length: 0

        "#]]
        .assert_eq(&resp.to_string().replace("\r\n", "\n"));
        let ack = ack_for(&invite(), &resp);
        expect![[r#"
            ACK sip:bob@b.example SIP/2.0
            Via: SIP/2.0/UDP a.example:5060;branch=z9hG4bK1
            Route: <sip:proxy.example;lr>
            From: <sip:alice@a.example>;tag=a1
            Call-ID: c1
            To: <sip:bob@b.example>;tag=b9
            CSeq: 7 ACK
            Max-Forwards: 70
            Content-Length: 0

        "#]]
        .assert_eq(&ack.to_string().replace("\r\n", "\n"));
    }
}
