//! Two endpoints wired through a simulated network on a simulated clock: datagrams take 10 ms
//! (plus seeded jitter, which reorders them) and are lost by plan. Each test snapshots a trace
//! of datagrams sent (`a>b`, `(lost)` when the plan drops it) and events the TUs see.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use expect_test::{Expect, expect};
use rsip::message::HeadersExt;
use rsip::prelude::ToTypedHeader;
use rsip::{Request, SipMessage};

use super::*;

const LATENCY: Duration = Duration::from_millis(10);

enum Plan {
    /// Drops the datagrams with these sequence numbers (0 = the first one sent).
    Drop(Vec<u64>),
    /// Drops every datagram sent by this node.
    DropFrom(usize),
    /// Loses `loss_pct` percent and delays each by up to `jitter_ms` more, from a seeded
    /// xorshift generator.
    Seeded {
        state: u64,
        loss_pct: u64,
        jitter_ms: u64,
    },
}

impl Plan {
    /// Whether datagram `n` from node `from` is lost, and its extra delay.
    fn decide(&mut self, n: u64, from: usize) -> (bool, Duration) {
        match self {
            Plan::Drop(list) => (list.contains(&n), Duration::ZERO),
            Plan::DropFrom(node) => (*node == from, Duration::ZERO),
            Plan::Seeded {
                state,
                loss_pct,
                jitter_ms,
            } => {
                let mut next = || {
                    *state ^= *state << 13;
                    *state ^= *state >> 7;
                    *state ^= *state << 17;
                    *state
                };
                let lost = next() % 100 < *loss_pct;
                let jitter = next() % (*jitter_ms + 1);
                (lost, Duration::from_millis(jitter))
            }
        }
    }
}

struct Datagram {
    at: Instant,
    seq: u64,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

struct Node {
    name: char,
    addr: SocketAddr,
    tx: Transactions,
    events: Vec<TxEvent>,
    /// The requests of this node's server transactions, to build responses from.
    requests: HashMap<TxKey, Request>,
    /// Answer every new request at once with this status (and 200 to a CANCEL).
    auto_answer: Option<u16>,
}

struct Sim {
    base: Instant,
    now: Instant,
    nodes: [Node; 2],
    flight: Vec<Datagram>,
    sent: u64,
    plan: Plan,
    trace: String,
}

const A: usize = 0;
const B: usize = 1;

impl Sim {
    fn new(plan: Plan) -> Self {
        Self::with_config(plan, Config::default())
    }

    fn with_config(plan: Plan, config: Config) -> Self {
        let node = |name, addr: &str| Node {
            name,
            addr: addr.parse().unwrap(),
            tx: Transactions::new(config.clone()),
            events: Vec::new(),
            requests: HashMap::new(),
            auto_answer: None,
        };
        let base = Instant::now();
        Self {
            base,
            now: base,
            nodes: [node('a', "10.0.0.1:5060"), node('b', "10.0.0.2:5060")],
            flight: Vec::new(),
            sent: 0,
            plan,
            trace: String::new(),
        }
    }

    fn log(&mut self, line: String) {
        // Seconds, zero-padded: expect-test strips leading whitespace.
        let ms = (self.now - self.base).as_millis();
        let (s, ms) = (ms / 1000, ms % 1000);
        self.trace.push_str(&format!("{s:02}.{ms:03} {line}\n"));
    }

    fn send(&mut self, node: usize, req: Request) -> TxKey {
        let to = self.nodes[1 - node].addr;
        let key = self.nodes[node].tx.send_request(self.now, req, to).unwrap();
        self.flush();
        key
    }

    fn respond(&mut self, node: usize, key: TxKey, status: u16) {
        let req = &self.nodes[node].requests[&key];
        let tag = (status > 100).then_some("b1");
        let resp = response_to(req, status, tag);
        self.nodes[node]
            .tx
            .send_response(self.now, key, resp)
            .unwrap();
        self.flush();
    }

