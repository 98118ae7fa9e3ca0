//! Media end to end, with SIPp (Debian's sip-tester, which `tests/run` installs) as the phone
//! calling in over real loopback sockets: callflow's SIP stack answers, the media workers run
//! the call's RTP, and a flow written here (standing in for the engine's plugins) plays,
//! collects digits and records through the media API.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callflow_engine::prompts::{Prompts, PromptsConfig};
use callflow_engine::telephony::{Flow, FlowStart, MediaSetup, Telephony};
use callflow_engine::webhook::{EgressPolicy, WebhookClient, WebhookConfig};
use callflow_engine::{Engine, Outbox, OutboxConfig, clock};
use callflow_media::g711::{self, Law};
use callflow_media::record::{RecordOptions, StopReason};
use callflow_media::tts::Flite;
use callflow_media::worker::{
    CallMedia, Collect, CollectEnd, Media, MediaConfig, MediaEvent, PlayItem,
};
use callflow_media::{Audio, SAMPLE_RATE};
use callflow_sip::driver::Sip;
use callflow_sip::trunk::{TrunkSpec, Trunks};
use callflow_sip::ua::UaConfig;
use callflow_store::{Call, CallStatus, HttpMethod, NewNumber, Store};
use tokio::sync::{mpsc, oneshot, watch};

const NUMBER: &str = "+15005550006";

type Handed = (
    Call,
    CallMedia,
    mpsc::UnboundedReceiver<MediaEvent>,
    oneshot::Sender<()>,
);

struct Rig {
    store: Store,
    sip: Sip,
    media: Arc<Media>,
    ports: usize,
    flows: mpsc::UnboundedReceiver<Handed>,
    _stop: watch::Sender<bool>,
}

/// A free even port base with `n` ports after it, found by binding.
fn port_range(n: u16) -> (u16, u16) {
    for _ in 0..200 {
        let base = 20_000 + (rand_u16() % 20_000) / 2 * 2;
        if (base..base + n)
            .step_by(2)
            .all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
        {
            return (base, base + n - 1);
        }
    }
    panic!("no free port range");
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (t.subsec_nanos() ^ std::process::id()) as u16
}

async fn rig() -> Rig {
    let store = Store::open("sqlite::memory:").await.unwrap();
    let (root, _) = store.ensure_root(None, 1_000).await.unwrap();
    let number = NewNumber {
        phone_number: NUMBER.into(),
        friendly_name: "media test".into(),
        voice_method: HttpMethod::Post,
        voice_fallback_method: HttpMethod::Post,
        status_callback_method: HttpMethod::Post,
        ..NewNumber::default()
    };
    store
        .create_number(&root.sid, &number, 1_000)
        .await
        .unwrap();
    let client = WebhookClient::new(WebhookConfig::default()).unwrap();
    let outbox = Outbox::new(store.clone(), client, OutboxConfig::default());
    let engine = Engine::new(store.clone(), outbox);
    let trunks = Trunks::new(vec![TrunkSpec {
        name: "sipp".into(),
        host: "127.0.0.1".into(),
        port: 9,
        inbound_sources: vec!["127.0.0.1".into()],
        ..TrunkSpec::default()
    }])
    .unwrap();
    let ua = UaConfig {
        advertised: "127.0.0.1:0".parse().unwrap(),
        seed: rand_u16() as u64,
        ..UaConfig::default()
    };
    let (sip, events) = Sip::start("127.0.0.1:0".parse().unwrap(), ua, |_| true)
        .await
        .unwrap();
    let (port_min, port_max) = port_range(40);
    let media = Arc::new(
        Media::start(&MediaConfig {
            ip: [127, 0, 0, 1].into(),
            port_min,
            port_max,
            workers: 2,
            spool_dir: std::env::temp_dir().join("callflow-test-spool"),
        })
        .unwrap(),
    );
    let ports = media.free_ports();
    let (tx, flows) = mpsc::unbounded_channel();
    // The flow hands the call to the test and lasts until the test says it is over.
    let flow: Flow = Arc::new(move |start: FlowStart| {
        let tx = tx.clone();
        Box::pin(async move {
            let (done, over) = oneshot::channel();
            let FlowStart {
                call,
                media,
                events,
                ..
            } = start;
            if tx.send((call, media, events, done)).is_ok() {
                let _ = over.await;
            }
        })
    });
    let setup = MediaSetup {
        media: media.clone(),
        advertised_ip: [127, 0, 0, 1].into(),
        flow,
        flow_answers: false,
    };
    let (stop, stop_rx) = watch::channel(false);
    Telephony::start(
        sip.clone(),
        events,
        engine,
        trunks,
        setup,
        Default::default(),
        stop_rx,
    )
    .await
    .unwrap();
    Rig {
        store,
        sip,
        media,
        ports,
        flows,
        _stop: stop,
    }
}

