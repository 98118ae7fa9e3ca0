//! A recording behaviour: trims the silence before the first and after the last sample at or above
//! an amplitude threshold (keeping a little padding), discards recordings with too little sound
//! to matter, and, when configured, notifies a URL with a JSON POST saying what it did.
//!
//! Configuration (every field is optional):
//!
//! ```json
//! {
//!   "threshold": 500,
//!   "padding_ms": 200,
//!   "min_length_ms": 1000,
//!   "notify": {"url": "https://example.com/recordings", "headers": {"Authorization": "Bearer …"}}
//! }
//! ```
//!
//! `threshold` is a sample's absolute amplitude (of 32767; 500 is about -36 dBFS): quieter samples
//! are silence. `min_length_ms` is measured from the first to the last loud sample, padding
//! excluded. The notification is sent whatever the outcome; its body is
//! `{"account_sid", "call_sid", "kept", "start_ms", "end_ms", "duration_ms", "original_ms",
//! "reason"}` (`reason` is why it was discarded, `null` when kept; the times are within the
//! original recording).

use std::collections::BTreeMap;

use callflow_sdk::PluginError;
use callflow_sdk::recording::{
    Action, HttpRequest, LogLevel, Output, RecordingBehaviour, RecordingContext,
};
use serde::Deserialize;

/// The silence trimmer.
pub struct TrimSilence;

