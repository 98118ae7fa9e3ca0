//! The call journal: calls' creations, status changes (with the webhooks and events they
//! enqueue) and event-log entries, written by group commit. One task takes what is queued and
//! writes it on the writer connection: many calls' changes together, log entries as one
//! multi-row `INSERT`. A change someone waits for is written at once, with the other changes
//! queued by then and the waiting log entries of its call; other log entries wait up to
//! [`BATCH_DELAY`] (or for [`BATCH_ROWS`] rows) to share one `INSERT`. A batch holding a change
//! that enqueues webhooks is one transaction (the change and its webhooks are atomic); any
//! other batch is written statement by statement, each atomic by itself, without BEGIN and
//! COMMIT round trips.
//!
//! The guarantees are the store's as before: a creation or status change is answered only once
//! it is committed (and put in the cache), so nothing anyone is told is lost; the outbox sees
//! only committed rows. Log entries are appended without waiting; they are committed before a
//! read of their call's log, before their call's next change (which is written after them), and
//! when the store closes, so they keep their order and a crash loses at most the last
//! [`BATCH_DELAY`] of entries nobody has read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{mpsc, oneshot};

use crate::cache::Cache;
use crate::calls::{Transition, fetch_call, insert_call, update_status};
use crate::deliveries::insert_delivery;
use crate::{Call, CallLogEntry, NewCall, NewDelivery, Result, StoreError};

/// How long log entries may wait for others to share their commit.
pub const BATCH_DELAY: Duration = Duration::from_millis(5);
/// Log entries one `INSERT` writes at most (4 parameters each, far below SQLite's and
/// PostgreSQL's limits on parameters); also what one batch gathers before it is written.
pub const BATCH_ROWS: usize = 512;

/// The webhooks and events a change enqueues, derived from the row it produced; `None` for a
/// change that enqueues nothing (its one statement is atomic without a transaction).
pub(crate) type Webhooks = Option<Box<dyn FnOnce(&Call) -> Vec<NewDelivery> + Send>>;

enum Op {
    Row(Row),
    Create {
        account: String,
        call: Box<NewCall>,
        now: i64,
        webhooks: Webhooks,
        reply: oneshot::Sender<Result<Call>>,
    },
    Transition {
        account: String,
        sid: String,
        t: Transition,
        webhooks: Webhooks,
        reply: oneshot::Sender<Result<Call>>,
    },
    /// Commit everything queued before this, then answer.
    Flush(oneshot::Sender<()>),
}

impl Op {
    /// A change that is atomic by itself (it enqueues nothing).
    fn single_statement(&self) -> bool {
        matches!(
            self,
            Op::Create { webhooks: None, .. } | Op::Transition { webhooks: None, .. }
        )
    }
}

struct Row {
    call_sid: String,
    at: i64,
    kind: &'static str,
    detail: String,
}

/// The journal's handle; the store holds one.
pub struct Journal {
    ops: mpsc::UnboundedSender<Op>,
    /// Log entries appended and not yet committed, by call.
    pending: Arc<Mutex<HashMap<String, usize>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<HashMap<String, usize>>) -> MutexGuard<'_, HashMap<String, usize>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn closed() -> StoreError {
    StoreError::Conflict("the store is closing".into())
}

