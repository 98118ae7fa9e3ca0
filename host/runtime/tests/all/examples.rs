//! The example plugins of `plugins/examples/`, built for wasm32-wasip2 by the build script and run
//! by the real runtime: one per world the SDK exports, so every export macro is proven in a host.

use std::sync::Arc;

use callflow_runtime::flow::{Command, FlowEvent, FlowStep, GatherResult, Prompt};
use callflow_runtime::recording::{Action, HttpMethod, Keep, RecordingContext};
use callflow_runtime::retry::{Attempt, Decision, RetryContext};
use callflow_runtime::{InvokeError, Plugin, Runtime, World};

use super::{ctx, roomy, runtime};

const MENU: &str = env!("CALLFLOW_EXAMPLE_MENU");
const RETRY_HOURS: &str = env!("CALLFLOW_EXAMPLE_RETRY_HOURS");
const TRIM_SILENCE: &str = env!("CALLFLOW_EXAMPLE_TRIM_SILENCE");

fn load(rt: &Runtime, path: &str) -> Arc<Plugin> {
    rt.load(&std::fs::read(path).unwrap()).unwrap()
}

const MENU_CONFIG: &str = r#"{
    "greeting": "Welcome to the river authority.",
    "options": {
        "1": {"label": "river levels", "say": "The river is at its normal level."},
        "2": {"label": "opening hours", "say": "We are open from eight to six."}
    },
    "max_repeats": 1
}"#;

/// The texts a gather speaks.
fn gather_texts(step: &FlowStep) -> Vec<&str> {
    let [Command::Gather(g)] = &step.commands[..] else {
        panic!("expected one gather: {step:?}")
    };
    assert_eq!(g.num_digits, Some(1));
    g.prompts
        .iter()
        .map(|p| match p {
            Prompt::Say(s) => s.text.as_str(),
            other => panic!("{other:?}"),
        })
        .collect()
}

fn key(digits: &str) -> FlowEvent {
    FlowEvent::Gathered(GatherResult {
        digits: digits.into(),
        timed_out: digits.is_empty(),
    })
}

#[tokio::test]
async fn the_menu_answers_keys_and_ends_the_call_after_repeated_timeouts() {
    let rt = runtime();
    let plugin = load(&rt, MENU);
    assert_eq!(plugin.world, World::CallFlow);
    let mut state = Vec::new();
    let mut steps = Vec::new();
    // the host keeps the state between events, as it will with the call
    for event in [FlowEvent::Start, key("2"), key(""), key("7")] {
        let step = rt
            .call_flow(Arc::clone(&plugin), ctx(MENU_CONFIG), state, event, roomy())
            .await
            .unwrap();
        state = step.state.clone();
        steps.push(step);
    }
    let menu = [
        "For river levels, press 1.",
        "For opening hours, press 2.",
        "To hear these options again, press 9.",
    ];
    assert_eq!(
        gather_texts(&steps[0])[0],
        "Welcome to the river authority."
    );
    assert_eq!(gather_texts(&steps[0])[1..], menu);
    assert_eq!(gather_texts(&steps[1])[0], "We are open from eight to six.");
    assert_eq!(gather_texts(&steps[2]), menu);
    assert!(
        matches!(&steps[3].commands[..], [Command::Say(sorry), Command::Say(bye), Command::Hangup]
            if sorry.text.starts_with("Sorry") && bye.text == "Goodbye."),
        "{:?}",
        steps[3]
    );
    assert_eq!(
        String::from_utf8_lossy(&state),
        r#"{"misses":2,"answered":1}"#
    );
    assert!(
        steps[3]
            .logs
            .iter()
            .any(|l| l.message.contains("hanging up"))
    );
}

