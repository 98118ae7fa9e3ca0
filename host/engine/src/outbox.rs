//! The delivery outbox worker: sends persisted webhooks, records every attempt, and retries
//! transient failures with exponential backoff. Rows are claimed with a lease, so a crash or a
//! restart never loses a webhook; it is sent again once the lease runs out. It also carries
//! call-events plugins' work (see `events`): a `call-event` row runs the call's plugin, and the
//! `plugin-request` rows it asks for are sent as the plugin wrote them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use callflow_store::{AttemptOutcome, Delivery, Store};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::clock::now_ms;
use crate::events::{CALL_EVENT, EVENT_MAX_ATTEMPTS, EventError, PLUGIN_REQUEST};
use crate::plugins::PluginHost;
use crate::webhook::{Method, WebhookClient, WebhookError, WebhookRequest};

/// When to try again after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: i64,
    pub max_ms: i64,
    /// Attempts in all, the first included; after the last one the delivery is given up.
    pub max_attempts: u32,
}

impl Default for Backoff {
    /// 5 s doubling to at most an hour, 15 attempts: retries span about seven hours.
    fn default() -> Self {
        Backoff {
            base_ms: 5_000,
            max_ms: 3_600_000,
            max_attempts: 15,
        }
    }
}

impl Backoff {
    /// When to retry after the `attempts`-th failed attempt (1-based) at `now`; `None` to give up.
    pub fn retry_at(&self, attempts: u32, now: i64) -> Option<i64> {
        if attempts >= self.max_attempts {
            return None;
        }
        let exp = attempts.saturating_sub(1).min(30);
        let delay = self.base_ms.saturating_mul(1 << exp).min(self.max_ms);
        Some(now + delay)
    }

    /// When to run a call event again after its `attempts`-th run failed with `e`: the
    /// plugin's own failure is tried [`EVENT_MAX_ATTEMPTS`] times, one of the moment (plugin
    /// threads busy, the database out of reach) as long as a webhook would be.
    fn event_retry_at(&self, e: &EventError, attempts: u32, now: i64) -> Option<i64> {
        if e.transient || attempts < EVENT_MAX_ATTEMPTS {
            self.retry_at(attempts, now)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub backoff: Backoff,
    /// How long a claimed delivery stays invisible to other claims; longer than a request can take.
    pub lease: Duration,
    /// Deliveries claimed per round.
    pub batch: u32,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// The node whose claims these are (see `cluster`).
    pub node: Arc<str>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            backoff: Backoff::default(),
            lease: Duration::from_secs(60),
            batch: 64,
            concurrency: 16,
            node: Arc::from(crate::node::NodeConfig::default().name),
        }
    }
}

/// Handle to the outbox; `wake` after enqueueing so the worker does not wait for its next poll.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    client: WebhookClient,
    config: OutboxConfig,
    wake: Arc<Notify>,
    /// Runs call-events plugins; without one their events fail (and are retried a few times).
    plugins: Option<PluginHost>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How long the worker sleeps at most when nothing is due (new rows also wake it).
const IDLE_POLL: Duration = Duration::from_secs(30);

impl Outbox {
    pub fn new(store: Store, client: WebhookClient, config: OutboxConfig) -> Self {
        Outbox {
            store,
            client,
            config,
            wake: Arc::new(Notify::new()),
            plugins: None,
        }
    }

