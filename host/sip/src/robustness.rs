//! Seeded, bounded fuzz loops over everything that reads bytes from a peer: `parse`, `frame`,
//! `bad_request`, SDP and digest challenges must return, never panic, on any input. The seed
//! and counts are fixed, so a failure reproduces; `host/sip/fuzz` runs `parse` unbounded.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::message::tests::INVITE;
use crate::{MAX_MESSAGE_BYTES, bad_request, digest, error_response, frame, parse, sdp};

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to the parsers.
const INTERESTING: &[u8] = b"\r\n :;,=<>\"\\/@[]\0\t\xff\xc3l:f:v:i:0123456789";

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut buf = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(buf.len() + 1);
        match rng.below(8) {
            0 if at < buf.len() => buf[at] ^= 1 << rng.below(8),
            1 => buf.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 => {
                let end = (at + rng.below(32)).min(buf.len());
                buf.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(64)).min(buf.len());
                let copy = buf[at..end].to_vec();
                let to = rng.below(buf.len() + 1);
                buf.splice(to..to, copy);
            }
            4 => buf.truncate(at),
            5 => {
                buf.splice(at..at, *b"\r\n");
            }
            6 => {
                let noise: Vec<u8> = (0..rng.below(8)).map(|_| rng.next() as u8).collect();
                buf.splice(at..at, noise);
            }
            _ if at < buf.len() => buf[at] = INTERESTING[rng.below(INTERESTING.len())],
            _ => {}
        }
    }
    buf
}

/// Runs `f`, and on a panic fails naming the input.
fn no_panic(input: &[u8], f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        panic!("panicked on input {:?}", String::from_utf8_lossy(input));
    }
}

fn every_message_reader(input: &[u8]) {
    no_panic(input, || {
        let parsed = parse(input);
        if parsed.is_err() {
            let _ = bad_request(input);
            let _ = error_response(input, 513, "Message Too Large");
        }
        let _ = frame(input);
        if let Ok(msg) = parsed {
            // What rsip accepted must also be renderable.
            let _ = msg.to_string();
        }
    });
}

#[test]
fn mutated_invites() {
    let mut rng = Rng(0x5eed_ca11_f10e_0001);
    let compact = INVITE
        .replace("Via:", "v:")
        .replace("From:", "f:")
        .replace("Call-ID:", "i:")
        .replace("Content-Length:", "l:");
    let seeds = [INVITE.as_bytes(), compact.as_bytes()];
    let mut parsed = 0;
    for i in 0..20_000 {
        let input = mutate(&mut rng, seeds[i % seeds.len()]);
        every_message_reader(&input);
        parsed += usize::from(parse(&input).is_ok());
    }
    // The loop must exercise the accepting paths too, not only the first error.
    assert!(parsed > 1_000, "only {parsed} mutants parsed");
}

/// A response is read back without `parse`'s rebuild and typed checks
/// (`parse_built_response`), on the grounds that everything in it is ours or comes from a
/// request `parse` accepted: so whatever mutant request is answered, the answer must pass the
/// full `parse` too.
#[test]
fn answers_to_mutated_invites_pass_the_full_parse() {
    let mut rng = Rng(0x5eed_ca11_f10e_0002);
    let mut answered = 0;
    for _ in 0..20_000 {
        let input = mutate(&mut rng, INVITE.as_bytes());
        let Ok(rsip::SipMessage::Request(req)) = parse(&input) else {
            continue;
        };
        for code in [100, 180, 200, 486] {
            let contact = [("Contact", "<sip:callflow@127.0.0.1:5060>")];
            let Some(resp) = crate::ua::msg::response(&req, code, Some("t1x"), &contact, None)
            else {
                continue;
            };
            let text = resp.to_string();
            if let Err(e) = parse(text.as_bytes()) {
                panic!(
                    "answer {code} to {:?} fails parse ({e}): {text:?}",
                    String::from_utf8_lossy(&input)
                );
            }
            answered += 1;
        }
    }
    assert!(answered > 4_000, "only {answered} answers built");
}

#[test]
fn random_bytes() {
    let mut rng = Rng(0x5eed_0000_0000_0002);
    for _ in 0..3_000 {
        let len = rng.below(1_500);
        let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        every_message_reader(&input);
        // Random bytes after a valid start line reach the header code.
        let mut with_start = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
        with_start.extend_from_slice(&input);
        every_message_reader(&with_start);
    }
}

#[test]
fn every_prefix_of_an_invite_is_refused() {
    for cut in 0..INVITE.len() {
        let input = &INVITE.as_bytes()[..cut];
        every_message_reader(input);
        assert!(parse(input).is_err(), "prefix of {cut} bytes parsed");
    }
    assert!(parse(INVITE.as_bytes()).is_ok());
}