#[tokio::test]
async fn the_menu_reports_a_bad_configuration_as_a_plugin_error() {
    let rt = runtime();
    let plugin = load(&rt, MENU);
    let err = rt
        .call_flow(
            plugin,
            ctx(r#"{"options": {}}"#),
            Vec::new(),
            FlowEvent::Start,
            roomy(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        InvokeError::Plugin {
            code: "config".into(),
            message: "the menu has no options".into()
        }
    );
}

/// 2027-01-15 00:00 UTC.
const DAY0: i64 = 1_799_971_200_000;
const HOUR: i64 = 3_600_000;

fn retry_ctx(config: &str, status: &str, sip_code: Option<u16>, ended_ms: i64) -> RetryContext {
    RetryContext {
        account_sid: "AC00000000000000000000000000000001".into(),
        callout_id: Some("CO1".into()),
        participant_id: Some("PA1".into()),
        to: "+15558675310".into(),
        time_zone: None,
        now_ms: ended_ms,
        seed: 7,
        config: config.into(),
        attempts: vec![Attempt {
            status: status.into(),
            sip_code,
            started_ms: ended_ms - 30_000,
            ended_ms,
            duration_s: 0,
        }],
        metadata: "{}".into(),
    }
}

#[tokio::test]
async fn retry_hours_retries_within_the_calling_hours_and_gives_up_on_missing_numbers() {
    let rt = runtime();
    let plugin = load(&rt, RETRY_HOURS);
    assert_eq!(plugin.world, World::RetryPolicy);
    let config = r#"{"delay_s": 1800, "max_attempts": 3, "hours": {"from": 9, "to": 20}}"#;
    let decide = |ctx| rt.decide_retry(Arc::clone(&plugin), ctx, roomy());

    // the host's bindings have no `PartialEq`, hence `matches!`
    let d = decide(retry_ctx(config, "busy", Some(486), DAY0 + 10 * HOUR))
        .await
        .unwrap();
    assert!(
        matches!(d.decision, Decision::RetryAt(t) if t == DAY0 + 10 * HOUR + HOUR / 2),
        "{d:?}"
    );
    assert_eq!(d.logs.len(), 1);
    assert_eq!(d.logs[0].message, "busy: attempt 2 of 3 at 10:30 UTC");

    // half an hour after 19:45 is past closing: the next morning at nine
    let d = decide(retry_ctx(
        config,
        "no-answer",
        None,
        DAY0 + 19 * HOUR + 45 * 60_000,
    ))
    .await
    .unwrap();
    assert!(
        matches!(d.decision, Decision::RetryAt(t) if t == DAY0 + 24 * HOUR + 9 * HOUR),
        "{d:?}"
    );

    let d = decide(retry_ctx(config, "failed", Some(404), DAY0 + 10 * HOUR))
        .await
        .unwrap();
    assert!(
        matches!(&d.decision, Decision::GiveUp(r) if r == "the number does not exist (SIP 404)"),
        "{d:?}"
    );

    let d = decide(retry_ctx("{oops", "busy", None, DAY0))
        .await
        .unwrap();
    assert!(
        matches!(&d.decision, Decision::GiveUp(r) if r.starts_with("invalid retry configuration")),
        "{d:?}"
    );
}

fn recording_ctx(config: &str) -> RecordingContext {
    RecordingContext {
        account_sid: "AC00000000000000000000000000000001".into(),
        call_sid: "CA00000000000000000000000000000001".into(),
        now_ms: 1_800_000_000_000,
        seed: 7,
        config: config.into(),
        sample_rate: 8_000,
        reason: "silence".into(),
        digits: String::new(),
    }
}

/// `silence` quiet samples, `sound` loud ones, `silence` quiet ones again.
fn speech(silence: usize, sound: usize) -> Vec<i16> {
    let mut audio = vec![10i16; silence];
    audio.extend((0..sound).map(|i| if i % 2 == 0 { 9_000 } else { -9_000 }));
    audio.extend(std::iter::repeat_n(-10i16, silence));
    audio
}

#[tokio::test]
async fn trim_silence_keeps_the_sound_and_notifies() {
    let rt = runtime();
    let plugin = load(&rt, TRIM_SILENCE);
    assert_eq!(plugin.world, World::Recording);
    let config = r#"{
        "padding_ms": 125,
        "notify": {"url": "https://hooks.example.com/rec", "headers": {"X-Token": "t0k"}}
    }"#;
    // 2 s of silence, 3 s of sound, 2 s of silence
    let plan = rt
        .process_recording(
            Arc::clone(&plugin),
            recording_ctx(config),
            speech(16_000, 24_000),
            roomy(),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            plan.action,
            Action::Keep(Keep {
                start: 15_000,
                end: 41_000
            })
        ),
        "{plan:?}"
    );
    let [req] = &plan.notify[..] else {
        panic!("{plan:?}")
    };
    assert_eq!(req.method, HttpMethod::Post);
    assert_eq!(req.url, "https://hooks.example.com/rec");
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(
        headers,
        [("Content-Type", "application/json"), ("X-Token", "t0k")]
    );
    let body = String::from_utf8(req.body.clone()).unwrap();
    for field in [
        r#""kept":true"#,
        r#""start_ms":1875"#,
        r#""end_ms":5125"#,
        r#""original_ms":7000"#,
        r#""call_sid":"CA00000000000000000000000000000001""#,
    ] {
        assert!(body.contains(field), "{field} in {body}");
    }
    assert_eq!(
        req.idempotency_key.as_deref(),
        Some("trim-silence:CA00000000000000000000000000000001:1800000000000")
    );
    assert_eq!(plan.logs.len(), 1);

    let plan = rt
        .process_recording(
            Arc::clone(&plugin),
            recording_ctx("{}"),
            speech(8_000, 0),
            roomy(),
        )
        .await
        .unwrap();
    assert!(
        matches!(&plan.action, Action::Discard(r) if r == "only silence"),
        "{plan:?}"
    );
    assert!(plan.notify.is_empty());

    let err = rt
        .process_recording(
            plugin,
            recording_ctx(r#"{"threshold": 0}"#),
            vec![1],
            roomy(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, InvokeError::Plugin { code, .. } if code == "config"),
        "{err:?}"
    );
}