    /// Moves transmits into the network and events into the trace, answering for auto TUs.
    fn flush(&mut self) {
        loop {
            let mut idle = true;
            for i in [A, B] {
                while let Some(t) = self.nodes[i].tx.poll_transmit() {
                    idle = false;
                    let to = usize::from(t.to == self.nodes[B].addr);
                    let n = self.sent;
                    self.sent += 1;
                    let (lost, jitter) = self.plan.decide(n, i);
                    let what = describe(&t.bytes);
                    let (a, b) = (self.nodes[i].name, self.nodes[to].name);
                    self.log(format!(
                        "{a}>{b} {what}{}",
                        if lost { " (lost)" } else { "" }
                    ));
                    if !lost {
                        self.flight.push(Datagram {
                            at: self.now + LATENCY + jitter,
                            seq: n,
                            from: i,
                            to,
                            bytes: t.bytes,
                        });
                    }
                }
                while let Some(ev) = self.nodes[i].tx.poll_event() {
                    idle = false;
                    let line = format!("{}: {}", self.nodes[i].name, describe_event(&ev));
                    self.log(line);
                    if let TxEvent::Request { key, request, .. } = &ev {
                        self.nodes[i].requests.insert(*key, request.clone());
                        if let Some(status) = self.nodes[i].auto_answer {
                            let status = if request.method == rsip::Method::Cancel {
                                200
                            } else {
                                status
                            };
                            let resp = response_to(request, status, Some("b1"));
                            self.nodes[i]
                                .tx
                                .send_response(self.now, *key, resp)
                                .unwrap();
                        }
                    }
                    self.nodes[i].events.push(ev);
                }
            }
            if idle {
                return;
            }
        }
    }

    fn run_until(&mut self, ms: u64) {
        let end = self.base + Duration::from_millis(ms);
        loop {
            self.flush();
            let mut next = self.flight.iter().map(|d| d.at).min();
            for n in &mut self.nodes {
                if let Some(t) = n.tx.poll_timeout() {
                    next = Some(next.map_or(t, |x| x.min(t)));
                }
            }
            let Some(next) = next.filter(|&t| t <= end) else {
                break;
            };
            self.now = self.now.max(next);
            self.flight.sort_by_key(|d| (d.at, d.seq));
            let due = self.flight.iter().take_while(|d| d.at <= self.now).count();
            for d in self.flight.drain(..due).collect::<Vec<_>>() {
                let msg = crate::parse(&d.bytes).expect("the layer sends messages we parse");
                let from = self.nodes[d.from].addr;
                self.nodes[d.to].tx.handle_incoming(self.now, msg, from);
                self.flush();
            }
            for i in [A, B] {
                if self.nodes[i]
                    .tx
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now)
                {
                    self.nodes[i].tx.handle_timeout(self.now);
                }
            }
        }
        self.now = end;
    }

    fn check(&self, expect: Expect) {
        expect.assert_eq(&self.trace);
    }

    fn key_of_request(&self, node: usize, method: rsip::Method) -> TxKey {
        let (key, _) = self.nodes[node]
            .requests
            .iter()
            .find(|(_, r)| r.method == method)
            .expect("the request arrived");
        *key
    }
}

fn request(method: &str, branch: &str, call: &str, cseq: u32, transport: &str) -> Request {
    let raw = format!(
        "{method} sip:bob@10.0.0.2 SIP/2.0\r\n\
         Via: SIP/2.0/{transport} 10.0.0.1:5060;branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@10.0.0.1>;tag=a1\r\n\
         To: <sip:bob@10.0.0.2>\r\n\
         Call-ID: {call}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    match crate::parse(raw.as_bytes()).unwrap() {
        SipMessage::Request(r) => r,
        SipMessage::Response(_) => unreachable!("built a request"),
    }
}

