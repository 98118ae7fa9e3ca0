//! Two user agents on a simulated network and clock (10 ms latency, loss by plan or seed),
//! plus a "raw" peer played by the test for what our own UA never sends (challenges,
//! re-INVITEs). Every test is deterministic.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

const LATENCY: Duration = Duration::from_millis(10);

fn media(port: u16) -> LocalMedia {
    LocalMedia {
        ip: "10.0.0.9".parse().unwrap(),
        port,
        session_id: 1,
        session_version: 1,
    }
}

struct Datagram {
    at: Instant,
    to: usize,
    from: SocketAddr,
    bytes: Vec<u8>,
}

struct Sim {
    now: Instant,
    base: Instant,
    uas: [UserAgent; 2],
    addrs: [SocketAddr; 2],
    events: [Vec<UaEvent>; 2],
    flight: Vec<Datagram>,
    /// Datagram numbers to drop, or a seeded loss percentage.
    drop: Vec<u64>,
    drop_from: Option<usize>,
    seed: Option<(u64, u64)>,
    sent: u64,
    trace: Vec<String>,
}

const A: usize = 0;
const B: usize = 1;

impl Sim {
    fn new() -> Self {
        let addrs: [SocketAddr; 2] = [
            "10.0.0.1:5060".parse().unwrap(),
            "10.0.0.2:5060".parse().unwrap(),
        ];
        let ua = |i: usize| {
            UserAgent::new(UaConfig {
                advertised: addrs[i],
                seed: i as u64 + 1,
                ..UaConfig::default()
            })
        };
        let now = Instant::now();
        Self {
            now,
            base: now,
            uas: [ua(0), ua(1)],
            addrs,
            events: [Vec::new(), Vec::new()],
            flight: Vec::new(),
            drop: Vec::new(),
            drop_from: None,
            seed: None,
            sent: 0,
            trace: Vec::new(),
        }
    }

    fn lost(&mut self, from: usize) -> bool {
        let n = self.sent;
        self.sent += 1;
        if self.drop.contains(&n) || self.drop_from == Some(from) {
            return true;
        }
        if let Some((state, pct)) = self.seed.as_mut() {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            return *state % 100 < *pct;
        }
        false
    }

    fn flush(&mut self) {
        for i in 0..2 {
            while let Some(t) = self.uas[i].poll_transmit() {
                let to = if t.to == self.addrs[A] { A } else { B };
                let line = String::from_utf8_lossy(&t.bytes)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let lost = self.lost(i);
                let ms = (self.now - self.base).as_millis();
                self.trace.push(format!(
                    "{ms:>6} {}>{} {line}{}",
                    ['a', 'b'][i],
                    ['a', 'b'][to],
                    if lost { " (lost)" } else { "" }
                ));
                if !lost {
                    self.flight.push(Datagram {
                        at: self.now + LATENCY,
                        to,
                        from: self.addrs[i],
                        bytes: t.bytes,
                    });
                }
            }
            while let Some(e) = self.uas[i].poll_event() {
                self.events[i].push(e);
            }
        }
    }

    /// Runs the network and timers until `until` (relative to now).
    fn run(&mut self, dur: Duration) {
        let end = self.now + dur;
        loop {
            self.flush();
            let next_dgram = self.flight.iter().map(|d| d.at).min();
            let next_timer = [self.uas[0].poll_timeout(), self.uas[1].poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let next = [next_dgram, next_timer].into_iter().flatten().min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    let (due, rest): (Vec<_>, Vec<_>) =
                        self.flight.drain(..).partition(|d| d.at <= now);
                    self.flight = rest;
                    for d in due {
                        self.uas[d.to].handle_datagram(now, &d.bytes, d.from);
                    }
                    for ua in &mut self.uas {
                        ua.handle_timeout(now);
                    }
                }
                _ => {
                    self.now = end;
                    for ua in &mut self.uas {
                        ua.handle_timeout(end);
                    }
                    self.flush();
                    return;
                }
            }
        }
    }

    fn call(&mut self, ring_timeout: Duration) -> CallKey {
        let out = Outgoing {
            gateway: self.addrs[B],
            transport: Transport::Udp,
            uri: "sip:+15551230001@10.0.0.2".into(),
            from: "sip:+15005550006@10.0.0.1".into(),
            auth: None,
            media: media(4000),
            ring_timeout,
        };
        let key = self.uas[A].invite(self.now, out).unwrap();
        self.flush();
        key
    }

    fn incoming(&mut self) -> Incoming {
        self.events[B]
            .iter()
            .find_map(|e| match e {
                UaEvent::Incoming(i) => Some(i.clone()),
                _ => None,
            })
            .expect("B saw the INVITE")
    }

    fn ended(&self, node: usize) -> Vec<(CallEnd, Option<u16>, bool)> {
        self.events[node]
            .iter()
            .filter_map(|e| match e {
                UaEvent::Ended {
                    end, code, by_peer, ..
                } => Some((*end, *code, *by_peer)),
                _ => None,
            })
            .collect()
    }

    fn answered(&self, node: usize) -> usize {
        self.events[node]
            .iter()
            .filter(|e| matches!(e, UaEvent::Answered { .. }))
            .count()
    }

    fn idle(&self) -> bool {
        self.uas.iter().all(|u| {
            let s = u.stats();
            s.calls == 0 && s.transactions == 0
        })
    }
}

