//! Callouts, their participants, and the attempts (ordinary calls) made to them.
//!
//! A participant moves `pending` → `calling` (an attempt was queued, in the same transaction as
//! its call) → `settling` (the attempt's call ended: the `calls_settle_participant` trigger, in
//! the statement that ended it) → `pending` again (the retry policy asked for another attempt)
//! or `done`. Every step is one guarded statement or transaction, so a crash at any point leaves
//! a state the scheduler picks up again, and no participant is called twice for one decision.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use crate::calls::{AttemptLink, insert_call};
use crate::model::text_enum;
use crate::sid::{Sid, SidKind};
use crate::{
    Call, CallInstructions, CallStatus, Direction, NewCall, Page, PageRequest, Pins, Result, Store,
    StoreError,
};

const CALLOUT_COLUMNS: &str = "seq, sid, account_sid, name, status, call_template, calls_per_second,
    max_concurrent, calling_hours, time_zone, start_at, priority, retry_config, metadata, date_created,
    date_updated, date_started, date_finished";

const PARTICIPANT_COLUMNS: &str =
    "seq, sid, callout_sid, account_sid, phone, time_zone, metadata, state,
    outcome, reason, attempts, next_at, call_sid, date_created, date_updated";

/// Rows per multi-row INSERT when loading participants (4 parameters each, well under SQLite's
/// 32,766), and rows per transaction.
const INSERT_CHUNK: usize = 500;
const TRANSACTION_ROWS: usize = 5_000;
/// Participants cancelled per statement when a callout stops.
const CANCEL_CHUNK: i64 = 5_000;

text_enum! {
    pub enum CalloutStatus ("callout status") {
        Draft => "draft",
        Running => "running",
        Paused => "paused",
        Stopped => "stopped",
        Completed => "completed",
    }
}

impl CalloutStatus {
    /// Whether an operator (or the scheduler, for `completed`) may move a callout from `self`
    /// to `next`: draft → running (start); running ⇄ paused; any unfinished → stopped; running
    /// → completed when nobody is left; completed → running when participants are added.
    pub fn can_become(self, next: CalloutStatus) -> bool {
        use CalloutStatus::*;
        matches!(
            (self, next),
            (Draft | Paused | Completed, Running)
                | (Running, Paused | Completed)
                | (Draft | Running | Paused, Stopped)
        )
    }
}

text_enum! {
    pub enum ParticipantState ("participant state") {
        Pending => "pending",
        Calling => "calling",
        Settling => "settling",
        Done => "done",
    }
}

/// The call every attempt of a callout makes: `NewCall` without its `to` (and without the plugin
/// pins, which are taken when the attempt is queued), as stored JSON (the instructions' fields
/// beside `from` and `phone_number_sid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallTemplate {
    pub from: String,
    pub phone_number_sid: Option<String>,
    #[serde(flatten)]
    pub instructions: CallInstructions,
}

impl CallTemplate {
    /// The queued outbound call one attempt makes to `to`.
    pub fn call_to(&self, to: &str, plugins: Pins) -> NewCall {
        NewCall {
            direction: Direction::OutboundApi,
            parent_call_sid: None,
            to: to.to_owned(),
            from: self.from.clone(),
            phone_number_sid: self.phone_number_sid.clone(),
            status: CallStatus::Queued,
            instructions: self.instructions.clone(),
            plugins,
            node: None,
        }
    }
}

/// A callout to create. Validation happens before this (in `api`).
#[derive(Debug, Clone)]
pub struct NewCallout {
    pub name: String,
    pub call: CallTemplate,
    pub calls_per_second: Option<f64>,
    pub max_concurrent: Option<i64>,
    pub calling_hours: Option<String>,
    pub time_zone: String,
    pub start_at: Option<i64>,
    pub priority: i64,
    /// The retry policy's configuration (a JSON object).
    pub retry_config: String,
    /// A JSON object.
    pub metadata: String,
}

#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct Callout {
    pub seq: i64,
    pub sid: String,
    pub account_sid: String,
    pub name: String,
    pub status: CalloutStatus,
    pub call_template: String,
    pub calls_per_second: Option<f64>,
    pub max_concurrent: Option<i64>,
    pub calling_hours: Option<String>,
    pub time_zone: String,
    pub start_at: Option<i64>,
    pub priority: i64,
    pub retry_config: String,
    pub metadata: String,
    pub date_created: i64,
    pub date_updated: i64,
    pub date_started: Option<i64>,
    pub date_finished: Option<i64>,
}

impl Callout {
    pub fn status(&self) -> CalloutStatus {
        self.status
    }

    pub fn template(&self) -> Result<CallTemplate> {
        serde_json::from_str(&self.call_template)
            .map_err(|e| StoreError::Corrupt(format!("callout {} call template: {e}", self.sid)))
    }
}

/// A participant to add. `phone` is already normalised (E.164).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewParticipant {
    pub phone: String,
    pub time_zone: Option<String>,
    /// A JSON object.
    pub metadata: String,
}

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct Participant {
    pub seq: i64,
    pub sid: String,
    pub callout_sid: String,
    pub account_sid: String,
    pub phone: String,
    pub time_zone: Option<String>,
    pub metadata: String,
    pub state: ParticipantState,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub attempts: i64,
    pub next_at: i64,
    pub call_sid: Option<String>,
    pub date_created: i64,
    pub date_updated: i64,
}

