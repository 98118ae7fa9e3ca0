//! Per-account request rate limiting: a token bucket per account, time passed in.

use std::collections::HashMap;
use std::sync::Mutex;

/// Requests per second with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: i64,
}

impl Bucket {
    /// Refills for the time since the last request, then takes one token if there is one.
    fn take(&mut self, now_ms: i64, limit: RateLimit) -> bool {
        let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * limit.per_second).min(limit.burst);
        self.last_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Buckets for every account seen. Bounded by the number of accounts, which are ours.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn allow(&self, account: &str, now_ms: i64, limit: RateLimit) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(account.to_owned()).or_insert(Bucket {
            tokens: limit.burst,
            last_ms: now_ms,
        });
        bucket.take(now_ms, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate_per_account() {
        let l = Limiter::default();
        let lim = RateLimit {
            per_second: 2.0,
            burst: 3.0,
        };
        let allowed = (0..5).filter(|_| l.allow("A", 0, lim)).count();
        assert_eq!(allowed, 3);
        assert!(l.allow("B", 0, lim), "another account has its own bucket");
        assert!(!l.allow("A", 400, lim));
        assert!(l.allow("A", 500, lim), "one token refills in 500 ms at 2/s");
        assert!(!l.allow("A", 500, lim));
        // a long idle period refills only up to the burst
        assert_eq!((0..10).filter(|_| l.allow("A", 100_000, lim)).count(), 3);
    }
}