#[test]
fn invite_ringing_answer_ack_bye_and_back_to_zero() {
    let mut sim = Sim::new();
    let a = sim.call(Duration::from_secs(60));
    sim.run(Duration::from_millis(50));
    let inc = sim.incoming();
    assert_eq!(inc.to_user.as_deref(), Some("+15551230001"));
    assert_eq!(inc.from_user.as_deref(), Some("+15005550006"));
    assert_eq!(inc.offer, Ok(()));
    sim.uas[B].ring(sim.now, inc.call).unwrap();
    sim.run(Duration::from_millis(50));
    sim.uas[B].answer(sim.now, inc.call, media(5000)).unwrap();
    sim.run(Duration::from_millis(100));
    assert!(sim.events[A].contains(&UaEvent::Progress {
        call: a,
        status: 180,
        early_media: false
    }));
    assert_eq!(sim.answered(A), 1);
    assert_eq!(sim.answered(B), 1, "B saw the ACK");
    let media_a = sim.events[A].iter().find_map(|e| match e {
        UaEvent::Media { media, .. } => Some(media.clone()),
        _ => None,
    });
    assert_eq!(media_a.unwrap().remote, "10.0.0.9:5000".parse().unwrap());
    sim.uas[A].hangup(sim.now, a).unwrap();
    sim.run(Duration::from_millis(100));
    assert_eq!(sim.ended(A), vec![(CallEnd::Answered, None, false)]);
    assert_eq!(sim.ended(B), vec![(CallEnd::Answered, None, true)]);
    // INVITE client transactions linger in Accepted (timer M, 64·T1) for 2xx retransmissions.
    sim.run(Duration::from_secs(40));
    assert!(
        sim.idle(),
        "{:?} {:?}",
        sim.uas[0].stats(),
        sim.uas[1].stats()
    );
    let t = sim.trace.join("\n");
    assert!(t.contains("a>b INVITE"), "{t}");
    assert!(t.contains("b>a SIP/2.0 100 Trying"), "{t}");
    assert!(t.contains("b>a SIP/2.0 180 Ringing"), "{t}");
    assert!(t.contains("a>b ACK"), "{t}");
    assert!(t.contains("a>b BYE"), "{t}");
}

#[test]
fn lost_200_and_lost_ack_are_repaired_by_the_cores() {
    let mut sim = Sim::new();
    let a = sim.call(Duration::from_secs(60));
    sim.run(Duration::from_millis(50));
    let inc = sim.incoming();
    // The next two datagrams: B's 200 and then (after its retransmission) A's first ACK.
    let n = sim.sent;
    sim.drop = vec![n, n + 2];
    sim.uas[B].answer(sim.now, inc.call, media(5000)).unwrap();
    sim.run(Duration::from_secs(3));
    let t = sim.trace.join("\n");
    assert_eq!(t.matches("b>a SIP/2.0 200 OK").count(), 3, "{t}");
    assert_eq!(t.matches("a>b ACK").count(), 2, "{t}");
    assert_eq!(sim.answered(A), 1);
    assert_eq!(sim.answered(B), 1);
    assert!(sim.ended(A).is_empty() && sim.ended(B).is_empty());
    sim.uas[B].hangup(sim.now, inc.call).unwrap();
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.ended(A), vec![(CallEnd::Answered, None, true)]);
    let _ = a;
}

#[test]
fn a_200_never_acked_ends_with_bye_after_64_t1() {
    let mut sim = Sim::new();
    sim.call(Duration::from_secs(60));
    sim.run(Duration::from_millis(50));
    let inc = sim.incoming();
    sim.drop_from = Some(A);
    sim.uas[B].answer(sim.now, inc.call, media(5000)).unwrap();
    sim.run(Duration::from_secs(31));
    assert!(sim.ended(B).is_empty());
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.ended(B), vec![(CallEnd::Answered, None, false)]);
    let t = sim.trace.join("\n");
    assert!(t.contains("b>a BYE"), "{t}");
    // T1, 2, 4, then T2 = 4 s: about 10 retransmissions in 32 s.
    let oks = t.matches("b>a SIP/2.0 200 OK").count();
    assert!((9..=12).contains(&oks), "{oks} 200s:\n{t}");
}

#[test]
fn cancel_before_answer_ends_both_sides() {
    let mut sim = Sim::new();
    let a = sim.call(Duration::from_secs(60));
    sim.run(Duration::from_millis(50));
    let inc = sim.incoming();
    sim.uas[B].ring(sim.now, inc.call).unwrap();
    sim.run(Duration::from_millis(50));
    sim.uas[A].hangup(sim.now, a).unwrap();
    sim.run(Duration::from_millis(100));
    assert_eq!(sim.ended(A), vec![(CallEnd::Canceled, None, false)]);
    assert_eq!(sim.ended(B), vec![(CallEnd::Canceled, Some(487), true)]);
    let t = sim.trace.join("\n");
    assert!(t.contains("a>b CANCEL"), "{t}");
    assert!(t.contains("b>a SIP/2.0 487 Request Terminated"), "{t}");
    sim.run(Duration::from_secs(40));
    assert!(sim.idle());
}

