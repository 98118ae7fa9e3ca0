//! Plugins that wait (sleep, block or poll on a timer, spin on the clock, read stdin, exit):
//! none may hold a plugin thread past its deadline, and each failure is named for what it was.

use std::time::{Duration, Instant};

use callflow_runtime::InvokeError;
use callflow_runtime::flow::Command;

use super::{ABUSE, run_with, runtime};

fn deadline(ms: u64) -> callflow_runtime::Limits {
    callflow_runtime::Limits {
        deadline: Duration::from_millis(ms),
        ..callflow_runtime::Limits::default()
    }
}

/// Runs the abuse guest with `abuse` (and its other config) and a 200 ms deadline; the error
/// and how long it took.
async fn abuse(config: &str) -> (Result<Vec<Command>, InvokeError>, Duration) {
    let rt = runtime();
    let wasm = std::fs::read(ABUSE).unwrap();
    let started = Instant::now();
    let r = run_with(&rt, &wasm, config, deadline(200))
        .await
        .map(|s| s.commands);
    (r, started.elapsed())
}

#[tokio::test]
async fn a_sleep_fails_at_once_as_a_wait_instead_of_blocking() {
    // an hour's sleep: it used to hold the thread for all of it
    let (r, took) = abuse(r#"{"abuse":"sleep","secs":3600}"#).await;
    let err = r.unwrap_err();
    assert!(matches!(&err, InvokeError::Blocked(_)), "{err:?}");
    assert!(err.to_string().contains("cannot wait"), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn blocking_or_polling_on_a_timer_fails_at_once() {
    for how in ["timer-block", "timer-poll"] {
        let (r, took) = abuse(&format!(r#"{{"abuse":"{how}"}}"#)).await;
        assert!(matches!(r, Err(InvokeError::Blocked(_))), "{how}: {r:?}");
        assert!(took < Duration::from_secs(5), "{how}: {took:?}");
    }
}

#[tokio::test]
async fn spinning_on_a_timer_or_the_clock_is_stopped_at_the_deadline() {
    // time stands still: the timer is never ready and the clock never moves, so these loop
    // until the epoch deadline stops them
    for how in ["timer-spin", "clock-spin"] {
        let (r, took) = abuse(&format!(r#"{{"abuse":"{how}"}}"#)).await;
        assert_eq!(
            r.unwrap_err(),
            InvokeError::Timeout { limit_ms: 200 },
            "{how}"
        );
        assert!(took >= Duration::from_millis(200), "{how}: {took:?}");
        assert!(took < Duration::from_secs(5), "{how}: {took:?}");
    }
}

#[tokio::test]
async fn stdin_is_empty_and_reading_it_returns_at_once() {
    let (r, took) = abuse(r#"{"abuse":"stdin"}"#).await;
    let commands = r.unwrap();
    assert!(
        matches!(&commands[..], [Command::Say(s)] if s.text == "stdin: 0 bytes (true)"),
        "{commands:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn exit_is_named_and_no_error_carries_a_backtrace() {
    let (r, _) = abuse(r#"{"abuse":"exit"}"#).await;
    let err = r.unwrap_err();
    assert!(matches!(err, InvokeError::Exited { .. }), "{err:?}");
    let (trap, _) = abuse(r#"{"abuse":"trap"}"#).await;
    let trap = trap.unwrap_err();
    assert!(matches!(trap, InvokeError::Trap(_)), "{trap:?}");
    for e in [err, trap] {
        let text = e.to_string();
        assert!(
            !text.contains("backtrace") && !text.contains("0x"),
            "{text}"
        );
        assert!(text.len() < 300, "{text}");
    }
}
