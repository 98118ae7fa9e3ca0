//! The callout scheduler: turns running callouts' due participants into queued calls (the
//! dispatcher places them), within each callout's calls per second, concurrency cap and calling
//! hours, and asks the retry policy what to do after every attempt's final status.
//!
//! All of its state is in the store (see `callflow_store::callouts`): each pass reads what is
//! due and moves it on with guarded statements, so after a crash the next run carries on where
//! the last one stopped, and no participant is called twice for one decision. The only memory
//! it keeps is each callout's token bucket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callflow_callout_rules::hours::{CallingHours, parse_calling_hours, parse_time_zone};
use callflow_runtime::World;
use callflow_runtime::retry::{Attempt, Decision, RetryContext};
use callflow_store::{
    Call, CallLogEntry, Callout, CalloutStatus, LogLevel, LogSource, NewAttempt, Participant, Pin,
    Settlement, Store, StoreError,
};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Engine;
use crate::clock::now_ms;
use crate::node::Share;
use crate::plugins::{HostError, PluginHost, pin_for_call, pinned};
use crate::rate::{TokenBucket, smooth_burst};

/// Attempts live at once per callout when it sets no `MaxConcurrent`.
pub const DEFAULT_MAX_CONCURRENT: i64 = 50;

/// The host's own cap on attempts per participant, whatever a retry plugin decides (SCFM's
/// absolute cap is 10; the built-in policy allows up to 50).
pub const MAX_ATTEMPTS: usize = 50;

/// Participants claimed per callout per pass, and settled per pass.
const CLAIM_BATCH: u32 = 100;
const SETTLE_BATCH: u32 = 100;

/// The retry policy every account has unless it binds its own.
const DEFAULT_RETRY: &str = "retry";

/// Runs callouts. Cloning shares it.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    plugins: PluginHost,
    /// Each running callout's calls-per-second bucket, and the share of the rate it was made for.
    buckets: Mutex<HashMap<String, (Share, TokenBucket)>>,
}

