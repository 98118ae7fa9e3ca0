//! Reading and writing the headers the dialog layer needs, on top of rsip's untyped headers.
//! Values are read as text (rsip's typed parsers fail on forms we must accept) and messages we
//! build are written as text and parsed back by [`crate::parse`], so everything we send has
//! been through the same parser as everything we receive.

use std::net::{IpAddr, SocketAddr};

use rsip::headers::UntypedHeader;
use rsip::{Header, Headers, Request, Response, SipMessage};

/// The value of the first header `name` (case-insensitive for `Other` headers).
pub(super) fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find_map(|h| header_value(h, name))
}

fn header_value<'a>(h: &'a Header, name: &str) -> Option<&'a str> {
    let (n, v): (&str, &str) = match h {
        Header::Via(v) => ("via", v.value()),
        Header::From(v) => ("from", v.value()),
        Header::To(v) => ("to", v.value()),
        Header::CallId(v) => ("call-id", v.value()),
        Header::CSeq(v) => ("cseq", v.value()),
        Header::Contact(v) => ("contact", v.value()),
        Header::ContentType(v) => ("content-type", v.value()),
        Header::RecordRoute(v) => ("record-route", v.value()),
        Header::Route(v) => ("route", v.value()),
        Header::WwwAuthenticate(v) => ("www-authenticate", v.value()),
        Header::ProxyAuthenticate(v) => ("proxy-authenticate", v.value()),
        Header::Other(n, v) => (n.as_str(), v.as_str()),
        _ => return None,
    };
    n.eq_ignore_ascii_case(name).then_some(v)
}

/// Every value of header `name`, one per header line (for values with commas inside, such
/// as digest challenges).
pub(super) fn header_all<'a>(headers: &'a Headers, name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter_map(|h| header_value(h, name))
        .collect()
}

/// Every value of header `name`, comma-separated lists split (outside `<>` and quotes).
pub(super) fn header_list(headers: &Headers, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for v in headers.iter().filter_map(|h| header_value(h, name)) {
        out.extend(split_list(v));
    }
    out
}

fn split_list(v: &str) -> Vec<String> {
    let (mut out, mut cur) = (Vec::new(), String::new());
    let (mut angle, mut quote) = (false, false);
    for c in v.chars() {
        match c {
            '"' if !angle => quote = !quote,
            '<' if !quote => angle = true,
            '>' if !quote => angle = false,
            ',' if !angle && !quote => {
                out.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

/// A `;name=value` parameter of a name-addr header value (after the `>` when there is one).
pub(super) fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value.split_once(';').map_or("", |(_, p)| p),
    };
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The URI of a name-addr (`"Bob" <sip:b@h>;tag=1` → `sip:b@h`) or addr-spec (`sip:b@h;tag=1`).
pub(super) fn uri_of(value: &str) -> &str {
    if let (Some(a), Some(b)) = (value.find('<'), value.rfind('>'))
        && a < b
    {
        return value[a + 1..b].trim();
    }
    value.split(';').next().unwrap_or(value).trim()
}

/// The user part of a SIP URI (`sip:+1500@h` → `+1500`), unescaped only for `%2B`.
pub fn uri_user(uri: &str) -> Option<String> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .or_else(|| uri.strip_prefix("tel:"))?;
    let user = match rest.split_once('@') {
        Some((u, _)) => u,
        None if uri.starts_with("tel:") => rest,
        None => return None,
    };
    let user = user.split([';', ':']).next().unwrap_or(user);
    (!user.is_empty()).then(|| user.replace("%2B", "+").replace("%2b", "+"))
}

/// The socket address of a SIP URI whose host is an IP literal (default port 5060).
pub(super) fn uri_addr(uri: &str) -> Option<SocketAddr> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split([';', '?']).next()?;
    if let Some(v6) = hostport.strip_prefix('[') {
        let (ip, port) = v6.split_once(']')?;
        let port = port
            .strip_prefix(':')
            .map_or(Some(5060), |p| p.parse().ok())?;
        return Some(SocketAddr::new(ip.parse().ok()?, port));
    }
    let (host, port) = match hostport.split_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 5060),
    };
    Some(SocketAddr::new(host.parse::<IpAddr>().ok()?, port))
}

