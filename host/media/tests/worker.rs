//! The media workers over real loopback sockets, with a test socket as the peer: barge-in and
//! digit collection, finish keys and timeouts, RFC 4733 digits out, in-band digits in, hold,
//! everything released at close, and a reused port deaf to its last call's peer.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callflow_media::dtmf::TelephoneEvent;
use callflow_media::g711::{self, Law};
use callflow_media::rtp::StreamParams;
use callflow_media::worker::{
    CallMedia, Collect, CollectEnd, Media, MediaConfig, MediaEvent, PlayItem,
};
use callflow_media::{Audio, SAMPLE_RATE};
use rtp_rs::{RtpPacketBuilder, RtpReader, Seq};
use tokio::sync::mpsc::UnboundedReceiver;

struct Peer {
    socket: UdpSocket,
    to: SocketAddr,
    seq: u16,
}

impl Peer {
    fn send(&mut self, pt: u8, ts: u32, payload: &[u8]) {
        let p = RtpPacketBuilder::new()
            .payload_type(pt)
            .sequence(Seq::from(self.seq))
            .timestamp(ts)
            .ssrc(0x1234)
            .payload(payload)
            .build()
            .unwrap();
        self.seq = self.seq.wrapping_add(1);
        self.socket.send_to(&p, self.to).unwrap();
    }

    /// An RFC 4733 digit as phones send it: start, updates, three end packets.
    fn digit(&mut self, event: u8, ts: u32) {
        for (i, end) in [false, false, true, true, true].into_iter().enumerate() {
            let ev = TelephoneEvent {
                event,
                end,
                volume: 10,
                duration: 160 * (i as u16 + 1).min(3),
            };
            self.send(101, ts, &ev.to_bytes());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Packets that arrive within `ms`.
    fn receive(&self, ms: u64) -> Vec<Vec<u8>> {
        self.socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while start.elapsed() < Duration::from_millis(ms) {
            if let Ok((n, _)) = self.socket.recv_from(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got
    }
}

fn media() -> Arc<Media> {
    media_with_ports(9)
}

/// Media on `span + 1` ports from a random even base (`span` 0: one port).
fn media_with_ports(span: u16) -> Arc<Media> {
    for _ in 0..50 {
        let base = 30_000 + (std::process::id() as u16 % 500) * 20 + fastrand_u16() % 8 * 2;
        if let Ok(m) = Media::start(&MediaConfig {
            ip: [127, 0, 0, 1].into(),
            port_min: base,
            port_max: base + span,
            workers: 1,
            spool_dir: std::env::temp_dir().join("callflow-test-spool"),
        }) {
            return Arc::new(m);
        }
    }
    panic!("no media");
}

fn fastrand_u16() -> u16 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u16
}

fn open(
    media: &Media,
    telephone_event: Option<u8>,
) -> (CallMedia, UnboundedReceiver<MediaEvent>, Peer) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let r = media.reserve().unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], r.port()));
    let params = StreamParams {
        law: Law::Mu,
        payload_type: 0,
        telephone_event,
        ptime_ms: 20,
        remote: Some(socket.local_addr().unwrap()),
        send: true,
    };
    let (m, events) = media.open(r, params);
    (m, events, Peer { socket, to, seq: 1 })
}

async fn next(events: &mut UnboundedReceiver<MediaEvent>) -> MediaEvent {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an event in time")
        .expect("media open")
}

