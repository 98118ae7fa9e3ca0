//! Calling hours: a daily window of local time, on some days of the week, in a time zone, and
//! the first moment at or after a given instant when it is open; their JSON form
//! ([`parse_calling_hours`]) and IANA time zone names ([`parse_time_zone`], the database compiled
//! in: a plugin's sandbox has no file system).
//!
//! The window is judged by the wall clock where the participant is. Across daylight-saving
//! changes that means:
//! - an opening time the clock skips (02:30 on a spring-forward night) opens the window at the
//!   first minute after the gap (03:00);
//! - an opening time the clock shows twice (01:30 on a fall-back night) opens it the first time
//!   that is still ahead; an hour the clock repeats is open or closed as its wall time says, but
//!   re-entering the window by the clock going back is not counted as an opening (the next
//!   opening is then the next `start`, a little later than strictly possible, never earlier).

use chrono::{
    DateTime, Datelike, Days, NaiveDateTime, NaiveTime, Offset, TimeDelta, TimeZone, Timelike, Utc,
    Weekday,
};
use chrono_tz::Tz;
use serde::Deserialize;

/// How many days ahead an opening is looked for: a week covers every day of it once more.
const SEARCH_DAYS: u64 = 8;

/// How far past a skipped local time the end of its gap is looked for, in minutes. Gaps are an
/// hour or two; the longest on record (Samoa, December 2011) is a whole day.
const MAX_GAP_MINUTES: u32 = 26 * 60;

/// A daily window, `start` included and `end` excluded; when `end <= start` it runs over
/// midnight into the next day. `days` name the days a window opens on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallingHours {
    /// Minutes after midnight, 0 to 1439.
    pub start: u16,
    /// Minutes after midnight, 1 to 1440.
    pub end: u16,
    /// Monday first.
    pub days: [bool; 7],
    /// Where the window is when the participant's own time zone is not known.
    pub time_zone: Tz,
}

impl CallingHours {
    fn crosses_midnight(&self) -> bool {
        self.end <= self.start
    }

    fn opens_on(&self, date: chrono::NaiveDate) -> bool {
        self.days[date.weekday().num_days_from_monday() as usize]
    }

    /// Whether the window is open at the wall time `local`.
    pub fn is_open(&self, local: NaiveDateTime) -> bool {
        let minute = (local.time().num_seconds_from_midnight() / 60) as u16;
        let today = self.opens_on(local.date());
        if !self.crosses_midnight() {
            return today && (self.start..self.end).contains(&minute);
        }
        // the evening part opened today, the morning part yesterday
        let yesterday = local.date().pred_opt().is_some_and(|d| self.opens_on(d));
        (today && minute >= self.start) || (yesterday && minute < self.end)
    }

    /// `at` when the window is open then in `tz`, else its next opening (the first instant at its
    /// `start`, or just after a gap that skips it); `None` when it does not open within a week (a
    /// window that falls wholly into clock gaps every day, or a date out of range).
    pub fn next_open(&self, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = wall_time(tz, at)?;
        if self.is_open(local) {
            return Some(at);
        }
        // when closed, the window next opens at `start` on one of its days
        let start = NaiveTime::from_num_seconds_from_midnight_opt(u32::from(self.start) * 60, 0)?;
        for ahead in 0..=SEARCH_DAYS {
            let date = local.date().checked_add_days(Days::new(ahead))?;
            if !self.opens_on(date) {
                continue;
            }
            let opening = instants(tz, date.and_time(start))
                .into_iter()
                .find(|t| *t >= at && wall_time(tz, *t).is_some_and(|l| self.is_open(l)));
            if opening.is_some() {
                return opening;
            }
        }
        None
    }

    /// `08:00-20:00 mon, tue` or `22:00-06:00 every day`, for the log.
    pub fn describe(&self) -> String {
        const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let days = if self.days == [true; 7] {
            "every day".to_owned()
        } else {
            let names: Vec<&str> = NAMES
                .iter()
                .zip(self.days)
                .filter(|(_, on)| *on)
                .map(|(n, _)| *n)
                .collect();
            names.join(", ")
        };
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        format!("{}-{} {days}", hm(self.start), hm(self.end))
    }
}

/// Calling hours as written (`days` and `time_zone` optional), not yet checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHours {
    start: String,
    end: String,
    days: Option<Vec<String>>,
    time_zone: Option<String>,
}