#[test]
fn huge_and_pathological_heads() {
    let head_end = INVITE.find("\r\n\r\n").unwrap() + 2;
    let (head, _) = INVITE.split_at(head_end);
    let cases: Vec<Vec<u8>> = vec![
        // One header line just under and over the bound.
        format!(
            "{head}X-Big: {}\r\n\r\n",
            "a".repeat(MAX_MESSAGE_BYTES - head.len() - 20)
        )
        .into_bytes(),
        format!("{head}X-Big: {}\r\n\r\n", "a".repeat(MAX_MESSAGE_BYTES)).into_bytes(),
        // Thousands of tiny headers, of folded lines, of Via values.
        format!("{head}{}\r\n", "X:1\r\n".repeat(12_000)).into_bytes(),
        format!("{head}X-Fold: a\r\n{}\r\n", " b\r\n".repeat(15_000)).into_bytes(),
        format!(
            "{}\r\n\r\n",
            INVITE[..head_end - 2].replace(
                "Via: ",
                &format!("Via: {}", "SIP/2.0/UDP h;branch=z9hG4bK1,".repeat(1_500))
            )
        )
        .into_bytes(),
        // Separators and quotes without end.
        format!("{head}From: {}\r\n\r\n", "\"".repeat(30_000)).into_bytes(),
        format!("{head}Via: {}\r\n\r\n", ";= / ".repeat(10_000)).into_bytes(),
        format!("{head}To: {}\r\n\r\n", "<".repeat(30_000)).into_bytes(),
        // Only line breaks, only colons, a megabyte of nothing.
        b"\r\n".repeat(30_000),
        b":".repeat(60_000),
        vec![0; 1 << 20],
    ];
    for input in &cases {
        every_message_reader(input);
    }
}

#[test]
fn mutated_sdp() {
    let seed = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 49170 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\na=ptime:30\r\na=sendonly\r\nm=video 0 RTP/AVP 31\r\n";
    let local = sdp::LocalMedia {
        ip: "203.0.113.5".parse().unwrap(),
        port: 20_000,
        session_id: 1,
        session_version: 1,
    };
    let mut rng = Rng(0x5eed_0000_0000_0003);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let input = mutate(&mut rng, seed);
        no_panic(&input, || {
            if let Ok(desc) = sdp::parse(&input)
                && let Ok(neg) = sdp::negotiate(&desc, &sdp::Codec::PREFERENCE)
            {
                let answer = sdp::answer(&desc, &neg, &local);
                // Our answer always reads back and negotiates to the same codec.
                let again = sdp::negotiate(
                    &sdp::parse(answer.as_bytes()).unwrap(),
                    &sdp::Codec::PREFERENCE,
                )
                .unwrap();
                assert_eq!(again.codec, neg.codec);
                accepted += 1;
            }
        });
    }
    assert!(accepted > 1_000, "only {accepted} mutants negotiated");
}

#[test]
fn mutated_challenges() {
    let seed = br#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256-sess, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU\"925k", stale=true, userhash=true"#;
    let creds = digest::Credentials {
        username: "alice",
        password: "secret",
    };
    let req = digest::DigestRequest {
        method: "INVITE",
        uri: "sip:+15550001@gw.example",
        body: b"v=0\r\n",
        cnonce: "c",
        nc: 1,
    };
    let mut rng = Rng(0x5eed_0000_0000_0004);
    let mut answered = 0;
    for _ in 0..20_000 {
        let input = mutate(&mut rng, seed);
        let text = String::from_utf8_lossy(&input);
        no_panic(&input, || {
            if let Ok(c) = digest::Challenge::parse(&text) {
                let value = c.authorization(&creds, &req);
                // The answer must be a single header line.
                assert!(!value.contains(['\r', '\n']), "{value:?}");
                answered += 1;
            }
        });
    }
    assert!(answered > 1_000, "only {answered} mutants answered");
}