#[test]
fn cancel_crossing_a_200_acks_then_byes() {
    let mut sim = Sim::new();
    let a = sim.call(Duration::from_secs(60));
    sim.run(Duration::from_millis(50));
    let inc = sim.incoming();
    sim.uas[B].ring(sim.now, inc.call).unwrap();
    sim.run(Duration::from_millis(50));
    // Both at the same instant: the 200 and the CANCEL cross on the wire.
    sim.uas[B].answer(sim.now, inc.call, media(5000)).unwrap();
    sim.uas[A].hangup(sim.now, a).unwrap();
    sim.run(Duration::from_millis(200));
    assert_eq!(sim.ended(A), vec![(CallEnd::Canceled, None, false)]);
    // B answered, got the ACK, then A's BYE.
    assert_eq!(sim.answered(B), 1);
    assert_eq!(sim.ended(B), vec![(CallEnd::Answered, None, true)]);
    let t = sim.trace.join("\n");
    assert!(t.contains("b>a SIP/2.0 200 OK"), "{t}");
    assert!(t.contains("a>b ACK"), "{t}");
    assert!(t.contains("a>b BYE"), "{t}");
    sim.run(Duration::from_secs(40));
    assert!(sim.idle());
}

#[test]
fn ring_timeout_cancels() {
    let mut sim = Sim::new();
    sim.call(Duration::from_secs(5));
    sim.run(Duration::from_millis(50));
    let inc = sim.incoming();
    sim.uas[B].ring(sim.now, inc.call).unwrap();
    sim.run(Duration::from_secs(4));
    assert!(sim.ended(A).is_empty());
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.ended(A), vec![(CallEnd::RingTimeout, None, false)]);
    assert_eq!(sim.ended(B), vec![(CallEnd::Canceled, Some(487), true)]);
}

#[test]
fn rejection_reports_the_code() {
    let mut sim = Sim::new();
    sim.call(Duration::from_secs(60));
    sim.run(Duration::from_millis(50));
    let inc = sim.incoming();
    sim.uas[B].reject(sim.now, inc.call, 486).unwrap();
    sim.run(Duration::from_millis(100));
    assert_eq!(
        sim.ended(A),
        vec![(CallEnd::Rejected(486), Some(486), false)]
    );
    assert_eq!(
        sim.ended(B),
        vec![(CallEnd::Rejected(486), Some(486), false)]
    );
    let t = sim.trace.join("\n");
    assert!(t.contains("a>b ACK"), "the transaction ACKs a non-2xx: {t}");
    sim.run(Duration::from_secs(40));
    assert!(sim.idle());
}

#[test]
fn no_response_is_a_transport_failure_after_timer_b() {
    let mut sim = Sim::new();
    sim.drop_from = Some(A);
    sim.call(Duration::from_secs(60));
    sim.run(Duration::from_secs(31));
    assert!(sim.ended(A).is_empty());
    sim.run(Duration::from_secs(2));
    assert_eq!(
        sim.ended(A),
        vec![(CallEnd::TransportFailure, Some(408), false)]
    );
    // The ring timeout (60 s) was superseded: nothing else is reported.
    sim.run(Duration::from_secs(60));
    assert_eq!(sim.ended(A).len(), 1);
    assert_eq!(sim.uas[A].stats().calls, 0);
}

