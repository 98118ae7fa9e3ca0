//! SIP over TCP under abuse, on real loopback sockets: a thousand idle connections and
//! slow-loris senders do not starve SIP over TCP or UDP; the caps refuse at accept; the
//! timeouts close what idles or dawdles and spare what is in use. Timeouts are shortened
//! through `TcpLimits`; every wait is bounded.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use callflow_sip::driver::{Sip, TcpLimits};
use callflow_sip::sdp::LocalMedia;
use callflow_sip::ua::{UaConfig, UaEvent};
use callflow_sip::{Frame, frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// How long any one expectation may take (loopback is fast; a loaded CI machine less so).
const PATIENCE: Duration = Duration::from_secs(5);

async fn start(limits: TcpLimits) -> (Sip, mpsc::UnboundedReceiver<UaEvent>) {
    let ua = UaConfig {
        advertised: "127.0.0.1:0".parse().unwrap(),
        seed: 7,
        ..UaConfig::default()
    };
    Sip::start_with_limits("127.0.0.1:0".parse().unwrap(), ua, limits, |_| true)
        .await
        .unwrap()
}

/// A connection to `to` from `127.0.0.<host>`: Linux routes all of 127/8 to the loopback
/// interface, so each host is a separate source for the per-source cap.
async fn connect_from(host: u8, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from(([127, 0, 0, host], 0)))
        .unwrap();
    tokio::time::timeout(PATIENCE, socket.connect(to))
        .await
        .expect("connect timed out")
        .unwrap()
}

/// Whether the driver has closed `s` (end of stream or reset); bytes waiting are an error.
fn is_closed(s: &TcpStream) -> bool {
    let mut b = [0u8; 256];
    match s.try_read(&mut b) {
        Ok(0) => true,
        Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&b[..n])),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Waits for the driver to close `s` (bytes before the end are skipped); panics at `deadline`.