impl Participant {
    pub fn state(&self) -> ParticipantState {
        self.state
    }
}

/// What loading participants did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Added {
    /// New participants.
    pub added: u64,
    /// Numbers already in the callout: their time zone and metadata were updated if given
    /// (only while no attempt is live).
    pub merged: u64,
}

/// One attempt to queue: the participant (as claimed) and the call it makes.
#[derive(Debug, Clone)]
pub struct NewAttempt {
    pub participant_sid: String,
    pub call: NewCall,
}

/// What the retry policy decided for a settling participant (logged on the attempt as
/// `retry.decision`, `{"decision": "retry", "at": …}` or `{"decision": "done", "outcome": …,
/// "reason": …}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "lowercase")]
pub enum Settlement {
    /// Call again at this time.
    Retry { at: i64 },
    /// Finished with this outcome (a call status, `canceled` or `errored`) and reason.
    Done { outcome: String, reason: String },
}

/// Filters of the participant list.
#[derive(Debug, Clone, Default)]
pub struct ParticipantFilter {
    pub state: Option<ParticipantState>,
    pub outcome: Option<String>,
    pub phone: Option<String>,
}

/// Counts of a callout's participants, by where they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CalloutSummary {
    pub total: i64,
    /// Waiting for their first or next attempt.
    pub pending: i64,
    /// An attempt is live, or has just ended and awaits the retry policy.
    pub in_progress: i64,
    pub completed: i64,
    pub busy: i64,
    pub no_answer: i64,
    pub failed: i64,
    pub canceled: i64,
    /// The retry policy failed for them.
    pub errored: i64,
    /// Attempts made (calls created).
    pub attempts: i64,
}

impl CalloutSummary {
    /// Participants still to finish.
    pub fn unfinished(&self) -> i64 {
        self.pending + self.in_progress
    }
}

/// How a callout went, from its attempts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CalloutAnalysis {
    /// Answered participants over finished ones (0 when none finished).
    pub answer_rate: f64,
    /// Mean attempts of the participants that answered.
    pub attempts_per_answered: f64,
    /// Answered calls by duration: `(bucket label, count)`.
    pub durations: Vec<(String, i64)>,
    /// Final statuses of attempts by the UTC hour they ended in: `(hour start ms, status, count)`.
    pub by_hour: Vec<(i64, String, i64)>,
}

/// Duration buckets of the analysis, in seconds: `[lo, hi)`.
const DURATION_BUCKETS: [(i64, i64, &str); 6] = [
    (0, 10, "0-9s"),
    (10, 30, "10-29s"),
    (30, 60, "30-59s"),
    (60, 120, "1-2m"),
    (120, 300, "2-5m"),
    (300, i64::MAX, "5m+"),
];

