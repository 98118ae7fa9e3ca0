//! The built-in retry policy for callouts (`builtin:retry`): after each final status of an
//! attempt, whether and when to call the participant again. Its defaults are Somleng SCFM's:
//! busy, no answer and failed calls are tried again 15 minutes later, three attempts in all.
//!
//! The configuration is the binding's JSON (every field is optional, `{}` is the defaults), in
//! the format [`callflow_callout_rules::config`] describes and checks: retried statuses, attempts,
//! fixed or exponential delays with jitter from the invocation's seed, terminal SIP codes and
//! calling hours. The host checks a callout's `RetryConfig` with the same parser. The calling
//! hours are judged in the participant's time zone (the context's, else the configured one, else
//! UTC); a participant's time zone the database does not know is logged as a warning and the
//! configured one used instead. A retry due outside the window moves to its next opening.
//!
//! The decision, in this order: give up when the configuration is invalid (the reason starts with
//! `invalid retry configuration:`, and an error line is logged: the world has no error, and a
//! policy that cannot decide must not call anyone again by accident), after `completed` (unless
//! listed), `canceled`, a terminal SIP code, a status not listed, or the last allowed attempt;
//! otherwise call again after the delay (never before now), moved into the calling hours.
//!
//! This crate holds only that decision ([`decide`]) and its export; the rules it applies are
//! `callflow-callout-rules`'s, shared with the host.

use callflow_callout_rules::config::Config;
use callflow_callout_rules::hours::parse_time_zone;
use callflow_sdk::retry::{Decision, LogLevel, Output, RetryContext, RetryPolicy};
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;

/// The built-in retry policy.
pub struct DefaultRetry;

impl RetryPolicy for DefaultRetry {
    fn decide(ctx: &RetryContext, out: &mut Output) -> Decision {
        match Config::parse(&ctx.config) {
            Ok(config) => decide(&config, ctx, out),
            Err(e) => {
                let reason = format!("invalid retry configuration: {e}");
                out.log(LogLevel::Error, reason.clone());
                Decision::give_up(reason)
            }
        }
    }
}

callflow_sdk::export_retry_policy!(DefaultRetry);

/// Decides with a checked configuration: the pure core, time and seed from `ctx`.
pub fn decide(config: &Config, ctx: &RetryContext, out: &mut Output) -> Decision {
    let Some(last) = ctx.last_attempt() else {
        out.log(LogLevel::Warn, "asked without any attempt: give up");
        return Decision::give_up("no attempt to retry");
    };
    let made = ctx.attempts.len();
    let status = last.status.as_str();
    let sip = last
        .sip_code
        .map(|code| format!(" (SIP {code})"))
        .unwrap_or_default();
    let ended = format!(
        "attempt {made} of {} ended {status}{sip}",
        config.max_attempts
    );
    let listed = config.retry_statuses.iter().any(|s| s == status);
    let give_up = |out: &mut Output, reason: String| {
        out.log(LogLevel::Info, format!("{ended}: give up, {reason}"));
        Decision::GiveUp(reason)
    };
    if status == "completed" && !listed {
        return give_up(out, "completed".into());
    }
    if status == "canceled" {
        return give_up(out, "status canceled is not retried".into());
    }
    if let Some(code) = last.sip_code
        && config.terminal_sip_codes.contains(&code)
    {
        return give_up(out, format!("SIP {code} is terminal"));
    }
    if !listed {
        return give_up(out, format!("status {status} is not retried"));
    }
    if made >= config.max_attempts as usize {
        return give_up(
            out,
            format!("max attempts ({}) reached", config.max_attempts),
        );
    }

    let retry = u32::try_from(made).unwrap_or(u32::MAX);
    let (delay_ms, how) = config.delay_for(status).compute(retry, ctx.seed);
    let due = last.ended_ms.saturating_add(delay_ms);
    let (earliest, late) = if due < ctx.now_ms {
        (ctx.now_ms, ", which has passed: now")
    } else {
        (due, "")
    };
    let Some(earliest_utc) = DateTime::from_timestamp_millis(earliest) else {
        return give_up(out, format!("the retry time {earliest} ms is out of range"));
    };
    out.log(
        LogLevel::Info,
        format!(
            "{ended}: retry after {how}, at {}{late}",
            rfc3339(earliest_utc)
        ),
    );
    let Some(hours) = &config.calling_hours else {
        return Decision::RetryAt(earliest);
    };

    let (tz, whose) = time_zone(ctx, hours.time_zone, out);
    let Some(at) = hours.next_open(tz, earliest_utc) else {
        return give_up(
            out,
            format!("the calling hours {} never open in {tz}", hours.describe()),
        );
    };
    let window = format!("calling hours {} in {tz} ({whose})", hours.describe());
    if at == earliest_utc {
        out.log(
            LogLevel::Debug,
            format!("{window}: open at {}", local(at, tz)),
        );
        return Decision::RetryAt(earliest);
    }
    out.log(
        LogLevel::Info,
        format!(
            "{window}: closed at {}, moved to {} ({})",
            local(earliest_utc, tz),
            local(at, tz),
            rfc3339(at)
        ),
    );
    Decision::RetryAt(at.timestamp_millis())
}

