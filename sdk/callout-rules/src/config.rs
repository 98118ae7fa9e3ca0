//! The built-in retry policy's configuration (a binding's, or a callout's `RetryConfig`): JSON
//! parsed and checked in full before any decision, so a typo is reported instead of silently
//! falling back to a default. The host checks a callout's with the same parser the plugin runs.
//!
//! Every field is optional, `{}` is the defaults (Somleng SCFM's: busy, no answer and failed
//! calls are tried again 15 minutes later, three attempts in all):
//!
//! ```json
//! {
//!   "retry_statuses": ["busy", "no-answer", "failed"],
//!   "max_attempts": 3,
//!   "delay": {"fixed_minutes": 15},
//!   "status_delays": {"busy": {"exponential": {"base_minutes": 5, "factor": 2.0,
//!                                              "max_minutes": 240, "jitter": 0.2}}},
//!   "terminal_sip_codes": [404, 410, 484, 604],
//!   "calling_hours": {"start": "08:00", "end": "20:00",
//!                     "days": ["mon", "tue", "wed", "thu", "fri"], "time_zone": "Africa/Nairobi"}
//! }
//! ```
//!
//! - `retry_statuses`: busy, no-answer, failed and completed may be listed; canceled never (an
//!   attempt is canceled when its callout is stopped, and a retry would undo that).
//! - `max_attempts`: attempts in all, the first included, 1 to 50.
//! - `delay`: `{"fixed_minutes": M}`, `{"fixed_seconds": S}` or `{"exponential": {…}}`
//!   (defaults: base 15 minutes, factor 2, at most 240 minutes, no jitter); `status_delays`
//!   override it per status. Minutes are 1 to 10080 (a week); factor 1 to 10; jitter 0 to 0.5,
//!   drawn from the invocation's seed ([`crate::delay`]).
//! - `terminal_sip_codes`: SIP final responses after which the number is not called again.
//! - `calling_hours`: when calls may be made, by the wall clock in the participant's time zone
//!   (the context's, else `time_zone`, else UTC); `end <= start` runs over midnight, `24:00` is
//!   the end of a day, `days` (default every day) are the days a window opens on
//!   ([`crate::hours`]).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::delay::Delay;
use crate::hours::{CallingHours, RawHours};

/// The statuses retried when the configuration lists none (SCFM's "user" statuses).
pub const DEFAULT_RETRY_STATUSES: [&str; 3] = ["busy", "no-answer", "failed"];

/// Total attempts, the first included, when the configuration says nothing (SCFM's and OpenEWS's).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The bound on `max_attempts`: past it a callout hounds a number that will not answer.
pub const MAX_ATTEMPTS: u32 = 50;

/// SCFM's fixed delay between attempts.
pub const DEFAULT_DELAY_MINUTES: u32 = 15;

/// SIP final responses that say the number itself is wrong, so calling again cannot help:
/// 404 Not Found (no such subscriber at the telco), 410 Gone (the number was assigned once and is
/// no longer), 484 Address Incomplete (too few digits) and 604 Does Not Exist Anywhere. Responses
/// about the moment (480 Temporarily Unavailable, 486 Busy Here, 503 Service Unavailable) or the
/// person (603 Decline) are left to the statuses.
pub const DEFAULT_TERMINAL_SIP_CODES: [u16; 4] = [404, 410, 484, 604];

/// Statuses `retry_statuses` may hold. `canceled` is not one: the host cancels an attempt only
/// when the callout is stopped or paused, and a retry would undo that.
const RETRYABLE: [&str; 4] = ["busy", "no-answer", "failed", "completed"];

/// The bound on the configuration's JSON, checked before parsing it.
pub const MAX_CONFIG_BYTES: usize = 16 * 1024;

