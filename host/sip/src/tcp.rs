//! Limits on SIP over TCP, as a pure table of open connections: who may connect (caps in
//! total and per source) and when each connection must be closed (idle, or a message that
//! takes too long to arrive). Time is an argument; the driver owns the sockets and the clock.
//!
//! Why these bounds: a TCP connection costs a file descriptor, a task and up to
//! [`crate::MAX_MESSAGE_BYTES`] of buffer for as long as the peer keeps it open. Without caps and
//! timeouts, idle connections or a slow-loris sender (a message one byte at a time, or a head
//! that never ends) hold those for ever, and enough of them starve every other peer of TCP.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Bounds on TCP connections, passed to `Sip::start_with_limits` (the driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// Connections open at once, ours and peers' together. An inbound connection over it is
    /// closed at accept; connections we open ourselves are never refused (see
    /// [`Connections::handle_connect`]).
    pub max_connections: usize,
    /// Inbound connections open at once from one source: an IPv4 address, or an IPv6 /64 (one
    /// host usually holds a whole /64, so counting single IPv6 addresses would bound nothing).
    pub max_per_source: usize,
    /// How long a connection that has not carried a complete SIP message yet may stay without
    /// one (RFC 5626 keep-alive pings restart the wait). A peer with something to say says it
    /// at once; this reclaims connections opened and left.
    pub new_idle_timeout: Duration,
    /// How long a connection that has carried a message (either way) may stay without one.
    /// Much longer: a trunk's connection may carry dialogs that are quiet for minutes (a long
    /// call sends nothing between its INVITE and its BYE; a callee may ring for up to Twilio's
    /// 600 s `Timeout` after its 180). Closing one is not fatal either: requests in a dialog go
    /// to the peer's Contact or route (a new connection), responses to a new connection to
    /// the Via's sent-by (RFC 3261 §18.2.2); the timeout only returns unused descriptors.
    pub idle_timeout: Duration,
    /// Once the first byte of a message has arrived, the rest must arrive within this time
    /// (and within [`crate::MAX_MESSAGE_BYTES`], which the framing enforces).
    pub message_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            // A few trunks need a handful of connections each: 2,048 descriptors is ample and
            // far below a default `ulimit -n` raised for a server.
            max_connections: 2_048,
            max_per_source: 64,
            new_idle_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            message_timeout: Duration::from_secs(10),
        }
    }
}

/// Why an inbound connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_connections` are open.
    Total,
    /// `max_per_source` are open from this source.
    PerSource,
}

impl Refused {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refused::Total => "total",
            Refused::PerSource => "per_source",
        }
    }
}

/// Why the table closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// No complete message (nor keep-alive ping) within the idle timeout that applies.
    Idle,
    /// A message begun more than `message_timeout` ago has not arrived whole.
    MessageTimeout,
}

impl Close {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Close::Idle => "idle",
            Close::MessageTimeout => "message_timeout",
        }
    }
}

#[derive(Debug)]
struct Conn {
    /// The per-source key, for inbound connections.
    source: Option<IpAddr>,
    /// A complete message went over it (either way): the long idle timeout applies.
    used: bool,
    /// The last complete message or keep-alive ping.
    last_activity: Instant,
    /// When the first byte of a message not yet complete arrived.
    partial_since: Option<Instant>,
    /// The entry in [`Connections::deadlines`].
    deadline: Instant,
}

/// The open TCP connections by the driver's connection id, with their deadlines.
///
/// Inputs: `handle_accept`, `handle_connect`, `handle_partial`, `handle_message`,
/// `handle_ping`, `handle_closed`, `handle_timeout`, each with `now`. Outputs: [`poll_timeout`]
/// (when `handle_timeout` is next due), then [`poll_close`] (connections the driver must close,
/// in the order their deadlines passed; the table has already forgotten them).
///
/// [`poll_timeout`]: Connections::poll_timeout
/// [`poll_close`]: Connections::poll_close
#[derive(Debug)]
pub(crate) struct Connections {
    limits: TcpLimits,
    conns: HashMap<u64, Conn>,
    per_source: HashMap<IpAddr, usize>,
    /// Every connection's one deadline, exact: updated in place (remove, insert) rather than
    /// left stale, so the set never holds more entries than there are connections.
    deadlines: BTreeSet<(Instant, u64)>,
    closing: VecDeque<(u64, Close)>,
}