impl Store {
    pub async fn create_callout(&self, account: &str, c: &NewCallout, now: i64) -> Result<Callout> {
        let sid = Sid::generate(SidKind::Callout);
        let template = serde_json::to_string(&c.call)
            .map_err(|e| StoreError::Corrupt(format!("call template: {e}")))?;
        let sql = format!(
            "INSERT INTO callouts (sid, account_sid, name, status, call_template, calls_per_second,
                max_concurrent, calling_hours, time_zone, start_at, priority, retry_config, metadata,
                date_created, date_updated)
             VALUES ($1, $2, $3, 'draft', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)
             RETURNING {CALLOUT_COLUMNS}"
        );
        Ok(sqlx::query_as(&sql)
            .bind(sid.as_str())
            .bind(account)
            .bind(&c.name)
            .bind(&template)
            .bind(c.calls_per_second)
            .bind(c.max_concurrent)
            .bind(&c.calling_hours)
            .bind(&c.time_zone)
            .bind(c.start_at)
            .bind(c.priority)
            .bind(&c.retry_config)
            .bind(&c.metadata)
            .bind(now)
            .fetch_one(&self.writer)
            .await?)
    }

    pub async fn callout(&self, account: &str, sid: &str) -> Result<Option<Callout>> {
        let sql =
            format!("SELECT {CALLOUT_COLUMNS} FROM callouts WHERE account_sid = $1 AND sid = $2");
        Ok(sqlx::query_as(&sql)
            .bind(account)
            .bind(sid)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_callouts(&self, account: &str, page: PageRequest) -> Result<Page<Callout>> {
        let sql = format!(
            "SELECT {CALLOUT_COLUMNS} FROM callouts
             WHERE account_sid = $1 AND ($2 IS NULL OR seq < $2) AND ($3 IS NULL OR seq > $3)
             ORDER BY seq {} LIMIT $4",
            page.order()
        );
        let rows = sqlx::query_as(&sql)
            .bind(account)
            .bind(page.before)
            .bind(page.after)
            .bind(i64::from(page.size) + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_rows(rows, page, |c: &Callout| c.seq))
    }

    /// Callouts in `running`, of every account: the scheduler's work.
    pub async fn running_callouts(&self) -> Result<Vec<Callout>> {
        let sql =
            format!("SELECT {CALLOUT_COLUMNS} FROM callouts WHERE status = 'running' ORDER BY seq");
        Ok(sqlx::query_as(&sql).fetch_all(&self.pool).await?)
    }

    /// Moves a callout to `to` if [`CalloutStatus::can_become`] allows it from its current status
    /// (a conflict otherwise). Stopping also finishes its pending participants as `canceled`,
    /// in the same transaction; the caller cancels its queued calls.
    pub async fn set_callout_status(
        &self,
        account: &str,
        sid: &str,
        to: CalloutStatus,
        now: i64,
    ) -> Result<Callout> {
        let mut tx = self.writer.begin().await?;
        let sql =
            format!("SELECT {CALLOUT_COLUMNS} FROM callouts WHERE account_sid = $1 AND sid = $2");
        let current: Callout = sqlx::query_as(&sql)
            .bind(account)
            .bind(sid)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        if current.status() == to {
            return Ok(current);
        }
        if !current.status().can_become(to) {
            return Err(StoreError::Conflict(format!(
                "a {} callout cannot become {to}",
                current.status()
            )));
        }
        let sql = format!(
            "UPDATE callouts SET status = $1, date_updated = $2,
                date_started = CASE WHEN $1 = 'running' THEN COALESCE(date_started, $2) ELSE date_started END,
                date_finished = CASE WHEN $1 IN ('stopped', 'completed') THEN $2 ELSE NULL END
             WHERE sid = $3 AND status = $4 RETURNING {CALLOUT_COLUMNS}"
        );
        let updated: Callout = sqlx::query_as(&sql)
            .bind(to.as_str())
            .bind(now)
            .bind(sid)
            .bind(current.status().as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                StoreError::Conflict("the callout changed while being updated".into())
            })?;
        tx.commit().await?;
        if to == CalloutStatus::Stopped {
            self.cancel_pending(sid, now).await?;
        }
        Ok(updated)
    }

    /// Finishes a stopped callout's pending participants as `canceled`, a few thousand per
    /// statement so that a million of them do not hold the writer for seconds. Stopping does it;
    /// the scheduler does it again at start, for a stop a crash interrupted.
    pub async fn cancel_pending(&self, callout: &str, now: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "UPDATE participants SET state = 'done', outcome = 'canceled',
                    reason = 'the callout was stopped', date_updated = $2
                 WHERE seq IN (SELECT seq FROM participants
                               WHERE callout_sid = $1 AND state = 'pending' LIMIT $3)",
            )
            .bind(callout)
            .bind(now)
            .bind(CANCEL_CHUNK)
            .execute(&self.writer)
            .await?
            .rows_affected();
            total += n;
            if n < CANCEL_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Stopped callouts that still have pending participants (a stop a crash interrupted).
    pub async fn stopped_with_pending(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT sid FROM callouts c WHERE status = 'stopped' AND EXISTS
                (SELECT 1 FROM participants p WHERE p.callout_sid = c.sid AND p.state = 'pending')",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Adds participants, merging numbers already present (in the callout, or earlier in
    /// `people`): a later row's time zone and non-empty metadata replace the earlier ones.
    /// Batched: one multi-row statement per chunk, one transaction per few thousand rows.
    pub async fn add_participants(
        &self,
        account: &str,
        callout: &str,
        people: &[NewParticipant],
        now: i64,
    ) -> Result<Added> {
        // Merge duplicates within the upload first, keeping the first row's position.
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(people.len());
        let mut unique: Vec<NewParticipant> = Vec::with_capacity(people.len());
        let mut merged = 0u64;
        for p in people {
            match index.get(p.phone.as_str()) {
                Some(&i) => {
                    merge_into(&mut unique[i], p);
                    merged += 1;
                }
                None => {
                    index.insert(&p.phone, unique.len());
                    unique.push(p.clone());
                }
            }
        }
        let mut added = 0u64;
        for group in unique.chunks(TRANSACTION_ROWS) {
            let mut tx = self.writer.begin().await?;
            for chunk in group.chunks(INSERT_CHUNK) {
                let mut sql = String::from(
                    "INSERT INTO participants (sid, callout_sid, account_sid, phone, time_zone, metadata,
                        state, date_created, date_updated) VALUES ",
                );
                for i in 0..chunk.len() {
                    let b = i * 4;
                    if i > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!(
                        "(${}, $1, $2, ${}, ${}, ${}, 'pending', $3, $3)",
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7
                    ));
                }
                sql.push_str(" ON CONFLICT (callout_sid, phone) DO NOTHING RETURNING phone");
                let mut q = sqlx::query_scalar::<_, String>(&sql)
                    .bind(callout)
                    .bind(account)
                    .bind(now);
                for p in chunk {
                    q = q
                        .bind(Sid::generate(SidKind::Participant).to_string())
                        .bind(&p.phone)
                        .bind(&p.time_zone)
                        .bind(&p.metadata);
                }
                let inserted: Vec<String> = q.fetch_all(&mut *tx).await?;
                added += inserted.len() as u64;
                if inserted.len() < chunk.len() {
                    let fresh: std::collections::HashSet<&str> =
                        inserted.iter().map(String::as_str).collect();
                    for p in chunk.iter().filter(|p| !fresh.contains(p.phone.as_str())) {
                        merged += 1;
                        sqlx::query(
                            "UPDATE participants SET time_zone = COALESCE($3, time_zone),
                                metadata = CASE WHEN $4 = '{}' THEN metadata ELSE $4 END, date_updated = $5
                             WHERE callout_sid = $1 AND phone = $2 AND state IN ('pending', 'done')",
                        )
                        .bind(callout)
                        .bind(&p.phone)
                        .bind(&p.time_zone)
                        .bind(&p.metadata)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
            tx.commit().await?;
        }
        Ok(Added { added, merged })
    }

    /// Up to `limit` participants of `callout` whose next attempt is due at `now`, earliest
    /// first (through the `participants_due` index).
    pub async fn due_participants(
        &self,
        callout: &str,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Participant>> {
        let sql = format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants
             WHERE callout_sid = $1 AND state = 'pending' AND next_at <= $2
             ORDER BY next_at, seq LIMIT $3"
        );
        Ok(sqlx::query_as(&sql)
            .bind(callout)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Moves pending participants' next attempt to `at` (outside calling hours).
    pub async fn defer_participants(&self, sids: &[String], at: i64, now: i64) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for sid in sids {
            sqlx::query(
                "UPDATE participants SET next_at = $2, date_updated = $3 WHERE sid = $1 AND state = 'pending'",
            )
            .bind(sid)
            .bind(at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Queues one attempt per participant that is still `pending` (others are skipped), while
    /// fewer than `cap` of the callout's participants are `calling`: the participant becomes
    /// `calling` and its call is created `queued`, in one transaction. The claims of one
    /// callout are serialized (SQLite: its one writer; PostgreSQL: a transaction lock on the
    /// callout), so nodes claiming at the same moment never exceed `cap` together.
    pub async fn start_attempts(
        &self,
        account: &str,
        callout: &Callout,
        attempts: &[NewAttempt],
        cap: i64,
        now: i64,
    ) -> Result<Vec<Call>> {
        let mut tx = self.writer.begin().await?;
        if self.shared {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("callflow:callout:{}", callout.sid))
                .execute(&mut *tx)
                .await?;
        }
        let calling: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM participants WHERE callout_sid = $1 AND state = 'calling'",
        )
        .bind(&callout.sid)
        .fetch_one(&mut *tx)
        .await?;
        let room = usize::try_from(cap - calling).unwrap_or(0);
        let mut calls = Vec::with_capacity(attempts.len().min(room));
        for a in attempts {
            if calls.len() >= room {
                break;
            }
            let claimed: Option<i64> = sqlx::query_scalar(
                "UPDATE participants SET state = 'calling', attempts = attempts + 1, date_updated = $3
                 WHERE sid = $1 AND callout_sid = $2 AND state = 'pending' RETURNING attempts",
            )
            .bind(&a.participant_sid)
            .bind(&callout.sid)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(attempt) = claimed else { continue };
            let link = AttemptLink {
                callout_sid: &callout.sid,
                participant_sid: &a.participant_sid,
                attempt,
                priority: callout.priority,
            };
            let call = insert_call(&mut tx, account, &a.call, Some(&link), now).await?;
            sqlx::query("UPDATE participants SET call_sid = $2 WHERE sid = $1")
                .bind(&a.participant_sid)
                .bind(&call.sid)
                .execute(&mut *tx)
                .await?;
            calls.push(call);
        }
        tx.commit().await?;
        for c in &calls {
            self.cache.put_call(c);
        }
        Ok(calls)
    }

    /// Up to `limit` participants whose attempt has ended and who await the retry policy, of
    /// every callout, oldest first.
    pub async fn settling_participants(&self, limit: u32, now: i64) -> Result<Vec<Participant>> {
        let sql = format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants
             WHERE state = 'settling' AND next_at <= $2 ORDER BY seq LIMIT $1"
        );
        Ok(sqlx::query_as(&sql)
            .bind(i64::from(limit))
            .bind(now)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Leaves a settling participant undecided until `at` (its retry policy could not run just
    /// now); `false` if it was no longer settling.
    pub async fn postpone_settling(&self, sid: &str, at: i64, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE participants SET next_at = $2, date_updated = $3
             WHERE sid = $1 AND state = 'settling'",
        )
        .bind(sid)
        .bind(at)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Applies the retry policy's decision to a settling participant; `false` if it was no
    /// longer settling (decided already).
    pub async fn settle_participant(&self, sid: &str, s: &Settlement, now: i64) -> Result<bool> {
        let done = match s {
            Settlement::Retry { at } => sqlx::query(
                "UPDATE participants SET state = 'pending', next_at = $2, date_updated = $3
                 WHERE sid = $1 AND state = 'settling'",
            )
            .bind(sid)
            .bind(at)
            .bind(now),
            Settlement::Done { outcome, reason } => sqlx::query(
                "UPDATE participants SET state = 'done', outcome = $2, reason = $3, date_updated = $4
                 WHERE sid = $1 AND state = 'settling'",
            )
            .bind(sid)
            .bind(outcome)
            .bind(reason)
            .bind(now),
        };
        Ok(done.execute(&self.writer).await?.rows_affected() == 1)
    }

    /// A participant's attempts, oldest first.
    pub async fn participant_calls(&self, participant: &str) -> Result<Vec<Call>> {
        let sql = format!(
            "SELECT {} FROM calls WHERE participant_sid = $1 ORDER BY attempt, seq",
            crate::calls::COLUMNS
        );
        Ok(sqlx::query_as(&sql)
            .bind(participant)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The calls with these sids (at most a thousand at a time: exports read a page of
    /// participants' last attempts in one statement), in no particular order.
    pub async fn calls_by_sid(&self, sids: &[&str]) -> Result<Vec<Call>> {
        let mut out = Vec::with_capacity(sids.len());
        for chunk in sids.chunks(1_000) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {} FROM calls WHERE sid IN ({})",
                crate::calls::COLUMNS,
                marks.join(", ")
            );
            let mut q = sqlx::query_as(&sql);
            for sid in chunk {
                q = q.bind(*sid);
            }
            out.extend(q.fetch_all(&self.pool).await?);
        }
        Ok(out)
    }

    /// The callout's calls still `queued` (to cancel when it stops).
    pub async fn queued_callout_calls(&self, callout: &str) -> Result<Vec<Call>> {
        let sql = format!(
            "SELECT {} FROM calls WHERE callout_sid = $1 AND status = 'queued' ORDER BY seq",
            crate::calls::COLUMNS
        );
        Ok(sqlx::query_as(&sql)
            .bind(callout)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn participant(
        &self,
        account: &str,
        callout: &str,
        sid: &str,
    ) -> Result<Option<Participant>> {
        let sql = format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants
             WHERE account_sid = $1 AND callout_sid = $2 AND sid = $3"
        );
        Ok(sqlx::query_as(&sql)
            .bind(account)
            .bind(callout)
            .bind(sid)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A page of a callout's participants, newest first like every list.
    pub async fn list_participants(
        &self,
        account: &str,
        callout: &str,
        f: &ParticipantFilter,
        page: PageRequest,
    ) -> Result<Page<Participant>> {
        let sql = format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants
             WHERE account_sid = $1 AND callout_sid = $2
               AND ($3 IS NULL OR state = $3) AND ($4 IS NULL OR outcome = $4) AND ($5 IS NULL OR phone = $5)
               AND ($6 IS NULL OR seq < $6) AND ($7 IS NULL OR seq > $7)
             ORDER BY seq {} LIMIT $8",
            page.order()
        );
        let rows = sqlx::query_as(&sql)
            .bind(account)
            .bind(callout)
            .bind(f.state.map(ParticipantState::as_str))
            .bind(&f.outcome)
            .bind(&f.phone)
            .bind(page.before)
            .bind(page.after)
            .bind(i64::from(page.size) + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_rows(rows, page, |p: &Participant| p.seq))
    }

    /// Up to `limit` participants after `after_seq`, in load order: for exports.
    pub async fn participants_after(
        &self,
        callout: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Participant>> {
        let sql = format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants
             WHERE callout_sid = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        Ok(sqlx::query_as(&sql)
            .bind(callout)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn callout_summary(&self, callout: &str) -> Result<CalloutSummary> {
        let rows: Vec<(String, Option<String>, i64, i64)> = sqlx::query_as(
            "SELECT state, outcome, COUNT(*), CAST(COALESCE(SUM(attempts), 0) AS BIGINT) FROM participants
             WHERE callout_sid = $1 GROUP BY state, outcome",
        )
        .bind(callout)
        .fetch_all(&self.pool)
        .await?;
        let mut s = CalloutSummary::default();
        for (state, outcome, n, attempts) in rows {
            s.total += n;
            s.attempts += attempts;
            let slot = match (state.as_str(), outcome.as_deref()) {
                ("pending", _) => &mut s.pending,
                ("calling" | "settling", _) => &mut s.in_progress,
                (_, Some("completed")) => &mut s.completed,
                (_, Some("busy")) => &mut s.busy,
                (_, Some("no-answer")) => &mut s.no_answer,
                (_, Some("failed")) => &mut s.failed,
                (_, Some("canceled")) => &mut s.canceled,
                _ => &mut s.errored,
            };
            *slot += n;
        }
        Ok(s)
    }

    /// How many of the callout's participants have an attempt live (for its concurrency cap;
    /// one whose attempt ended and awaits its retry decision holds no call).
    pub async fn calling_participants(&self, callout: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM participants WHERE callout_sid = $1 AND state = 'calling'",
        )
        .bind(callout)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Whether a callout has participants and every one of them is done.
    pub async fn callout_finished(&self, callout: &str) -> Result<bool> {
        // integers, not booleans: SQLite's EXISTS is an integer, PostgreSQL's a boolean
        let (any, open): (i64, i64) = sqlx::query_as(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM participants WHERE callout_sid = $1)
                         THEN 1 ELSE 0 END,
                    CASE WHEN EXISTS (SELECT 1 FROM participants
                                      WHERE callout_sid = $1
                                        AND state IN ('pending', 'calling', 'settling'))
                         THEN 1 ELSE 0 END",
        )
        .bind(callout)
        .fetch_one(&self.pool)
        .await?;
        Ok(any == 1 && open == 0)
    }

    pub async fn callout_analysis(&self, callout: &str) -> Result<CalloutAnalysis> {
        let (finished, answered, answered_attempts): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN outcome = 'completed' THEN 1 ELSE 0 END), 0) AS BIGINT),
                CAST(COALESCE(SUM(CASE WHEN outcome = 'completed' THEN attempts ELSE 0 END), 0) AS BIGINT)
             FROM participants WHERE callout_sid = $1 AND state = 'done'",
        )
        .bind(callout)
        .fetch_one(&self.pool)
        .await?;
        let durations: Vec<i64> = sqlx::query_scalar(
            "SELECT COALESCE(duration, 0) FROM calls WHERE callout_sid = $1 AND status = 'completed'",
        )
        .bind(callout)
        .fetch_all(&self.pool)
        .await?;
        let by_hour: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT (end_time / 3600000) * 3600000 AS hour, status, COUNT(*) FROM calls
             WHERE callout_sid = $1 AND end_time IS NOT NULL
             GROUP BY hour, status ORDER BY hour, status",
        )
        .bind(callout)
        .fetch_all(&self.pool)
        .await?;
        let ratio = |a: i64, b: i64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Ok(CalloutAnalysis {
            answer_rate: ratio(answered, finished),
            attempts_per_answered: ratio(answered_attempts, answered),
            durations: DURATION_BUCKETS
                .iter()
                .map(|&(lo, hi, label)| {
                    let n = durations.iter().filter(|&&d| d >= lo && d < hi).count();
                    (label.to_owned(), n as i64)
                })
                .collect(),
            by_hour,
        })
    }
}

/// A later row for the same number: its time zone and non-empty metadata win.
fn merge_into(into: &mut NewParticipant, later: &NewParticipant) {
    if later.time_zone.is_some() {
        into.time_zone.clone_from(&later.time_zone);
    }
    if later.metadata != "{}" {
        into.metadata.clone_from(&later.metadata);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Transition;
    use crate::test_support::{account, store};

    fn template() -> CallTemplate {
        CallTemplate {
            from: "+15550001".into(),
            phone_number_sid: None,
            instructions: CallInstructions {
                url: Some("http://127.0.0.1:1/flow".into()),
                ..CallInstructions::default()
            },
        }
    }

    /// A template as callouts stored it before its instructions were typed.
    const STORED_TEMPLATE: &str = r#"{"from":"+15550001","phone_number_sid":"PN0123","url":"http://127.0.0.1:1/flow","method":"GET","twiml":null,"fallback_url":null,"fallback_method":"POST","status_callback":"http://127.0.0.1:1/status","status_callback_method":"POST","status_callback_event":"answered completed","timeout":30,"time_limit":14400,"send_digits":"1w2","record":true,"machine_detection":"DetectMessageEnd","request_params":"[[\"To\",\"+15550002\"],[\"Method\",\"GET\"]]"}"#;

    #[test]
    fn a_stored_template_reads_and_writes_as_before() {
        use crate::{CallbackEvent, HttpMethod, MachineDetection, RequestParams};
        let t: CallTemplate = serde_json::from_str(STORED_TEMPLATE).unwrap();
        let i = &t.instructions;
        assert_eq!(t.phone_number_sid.as_deref(), Some("PN0123"));
        assert_eq!(
            (i.method, i.fallback_method),
            (HttpMethod::Get, HttpMethod::Post)
        );
        assert!(i.status_callback_event.contains(CallbackEvent::Answered));
        assert!(!i.status_callback_event.contains(CallbackEvent::Initiated));
        assert_eq!(
            i.machine_detection,
            Some(MachineDetection::DetectMessageEnd)
        );
        assert_eq!(
            i.request_params,
            RequestParams(vec![
                ("To".into(), "+15550002".into()),
                ("Method".into(), "GET".into())
            ])
        );
        assert_eq!((i.timeout, i.record), (30, true));
        assert_eq!(serde_json::to_string(&t).unwrap(), STORED_TEMPLATE);
    }

    fn new_callout(priority: i64) -> NewCallout {
        NewCallout {
            name: "warning".into(),
            call: template(),
            calls_per_second: Some(10.0),
            max_concurrent: None,
            calling_hours: None,
            time_zone: "UTC".into(),
            start_at: None,
            priority,
            retry_config: "{}".into(),
            metadata: "{}".into(),
        }
    }

    fn person(phone: &str, meta: &str) -> NewParticipant {
        NewParticipant {
            phone: phone.into(),
            time_zone: None,
            metadata: meta.into(),
        }
    }

    fn attempts_for(callout: &Callout, due: &[Participant]) -> Vec<NewAttempt> {
        let t = callout.template().unwrap();
        due.iter()
            .map(|p| NewAttempt {
                participant_sid: p.sid.clone(),
                call: t.call_to(&p.phone, Pins::default()),
            })
            .collect()
    }

    fn end(status: CallStatus, at: i64) -> Transition {
        Transition {
            to: status,
            at,
            sip_response_code: None,
            answered_by: None,
            cause: crate::StatusCause::Unspecified,
        }
    }

    #[tokio::test]
    async fn callout_status_moves_only_as_allowed_and_stopping_cancels_the_pending() {
        let s = store().await;
        let a = account(&s).await;
        let c = s.create_callout(&a.sid, &new_callout(0), 1).await.unwrap();
        assert_eq!(c.status(), CalloutStatus::Draft);
        assert!(c.template().unwrap() == template());
        let err = s
            .set_callout_status(&a.sid, &c.sid, CalloutStatus::Paused, 2)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        let r = s
            .set_callout_status(&a.sid, &c.sid, CalloutStatus::Running, 3)
            .await
            .unwrap();
        assert_eq!(
            (r.status(), r.date_started),
            (CalloutStatus::Running, Some(3))
        );
        let many: Vec<_> = (0..5_001)
            .map(|i| person(&format!("+1555{i:07}"), "{}"))
            .collect();
        s.add_participants(&a.sid, &c.sid, &many, 4).await.unwrap();
        let st = s
            .set_callout_status(&a.sid, &c.sid, CalloutStatus::Stopped, 5)
            .await
            .unwrap();
        assert_eq!(st.date_finished, Some(5));
        let sum = s.callout_summary(&c.sid).await.unwrap();
        assert_eq!((sum.total, sum.canceled, sum.pending), (5_001, 5_001, 0));
        assert!(s.stopped_with_pending().await.unwrap().is_empty());
        // A stop a crash interrupted leaves pending participants; they are found and finished.
        s.add_participants(&a.sid, &c.sid, &[person("+1999", "{}")], 5)
            .await
            .unwrap();
        assert_eq!(s.stopped_with_pending().await.unwrap(), vec![c.sid.clone()]);
        assert!(!s.callout_finished(&c.sid).await.unwrap(), "one is pending");
        assert_eq!(s.cancel_pending(&c.sid, 6).await.unwrap(), 1);
        assert!(s.stopped_with_pending().await.unwrap().is_empty());
        assert!(
            s.callout_finished(&c.sid).await.unwrap(),
            "every participant is done"
        );
        assert!(
            s.set_callout_status(&a.sid, &c.sid, CalloutStatus::Running, 6)
                .await
                .is_err()
        );
        // Another account's callout looks missing.
        let b = s.create_account(None, "other", 1).await.unwrap();
        assert!(s.callout(&b.sid, &c.sid).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn loading_merges_duplicates_within_and_across_uploads() {
        let s = store().await;
        let a = account(&s).await;
        let c = s.create_callout(&a.sid, &new_callout(0), 1).await.unwrap();
        let mut people: Vec<_> = (0..1_200)
            .map(|i| person(&format!("+1555{i:06}"), "{}"))
            .collect();
        people.push(person("+1555000007", r#"{"name":"x"}"#));
        let added = s
            .add_participants(&a.sid, &c.sid, &people, 2)
            .await
            .unwrap();
        assert_eq!(
            added,
            Added {
                added: 1_200,
                merged: 1
            }
        );
        let again = [
            person("+1555000008", r#"{"name":"y"}"#),
            person("+1999", "{}"),
        ];
        let added = s.add_participants(&a.sid, &c.sid, &again, 3).await.unwrap();
        assert_eq!(
            added,
            Added {
                added: 1,
                merged: 1
            }
        );
        let f = ParticipantFilter {
            phone: Some("+1555000007".into()),
            ..Default::default()
        };
        let p = s
            .list_participants(&a.sid, &c.sid, &f, PageRequest::first(10))
            .await
            .unwrap();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].metadata, r#"{"name":"x"}"#);
        let f = ParticipantFilter {
            phone: Some("+1555000008".into()),
            ..Default::default()
        };
        let p = s
            .list_participants(&a.sid, &c.sid, &f, PageRequest::first(10))
            .await
            .unwrap();
        assert_eq!(p.items[0].metadata, r#"{"name":"y"}"#);
        assert_eq!(s.callout_summary(&c.sid).await.unwrap().total, 1_201);
    }

    /// Claims that race (several nodes) never put more than the cap on the line together.
    #[tokio::test]
    async fn claims_stop_at_the_callouts_cap_whoever_makes_them() {
        let s = store().await;
        let a = account(&s).await;
        let c = s.create_callout(&a.sid, &new_callout(5), 1).await.unwrap();
        let people: Vec<_> = (0..5)
            .map(|i| person(&format!("+155500{i}"), "{}"))
            .collect();
        s.add_participants(&a.sid, &c.sid, &people, 2)
            .await
            .unwrap();
        s.set_callout_status(&a.sid, &c.sid, CalloutStatus::Running, 3)
            .await
            .unwrap();
        // two nodes read the same five due participants, and claim at once with a cap of 3
        let due = s.due_participants(&c.sid, 10, 10).await.unwrap();
        let (first, second) = (attempts_for(&c, &due[..3]), attempts_for(&c, &due[2..]));
        let (one, two) = tokio::join!(
            s.start_attempts(&a.sid, &c, &first, 3, 10),
            s.start_attempts(&a.sid, &c, &second, 3, 10)
        );
        let started = one.unwrap().len() + two.unwrap().len();
        assert_eq!(started, 3);
        assert_eq!(s.calling_participants(&c.sid).await.unwrap(), 3);
    }

    /// The whole life of an attempt, including the trigger that hands an ended attempt to the
    /// retry policy and the guards that make every step happen once.
    #[tokio::test]
    async fn an_attempt_claims_calls_settles_and_retries_exactly_once() {
        let s = store().await;
        let a = account(&s).await;
        let c = s.create_callout(&a.sid, &new_callout(5), 1).await.unwrap();
        s.add_participants(
            &a.sid,
            &c.sid,
            &[person("+1555001", "{}"), person("+1555002", "{}")],
            2,
        )
        .await
        .unwrap();
        let due = s.due_participants(&c.sid, 10, 10).await.unwrap();
        assert_eq!(due.len(), 2);
        let calls = s
            .start_attempts(&a.sid, &c, &attempts_for(&c, &due), 50, 10)
            .await
            .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].priority, 5);
        assert_eq!(calls[0].attempt, Some(1));
        assert_eq!(calls[0].callout_sid.as_deref(), Some(c.sid.as_str()));
        // A second claim of the same participants (a stale read) queues nothing.
        let again = s
            .start_attempts(&a.sid, &c, &attempts_for(&c, &due), 50, 11)
            .await
            .unwrap();
        assert!(again.is_empty());
        assert!(s.due_participants(&c.sid, 10, 10).await.unwrap().is_empty());
        assert_eq!(s.calling_participants(&c.sid).await.unwrap(), 2);
        // Higher priority first in the dispatcher's queue.
        let api = s
            .create_call(&a.sid, &template().call_to("+1777", Pins::default()), 12)
            .await
            .unwrap();
        let q = s.queued_calls(10, None).await.unwrap();
        assert_eq!(q.last().unwrap().sid, api.sid);
        // A paused callout's attempts wait in the queue; resumed, they are back.
        for (status, at) in [(CalloutStatus::Running, 13), (CalloutStatus::Paused, 14)] {
            s.set_callout_status(&a.sid, &c.sid, status, at)
                .await
                .unwrap();
        }
        let q = s.queued_calls(10, None).await.unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].sid, api.sid);
        s.set_callout_status(&a.sid, &c.sid, CalloutStatus::Running, 15)
            .await
            .unwrap();
        assert_eq!(s.queued_calls(10, None).await.unwrap().len(), 3);

        // The first attempt ends busy: the trigger makes its participant settle.
        s.transition_call(&a.sid, &calls[0].sid, &end(CallStatus::Busy, 20), |_| {
            Vec::new()
        })
        .await
        .unwrap();
        let settling = s.settling_participants(10, 20).await.unwrap();
        assert_eq!(settling.len(), 1);
        assert_eq!(settling[0].call_sid.as_deref(), Some(calls[0].sid.as_str()));
        let p = &settling[0];
        // Its policy could not run: it stays settling, out of sight until then.
        assert!(s.postpone_settling(&p.sid, 30, 20).await.unwrap());
        assert!(s.settling_participants(10, 29).await.unwrap().is_empty());
        assert_eq!(s.settling_participants(10, 30).await.unwrap().len(), 1);
        assert!(
            s.settle_participant(&p.sid, &Settlement::Retry { at: 100 }, 21)
                .await
                .unwrap()
        );
        assert!(
            !s.settle_participant(&p.sid, &Settlement::Retry { at: 100 }, 22)
                .await
                .unwrap()
        );
        assert!(!s.postpone_settling(&p.sid, 40, 22).await.unwrap());
        assert!(s.due_participants(&c.sid, 99, 10).await.unwrap().is_empty());
        let due = s.due_participants(&c.sid, 100, 10).await.unwrap();
        let second = s
            .start_attempts(&a.sid, &c, &attempts_for(&c, &due), 50, 100)
            .await
            .unwrap();
        assert_eq!(second[0].attempt, Some(2));
        let history = s.participant_calls(&p.sid).await.unwrap();
        assert_eq!(history.len(), 2);
        s.transition_call(
            &a.sid,
            &second[0].sid,
            &end(CallStatus::InProgress, 110),
            |_| Vec::new(),
        )
        .await
        .unwrap();
        s.transition_call(
            &a.sid,
            &second[0].sid,
            &end(CallStatus::Completed, 90_000),
            |_| Vec::new(),
        )
        .await
        .unwrap();
        let p = &s.settling_participants(10, 90_000).await.unwrap()[0];
        let done = Settlement::Done {
            outcome: "completed".into(),
            reason: "answered".into(),
        };
        assert!(s.settle_participant(&p.sid, &done, 90_001).await.unwrap());
        // one participant done, one still calling
        assert!(!s.callout_finished(&c.sid).await.unwrap());
        assert!(
            !s.callout_finished("COnone").await.unwrap(),
            "no participants"
        );
        let sum = s.callout_summary(&c.sid).await.unwrap();
        assert_eq!(
            (sum.total, sum.completed, sum.in_progress, sum.attempts),
            (2, 1, 1, 3)
        );
        let an = s.callout_analysis(&c.sid).await.unwrap();
        assert_eq!(an.answer_rate, 1.0);
        assert_eq!(an.attempts_per_answered, 2.0);
        assert_eq!(an.durations[3], ("1-2m".to_owned(), 1));
        assert_eq!(an.by_hour.iter().map(|h| h.2).sum::<i64>(), 2);
        let found = s
            .calls_by_sid(&[calls[1].sid.as_str(), second[0].sid.as_str(), "CAnone"])
            .await
            .unwrap();
        assert_eq!(found.len(), 2);
        // The queued attempt is what stopping must cancel.
        let queued = s.queued_callout_calls(&c.sid).await.unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].sid, calls[1].sid);
    }
}