fn invite(branch: &str) -> Request {
    request("INVITE", branch, "call1", 1, "UDP")
}

fn describe(bytes: &[u8]) -> String {
    match crate::parse(bytes).expect("the layer sends messages we parse") {
        SipMessage::Request(r) => r.method.to_string(),
        SipMessage::Response(r) => {
            let method = r.cseq_header().unwrap().typed().unwrap().method;
            format!("{} ({method})", r.status_code.code())
        }
    }
}

fn describe_event(ev: &TxEvent) -> String {
    match ev {
        TxEvent::Request {
            key,
            request,
            cancels,
            ..
        } => {
            let cancels = cancels.map(|c| format!(" cancels {c}")).unwrap_or_default();
            format!("request {key} {}{cancels}", request.method)
        }
        TxEvent::Ack { .. } => "ack (no transaction)".into(),
        TxEvent::Response { key, response } => {
            format!("response {key} {}", response.status_code.code())
        }
        TxEvent::StrayResponse { response, .. } => {
            format!("stray response {}", response.status_code.code())
        }
        TxEvent::Timeout { key } => format!("timeout {key}"),
        TxEvent::TransportError { key } => format!("transport error {key}"),
        TxEvent::Terminated { key } => format!("terminated {key}"),
        TxEvent::Refused { method, .. } => format!("refused {method}"),
    }
}