impl RawHours {
    /// Checks the window as written: times, days and time zone.
    pub(crate) fn check(self) -> Result<CallingHours, String> {
        let start = minute_of_day(&self.start, false).map_err(|e| format!("start: {e}"))?;
        let end = minute_of_day(&self.end, true).map_err(|e| format!("end: {e}"))?;
        if start == end {
            return Err(format!(
                "start and end are both {}: an empty window (a whole day is 00:00 to 24:00)",
                self.start
            ));
        }
        let mut days = [self.days.is_none(); 7];
        for day in self.days.iter().flatten() {
            days[weekday(day)?.num_days_from_monday() as usize] = true;
        }
        if days == [false; 7] {
            return Err("days is empty: the window would never open".into());
        }
        let time_zone = match self.time_zone {
            None => Tz::UTC,
            Some(name) => parse_time_zone(&name).map_err(|e| format!("time_zone: {e}"))?,
        };
        Ok(CallingHours {
            start,
            end,
            days,
            time_zone,
        })
    }
}

/// `HH:MM` as minutes since midnight; `24:00` only for an end.
fn minute_of_day(text: &str, is_end: bool) -> Result<u16, String> {
    let bad = || format!("{text:?} is not a time of day as HH:MM");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    match (h, m) {
        (24, 0) if is_end => Ok(24 * 60),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

fn weekday(day: &str) -> Result<Weekday, String> {
    Ok(match day {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        other => {
            return Err(format!(
                "days are mon, tue, wed, thu, fri, sat, sun, not {other:?}"
            ));
        }
    })
}

/// Calling hours on their own, in the retry configuration's `calling_hours` form
/// (`{"start": "08:00", "end": "20:00", "days": ["mon"], "time_zone": "Africa/Nairobi"}`): the
/// host keeps a callout's window in this form and checks it before every attempt.
pub fn parse_calling_hours(json: &str) -> Result<CallingHours, String> {
    if json.len() > crate::config::MAX_CONFIG_BYTES {
        return Err("calling hours are too long".into());
    }
    let raw: RawHours = serde_json::from_str(json).map_err(|e| e.to_string())?;
    raw.check()
}

/// An IANA time zone name (`Africa/Nairobi`), as the compiled-in database knows it.
pub fn parse_time_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("{name:?} is not an IANA time zone name such as Africa/Nairobi"))
}

/// The wall time in `tz` at `t`; `None` past the calendar's range (about year 262,000), where
/// `DateTime::naive_local` would panic.
fn wall_time(tz: Tz, t: DateTime<Utc>) -> Option<NaiveDateTime> {
    let offset = tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    t.naive_utc().checked_add_offset(offset)
}