impl Connections {
    pub(crate) fn new(limits: TcpLimits) -> Self {
        Connections {
            limits,
            conns: HashMap::new(),
            per_source: HashMap::new(),
            deadlines: BTreeSet::new(),
            closing: VecDeque::new(),
        }
    }

    /// Connections open (inbound and outbound).
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// A peer connected from `source`: `Err` says which cap refuses it (the driver closes it
    /// at once, with no SIP answer: there is no message to answer yet).
    pub(crate) fn handle_accept(
        &mut self,
        now: Instant,
        id: u64,
        source: IpAddr,
    ) -> Result<(), Refused> {
        let key = source_key(source);
        if self.conns.len() >= self.limits.max_connections {
            return Err(Refused::Total);
        }
        let from_source = self.per_source.entry(key).or_insert(0);
        if *from_source >= self.limits.max_per_source {
            return Err(Refused::PerSource);
        }
        *from_source += 1;
        self.insert(now, id, Some(key), false);
        Ok(())
    }

    /// We open a connection ourselves (a transmit to an address without one). Never refused:
    /// these carry our own calls (to trunks, to `<Dial><Sip>` hosts), whose number the
    /// agent's call cap bounds, and refusing one would fail a call for the sake of peers'
    /// connections. They count toward `max_connections`, so at the cap new *inbound*
    /// connections wait for room instead, while every connection already open stays open. Not
    /// toward `max_per_source`, which bounds what peers open. Starts as used: we open it to
    /// send a message, and what a trunk answers may take minutes (ringing).
    pub(crate) fn handle_connect(&mut self, now: Instant, id: u64) {
        self.insert(now, id, None, true);
    }

    /// The first byte of a message arrived and the message is not complete yet.
    pub(crate) fn handle_partial(&mut self, now: Instant, id: u64) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.partial_since.is_none()
        {
            c.partial_since = Some(now);
            self.reschedule(id);
        }
    }

    /// A complete message went over the connection, in either direction (what a peer sends,
    /// what we send). Ends a partial message, if one was pending.
    pub(crate) fn handle_message(&mut self, now: Instant, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.used = true;
            c.last_activity = now;
            c.partial_since = None;
            self.reschedule(id);
        }
    }

    /// An RFC 5626 keep-alive ping (CRLFCRLF): activity, but not a message (it does not make
    /// a new connection a used one).
    pub(crate) fn handle_ping(&mut self, now: Instant, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.last_activity = now;
            self.reschedule(id);
        }
    }

    /// The connection is gone (closed by the peer, a failure, or after [`Self::poll_close`]);
    /// unknown ids are ignored.
    pub(crate) fn handle_closed(&mut self, id: u64) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        self.deadlines.remove(&(c.deadline, id));
        if let Some(key) = c.source
            && let Some(n) = self.per_source.get_mut(&key)
        {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&key);
            }
        }
    }

    /// When [`Self::handle_timeout`] is next due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Closes every connection whose deadline has passed; drain them with
    /// [`Self::poll_close`].
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            let message_late = self
                .conns
                .get(&id)
                .and_then(|c| c.partial_since)
                .is_some_and(|p| after(p, self.limits.message_timeout) <= now);
            let why = if message_late {
                Close::MessageTimeout
            } else {
                Close::Idle
            };
            self.handle_closed(id);
            self.closing.push_back((id, why));
        }
    }

    /// A connection to close, and why.
    pub(crate) fn poll_close(&mut self) -> Option<(u64, Close)> {
        self.closing.pop_front()
    }

    fn insert(&mut self, now: Instant, id: u64, source: Option<IpAddr>, used: bool) {
        let mut c = Conn {
            source,
            used,
            last_activity: now,
            partial_since: None,
            deadline: now,
        };
        c.deadline = self.deadline_of(&c);
        self.deadlines.insert((c.deadline, id));
        // Ids are the driver's, never reused; a repeat would leave a stale count behind.
        if let Some(old) = self.conns.insert(id, c) {
            self.deadlines.remove(&(old.deadline, id));
        }
    }

    fn deadline_of(&self, c: &Conn) -> Instant {
        let idle = if c.used {
            self.limits.idle_timeout
        } else {
            self.limits.new_idle_timeout
        };
        let idle = after(c.last_activity, idle);
        match c.partial_since {
            Some(p) => idle.min(after(p, self.limits.message_timeout)),
            None => idle,
        }
    }

    fn reschedule(&mut self, id: u64) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let (old, new) = (c.deadline, self.deadline_of(c));
        if old != new {
            self.deadlines.remove(&(old, id));
            self.deadlines.insert((new, id));
            if let Some(c) = self.conns.get_mut(&id) {
                c.deadline = new;
            }
        }
    }
}

