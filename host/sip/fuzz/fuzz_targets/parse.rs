//! libFuzzer target: everything that reads a SIP message from a peer must return, not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match callflow_sip::parse(data) {
        Ok(msg) => {
            let _ = msg.to_string();
        }
        Err(e) => {
            let (code, reason) = e.status();
            let _ = callflow_sip::error_response(data, code, reason);
        }
    }
    let _ = callflow_sip::frame(data);
});