/// Runs SIPp with a scenario of `tests/sipp/` against the rig, in a thread; bounded by its own
/// -timeout.
fn sipp(rig: &Rig, scenario: &str, extra: &[&str]) -> std::thread::JoinHandle<(bool, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let scenario = root.join("tests/sipp").join(scenario);
    let dir = tempfile::tempdir().unwrap();
    let target = rig.sip.local_addr().to_string();
    let mut cmd = Command::new("sipp");
    cmd.arg(target)
        .arg("-sf")
        .arg(scenario)
        .args(["-s", NUMBER, "-m", "1", "-i", "127.0.0.1", "-p", "0"])
        .args(["-timeout", "40", "-timeout_error", "-nostdin", "-trace_err"])
        .args(extra)
        .current_dir(dir.path());
    std::thread::spawn(move || {
        let out = cmd
            .output()
            .expect("sipp runs (tests/run installs sip-tester)");
        let mut errors = String::new();
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with("errors.log") {
                errors += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
        }
        let report = format!(
            "sipp exit {:?}\n{}\n{}\n{errors}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), report)
    })
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<MediaEvent>, secs: u64) -> MediaEvent {
    tokio::time::timeout(Duration::from_secs(secs), events.recv())
        .await
        .expect("a media event in time")
        .expect("media still open")
}

/// Everything the call took is back: media closed, ports free, the call completed.
async fn assert_released(rig: &Rig, call: &Call) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = rig
            .store
            .call(&call.account_sid, &call.sid)
            .await
            .unwrap()
            .unwrap();
        if stored.status().is_final() && rig.media.open_calls() == 0 {
            assert_eq!(stored.status(), CallStatus::Completed);
            assert_eq!(rig.media.free_ports(), rig.ports, "every RTP port is back");
            return;
        }
        assert!(Instant::now() < deadline, "call or media never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the phone's RTP socket receives in `ms`, with arrival times.
async fn listen(phone: UdpSocket, ms: u64) -> Vec<(Duration, Vec<u8>)> {
    tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        let start = Instant::now();
        let mut buf = [0u8; 2048];
        while start.elapsed() < Duration::from_millis(ms) {
            if let Ok((n, _)) = phone.recv_from(&mut buf) {
                got.push((start.elapsed(), buf[..n].to_vec()));
            }
        }
        got
    })
    .await
    .unwrap()
}

/// The play ran to its end; the flow ends (we hang up), SIPp passes, everything is released.
async fn end_after_play(
    rig: &Rig,
    call: &Call,
    media: CallMedia,
    mut events: mpsc::UnboundedReceiver<MediaEvent>,
    done: oneshot::Sender<()>,
    sipp: std::thread::JoinHandle<(bool, String)>,
) {
    match next_event(&mut events, 5).await {
        MediaEvent::PlayDone { interrupted } => assert!(!interrupted),
        e => panic!("unexpected {e:?}"),
    }
    let _ = done.send(());
    let (ok, report) = sipp.join().unwrap();
    assert!(ok, "{report}");
    drop((media, events));
    assert_released(rig, call).await;
}

