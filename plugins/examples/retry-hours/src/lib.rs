//! A retry policy for callouts: calls a participant again after a busy line, no answer or a
//! failure, after a delay, up to a number of attempts, and only within daily calling hours.
//! A number that does not exist (a failure with SIP 404, 410, 484 or 604) is never called again,
//! nor is a call that was answered or canceled.
//!
//! Configuration (every field is optional):
//!
//! ```json
//! {
//!   "retry_on": ["busy", "no-answer", "failed"],
//!   "delay_s": 1800,
//!   "max_attempts": 3,
//!   "hours": {"from": 9, "to": 20}
//! }
//! ```
//!
//! `hours` are whole UTC hours, `from` included and `to` excluded; a window such as
//! `{"from": 22, "to": 6}` runs over midnight. A retry that would fall outside the window moves
//! to the window's next opening. Without `hours`, any time will do. The participant's time zone
//! is not consulted: a window in local time needs a time-zone database, which this example
//! leaves out on purpose.

use callflow_sdk::retry::{Decision, LogLevel, Output, RetryContext, RetryPolicy};
use serde::Deserialize;

/// The calling-hours policy.
pub struct RetryHours;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// SIP final responses that mean the number does not exist: calling again cannot help.
const NO_SUCH_NUMBER: [u16; 4] = [404, 410, 484, 604];

/// The statuses a retry can help with.
const RETRYABLE: [&str; 3] = ["busy", "no-answer", "failed"];

const MIN_DELAY_S: u32 = 60;
const MAX_DELAY_S: u32 = 7 * 24 * 3_600;
const MAX_ATTEMPTS: u32 = 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_retry_on")]
    retry_on: Vec<String>,
    #[serde(default = "default_delay_s")]
    delay_s: u32,
    #[serde(default = "default_max_attempts")]
    max_attempts: u32,
    #[serde(default)]
    hours: Option<Hours>,
}

fn default_retry_on() -> Vec<String> {
    RETRYABLE.iter().map(|s| (*s).to_owned()).collect()
}
fn default_delay_s() -> u32 {
    1_800
}
fn default_max_attempts() -> u32 {
    3
}

/// Daily calling hours in UTC: `[from, to)`, over midnight when `from > to`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hours {
    from: u8,
    to: u8,
}

impl Config {
    fn parse(json: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if let Some(s) = config
            .retry_on
            .iter()
            .find(|s| !RETRYABLE.contains(&s.as_str()))
        {
            return Err(format!(
                "retry_on may hold {}, not {s:?}",
                RETRYABLE.join(", ")
            ));
        }
        if !(MIN_DELAY_S..=MAX_DELAY_S).contains(&config.delay_s) {
            return Err(format!(
                "delay_s is between {MIN_DELAY_S} and {MAX_DELAY_S}"
            ));
        }
        if !(1..=MAX_ATTEMPTS).contains(&config.max_attempts) {
            return Err(format!("max_attempts is between 1 and {MAX_ATTEMPTS}"));
        }
        if let Some(h) = config.hours
            && (h.from > 23 || h.to == 0 || h.to > 24 || h.from == h.to)
        {
            return Err(format!(
                "hours run from 0-23 to 1-24 and differ, not from {} to {}",
                h.from, h.to
            ));
        }
        Ok(config)
    }
}

impl Hours {
    fn contains(self, hour: i64) -> bool {
        let (from, to) = (i64::from(self.from), i64::from(self.to));
        if from < to {
            (from..to).contains(&hour)
        } else {
            hour >= from || hour < to
        }
    }

    /// The first moment at or after `t` (milliseconds since the Unix epoch) inside the window.
    fn next_open(self, t: i64) -> i64 {
        let into_day = t.rem_euclid(DAY_MS);
        if self.contains(into_day / HOUR_MS) {
            return t;
        }
        // outside the window the next opening is today's or tomorrow's `from`
        let opening = t - into_day + i64::from(self.from) * HOUR_MS;
        if opening > t {
            opening
        } else {
            opening + DAY_MS
        }
    }
}

/// `t` as `HH:MM UTC`, for log lines.
fn clock(t: i64) -> String {
    let minutes = t.rem_euclid(DAY_MS) / 60_000;
    format!("{:02}:{:02} UTC", minutes / 60, minutes % 60)
}

