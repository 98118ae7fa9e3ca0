//! The outbound dispatcher: takes queued API calls out through the default trunk, highest
//! priority first, then oldest, while every limit allows: the trunk's calls per second and
//! channels, the global cap on dispatched calls, and each account's calls per second and
//! concurrent calls. A call whose account is at its limit waits without holding up other
//! accounts' calls.

use std::collections::HashMap;
use std::sync::MutexGuard;
use std::time::Duration;

use tokio::sync::watch;

use super::Telephony;
use super::route::Route;
use crate::clock::now_ms;
use crate::node::Share;
use crate::rate::{TokenBucket, smooth_burst};

/// Queued calls the dispatcher reads at a time.
const QUEUE_PAGE: u32 = 100;

/// Limits on the dispatcher beyond each trunk's own; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DispatchLimits {
    /// Outbound calls live at once, all accounts together.
    pub max_calls: usize,
    /// Calls each account may start per second.
    pub account_calls_per_second: f64,
    /// Outbound calls each account may have live at once.
    pub account_max_calls: usize,
    /// Where `<Dial><Sip>` may call: public addresses only unless private ones are allowed.
    pub sip_uris: crate::webhook::EgressPolicy,
}

impl Telephony {
    /// The dispatcher's loop; it ends when `stop` turns true.
    pub(super) async fn dispatch(self, mut stop: watch::Receiver<bool>) {
        let Some(trunk) = self.inner.trunks.default_trunk().cloned() else {
            return;
        };
        let limits = self.inner.limits;
        // every rate and cap is this node's share of it (see `node::Share`): the buckets
        // are made again when the share changes
        let mut share = self.inner.engine.share();
        let trunk_bucket = |share: Share| {
            let cps = share.rate(trunk.cps);
            TokenBucket::new(cps, smooth_burst(cps), now_ms())
        };
        let mut bucket = trunk_bucket(share);
        let mut accounts: HashMap<String, TokenBucket> = HashMap::new();
        // Where the next page of the queue starts: calls an account's limit skipped stay behind
        // while the dispatcher reads on, so they never hold up other accounts' calls.
        let mut cursor: Option<(i64, i64)> = None;
        loop {
            let now_share = self.inner.engine.share();
            if now_share != share {
                share = now_share;
                bucket = trunk_bucket(share);
                accounts.clear();
            }
            // Calls marked sent leave the queue; the few between the read and the mark are
            // skipped as live below.
            let batch = match self.store().queued_calls(QUEUE_PAGE, cursor).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "reading the call queue failed");
                    Vec::new()
                }
            };
            // When to look again if nothing else wakes us: a second, or sooner when an
            // account's bucket refills.
            let mut wake = now_ms() + 1_000;
            let mut blocked = false;
            let full = batch.len() == QUEUE_PAGE as usize;
            let last = batch.last().map(|c| (c.priority, c.seq));
            for call in batch {
                if self.inner.engine.live.contains(&call.sid) {
                    continue;
                }
                let now = now_ms();
                if limits.account_calls_per_second > 0.0 {
                    let b = accounts.entry(call.account_sid.clone()).or_insert_with(|| {
                        let cps = share.rate(limits.account_calls_per_second);
                        TokenBucket::new(cps, smooth_burst(cps), now)
                    });
                    let ready = b.ready_at(now);
                    if ready > now {
                        wake = wake.min(ready);
                        continue;
                    }
                }
                if limits.account_max_calls != 0
                    && self.dispatched(&call.account_sid) >= share.cap(limits.account_max_calls)
                {
                    continue;
                }
                if limits.max_calls != 0 && self.dispatched_total() >= share.cap(limits.max_calls) {
                    blocked = true;
                    break;
                }
                // Smooth rate: wait for the trunk's token, then for a free channel.
                loop {
                    let now = now_ms();
                    if bucket.try_take(now) {
                        break;
                    }
                    let wait = (bucket.ready_at(now) - now).clamp(1, 1_000) as u64;
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        _ = stop.changed() => return,
                    }
                }
                loop {
                    let freed = self.inner.freed.notified();
                    if self.take_channel(&trunk) {
                        break;
                    }
                    tokio::select! {
                        () = freed => {}
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => return,
                    }
                }
                if *stop.borrow() {
                    return;
                }
                if let Some(b) = accounts.get_mut(&call.account_sid) {
                    b.try_take(now_ms());
                }
                // Registered before the task starts, so the next queue read skips it.
                let channel = self.register_live(&call.sid);
                let account = call.account_sid.clone();
                self.count_dispatched(&account, true);
                let me = self.clone();
                let route = Route::Trunk(trunk.clone());
                tokio::spawn(async move {
                    me.clone().place(call, route, channel, None, None).await;
                    me.count_dispatched(&account, false);
                });
            }
            if full && !blocked {
                cursor = last;
                continue;
            }
            cursor = None;
            let freed = self.inner.freed.notified();
            let pause = Duration::from_millis((wake - now_ms()).clamp(1, 1_000) as u64);
            tokio::select! {
                () = self.inner.engine.dispatch.notified() => {}
                () = freed, if blocked => {}
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Outbound calls the dispatcher has sent that have not ended, of `account`.
    fn dispatched(&self, account: &str) -> usize {
        self.lock_dispatched().get(account).copied().unwrap_or(0)
    }

    fn dispatched_total(&self) -> usize {
        self.lock_dispatched().values().sum()
    }

    fn count_dispatched(&self, account: &str, up: bool) {
        let mut d = self.lock_dispatched();
        let n = d.entry(account.to_owned()).or_insert(0);
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                d.remove(account);
            }
            drop(d);
            self.inner.freed.notify_waiters();
        }
    }

    fn lock_dispatched(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.inner
            .dispatched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}