    /// The outbox that runs call-events plugins with `plugins` (at construction, before it is
    /// shared).
    pub fn with_plugins(mut self, plugins: PluginHost) -> Self {
        self.plugins = Some(plugins);
        self
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The node whose claims these are.
    pub fn node(&self) -> Arc<str> {
        Arc::clone(&self.config.node)
    }

    /// Runs until `shutdown` turns true, then finishes the requests in flight. What this node's
    /// previous run had claimed (and may have been sending when it died) is due at once.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        match self
            .store
            .release_deliveries(&self.config.node, now_ms())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "webhook deliveries the previous run held are due again"),
            Err(e) => tracing::warn!(error = %e, "outbox: cannot free the previous run's claims"),
        }
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut in_flight = JoinSet::new();
        while !*shutdown.borrow() {
            // Claim only what can start now: a claimed row's lease runs from the claim, so one
            // left waiting for a permit could be claimed again, and sent twice, once it ran out.
            let free = u32::try_from(permits.available_permits()).unwrap_or(u32::MAX);
            if free == 0 {
                tokio::select! {
                    _ = in_flight.join_next() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let now = now_ms();
            let lease = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX);
            let claimed = match self
                .store
                .claim_deliveries(now, lease, self.config.batch.min(free), &self.config.node)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "outbox: cannot claim deliveries");
                    Vec::new()
                }
            };
            let got_some = !claimed.is_empty();
            for d in claimed {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let me = self.clone();
                in_flight.spawn(async move {
                    me.deliver(d).await;
                    drop(permit);
                });
            }
            while in_flight.try_join_next().is_some() {}
            if got_some {
                continue;
            }
            let sleep = match self.store.next_delivery_due().await {
                Ok(Some(due)) => {
                    Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)).min(IDLE_POLL)
                }
                _ => IDLE_POLL,
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => {}
            }
        }
        while in_flight.join_next().await.is_some() {}
    }

    async fn deliver(&self, d: Delivery) {
        if d.webhook.kind == CALL_EVENT {
            return self.run_event(d).await;
        }
        let started = Instant::now();
        let result = self.attempt(&d).await;
        let at = now_ms();
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let attempts = u32::try_from(d.attempts + 1).unwrap_or(u32::MAX);
        let (status_code, error, retry) = match result {
            Ok(status) if (200..300).contains(&status) => (Some(status), None, false),
            // redirects are not followed (the target could be anywhere): not delivered
            Ok(status) if status < 400 => (
                Some(status),
                Some(format!("HTTP {status} (redirects are not followed)")),
                false,
            ),
            // the receiver refused it; trying again will not change its mind
            Ok(status) if status < 500 && status != 408 && status != 429 => {
                (Some(status), Some(format!("HTTP {status}")), false)
            }
            Ok(status) => (Some(status), Some(format!("HTTP {status}")), true),
            Err(e) => (None, Some(e.to_string()), e.is_transient()),
        };
        let retry_at = if retry {
            self.config.backoff.retry_at(attempts, at)
        } else {
            None
        };
        match &error {
            None => {
                metrics::counter!("callflow_webhook_deliveries_total", "result" => "delivered")
                    .increment(1);
                tracing::debug!(delivery = d.id, kind = %d.webhook.kind, "webhook delivered");
            }
            Some(err) if retry_at.is_some() => {
                metrics::counter!("callflow_webhook_deliveries_total", "result" => "retry")
                    .increment(1);
                tracing::info!(delivery = d.id, attempts, error = %err, "webhook failed, will retry");
            }
            Some(err) => {
                metrics::counter!("callflow_webhook_deliveries_total", "result" => "failed")
                    .increment(1);
                tracing::warn!(delivery = d.id, attempts, error = %err, "webhook given up");
            }
        }
        let outcome = AttemptOutcome {
            at,
            status_code,
            error,
            duration_ms,
            retry_at,
        };
        if let Err(e) = self.store.record_attempt(d.id, &outcome).await {
            // the lease will make it due again; at worst it is sent twice, never lost
            tracing::error!(delivery = d.id, error = %e, "outbox: cannot record attempt");
        }
        // the worker may be asleep until this row's lease ran out; a retry can be due much sooner
        self.wake();
    }

    /// Runs a call-event row's plugin and stores the requests it asked for with the attempt.
    async fn run_event(&self, d: Delivery) {
        let started = Instant::now();
        let result = match &self.plugins {
            Some(plugins) => crate::events::run_call_event(plugins, &d).await,
            None => Err(EventError::from(
                "call-events plugins are not run by this outbox",
            )),
        };
        let at = now_ms();
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let attempts = u32::try_from(d.attempts + 1).unwrap_or(u32::MAX);
        let (error, follow_ups) = match result {
            Ok(requests) => (None, requests),
            Err(e) => (Some(e), Vec::new()),
        };
        let retry_at = error
            .as_ref()
            .and_then(|e| self.config.backoff.event_retry_at(e, attempts, at));
        let error = error.map(|e| e.message);
        if let Some(err) = &error {
            tracing::warn!(delivery = d.id, call = ?d.webhook.call_sid, attempts, error = %err,
                retry = retry_at.is_some(), "call-events plugin failed");
        }
        let outcome = AttemptOutcome {
            at,
            status_code: None,
            error,
            duration_ms,
            retry_at,
        };
        match self
            .store
            .record_attempt_with(d.id, &outcome, &follow_ups)
            .await
        {
            Ok(stored) => {
                if stored < follow_ups.len() {
                    tracing::debug!(
                        delivery = d.id,
                        skipped = follow_ups.len() - stored,
                        "plugin requests already made (same idempotency key)"
                    );
                }
            }
            Err(e) => {
                tracing::error!(delivery = d.id, error = %e, "outbox: cannot record a call event");
            }
        }
        self.wake();
    }

    async fn attempt(&self, d: &Delivery) -> Result<u16, WebhookError> {
        if d.webhook.kind == PLUGIN_REQUEST {
            // as the plugin wrote it: its method, headers and body, unsigned
            let w = &d.webhook;
            let body = w.body.clone().unwrap_or_default();
            return self
                .client
                .request(&w.method, &w.url, &w.headers, body)
                .await;
        }
        let token = match self.store.account(&d.webhook.account_sid).await {
            Ok(Some(account)) => account.auth_token,
            Ok(None) => {
                return Err(WebhookError::InvalidUrl(
                    "the account no longer exists".into(),
                ));
            }
            Err(e) => return Err(WebhookError::Http(format!("store: {e}"))),
        };
        let method = Method::parse(&d.webhook.method).unwrap_or(Method::Post);
        let req = WebhookRequest {
            url: d.webhook.url.clone(),
            method,
            params: d.webhook.params.clone(),
        };
        self.client.send(&req, &token).await.map(|r| r.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_gives_up() {
        let b = Backoff {
            base_ms: 1_000,
            max_ms: 5_000,
            max_attempts: 5,
        };
        let delays: Vec<_> = (1..=5)
            .map(|n| b.retry_at(n, 100).map(|t| t - 100))
            .collect();
        assert_eq!(
            delays,
            [Some(1_000), Some(2_000), Some(4_000), Some(5_000), None]
        );
        let huge = Backoff {
            base_ms: i64::MAX / 2,
            max_ms: i64::MAX,
            max_attempts: 100,
        };
        assert!(huge.retry_at(60, 0).is_some());
    }

    #[test]
    fn a_call_event_that_failed_for_a_reason_of_the_moment_is_tried_as_long_as_a_webhook() {
        let b = Backoff::default();
        let own = EventError::from("the plugin trapped: unreachable");
        let moment = EventError {
            message: "plugin capacity is overloaded: too many plugin invocations are waiting"
                .into(),
            transient: true,
        };
        let tries = |e: &EventError| {
            (1..)
                .take_while(|&n| b.event_retry_at(e, n, 0).is_some())
                .count()
                + 1
        };
        assert_eq!(tries(&own), EVENT_MAX_ATTEMPTS as usize);
        assert_eq!(tries(&moment), b.max_attempts as usize);
        assert!(b.max_attempts > EVENT_MAX_ATTEMPTS);
    }
}