impl Scheduler {
    pub fn new(engine: Engine, plugins: PluginHost) -> Scheduler {
        Scheduler {
            inner: Arc::new(Inner {
                engine,
                plugins,
                buckets: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Runs until `stop` turns true, as two tasks: claims (at once when woken, when a bucket
    /// refills, and at least every second) and retry decisions (when an attempt ends, and at
    /// least every second). Decisions run plugins, which can be slow the first time (a
    /// compile); claims never wait for them.
    pub fn start(self, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let claims = {
            let me = self.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                me.finish_interrupted_stops().await;
                loop {
                    let wake = match me.pass(now_ms()).await {
                        Ok(w) => w,
                        Err(e) => {
                            tracing::error!(error = %e, "callout pass failed");
                            None
                        }
                    };
                    let pause = wake.map_or(1_000, |w| (w - now_ms()).clamp(1, 1_000)) as u64;
                    tokio::select! {
                        () = me.inner.engine.callouts.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(pause)) => {}
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        let decisions = {
            let mut stop = stop;
            tokio::spawn(async move {
                loop {
                    match self.settle(now_ms()).await {
                        // more may be waiting: go on at once
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => tracing::error!(error = %e, "retry decisions failed"),
                    }
                    tokio::select! {
                        () = self.inner.engine.settle.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        vec![claims, decisions]
    }

    /// A stop cancels its pending participants in chunks after the callout is marked stopped;
    /// a crash in between leaves some pending, finished here.
    async fn finish_interrupted_stops(&self) {
        let store = self.store();
        match store.stopped_with_pending().await {
            Ok(sids) => {
                for sid in sids {
                    match store.cancel_pending(&sid, now_ms()).await {
                        Ok(n) => tracing::info!(callout = %sid, n, "finished an interrupted stop"),
                        Err(e) => {
                            tracing::error!(callout = %sid, error = %e, "finishing a stop failed")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "looking for interrupted stops failed"),
        }
    }

    fn store(&self) -> &Store {
        self.inner.plugins.store()
    }

    /// One pass of claims: due participants of every running callout. Returns when the next
    /// pass is wanted, if sooner than the regular poll.
    pub async fn pass(&self, now: i64) -> Result<Option<i64>, StoreError> {
        let mut wake: Option<i64> = None;
        let running = self.store().running_callouts().await?;
        self.forget_buckets(&running);
        for c in &running {
            if let Some(w) = self.schedule(c, now).await? {
                wake = Some(wake.map_or(w, |x| x.min(w)));
            }
        }
        Ok(wake)
    }

    fn lock_buckets(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Share, TokenBucket)>> {
        self.inner.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_buckets(&self, running: &[Callout]) {
        self.lock_buckets()
            .retain(|sid, _| running.iter().any(|c| &c.sid == sid));
    }

    /// Claims what one callout may start now; returns when to look again.
    async fn schedule(&self, c: &Callout, now: i64) -> Result<Option<i64>, StoreError> {
        if let Some(at) = c.start_at.filter(|&at| at > now) {
            return Ok(Some(at));
        }
        let store = self.store();
        let cap = c.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT).max(1);
        let live = store.calling_participants(&c.sid).await?;
        let room = (cap - live).clamp(0, i64::from(CLAIM_BATCH)) as u32;
        if room == 0 {
            // An attempt ending wakes the scheduler.
            return Ok(None);
        }
        let mut n = room;
        if let Some(cps) = c.calls_per_second {
            // this node's share of the callout's rate (the cap is kept by the claim itself)
            let share = self.inner.engine.share();
            let mut buckets = self.lock_buckets();
            let (_, b) = buckets
                .entry(c.sid.clone())
                .and_modify(|(s, b)| {
                    if *s != share {
                        let cps = share.rate(cps);
                        *s = share;
                        *b = TokenBucket::new(cps, smooth_burst(cps), now);
                    }
                })
                .or_insert_with(|| {
                    let cps = share.rate(cps);
                    (share, TokenBucket::new(cps, smooth_burst(cps), now))
                });
            let mut probe = *b;
            n = 0;
            while n < room && probe.try_take(now) {
                n += 1;
            }
            if n == 0 {
                return Ok(Some(b.ready_at(now)));
            }
        }
        let due = store.due_participants(&c.sid, now, n).await?;
        if due.is_empty() {
            if live == 0 {
                self.complete_if_finished(c, now).await?;
            }
            return Ok(None);
        }
        let (ready, deferred) = split_by_hours(c, &due, now);
        for (at, sids) in deferred {
            store.defer_participants(&sids, at, now).await?;
        }
        if ready.is_empty() {
            return Ok(Some(now + 1));
        }
        let template = c.template()?;
        let plugins = pin_for_call(
            store,
            &c.account_sid,
            template.phone_number_sid.as_deref(),
            Some(&c.sid),
        )
        .await?;
        let attempts: Vec<NewAttempt> = ready
            .iter()
            .map(|p| NewAttempt {
                participant_sid: p.sid.clone(),
                call: template.call_to(&p.phone, plugins.clone()),
            })
            .collect();
        let calls = store
            .start_attempts(&c.account_sid, c, &attempts, cap, now)
            .await?;
        if let Some((_, b)) = self.lock_buckets().get_mut(&c.sid) {
            for _ in &calls {
                b.try_take(now);
            }
        }
        if !calls.is_empty() {
            tracing::debug!(callout = %c.sid, n = calls.len(), "attempts queued");
            metrics::counter!("callflow_callout_attempts_total").increment(calls.len() as u64);
            self.inner.engine.calls_queued();
        }
        // A full batch means more may be due at once.
        Ok((due.len() as u32 == n).then_some(now + 1))
    }

    async fn complete_if_finished(&self, c: &Callout, now: i64) -> Result<(), StoreError> {
        let store = self.store();
        if store.callout_finished(&c.sid).await? {
            match store
                .set_callout_status(&c.account_sid, &c.sid, CalloutStatus::Completed, now)
                .await
            {
                Ok(_) => tracing::info!(callout = %c.sid, "callout completed"),
                Err(StoreError::Conflict(_)) => {} // paused or stopped meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Asks the retry policy about a batch of participants whose attempt has ended; true when
    /// the batch was full (more may be waiting).
    pub async fn settle(&self, now: i64) -> Result<bool, StoreError> {
        let store = self.store();
        let mut callouts: HashMap<String, Option<Callout>> = HashMap::new();
        let batch = store.settling_participants(SETTLE_BATCH, now).await?;
        let mut decided = 0;
        for p in &batch {
            if !callouts.contains_key(&p.callout_sid) {
                let c = store.callout(&p.account_sid, &p.callout_sid).await?;
                callouts.insert(p.callout_sid.clone(), c);
            }
            let Some(Some(c)) = callouts.get(&p.callout_sid) else {
                continue;
            };
            match self.decide(c, p, now).await? {
                Verdict::Settled(settlement, attempt) => {
                    // applied once, by whichever node got there first; only that one logs it
                    if store.settle_participant(&p.sid, &settlement, now).await? {
                        decided += 1;
                        if let Some(call) = attempt {
                            let entry = CallLogEntry::RetryDecision(settlement);
                            store.append_call_event(&call, now, &entry).await?;
                        }
                    }
                }
                Verdict::Later(at) => {
                    store.postpone_settling(&p.sid, at, now).await?;
                }
            }
        }
        if decided > 0 {
            // retries are due, or slots are free
            self.inner.engine.callouts.notify_one();
        }
        Ok(decided > 0 && batch.len() == SETTLE_BATCH as usize)
    }

    /// What to do after a participant's latest attempt: the host's own rules first (a stopped
    /// callout, the attempt cap), then the bound retry policy. A policy that could not run for
    /// a reason of the moment (no plugin thread free in time) is asked again later, with
    /// backoff, for up to [`UNDECIDED_FOR_AT_MOST_MS`] after the attempt ended.
    async fn decide(&self, c: &Callout, p: &Participant, now: i64) -> Result<Verdict, StoreError> {
        let calls = self.store().participant_calls(&p.sid).await?;
        let Some(last) = calls.last() else {
            return Ok(Verdict::Settled(
                Settlement::Done {
                    outcome: "errored".into(),
                    reason: "no attempt was recorded".into(),
                },
                None,
            ));
        };
        let status = last.status().as_str().to_owned();
        if c.status() == CalloutStatus::Stopped {
            return Ok(Verdict::Settled(
                Settlement::Done {
                    outcome: status,
                    reason: "the callout was stopped".into(),
                },
                Some(last.sid.clone()),
            ));
        }
        if calls.len() >= MAX_ATTEMPTS {
            return Ok(Verdict::Settled(
                Settlement::Done {
                    outcome: status,
                    reason: format!("the host's limit of {MAX_ATTEMPTS} attempts"),
                },
                Some(last.sid.clone()),
            ));
        }
        let settlement = match self.ask_policy(c, p, &calls, now).await {
            Ok(Decision::RetryAt(at)) => Settlement::Retry { at: at.max(now) },
            Ok(Decision::GiveUp(reason)) => Settlement::Done {
                outcome: status,
                reason,
            },
            Err(e) => {
                let ended = last.end_time.unwrap_or(last.date_updated);
                if let Some(at) = ask_again_at(&e, ended, now) {
                    tracing::warn!(participant = %p.sid, error = %e, retry_in_ms = at - now,
                        "retry policy could not run; asking again later");
                    let note = format!(
                        "the retry policy could not run ({e}); asked again in {} s",
                        (at - now + 999) / 1_000
                    );
                    let entry = CallLogEntry::log(LogSource::Retry, LogLevel::Warn, note);
                    self.store().log_call_event(&last.sid, now, &entry);
                    return Ok(Verdict::Later(at));
                }
                tracing::warn!(participant = %p.sid, error = %e, "retry policy failed");
                Settlement::Done {
                    outcome: "errored".into(),
                    reason: format!("the retry policy failed: {e}"),
                }
            }
        };
        Ok(Verdict::Settled(settlement, Some(last.sid.clone())))
    }

    /// Runs the participant's retry policy: the retry-policy plugin pinned on the attempt (the
    /// account's, number's or callout's binding), or the built-in one. The callout's own
    /// `RetryConfig`, when not empty, is the configuration; otherwise the binding's.
    async fn ask_policy(
        &self,
        c: &Callout,
        p: &Participant,
        calls: &[Call],
        now: i64,
    ) -> Result<Decision, HostError> {
        let last = calls
            .last()
            .ok_or_else(|| HostError::Load("no attempt".into()))?;
        let pin = pinned(last, World::RetryPolicy).unwrap_or_else(|| Pin::builtin(DEFAULT_RETRY));
        let config = if c.retry_config.trim().is_empty() || c.retry_config.trim() == "{}" {
            pin.config.clone()
        } else {
            c.retry_config.clone()
        };
        let ctx = RetryContext {
            account_sid: c.account_sid.clone(),
            callout_id: Some(c.sid.clone()),
            participant_id: Some(p.sid.clone()),
            to: p.phone.clone(),
            time_zone: Some(p.time_zone.clone().unwrap_or_else(|| c.time_zone.clone())),
            now_ms: now,
            seed: seed_of(&p.sid, calls.len()),
            config,
            attempts: calls.iter().map(attempt_of).collect(),
            metadata: p.metadata.clone(),
        };
        let decision = self
            .inner
            .plugins
            .decide_retry(&pin, &last.sid, ctx)
            .await?;
        Ok(decision.decision)
    }
}

/// What [`Scheduler::decide`] concluded about a settling participant.
#[derive(Debug)]
enum Verdict {
    /// Decided, for the attempt (call) it follows, if there was one.
    Settled(Settlement, Option<String>),
    /// The policy could not run just now: ask again at this time.
    Later(i64),
}

/// How long after an attempt ended its participant may wait for a retry policy that cannot
/// run for reasons of the moment, before it ends `errored`.
pub const UNDECIDED_FOR_AT_MOST_MS: i64 = 15 * 60_000;

/// When to ask a retry policy again after `e`, for an attempt that ended at `ended`: `None`
/// when asking again would not help (the plugin's own failure) or has been tried long enough.
/// The wait doubles with the time already waited, from 1 s up to a minute.
fn ask_again_at(e: &HostError, ended: i64, now: i64) -> Option<i64> {
    if !e.is_transient() || now - ended >= UNDECIDED_FOR_AT_MOST_MS {
        return None;
    }
    Some(now + (now - ended).clamp(1_000, 60_000))
}

fn attempt_of(c: &Call) -> Attempt {
    Attempt {
        status: c.status().as_str().to_owned(),
        sip_code: c.sip_response_code.and_then(|s| u16::try_from(s).ok()),
        started_ms: c.start_time.unwrap_or(c.date_created),
        ended_ms: c.end_time.unwrap_or(c.date_updated),
        duration_s: c.duration.and_then(|d| u32::try_from(d).ok()).unwrap_or(0),
    }
}

/// A seed for the policy's jitter that is the same for the same decision (FNV-1a).
fn seed_of(participant: &str, attempt: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in participant.bytes().chain((attempt as u64).to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Splits due participants into those whose calling hours are open now and those to defer,
/// grouped by when their window next opens. A callout without calling hours calls anyone now;
/// a window that never opens (or cannot be read) defers by a day, and is logged.
fn split_by_hours(
    c: &Callout,
    due: &[Participant],
    now: i64,
) -> (Vec<Participant>, Vec<(i64, Vec<String>)>) {
    let Some(text) = c.calling_hours.as_deref() else {
        return (due.to_vec(), Vec::new());
    };
    let hours = match parse_calling_hours(text) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(callout = %c.sid, error = %e, "unreadable calling hours; calling anyway");
            return (due.to_vec(), Vec::new());
        }
    };
    let mut ready = Vec::new();
    let mut later: HashMap<i64, Vec<String>> = HashMap::new();
    for p in due {
        match next_open(&hours, c, p, now) {
            Some(at) if at <= now => ready.push(p.clone()),
            Some(at) => later.entry(at).or_default().push(p.sid.clone()),
            None => {
                tracing::warn!(participant = %p.sid, "calling hours never open; deferring a day");
                later
                    .entry(now + 86_400_000)
                    .or_default()
                    .push(p.sid.clone());
            }
        }
    }
    let mut later: Vec<_> = later.into_iter().collect();
    later.sort();
    (ready, later)
}

/// When the participant's window is next open, in their time zone (the callout's when they have
/// none, the window's own when neither reads).
fn next_open(hours: &CallingHours, c: &Callout, p: &Participant, now: i64) -> Option<i64> {
    let tz = p
        .time_zone
        .as_deref()
        .and_then(|t| parse_time_zone(t).ok())
        .or_else(|| parse_time_zone(&c.time_zone).ok())
        .unwrap_or(hours.time_zone);
    let at = DateTime::<Utc>::from_timestamp_millis(now)?;
    hours.next_open(tz, at).map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callout(hours: Option<&str>, tz: &str) -> Callout {
        Callout {
            seq: 1,
            sid: "CO1".into(),
            account_sid: "AC1".into(),
            name: "n".into(),
            status: CalloutStatus::Running,
            call_template: "{}".into(),
            calls_per_second: None,
            max_concurrent: None,
            calling_hours: hours.map(str::to_owned),
            time_zone: tz.into(),
            start_at: None,
            priority: 0,
            retry_config: "{}".into(),
            metadata: "{}".into(),
            date_created: 0,
            date_updated: 0,
            date_started: None,
            date_finished: None,
        }
    }

    fn person(sid: &str, tz: Option<&str>) -> Participant {
        Participant {
            seq: 1,
            sid: sid.into(),
            callout_sid: "CO1".into(),
            account_sid: "AC1".into(),
            phone: "+1555".into(),
            time_zone: tz.map(str::to_owned),
            metadata: "{}".into(),
            state: callflow_store::ParticipantState::Pending,
            outcome: None,
            reason: None,
            attempts: 0,
            next_at: 0,
            call_sid: None,
            date_created: 0,
            date_updated: 0,
        }
    }

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn calling_hours_follow_each_participants_time_zone() {
        // 09:00-17:00 local; at 06:00 UTC it is 09:00 in Nairobi (UTC+3) and 01:00 in New York
        // (UTC-5 in January), and 06:00 at the callout's default, UTC.
        let c = callout(Some(r#"{"start":"09:00","end":"17:00"}"#), "UTC");
        let now = ms("2026-01-15T06:00:00Z");
        let due = [
            person("nairobi", Some("Africa/Nairobi")),
            person("new-york", Some("America/New_York")),
            person("default", None),
        ];
        let (ready, later) = split_by_hours(&c, &due, now);
        let ready: Vec<_> = ready.iter().map(|p| p.sid.as_str()).collect();
        assert_eq!(ready, ["nairobi"]);
        assert_eq!(
            later,
            [
                (ms("2026-01-15T09:00:00Z"), vec!["default".to_owned()]),
                (ms("2026-01-15T14:00:00Z"), vec!["new-york".to_owned()]),
            ]
        );
    }

    #[test]
    fn without_calling_hours_everyone_is_called_now() {
        let c = callout(None, "UTC");
        let (ready, later) = split_by_hours(&c, &[person("a", None)], 5);
        assert_eq!(ready.len(), 1);
        assert!(later.is_empty());
    }

    #[test]
    fn a_policy_that_could_not_run_is_asked_again_with_backoff_for_a_while() {
        use callflow_runtime::InvokeError;
        let busy = HostError::Invoke(InvokeError::Overloaded("the pool is full".into()));
        let ended = 1_000_000;
        let waits: Vec<_> = [0, 500, 3_000, 40_000, 120_000, UNDECIDED_FOR_AT_MOST_MS - 1]
            .into_iter()
            .map(|waited| ask_again_at(&busy, ended, ended + waited).map(|at| at - ended - waited))
            .collect();
        assert_eq!(
            waits,
            [
                Some(1_000),
                Some(1_000),
                Some(3_000),
                Some(40_000),
                Some(60_000),
                Some(60_000)
            ]
        );
        // long enough: it ends errored
        assert_eq!(
            ask_again_at(&busy, ended, ended + UNDECIDED_FOR_AT_MOST_MS),
            None
        );
        // the plugin's own failure would repeat: at once
        let own = HostError::Invoke(InvokeError::Timeout { limit_ms: 10 });
        assert_eq!(ask_again_at(&own, ended, ended), None);
    }

    #[test]
    fn seeds_differ_by_attempt_and_repeat_for_the_same_one() {
        assert_eq!(seed_of("CP1", 1), seed_of("CP1", 1));
        assert_ne!(seed_of("CP1", 1), seed_of("CP1", 2));
        assert_ne!(seed_of("CP1", 1), seed_of("CP2", 1));
    }
}