async fn closed_by(s: &mut TcpStream, deadline: Instant) -> Instant {
    let mut b = [0u8; 256];
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut b)).await {
            Err(_) => panic!("still open at the deadline"),
            Ok(Ok(0) | Err(_)) => return Instant::now(),
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads the next SIP message from `s` (keep-alive CRLFs skipped), as text.
async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match frame(buf).unwrap() {
            Frame::Message(len) => return String::from_utf8(buf.drain(..len).collect()).unwrap(),
            Frame::KeepAlive(len) => {
                buf.drain(..len);
            }
            Frame::Incomplete => {
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout_at(deadline.into(), s.read(&mut chunk))
                    .await
                    .expect("no message in time")
                    .unwrap();
                assert!(n > 0, "closed while waiting for a message");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

fn options(server: SocketAddr, local: SocketAddr, transport: &str, id: &str) -> String {
    format!(
        "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK{id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag={id}\r\nTo: <sip:{server}>\r\n\
         Call-ID: {id}@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// An OPTIONS over a fresh TCP connection from `127.0.0.<host>`, answered 200; returns the
/// connection (now one in use).
async fn options_over_tcp(server: SocketAddr, host: u8, id: &str) -> TcpStream {
    let mut s = connect_from(host, server).await;
    let local = s.local_addr().unwrap();
    s.write_all(options(server, local, "TCP", id).as_bytes())
        .await
        .unwrap();
    let answer = read_message(&mut s, &mut Vec::new()).await;
    assert!(answer.starts_with("SIP/2.0 200 "), "{answer}");
    s
}

async fn options_over_udp(server: SocketAddr) {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = udp.local_addr().unwrap();
    udp.send_to(options(server, local, "UDP", "udp1").as_bytes(), server)
        .await
        .unwrap();
    let mut b = vec![0u8; 65_535];
    let (n, _) = tokio::time::timeout(PATIENCE, udp.recv_from(&mut b))
        .await
        .expect("no answer over UDP")
        .unwrap();
    let answer = String::from_utf8_lossy(&b[..n]);
    assert!(answer.starts_with("SIP/2.0 200 "), "{answer}");
}

const OFFER: &str = "v=0\r\no=probe 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
    t=0 0\r\nm=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

/// An INVITE over a fresh TCP connection, delivered to the engine's side as `Incoming`,
/// answered there, its 200 ACKed here; returns the connection, which carries the dialog.
async fn call_over_tcp(
    server: SocketAddr,
    sip: &Sip,
    events: &mut mpsc::UnboundedReceiver<UaEvent>,
) -> TcpStream {
    let mut s = connect_from(1, server).await;
    let local = s.local_addr().unwrap();
    let common = format!(
        "Via: SIP/2.0/TCP {local};branch=z9hG4bKBRANCH\r\nMax-Forwards: 70\r\n\
         From: <sip:+15551110000@{local}>;tag=probe\r\nCall-ID: call1@probe\r\n"
    );
    let invite = format!(
        "INVITE sip:+15005550006@{server} SIP/2.0\r\n{}To: <sip:+15005550006@{server}>\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:probe@{local};transport=tcp>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        common.replace("BRANCH", "inv1"),
        OFFER.len()
    );
    s.write_all(invite.as_bytes()).await.unwrap();
    let call = match tokio::time::timeout(PATIENCE, events.recv()).await {
        Ok(Some(UaEvent::Incoming(i))) => i.call,
        other => panic!("expected the INVITE as Incoming, got {other:?}"),
    };
    let media = LocalMedia {
        ip: [127, 0, 0, 1].into(),
        port: 40_002,
        session_id: 1,
        session_version: 1,
    };
    sip.answer(call, media).await.unwrap();
    let mut buf = Vec::new();
    // Provisional responses first (100 Trying), then the 200; a few at most.
    let ok = 'ok: {
        for _ in 0..4 {
            let m = read_message(&mut s, &mut buf).await;
            if m.starts_with("SIP/2.0 200 ") {
                break 'ok m;
            }
            assert!(m.starts_with("SIP/2.0 1"), "{m}");
        }
        panic!("no 200 to the INVITE");
    };
    let to = ok
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("to:"))
        .expect("the 200 has a To");
    let ack = format!(
        "ACK sip:+15005550006@{server};transport=tcp SIP/2.0\r\n{}{to}\r\nCSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n",
        common.replace("BRANCH", "ack1")
    );
    s.write_all(ack.as_bytes()).await.unwrap();
    // Media and the dialog come before Answered; a few events at most.
    for _ in 0..4 {
        match tokio::time::timeout(PATIENCE, events.recv()).await {
            Ok(Some(UaEvent::Answered { call: c })) if c == call => return s,
            Ok(Some(UaEvent::Media { .. } | UaEvent::Dialog { .. })) => {}
            other => panic!("expected Answered, got {other:?}"),
        }
    }
    panic!("the call was not answered");
}

/// A slow-loris sender: writes `head` at once, then `drip` one byte every `every`, reading
/// whatever comes back, until the driver closes the connection. Returns how long after the
/// first byte that was.
async fn slow_loris(s: TcpStream, head: Vec<u8>, drip: Vec<u8>, every: Duration) -> Duration {
    let started = Instant::now();
    let deadline = started + PATIENCE;
    let (mut rd, mut wr) = s.into_split();
    if !head.is_empty() {
        // The driver may close first (an oversized head): that is what is being waited for.
        let _ = wr.write_all(&head).await;
    }
    let mut drip = drip.into_iter();
    let mut tick = tokio::time::interval(every);
    let mut b = [0u8; 4096];
    loop {
        tokio::select! {
            r = rd.read(&mut b) => match r {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            },
            _ = tick.tick() => {
                if let Some(byte) = drip.next() {
                    let _ = wr.write_all(&[byte]).await;
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => panic!("a slow-loris is still connected"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_slow_loris_connections_do_not_starve_sip() {
    let limits = TcpLimits {
        max_connections: 1_100,
        max_per_source: 60,
        new_idle_timeout: Duration::from_secs(4),
        idle_timeout: Duration::from_secs(60),
        message_timeout: Duration::from_secs(1),
    };
    let (sip, mut events) = start(limits).await;
    let server = sip.local_addr();

    // 1,000 idle connections from 20 sources, 50 each (the per-source cap is 60).
    let opened = Instant::now();
    let mut idle = Vec::with_capacity(1_000);
    for i in 0..1_000u32 {
        idle.push(connect_from(10 + (i % 20) as u8, server).await);
    }

    // A peer that only pings (RFC 5626 keep-alives), past the idle timeout for new ones.
    let pinger = tokio::spawn(async move {
        let mut s = connect_from(2, server).await;
        let mut b = [0u8; 16];
        for _ in 0..10 {
            s.write_all(b"\r\n\r\n").await.unwrap();
            let n = tokio::time::timeout(PATIENCE, s.read(&mut b))
                .await
                .expect("no pong")
                .unwrap();
            assert_eq!(&b[..n], b"\r\n", "a pong");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        s
    });

    // Slow-loris senders from one more source.
    let whole = options(server, "127.0.0.3:5060".parse().unwrap(), "TCP", "loris");
    let head_only = whole.trim_end_matches("\r\n").to_owned() + "\r\n";
    let short_body = whole.replace("Content-Length: 0", "Content-Length: 50") + "0123456789";
    let then_partial = whole.clone() + "OPTIONS sip:";
    let mut lorises = Vec::new();
    for (head, drip) in [
        // a whole message, one byte every 100 ms (it would take half a minute)
        (Vec::new(), whole.clone().into_bytes()),
        // the head without its end
        (head_only.into_bytes(), Vec::new()),
        // a body shorter than its Content-Length
        (short_body.into_bytes(), Vec::new()),
        // a message answered, then the next one stalls
        (then_partial.into_bytes(), Vec::new()),
    ] {
        let s = connect_from(3, server).await;
        lorises.push(tokio::spawn(slow_loris(
            s,
            head,
            drip,
            Duration::from_millis(100),
        )));
    }

    // SIP is still served: OPTIONS over a fresh TCP connection and over UDP, and an INVITE
    // over TCP delivered, answered and ACKed.
    let used = options_over_tcp(server, 1, "tcp1").await;
    options_over_udp(server).await;
    let call = call_over_tcp(server, &sip, &mut events).await;

    // The idle connections were all adopted (accepts are taken in order, and those answered
    // above came after them), and none is closed yet.
    let closed = idle.iter().filter(|s| is_closed(s)).count();
    assert_eq!(closed, 0, "idle connections closed too early");

    // The slow-loris senders are closed after the message timeout, long before the idle one.
    for l in lorises {
        let took = l.await.unwrap();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "a slow-loris closed after {took:?}"
        );
    }

    // The idle connections are closed after the idle timeout for new connections.
    let deadline = opened + limits.new_idle_timeout + PATIENCE;
    let first = closed_by(&mut idle[0], deadline).await;
    assert!(
        first - opened >= limits.new_idle_timeout - Duration::from_millis(50),
        "closed after {:?}",
        first - opened
    );
    for s in &mut idle {
        closed_by(s, deadline).await;
    }

    // Connections in use, and the one that pings, are still open.
    let pinger = pinger.await.unwrap();
    assert!(opened.elapsed() > limits.new_idle_timeout);
    for s in [&used, &call, &pinger] {
        assert!(!is_closed(s), "{:?} was closed", s.local_addr());
    }
    sip.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_caps_are_closed_at_accept() {
    let limits = TcpLimits {
        max_connections: 8,
        max_per_source: 3,
        ..TcpLimits::default()
    };
    let (sip, _events) = start(limits).await;
    let server = sip.local_addr();
    let deadline = Instant::now() + PATIENCE;

    // Five from one source: the last two are over the per-source cap.
    let mut one_source = Vec::new();
    for _ in 0..5 {
        one_source.push(connect_from(60, server).await);
    }
    for s in &mut one_source[3..] {
        closed_by(s, deadline).await;
    }
    // (Accepts are taken in order: the first three were adopted before those were refused.)
    assert!(one_source[..3].iter().all(|s| !is_closed(s)));

    // Five more from five sources make eight, the total cap: a ninth is refused.
    let mut others = Vec::new();
    for host in 61..66 {
        others.push(connect_from(host, server).await);
    }
    let mut ninth = connect_from(66, server).await;
    closed_by(&mut ninth, deadline).await;
    assert!(others.iter().all(|s| !is_closed(s)));

    // UDP is not capped.
    options_over_udp(server).await;

    // Closing two makes room again, once the driver has seen them go (bounded retries).
    one_source.truncate(1);
    let mut answered = false;
    for attempt in 0..50 {
        let mut s = connect_from(67, server).await;
        let local = s.local_addr().unwrap();
        let id = format!("retry{attempt}");
        let _ = s
            .write_all(options(server, local, "TCP", &id).as_bytes())
            .await;
        let mut b = vec![0u8; 4096];
        match tokio::time::timeout(PATIENCE, s.read(&mut b)).await {
            Ok(Ok(n)) if n > 0 => {
                assert!(b.starts_with(b"SIP/2.0 200 "), "{:?}", &b[..n]);
                answered = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(answered, "no room after closing connections");
    sip.shutdown();
}

#[tokio::test]
async fn a_message_over_64_kib_closes_the_connection_at_once() {
    let (sip, _events) = start(TcpLimits::default()).await;
    let s = connect_from(70, sip.local_addr()).await;
    let mut head = b"OPTIONS sip:x SIP/2.0\r\nX-Padding: ".to_vec();
    head.resize(70 * 1024, b'a');
    let took = slow_loris(s, head, Vec::new(), Duration::from_millis(100)).await;
    // Well inside the default message timeout (10 s): the size bound closed it.
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    sip.shutdown();
}
