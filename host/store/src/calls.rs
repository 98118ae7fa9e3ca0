//! Calls and their append-only event log.

use sqlx::AnyConnection;

use crate::deliveries::NewDelivery;
use crate::sid::{Sid, SidKind};
use crate::{
    Call, CallEvent, CallInstructions, CallLogEntry, CallStatus, Direction, HttpMethod,
    NewInstructions, Page, PageRequest, Pins, Result, StatusCause, Store, StoreError,
};

pub(crate) const COLUMNS: &str = "seq, sid, account_sid, parent_call_sid, direction, to_number, from_number,
    phone_number_sid, status, answered_by, start_time, end_time, duration, sip_response_code, url, method,
    twiml, fallback_url, fallback_method, status_callback, status_callback_method, status_callback_event,
    timeout, time_limit, send_digits, record, machine_detection, request_params, plugins, callout_sid, participant_sid,
    attempt, priority, node, date_created, date_updated";

/// Twilio's ring timeout default (`Timeout`), in seconds: calls created by the API or by SIP.
pub const TIMEOUT_DEFAULT: i64 = 60;
/// Twilio's maximum call length default (`TimeLimit`, 4 h), in seconds.
pub const TIME_LIMIT_DEFAULT: i64 = 14_400;

/// A call to create. Validation happens before this (in `api` or the engine).
#[derive(Debug, Clone)]
pub struct NewCall {
    pub direction: Direction,
    pub parent_call_sid: Option<String>,
    pub to: String,
    pub from: String,
    pub phone_number_sid: Option<String>,
    pub status: CallStatus,
    pub instructions: CallInstructions,
    /// The plugin versions the call runs with, pinned now.
    pub plugins: Pins,
    /// The node that drives the call from its creation (an inbound call, a `<Dial>` leg);
    /// none for a queued call, which the node that sends it takes (`mark_dispatched`).
    pub node: Option<String>,
}

/// Filters of Twilio's call list. Time bounds are inclusive, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub to: Option<String>,
    pub from: Option<String>,
    pub status: Option<CallStatus>,
    pub parent_call_sid: Option<String>,
    pub start_after: Option<i64>,
    pub start_before: Option<i64>,
    pub end_after: Option<i64>,
    pub end_before: Option<i64>,
}

/// New instructions for a call (`POST Calls/{Sid}` with Url or Twiml, or new callbacks).
#[derive(Debug, Clone, Default)]
pub struct CallUpdate {
    pub url: Option<String>,
    pub method: Option<HttpMethod>,
    pub twiml: Option<String>,
    pub fallback_url: Option<String>,
    pub fallback_method: Option<HttpMethod>,
    pub status_callback: Option<String>,
    pub status_callback_method: Option<HttpMethod>,
    pub time_limit: Option<i64>,
    /// What answering-machine detection found (`human`, `machine_start`, `unknown`).
    pub answered_by: Option<String>,
}

/// A status change, with what the new status implies.
#[derive(Debug, Clone)]
pub struct Transition {
    pub to: CallStatus,
    pub at: i64,
    pub sip_response_code: Option<i64>,
    pub answered_by: Option<String>,
    /// Why, for the call's event log.
    pub cause: StatusCause,
}

impl Store {
    /// Stores a new call and logs its creation.
    pub async fn create_call(&self, account: &str, c: &NewCall, now: i64) -> Result<Call> {
        self.journal.create(account, c, now, None).await
    }

    /// [`Store::create_call`] that also stores the webhooks `webhooks` derives from the new
    /// row (a call created ringing has an event), in the same transaction.
    pub async fn create_call_with(
        &self,
        account: &str,
        c: &NewCall,
        now: i64,
        webhooks: impl FnOnce(&Call) -> Vec<NewDelivery> + Send + 'static,
    ) -> Result<Call> {
        self.journal
            .create(account, c, now, Some(Box::new(webhooks)))
            .await
    }