fn tone(ms: u32, hz: f32) -> Vec<i16> {
    let n = (SAMPLE_RATE * ms / 1000) as usize;
    (0..n)
        .map(|i| {
            let t = i as f32 / SAMPLE_RATE as f32;
            (8000.0 * (2.0 * std::f32::consts::PI * hz * t).sin()) as i16
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_caller_hears_the_prompt_at_the_right_rate() {
    let mut rig = rig().await;
    // The "phone's" RTP socket: SIPp signals, this socket is where its SDP says to send.
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    phone
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = phone.local_addr().unwrap().port().to_string();
    let sipp = sipp(&rig, "uac_hear.xml", &["-key", "rtp_port", &port]);

    let prompt = Arc::new(Audio::from_pcm(&tone(1000, 440.0)));
    let (call, media, events, done) =
        tokio::time::timeout(Duration::from_secs(20), rig.flows.recv())
            .await
            .expect("the call reaches the flow")
            .unwrap();
    assert_eq!(call.to_number, NUMBER);
    media.play(vec![PlayItem::Audio(prompt.clone())], 1, false);

    // Two seconds of what arrives: silence, the prompt, silence.
    let received = listen(phone, 2000).await;
    end_after_play(&rig, &call, media, events, done, sipp).await;

    // About 50 packets a second, PCMU (payload type 0), 160 bytes each.
    assert!(received.len() >= 90, "{} packets in 2 s", received.len());
    let mut stream = Vec::new();
    for (_, p) in &received {
        assert_eq!(p[1] & 0x7f, 0, "payload type PCMU");
        assert_eq!(p.len(), 12 + 160);
        stream.extend_from_slice(&p[12..]);
    }
    let gaps: Vec<u128> = received
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_millis())
        .collect();
    let late = gaps.iter().filter(|&&g| g > 60).count();
    assert!(late <= 2, "gaps over 60 ms: {late} of {}", gaps.len());
    // The prompt arrives whole and byte for byte, and it is not silence.
    let want = prompt.samples(Law::Mu);
    let at = stream
        .windows(160)
        .position(|w| w == &want[..160])
        .expect("the prompt's first frame arrived");
    assert_eq!(&stream[at..at + want.len()], &want[..]);
    let mut pcm = Vec::new();
    g711::decode(Law::Mu, &stream[at..at + want.len()], &mut pcm);
    let peak = pcm.iter().map(|s| s.unsigned_abs()).max().unwrap();
    assert!(peak > 7000, "decodes to the tone (peak {peak})");
}

/// Serves `body` as `audio/wav` at `/prompt.wav` on loopback; returns the URL.
async fn serve_wav(body: Vec<u8>) -> String {
    let app = axum::Router::new().route(
        "/prompt.wav",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "audio/wav")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/prompt.wav")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_hears_speech_then_a_fetched_wav() {
    let mut rig = rig().await;
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    phone
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = phone.local_addr().unwrap().port().to_string();

    // The WAV goes over HTTP through the webhook client, which must be allowed loopback.
    let tone_pcm = tone(600, 440.0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompt.wav");
    callflow_media::files::write_wav(&path, &tone_pcm).unwrap();
    let url = serve_wav(std::fs::read(&path).unwrap()).await;
    let client = WebhookClient::new(WebhookConfig {
        egress: EgressPolicy {
            allow_private: true,
        },
        ..WebhookConfig::default()
    })
    .unwrap();
    let flite = Flite::load().expect("flite (tests/run installs libflite1)");
    let prompts = Prompts::new(client, Some(Arc::new(flite)), PromptsConfig::default());
    let speech = prompts
        .say(Some("woman"), None, "Press one for sales")
        .await
        .unwrap();
    let now = u64::try_from(clock::now_ms()).unwrap();
    let wav = prompts.play_url(&url, now).await.unwrap();
    // An 8 kHz 16-bit WAV decodes to exactly the samples written.
    assert_eq!(
        wav.samples(Law::Mu),
        Audio::from_pcm(&tone_pcm).samples(Law::Mu)
    );

    let sipp = sipp(&rig, "uac_hear.xml", &["-key", "rtp_port", &port]);
    let (call, media, events, done) =
        tokio::time::timeout(Duration::from_secs(20), rig.flows.recv())
            .await
            .expect("the call reaches the flow")
            .unwrap();
    media.play(
        vec![
            PlayItem::Audio(speech.clone()),
            PlayItem::Audio(wav.clone()),
        ],
        1,
        false,
    );
    let listen_ms = ((speech.len() + wav.len()) / 8 + 1000) as u64;
    let received = listen(phone, listen_ms).await;
    end_after_play(&rig, &call, media, events, done, sipp).await;

    // About 50 packets a second of PCMU.
    let want_packets = listen_ms as usize / 20;
    assert!(
        received.len() * 10 >= want_packets * 9,
        "{} packets in {listen_ms} ms",
        received.len()
    );
    let mut stream = Vec::new();
    for (_, p) in &received {
        assert_eq!(p[1] & 0x7f, 0, "payload type PCMU");
        assert_eq!(p.len(), 12 + 160);
        stream.extend_from_slice(&p[12..]);
    }
    let late = received
        .windows(2)
        .filter(|w| (w[1].0 - w[0].0).as_millis() > 60)
        .count();
    assert!(late <= 2, "gaps over 60 ms: {late}");

    // The speech then the WAV, byte for byte. Speech may open with silence, which looks like the
    // silence sent before it: align on its first frame that is not constant.
    let want: Vec<u8> = [&speech.samples(Law::Mu)[..], &wav.samples(Law::Mu)[..]].concat();
    let k = want
        .windows(160)
        .position(|w| w.iter().any(|&b| b != w[0]))
        .expect("the speech is not constant");
    let found = stream
        .windows(160)
        .position(|w| w == &want[k..k + 160])
        .expect("the speech arrived");
    let at = found.checked_sub(k).expect("the speech's start arrived");
    assert!(stream.len() >= at + want.len(), "both arrived whole");
    assert_eq!(&stream[at..at + want.len()], &want[..]);
    let mut pcm = Vec::new();
    g711::decode(Law::Mu, &stream[at..at + speech.len()], &mut pcm);
    let peak = pcm.iter().map(|s| s.unsigned_abs()).max().unwrap();
    assert!(peak > 3000, "the speech is not silence (peak {peak})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_and_a_recording_come_back_from_sipp_pcaps() {
    let mut rig = rig().await;
    let (mp_min, _) = port_range(4);
    let sipp = sipp(&rig, "uac_play_pcaps.xml", &["-mp", &mp_min.to_string()]);
    let (call, media, mut events, done) =
        tokio::time::timeout(Duration::from_secs(20), rig.flows.recv())
            .await
            .expect("the call reaches the flow")
            .unwrap();
    media.collect(Collect {
        num_digits: Some(3),
        timeout_ms: 5_000,
        finish_on_key: Some('#'),
    });
    let mut digits_seen = String::new();
    let collected = loop {
        match next_event(&mut events, 10).await {
            MediaEvent::Digit { digit, .. } => digits_seen.push(digit),
            MediaEvent::Collected { digits, end } => break (digits, end),
            e => panic!("unexpected {e:?}"),
        }
    };
    assert_eq!(collected, ("123".to_owned(), CollectEnd::NumDigits));
    assert_eq!(digits_seen, "123", "each RFC 2833 digit once");

    let opts = RecordOptions {
        silence_timeout_ms: 1_500,
        ..RecordOptions::default()
    };
    media.record(opts, None);
    let mut recording = match next_event(&mut events, 20).await {
        MediaEvent::Recorded(r) => r,
        e => panic!("unexpected {e:?}"),
    };
    // written to the spool as it was recorded
    let spooled = recording.tape.path().expect("on disk").to_owned();
    let _ = done.send(());
    let (ok, report) = sipp.join().unwrap();
    assert!(ok, "{report}");
    drop((media, events));
    assert_released(&rig, &call).await;

    // g711a.pcap is 7.08 s of audio; silence trimmed off the ends may shorten it a little.
    assert_eq!(recording.reason, StopReason::Silence);
    assert!(recording.heard_audio);
    let ms = recording.duration_ms;
    assert!((5_000..=7_600).contains(&ms), "recorded {ms} ms");
    let keep = recording.keep.clone();
    let pcm = recording.tape.read(keep).await.unwrap();
    assert_eq!(pcm.len() as u64, ms * 8);
    assert!(spooled.exists());

    // And it is SIPp's audio, sample for sample: align a loud stretch of the recording with the
    // pcap's audio, then compare everything that overlaps.
    let played = pcap_audio("/usr/share/sip-tester/g711a.pcap", Law::A);
    let rec = &pcm;
    let probe = (rec.len() / 2..rec.len() - 240)
        .step_by(80)
        .find(|&i| rec[i..i + 240].iter().any(|s| s.unsigned_abs() > 2000))
        .expect("a loud stretch");
    let at = played
        .windows(240)
        .position(|w| w == &rec[probe..probe + 240])
        .expect("the recording's audio is in the pcap");
    let offset = at as isize - probe as isize;
    let (mut same, mut total) = (0, 0);
    for (i, &s) in rec.iter().enumerate() {
        if let Some(&p) = usize::try_from(i as isize + offset)
            .ok()
            .and_then(|j| played.get(j))
        {
            total += 1;
            same += usize::from(p == s);
        }
    }
    assert!(total >= 40_000, "{total} samples overlap");
    assert!(
        same * 1000 >= total * 999,
        "{same} of {total} samples match"
    );
}

/// The audio of a pcap's RTP packets (Ethernet, IPv4, UDP), decoded.
fn pcap_audio(path: &str, law: Law) -> Vec<i16> {
    let d = std::fs::read(path).expect("sip-tester's pcaps (tests/run installs sip-tester)");
    let mut off = 24;
    let mut pcm = Vec::new();
    while off + 16 <= d.len() {
        let incl = u32::from_le_bytes(d[off + 8..off + 12].try_into().unwrap()) as usize;
        let pkt = &d[off + 16..off + 16 + incl];
        off += 16 + incl;
        let udp = 14 + usize::from(pkt[14] & 0x0f) * 4;
        g711::decode(law, &pkt[udp + 8 + 12..], &mut pcm);
    }
    pcm
}
