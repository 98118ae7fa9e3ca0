//! libFuzzer target: the user agent core fed arbitrary datagrams (split after each `~`), with time
//! advancing between them and every new inbound call answered, must never panic.
#![no_main]

use std::time::{Duration, Instant};

use callflow_sip::sdp::LocalMedia;
use callflow_sip::ua::{UaConfig, UaEvent, UserAgent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let peer = "10.0.0.2:5060".parse().unwrap();
    let media = LocalMedia {
        ip: "10.0.0.1".parse().unwrap(),
        port: 4000,
        session_id: 1,
        session_version: 1,
    };
    let mut ua = UserAgent::new(UaConfig::default());
    let mut now = Instant::now();
    for (i, chunk) in data.split_inclusive(|&b| b == b'~').enumerate() {
        ua.handle_datagram(now, chunk, peer);
        while ua.poll_transmit().is_some() {}
        while let Some(ev) = ua.poll_event() {
            if let UaEvent::Incoming(inc) = ev {
                let _ = ua.answer(now, inc.call, media);
            }
        }
        now += Duration::from_millis(1 + (i as u64 % 7) * 300);
        ua.handle_timeout(now);
    }
});