    pub async fn call(&self, account: &str, sid: &str) -> Result<Option<Call>> {
        if let Some(c) = self.cache.call(sid) {
            return Ok((c.account_sid == account).then(|| (*c).clone()));
        }
        let sql = format!("SELECT {COLUMNS} FROM calls WHERE sid = $1");
        let call: Option<Call> = sqlx::query_as(&sql)
            .bind(sid)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(c) = &call {
            self.cache.offer_call(c);
        }
        Ok(call.filter(|c| c.account_sid == account))
    }

    /// Up to `limit` outbound API calls waiting in `queued` and not sent yet (a paused
    /// callout's attempts wait), highest priority first, then oldest, after `after` (a call's `(priority, seq)`, to page on): the
    /// dispatcher's queue (through the `calls_queue` index, so its cost does not grow with the
    /// backlog).
    pub async fn queued_calls(&self, limit: u32, after: Option<(i64, i64)>) -> Result<Vec<Call>> {
        Ok(sqlx::query_as(&queued_calls_sql())
            .bind(i64::from(limit))
            .bind(after.map(|a| a.0))
            .bind(after.map(|a| a.1))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Marks a queued call as sent by `node`, once: false if it is no longer queued, was sent
    /// already (by this run, an earlier one, or another node), or belongs to a callout paused
    /// since it was read from the queue, so its INVITE must not go out (now). The node that
    /// marks it drives it from then on.
    pub async fn mark_dispatched(&self, sid: &str, now: i64, node: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE calls SET dispatched_at = $2, node = $3
             WHERE sid = $1 AND status = 'queued' AND dispatched_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM callouts co
                               WHERE co.sid = calls.callout_sid AND co.status = 'paused')",
        )
        .bind(sid)
        .bind(now)
        .bind(node)
        .execute(&self.writer)
        .await?;
        // the cached copy does not have its node: read it again next time
        self.cache.forget_call(sid);
        Ok(done.rows_affected() == 1)
    }