/// The bound on `terminal_sip_codes` (the SIP response codes there are fit well within it).
const MAX_TERMINAL_SIP_CODES: usize = 100;

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Final statuses after which to call again.
    pub retry_statuses: Vec<String>,
    /// Total attempts, the first included.
    pub max_attempts: u32,
    /// The delay after any retried status without one of its own.
    pub delay: Delay,
    /// Delays for particular statuses.
    pub status_delays: BTreeMap<String, Delay>,
    /// SIP codes after which to give up whatever the status.
    pub terminal_sip_codes: Vec<u16>,
    /// When calls may be made, in the participant's local time.
    pub calling_hours: Option<CallingHours>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            retry_statuses: DEFAULT_RETRY_STATUSES.map(String::from).to_vec(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            delay: Delay::Fixed(DEFAULT_DELAY_MINUTES),
            status_delays: BTreeMap::new(),
            terminal_sip_codes: DEFAULT_TERMINAL_SIP_CODES.to_vec(),
            calling_hours: None,
        }
    }
}

/// The configuration as written; every field is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    retry_statuses: Option<Vec<String>>,
    max_attempts: Option<u32>,
    delay: Option<Delay>,
    status_delays: Option<BTreeMap<String, Delay>>,
    terminal_sip_codes: Option<Vec<u16>>,
    calling_hours: Option<RawHours>,
}

impl Config {
    /// Parses and checks `json` (an empty string reads as `{}`); the error says what is wrong
    /// and where.
    pub fn parse(json: &str) -> Result<Config, String> {
        let json = crate::config_text(json, MAX_CONFIG_BYTES)?;
        let raw: Raw = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut config = Config::default();
        if let Some(statuses) = raw.retry_statuses {
            for status in &statuses {
                check_retryable(status).map_err(|e| format!("retry_statuses: {e}"))?;
            }
            config.retry_statuses = statuses;
        }
        if let Some(max) = raw.max_attempts {
            if !(1..=MAX_ATTEMPTS).contains(&max) {
                return Err(format!(
                    "max_attempts is between 1 and {MAX_ATTEMPTS}, not {max}"
                ));
            }
            config.max_attempts = max;
        }
        if let Some(delay) = raw.delay {
            delay.check().map_err(|e| format!("delay: {e}"))?;
            config.delay = delay;
        }
        for (status, delay) in raw.status_delays.unwrap_or_default() {
            check_retryable(&status).map_err(|e| format!("status_delays: {e}"))?;
            if !config.retry_statuses.contains(&status) {
                return Err(format!(
                    "status_delays: {status} is not in retry_statuses, so it has no delay"
                ));
            }
            delay
                .check()
                .map_err(|e| format!("status_delays.{status}: {e}"))?;
            config.status_delays.insert(status, delay);
        }
        if let Some(codes) = raw.terminal_sip_codes {
            if codes.len() > MAX_TERMINAL_SIP_CODES {
                return Err(format!(
                    "terminal_sip_codes holds at most {MAX_TERMINAL_SIP_CODES} codes"
                ));
            }
            if let Some(code) = codes.iter().find(|c| !(300..=699).contains(*c)) {
                return Err(format!(
                    "terminal_sip_codes are SIP final error responses (300 to 699), not {code}"
                ));
            }
            config.terminal_sip_codes = codes;
        }
        if let Some(hours) = raw.calling_hours {
            config.calling_hours = Some(hours.check().map_err(|e| format!("calling_hours: {e}"))?);
        }
        Ok(config)
    }

    /// The delay after `status`.
    pub fn delay_for(&self, status: &str) -> Delay {
        self.status_delays
            .get(status)
            .copied()
            .unwrap_or(self.delay)
    }
}