fn count(events: &[TxEvent], f: impl Fn(&TxEvent) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

#[test]
fn invite_ringing_ok_passes_up_once_each() {
    let mut sim = Sim::new(Plan::Drop(vec![]));
    sim.send(A, invite("1"));
    sim.run_until(100);
    let key = sim.key_of_request(B, rsip::Method::Invite);
    sim.respond(B, key, 180);
    sim.run_until(2_000);
    sim.respond(B, key, 200);
    sim.run_until(2_100);
    // The ACK for the 2xx is the dialog's, outside any transaction.
    let ack = request("ACK", "2", "call1", 1, "UDP");
    let to = sim.nodes[B].addr;
    sim.nodes[A].tx.send_stateless(SipMessage::Request(ack), to);
    sim.run_until(40_000);
    sim.check(expect![[r#"
        00.000 a>b INVITE
        00.010 b>a 100 (INVITE)
        00.010 b: request tx1 INVITE
        00.020 a: response tx1 100
        00.100 b>a 180 (INVITE)
        00.110 a: response tx1 180
        02.000 b>a 200 (INVITE)
        02.010 a: response tx1 200
        02.100 a>b ACK
        02.110 b: ack (no transaction)
        34.000 b: terminated tx1
        34.010 a: terminated tx1
    "#]]);
    assert!(sim.nodes.iter().all(|n| n.tx.is_empty()));
}

#[test]
fn invite_survives_three_lost_datagrams_through_timer_a() {
    let mut sim = Sim::new(Plan::Drop(vec![0, 1, 2]));
    sim.nodes[B].auto_answer = Some(486);
    sim.send(A, invite("1"));
    sim.run_until(40_000);
    sim.check(expect![[r#"
        00.000 a>b INVITE (lost)
        00.500 a>b INVITE (lost)
        01.500 a>b INVITE (lost)
        03.500 a>b INVITE
        03.510 b>a 100 (INVITE)
        03.510 b: request tx1 INVITE
        03.510 b>a 486 (INVITE)
        03.520 a: response tx1 100
        03.520 a>b ACK
        03.520 a: response tx1 486
        08.530 b: terminated tx1
        35.520 a: terminated tx1
    "#]]);
}

#[test]
fn timer_b_fires_at_32_s_without_answer() {
    let mut sim = Sim::new(Plan::DropFrom(A));
    let key = sim.send(A, invite("1"));
    sim.run_until(31_999);
    assert_eq!(sim.nodes[A].tx.state(key), Some(State::Calling));
    sim.run_until(40_000);
    sim.check(expect![[r#"
        00.000 a>b INVITE (lost)
        00.500 a>b INVITE (lost)
        01.500 a>b INVITE (lost)
        03.500 a>b INVITE (lost)
        07.500 a>b INVITE (lost)
        15.500 a>b INVITE (lost)
        31.500 a>b INVITE (lost)
        32.000 a: timeout tx1
        32.000 a: terminated tx1
    "#]]);
}

#[test]
fn non_invite_timer_e_caps_at_t2_and_f_fires_at_32_s() {
    let mut sim = Sim::new(Plan::DropFrom(A));
    sim.send(A, request("OPTIONS", "1", "opt1", 1, "UDP"));
    sim.run_until(40_000);
    sim.check(expect![[r#"
        00.000 a>b OPTIONS (lost)
        00.500 a>b OPTIONS (lost)
        01.500 a>b OPTIONS (lost)
        03.500 a>b OPTIONS (lost)
        07.500 a>b OPTIONS (lost)
        11.500 a>b OPTIONS (lost)
        15.500 a>b OPTIONS (lost)
        19.500 a>b OPTIONS (lost)
        23.500 a>b OPTIONS (lost)
        27.500 a>b OPTIONS (lost)
        31.500 a>b OPTIONS (lost)
        32.000 a: timeout tx1
        32.000 a: terminated tx1
    "#]]);
}

#[test]
fn busy_is_retransmitted_by_g_until_the_generated_ack_arrives() {
    // Datagrams: 0 INVITE, 1 100, 2 486 (lost), 3 486 by G, 4 ACK (lost), 5 486 by G, 6 ACK.
    let mut sim = Sim::new(Plan::Drop(vec![2, 4]));
    sim.send(A, invite("1"));
    sim.run_until(100);
    let key = sim.key_of_request(B, rsip::Method::Invite);
    sim.respond(B, key, 486);
    sim.run_until(40_000);
    sim.check(expect![[r#"
        00.000 a>b INVITE
        00.010 b>a 100 (INVITE)
        00.010 b: request tx1 INVITE
        00.020 a: response tx1 100
        00.100 b>a 486 (INVITE) (lost)
        00.600 b>a 486 (INVITE)
        00.610 a>b ACK (lost)
        00.610 a: response tx1 486
        01.600 b>a 486 (INVITE)
        01.610 a>b ACK
        06.620 b: terminated tx1
        32.610 a: terminated tx1
    "#]]);
    assert_eq!(
        count(&sim.nodes[A].events, |e| matches!(
            e,
            TxEvent::Response { .. }
        )),
        2,
        "100 and 486, once each"
    );
}

#[test]
fn request_retransmissions_are_absorbed_by_the_server() {
    // The 100 Trying is lost, so timer A repeats the INVITE; the OPTIONS is answered late.
    // Datagrams: 0 INVITE, 1 OPTIONS, 2 100 Trying (lost).
    let mut sim = Sim::new(Plan::Drop(vec![2]));
    sim.send(A, invite("1"));
    sim.send(A, request("OPTIONS", "2", "opt1", 1, "UDP"));
    sim.run_until(2_000);
    let options = sim.key_of_request(B, rsip::Method::Options);
    sim.respond(B, options, 200);
    let invite = sim.key_of_request(B, rsip::Method::Invite);
    sim.respond(B, invite, 603);
    sim.run_until(40_000);
    sim.check(expect![[r#"
        00.000 a>b INVITE
        00.000 a>b OPTIONS
        00.010 b>a 100 (INVITE) (lost)
        00.010 b: request tx1 INVITE
        00.010 b: request tx2 OPTIONS
        00.500 a>b INVITE
        00.500 a>b OPTIONS
        00.510 b>a 100 (INVITE)
        00.520 a: response tx1 100
        01.500 a>b OPTIONS
        02.000 b>a 200 (OPTIONS)
        02.000 b>a 603 (INVITE)
        02.010 a: response tx2 200
        02.010 a>b ACK
        02.010 a: response tx1 603
        07.010 a: terminated tx2
        07.020 b: terminated tx1
        34.000 b: terminated tx2
        34.010 a: terminated tx1
    "#]]);
    let b = &sim.nodes[B];
    assert_eq!(
        count(&b.events, |e| matches!(e, TxEvent::Request { .. })),
        2
    );
    assert!(b.tx.stats().absorbed >= 3, "{:?}", b.tx.stats());
}

#[test]
fn cancel_matches_its_invite_and_gets_its_own_transaction() {
    let mut sim = Sim::new(Plan::Drop(vec![]));
    sim.send(A, invite("1"));
    sim.run_until(100);
    let invite_key = sim.key_of_request(B, rsip::Method::Invite);
    sim.respond(B, invite_key, 180);
    sim.run_until(1_000);
    sim.send(A, request("CANCEL", "1", "call1", 1, "UDP"));
    sim.run_until(1_100);
    let cancel_key = sim.key_of_request(B, rsip::Method::Cancel);
    assert_ne!(cancel_key, invite_key);
    sim.respond(B, cancel_key, 200);
    sim.respond(B, invite_key, 487);
    sim.run_until(40_000);
    sim.check(expect![[r#"
        00.000 a>b INVITE
        00.010 b>a 100 (INVITE)
        00.010 b: request tx1 INVITE
        00.020 a: response tx1 100
        00.100 b>a 180 (INVITE)
        00.110 a: response tx1 180
        01.000 a>b CANCEL
        01.010 b: request tx2 CANCEL cancels tx1
        01.100 b>a 200 (CANCEL)
        01.100 b>a 487 (INVITE)
        01.110 a: response tx2 200
        01.110 a>b ACK
        01.110 a: response tx1 487
        06.110 a: terminated tx2
        06.120 b: terminated tx1
        33.100 b: terminated tx2
        33.110 a: terminated tx1
    "#]]);
}

#[test]
fn reliable_transport_skips_retransmissions_and_waits() {
    let mut sim = Sim::new(Plan::Drop(vec![]));
    sim.nodes[B].auto_answer = Some(486);
    sim.send(A, request("INVITE", "1", "call1", 1, "TCP"));
    sim.send(A, request("OPTIONS", "2", "opt1", 1, "TCP"));
    sim.run_until(100);
    sim.check(expect![[r#"
        00.000 a>b INVITE
        00.000 a>b OPTIONS
        00.010 b>a 100 (INVITE)
        00.010 b: request tx1 INVITE
        00.010 b>a 486 (INVITE)
        00.010 b: request tx2 OPTIONS
        00.010 b: terminated tx2
        00.010 b>a 486 (OPTIONS)
        00.020 a: response tx1 100
        00.020 a>b ACK
        00.020 a: response tx1 486
        00.020 a: terminated tx1
        00.020 a: response tx2 486
        00.020 a: terminated tx2
        00.030 b: terminated tx1
    "#]]);
    assert!(sim.nodes.iter().all(|n| n.tx.is_empty()));
}

#[test]
fn over_the_cap_a_new_request_is_refused_with_503() {
    let config = Config {
        max_transactions: 1,
        ..Config::default()
    };
    let mut sim = Sim::with_config(Plan::Drop(vec![]), config);
    sim.send(A, invite("1"));
    let to = sim.nodes[B].addr;
    let err = sim.nodes[A]
        .tx
        .send_request(sim.now, invite("2"), to)
        .unwrap_err();
    assert_eq!(err, TxError::TooMany { live: 1 });
    // b holds the INVITE's transaction; a second node's request (sent statelessly here) is
    // refused.
    let other = request("INVITE", "3", "call2", 1, "UDP");
    sim.run_until(100);
    sim.nodes[A]
        .tx
        .send_stateless(SipMessage::Request(other), to);
    sim.run_until(200);
    sim.check(expect![[r#"
        00.000 a>b INVITE
        00.010 b>a 100 (INVITE)
        00.010 b: request tx1 INVITE
        00.020 a: response tx1 100
        00.100 a>b INVITE
        00.110 b>a 503 (INVITE)
        00.110 b: refused INVITE
        00.120 a: stray response 503
    "#]]);
}

#[test]
fn commands_are_checked() {
    let mut t = Transactions::new(Config::default());
    let now = Instant::now();
    let to: SocketAddr = "10.0.0.2:5060".parse().unwrap();
    let ack = request("ACK", "1", "c", 1, "UDP");
    assert_eq!(t.send_request(now, ack, to), Err(TxError::Ack));
    let mut old = invite("1");
    for h in old.headers.iter_mut() {
        if let rsip::Header::Via(v) = h {
            *v = rsip::headers::Via::new("SIP/2.0/UDP 10.0.0.1:5060;branch=1234");
        }
    }
    assert_eq!(t.send_request(now, old, to), Err(TxError::NoBranch));
    let key = t.send_request(now, invite("1"), to).unwrap();
    assert_eq!(
        t.send_request(now, invite("1"), to),
        Err(TxError::Duplicate(key))
    );
    let resp = response_to(&invite("1"), 200, Some("x"));
    assert_eq!(
        t.send_response(now, key, resp.clone()),
        Err(TxError::NotServer(key))
    );
    t.handle_transport_error(now, key);
    assert_eq!(t.send_response(now, key, resp), Err(TxError::Unknown(key)));
    let events: Vec<_> = std::iter::from_fn(|| t.poll_event()).collect();
    assert_eq!(
        events,
        [TxEvent::TransportError { key }, TxEvent::Terminated { key }]
    );
}

/// Under seeded loss and reordering, a non-INVITE transaction reaches the server TU at most
/// once, the client TU sees one final response or one timeout, and everything ends.
#[test]
fn seeded_loss_and_reordering() {
    for seed in 1..=64u64 {
        let mut sim = Sim::new(Plan::Seeded {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            loss_pct: 30,
            jitter_ms: 700,
        });
        sim.nodes[B].auto_answer = Some(486);
        sim.send(A, request("OPTIONS", "1", "opt1", 1, "UDP"));
        sim.send(A, invite("2"));
        sim.run_until(100_000);
        let (a, b) = (&sim.nodes[A], &sim.nodes[B]);
        let trace = &sim.trace;
        assert!(a.tx.is_empty() && b.tx.is_empty(), "seed {seed}:\n{trace}");
        assert!(
            count(&b.events, |e| matches!(e, TxEvent::Request { .. })) <= 2,
            "seed {seed}:\n{trace}"
        );
        let finals = count(
            &a.events,
            |e| matches!(e, TxEvent::Response { response, .. } if response.status_code.code() >= 200),
        );
        let timeouts = count(&a.events, |e| matches!(e, TxEvent::Timeout { .. }));
        // 486 rather than 200: a lost 2xx is the TU's to repeat, a lost 486 the
        // transaction's (timer G), so both client transactions must finish.
        assert_eq!(finals + timeouts, 2, "seed {seed}:\n{trace}");
        for n in [a, b] {
            let terminated = count(&n.events, |e| matches!(e, TxEvent::Terminated { .. }));
            let started = count(&n.events, |e| matches!(e, TxEvent::Request { .. }));
            let clients = if n.name == 'a' { 2 } else { 0 };
            assert_eq!(terminated, started + clients, "seed {seed}:\n{trace}");
        }
    }
}

#[test]
fn the_tu_retransmits_2xx_in_accepted() {
    // Datagrams: 0 INVITE, 1 100, 2 200 (lost), 3 200 again, 4 ACK.
    let mut sim = Sim::new(Plan::Drop(vec![2]));
    sim.send(A, invite("1"));
    sim.run_until(100);
    let key = sim.key_of_request(B, rsip::Method::Invite);
    sim.respond(B, key, 200);
    assert_eq!(sim.nodes[B].tx.state(key), Some(State::Accepted));
    sim.run_until(600);
    sim.respond(B, key, 200);
    sim.run_until(700);
    let ack = request("ACK", "2", "call1", 1, "UDP");
    let to = sim.nodes[B].addr;
    sim.nodes[A].tx.send_stateless(SipMessage::Request(ack), to);
    sim.run_until(40_000);
    sim.check(expect![[r#"
        00.000 a>b INVITE
        00.010 b>a 100 (INVITE)
        00.010 b: request tx1 INVITE
        00.020 a: response tx1 100
        00.100 b>a 200 (INVITE) (lost)
        00.600 b>a 200 (INVITE)
        00.610 a: response tx1 200
        00.700 a>b ACK
        00.710 b: ack (no transaction)
        32.100 b: terminated tx1
        32.610 a: terminated tx1
    "#]]);
    let err =
        sim.nodes[B]
            .tx
            .send_response(sim.now, key, response_to(&invite("1"), 200, Some("b1")));
    assert_eq!(err, Err(TxError::Unknown(key)));
}

fn parse_msg(raw: &str) -> SipMessage {
    crate::parse(raw.replace('\n', "\r\n").as_bytes()).unwrap()
}

/// A peer without the magic cookie (RFC 2543): retransmissions and the ACK of a non-2xx still
/// match its transaction.
#[test]
fn rfc2543_branches_match_by_dialog_fields() {
    let mut t = Transactions::new(Config::default());
    let now = Instant::now();
    let from: SocketAddr = "10.0.0.1:5060".parse().unwrap();
    let msg = |method: &str| {
        parse_msg(&format!(
            "{method} sip:bob@10.0.0.2 SIP/2.0\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060\n\
             From: <sip:alice@10.0.0.1>;tag=a1\n\
             To: <sip:bob@10.0.0.2>\n\
             Call-ID: old1\n\
             CSeq: 4 {method}\n\
             Content-Length: 0\n\n"
        ))
    };
    t.handle_incoming(now, msg("INVITE"), from);
    t.handle_incoming(now, msg("INVITE"), from);
    let Some(TxEvent::Request { key, request, .. }) = t.poll_event() else {
        panic!("a new request")
    };
    assert_eq!(t.poll_event(), None);
    t.send_response(now, key, response_to(&request, 486, Some("b1")))
        .unwrap();
    t.handle_incoming(now, msg("ACK"), from);
    assert_eq!(t.state(key), Some(State::Confirmed));
    // 100 Trying, then again for the retransmission, then the 486.
    assert_eq!(std::iter::from_fn(|| t.poll_transmit()).count(), 3);
}

#[test]
fn a_repeated_provisional_is_absorbed() {
    let mut t = Transactions::new(Config::default());
    let now = Instant::now();
    let peer: SocketAddr = "10.0.0.2:5060".parse().unwrap();
    let key = t.send_request(now, invite("1"), peer).unwrap();
    let ringing = SipMessage::Response(response_to(&invite("1"), 180, Some("b1")));
    t.handle_incoming(now, ringing.clone(), peer);
    t.handle_incoming(now, ringing, peer);
    let other = SipMessage::Response(response_to(&invite("1"), 180, Some("b2")));
    t.handle_incoming(now, other, peer);
    let events: Vec<_> = std::iter::from_fn(|| t.poll_event()).collect();
    assert_eq!(events.len(), 2, "a forked 180 with another tag passes up");
    assert!(
        events
            .iter()
            .all(|e| matches!(e, TxEvent::Response { key: k, .. } if *k == key))
    );
    // Timer B no longer runs in Proceeding: ringing time is the TU's.
    assert_eq!(t.poll_timeout(), None);
}