    pub async fn list_calls(
        &self,
        account: &str,
        f: &CallFilter,
        page: PageRequest,
    ) -> Result<Page<Call>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM calls
             WHERE account_sid = $1
               AND ($2 IS NULL OR to_number = $2) AND ($3 IS NULL OR from_number = $3)
               AND ($4 IS NULL OR status = $4) AND ($5 IS NULL OR parent_call_sid = $5)
               AND ($6 IS NULL OR start_time >= $6) AND ($7 IS NULL OR start_time <= $7)
               AND ($8 IS NULL OR end_time >= $8) AND ($9 IS NULL OR end_time <= $9)
               AND ($10 IS NULL OR seq < $10) AND ($11 IS NULL OR seq > $11)
             ORDER BY seq {} LIMIT $12",
            page.order()
        );
        let status = f.status.map(CallStatus::as_str);
        let rows = sqlx::query_as(&sql)
            .bind(account)
            .bind(&f.to)
            .bind(&f.from)
            .bind(status)
            .bind(&f.parent_call_sid)
            .bind(f.start_after)
            .bind(f.start_before)
            .bind(f.end_after)
            .bind(f.end_before)
            .bind(page.before)
            .bind(page.after)
            .bind(i64::from(page.size) + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_rows(rows, page, |c: &Call| c.seq))
    }

    /// Replaces a live call's instructions; a final call is a conflict.
    pub async fn update_call(
        &self,
        account: &str,
        sid: &str,
        u: &CallUpdate,
        now: i64,
    ) -> Result<Call> {
        // this adds to the call's log: what the journal holds for it goes first
        self.journal.flush_call(sid).await;
        let mut tx = self.writer.begin().await?;
        let call = fetch_call(&mut tx, account, sid).await?;
        if call.status().is_final() {
            return Err(StoreError::Conflict(format!(
                "call is already {}",
                call.status()
            )));
        }
        // New Url and Twiml replace each other: whichever is given becomes the call's flow.
        let (url, twiml) = match (&u.url, &u.twiml) {
            (Some(url), _) => (Some(url.clone()), None),
            (None, Some(twiml)) => (None, Some(twiml.clone())),
            (None, None) => (
                call.instructions.url.clone(),
                call.instructions.twiml.clone(),
            ),
        };
        let sql = format!(
            "UPDATE calls SET url = $1, twiml = $2, method = COALESCE($3, method),
                fallback_url = COALESCE($4, fallback_url), fallback_method = COALESCE($5, fallback_method),
                status_callback = COALESCE($6, status_callback),
                status_callback_method = COALESCE($7, status_callback_method),
                time_limit = COALESCE($8, time_limit), date_updated = $9,
                answered_by = COALESCE($11, answered_by)
             WHERE sid = $10 RETURNING {COLUMNS}"
        );
        let updated: Call = sqlx::query_as(&sql)
            .bind(&url)
            .bind(&twiml)
            .bind(u.method)
            .bind(&u.fallback_url)
            .bind(u.fallback_method)
            .bind(&u.status_callback)
            .bind(u.status_callback_method)
            .bind(u.time_limit)
            .bind(now)
            .bind(sid)
            .bind(&u.answered_by)
            .fetch_one(&mut *tx)
            .await?;
        let entry = CallLogEntry::Updated(NewInstructions {
            url: u.url.clone(),
            twiml: u.twiml.is_some(),
            method: u.method,
        });
        insert_event(&mut tx, sid, now, &entry).await?;
        self.cache.put_call(&updated);
        if let Err(e) = tx.commit().await {
            self.cache.forget_call(&updated.sid);
            return Err(e.into());
        }
        Ok(updated)
    }

    /// Moves a call to a new status and, in the same transaction, logs it and enqueues the
    /// webhooks `webhooks` derives from the updated row (so callbacks describe exactly what was
    /// stored: end time, duration, SIP code). An illegal move (see `CallStatus::can_become`) is a
    /// conflict and changes nothing. Written by the call journal, with other calls' changes.
    pub async fn transition_call(
        &self,
        account: &str,
        sid: &str,
        t: &Transition,
        webhooks: impl FnOnce(&Call) -> Vec<NewDelivery> + Send + 'static,
    ) -> Result<Call> {
        self.journal
            .transition(account, sid, t, Some(Box::new(webhooks)))
            .await
    }

    /// [`Store::transition_call`] for a change that sends no webhook (the `calls_log_status`
    /// trigger logs it).
    pub async fn transition_call_quietly(
        &self,
        account: &str,
        sid: &str,
        t: &Transition,
    ) -> Result<Call> {
        self.journal.transition(account, sid, t, None).await
    }

    /// Appends an entry to a call's event log and returns once it is committed.
    pub async fn append_call_event(
        &self,
        call_sid: &str,
        at: i64,
        entry: &CallLogEntry,
    ) -> Result<()> {
        self.journal.append(call_sid, at, entry);
        self.journal.flush_call(call_sid).await;
        Ok(())
    }

    /// Appends an entry to a call's event log without waiting: it is committed with others
    /// within a few milliseconds (the call journal's group commit), before anyone reads the
    /// call's log and before the call's next status change.
    pub fn log_call_event(&self, call_sid: &str, at: i64, entry: &CallLogEntry) {
        self.journal.append(call_sid, at, entry);
    }

    pub async fn call_events(&self, call_sid: &str) -> Result<Vec<CallEvent>> {
        self.journal.flush_call(call_sid).await;
        Ok(sqlx::query_as(
            "SELECT id, call_sid, at, kind, detail FROM call_events WHERE call_sid = $1 ORDER BY id",
        )
        .bind(call_sid)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Moves `call` (as last read) to `t.to` if it is still in the status it was read with:
/// `Ok(None)` when the stored status differs, a conflict when the move is illegal.
pub(crate) async fn update_status(
    conn: &mut AnyConnection,
    call: &Call,
    t: &Transition,
) -> Result<Option<Call>> {
    if !call.status().can_become(t.to) {
        return Err(StoreError::Conflict(format!(
            "call cannot go from {} to {}",
            call.status(),
            t.to
        )));
    }
    let start_time = match (call.start_time, t.to) {
        (None, CallStatus::InProgress) => Some(t.at),
        (s, _) => s,
    };
    let (end_time, duration) = if t.to.is_final() {
        let secs = start_time.map_or(0, |s| (t.at - s).max(0) / 1000);
        (Some(t.at), Some(secs))
    } else {
        (None, None)
    };
    let sql = format!(
        "UPDATE calls SET status = $1, start_time = $2, end_time = $3, duration = $4,
            sip_response_code = COALESCE($5, sip_response_code), answered_by = COALESCE($6, answered_by),
            date_updated = $7, event_detail = $10
         WHERE sid = $8 AND status = $9 RETURNING {COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(t.to.as_str())
        .bind(start_time)
        .bind(end_time)
        .bind(duration)
        .bind(t.sip_response_code)
        .bind(&t.answered_by)
        .bind(t.at)
        .bind(&call.sid)
        .bind(call.status().as_str())
        .bind(t.cause.to_string())
        .fetch_optional(conn)
        .await?)
}

/// A callout attempt's link from the call to its participant.
#[derive(Debug, Clone)]
pub(crate) struct AttemptLink<'a> {
    pub callout_sid: &'a str,
    pub participant_sid: &'a str,
    pub attempt: i64,
    pub priority: i64,
}

/// Inserts a call (one statement: the `calls_log_created` trigger logs it, migration 0006).
pub(crate) async fn insert_call(
    conn: &mut AnyConnection,
    account: &str,
    c: &NewCall,
    link: Option<&AttemptLink<'_>>,
    now: i64,
) -> Result<Call> {
    let sid = Sid::generate(SidKind::Call);
    let i = &c.instructions;
    let sql = format!(
        "INSERT INTO calls (sid, account_sid, parent_call_sid, direction, to_number, from_number,
            phone_number_sid, status, url, method, twiml, fallback_url, fallback_method, status_callback,
            status_callback_method, status_callback_event, timeout, time_limit, send_digits, record,
            machine_detection, request_params, plugins, date_created, date_updated, event_detail,
            callout_sid, participant_sid, attempt, priority, node)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
            $21, $22, $23, $24, $24, $25, $26, $27, $28, $29, $30)
         RETURNING {COLUMNS}"
    );
    // what the `calls_log_created` trigger logs
    let detail = CallLogEntry::Created { status: c.status }
        .detail()
        .to_string();
    Ok(sqlx::query_as(&sql)
        .bind(sid.as_str())
        .bind(account)
        .bind(&c.parent_call_sid)
        .bind(c.direction)
        .bind(&c.to)
        .bind(&c.from)
        .bind(&c.phone_number_sid)
        .bind(c.status)
        .bind(&i.url)
        .bind(i.method)
        .bind(&i.twiml)
        .bind(&i.fallback_url)
        .bind(i.fallback_method)
        .bind(&i.status_callback)
        .bind(i.status_callback_method)
        .bind(&i.status_callback_event)
        .bind(i.timeout)
        .bind(i.time_limit)
        .bind(&i.send_digits)
        .bind(i64::from(i.record))
        .bind(i.machine_detection)
        .bind(&i.request_params)
        .bind(&c.plugins)
        .bind(now)
        .bind(&detail)
        .bind(link.map(|l| l.callout_sid))
        .bind(link.map(|l| l.participant_sid))
        .bind(link.map(|l| l.attempt))
        .bind(link.map_or(0, |l| l.priority))
        .bind(&c.node)
        .fetch_one(conn)
        .await?)
}