/// The participant's time zone when the context names a valid one, else the configuration's:
/// the zone and which of the two it is, for the log. A name the database does not know is
/// logged and ignored.
fn time_zone(ctx: &RetryContext, default: Tz, out: &mut Output) -> (Tz, &'static str) {
    match ctx.time_zone.as_deref().filter(|z| !z.is_empty()) {
        None => (default, "the configured time zone"),
        Some(name) => match parse_time_zone(name) {
            Ok(tz) => (tz, "the participant's time zone"),
            Err(e) => {
                out.log(
                    LogLevel::Warn,
                    format!("the participant's time zone: {e}; using {default}"),
                );
                (default, "the configured time zone")
            }
        },
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .format("%a %Y-%m-%d %H:%M %Z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use callflow_sdk::retry::{RetryDecision, RetryTester};
    use expect_test::{Expect, expect};

    /// 2027-03-10 (a Wednesday) 10:00 UTC.
    const WED_10: i64 = 1_804_672_800_000;
    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;
    /// How long the tester's attempts ring.
    const RING: i64 = 30_000;

    fn tester(config: &str, now: i64) -> RetryTester<DefaultRetry> {
        let mut t = RetryTester::new(config);
        t.at(now);
        t
    }

    /// A decision and its logs as text.
    fn render(d: &RetryDecision) -> String {
        let mut s = match &d.decision {
            Decision::RetryAt(t) => format!(
                "retry at {}",
                rfc3339(DateTime::from_timestamp_millis(*t).unwrap())
            ),
            Decision::GiveUp(r) => format!("give up: {r}"),
        };
        for l in &d.logs {
            let level = match l.level {
                LogLevel::Debug => "debug",
                LogLevel::Info => "info",
                LogLevel::Warn => "warn",
                LogLevel::Error => "error",
            };
            s.push_str(&format!("\n  {level}: {}", l.message));
        }
        s
    }

    fn check(d: RetryDecision, expect: Expect) {
        expect.assert_eq(&render(&d));
    }

    #[test]
    fn the_clock_constant_is_what_it_says() {
        assert_eq!(
            rfc3339(DateTime::from_timestamp_millis(WED_10).unwrap()),
            "2027-03-10T10:00:00Z"
        );
    }

    #[test]
    fn defaults_retry_three_times_fifteen_minutes_apart() {
        let mut t = tester("{}", WED_10);
        check(
            t.attempt("busy", Some(486)).decide(),
            expect![[r#"
                retry at 2027-03-10T10:15:30Z
                  info: attempt 1 of 3 ended busy (SIP 486): retry after the fixed delay of 15 min, at 2027-03-10T10:15:30Z"#]],
        );
        let second = WED_10 + RING + 15 * MIN;
        assert_eq!(t.decide().decision, Decision::RetryAt(second));
        check(
            t.at(second).attempt("no-answer", None).decide(),
            expect![[r#"
                retry at 2027-03-10T10:31:00Z
                  info: attempt 2 of 3 ended no-answer: retry after the fixed delay of 15 min, at 2027-03-10T10:31:00Z"#]],
        );
        let third = second + RING + 15 * MIN;
        check(
            t.at(third).attempt("failed", Some(503)).decide(),
            expect![[r#"
                give up: max attempts (3) reached
                  info: attempt 3 of 3 ended failed (SIP 503): give up, max attempts (3) reached"#]],
        );
    }

    #[test]
    fn final_outcomes_and_unlisted_statuses_give_up() {
        let one = |config: &str, status: &str, sip: Option<u16>| {
            tester(config, WED_10).attempt(status, sip).decide()
        };
        check(
            one("{}", "completed", Some(200)),
            expect![[r#"
                give up: completed
                  info: attempt 1 of 3 ended completed (SIP 200): give up, completed"#]],
        );
        check(
            one("{}", "canceled", Some(487)),
            expect![[r#"
                give up: status canceled is not retried
                  info: attempt 1 of 3 ended canceled (SIP 487): give up, status canceled is not retried"#]],
        );
        check(
            one(r#"{"retry_statuses": ["busy"]}"#, "no-answer", None),
            expect![[r#"
                give up: status no-answer is not retried
                  info: attempt 1 of 3 ended no-answer: give up, status no-answer is not retried"#]],
        );
        check(
            one("{}", "in-progress", None),
            expect![[r#"
                give up: status in-progress is not retried
                  info: attempt 1 of 3 ended in-progress: give up, status in-progress is not retried"#]],
        );
        check(
            one(r#"{"retry_statuses": []}"#, "busy", Some(486)),
            expect![[r#"
                give up: status busy is not retried
                  info: attempt 1 of 3 ended busy (SIP 486): give up, status busy is not retried"#]],
        );
        // completed, when listed, is retried like any other
        let d = one(
            r#"{"retry_statuses": ["completed"]}"#,
            "completed",
            Some(200),
        );
        assert_eq!(d.decision, Decision::RetryAt(WED_10 + RING + 15 * MIN));
        check(
            tester("{}", WED_10).decide(),
            expect![[r#"
                give up: no attempt to retry
                  warn: asked without any attempt: give up"#]],
        );
    }

    #[test]
    fn terminal_sip_codes_give_up_at_once() {
        for code in callflow_callout_rules::config::DEFAULT_TERMINAL_SIP_CODES {
            let d = tester("{}", WED_10).attempt("failed", Some(code)).decide();
            assert_eq!(
                d.decision,
                Decision::give_up(format!("SIP {code} is terminal"))
            );
        }
        check(
            tester("{}", WED_10).attempt("failed", Some(404)).decide(),
            expect![[r#"
                give up: SIP 404 is terminal
                  info: attempt 1 of 3 ended failed (SIP 404): give up, SIP 404 is terminal"#]],
        );
        // temporarily unavailable, busy, declined, congestion: retried by default
        for code in [480, 486, 503, 603] {
            let d = tester("{}", WED_10).attempt("failed", Some(code)).decide();
            assert!(matches!(d.decision, Decision::RetryAt(_)), "{code}: {d:?}");
        }
        // a custom list replaces the default one
        let config = r#"{"terminal_sip_codes": [603]}"#;
        let d = tester(config, WED_10).attempt("busy", Some(603)).decide();
        assert_eq!(d.decision, Decision::give_up("SIP 603 is terminal"));
        let d = tester(config, WED_10).attempt("failed", Some(404)).decide();
        assert!(matches!(d.decision, Decision::RetryAt(_)), "{d:?}");
    }

    #[test]
    fn max_attempts_counts_the_first() {
        let d = tester(r#"{"max_attempts": 1}"#, WED_10)
            .attempt("busy", None)
            .decide();
        check(
            d,
            expect![[r#"
                give up: max attempts (1) reached
                  info: attempt 1 of 1 ended busy: give up, max attempts (1) reached"#]],
        );
        let mut t = tester(
            r#"{"max_attempts": 5, "delay": {"fixed_minutes": 1}}"#,
            WED_10,
        );
        let mut retries = 0;
        loop {
            t.attempt("no-answer", None);
            match t.decide().decision {
                Decision::RetryAt(at) => {
                    retries += 1;
                    t.at(at);
                }
                Decision::GiveUp(r) => {
                    assert_eq!(r, "max attempts (5) reached");
                    break;
                }
            }
        }
        assert_eq!(retries, 4);
    }

    #[test]
    fn exponential_delays_per_status_with_jitter() {
        let config = r#"{
            "max_attempts": 6,
            "delay": {"exponential": {"base_minutes": 5, "factor": 2.0, "max_minutes": 30,
                                      "jitter": 0.2}},
            "status_delays": {"busy": {"fixed_minutes": 2}}
        }"#;
        let mut t = tester(config, WED_10);
        let mut lines = Vec::new();
        for status in [
            "no-answer",
            "no-answer",
            "busy",
            "no-answer",
            "failed",
            "failed",
        ] {
            let d = t.attempt(status, None).decide();
            lines.push(render(&d));
            if let Decision::RetryAt(at) = d.decision {
                t.at(at);
            }
        }
        expect![[r#"
            retry at 2027-03-10T10:04:49Z
              info: attempt 1 of 6 ended no-answer: retry after 5 min × 2^0 = 5 min, jitter -13.6% → 4 min 19 s, at 2027-03-10T10:04:49Z
            retry at 2027-03-10T10:14:26Z
              info: attempt 2 of 6 ended no-answer: retry after 5 min × 2^1 = 10 min, jitter -8.9% → 9 min 7 s, at 2027-03-10T10:14:26Z
            retry at 2027-03-10T10:16:56Z
              info: attempt 3 of 6 ended busy: retry after the fixed delay of 2 min, at 2027-03-10T10:16:56Z
            retry at 2027-03-10T10:41:53Z
              info: attempt 4 of 6 ended no-answer: retry after 5 min × 2^3 capped at 30 min, jitter -18.5% → 24 min 27 s, at 2027-03-10T10:41:53Z
            retry at 2027-03-10T11:12:23Z
              info: attempt 5 of 6 ended failed: retry after 5 min × 2^4 capped at 30 min, jitter +14.7% → 30 min, at 2027-03-10T11:12:23Z
            give up: max attempts (6) reached
              info: attempt 6 of 6 ended failed: give up, max attempts (6) reached"#]].assert_eq(&lines.join("\n"));
    }

    #[test]
    fn jitter_is_deterministic_by_seed() {
        let config = r#"{"delay": {"exponential": {"base_minutes": 10, "jitter": 0.5}}}"#;
        let at = |seed: u64| {
            let mut t = tester(config, WED_10);
            t.ctx.seed = seed;
            match t.attempt("busy", None).decide().decision {
                Decision::RetryAt(at) => at - WED_10 - RING,
                d => panic!("{d:?}"),
            }
        };
        assert_eq!(at(1), at(1));
        assert_ne!(at(1), at(2));
        for seed in 0..500 {
            let delay = at(seed);
            assert!((5 * MIN..=15 * MIN).contains(&delay), "{seed}: {delay}");
        }
    }

    #[test]
    fn a_late_question_is_answered_with_now() {
        let mut t = tester("{}", WED_10);
        t.attempt("busy", None);
        t.at(WED_10 + 2 * HOUR);
        check(
            t.decide(),
            expect![[r#"
                retry at 2027-03-10T12:00:00Z
                  info: attempt 1 of 3 ended busy: retry after the fixed delay of 15 min, at 2027-03-10T12:00:00Z, which has passed: now"#]],
        );
    }

    const NAIROBI_WEEKDAYS: &str = r#"{"calling_hours": {"start": "08:00", "end": "20:00",
        "days": ["mon", "tue", "wed", "thu", "fri"], "time_zone": "Africa/Nairobi"}}"#;

    #[test]
    fn calling_hours_in_the_configured_time_zone() {
        // 10:00 UTC is 13:00 in Nairobi: open
        check(
            tester(NAIROBI_WEEKDAYS, WED_10)
                .attempt("busy", None)
                .decide(),
            expect![[r#"
                retry at 2027-03-10T10:15:30Z
                  info: attempt 1 of 3 ended busy: retry after the fixed delay of 15 min, at 2027-03-10T10:15:30Z
                  debug: calling hours 08:00-20:00 mon, tue, wed, thu, fri in Africa/Nairobi (the configured time zone): open at Wed 2027-03-10 13:15 EAT"#]],
        );
        // 16:50 UTC + 15 min is 20:05 in Nairobi: thursday morning
        check(
            tester(NAIROBI_WEEKDAYS, WED_10 + 6 * HOUR + 50 * MIN)
                .attempt("busy", None)
                .decide(),
            expect![[r#"
                retry at 2027-03-11T05:00:00Z
                  info: attempt 1 of 3 ended busy: retry after the fixed delay of 15 min, at 2027-03-10T17:05:30Z
                  info: calling hours 08:00-20:00 mon, tue, wed, thu, fri in Africa/Nairobi (the configured time zone): closed at Wed 2027-03-10 20:05 EAT, moved to Thu 2027-03-11 08:00 EAT (2027-03-11T05:00:00Z)"#]],
        );
        // friday evening: monday morning
        check(
            tester(NAIROBI_WEEKDAYS, WED_10 + 2 * 24 * HOUR + 8 * HOUR)
                .attempt("no-answer", None)
                .decide(),
            expect![[r#"
                retry at 2027-03-15T05:00:00Z
                  info: attempt 1 of 3 ended no-answer: retry after the fixed delay of 15 min, at 2027-03-12T18:15:30Z
                  info: calling hours 08:00-20:00 mon, tue, wed, thu, fri in Africa/Nairobi (the configured time zone): closed at Fri 2027-03-12 21:15 EAT, moved to Mon 2027-03-15 08:00 EAT (2027-03-15T05:00:00Z)"#]],
        );
    }

    #[test]
    fn the_participants_time_zone_wins() {
        let busy_in = |zone: &str| {
            let mut t = tester(NAIROBI_WEEKDAYS, WED_10);
            t.ctx.time_zone = Some(zone.into());
            t.attempt("busy", None).decide()
        };
        // 10:15 UTC is 05:15 in New York: three hours before the window opens there
        check(
            busy_in("America/New_York"),
            expect![[r#"
                retry at 2027-03-10T13:00:00Z
                  info: attempt 1 of 3 ended busy: retry after the fixed delay of 15 min, at 2027-03-10T10:15:30Z
                  info: calling hours 08:00-20:00 mon, tue, wed, thu, fri in America/New_York (the participant's time zone): closed at Wed 2027-03-10 05:15 EST, moved to Wed 2027-03-10 08:00 EST (2027-03-10T13:00:00Z)"#]],
        );
        // an unknown zone falls back to the configured one, and says so
        check(
            busy_in("Atlantis/Capital"),
            expect![[r#"
                retry at 2027-03-10T10:15:30Z
                  info: attempt 1 of 3 ended busy: retry after the fixed delay of 15 min, at 2027-03-10T10:15:30Z
                  warn: the participant's time zone: "Atlantis/Capital" is not an IANA time zone name such as Africa/Nairobi; using Africa/Nairobi
                  debug: calling hours 08:00-20:00 mon, tue, wed, thu, fri in Africa/Nairobi (the configured time zone): open at Wed 2027-03-10 13:15 EAT"#]],
        );
        // no zone anywhere: UTC
        let config = r#"{"calling_hours": {"start": "12:00", "end": "13:00"}}"#;
        check(
            tester(config, WED_10).attempt("busy", None).decide(),
            expect![[r#"
                retry at 2027-03-10T12:00:00Z
                  info: attempt 1 of 3 ended busy: retry after the fixed delay of 15 min, at 2027-03-10T10:15:30Z
                  info: calling hours 12:00-13:00 every day in UTC (the configured time zone): closed at Wed 2027-03-10 10:15 UTC, moved to Wed 2027-03-10 12:00 UTC (2027-03-10T12:00:00Z)"#]],
        );
    }

    #[test]
    fn a_night_window_and_daylight_saving_in_new_york() {
        // from 22:00 to 02:30 in New York; on 2027-03-14, 02:00 EST becomes 03:00 EDT
        let config = r#"{"delay": {"fixed_minutes": 60},
            "calling_hours": {"start": "22:00", "end": "02:30", "time_zone": "America/New_York"}}"#;
        // sat 20:30 EST + 1 h: 21:30, half an hour before opening
        let sat_2030_est = 1_804_987_800_000;
        check(
            tester(config, sat_2030_est).attempt("busy", None).decide(),
            expect![[r#"
                retry at 2027-03-14T03:00:00Z
                  info: attempt 1 of 3 ended busy: retry after the fixed delay of 1 h, at 2027-03-14T02:30:30Z
                  info: calling hours 22:00-02:30 every day in America/New_York (the configured time zone): closed at Sat 2027-03-13 21:30 EST, moved to Sat 2027-03-13 22:00 EST (2027-03-14T03:00:00Z)"#]],
        );
        // sun 01:00 EST + 1 h: 02:00 does not exist, 03:00 EDT is after the window: 22:00 EDT
        check(
            tester(config, sat_2030_est + 4 * HOUR + 30 * MIN)
                .attempt("busy", None)
                .decide(),
            expect![[r#"
                retry at 2027-03-15T02:00:00Z
                  info: attempt 1 of 3 ended busy: retry after the fixed delay of 1 h, at 2027-03-14T07:00:30Z
                  info: calling hours 22:00-02:30 every day in America/New_York (the configured time zone): closed at Sun 2027-03-14 03:00 EDT, moved to Sun 2027-03-14 22:00 EDT (2027-03-15T02:00:00Z)"#]],
        );
        // the fall-back night, 2027-11-07: 01:40 EDT + 1 h is 01:40 EST, still in the window
        let sun_0140_edt = 1_825_566_000_000;
        check(
            tester(config, sun_0140_edt).attempt("busy", None).decide(),
            expect![[r#"
                retry at 2027-11-07T06:40:30Z
                  info: attempt 1 of 3 ended busy: retry after the fixed delay of 1 h, at 2027-11-07T06:40:30Z
                  debug: calling hours 22:00-02:30 every day in America/New_York (the configured time zone): open at Sun 2027-11-07 01:40 EST"#]],
        );
    }

    #[test]
    fn a_bad_configuration_gives_up_and_says_why() {
        for config in [
            "not json",
            r#"{"max_attempts": 0}"#,
            r#"{"retry_statuses": ["canceled"]}"#,
            r#"{"delay": {"fixed_minutes": 0}}"#,
            r#"{"calling_hours": {"start": "08:00", "end": "08:00"}}"#,
            r#"{"unknown": 1}"#,
        ] {
            let d = tester(config, WED_10).attempt("busy", None).decide();
            assert!(
                matches!(&d.decision, Decision::GiveUp(r) if r.starts_with("invalid retry configuration: ")),
                "{config}: {d:?}"
            );
            assert_eq!(d.logs.len(), 1);
            assert_eq!(d.logs[0].level, LogLevel::Error);
        }
        check(
            tester(r#"{"delay": {"exponential": {"factor": 0}}}"#, WED_10)
                .attempt("busy", None)
                .decide(),
            expect![[r#"
                give up: invalid retry configuration: delay: factor is between 1 and 10, not 0
                  error: invalid retry configuration: delay: factor is between 1 and 10, not 0"#]],
        );
    }

    #[test]
    fn times_out_of_range_give_up_instead_of_panicking() {
        let ended_at = |config: &str, ms: i64| {
            let mut t = tester(config, ms);
            t.ctx.attempts.push(callflow_sdk::retry::Attempt {
                status: "busy".into(),
                sip_code: None,
                started_ms: ms,
                ended_ms: ms,
                duration_s: 0,
            });
            t.decide()
        };
        let d = ended_at("{}", i64::MAX - 1);
        assert!(
            matches!(&d.decision, Decision::GiveUp(r) if r.contains("out of range")),
            "{d:?}"
        );
        // a retry time UTC can hold but the wall clock ahead of UTC cannot
        let last_minute = DateTime::<Utc>::MAX_UTC.timestamp_millis() - 15 * MIN;
        let kiritimati = r#"{"calling_hours": {"start": "08:00", "end": "09:00",
            "time_zone": "Pacific/Kiritimati"}}"#;
        let d = ended_at(kiritimati, last_minute);
        assert!(
            matches!(&d.decision, Decision::GiveUp(r) if r.contains("never open")),
            "{d:?}"
        );
    }
}