#[test]
fn options_policy_and_draining() {
    let mut sim = Sim::new();
    sim.uas[B].set_source_filter(|ip| ip != "10.0.0.1".parse::<IpAddr>().unwrap());
    let options = |cseq: u32| {
        format!(
            "OPTIONS sip:10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKo{cseq}\r\n\
             From: <sip:p@10.0.0.1>;tag=x\r\nTo: <sip:10.0.0.2>\r\nCall-ID: o{cseq}\r\n\
             CSeq: {cseq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let now = sim.now;
    sim.uas[B].handle_datagram(now, options(1).as_bytes(), sim.addrs[A]);
    sim.uas[B].handle_datagram(now, options(2).as_bytes(), "10.0.0.7:5060".parse().unwrap());
    sim.uas[B].set_draining(true);
    sim.uas[B].handle_datagram(now, options(3).as_bytes(), "10.0.0.7:5060".parse().unwrap());
    sim.uas[B].handle_datagram(now, b"OPTIONS nonsense\r\n\r\n", sim.addrs[A]);
    let mut lines = Vec::new();
    while let Some(t) = sim.uas[B].poll_transmit() {
        lines.push(
            String::from_utf8_lossy(&t.bytes)
                .lines()
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        lines,
        vec![
            "SIP/2.0 403 Forbidden",
            "SIP/2.0 200 OK",
            "SIP/2.0 503 Service Unavailable"
        ]
    );
}

#[test]
fn an_unavailable_database_refuses_new_calls_until_it_is_back() {
    let mut sim = Sim::new();
    let options = |cseq: u32| {
        format!(
            "OPTIONS sip:10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKu{cseq}\r\n\
             From: <sip:p@10.0.0.1>;tag=x\r\nTo: <sip:10.0.0.2>\r\nCall-ID: u{cseq}\r\n\
             CSeq: {cseq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    sim.uas[B].set_unavailable(true);
    let now = sim.now;
    sim.uas[B].handle_datagram(now, options(1).as_bytes(), sim.addrs[A]);
    sim.call(Duration::from_secs(60));
    sim.run(Duration::from_millis(100));
    assert_eq!(
        sim.ended(A),
        vec![(CallEnd::Rejected(503), Some(503), false)]
    );
    assert!(sim.events[B].is_empty(), "no call reached B's engine");
    sim.uas[B].set_unavailable(false);
    let now = sim.now;
    sim.uas[B].handle_datagram(now, options(2).as_bytes(), sim.addrs[A]);
    sim.call(Duration::from_secs(60));
    sim.run(Duration::from_millis(100));
    sim.incoming();
    let t = sim.trace.join("\n");
    // the OPTIONS and the INVITE while unavailable; the OPTIONS once back
    assert_eq!(t.matches("b>a SIP/2.0 503").count(), 2, "{t}");
    assert_eq!(t.matches("b>a SIP/2.0 200 OK").count(), 1, "{t}");
}

/// Plays the far end by hand: reads what A sends, answers with text.
struct Raw {
    ua: UserAgent,
    now: Instant,
    peer: SocketAddr,
}

impl Raw {
    fn new() -> Self {
        Self {
            ua: UserAgent::new(UaConfig {
                advertised: "10.0.0.1:5060".parse().unwrap(),
                seed: 7,
                ..UaConfig::default()
            }),
            now: Instant::now(),
            peer: "10.0.0.2:5060".parse().unwrap(),
        }
    }

    fn sent(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(t) = self.ua.poll_transmit() {
            out.push(String::from_utf8(t.bytes).unwrap());
        }
        out
    }

    fn feed(&mut self, text: &str) {
        self.ua
            .handle_datagram(self.now, text.as_bytes(), self.peer);
    }

    /// An outbound call to the raw peer (a gateway dialled with a national number).
    fn outgoing(&self, auth: Option<Auth>) -> Outgoing {
        Outgoing {
            gateway: self.peer,
            transport: Transport::Udp,
            uri: "sip:012345678@10.0.0.2".into(),
            from: "sip:15005550006@10.0.0.2".into(),
            auth,
            media: media(4000),
            ring_timeout: Duration::from_secs(60),
        }
    }

    fn events(&mut self) -> Vec<UaEvent> {
        std::iter::from_fn(|| self.ua.poll_event()).collect()
    }
}

fn header_of<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or_else(|| panic!("no {name} in {msg}"))
}

fn reply(req: &str, status: &str, extra: &str) -> String {
    let mut s = format!("SIP/2.0 {status}\r\n");
    for name in ["Via", "From", "Call-ID", "CSeq"] {
        s += &format!("{name}: {}\r\n", header_of(req, name));
    }
    s += &format!(
        "To: {};tag=far\r\n{extra}Content-Length: 0\r\n\r\n",
        header_of(req, "To")
    );
    s
}

fn digest_round(algorithm: &str) {
    let mut raw = Raw::new();
    let out = raw.outgoing(Some(Auth {
        username: "callflow".into(),
        password: "secret".into(),
        realm: None,
    }));
    raw.ua.invite(raw.now, out).unwrap();
    let invite = raw.sent().remove(0);
    let challenge = format!(
        "WWW-Authenticate: Digest realm=\"telco\", nonce=\"n0nce\", algorithm={algorithm}, qop=\"auth\"\r\n"
    );
    raw.feed(&reply(&invite, "401 Unauthorized", &challenge));
    let sent = raw.sent();
    assert!(sent[0].starts_with("ACK "), "{}", sent[0]);
    let second = sent
        .iter()
        .find(|m| m.starts_with("INVITE "))
        .expect("a second INVITE");
    assert!(header_of(second, "CSeq").starts_with("2 "));
    assert_eq!(header_of(second, "Call-ID"), header_of(&invite, "Call-ID"));
    assert_ne!(
        header_of(second, "Via"),
        header_of(&invite, "Via"),
        "new branch"
    );
    let auth = header_of(second, "Authorization");
    assert!(auth.contains("username=\"callflow\""), "{auth}");
    assert!(auth.contains("uri=\"sip:012345678@10.0.0.2\""), "{auth}");
    // Verify the response as the server would.
    let get = |k: &str| {
        let i = auth.find(&format!("{k}=")).unwrap() + k.len() + 1;
        let rest = &auth[i..];
        let v = rest.split(',').next().unwrap().trim();
        v.trim_matches('"').to_owned()
    };
    let h = |s: String| -> String {
        use sha2::Digest;
        if algorithm == "MD5" {
            format!("{:x}", md5::Md5::digest(s.as_bytes()))
        } else {
            format!("{:x}", sha2::Sha256::digest(s.as_bytes()))
        }
    };
    let ha1 = h("callflow:telco:secret".into());
    let ha2 = h("INVITE:sip:012345678@10.0.0.2".into());
    let expected = h(format!(
        "{ha1}:n0nce:{}:{}:auth:{ha2}",
        get("nc"),
        get("cnonce")
    ));
    assert_eq!(get("response"), expected);
    // A second challenge after our answer is final: no endless loop.
    raw.feed(&reply(second, "401 Unauthorized", &challenge));
    let third = raw.sent().into_iter().find(|m| m.starts_with("INVITE "));
    raw.feed(&reply(
        third.as_deref().unwrap_or(second),
        "401 Unauthorized",
        &challenge,
    ));
    let ended: Vec<_> = raw
        .events()
        .into_iter()
        .filter(|e| matches!(e, UaEvent::Ended { .. }))
        .collect();
    assert_eq!(ended.len(), 1, "{ended:?}");
}

#[test]
fn digest_challenge_md5() {
    digest_round("MD5");
}

#[test]
fn digest_challenge_sha256() {
    digest_round("SHA-256");
}

const OFFER: &str = "v=0\r\no=far 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
    m=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";

fn inbound_invite(body: &str, extra: &str) -> String {
    format!(
        "INVITE sip:+15005550006@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKi1\r\n\
         From: <sip:+15551110000@10.0.0.2>;tag=far\r\nTo: <sip:+15005550006@10.0.0.1>\r\n\
         Call-ID: in1\r\nCSeq: 1 INVITE\r\nContact: <sip:far@10.0.0.2:5060>\r\n{extra}\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn inbound_hold_by_reinvite_and_bye() {
    let mut raw = Raw::new();
    raw.feed(&inbound_invite(
        OFFER,
        "Record-Route: <sip:proxy.example;lr>\r\n",
    ));
    let inc = match raw.events().remove(0) {
        UaEvent::Incoming(i) => i,
        e => panic!("{e:?}"),
    };
    assert_eq!(inc.to_user.as_deref(), Some("+15005550006"));
    assert_eq!(inc.from_user.as_deref(), Some("+15551110000"));
    raw.ua.answer(raw.now, inc.call, media(5000)).unwrap();
    let sent = raw.sent();
    let ok = sent.iter().find(|m| m.starts_with("SIP/2.0 200")).unwrap();
    assert!(ok.contains("m=audio 5000 RTP/AVP 0 101"), "{ok}");
    assert!(
        header_of(ok, "Record-Route").contains("proxy.example"),
        "{ok}"
    );
    let tag = msg::param(header_of(ok, "To"), "tag").unwrap().to_owned();
    let dialog = format!(
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK{{b}}\r\nFrom: <sip:+15551110000@10.0.0.2>;tag=far\r\n\
         To: <sip:+15005550006@10.0.0.1>;tag={tag}\r\nCall-ID: in1\r\n"
    );
    raw.feed(&format!(
        "ACK sip:callflow@10.0.0.1 SIP/2.0\r\n{}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        dialog.replace("{b}", "a1")
    ));
    let evs = raw.events();
    assert!(
        evs.contains(&UaEvent::Answered { call: inc.call }),
        "{evs:?}"
    );
    // Hold: a=sendonly; we answer recvonly and the engine learns the call is on hold.
    let hold = OFFER.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
    raw.feed(&format!(
        "INVITE sip:callflow@10.0.0.1 SIP/2.0\r\n{}CSeq: 2 INVITE\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{hold}",
        dialog.replace("{b}", "r2"),
        hold.len()
    ));
    let sent = raw.sent();
    let ok = sent
        .iter()
        .find(|m| m.starts_with("SIP/2.0 200"))
        .expect("200 to re-INVITE");
    assert!(ok.contains("a=recvonly"), "{ok}");
    assert!(ok.contains("o=callflow 1 2 "), "version grew: {ok}");
    let held = raw.events().into_iter().find_map(|e| match e {
        UaEvent::Media { media, .. } => Some(media.on_hold()),
        _ => None,
    });
    assert_eq!(held, Some(true));
    // An old CSeq is refused; BYE ends the call.
    raw.feed(&format!(
        "BYE sip:callflow@10.0.0.1 SIP/2.0\r\n{}CSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n",
        dialog.replace("{b}", "y3")
    ));
    let sent = raw.sent();
    assert!(
        sent.iter()
            .any(|m| m.starts_with("SIP/2.0 200") && m.contains("3 BYE")),
        "{sent:?}"
    );
    let ended: Vec<_> = raw
        .events()
        .into_iter()
        .filter(|e| matches!(e, UaEvent::Ended { .. }))
        .collect();
    assert_eq!(
        ended,
        vec![UaEvent::Ended {
            call: inc.call,
            end: CallEnd::Answered,
            code: None,
            by_peer: true
        }]
    );
}

#[test]
fn inbound_without_usable_offer_is_488() {
    let mut raw = Raw::new();
    let video = "v=0\r\no=x 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=video 6000 RTP/AVP 96\r\n";
    raw.feed(&inbound_invite(video, ""));
    let inc = match raw.events().remove(0) {
        UaEvent::Incoming(i) => i,
        e => panic!("{e:?}"),
    };
    assert!(inc.offer.is_err());
    assert!(raw.ua.answer(raw.now, inc.call, media(5000)).is_err());
    let sent = raw.sent();
    assert!(
        sent.iter().any(|m| m.starts_with("SIP/2.0 488")),
        "{sent:?}"
    );
}

#[test]
fn in_dialog_requests_for_unknown_dialogs_get_481() {
    let mut raw = Raw::new();
    raw.feed(
        "BYE sip:callflow@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKq\r\n\
         From: <sip:a@10.0.0.2>;tag=1\r\nTo: <sip:b@10.0.0.1>;tag=nope\r\nCall-ID: zz\r\n\
         CSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n",
    );
    let sent = raw.sent();
    assert!(sent[0].starts_with("SIP/2.0 481"), "{sent:?}");
}

#[test]
fn whole_calls_survive_loss_and_reordering() {
    for seed in 1..=48u64 {
        let mut sim = Sim::new();
        sim.seed = Some((seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, 20));
        let a = sim.call(Duration::from_secs(60));
        sim.run(Duration::from_secs(2));
        let Some(inc) = sim.events[B].iter().find_map(|e| match e {
            UaEvent::Incoming(i) => Some(i.clone()),
            _ => None,
        }) else {
            // Every INVITE retransmission lost is possible but vanishingly rare at 20%.
            panic!("seed {seed}: B never saw the INVITE");
        };
        sim.uas[B].answer(sim.now, inc.call, media(5000)).unwrap();
        sim.run(Duration::from_secs(5));
        assert_eq!(sim.answered(A), 1, "seed {seed}");
        sim.uas[A].hangup(sim.now, a).unwrap();
        sim.run(Duration::from_secs(70));
        assert_eq!(sim.ended(A).len(), 1, "seed {seed}");
        assert_eq!(
            sim.ended(B).len(),
            1,
            "seed {seed}: {}",
            sim.trace.join("\n")
        );
        assert!(
            sim.idle(),
            "seed {seed}: {:?} {:?}",
            sim.uas[0].stats(),
            sim.uas[1].stats()
        );
    }
}

#[test]
fn an_inbound_call_nobody_answers_is_rejected_480_by_the_safety_net() {
    let mut raw = Raw::new();
    raw.feed(&inbound_invite(OFFER, ""));
    let inc = match raw.events().remove(0) {
        UaEvent::Incoming(i) => i,
        e => panic!("{e:?}"),
    };
    raw.ua.ring(raw.now, inc.call).unwrap();
    raw.sent();
    raw.ua.handle_timeout(raw.now + Duration::from_secs(179));
    assert!(raw.events().is_empty());
    raw.ua.handle_timeout(raw.now + Duration::from_secs(181));
    assert!(raw.sent().iter().any(|m| m.starts_with("SIP/2.0 480")));
    assert_eq!(
        raw.events(),
        vec![UaEvent::Ended {
            call: inc.call,
            end: CallEnd::Rejected(480),
            code: Some(480),
            by_peer: false
        }]
    );
}

#[test]
fn hanging_up_before_the_ack_waits_for_it_to_send_bye() {
    let mut raw = Raw::new();
    raw.feed(&inbound_invite(OFFER, ""));
    let inc = match raw.events().remove(0) {
        UaEvent::Incoming(i) => i,
        e => panic!("{e:?}"),
    };
    raw.ua.answer(raw.now, inc.call, media(5000)).unwrap();
    let ok = raw
        .sent()
        .into_iter()
        .find(|m| m.starts_with("SIP/2.0 200"))
        .unwrap();
    raw.ua.hangup(raw.now, inc.call).unwrap();
    assert!(
        !raw.sent().iter().any(|m| m.starts_with("BYE")),
        "no BYE before the ACK"
    );
    let tag = msg::param(header_of(&ok, "To"), "tag").unwrap().to_owned();
    raw.feed(&format!(
        "ACK sip:callflow@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKak\r\n\
         From: <sip:+15551110000@10.0.0.2>;tag=far\r\nTo: <sip:+15005550006@10.0.0.1>;tag={tag}\r\n\
         Call-ID: in1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ));
    let sent = raw.sent();
    assert!(
        sent.iter()
            .any(|m| m.starts_with("BYE sip:far@10.0.0.2:5060")),
        "{sent:?}"
    );
    let ended: Vec<_> = raw
        .events()
        .into_iter()
        .filter(|e| matches!(e, UaEvent::Ended { .. }))
        .collect();
    assert_eq!(ended.len(), 1, "{ended:?}");
}

#[test]
fn a_caller_we_could_never_send_a_bye_to_is_refused_400() {
    for contact in ["<sip:a b@10.0.0.2>", "<sip:a@10.0.0.2:99999>", "<sip:>"] {
        let mut raw = Raw::new();
        let invite = inbound_invite(OFFER, "").replace(
            "Contact: <sip:far@10.0.0.2:5060>",
            &format!("Contact: {contact}"),
        );
        raw.feed(&invite);
        assert!(raw.events().is_empty(), "{contact}");
        let sent = raw.sent();
        assert!(
            sent.iter().any(|m| m.starts_with("SIP/2.0 400")),
            "{contact}: {sent:?}"
        );
        assert_eq!(raw.ua.stats().live_calls, 0);
    }
}

#[test]
fn a_cancelled_invite_whose_487_never_comes_is_dropped_after_64_t1() {
    let mut raw = Raw::new();
    let out = raw.outgoing(None);
    let call = raw.ua.invite(raw.now, out).unwrap();
    let invite = raw.sent().remove(0);
    raw.feed(&reply(&invite, "180 Ringing", ""));
    raw.ua.hangup(raw.now, call).unwrap();
    let cancel = raw
        .sent()
        .into_iter()
        .find(|m| m.starts_with("CANCEL"))
        .unwrap();
    raw.feed(&reply(&cancel, "200 OK", ""));
    // no 487 ever
    let mut now = raw.now;
    for _ in 0..70 {
        now += Duration::from_millis(500);
        raw.ua.handle_timeout(now);
    }
    let s = raw.ua.stats();
    assert_eq!((s.calls, s.transactions), (0, 0), "{s:?}");
    let ended: Vec<_> = raw
        .events()
        .into_iter()
        .filter(|e| matches!(e, UaEvent::Ended { .. }))
        .collect();
    assert_eq!(ended.len(), 1);
}

#[test]
fn a_bye_before_answer_ends_the_inbound_call_with_487() {
    let mut raw = Raw::new();
    raw.feed(&inbound_invite(OFFER, ""));
    let inc = match raw.events().remove(0) {
        UaEvent::Incoming(i) => i,
        e => panic!("{e:?}"),
    };
    raw.ua.ring(raw.now, inc.call).unwrap();
    let ringing = raw
        .sent()
        .into_iter()
        .find(|m| m.starts_with("SIP/2.0 180"))
        .unwrap();
    let tag = msg::param(header_of(&ringing, "To"), "tag")
        .unwrap()
        .to_owned();
    raw.feed(&format!(
        "BYE sip:callflow@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKeb\r\n\
         From: <sip:+15551110000@10.0.0.2>;tag=far\r\nTo: <sip:+15005550006@10.0.0.1>;tag={tag}\r\n\
         Call-ID: in1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ));
    let sent = raw.sent();
    assert!(
        sent.iter()
            .any(|m| m.starts_with("SIP/2.0 200") && m.contains("2 BYE")),
        "{sent:?}"
    );
    assert!(
        sent.iter().any(|m| m.starts_with("SIP/2.0 487")),
        "{sent:?}"
    );
    assert_eq!(
        raw.events(),
        vec![UaEvent::Ended {
            call: inc.call,
            end: CallEnd::Canceled,
            code: Some(487),
            by_peer: true
        }]
    );
}

#[test]
fn a_2xx_from_a_second_fork_is_acked_and_ended_with_bye() {
    let mut raw = Raw::new();
    let out = raw.outgoing(None);
    raw.ua.invite(raw.now, out).unwrap();
    let invite = raw.sent().remove(0);
    let ok = |tag: &str, contact: &str| {
        reply(&invite, "200 OK", &format!("Contact: <{contact}>\r\n"))
            .replace(";tag=far", &format!(";tag={tag}"))
            .replace(
                "Content-Length: 0\r\n\r\n",
                &format!(
                    "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
                    OFFER.len()
                ),
            )
    };
    raw.feed(&ok("one", "sip:one@10.0.0.2:5070"));
    let first = raw.sent();
    assert!(
        first
            .iter()
            .any(|m| m.starts_with("ACK sip:one@10.0.0.2:5070")),
        "{first:?}"
    );
    raw.feed(&ok("two", "sip:two@10.0.0.2:5080"));
    let second = raw.sent();
    let ack = second
        .iter()
        .find(|m| m.starts_with("ACK "))
        .expect("the fork is ACKed");
    assert!(ack.starts_with("ACK sip:two@10.0.0.2:5080"), "{ack}");
    assert!(header_of(ack, "To").ends_with(";tag=two"), "{ack}");
    let bye = second
        .iter()
        .find(|m| m.starts_with("BYE "))
        .expect("and sent a BYE");
    assert!(bye.starts_with("BYE sip:two@10.0.0.2:5080"), "{bye}");
    // The first dialog is intact: our hangup goes to it.
    let call = raw.events().iter().find_map(|e| match e {
        UaEvent::Answered { call } => Some(*call),
        _ => None,
    });
    raw.ua.hangup(raw.now, call.unwrap()).unwrap();
    let bye = raw
        .sent()
        .into_iter()
        .find(|m| m.starts_with("BYE "))
        .unwrap();
    assert!(bye.starts_with("BYE sip:one@10.0.0.2:5070"), "{bye}");
    assert!(header_of(&bye, "To").ends_with(";tag=one"), "{bye}");
}

/// The latest dialog `node` reported for its call.
fn last_dialog(sim: &Sim, node: usize) -> Dialog {
    sim.events[node]
        .iter()
        .rev()
        .find_map(|e| match e {
            UaEvent::Dialog { dialog, .. } => Some((**dialog).clone()),
            _ => None,
        })
        .expect("a dialog was reported")
}

/// `node` crashes and starts again: a new user agent on the same address, knowing nothing.
fn restart(sim: &mut Sim, node: usize) {
    sim.uas[node] = UserAgent::new(UaConfig {
        advertised: sim.addrs[node],
        seed: 100 + node as u64,
        ..UaConfig::default()
    });
    sim.events[node].clear();
}

#[test]
fn an_answered_call_left_by_a_crash_gets_a_bye_from_the_next_run() {
    for caller_crashes in [true, false] {
        let mut sim = Sim::new();
        sim.call(Duration::from_secs(60));
        sim.run(Duration::from_millis(50));
        let inc = sim.incoming();
        sim.uas[B].answer(sim.now, inc.call, media(5000)).unwrap();
        sim.run(Duration::from_millis(100));
        assert_eq!((sim.answered(A), sim.answered(B)), (1, 1));
        let (crashed, survivor) = if caller_crashes { (A, B) } else { (B, A) };
        let dialog = last_dialog(&sim, crashed);
        assert!(
            dialog.invite.is_none() && dialog.remote_tag.is_some(),
            "{dialog:?}"
        );
        // the dialog survives its trip through storage
        let stored = serde_json::to_string(&dialog).unwrap();
        let dialog: Dialog = serde_json::from_str(&stored).unwrap();
        restart(&mut sim, crashed);
        sim.uas[crashed].end_left(sim.now, dialog).unwrap();
        sim.run(Duration::from_millis(100));
        assert_eq!(sim.ended(survivor), vec![(CallEnd::Answered, None, true)]);
        assert_eq!(sim.ended(crashed), vec![(CallEnd::Answered, None, false)]);
        let t = sim.trace.join("\n");
        let bye = format!("{}>{} BYE", ['a', 'b'][crashed], ['a', 'b'][survivor]);
        assert!(t.contains(&bye), "{t}");
        sim.run(Duration::from_secs(40));
        assert!(
            sim.idle(),
            "{:?} {:?}",
            sim.uas[0].stats(),
            sim.uas[1].stats()
        );
    }
}

#[test]
fn a_ringing_call_left_by_a_crash_is_cancelled_by_the_next_run_and_its_487_acked() {
    let mut sim = Sim::new();
    sim.call(Duration::from_secs(60));
    sim.run(Duration::from_millis(50));
    let inc = sim.incoming();
    sim.uas[B].ring(sim.now, inc.call).unwrap();
    sim.run(Duration::from_millis(50));
    let dialog = last_dialog(&sim, A);
    assert!(
        dialog.invite.is_some() && dialog.remote_tag.is_none(),
        "{dialog:?}"
    );
    restart(&mut sim, A);
    sim.uas[A].end_left(sim.now, dialog).unwrap();
    sim.run(Duration::from_millis(200));
    assert_eq!(sim.ended(B), vec![(CallEnd::Canceled, Some(487), true)]);
    assert_eq!(sim.ended(A), vec![(CallEnd::Canceled, None, false)]);
    let t = sim.trace.join("\n");
    assert!(t.contains("a>b CANCEL"), "{t}");
    assert!(t.contains("b>a SIP/2.0 487 Request Terminated"), "{t}");
    assert!(t.contains("a>b ACK"), "the 487 is ACKed: {t}");
    sim.run(Duration::from_secs(40));
    let t = sim.trace.join("\n");
    assert_eq!(
        t.matches("b>a SIP/2.0 487").count(),
        1,
        "no 487 retransmitted: {t}"
    );
    assert!(
        sim.idle(),
        "{:?} {:?}",
        sim.uas[0].stats(),
        sim.uas[1].stats()
    );
}

#[test]
fn a_left_dialog_that_cannot_be_ended_is_refused() {
    let mut sim = Sim::new();
    sim.call(Duration::from_secs(60));
    sim.run(Duration::from_millis(50));
    let good = last_dialog(&sim, A);
    let mut neither = good.clone();
    neither.invite = None;
    let mut bad_invite = good.clone();
    bad_invite.invite = Some("INVITE garbage".into());
    let mut bad_transport = good.clone();
    bad_transport.transport = "SMOKE".into();
    restart(&mut sim, A);
    for d in [neither, bad_invite, bad_transport] {
        assert!(sim.uas[A].end_left(sim.now, d).is_err());
    }
    assert_eq!(sim.uas[A].stats().live_calls, 0);
}