fn check_retryable(status: &str) -> Result<(), String> {
    match status {
        s if RETRYABLE.contains(&s) => Ok(()),
        "canceled" => Err(
            "canceled is never retried (an attempt is canceled when its callout is stopped)".into(),
        ),
        other => Err(format!(
            "{other:?} is not a final status; retry {}",
            RETRYABLE.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delay::Exponential;
    use chrono_tz::Tz;
    use expect_test::{Expect, expect};

    fn check_err(json: &str, expect: Expect) {
        expect.assert_eq(&Config::parse(json).unwrap_err());
    }

    #[test]
    fn empty_means_defaults() {
        assert_eq!(Config::parse("{}").unwrap(), Config::default());
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let d = Config::default();
        assert_eq!(d.retry_statuses, ["busy", "no-answer", "failed"]);
        assert_eq!(d.max_attempts, 3);
        assert_eq!(d.delay, Delay::Fixed(15));
        assert_eq!(d.terminal_sip_codes, [404, 410, 484, 604]);
        assert_eq!(d.calling_hours, None);
    }

    #[test]
    fn everything_at_once() {
        let config = Config::parse(
            r#"{
                "retry_statuses": ["busy", "no-answer"],
                "max_attempts": 5,
                "delay": {"exponential": {"base_minutes": 5, "factor": 2.0, "max_minutes": 240,
                          "jitter": 0.2}},
                "status_delays": {"busy": {"fixed_minutes": 3}},
                "terminal_sip_codes": [404, 603],
                "calling_hours": {"start": "22:00", "end": "06:30", "days": ["sat", "sun"],
                                  "time_zone": "Africa/Nairobi"}
            }"#,
        )
        .unwrap();
        assert_eq!(config.max_attempts, 5);
        assert_eq!(config.delay_for("busy"), Delay::Fixed(3));
        assert_eq!(
            config.delay_for("no-answer"),
            Delay::Exponential(Exponential {
                base_minutes: 5,
                factor: 2.0,
                max_minutes: 240,
                jitter: 0.2
            })
        );
        let hours = config.calling_hours.unwrap();
        assert_eq!((hours.start, hours.end), (22 * 60, 6 * 60 + 30));
        assert_eq!(hours.days, [false, false, false, false, false, true, true]);
        assert_eq!(hours.time_zone, chrono_tz::Africa::Nairobi);
    }

    #[test]
    fn exponential_fields_have_defaults() {
        let config = Config::parse(r#"{"delay": {"exponential": {}}}"#).unwrap();
        assert_eq!(
            config.delay,
            Delay::Exponential(Exponential {
                base_minutes: 15,
                factor: 2.0,
                max_minutes: 240,
                jitter: 0.0
            })
        );
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        check_err(
            "not json",
            expect![[r#"expected ident at line 1 column 2"#]],
        );
        check_err(
            r#"{"retry_on": ["busy"]}"#,
            expect![[
                r#"unknown field `retry_on`, expected one of `retry_statuses`, `max_attempts`, `delay`, `status_delays`, `terminal_sip_codes`, `calling_hours` at line 1 column 11"#
            ]],
        );
        check_err(
            r#"{"retry_statuses": ["canceled"]}"#,
            expect![[
                r#"retry_statuses: canceled is never retried (an attempt is canceled when its callout is stopped)"#
            ]],
        );
        check_err(
            r#"{"retry_statuses": ["no_answer"]}"#,
            expect![[
                r#"retry_statuses: "no_answer" is not a final status; retry busy, no-answer, failed, completed"#
            ]],
        );
        check_err(
            r#"{"max_attempts": 0}"#,
            expect![[r#"max_attempts is between 1 and 50, not 0"#]],
        );
        check_err(
            r#"{"max_attempts": 51}"#,
            expect![[r#"max_attempts is between 1 and 50, not 51"#]],
        );
        check_err(
            r#"{"max_attempts": -1}"#,
            expect!["invalid value: integer `-1`, expected u32 at line 1 column 19"],
        );
        check_err(
            r#"{"delay": {"fixed_minutes": 0}}"#,
            expect![[r#"delay: fixed_minutes is between 1 and 10080 (a week), not 0"#]],
        );
        check_err(
            r#"{"delay": {"fixed_hours": 1}}"#,
            expect![
                "unknown variant `fixed_hours`, expected one of `fixed_minutes`, `fixed_seconds`, `exponential` at line 1 column 24"
            ],
        );
        check_err(
            r#"{"delay": {"fixed_minutes": 5, "exponential": {}}}"#,
            expect!["expected value at line 1 column 29"],
        );
        check_err(
            r#"{"delay": {"exponential": {"factor": 0.5}}}"#,
            expect![[r#"delay: factor is between 1 and 10, not 0.5"#]],
        );
        check_err(
            r#"{"delay": {"exponential": {"jitter": 0.9}}}"#,
            expect![[r#"delay: jitter is between 0 and 0.5, not 0.9"#]],
        );
        check_err(
            r#"{"delay": {"exponential": {"base_minutes": 60, "max_minutes": 30}}}"#,
            expect![[r#"delay: max_minutes (30) is below base_minutes (60)"#]],
        );
        check_err(
            r#"{"delay": {"exponential": {"base": 5}}}"#,
            expect![[
                r#"unknown field `base`, expected one of `base_minutes`, `factor`, `max_minutes`, `jitter` at line 1 column 33"#
            ]],
        );
        check_err(
            r#"{"status_delays": {"completed": {"fixed_minutes": 5}}}"#,
            expect![[r#"status_delays: completed is not in retry_statuses, so it has no delay"#]],
        );
        check_err(
            r#"{"status_delays": {"busy": {"fixed_minutes": 50000}}}"#,
            expect![[
                r#"status_delays.busy: fixed_minutes is between 1 and 10080 (a week), not 50000"#
            ]],
        );
        check_err(
            r#"{"terminal_sip_codes": [404, 200]}"#,
            expect![[r#"terminal_sip_codes are SIP final error responses (300 to 699), not 200"#]],
        );
        check_err(
            r#"{"calling_hours": {"start": "8:00", "end": "20:00"}}"#,
            expect![[r#"calling_hours: start: "8:00" is not a time of day as HH:MM"#]],
        );
        check_err(
            r#"{"calling_hours": {"start": "24:00", "end": "20:00"}}"#,
            expect![[r#"calling_hours: start: "24:00" is not a time of day as HH:MM"#]],
        );
        check_err(
            r#"{"calling_hours": {"start": "08:00", "end": "20:60"}}"#,
            expect![[r#"calling_hours: end: "20:60" is not a time of day as HH:MM"#]],
        );
        check_err(
            r#"{"calling_hours": {"start": "00:00", "end": "00:00"}}"#,
            expect![[
                r#"calling_hours: start and end are both 00:00: an empty window (a whole day is 00:00 to 24:00)"#
            ]],
        );
        check_err(
            r#"{"calling_hours": {"start": "08:00"}}"#,
            expect![[r#"missing field `end` at line 1 column 36"#]],
        );
        check_err(
            r#"{"calling_hours": {"start": "08:00", "end": "20:00", "days": ["monday"]}}"#,
            expect![[r#"calling_hours: days are mon, tue, wed, thu, fri, sat, sun, not "monday""#]],
        );
        check_err(
            r#"{"calling_hours": {"start": "08:00", "end": "20:00", "days": []}}"#,
            expect![[r#"calling_hours: days is empty: the window would never open"#]],
        );
        check_err(
            r#"{"calling_hours": {"start": "08:00", "end": "20:00", "time_zone": "Mars/Olympus"}}"#,
            expect![[
                r#"calling_hours: time_zone: "Mars/Olympus" is not an IANA time zone name such as Africa/Nairobi"#
            ]],
        );
        check_err(
            &format!(r#"{{"terminal_sip_codes": [{}404]}}"#, "404, ".repeat(100)),
            expect![[r#"terminal_sip_codes holds at most 100 codes"#]],
        );
        check_err(
            &" ".repeat(MAX_CONFIG_BYTES + 1),
            expect![[r#"the configuration is 16385 bytes, over the limit of 16384"#]],
        );
    }

    #[test]
    fn a_whole_day_and_completed_are_allowed() {
        let config = Config::parse(
            r#"{"retry_statuses": ["completed"],
                "calling_hours": {"start": "00:00", "end": "24:00"}}"#,
        )
        .unwrap();
        assert_eq!(config.retry_statuses, ["completed"]);
        let hours = config.calling_hours.unwrap();
        assert_eq!((hours.start, hours.end), (0, 24 * 60));
        assert_eq!(hours.days, [true; 7]);
        assert_eq!(hours.time_zone, Tz::UTC);
    }
}