impl Journal {
    /// Starts the journal's writer task on `writer` (the store's single writer connection),
    /// keeping `cache` in step with what it commits.
    pub fn start(writer: AnyPool, cache: Arc<Cache>) -> Journal {
        let (ops, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(run(writer, cache, rx, Arc::clone(&pending)));
        Journal { ops, pending }
    }

    /// Appends `entry` to the log of `call_sid`; it is committed within a few milliseconds.
    pub fn append(&self, call_sid: &str, at: i64, entry: &CallLogEntry) {
        let row = Row {
            call_sid: call_sid.to_owned(),
            at,
            kind: entry.kind(),
            detail: entry.detail().to_string(),
        };
        *lock(&self.pending).entry(row.call_sid.clone()).or_insert(0) += 1;
        if self.ops.send(Op::Row(row)).is_err() {
            // the writer task is gone (the runtime is shutting down): nothing will commit it
            tracing::error!(
                call = call_sid,
                "the call journal is closed; a log entry is lost"
            );
        }
    }

    /// Creates a call (and the webhooks `webhooks` derives from it); answers once committed.
    pub(crate) async fn create(
        &self,
        account: &str,
        call: &NewCall,
        now: i64,
        webhooks: Webhooks,
    ) -> Result<Call> {
        let (reply, answer) = oneshot::channel();
        let op = Op::Create {
            account: account.to_owned(),
            call: Box::new(call.clone()),
            now,
            webhooks,
            reply,
        };
        self.ops.send(op).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Moves a call to a new status (and enqueues what `webhooks` derives from the updated
    /// row); answers once committed.
    pub(crate) async fn transition(
        &self,
        account: &str,
        sid: &str,
        t: &Transition,
        webhooks: Webhooks,
    ) -> Result<Call> {
        let (reply, answer) = oneshot::channel();
        let op = Op::Transition {
            account: account.to_owned(),
            sid: sid.to_owned(),
            t: t.clone(),
            webhooks,
            reply,
        };
        self.ops.send(op).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Commits the entries of `call_sid` appended so far, if any wait (and everything before).
    pub async fn flush_call(&self, call_sid: &str) {
        if lock(&self.pending).contains_key(call_sid) {
            self.flush().await;
        }
    }

    /// Commits everything queued so far.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ops.send(Op::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The writer. A change someone waits for is written at once, with the other changes queued by
/// then and the log entries of the calls it changes (a status change logs a row, which must
/// follow them); other log entries wait in `rows` until the oldest has waited
/// [`BATCH_DELAY`], until there are [`BATCH_ROWS`] of them, or until someone asks for a flush.
async fn run(
    writer: AnyPool,
    cache: Arc<Cache>,
    mut ops: mpsc::UnboundedReceiver<Op>,
    pending: Arc<Mutex<HashMap<String, usize>>>,
) {
    let mut rows: Vec<Op> = Vec::new();
    let mut due: Option<tokio::time::Instant> = None;
    let mut open = true;
    while open || !rows.is_empty() {
        let first = match due {
            _ if !open => None,
            None => ops.recv().await,
            Some(due) => tokio::time::timeout_at(due, ops.recv())
                .await
                .unwrap_or(None),
        };
        if first.is_none() && due.is_none_or(|d| tokio::time::Instant::now() < d) {
            // the channel closed: write out what is left, then stop
            open = false;
        }
        // what arrived, in its order
        let mut arrived: Vec<Op> = first.into_iter().collect();
        while rows.len() + arrived.len() < BATCH_ROWS {
            match ops.try_recv() {
                Ok(op) => arrived.push(op),
                Err(_) => break,
            }
        }
        let now = tokio::time::Instant::now();
        let waiting = rows.len() + arrived.iter().filter(|o| matches!(o, Op::Row(_))).count();
        let rows_due = !open
            || waiting >= BATCH_ROWS
            || due.is_some_and(|d| now >= d)
            || arrived.iter().any(|o| matches!(o, Op::Flush(_)));
        // a status change logs a row of its own, which must follow the entries its call logged
        // before it: those go with it, in the order they came
        let changed: Vec<String> = arrived
            .iter()
            .filter_map(|o| match o {
                Op::Transition { sid, .. } => Some(sid.clone()),
                _ => None,
            })
            .collect();
        let goes_now = |op: &Op| match op {
            Op::Row(r) => rows_due || changed.contains(&r.call_sid),
            _ => true,
        };
        let (mut batch, mut left): (Vec<Op>, Vec<Op>) = rows.drain(..).partition(goes_now);
        let (now_too, later): (Vec<Op>, Vec<Op>) = arrived.into_iter().partition(goes_now);
        batch.extend(now_too);
        left.extend(later);
        rows = left;
        if rows.is_empty() {
            due = None;
        } else if due.is_none() {
            due = Some(now + BATCH_DELAY);
        }
        if batch.is_empty() {
            continue;
        }
        let written: Vec<String> = batch
            .iter()
            .filter_map(|o| match o {
                Op::Row(r) => Some(r.call_sid.clone()),
                _ => None,
            })
            .collect();
        write_batch(&writer, &cache, batch).await;
        let mut p = lock(&pending);
        for sid in written {
            if let Some(n) = p.get_mut(&sid) {
                *n -= 1;
                if *n == 0 {
                    p.remove(&sid);
                }
            }
        }
    }
}

/// What a change did, to answer once the batch is committed.
enum Done {
    Changed(oneshot::Sender<Result<Call>>, Result<Call>),
    Flushed(oneshot::Sender<()>),
}

/// Answers what was committed, putting the changed calls in the cache.
fn answer(cache: &Cache, done: Vec<Done>) {
    for d in done {
        match d {
            Done::Changed(reply, result) => {
                if let Ok(call) = &result {
                    cache.put_call(call);
                }
                let _ = reply.send(result);
            }
            Done::Flushed(f) => {
                let _ = f.send(());
            }
        }
    }
}

/// Writes `ops` and answers them. Should the batch fail as a whole, each change not yet
/// answered is tried again on its own, so one bad change cannot sink its batch-mates.
async fn write_batch(writer: &AnyPool, cache: &Cache, ops: Vec<Op>) {
    let mut conn = match writer.acquire().await {
        Ok(c) => c,
        Err(e) => {
            let message = e.to_string();
            for op in ops {
                answer_err(op, &message);
            }
            return;
        }
    };
    if let Err((e, kept)) = apply_all(&mut conn, cache, ops).await {
        tracing::warn!(error = %e, "call journal: a batch failed; writing its changes one by one");
        for op in kept {
            if let Err((e, ops)) = apply_all(&mut conn, cache, vec![op]).await {
                let message = e.to_string();
                for op in ops {
                    answer_err(op, &message);
                }
            }
        }
    }
}

fn answer_err(op: Op, message: &str) {
    let err = || StoreError::Conflict(format!("the change was not stored: {message}"));
    match op {
        Op::Row(r) => {
            tracing::error!(call = %r.call_sid, kind = r.kind, error = message, "call journal: a log entry is lost")
        }
        Op::Create { reply, .. } | Op::Transition { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Op::Flush(f) => {
            let _ = f.send(());
        }
    }
}

/// Applies `ops` in order and answers them. A change that enqueues webhooks must be atomic
/// with them, so a batch holding one is one transaction (many calls' changes, one commit);
/// otherwise every statement is atomic by itself (a row per change, log entries in one
/// `INSERT`) and is written without BEGIN and COMMIT round trips. `Err` (with the ops not yet
/// applied, untouched) when the batch failed as a whole: in a transaction everything was
/// rolled back and its changes are answered with the failure; outside one what was written
/// stands and is answered. An error of one change's own (an illegal move, a call that
/// changed) is that change's answer, not the batch's.
async fn apply_all(
    conn: &mut AnyConnection,
    cache: &Cache,
    ops: Vec<Op>,
) -> std::result::Result<(), (StoreError, Vec<Op>)> {
    let tx = ops
        .iter()
        .any(|o| matches!(o, Op::Create { .. } | Op::Transition { .. }) && !o.single_statement());
    if tx && let Err(e) = sqlx::query("BEGIN").execute(&mut *conn).await {
        return Err((e.into(), ops));
    }
    let mut done = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut failed: Option<StoreError> = None;
    let mut kept: Vec<Op> = Vec::new();
    for op in ops {
        if failed.is_some() {
            kept.push(op);
            continue;
        }
        let op = match op {
            Op::Row(r) => {
                rows.push(r);
                if rows.len() == BATCH_ROWS
                    && let Err(e) = write_rows(conn, &std::mem::take(&mut rows)).await
                {
                    failed = Some(e);
                }
                continue;
            }
            Op::Flush(f) => {
                done.push(Done::Flushed(f));
                continue;
            }
            change => change,
        };
        // the entries logged before a change are written before it
        if let Err(e) = write_rows(conn, &std::mem::take(&mut rows)).await {
            failed = Some(e);
            kept.push(op);
            continue;
        }
        let (reply, result) = match op {
            Op::Create {
                account,
                call,
                now,
                webhooks,
                reply,
            } => (reply, create(conn, &account, &call, now, webhooks).await),
            Op::Transition {
                account,
                sid,
                t,
                webhooks,
                reply,
            } => (
                reply,
                transition(conn, cache, &account, &sid, &t, webhooks).await,
            ),
            Op::Row(_) | Op::Flush(_) => continue,
        };
        match result {
            Err(e) if is_fatal(&e) => {
                // the reply cannot be rebuilt into an op: answer it now
                let _ = reply.send(Err(StoreError::Conflict(format!(
                    "the change was not stored: {e}"
                ))));
                failed = Some(e);
            }
            result => done.push(Done::Changed(reply, result)),
        }
    }
    if failed.is_none()
        && let Err(e) = write_rows(conn, &rows).await
    {
        failed = Some(e);
    }
    let committed = match failed {
        None if !tx => Ok(()),
        None => sqlx::query("COMMIT")
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(StoreError::from),
        Some(e) => Err(e),
    };
    let Err(e) = committed else {
        answer(cache, done);
        return Ok(());
    };
    if !rows.is_empty() {
        tracing::error!(rows = rows.len(), error = %e, "call journal: log entries lost");
    }
    if !tx {
        // what was written stands
        answer(cache, done);
        return Err((e, kept));
    }
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    // what was applied is undone: its callers hear the failure; the log entries written are
    // lost with it (logged), the rest is retried by the caller
    for d in done {
        match d {
            Done::Changed(reply, _) => {
                let _ = reply.send(Err(StoreError::Conflict(format!(
                    "the change was not stored: {e}"
                ))));
            }
            Done::Flushed(f) => {
                let _ = f.send(());
            }
        }
    }
    Err((e, kept))
}

/// A database error that leaves the transaction unusable (not a change's own refusal).
fn is_fatal(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(_))
}

async fn create(
    conn: &mut AnyConnection,
    account: &str,
    call: &NewCall,
    now: i64,
    webhooks: Webhooks,
) -> Result<Call> {
    let created = insert_call(&mut *conn, account, call, None, now).await?;
    for w in webhooks.map(|w| w(&created)).unwrap_or_default() {
        insert_delivery(&mut *conn, &w, now).await?;
    }
    Ok(created)
}

/// Moves the call, starting from the cached row when there is one: the cache holds this
/// process's last committed write of it (we are the only writer), which saves a read; the
/// UPDATE checks the status it was based on and, should the cache be behind (a change earlier
/// in this batch), the stored row is read and used instead.
async fn transition(
    conn: &mut AnyConnection,
    cache: &Cache,
    account: &str,
    sid: &str,
    t: &Transition,
    webhooks: Webhooks,
) -> Result<Call> {
    let cached = cache
        .call(sid)
        .filter(|c| c.account_sid == account)
        .map(|c| (*c).clone());
    let mut updated = None;
    if let Some(call) = cached {
        updated = update_status(&mut *conn, &call, t).await?;
    }
    let updated = match updated {
        Some(u) => u,
        None => {
            let call = fetch_call(&mut *conn, account, sid).await?;
            update_status(&mut *conn, &call, t).await?.ok_or_else(|| {
                StoreError::Conflict("the call changed while being updated".into())
            })?
        }
    };
    for w in webhooks.map(|w| w(&updated)).unwrap_or_default() {
        insert_delivery(&mut *conn, &w, t.at).await?;
    }
    Ok(updated)
}

/// One `INSERT` of `rows`, in the order they were appended.
async fn write_rows(conn: &mut AnyConnection, rows: &[Row]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut sql = String::with_capacity(64 + rows.len() * 24);
    sql.push_str("INSERT INTO call_events (call_sid, at, kind, detail) VALUES ");
    for i in 0..rows.len() {
        let n = i * 4;
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4));
    }
    let mut q = sqlx::query(&sql);
    for r in rows {
        q = q.bind(&r.call_sid).bind(r.at).bind(r.kind).bind(&r.detail);
    }
    q.execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::test_support::store;
    use crate::{CallLogEntry, Store};

    async fn kinds(store: &Store, call: &str) -> Vec<String> {
        store
            .call_events(call)
            .await
            .unwrap()
            .into_iter()
            .map(|e| format!("{}@{}", e.kind, e.at))
            .collect()
    }

    #[tokio::test]
    async fn logged_rows_are_read_back_in_order_once_their_call_is_read() {
        let store = store().await;
        for i in 0..700 {
            let call = if i % 2 == 0 { "CA1" } else { "CA2" };
            store.log_call_event(call, i, &CallLogEntry::FlowAnswered);
        }
        store.log_call_event("CA1", 1_000, &CallLogEntry::FlowRefused { sip: 486 });
        // more than one INSERT's worth, all there, each call's in the order logged
        let one = kinds(&store, "CA1").await;
        assert_eq!(one.len(), 351);
        assert_eq!(one[0], "flow.answered@0");
        assert_eq!(one[349], "flow.answered@698");
        assert_eq!(one[350], "flow.refused@1000");
        assert_eq!(kinds(&store, "CA2").await.len(), 350);
    }

    #[tokio::test]
    async fn an_appended_row_is_committed_when_append_returns_and_after_logged_ones() {
        let store = store().await;
        store.log_call_event("CA1", 1, &CallLogEntry::FlowAnswered);
        store
            .append_call_event("CA1", 2, &CallLogEntry::FlowRefused { sip: 603 })
            .await
            .unwrap();
        // read straight from the table, not through the flushing read
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT kind, at FROM call_events WHERE call_sid = 'CA1' ORDER BY id")
                .fetch_all(&store.pool)
                .await
                .unwrap();
        assert_eq!(
            rows,
            [
                ("flow.answered".to_owned(), 1),
                ("flow.refused".to_owned(), 2)
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_calls_changes_share_batches_and_one_refusal_sinks_none_of_them() {
        use crate::calls::tests::{new_call, to};
        use crate::{CallStatus, StoreError};
        let store = store().await;
        let a = crate::test_support::account(&store).await;
        let mut tasks = Vec::new();
        for i in 0..50 {
            let (store, account) = (store.clone(), a.sid.clone());
            tasks.push(tokio::spawn(async move {
                let call = store
                    .create_call(&account, &new_call(&format!("+1555{i:04}")), 1_000)
                    .await
                    .unwrap();
                store.log_call_event(&call.sid, 1_001, &CallLogEntry::FlowAnswered);
                let ringing = store
                    .transition_call_quietly(&account, &call.sid, &to(CallStatus::Ringing, 2_000))
                    .await
                    .unwrap();
                // an illegal move is this change's refusal, not its batch's
                let refused = store
                    .transition_call_quietly(&account, &call.sid, &to(CallStatus::Completed, 3_000))
                    .await;
                assert!(
                    matches!(refused, Err(StoreError::Conflict(_))),
                    "{refused:?}"
                );
                let done = store
                    .transition_call_quietly(&account, &call.sid, &to(CallStatus::NoAnswer, 4_000))
                    .await
                    .unwrap();
                (call.sid, ringing.status(), done.status())
            }));
        }
        for t in tasks {
            let (sid, ringing, done) = t.await.unwrap();
            assert_eq!((ringing, done), (CallStatus::Ringing, CallStatus::NoAnswer));
            assert_eq!(
                kinds(&store, &sid).await,
                [
                    "created@1000",
                    "flow.answered@1001",
                    "ringing@2000",
                    "no-answer@4000"
                ]
            );
        }
    }

    #[tokio::test]
    async fn entries_keep_their_order_around_a_change_queued_with_them() {
        use crate::CallStatus;
        use crate::calls::tests::{new_call, to};
        let store = store().await;
        let a = crate::test_support::account(&store).await;
        let call = store
            .create_call(&a.sid, &new_call("+1555"), 1_000)
            .await
            .unwrap();
        store.log_call_event(&call.sid, 1_500, &CallLogEntry::FlowAnswered);
        store.log_call_event("CA-other", 1_600, &CallLogEntry::FlowAnswered);
        // the change is queued (its future polled once), then an entry is logged before the
        // writer runs: the writer takes both at once and must keep them in that order
        let ringing = to(CallStatus::Ringing, 2_000);
        let mut change = std::pin::pin!(store.transition_call_quietly(&a.sid, &call.sid, &ringing));
        std::future::poll_fn(|cx| {
            assert!(change.as_mut().poll(cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        store.log_call_event(&call.sid, 2_001, &CallLogEntry::FlowRefused { sip: 603 });
        change.await.unwrap();
        assert_eq!(
            kinds(&store, &call.sid).await,
            [
                "created@1000",
                "flow.answered@1500",
                "ringing@2000",
                "flow.refused@2001"
            ]
        );
        assert_eq!(kinds(&store, "CA-other").await, ["flow.answered@1600"]);
    }

    #[tokio::test]
    async fn closing_the_store_writes_out_what_was_logged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_dir(dir.path()).await.unwrap();
        for i in 0..10 {
            store.log_call_event("CA9", i, &CallLogEntry::FlowAnswered);
        }
        store.close().await;
        let again = Store::open_in_dir(dir.path()).await.unwrap();
        assert_eq!(kinds(&again, "CA9").await.len(), 10);
    }
}