pub(crate) async fn fetch_call(conn: &mut AnyConnection, account: &str, sid: &str) -> Result<Call> {
    let sql = format!("SELECT {COLUMNS} FROM calls WHERE account_sid = $1 AND sid = $2");
    sqlx::query_as(&sql)
        .bind(account)
        .bind(sid)
        .fetch_optional(conn)
        .await?
        .ok_or(StoreError::NotFound)
}

async fn insert_event(
    conn: &mut AnyConnection,
    call_sid: &str,
    at: i64,
    entry: &CallLogEntry,
) -> Result<()> {
    sqlx::query("INSERT INTO call_events (call_sid, at, kind, detail) VALUES ($1, $2, $3, $4)")
        .bind(call_sid)
        .bind(at)
        .bind(entry.kind())
        .bind(entry.detail().to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// The dispatcher's queue. `status = 'queued'` is written as the partial index `calls_queue`
/// says it (SQLite uses a partial index only for a query that states its condition).
fn queued_calls_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM calls
         WHERE status = 'queued' AND direction = 'outbound-api' AND dispatched_at IS NULL
           AND ($2 IS NULL OR priority < $2 OR (priority = $2 AND seq > $3))
           AND NOT EXISTS (SELECT 1 FROM callouts co
                           WHERE co.sid = calls.callout_sid AND co.status = 'paused')
         ORDER BY priority DESC, seq LIMIT $1"
    )
}