/// CSeq number and method.
pub(super) fn cseq(headers: &Headers) -> Option<(u32, String)> {
    let v = header(headers, "cseq")?;
    let (n, m) = v.trim().split_once(char::is_whitespace)?;
    Some((n.parse().ok()?, m.trim().to_owned()))
}

pub(super) fn tag(headers: &Headers, name: &str) -> Option<String> {
    header(headers, name)
        .and_then(|v| param(v, "tag"))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// A response to `req`: the request's Via (all, in order), From, To (with `to_tag` added when
/// To has none), Call-ID and CSeq, then `extra` header lines, then the body.
pub(crate) fn response(
    req: &Request,
    code: u16,
    to_tag: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Option<Response> {
    let mut s = format!("SIP/2.0 {code} {}\r\n", crate::message::reason(code));
    for h in req.headers.iter() {
        match h {
            Header::Via(v) => push(&mut s, "Via", v.value()),
            Header::From(v) => push(&mut s, "From", v.value()),
            Header::CallId(v) => push(&mut s, "Call-ID", v.value()),
            Header::CSeq(v) => push(&mut s, "CSeq", v.value()),
            Header::RecordRoute(v) if (200..300).contains(&code) || code < 200 => {
                push(&mut s, "Record-Route", v.value())
            }
            Header::To(v) => match to_tag {
                Some(t) if param(v.value(), "tag").is_none() => {
                    push(&mut s, "To", &format!("{};tag={t}", v.value()))
                }
                _ => push(&mut s, "To", v.value()),
            },
            _ => {}
        }
    }
    // every header but ours comes from a request that passed `parse` whole
    match finish(s, extra, body, crate::message::parse_built_response)? {
        SipMessage::Response(mut r) => {
            // rsip parses known codes into variants that print without spaces ("BusyHere").
            r.status_code = rsip::StatusCode::Other(code, crate::message::reason(code).into());
            Some(r)
        }
        SipMessage::Request(_) => None,
    }
}

/// A request from its start line and header lines (`Content-Length` is added).
pub(super) fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Option<Request> {
    let s = format!("{method} {uri} SIP/2.0\r\n");
    match finish(s, headers, body, crate::parse)? {
        SipMessage::Request(r) => Some(r),
        SipMessage::Response(_) => None,
    }
}

fn push(s: &mut String, name: &str, value: &str) {
    s.push_str(name);
    s.push_str(": ");
    s.push_str(value);
    s.push_str("\r\n");
}

/// `None` when the text does not parse back with `parse`: some part taken from a peer (a
/// Contact, a Route) was something our parser refuses, and the message is not sent.
fn finish(
    mut s: String,
    extra: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    parse: fn(&[u8]) -> Result<SipMessage, crate::ParseError>,
) -> Option<SipMessage> {
    for (n, v) in extra {
        push(&mut s, n, v);
    }
    let body = match body {
        Some((ctype, b)) => {
            push(&mut s, "Content-Type", ctype);
            b
        }
        None => &[],
    };
    push(&mut s, "Content-Length", &body.len().to_string());
    s.push_str("\r\n");
    let mut bytes = s.into_bytes();
    bytes.extend_from_slice(body);
    match parse(&bytes) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::debug!(error = %e, "a message built from peer values does not parse; not sent");
            None
        }
    }
}

/// Whether `uri` can be the Request-URI of our in-dialog requests: a SIP URI our parser reads
/// back whole (a peer's Contact is checked before we store it).
pub(super) fn usable_target(uri: &str) -> bool {
    (uri.starts_with("sip:") || uri.starts_with("sips:"))
        && !uri.contains(char::is_whitespace)
        && rsip::Uri::try_from(uri).is_ok_and(|u| !u.host_with_port.to_string().is_empty())
}