/// `t + d`, or a century on for a `d` too long to add (a configured "never"), not a panic.
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// What `max_per_source` counts by: the IPv4 address (an IPv4-mapped IPv6 address is its IPv4
/// one), or the IPv6 /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use expect_test::{Expect, expect};

    fn limits() -> TcpLimits {
        TcpLimits {
            max_connections: 4,
            max_per_source: 2,
            new_idle_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            message_timeout: Duration::from_secs(10),
        }
    }

    /// Plays a script against a table on a simulated clock and prints what happened: one line
    /// per step, `t+<seconds> <step> -> <outcome>`, closes as `t+<s> close <id> <why>`.
    ///
    /// Steps: `accept <id> <ip>`, `connect <id>`, `partial <id>`, `message <id>`, `ping <id>`,
    /// `closed <id>`, `wait <seconds>` (runs every deadline passed on the way, at its time).
    fn check(script: &str, expect: Expect) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut table = Connections::new(limits());
        let mut out = String::new();
        let secs = |now: Instant| (now - t0).as_secs();
        for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let id = || words[1].parse::<u64>().unwrap();
            let outcome = match words[0] {
                "accept" => match table.handle_accept(now, id(), words[2].parse().unwrap()) {
                    Ok(()) => "ok".to_owned(),
                    Err(r) => format!("refused {}", r.label()),
                },
                "connect" => {
                    table.handle_connect(now, id());
                    "ok".to_owned()
                }
                "partial" => {
                    table.handle_partial(now, id());
                    String::new()
                }
                "message" => {
                    table.handle_message(now, id());
                    String::new()
                }
                "ping" => {
                    table.handle_ping(now, id());
                    String::new()
                }
                "closed" => {
                    table.handle_closed(id());
                    String::new()
                }
                "wait" => {
                    let end = now + Duration::from_secs(words[1].parse().unwrap());
                    // Bounded: every deadline closes a connection, and there are few.
                    while let Some(at) = table.poll_timeout().filter(|at| *at <= end) {
                        now = at;
                        table.handle_timeout(now);
                        while let Some((id, why)) = table.poll_close() {
                            out += &format!("t+{} close {id} {}\n", secs(now), why.label());
                        }
                    }
                    now = end;
                    String::new()
                }
                other => panic!("unknown step {other}"),
            };
            if !outcome.is_empty() {
                out += &format!("t+{} {line} -> {outcome}\n", secs(now));
            }
        }
        out += &format!("open {}", table.len());
        expect.assert_eq(&out);
    }

    #[test]
    fn caps_refuse_at_accept_and_free_up_on_close() {
        check(
            "accept 1 192.0.2.1
             accept 2 192.0.2.1
             accept 3 192.0.2.1
             accept 4 ::ffff:192.0.2.1
             accept 5 2001:db8::1
             accept 6 2001:db8::2:3
             closed 1
             accept 7 2001:db8::ffff
             accept 8 2001:db8:0:1::1
             accept 9 192.0.2.7
             connect 10
             closed 2
             accept 11 192.0.2.7
             closed 10
             accept 12 192.0.2.7
             closed 5
             accept 13 2001:db8::ffff",
            expect![[r#"
                t+0 accept 1 192.0.2.1 -> ok
                t+0 accept 2 192.0.2.1 -> ok
                t+0 accept 3 192.0.2.1 -> refused per_source
                t+0 accept 4 ::ffff:192.0.2.1 -> refused per_source
                t+0 accept 5 2001:db8::1 -> ok
                t+0 accept 6 2001:db8::2:3 -> ok
                t+0 accept 7 2001:db8::ffff -> refused per_source
                t+0 accept 8 2001:db8:0:1::1 -> ok
                t+0 accept 9 192.0.2.7 -> refused total
                t+0 connect 10 -> ok
                t+0 accept 11 192.0.2.7 -> refused total
                t+0 accept 12 192.0.2.7 -> ok
                t+0 accept 13 2001:db8::ffff -> ok
                open 4"#]],
        );
    }

    #[test]
    fn our_connections_are_never_refused() {
        check(
            "accept 1 192.0.2.1
             accept 2 192.0.2.2
             accept 3 192.0.2.3
             accept 4 192.0.2.4
             connect 5
             connect 6
             accept 7 192.0.2.5",
            expect![[r#"
                t+0 accept 1 192.0.2.1 -> ok
                t+0 accept 2 192.0.2.2 -> ok
                t+0 accept 3 192.0.2.3 -> ok
                t+0 accept 4 192.0.2.4 -> ok
                t+0 connect 5 -> ok
                t+0 connect 6 -> ok
                t+0 accept 7 192.0.2.5 -> refused total
                open 6"#]],
        );
    }

    #[test]
    fn new_connections_idle_out_soon_used_ones_late_and_pings_count() {
        // 1 never speaks; 2 pings (activity, still new); 3 sends a message (used); 4 is ours.
        check(
            "accept 1 192.0.2.1
             accept 2 192.0.2.2
             accept 3 192.0.2.3
             connect 4
             wait 50
             ping 2
             message 3
             wait 1000",
            expect![[r#"
                t+0 accept 1 192.0.2.1 -> ok
                t+0 accept 2 192.0.2.2 -> ok
                t+0 accept 3 192.0.2.3 -> ok
                t+0 connect 4 -> ok
                t+60 close 1 idle
                t+110 close 2 idle
                t+600 close 4 idle
                t+650 close 3 idle
                open 0"#]],
        );
    }

    #[test]
    fn a_message_must_arrive_whole_within_the_message_timeout() {
        // 1: a slow-loris; 2: a message in two parts, in time, then a second one begun and
        // abandoned; 3: a used connection whose next message stalls; 4: pings do not save a
        // stalled message.
        check(
            "accept 1 192.0.2.1
             accept 2 192.0.2.2
             accept 3 192.0.2.3
             accept 4 192.0.2.4
             message 3
             partial 1
             partial 2
             partial 4
             wait 5
             partial 1
             message 2
             partial 2
             partial 3
             ping 4
             wait 20",
            expect![[r#"
                t+0 accept 1 192.0.2.1 -> ok
                t+0 accept 2 192.0.2.2 -> ok
                t+0 accept 3 192.0.2.3 -> ok
                t+0 accept 4 192.0.2.4 -> ok
                t+10 close 1 message_timeout
                t+10 close 4 message_timeout
                t+15 close 2 message_timeout
                t+15 close 3 message_timeout
                open 0"#]],
        );
    }

    #[test]
    fn closed_connections_are_forgotten_and_unknown_ids_ignored() {
        check(
            "accept 1 192.0.2.1
             partial 1
             closed 1
             closed 1
             message 2
             partial 2
             ping 2
             wait 100",
            expect![[r#"
                t+0 accept 1 192.0.2.1 -> ok
                open 0"#]],
        );
    }

    #[test]
    fn timeouts_too_long_to_add_mean_never_not_a_panic() {
        let now = Instant::now();
        let mut table = Connections::new(TcpLimits {
            new_idle_timeout: Duration::MAX,
            message_timeout: Duration::MAX,
            ..limits()
        });
        table
            .handle_accept(now, 1, "192.0.2.1".parse().unwrap())
            .unwrap();
        table.handle_partial(now, 1);
        let at = table.poll_timeout().unwrap();
        assert!(at > now + Duration::from_secs(50 * 365 * 24 * 3600));
        table.handle_timeout(now + Duration::from_secs(3600));
        assert_eq!(table.poll_close(), None);
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        let key = |s: &str| source_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.1"), "192.0.2.1");
        assert_eq!(key("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
    }
}