impl RetryPolicy for RetryHours {
    fn decide(ctx: &RetryContext, out: &mut Output) -> Decision {
        let config = match Config::parse(&ctx.config) {
            Ok(c) => c,
            Err(e) => {
                out.log(
                    LogLevel::Error,
                    format!("the configuration is invalid: {e}"),
                );
                return Decision::give_up(format!("invalid retry configuration: {e}"));
            }
        };
        let Some(last) = ctx.last_attempt() else {
            return Decision::give_up("no attempt to retry");
        };
        let status = last.status.as_str();
        match (status, last.sip_code) {
            ("completed", _) => return Decision::give_up("answered"),
            ("canceled", _) => return Decision::give_up("canceled"),
            ("failed", Some(code)) if NO_SUCH_NUMBER.contains(&code) => {
                return Decision::give_up(format!("the number does not exist (SIP {code})"));
            }
            _ => {}
        }
        if !config.retry_on.iter().any(|s| s == status) {
            return Decision::give_up(format!("{status} is not retried"));
        }
        let made = ctx.attempts.len();
        if made >= config.max_attempts as usize {
            return Decision::give_up(format!("{status} after {made} attempts"));
        }
        let earliest = (last.ended_ms + i64::from(config.delay_s) * 1_000).max(ctx.now_ms);
        let at = config.hours.map_or(earliest, |h| h.next_open(earliest));
        let days = at.div_euclid(DAY_MS) - ctx.now_ms.div_euclid(DAY_MS);
        let when = match days {
            0 => clock(at),
            1 => format!("{} tomorrow", clock(at)),
            n => format!("{} in {n} days", clock(at)),
        };
        out.log(
            LogLevel::Info,
            format!(
                "{status}: attempt {} of {} at {when}",
                made + 1,
                config.max_attempts
            ),
        );
        Decision::RetryAt(at)
    }
}

callflow_sdk::export_retry_policy!(RetryHours);

#[cfg(test)]
mod tests {
    use super::*;
    use callflow_sdk::retry::{LogLine, RetryTester};

    /// Midnight UTC on the test context's day (its clock reads 08:00 UTC).
    const DAY0: i64 = 1_800_000_000_000 - 8 * HOUR_MS;

    fn utc(day: i64, hour: i64, minute: i64) -> i64 {
        DAY0 + day * DAY_MS + hour * HOUR_MS + minute * 60_000
    }

    fn tester(config: &str, now: i64) -> RetryTester<RetryHours> {
        let mut t = RetryTester::new(config);
        t.at(now);
        t
    }