fn tone(ms: u32, freqs: &[f32]) -> Vec<i16> {
    let n = (SAMPLE_RATE * ms / 1000) as usize;
    (0..n)
        .map(|i| {
            let t = i as f32 / SAMPLE_RATE as f32;
            let v: f32 = freqs
                .iter()
                .map(|f| (2.0 * std::f32::consts::PI * f * t).sin())
                .sum();
            (6000.0 * v) as i16
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digit_interrupts_a_barge_in_prompt_and_is_collected_until_the_timeout() {
    let media = media();
    let (m, mut events, mut peer) = open(&media, Some(101));
    let long = Arc::new(Audio::from_pcm(&tone(5000, &[440.0])));
    m.play(vec![PlayItem::Audio(long)], 1, true);
    m.collect(Collect {
        num_digits: None,
        timeout_ms: 300,
        finish_on_key: Some('#'),
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    tokio::task::block_in_place(|| peer.digit(5, 8000));
    assert!(matches!(
        next(&mut events).await,
        MediaEvent::Digit { digit: '5', .. }
    ));
    assert!(matches!(
        next(&mut events).await,
        MediaEvent::PlayDone { interrupted: true }
    ));
    match next(&mut events).await {
        MediaEvent::Collected { digits, end } => {
            assert_eq!((digits.as_str(), end), ("5", CollectEnd::Timeout));
            assert!(
                t0.elapsed() >= Duration::from_millis(300),
                "timeout after the digit"
            );
        }
        e => panic!("{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finish_key_ends_collection_and_is_not_a_digit() {
    let media = media();
    let (m, mut events, mut peer) = open(&media, Some(101));
    m.collect(Collect {
        num_digits: Some(5),
        timeout_ms: 5_000,
        finish_on_key: Some('#'),
    });
    tokio::task::block_in_place(|| {
        peer.digit(1, 100);
        peer.digit(11, 2000);
    });
    let mut collected = None;
    while collected.is_none() {
        if let MediaEvent::Collected { digits, end } = next(&mut events).await {
            collected = Some((digits, end));
        }
    }
    assert_eq!(collected, Some(("1".to_owned(), CollectEnd::FinishKey)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_go_out_as_rfc_4733_events() {
    let media = media();
    let (m, mut events, peer) = open(&media, Some(101));
    m.send_digits("12");
    let got = tokio::task::spawn_blocking(move || peer.receive(800))
        .await
        .unwrap();
    assert!(matches!(next(&mut events).await, MediaEvent::DigitsSent));
    let mut seen: Vec<(u8, bool, u32)> = Vec::new();
    let mut seqs = Vec::new();
    for p in &got {
        let r = RtpReader::new(p).unwrap();
        seqs.push(u16::from(r.sequence_number()));
        if r.payload_type() == 101 {
            let ev = TelephoneEvent::parse(r.payload()).unwrap();
            seen.push((ev.event, ev.end, r.timestamp()));
        } else {
            assert_eq!(r.payload_type(), 0);
        }
    }
    for digit in [1u8, 2] {
        let of: Vec<_> = seen.iter().filter(|e| e.0 == digit).collect();
        assert!(of.len() >= 4, "digit {digit}: {of:?}");
        assert_eq!(of.iter().filter(|e| e.1).count(), 3, "three end packets");
        assert!(of.iter().all(|e| e.2 == of[0].2), "one timestamp per event");
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "no sequence gaps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_band_tones_are_digits_when_the_peer_has_no_telephone_event() {
    let media = media();
    let (_m, mut events, mut peer) = open(&media, None);
    // '7' = 852 Hz + 1209 Hz, 200 ms, as PCMU frames paced at 20 ms.
    let pcm = tone(200, &[852.0, 1209.0]);
    let mut bytes = Vec::new();
    g711::encode(Law::Mu, &pcm, &mut bytes);
    tokio::task::block_in_place(|| {
        for (i, frame) in bytes.chunks(160).enumerate() {
            peer.send(0, i as u32 * 160, frame);
            std::thread::sleep(Duration::from_millis(20));
        }
        for i in 10..20u32 {
            peer.send(0, i * 160, &[0xff; 160]);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(matches!(
        next(&mut events).await,
        MediaEvent::Digit { digit: '7', .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_on_hold_and_everything_is_released_at_close() {
    let media = media();
    let ports = media.free_ports();
    let (m, mut events, peer) = open(&media, Some(101));
    assert_eq!(media.free_ports(), ports - 1);
    let peer_addr = peer.socket.local_addr().unwrap();
    let peer = Arc::new(peer);
    let p = peer.clone();
    let before = tokio::task::spawn_blocking(move || p.receive(200))
        .await
        .unwrap();
    assert!(
        before.len() >= 7,
        "silence flows while up: {}",
        before.len()
    );
    m.update(StreamParams {
        law: Law::Mu,
        payload_type: 0,
        telephone_event: Some(101),
        ptime_ms: 20,
        remote: Some(peer_addr),
        send: false,
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let p = peer.clone();
    let held = tokio::task::spawn_blocking(move || p.receive(200))
        .await
        .unwrap();
    assert!(held.is_empty(), "{} packets on hold", held.len());
    drop(m);
    loop {
        if let MediaEvent::Closed { stats } = next(&mut events).await {
            assert!(stats.sent >= 7);
            break;
        }
    }
    assert_eq!(media.open_calls(), 0);
    assert_eq!(media.free_ports(), ports);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_calls_hear_each_other() {
    let media = media();
    let (a, _a_events, mut peer_a) = open(&media, Some(101));
    // The second leg on the first one's worker, as a <Dial> opens it.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let r = media.reserve().unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], r.port()));
    let params = StreamParams {
        law: Law::A,
        payload_type: 8,
        telephone_event: Some(101),
        ptime_ms: 20,
        remote: Some(socket.local_addr().unwrap()),
        send: true,
    };
    let (b, _b_events) = media.open_near(r, params, Some(&a));
    let peer_b = Peer { socket, to, seq: 1 };
    assert!(a.bridge(&b));
    // A speaks (µ-law 1 kHz tone) for 600 ms; B must hear it (in A-law).
    let pcm = tone(600, &[1000.0]);
    let mut bytes = Vec::new();
    g711::encode(Law::Mu, &pcm, &mut bytes);
    let speaker = tokio::task::spawn_blocking(move || {
        for (i, frame) in bytes.chunks(160).enumerate() {
            peer_a.send(0, i as u32 * 160, frame);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let heard = tokio::task::spawn_blocking(move || peer_b.receive(900))
        .await
        .unwrap();
    speaker.await.unwrap();
    let mut loud = 0;
    for p in &heard {
        let r = RtpReader::new(p).unwrap();
        assert_eq!(r.payload_type(), 8, "B's own codec");
        let mut out = Vec::new();
        g711::decode(Law::A, r.payload(), &mut out);
        if out.iter().any(|s| s.unsigned_abs() > 3000) {
            loud += 1;
        }
    }
    assert!(
        loud >= 20,
        "{loud} of {} packets carried A's tone",
        heard.len()
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_reports_what_it_ended_then_stopped() {
    let media = media();
    let (m, mut events, _peer) = open(&media, Some(101));
    let long = Arc::new(Audio::from_pcm(&tone(5000, &[440.0])));
    m.play(vec![PlayItem::Audio(long)], 1, false);
    m.collect(Collect {
        num_digits: None,
        timeout_ms: 5_000,
        finish_on_key: None,
    });
    m.send_digits("123");
    tokio::time::sleep(Duration::from_millis(50)).await;
    m.stop();
    let mut seen = Vec::new();
    loop {
        match next(&mut events).await {
            MediaEvent::Stopped => break,
            MediaEvent::PlayDone { interrupted } => seen.push(format!("play {interrupted}")),
            MediaEvent::Collected { end, .. } => seen.push(format!("{end:?}")),
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(seen, ["play true", "Stopped"]);
    // Nothing of what was stopped reports afterwards (the queued digits are dropped too).
    let late = tokio::time::timeout(Duration::from_millis(800), events.recv()).await;
    assert!(late.is_err(), "after Stopped: {late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_port_does_not_hear_its_last_calls_peer() {
    // One port: the second call gets the first one's, socket and all.
    let media = media_with_ports(0);
    let (m, mut events, mut old_peer) = open(&media, Some(101));
    let port = m.port();
    drop(m);
    while !matches!(next(&mut events).await, MediaEvent::Closed { .. }) {}
    assert_eq!(media.free_ports(), 1);
    // The old peer goes on sending after the call is over.
    for i in 0..5 {
        old_peer.send(0, i * 160, &[0xff; 160]);
    }
    let r = media.reserve().unwrap();
    assert_eq!(r.port(), port);
    // A new peer, and symmetric RTP: the call sends where the first packet comes from.
    let params = StreamParams::pcmu(None);
    let (m, mut events) = media.open(r, params);
    let mut new_peer = Peer {
        socket: UdpSocket::bind("127.0.0.1:0").unwrap(),
        to: SocketAddr::from(([127, 0, 0, 1], port)),
        seq: 1,
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    new_peer.send(0, 0, &[0xff; 160]);
    let new_peer = Arc::new(new_peer);
    let p = new_peer.clone();
    let heard = tokio::task::spawn_blocking(move || p.receive(200))
        .await
        .unwrap();
    assert!(
        heard.len() >= 7,
        "the new peer hears silence: {}",
        heard.len()
    );
    let old = tokio::task::spawn_blocking(move || old_peer.receive(100))
        .await
        .unwrap();
    assert!(old.is_empty(), "{} packets to the old peer", old.len());
    drop(m);
    loop {
        if let MediaEvent::Closed { stats } = next(&mut events).await {
            assert_eq!((stats.received, stats.foreign), (1, 0), "{stats:?}");
            break;
        }
    }
}