const MAX_PADDING_MS: u32 = 5_000;
const MAX_HEADERS: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_threshold")]
    threshold: u16,
    #[serde(default = "default_padding_ms")]
    padding_ms: u32,
    #[serde(default = "default_min_length_ms")]
    min_length_ms: u32,
    #[serde(default)]
    notify: Option<Notify>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Notify {
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn default_threshold() -> u16 {
    500
}
fn default_padding_ms() -> u32 {
    200
}
fn default_min_length_ms() -> u32 {
    1_000
}

fn config_error(message: impl Into<String>) -> PluginError {
    PluginError::new("config", message)
}

impl Config {
    fn parse(json: &str) -> Result<Config, PluginError> {
        let config: Config = serde_json::from_str(json)
            .map_err(|e| config_error(format!("the configuration is invalid: {e}")))?;
        if config.threshold == 0 || config.threshold > i16::MAX as u16 {
            return Err(config_error(format!(
                "threshold is between 1 and {}",
                i16::MAX
            )));
        }
        if config.padding_ms > MAX_PADDING_MS {
            return Err(config_error(format!(
                "padding_ms is at most {MAX_PADDING_MS}"
            )));
        }
        if let Some(n) = &config.notify {
            if !(n.url.starts_with("https://") || n.url.starts_with("http://")) {
                return Err(config_error(format!(
                    "notify.url must be an http(s) URL, not {:?}",
                    n.url
                )));
            }
            if n.headers.len() > MAX_HEADERS {
                return Err(config_error(format!(
                    "notify.headers holds at most {MAX_HEADERS} headers"
                )));
            }
        }
        Ok(config)
    }
}

impl RecordingBehaviour for TrimSilence {
    fn process(
        ctx: &RecordingContext,
        audio: &[i16],
        out: &mut Output,
    ) -> Result<Action, PluginError> {
        if ctx.sample_rate == 0 {
            return Err(PluginError::new("context", "the sample rate is 0"));
        }
        let config = Config::parse(&ctx.config)?;
        let original_ms = ctx.duration_ms(audio.len());
        // `unsigned_abs`, because `i16::MIN.abs()` overflows
        let loud = |s: &i16| s.unsigned_abs() >= config.threshold;
        let sound = audio
            .iter()
            .position(loud)
            .zip(audio.iter().rposition(loud));
        let kept = match sound {
            None => Err("only silence".to_owned()),
            Some((first, last)) => {
                let sound_ms = ctx.duration_ms(last + 1 - first);
                if sound_ms < u64::from(config.min_length_ms) {
                    Err(format!(
                        "{sound_ms} ms of sound, under the minimum of {} ms",
                        config.min_length_ms
                    ))
                } else {
                    let pad = ctx.samples_in(config.padding_ms);
                    Ok(first.saturating_sub(pad)..(last + 1).saturating_add(pad).min(audio.len()))
                }
            }
        };
        let (range, reason) = match &kept {
            Ok(range) => (range.clone(), None),
            Err(reason) => (0..0, Some(reason.as_str())),
        };
        let (start_ms, end_ms) = (ctx.duration_ms(range.start), ctx.duration_ms(range.end));
        match reason {
            None => out.log(
                LogLevel::Info,
                format!(
                    "kept {} ms of {original_ms} ms ({start_ms} ms cut at the start, {} ms at the end)",
                    end_ms - start_ms,
                    original_ms - end_ms
                ),
            ),
            Some(reason) => out.log(
                LogLevel::Info,
                format!("discarded {original_ms} ms: {reason}"),
            ),
        };
        if let Some(notify) = &config.notify {
            let body = serde_json::json!({
                "account_sid": ctx.account_sid,
                "call_sid": ctx.call_sid,
                "kept": reason.is_none(),
                "start_ms": start_ms,
                "end_ms": end_ms,
                "duration_ms": end_ms - start_ms,
                "original_ms": original_ms,
                "reason": reason,
            });
            let request = notify.headers.iter().fold(
                HttpRequest::post_json(&notify.url, &body),
                |r, (name, value)| r.header(name, value),
            );
            // one notification per recording, however often the host retries it
            out.notify(
                request.idempotency_key(format!("trim-silence:{}:{}", ctx.call_sid, ctx.now_ms)),
            );
        }
        Ok(match kept {
            Ok(range) => Action::keep(range),
            Err(reason) => Action::discard(reason),
        })
    }
}

callflow_sdk::export_recording!(TrimSilence);

#[cfg(test)]
mod tests {
    use super::*;
    use callflow_sdk::recording::{HttpMethod, Keep, LogLine, Param, RecordingTester};

    /// `silence` samples of near silence, `sound` of a loud square wave, `silence` again.
    fn speech(silence: usize, sound: usize) -> Vec<i16> {
        let quiet = (0..silence).map(|i| if i % 2 == 0 { 40 } else { -40 });
        let loud = (0..sound).map(|i| if i % 2 == 0 { 8_000 } else { -8_000 });
        quiet.clone().chain(loud).chain(quiet).collect()
    }

    #[test]
    fn silence_is_trimmed_at_both_ends_with_padding() {
        let t = RecordingTester::<TrimSilence>::new(r#"{"padding_ms": 100}"#);
        // 1 s of silence, 2 s of sound, 1 s of silence at 8 kHz
        let plan = t.process(&speech(8_000, 16_000)).unwrap();
        assert_eq!(
            plan.action,
            Action::Keep(Keep {
                start: 7_200,
                end: 24_800
            })
        );
        assert!(plan.notify.is_empty());
        assert_eq!(
            plan.logs,
            vec![LogLine::new(
                LogLevel::Info,
                "kept 2200 ms of 4000 ms (900 ms cut at the start, 900 ms at the end)"
            )]
        );
        // padding stops at the edges of the recording
        let plan = t.process(&speech(400, 16_000)).unwrap();
        assert_eq!(plan.action, Action::keep(0..16_800));
    }

    #[test]
    fn no_padding_cuts_at_the_first_and_last_loud_sample() {
        let t = RecordingTester::<TrimSilence>::new(r#"{"padding_ms": 0, "threshold": 100}"#);
        let mut audio = vec![0i16; 10_000];
        audio[1_000] = i16::MIN;
        audio[9_000] = 100;
        let plan = t.process(&audio).unwrap();
        assert_eq!(plan.action, Action::keep(1_000..9_001));
    }

    #[test]
    fn silence_and_short_sounds_are_discarded() {
        let t = RecordingTester::<TrimSilence>::new("{}");
        let plan = t.process(&speech(8_000, 0)).unwrap();
        assert_eq!(plan.action, Action::discard("only silence"));
        assert_eq!(
            plan.logs,
            vec![LogLine::new(
                LogLevel::Info,
                "discarded 2000 ms: only silence"
            )]
        );
        let plan = t.process(&[]).unwrap();
        assert_eq!(plan.action, Action::discard("only silence"));
        // a cough: 0.5 s of sound
        let plan = t.process(&speech(8_000, 4_000)).unwrap();
        assert_eq!(
            plan.action,
            Action::discard("500 ms of sound, under the minimum of 1000 ms")
        );
        // the minimum counts at the recording's own rate
        let mut t = RecordingTester::<TrimSilence>::new(r#"{"min_length_ms": 400}"#);
        t.ctx.sample_rate = 16_000;
        let plan = t.process(&speech(100, 6_000)).unwrap();
        assert_eq!(
            plan.action,
            Action::discard("375 ms of sound, under the minimum of 400 ms")
        );
    }

    #[test]
    fn the_configured_url_is_notified_of_every_outcome() {
        let config = r#"{
            "padding_ms": 0,
            "notify": {"url": "https://hooks.example.com/rec", "headers": {"Authorization": "Bearer s3cret"}}
        }"#;
        let t = RecordingTester::<TrimSilence>::new(config);
        let plan = t.process(&speech(8_000, 16_000)).unwrap();
        let [req] = &plan.notify[..] else {
            panic!("{plan:?}")
        };
        assert_eq!(req.method, HttpMethod::Post);
        assert_eq!(req.url, "https://hooks.example.com/rec");
        assert_eq!(
            req.headers,
            vec![
                Param::new("Content-Type", "application/json"),
                Param::new("Authorization", "Bearer s3cret"),
            ]
        );
        assert_eq!(
            req.idempotency_key.as_deref(),
            Some("trim-silence:CA00000000000000000000000000000000:1800000000000")
        );
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "account_sid": "AC00000000000000000000000000000000",
                "call_sid": "CA00000000000000000000000000000000",
                "kept": true,
                "start_ms": 1000,
                "end_ms": 3000,
                "duration_ms": 2000,
                "original_ms": 4000,
                "reason": null,
            })
        );
        let plan = t.process(&speech(100, 0)).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&plan.notify[0].body).unwrap();
        assert_eq!(body["kept"], false);
        assert_eq!(body["reason"], "only silence");
        assert_eq!(body["duration_ms"], 0);
    }

    #[test]
    fn bad_configurations_and_contexts_are_plugin_errors() {
        for config in [
            "not json",
            r#"{"threshold": 0}"#,
            r#"{"threshold": 40000}"#,
            r#"{"padding_ms": 60000}"#,
            r#"{"notify": {"url": "ftp://example.com"}}"#,
            r#"{"notify": {}}"#,
            r#"{"treshold": 10}"#,
        ] {
            let t = RecordingTester::<TrimSilence>::new(config);
            assert_eq!(
                t.process(&[1, 2, 3]).unwrap_err().code,
                "config",
                "{config}"
            );
        }
        let mut t = RecordingTester::<TrimSilence>::new("{}");
        t.ctx.sample_rate = 0;
        assert_eq!(t.process(&[1, 2, 3]).unwrap_err().code, "context");
    }
}