/// The instants whose wall time in `tz` is `local`, earliest first: one, two when the clock shows
/// `local` twice, and for a wall time the clock skips, the first whole minute after the gap.
fn instants(tz: Tz, local: NaiveDateTime) -> Vec<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => vec![t.to_utc()],
        chrono::LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.to_utc(), b.to_utc());
            vec![a.min(b), a.max(b)]
        }
        chrono::LocalResult::None => (1..=MAX_GAP_MINUTES)
            .filter_map(|m| local.checked_add_signed(TimeDelta::minutes(i64::from(m))))
            .find_map(|probe| tz.from_local_datetime(&probe).earliest())
            .map(|t| t.to_utc())
            .into_iter()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::New_York;

    fn hours(start: &str, end: &str, days: &[usize]) -> CallingHours {
        let minutes = |s: &str| {
            let (h, m) = s.split_once(':').unwrap();
            h.parse::<u16>().unwrap() * 60 + m.parse::<u16>().unwrap()
        };
        let mut on = [days.is_empty(); 7];
        for d in days {
            on[*d] = true;
        }
        CallingHours {
            start: minutes(start),
            end: minutes(end),
            days: on,
            time_zone: Tz::UTC,
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    /// `next_open` from each instant, as `local wall time (UTC)` lines.
    fn check(h: &CallingHours, tz: Tz, from: &[&str], expect: expect_test::Expect) {
        let lines: Vec<String> = from
            .iter()
            .map(|f| {
                let at = utc(f);
                let line = match h.next_open(tz, at) {
                    None => "never".to_owned(),
                    Some(t) if t == at => "open now".to_owned(),
                    Some(t) => format!(
                        "{} ({})",
                        t.with_timezone(&tz).format("%a %Y-%m-%d %H:%M %Z"),
                        t.format("%Y-%m-%dT%H:%MZ")
                    ),
                };
                format!(
                    "{} -> {line}",
                    at.with_timezone(&tz).format("%a %m-%d %H:%M %Z")
                )
            })
            .collect();
        expect.assert_eq(&lines.join("\n"));
    }

    #[test]
    fn a_daytime_window() {
        check(
            &hours("08:00", "20:00", &[]),
            Tz::UTC,
            &[
                "2027-03-10T07:59:00Z",
                "2027-03-10T08:00:00Z",
                "2027-03-10T19:59:59Z",
                "2027-03-10T20:00:00Z",
                "2027-03-10T23:30:00Z",
            ],
            expect_test::expect![[r#"
                Wed 03-10 07:59 UTC -> Wed 2027-03-10 08:00 UTC (2027-03-10T08:00Z)
                Wed 03-10 08:00 UTC -> open now
                Wed 03-10 19:59 UTC -> open now
                Wed 03-10 20:00 UTC -> Thu 2027-03-11 08:00 UTC (2027-03-11T08:00Z)
                Wed 03-10 23:30 UTC -> Thu 2027-03-11 08:00 UTC (2027-03-11T08:00Z)"#]],
        );
    }

    #[test]
    fn windows_across_midnight() {
        // fri and sat nights: the saturday and sunday mornings belong to them
        check(
            &hours("22:00", "06:00", &[4, 5]),
            Tz::UTC,
            &[
                "2027-03-11T23:00:00Z", // thu night: closed
                "2027-03-12T05:00:00Z", // fri morning: thursday's night, closed
                "2027-03-12T22:00:00Z", // fri night
                "2027-03-13T05:59:00Z", // sat morning, friday's night
                "2027-03-13T06:00:00Z", // sat, closed until the night
                "2027-03-14T05:00:00Z", // sun morning, saturday's night
                "2027-03-14T07:00:00Z", // sun: next friday
            ],
            expect_test::expect![[r#"
                Thu 03-11 23:00 UTC -> Fri 2027-03-12 22:00 UTC (2027-03-12T22:00Z)
                Fri 03-12 05:00 UTC -> Fri 2027-03-12 22:00 UTC (2027-03-12T22:00Z)
                Fri 03-12 22:00 UTC -> open now
                Sat 03-13 05:59 UTC -> open now
                Sat 03-13 06:00 UTC -> Sat 2027-03-13 22:00 UTC (2027-03-13T22:00Z)
                Sun 03-14 05:00 UTC -> open now
                Sun 03-14 07:00 UTC -> Fri 2027-03-19 22:00 UTC (2027-03-19T22:00Z)"#]],
        );
        // a window up to midnight and a whole day
        check(
            &hours("18:00", "24:00", &[]),
            Tz::UTC,
            &["2027-03-10T23:59:00Z", "2027-03-11T00:00:00Z"],
            expect_test::expect![[r#"
                Wed 03-10 23:59 UTC -> open now
                Thu 03-11 00:00 UTC -> Thu 2027-03-11 18:00 UTC (2027-03-11T18:00Z)"#]],
        );
        check(
            &hours("00:00", "24:00", &[0]),
            Tz::UTC,
            &[
                "2027-03-14T23:59:00Z",
                "2027-03-15T23:59:00Z",
                "2027-03-16T00:00:00Z",
            ],
            expect_test::expect![[r#"
                Sun 03-14 23:59 UTC -> Mon 2027-03-15 00:00 UTC (2027-03-15T00:00Z)
                Mon 03-15 23:59 UTC -> open now
                Tue 03-16 00:00 UTC -> Mon 2027-03-22 00:00 UTC (2027-03-22T00:00Z)"#]],
        );
    }

    #[test]
    fn weekdays_only_skip_the_weekend() {
        check(
            &hours("09:00", "17:00", &[0, 1, 2, 3, 4]),
            chrono_tz::Africa::Nairobi,
            &[
                "2027-03-12T14:30:00Z",
                "2027-03-13T08:00:00Z",
                "2027-03-15T05:00:00Z",
            ],
            expect_test::expect![[r#"
                Fri 03-12 17:30 EAT -> Mon 2027-03-15 09:00 EAT (2027-03-15T06:00Z)
                Sat 03-13 11:00 EAT -> Mon 2027-03-15 09:00 EAT (2027-03-15T06:00Z)
                Mon 03-15 08:00 EAT -> Mon 2027-03-15 09:00 EAT (2027-03-15T06:00Z)"#]],
        );
    }

    #[test]
    fn the_same_window_in_different_time_zones() {
        let h = hours("08:00", "20:00", &[]);
        let at = "2027-03-10T18:00:00Z";
        for (tz, expect) in [
            (
                Tz::UTC,
                expect_test::expect!["Wed 03-10 18:00 UTC -> open now"],
            ),
            (
                chrono_tz::Africa::Nairobi,
                expect_test::expect![
                    "Wed 03-10 21:00 EAT -> Thu 2027-03-11 08:00 EAT (2027-03-11T05:00Z)"
                ],
            ),
            (
                chrono_tz::Asia::Phnom_Penh,
                expect_test::expect![
                    "Thu 03-11 01:00 +07 -> Thu 2027-03-11 08:00 +07 (2027-03-11T01:00Z)"
                ],
            ),
            (
                New_York,
                expect_test::expect!["Wed 03-10 13:00 EST -> open now"],
            ),
            (
                chrono_tz::Asia::Kolkata,
                expect_test::expect![
                    "Wed 03-10 23:30 IST -> Thu 2027-03-11 08:00 IST (2027-03-11T02:30Z)"
                ],
            ),
            (
                chrono_tz::Pacific::Kiritimati,
                expect_test::expect!["Thu 03-11 08:00 +14 -> open now"],
            ),
        ] {
            check(&h, tz, &[at], expect);
        }
    }

    #[test]
    fn spring_forward_in_new_york() {
        // 2027-03-14: 02:00 EST becomes 03:00 EDT, at 07:00 UTC
        check(
            &hours("02:30", "05:00", &[]),
            New_York,
            &[
                "2027-03-14T06:00:00Z",
                "2027-03-14T06:59:00Z",
                "2027-03-14T07:00:00Z",
            ],
            expect_test::expect![[r#"
                Sun 03-14 01:00 EST -> Sun 2027-03-14 03:00 EDT (2027-03-14T07:00Z)
                Sun 03-14 01:59 EST -> Sun 2027-03-14 03:00 EDT (2027-03-14T07:00Z)
                Sun 03-14 03:00 EDT -> open now"#]],
        );
        // a window wholly inside the gap does not open that night
        check(
            &hours("02:00", "02:45", &[]),
            New_York,
            &["2027-03-14T06:30:00Z"],
            expect_test::expect![
                "Sun 03-14 01:30 EST -> Mon 2027-03-15 02:00 EDT (2027-03-15T06:00Z)"
            ],
        );
        // an ordinary window on that day is an hour shorter, and opens at 08:00 EDT
        check(
            &hours("08:00", "20:00", &[]),
            New_York,
            &[
                "2027-03-14T06:00:00Z",
                "2027-03-14T23:59:00Z",
                "2027-03-15T00:00:00Z",
            ],
            expect_test::expect![[r#"
                Sun 03-14 01:00 EST -> Sun 2027-03-14 08:00 EDT (2027-03-14T12:00Z)
                Sun 03-14 19:59 EDT -> open now
                Sun 03-14 20:00 EDT -> Mon 2027-03-15 08:00 EDT (2027-03-15T12:00Z)"#]],
        );
    }

    #[test]
    fn fall_back_in_new_york() {
        // 2027-11-07: 02:00 EDT becomes 01:00 EST, at 06:00 UTC; 01:xx happens twice
        let h = hours("01:30", "04:00", &[]);
        check(
            &h,
            New_York,
            &[
                "2027-11-07T04:00:00Z", // 00:00 EDT: the first 01:30
                "2027-11-07T05:45:00Z", // 01:45 EDT: open
                "2027-11-07T06:10:00Z", // 01:10 EST: the second 01:30
                "2027-11-07T06:45:00Z", // 01:45 EST: open
                "2027-11-07T09:00:00Z", // 04:00 EST: closed until tomorrow
            ],
            expect_test::expect![[r#"
                Sun 11-07 00:00 EDT -> Sun 2027-11-07 01:30 EDT (2027-11-07T05:30Z)
                Sun 11-07 01:45 EDT -> open now
                Sun 11-07 01:10 EST -> Sun 2027-11-07 01:30 EST (2027-11-07T06:30Z)
                Sun 11-07 01:45 EST -> open now
                Sun 11-07 04:00 EST -> Mon 2027-11-08 01:30 EST (2027-11-08T06:30Z)"#]],
        );
        // the clock going back into a window reopens it only at the next start
        check(
            &hours("00:30", "01:30", &[]),
            New_York,
            &["2027-11-07T05:45:00Z", "2027-11-07T06:10:00Z"],
            expect_test::expect![[r#"
                Sun 11-07 01:45 EDT -> Mon 2027-11-08 00:30 EST (2027-11-08T05:30Z)
                Sun 11-07 01:10 EST -> open now"#]],
        );
    }

    #[test]
    fn describe_reads_well() {
        assert_eq!(
            hours("08:00", "20:00", &[]).describe(),
            "08:00-20:00 every day"
        );
        assert_eq!(
            hours("22:00", "06:30", &[0, 4, 6]).describe(),
            "22:00-06:30 mon, fri, sun"
        );
        assert_eq!(hours("00:00", "24:00", &[5]).describe(), "00:00-24:00 sat");
    }

    #[test]
    fn instants_cover_gaps_folds_and_samoa() {
        let local = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
        assert_eq!(
            instants(New_York, local("2027-03-14 02:30")),
            [utc("2027-03-14T07:00:00Z")]
        );
        assert_eq!(
            instants(New_York, local("2027-11-07 01:30")),
            [utc("2027-11-07T05:30:00Z"), utc("2027-11-07T06:30:00Z")]
        );
        // Samoa skipped 2011-12-30 whole
        assert_eq!(
            instants(chrono_tz::Pacific::Apia, local("2011-12-30 09:00")),
            [utc("2011-12-30T10:00:00Z")]
        );
    }
}