/// The user agent core under mutated dialog traffic: a live inbound call, an outbound call in
/// progress, and thousands of mangled INVITEs, ACKs, re-INVITEs, BYEs, CANCELs and responses,
/// with time advancing and commands interleaved. Nothing may panic, and once the traffic stops
/// every call ends and the agent returns to zero.
#[test]
fn mutated_dialog_traffic_into_the_user_agent() {
    use std::time::{Duration, Instant};

    use crate::sdp::LocalMedia;
    use crate::ua::{Outgoing, UaConfig, UaEvent, UserAgent};

    let peer: std::net::SocketAddr = "10.0.0.2:5060".parse().unwrap();
    let media = LocalMedia {
        ip: "10.0.0.1".parse().unwrap(),
        port: 4000,
        session_id: 1,
        session_version: 1,
    };
    let mut ua = UserAgent::new(UaConfig {
        advertised: "10.0.0.1:5060".parse().unwrap(),
        seed: 3,
        ..UaConfig::default()
    });
    let mut now = Instant::now();
    let sdp = "v=0\r\no=p 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\n";
    let invite = |branch: &str, tag: &str, cseq: u32| {
        format!(
            "INVITE sip:+1500@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK{branch}\r\n\
             From: <sip:+1555@10.0.0.2>;tag=f\r\nTo: <sip:+1500@10.0.0.1>{tag}\r\nCall-ID: fz\r\n\
             CSeq: {cseq} INVITE\r\nContact: <sip:p@10.0.0.2>\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    };
    ua.handle_datagram(now, invite("a", "", 1).as_bytes(), peer);
    let Some(UaEvent::Incoming(inc)) = ua.poll_event() else {
        panic!("the INVITE makes a call")
    };
    ua.answer(now, inc.call, media).unwrap();
    let mut our_tag = String::new();
    while let Some(t) = ua.poll_transmit() {
        let text = String::from_utf8_lossy(&t.bytes).into_owned();
        if let Some(i) = text.find(";tag=") {
            our_tag = text[i + 5..]
                .split(['\r', ';', '>'])
                .next()
                .unwrap()
                .to_owned();
        }
    }
    let out = ua
        .invite(
            now,
            Outgoing {
                gateway: peer,
                transport: rsip::common::Transport::Udp,
                uri: "sip:+1666@10.0.0.2".into(),
                from: "sip:+1500@10.0.0.1".into(),
                auth: None,
                media,
                ring_timeout: Duration::from_secs(30),
            },
        )
        .unwrap();
    let mut out_invite = String::new();
    while let Some(t) = ua.poll_transmit() {
        out_invite = String::from_utf8_lossy(&t.bytes).into_owned();
    }
    let line = |name: &str| {
        out_invite
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_owned()
    };
    let response = |status: &str| {
        format!(
            "SIP/2.0 {status}\r\n{}\r\n{}\r\n{};tag=far\r\n{}\r\n{}\r\nContact: <sip:far@10.0.0.2>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            line("Via:"),
            line("From:"),
            line("To:"),
            line("Call-ID:"),
            line("CSeq:"),
            sdp.len()
        )
    };
    let tag = format!(";tag={our_tag}");
    let in_dialog = |method: &str, cseq: u32| {
        format!(
            "{method} sip:callflow@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK{method}{cseq}\r\n\
             From: <sip:+1555@10.0.0.2>;tag=f\r\nTo: <sip:+1500@10.0.0.1>{tag}\r\nCall-ID: fz\r\n\
             CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let templates = [
        invite("b", "", 1),
        invite("c", &tag, 2),
        in_dialog("ACK", 1),
        in_dialog("BYE", 3),
        in_dialog("OPTIONS", 4),
        in_dialog("CANCEL", 1),
        response("100 Trying"),
        response("180 Ringing"),
        response("200 OK"),
        response("486 Busy Here"),
        response("401 Unauthorized"),
    ];
    let mut rng = Rng(0x005e_ed0f_d1a1);
    for i in 0..20_000 {
        let t = &templates[rng.below(templates.len())];
        let input = if rng.below(4) == 0 {
            t.as_bytes().to_vec()
        } else {
            mutate(&mut rng, t.as_bytes())
        };
        no_panic(&input, || {
            ua.handle_datagram(now, &input, peer);
            while ua.poll_transmit().is_some() {}
            while let Some(ev) = ua.poll_event() {
                if let UaEvent::Incoming(inc) = ev {
                    match rng.below(3) {
                        0 => drop(ua.answer(now, inc.call, media)),
                        1 => drop(ua.reject(now, inc.call, 486)),
                        _ => drop(ua.ring(now, inc.call)),
                    }
                }
            }
        });
        if i % 50 == 0 {
            now += Duration::from_millis(rng.below(2_000) as u64);
            ua.handle_timeout(now);
        }
        if i == 10_000 {
            let _ = ua.hangup(now, out);
        }
    }
    // Silence: every call and transaction must run out (ring timeouts, timer B/H/M, 64·T1).
    for _ in 0..400 {
        now += Duration::from_millis(500);
        ua.handle_timeout(now);
        while ua.poll_transmit().is_some() {}
        while let Some(ev) = ua.poll_event() {
            if let UaEvent::Incoming(inc) = ev {
                let _ = ua.reject(now, inc.call, 486);
            }
        }
    }
    // Calls answered by mutated INVITEs that never got an ACK gave up after 64·T1 with a BYE;
    // calls never answered are rejected above; what remains is what the peer keeps open.
    let s = ua.stats();
    assert_eq!(s.transactions, 0, "{s:?}");
}
