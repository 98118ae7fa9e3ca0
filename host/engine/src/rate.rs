//! A token bucket, time passed in: the API's per-account request limit and the SIP dispatcher's
//! calls per second per trunk both use it.

/// Refills at `per_second` tokens a second up to `burst`; each admitted event takes one token.
/// Time is an argument (milliseconds); a clock that goes backwards refills nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last_ms: i64,
}

/// Slack for floating-point rounding, so a token [`TokenBucket::ready_at`] promises is there.
const SLACK: f64 = 1e-9;

impl TokenBucket {
    /// A full bucket. `burst` below 1 is raised to 1 (a smaller bucket could never give a
    /// token); a `per_second` that is not a positive number means the bucket never refills.
    pub fn new(per_second: f64, burst: f64, now_ms: i64) -> Self {
        let per_second = if per_second.is_finite() && per_second > 0.0 {
            per_second
        } else {
            0.0
        };
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        TokenBucket {
            per_second,
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes one token if there is one at `now_ms`.
    pub fn try_take(&mut self, now_ms: i64) -> bool {
        self.tokens = self.tokens_at(now_ms);
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens >= 1.0 - SLACK {
            self.tokens = (self.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }

    /// The earliest millisecond at which a token is available: `now_ms` if one is now,
    /// `i64::MAX` if the bucket never refills.
    pub fn ready_at(&self, now_ms: i64) -> i64 {
        let tokens = self.tokens_at(now_ms);
        if tokens >= 1.0 - SLACK {
            return now_ms;
        }
        if self.per_second == 0.0 {
            return i64::MAX;
        }
        // measured from the last refill, so asking from a clock behind it stays consistent
        let from = self.last_ms.max(now_ms);
        let wait = ((1.0 - tokens) * 1000.0 / self.per_second).ceil();
        from.saturating_add(wait as i64)
    }

    fn tokens_at(&self, now_ms: i64) -> f64 {
        let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        (self.tokens + elapsed * self.per_second).min(self.burst)
    }
}

/// The burst of a bucket that paces calls smoothly: one call, plus 50 ms worth of tolerance. A
/// pacer wakes a little late now and then; without the tolerance each late wake-up would lose
/// its lateness from the rate (a wake-up 3 ms late at 10 calls a second costs 3%), with it the
/// lateness is made up by the next call, and an idle bucket still lets out at most one call
/// ahead of the schedule by 50 ms.
pub fn smooth_burst(per_second: f64) -> f64 {
    1.0 + per_second.max(0.0) * 0.05
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pacer that always wakes 3 ms after the promised moment keeps its rate with the
    /// smooth burst, and would lose 3% of it with a burst of exactly one call.
    #[test]
    fn late_wake_ups_do_not_cost_a_smooth_pacer_its_rate() {
        let rate_with = |burst: f64| {
            let mut b = TokenBucket::new(10.0, burst, 0);
            let mut now = 0;
            let mut taken = Vec::new();
            while taken.len() < 601 {
                if b.try_take(now) {
                    taken.push(now);
                } else {
                    now = b.ready_at(now) + 3;
                }
            }
            600_000.0 / (taken[600] - taken[0]) as f64
        };
        let smooth = rate_with(smooth_burst(10.0));
        assert!((smooth - 10.0).abs() < 0.01, "{smooth}");
        let strict = rate_with(1.0);
        assert!(strict < 9.75, "{strict}");
    }

    #[test]
    fn starts_full_and_empties_by_the_burst() {
        let mut b = TokenBucket::new(2.0, 3.0, 0);
        assert_eq!((0..5).filter(|_| b.try_take(0)).count(), 3);
        assert!(!b.try_take(0));
        assert!(!b.try_take(499));
        assert!(b.try_take(500), "one token refills in 500 ms at 2/s");
        assert!(!b.try_take(500));
        // a long idle period refills only up to the burst
        assert_eq!((0..10).filter(|_| b.try_take(100_000)).count(), 3);
    }

    #[test]
    fn steady_rate_over_a_long_run() {
        // 10 per second, asked every millisecond for 60 s: the burst plus 600
        let mut b = TokenBucket::new(10.0, 5.0, 0);
        let taken = (0..60_000).filter(|&t| b.try_take(t)).count();
        assert_eq!(
            taken,
            5 + 599,
            "the 600th refill would land at 60 000 ms, just after the run"
        );
        let mut slow = TokenBucket::new(0.5, 1.0, 0);
        let times: Vec<i64> = (0..10_000).filter(|&t| slow.try_take(t)).collect();
        assert_eq!(times, [0, 2000, 4000, 6000, 8000]);
    }

    #[test]
    fn ready_at_is_when_try_take_first_succeeds() {
        for rate in [0.3, 1.0, 3.0, 7.0, 10.0, 33.3, 1000.0, 2500.0] {
            let mut b = TokenBucket::new(rate, 1.0, 1_000);
            assert_eq!(b.ready_at(1_000), 1_000, "full: now");
            assert!(b.try_take(1_000));
            let mut now = 1_000;
            for _ in 0..20 {
                let at = b.ready_at(now);
                assert!(at > now || rate >= 1000.0, "rate {rate}: {at} after {now}");
                if at > now {
                    assert!(
                        !b.clone().try_take(at - 1),
                        "rate {rate}: early at {}",
                        at - 1
                    );
                }
                assert!(b.try_take(at), "rate {rate}: promised at {at}");
                now = at;
            }
        }
    }

    #[test]
    fn odd_parameters_and_clocks() {
        let mut never = TokenBucket::new(0.0, 1.0, 0);
        assert!(never.try_take(0));
        assert_eq!(never.ready_at(10), i64::MAX);
        assert!(!never.try_take(1_000_000));
        let mut nan = TokenBucket::new(f64::NAN, f64::NAN, 0);
        assert!(nan.try_take(0) && !nan.try_take(10_000));

        let mut small = TokenBucket::new(1.0, 0.2, 0);
        assert!(small.try_take(0), "a burst below 1 still gives one token");
        assert_eq!(small.ready_at(0), 1_000);

        // a clock that steps back neither refills nor moves the promise earlier
        let mut b = TokenBucket::new(1.0, 1.0, 5_000);
        assert!(b.try_take(5_000));
        assert!(!b.try_take(4_000));
        assert_eq!(b.ready_at(4_000), 6_000);
        assert!(!b.try_take(5_999));
        assert!(b.try_take(6_000));
    }
}