/// Adds RFC 3581 `received`/`rport` to the top Via of a request that arrived from `from`
/// when the Via asks for rport or names another address, so responses name where they went.
pub(super) fn stamp_via(req: &mut Request, from: SocketAddr) {
    let Some(via) = req.headers.iter_mut().find_map(|h| match h {
        Header::Via(v) => Some(v),
        _ => None,
    }) else {
        return;
    };
    let value = via.value().to_owned();
    let Some((head, params)) = value.split_once(';').or(Some((value.as_str(), ""))) else {
        return;
    };
    let sent_by = head.split_whitespace().nth(1).unwrap_or("");
    let host = sent_by
        .strip_prefix('[')
        .and_then(|h| h.split_once(']').map(|(h, _)| h))
        .unwrap_or_else(|| sent_by.split(':').next().unwrap_or(""));
    let has_rport = params
        .split(';')
        .any(|p| p.trim().eq_ignore_ascii_case("rport"));
    let same_host = host.parse::<IpAddr>().ok() == Some(from.ip());
    if same_host && !has_rport {
        return;
    }
    let mut out = head.to_owned();
    for p in params.split(';').filter(|p| !p.is_empty()) {
        let name = p.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("rport") || name.eq_ignore_ascii_case("received") {
            continue;
        }
        out.push(';');
        out.push_str(p);
    }
    out.push_str(&format!(";received={}", from.ip()));
    if has_rport {
        out.push_str(&format!(";rport={}", from.port()));
    }
    *via = rsip::headers::Via::new(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_params() {
        let v = "\"Bob\" <sip:+15005550006@10.0.0.2:5070;transport=udp>;tag=abc;x=1";
        assert_eq!(uri_of(v), "sip:+15005550006@10.0.0.2:5070;transport=udp");
        assert_eq!(param(v, "tag"), Some("abc"));
        assert_eq!(param("sip:a@b;tag=z", "tag"), Some("z"));
        assert_eq!(uri_user(uri_of(v)).as_deref(), Some("+15005550006"));
        assert_eq!(uri_user("sip:%2B1555@h").as_deref(), Some("+1555"));
        assert_eq!(uri_user("sip:h.example"), None);
        assert_eq!(uri_addr(uri_of(v)), Some("10.0.0.2:5070".parse().unwrap()));
        assert_eq!(uri_addr("sip:gw.example"), None);
        assert_eq!(
            uri_addr("sip:u@[::1]:5080"),
            Some("[::1]:5080".parse().unwrap())
        );
        assert_eq!(
            split_list("<sip:p1;lr>, \"a,b\" <sip:p2;lr>,<sip:p3>"),
            vec!["<sip:p1;lr>", "\"a,b\" <sip:p2;lr>", "<sip:p3>"]
        );
    }

    #[test]
    fn targets_a_peer_may_give_us() {
        assert!(usable_target("sip:far@10.0.0.2:5060"));
        assert!(usable_target("sip:+1555@gw.example;transport=tcp"));
        for bad in [
            "sip:a b@10.0.0.1",
            "sip:a@10.0.0.1:99999",
            "sip:",
            "*",
            "tel:+1555",
            "http://x",
        ] {
            assert!(!usable_target(bad), "{bad}");
        }
    }

    #[test]
    fn via_gets_received_and_rport() {
        let mut req = request(
            "OPTIONS",
            "sip:x@10.0.0.9",
            &[
                ("Via", "SIP/2.0/UDP 192.168.1.5:5060;branch=z9hG4bKa;rport"),
                ("From", "<sip:a@b>;tag=1"),
                ("To", "<sip:x@10.0.0.9>"),
                ("Call-ID", "c"),
                ("CSeq", "1 OPTIONS"),
            ],
            None,
        )
        .unwrap();
        stamp_via(&mut req, "203.0.113.7:40000".parse().unwrap());
        assert_eq!(
            header(&req.headers, "via"),
            Some("SIP/2.0/UDP 192.168.1.5:5060;branch=z9hG4bKa;received=203.0.113.7;rport=40000")
        );
    }
}