/// Calls a previous run may have left unfinished, through the partial index `calls_live`
/// (whose condition the first term repeats word for word).
/// Live calls of node `$1` (and of no node: left by a run from before nodes were recorded).
pub(crate) fn live_calls_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM calls
         WHERE status IN ('queued', 'ringing', 'in-progress')
           AND (status <> 'queued' OR dispatched_at IS NOT NULL)
           AND (node = $1 OR node IS NULL)
         ORDER BY seq"
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The plan SQLite picks for `sql`, one line per step.
    async fn plan(s: &Store, sql: &str) -> String {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .fetch_all(&s.pool)
                .await
                .unwrap();
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    #[tokio::test]
    async fn the_queue_and_the_unfinished_calls_are_read_through_their_partial_indexes() {
        let s = crate::test_support::sqlite_store().await;
        let queue = plan(&s, &queued_calls_sql()).await;
        assert!(
            queue.starts_with("SCAN calls USING INDEX calls_queue"),
            "{queue}"
        );
        assert!(!queue.contains("TEMP B-TREE"), "{queue}");
        let live = plan(&s, &live_calls_sql()).await;
        assert!(live.contains("USING INDEX calls_live"), "{live}");
        for sql in [
            "SELECT sid FROM calls WHERE participant_sid = $1",
            "SELECT sid FROM calls WHERE callout_sid = $1 AND status = 'completed'",
        ] {
            let p = plan(&s, sql).await;
            assert!(
                p.starts_with("SEARCH calls USING INDEX calls_"),
                "{sql}: {p}"
            );
        }
    }
    use crate::test_support::{account, store};

    pub fn new_call(to: &str) -> NewCall {
        NewCall {
            direction: Direction::OutboundApi,
            parent_call_sid: None,
            to: to.into(),
            from: "+15005550006".into(),
            phone_number_sid: None,
            status: CallStatus::Queued,
            instructions: CallInstructions {
                url: Some("http://example.com/twiml".into()),
                ..CallInstructions::default()
            },
            plugins: Pins::default(),
            node: None,
        }
    }

    pub fn to(status: CallStatus, at: i64) -> Transition {
        Transition {
            to: status,
            at,
            sip_response_code: None,
            answered_by: None,
            cause: StatusCause::Unspecified,
        }
    }

    #[tokio::test]
    async fn lifecycle_sets_times_duration_and_logs_every_step() {
        let store = store().await;
        let a = account(&store).await;
        let call = store
            .create_call(&a.sid, &new_call("+1555"), 1_000)
            .await
            .unwrap();
        assert_eq!(call.status(), CallStatus::Queued);
        store
            .transition_call(&a.sid, &call.sid, &to(CallStatus::Ringing, 2_000), |_| {
                Vec::new()
            })
            .await
            .unwrap();
        let up = store
            .transition_call(
                &a.sid,
                &call.sid,
                &to(CallStatus::InProgress, 3_000),
                |_| Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!(up.start_time, Some(3_000));
        let done = store
            .transition_call(
                &a.sid,
                &call.sid,
                &to(CallStatus::Completed, 45_500),
                |_| Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!((done.end_time, done.duration), (Some(45_500), Some(42)));
        let kinds: Vec<_> = store
            .call_events(&call.sid)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["created", "ringing", "in-progress", "completed"]);
    }

    #[tokio::test]
    async fn journaled_entries_stay_before_the_status_changes_that_follow_them() {
        let store = store().await;
        let a = account(&store).await;
        let call = store
            .create_call(&a.sid, &new_call("+1555"), 1_000)
            .await
            .unwrap();
        store.log_call_event(&call.sid, 1_500, &CallLogEntry::FlowAnswered);
        for (status, at) in [(CallStatus::Ringing, 2_000), (CallStatus::Canceled, 3_000)] {
            store
                .transition_call_quietly(&a.sid, &call.sid, &to(status, at))
                .await
                .unwrap();
            store.log_call_event(&call.sid, at + 1, &CallLogEntry::FlowRefused { sip: 603 });
        }
        let kinds: Vec<_> = store
            .call_events(&call.sid)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "created",
                "flow.answered",
                "ringing",
                "flow.refused",
                "canceled",
                "flow.refused"
            ]
        );
    }

    #[tokio::test]
    async fn the_dispatch_queue_is_queued_outbound_calls_oldest_first() {
        let store = store().await;
        let a = account(&store).await;
        let mut sids = Vec::new();
        for i in 0..4 {
            let c = store
                .create_call(&a.sid, &new_call(&format!("+1555{i}")), 1_000)
                .await
                .unwrap();
            sids.push((c.seq, c.sid));
        }
        store
            .transition_call(&a.sid, &sids[1].1, &to(CallStatus::Ringing, 2_000), |_| {
                Vec::new()
            })
            .await
            .unwrap();
        let q: Vec<_> = store.queued_calls(10, None).await.unwrap();
        let q: Vec<_> = q.into_iter().map(|c| c.sid).collect();
        assert_eq!(q, [sids[0].1.clone(), sids[2].1.clone(), sids[3].1.clone()]);
        let first = store.queued_calls(1, None).await.unwrap();
        assert_eq!(first.len(), 1);
        // the next page starts after the last call of this one
        let next = store
            .queued_calls(10, Some((first[0].priority, first[0].seq)))
            .await
            .unwrap();
        let next: Vec<_> = next.into_iter().map(|c| c.sid).collect();
        assert_eq!(next, [sids[2].1.clone(), sids[3].1.clone()]);
        // a live call no node owns (from before nodes were recorded) is every node's to end
        let live: Vec<_> = store.live_calls_of("n1").await.unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].sid, sids[1].1);
        // A sent call leaves the queue, once, and counts as live (a crash must not resend it),
        // of the node that sent it.
        assert!(
            store
                .mark_dispatched(&sids[0].1, 3_000, "n1")
                .await
                .unwrap()
        );
        assert!(
            !store
                .mark_dispatched(&sids[0].1, 3_001, "n2")
                .await
                .unwrap()
        );
        assert!(
            !store
                .mark_dispatched(&sids[1].1, 3_001, "n1")
                .await
                .unwrap()
        );
        let q: Vec<_> = store.queued_calls(10, None).await.unwrap();
        assert_eq!(q.len(), 2);
        assert!(q.iter().all(|c| c.sid != sids[0].1));
        assert_eq!(store.live_calls_of("n1").await.unwrap().len(), 2);
        assert_eq!(store.live_calls_of("n2").await.unwrap().len(), 1);
        let sent = store.call(&a.sid, &sids[0].1).await.unwrap().unwrap();
        assert_eq!(sent.node.as_deref(), Some("n1"));
    }

    #[tokio::test]
    async fn a_call_created_with_webhooks_stores_them_with_it() {
        let store = store().await;
        let a = account(&store).await;
        let call = store
            .create_call_with(&a.sid, &new_call("+1555"), 1_000, |c| {
                vec![NewDelivery {
                    account_sid: c.account_sid.clone(),
                    call_sid: Some(c.sid.clone()),
                    kind: "call-event".into(),
                    url: "builtin:x".into(),
                    method: "EVENT".into(),
                    ..NewDelivery::default()
                }]
            })
            .await
            .unwrap();
        let rows = store.call_deliveries(&call.sid).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].webhook.kind, "call-event");
        assert_eq!(rows[0].created_at, 1_000);
        assert_eq!(store.call(&a.sid, &call.sid).await.unwrap(), Some(call));
    }

    #[tokio::test]
    async fn illegal_transitions_change_nothing_and_enqueue_nothing() {
        let store = store().await;
        let a = account(&store).await;
        let call = store
            .create_call(&a.sid, &new_call("+1555"), 1_000)
            .await
            .unwrap();
        let hook = NewDelivery {
            account_sid: a.sid.clone(),
            call_sid: Some(call.sid.clone()),
            kind: "status-callback".into(),
            url: "http://example.com/cb".into(),
            method: "POST".into(),
            params: vec![("CallStatus".into(), "canceled".into())],
            ..NewDelivery::default()
        };
        let first = hook.clone();
        store
            .transition_call(&a.sid, &call.sid, &to(CallStatus::Canceled, 2_000), |_| {
                vec![first]
            })
            .await
            .unwrap();
        let err = store
            .transition_call(
                &a.sid,
                &call.sid,
                &to(CallStatus::Completed, 3_000),
                move |_| vec![hook],
            )
            .await;
        assert!(matches!(err, Err(StoreError::Conflict(_))));
        assert_eq!(store.due_deliveries(i64::MAX, 10).await.unwrap().len(), 1);
        let call = store.call(&a.sid, &call.sid).await.unwrap().unwrap();
        assert_eq!(
            (call.status(), call.duration),
            (CallStatus::Canceled, Some(0))
        );
        assert!(matches!(
            store
                .update_call(&a.sid, &call.sid, &CallUpdate::default(), 4_000)
                .await,
            Err(StoreError::Conflict(_))
        ));
    }

    #[tokio::test]
    async fn list_filters_and_account_isolation() {
        let store = store().await;
        let a = account(&store).await;
        let b = account(&store).await;
        for i in 0..4 {
            store
                .create_call(&a.sid, &new_call(&format!("+1{i}")), i)
                .await
                .unwrap();
        }
        let other = store
            .create_call(&b.sid, &new_call("+10"), 9)
            .await
            .unwrap();
        let none = CallFilter::default();
        let all = store
            .list_calls(&a.sid, &none, PageRequest::first(50))
            .await
            .unwrap();
        assert_eq!(all.items.len(), 4);
        let f = CallFilter {
            to: Some("+10".into()),
            ..Default::default()
        };
        let one = store
            .list_calls(&a.sid, &f, PageRequest::first(50))
            .await
            .unwrap();
        assert_eq!(one.items.len(), 1);
        let f = CallFilter {
            status: Some(CallStatus::Completed),
            ..Default::default()
        };
        assert!(
            store
                .list_calls(&a.sid, &f, PageRequest::first(50))
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert!(store.call(&a.sid, &other.sid).await.unwrap().is_none());
    }

    /// The call model is stored as the text the store wrote before it was typed: a typed call
    /// writes those columns, and a row (and its log) written then reads as the typed call.
    #[tokio::test]
    async fn the_call_model_is_stored_as_before() {
        use crate::text::StoredText;
        use crate::{CallbackEvent, MachineDetection, Pin, RequestParams};
        let store = store().await;
        let a = account(&store).await;
        let mut new = new_call("+1555");
        let i = &mut new.instructions;
        i.method = HttpMethod::Get;
        i.status_callback_event = [CallbackEvent::Answered, CallbackEvent::Initiated]
            .into_iter()
            .collect();
        i.machine_detection = Some(MachineDetection::DetectMessageEnd);
        i.request_params = RequestParams(vec![("To".into(), "+1555".into())]);
        new.plugins.insert(
            "call-flow",
            Pin {
                plugin: "ZP1".into(),
                sha256: Some("ab".into()),
                config: r#"{"x": 1}"#.into(),
                deadline_ms: Some(20),
                binding: None,
            },
        );
        let call = store.create_call(&a.sid, &new, 1_000).await.unwrap();
        let columns: (
            String,
            String,
            String,
            String,
            Option<String>,
            String,
            String,
        ) = sqlx::query_as(
            "SELECT direction, method, fallback_method, status_callback_event,
                    machine_detection, request_params, plugins FROM calls WHERE sid = $1",
        )
        .bind(&call.sid)
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(
            columns,
            (
                "outbound-api".into(),
                "GET".into(),
                "POST".into(),
                "answered initiated".into(),
                Some("DetectMessageEnd".into()),
                r#"[["To","+1555"]]"#.into(),
                r#"{"call-flow":{"config":{"x":1},"deadline_ms":20,"plugin":"ZP1","sha256":"ab"}}"#
                    .into(),
            )
        );
        let created = &store.call_events(&call.sid).await.unwrap()[0];
        assert_eq!(
            (created.kind.as_str(), created.detail.as_str()),
            ("created", r#"{"status":"queued"}"#)
        );

        // a row as an inbound call was stored, read back without the cache
        sqlx::query(
            r#"INSERT INTO calls (sid, account_sid, direction, to_number, from_number, status, url,
                method, fallback_method, status_callback_method, status_callback_event, timeout,
                time_limit, record, machine_detection, request_params, plugins, date_created,
                date_updated, event_detail)
             VALUES ('CA0123456789abcdef0123456789abcdef', $1, 'inbound', '+1555', '+1666',
                'ringing', 'http://example.com/voice', 'GET', 'POST', 'POST', 'completed', 60,
                14400, 1, NULL, '[]', '{}', 7, 7, '{"status":"ringing"}')"#,
        )
        .bind(&a.sid)
        .execute(&store.writer)
        .await
        .unwrap();
        let old = store
            .call(&a.sid, "CA0123456789abcdef0123456789abcdef")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (old.direction, old.status, old.plugins.is_empty()),
            (Direction::Inbound, CallStatus::Ringing, true)
        );
        assert_eq!(
            old.instructions,
            CallInstructions {
                url: Some("http://example.com/voice".into()),
                method: HttpMethod::Get,
                record: true,
                ..CallInstructions::default()
            }
        );
        assert_eq!(
            old.instructions.status_callback_event.to_text(),
            "completed"
        );
        let log = store.call_events(&old.sid).await.unwrap();
        assert_eq!(
            log[0].entry().unwrap(),
            CallLogEntry::Created {
                status: CallStatus::Ringing
            }
        );
    }

    #[tokio::test]
    async fn log_entries_are_stored_as_their_kind_and_detail() {
        let store = store().await;
        let a = account(&store).await;
        let call = store
            .create_call(&a.sid, &new_call("+1555"), 1)
            .await
            .unwrap();
        let t = Transition {
            cause: StatusCause::Ended {
                code: Some(486),
                end: "Rejected(486)".into(),
                by_peer: true,
            },
            ..to(CallStatus::Busy, 3)
        };
        store
            .transition_call_quietly(&a.sid, &call.sid, &t)
            .await
            .unwrap();
        let refused = CallLogEntry::FlowRefused { sip: 486 };
        store
            .append_call_event(&call.sid, 2, &refused)
            .await
            .unwrap();
        let rows = store.call_events(&call.sid).await.unwrap();
        let rows: Vec<_> = rows
            .iter()
            .map(|e| (e.kind.as_str(), e.detail.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("created", r#"{"status":"queued"}"#),
                (
                    "busy",
                    r#"{"by_peer":true,"end":"Rejected(486)","sip":486}"#
                ),
                ("flow.refused", r#"{"sip":486}"#),
            ]
        );
    }

    #[tokio::test]
    async fn update_replaces_url_with_twiml() {
        let store = store().await;
        let a = account(&store).await;
        let call = store
            .create_call(&a.sid, &new_call("+1555"), 1)
            .await
            .unwrap();
        let u = CallUpdate {
            twiml: Some("<Response/>".into()),
            ..Default::default()
        };
        let up = store.update_call(&a.sid, &call.sid, &u, 2).await.unwrap();
        assert_eq!(
            (up.instructions.url, up.instructions.twiml.as_deref()),
            (None, Some("<Response/>"))
        );
    }
}
