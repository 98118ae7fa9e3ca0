//! How long to wait before the next attempt: a fixed delay, or an exponential one with jitter
//! drawn from the invocation's seed (never from a clock or an entropy source, so a decision can be
//! replayed).

use serde::Deserialize;

/// The longest delay the configuration may ask for, in minutes: a week.
pub const MAX_DELAY_MINUTES: u32 = 7 * 24 * 60;

/// The largest growth factor: beyond it the second retry is already at the cap.
const MAX_FACTOR: f64 = 10.0;

/// The largest jitter: half the delay either way.
const MAX_JITTER: f64 = 0.5;

/// A delay as configured: `{"fixed_minutes": 15}`, `{"fixed_seconds": 30}` or
/// `{"exponential": {…}}`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub enum Delay {
    /// The same delay before every retry.
    #[serde(rename = "fixed_minutes")]
    Fixed(u32),
    /// The same delay in seconds, for short retries (a minute's precision is too coarse for a
    /// quick second try of a busy line, and for tests).
    #[serde(rename = "fixed_seconds")]
    FixedSeconds(u32),
    /// A delay that grows with every attempt.
    #[serde(rename = "exponential")]
    Exponential(Exponential),
}

/// `base_minutes × factor^(retry − 1)`, at most `max_minutes`, then moved by up to ±`jitter` of
/// itself (and again at most `max_minutes`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exponential {
    /// The delay before the first retry, before jitter.
    pub base_minutes: u32,
    /// How much each delay grows over the one before (1 to 10).
    pub factor: f64,
    /// The cap.
    pub max_minutes: u32,
    /// The fraction of the delay by which it may move either way (0 to 0.5).
    pub jitter: f64,
}

impl Default for Exponential {
    fn default() -> Self {
        Exponential {
            base_minutes: crate::config::DEFAULT_DELAY_MINUTES,
            factor: 2.0,
            max_minutes: 240,
            jitter: 0.0,
        }
    }
}

impl Delay {
    /// Checks the bounds; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        let minutes = |name: &str, m: u32| {
            if (1..=MAX_DELAY_MINUTES).contains(&m) {
                Ok(())
            } else {
                Err(format!(
                    "{name} is between 1 and {MAX_DELAY_MINUTES} (a week), not {m}"
                ))
            }
        };
        match *self {
            Delay::Fixed(m) => minutes("fixed_minutes", m),
            Delay::FixedSeconds(secs) => {
                if (1..=MAX_DELAY_MINUTES * 60).contains(&secs) {
                    Ok(())
                } else {
                    Err(format!(
                        "fixed_seconds is between 1 and {} (a week), not {secs}",
                        MAX_DELAY_MINUTES * 60
                    ))
                }
            }
            Delay::Exponential(e) => {
                minutes("base_minutes", e.base_minutes)?;
                minutes("max_minutes", e.max_minutes)?;
                if e.max_minutes < e.base_minutes {
                    return Err(format!(
                        "max_minutes ({}) is below base_minutes ({})",
                        e.max_minutes, e.base_minutes
                    ));
                }
                // `contains` is false for NaN too
                if !(1.0..=MAX_FACTOR).contains(&e.factor) {
                    return Err(format!(
                        "factor is between 1 and {MAX_FACTOR}, not {}",
                        e.factor
                    ));
                }
                if !(0.0..=MAX_JITTER).contains(&e.jitter) {
                    return Err(format!(
                        "jitter is between 0 and {MAX_JITTER}, not {}",
                        e.jitter
                    ));
                }
                Ok(())
            }
        }
    }

    /// The delay before retry number `retry` (1 for the retry after the first attempt) in
    /// milliseconds, and how it was computed, for the log.
    pub fn compute(&self, retry: u32, seed: u64) -> (i64, String) {
        match *self {
            Delay::Fixed(m) => {
                let ms = i64::from(m) * 60_000;
                (ms, format!("the fixed delay of {}", duration(ms)))
            }
            Delay::FixedSeconds(secs) => {
                let ms = i64::from(secs) * 1_000;
                (ms, format!("the fixed delay of {}", duration(ms)))
            }
            Delay::Exponential(e) => {
                let exponent = retry.saturating_sub(1);
                let base = f64::from(e.base_minutes) * 60_000.0;
                let max = f64::from(e.max_minutes) * 60_000.0;
                // at most 49 with a factor of at most 10: finite, and capped right away
                let grown = base * e.factor.powi(exponent as i32);
                let capped = grown.min(max);
                let mut how = format!("{} × {}^{exponent}", duration(base as i64), e.factor);
                if grown > max {
                    how.push_str(&format!(" capped at {}", duration(max as i64)));
                } else {
                    how.push_str(&format!(" = {}", duration(grown as i64)));
                }
                if e.jitter == 0.0 {
                    return (capped as i64, how);
                }
                // uniform in [-jitter, +jitter), and another draw for each retry even when a
                // host hands the same seed to every decision about a participant
                let shift = (2.0 * unit(seed, retry) - 1.0) * e.jitter;
                let ms = (capped * (1.0 + shift)).min(max).round() as i64;
                how.push_str(&format!(
                    ", jitter {:+.1}% → {}",
                    shift * 100.0,
                    duration(ms)
                ));
                (ms, how)
            }
        }
    }
}