    #[test]
    fn busy_and_no_answer_are_retried_after_the_delay_up_to_the_limit() {
        let mut t = tester(r#"{"delay_s": 600, "max_attempts": 3}"#, utc(0, 10, 0));
        let first = t.attempt("busy", Some(486)).decide();
        // the attempt rang for 30 s
        assert_eq!(first.decision, Decision::RetryAt(utc(0, 10, 10) + 30_000));
        assert_eq!(
            first.logs,
            vec![LogLine::new(
                LogLevel::Info,
                "busy: attempt 2 of 3 at 10:10 UTC"
            )]
        );
        let second = t.at(utc(0, 10, 11)).attempt("no-answer", None).decide();
        assert_eq!(second.decision, Decision::RetryAt(utc(0, 10, 21) + 30_000));
        let third = t.at(utc(0, 10, 22)).attempt("no-answer", None).decide();
        assert_eq!(
            third.decision,
            Decision::give_up("no-answer after 3 attempts")
        );
    }

    #[test]
    fn retries_wait_for_the_calling_hours() {
        let config = r#"{"delay_s": 3600, "hours": {"from": 9, "to": 20}}"#;
        // inside the window: only the delay
        let t = tester(config, utc(0, 9, 0)).attempt("busy", None).decide();
        assert_eq!(t.decision, Decision::RetryAt(utc(0, 10, 0) + 30_000));
        // the delay ends after closing: tomorrow at opening
        let mut t = tester(config, utc(0, 19, 30));
        let d = t.attempt("no-answer", None).decide();
        assert_eq!(d.decision, Decision::RetryAt(utc(1, 9, 0)));
        assert_eq!(
            d.logs,
            vec![LogLine::new(
                LogLevel::Info,
                "no-answer: attempt 2 of 3 at 09:00 UTC tomorrow"
            )]
        );
        // before opening: today at opening
        let d = tester(config, utc(0, 5, 0)).attempt("busy", None).decide();
        assert_eq!(d.decision, Decision::RetryAt(utc(0, 9, 0)));
        // the last minute of the window is inside, the closing hour is not
        let d = tester(config, utc(0, 18, 58))
            .attempt("busy", None)
            .decide();
        assert_eq!(d.decision, Decision::RetryAt(utc(0, 19, 58) + 30_000));
    }

    #[test]
    fn windows_may_run_over_midnight() {
        let config = r#"{"delay_s": 3600, "hours": {"from": 22, "to": 6}}"#;
        let d = tester(config, utc(0, 12, 0)).attempt("busy", None).decide();
        assert_eq!(d.decision, Decision::RetryAt(utc(0, 22, 0)));
        let d = tester(config, utc(0, 23, 30))
            .attempt("busy", None)
            .decide();
        assert_eq!(d.decision, Decision::RetryAt(utc(1, 0, 30) + 30_000));
        let d = tester(config, utc(0, 5, 30)).attempt("busy", None).decide();
        assert_eq!(d.decision, Decision::RetryAt(utc(0, 22, 0)));
        // a full day is a window too
        let d = tester(
            r#"{"delay_s": 60, "hours": {"from": 0, "to": 24}}"#,
            utc(0, 23, 59),
        )
        .attempt("busy", None)
        .decide();
        assert_eq!(d.decision, Decision::RetryAt(utc(1, 0, 0) + 30_000));
    }

    #[test]
    fn a_decision_is_never_in_the_past() {
        // the host asked late: the delay has long passed
        let mut t = tester(r#"{"delay_s": 60}"#, utc(0, 10, 0));
        t.attempt("busy", None);
        t.at(utc(0, 12, 0));
        assert_eq!(t.decide().decision, Decision::RetryAt(utc(0, 12, 0)));
    }

    #[test]
    fn numbers_that_do_not_exist_and_final_outcomes_are_not_retried() {
        for code in NO_SUCH_NUMBER {
            let d = tester("{}", utc(0, 10, 0))
                .attempt("failed", Some(code))
                .decide();
            assert_eq!(
                d.decision,
                Decision::give_up(format!("the number does not exist (SIP {code})"))
            );
        }
        let d = tester("{}", utc(0, 10, 0))
            .attempt("failed", Some(503))
            .decide();
        assert!(matches!(d.decision, Decision::RetryAt(_)), "{d:?}");
        let d = tester("{}", utc(0, 10, 0))
            .attempt("completed", Some(200))
            .decide();
        assert_eq!(d.decision, Decision::give_up("answered"));
        let d = tester("{}", utc(0, 10, 0))
            .attempt("canceled", None)
            .decide();
        assert_eq!(d.decision, Decision::give_up("canceled"));
        let d = tester(r#"{"retry_on": ["busy"]}"#, utc(0, 10, 0))
            .attempt("no-answer", None)
            .decide();
        assert_eq!(d.decision, Decision::give_up("no-answer is not retried"));
        let d = tester("{}", utc(0, 10, 0)).decide();
        assert_eq!(d.decision, Decision::give_up("no attempt to retry"));
    }

    #[test]
    fn a_bad_configuration_gives_up_and_says_why() {
        for config in [
            "not json",
            r#"{"delay_s": 0}"#,
            r#"{"max_attempts": 0}"#,
            r#"{"retry_on": ["completed"]}"#,
            r#"{"hours": {"from": 9, "to": 9}}"#,
            r#"{"hours": {"from": 24, "to": 6}}"#,
            r#"{"hours": {"from": 9, "to": 25}}"#,
            r#"{"hours": {"from": 9}}"#,
            r#"{"delay": 60}"#,
        ] {
            let d = tester(config, utc(0, 10, 0)).attempt("busy", None).decide();
            assert!(
                matches!(&d.decision, Decision::GiveUp(r) if r.starts_with("invalid retry configuration")),
                "{config}: {d:?}"
            );
            assert_eq!(d.logs.len(), 1);
            assert_eq!(d.logs[0].level, LogLevel::Error);
        }
    }

    #[test]
    fn next_open_before_the_epoch() {
        let h = Hours { from: 9, to: 17 };
        assert_eq!(h.next_open(-HOUR_MS), 9 * HOUR_MS);
        assert_eq!(h.next_open(-10 * HOUR_MS), -10 * HOUR_MS);
    }
}
