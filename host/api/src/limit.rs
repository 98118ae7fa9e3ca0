//! Per-account request rate limiting: a token bucket ([`TokenBucket`]) per account, time passed in.

use std::collections::HashMap;
use std::sync::Mutex;

use callflow_engine::rate::TokenBucket;

/// Requests per second with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

/// Buckets for every account seen. Bounded by the number of accounts, which are ours.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl Limiter {
    pub fn allow(&self, account: &str, now_ms: i64, limit: RateLimit) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(account.to_owned())
            .or_insert_with(|| TokenBucket::new(limit.per_second, limit.burst, now_ms));
        bucket.try_take(now_ms)
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