/// The `n`th number in [0, 1) of the SplitMix64 sequence from `seed` (neighbouring seeds and
/// neighbouring `n` give unrelated numbers).
fn unit(seed: u64, n: u32) -> f64 {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut z = seed.wrapping_add(GAMMA.wrapping_mul(u64::from(n) + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // the top 53 bits, exactly representable
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// `ms` for people: `2 h 5 min`, `9 min 40 s`, `15 min`.
pub fn duration(ms: i64) -> String {
    let s = (ms + 500).div_euclid(1_000);
    let (d, h, m, s) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    let parts: Vec<String> = [(d, "d"), (h, "h"), (m, "min"), (s, "s")]
        .iter()
        .filter(|(n, _)| *n != 0)
        .map(|(n, unit)| format!("{n} {unit}"))
        .collect();
    if parts.is_empty() {
        "0 s".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn exp(base: u32, factor: f64, max: u32, jitter: f64) -> Delay {
        Delay::Exponential(Exponential {
            base_minutes: base,
            factor,
            max_minutes: max,
            jitter,
        })
    }

    /// The delays before retries 1..=n, one per line.
    fn check(delay: Delay, n: u32, seed: u64, expect: Expect) {
        let lines: Vec<String> = (1..=n)
            .map(|retry| {
                let (ms, how) = delay.compute(retry, seed);
                format!("{retry}: {ms} ms ({how})")
            })
            .collect();
        expect.assert_eq(&lines.join("\n"));
    }

    #[test]
    fn fixed_is_fixed() {
        check(
            Delay::Fixed(15),
            3,
            7,
            expect![[r#"
                1: 900000 ms (the fixed delay of 15 min)
                2: 900000 ms (the fixed delay of 15 min)
                3: 900000 ms (the fixed delay of 15 min)"#]],
        );
    }

    #[test]
    fn fixed_seconds_are_seconds_and_bounded() {
        check(
            Delay::FixedSeconds(90),
            2,
            7,
            expect![[r#"
                1: 90000 ms (the fixed delay of 1 min 30 s)
                2: 90000 ms (the fixed delay of 1 min 30 s)"#]],
        );
        assert!(Delay::FixedSeconds(0).check().is_err());
        assert!(
            Delay::FixedSeconds(MAX_DELAY_MINUTES * 60 + 1)
                .check()
                .is_err()
        );
        assert!(Delay::FixedSeconds(1).check().is_ok());
    }

    #[test]
    fn exponential_grows_to_its_cap() {
        check(
            exp(5, 2.0, 60, 0.0),
            6,
            7,
            expect![[r#"
                1: 300000 ms (5 min × 2^0 = 5 min)
                2: 600000 ms (5 min × 2^1 = 10 min)
                3: 1200000 ms (5 min × 2^2 = 20 min)
                4: 2400000 ms (5 min × 2^3 = 40 min)
                5: 3600000 ms (5 min × 2^4 capped at 1 h)
                6: 3600000 ms (5 min × 2^5 capped at 1 h)"#]],
        );
        // a huge exponent stays finite and capped
        let (ms, _) = exp(10_080, 10.0, 10_080, 0.5).compute(49, 1);
        assert!(ms <= 10_080 * 60_000);
        assert!(ms >= 5_040 * 60_000);
    }

    #[test]
    fn jitter_moves_the_delay_within_its_bounds_and_follows_the_seed() {
        check(
            exp(5, 2.0, 240, 0.2),
            3,
            42,
            expect![[r#"
                1: 259189 ms (5 min × 2^0 = 5 min, jitter -13.6% → 4 min 19 s)
                2: 546864 ms (5 min × 2^1 = 10 min, jitter -8.9% → 9 min 7 s)
                3: 1125212 ms (5 min × 2^2 = 20 min, jitter -6.2% → 18 min 45 s)"#]],
        );
        let delay = exp(10, 1.5, 240, 0.2);
        for retry in 1..=4 {
            let (plain, _) = exp(10, 1.5, 240, 0.0).compute(retry, 0);
            let mut seen = std::collections::BTreeSet::new();
            for seed in 0..1_000 {
                let (ms, _) = delay.compute(retry, seed);
                assert!(
                    (plain as f64 * 0.8 - 1.0..=plain as f64 * 1.2 + 1.0).contains(&(ms as f64)),
                    "retry {retry} seed {seed}: {ms} vs {plain}"
                );
                // the same seed, the same delay
                assert_eq!(delay.compute(retry, seed).0, ms);
                seen.insert(ms);
            }
            // spread over the range, not stuck at a few values
            assert!(seen.len() > 900, "{}", seen.len());
            let (lo, hi) = (*seen.first().unwrap(), *seen.last().unwrap());
            assert!(lo < (plain as f64 * 0.82) as i64, "{lo}");
            assert!(hi > (plain as f64 * 1.18) as i64, "{hi}");
        }
        // at the cap, jitter only shortens
        let capped = exp(60, 2.0, 60, 0.5);
        for seed in 0..200 {
            assert!(capped.compute(3, seed).0 <= 3_600_000);
        }
    }

    #[test]
    fn unit_is_in_range() {
        for seed in [0, 1, u64::MAX, 0x9e37_79b9_7f4a_7c15_u64.wrapping_neg()] {
            let u = unit(seed, 0);
            assert!((0.0..1.0).contains(&u), "{seed}: {u}");
        }
    }

    #[test]
    fn durations_read_well() {
        let out: Vec<String> = [0, 499, 40_000, 900_000, 7_500_000, 90_061_000]
            .into_iter()
            .map(duration)
            .collect();
        expect![[r#"0 s, 0 s, 40 s, 15 min, 2 h 5 min, 1 d 1 h 1 min 1 s"#]]
            .assert_eq(&out.join(", "));
    }
}
