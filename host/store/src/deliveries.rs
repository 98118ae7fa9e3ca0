//! The webhook delivery outbox: callbacks persisted before they are sent, claimed with a lease,
//! and retried until delivered or given up. Every attempt is recorded.

use sqlx::{AnyConnection, FromRow};

use crate::{Result, Store, StoreError};

/// A webhook to send. Its `Debug` leaves out header values and the body (a plugin's headers
/// carry its credentials).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NewDelivery {
    pub account_sid: String,
    pub call_sid: Option<String>,
    /// What it is, e.g. `status-callback` or `recording-status-callback`; `call-event` (a
    /// lifecycle event for a call-events plugin, JSON in `body`) and `plugin-request` (a request
    /// such a plugin asked for) are the plugin rows.
    pub kind: String,
    pub url: String,
    pub method: String,
    /// Form parameters, in order.
    pub params: Vec<(String, String)>,
    /// A plugin request's own headers (webhooks carry only their signature).
    pub headers: Vec<(String, String)>,
    /// A plugin request's body or a call event's JSON (webhooks are form-encoded `params`).
    pub body: Option<Vec<u8>>,
    /// Rows with the same key are made at most once per account: a second one is not stored.
    pub idempotency_key: Option<String>,
}

impl std::fmt::Debug for NewDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("NewDelivery")
            .field("account_sid", &self.account_sid)
            .field("call_sid", &self.call_sid)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("method", &self.method)
            .field("params", &self.params)
            .field("header_names", &header_names)
            .field("body_bytes", &self.body.as_ref().map(Vec::len))
            .field("idempotency_key", &self.idempotency_key)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(Self::Pending),
            "delivered" => Ok(Self::Delivered),
            "failed" => Ok(Self::Failed),
            other => Err(StoreError::Corrupt(format!("delivery state {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub webhook: NewDelivery,
    pub state: DeliveryState,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(FromRow)]
struct Row {
    id: i64,
    account_sid: String,
    call_sid: Option<String>,
    kind: String,
    url: String,
    method: String,
    params: String,
    headers: String,
    body: Option<Vec<u8>>,
    idempotency_key: Option<String>,
    state: String,
    attempts: i64,
    next_attempt_at: i64,
    last_error: Option<String>,
    created_at: i64,
    finished_at: Option<i64>,
}

impl TryFrom<Row> for Delivery {
    type Error = StoreError;
    fn try_from(r: Row) -> Result<Self> {
        let params = serde_json::from_str(&r.params)
            .map_err(|e| StoreError::Corrupt(format!("delivery {} params: {e}", r.id)))?;
        let headers = serde_json::from_str(&r.headers)
            .map_err(|e| StoreError::Corrupt(format!("delivery {} headers: {e}", r.id)))?;
        Ok(Delivery {
            id: r.id,
            webhook: NewDelivery {
                account_sid: r.account_sid,
                call_sid: r.call_sid,
                kind: r.kind,
                url: r.url,
                method: r.method,
                params,
                headers,
                body: r.body,
                idempotency_key: r.idempotency_key,
            },
            state: DeliveryState::parse(&r.state)?,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            created_at: r.created_at,
            finished_at: r.finished_at,
        })
    }
}

const COLUMNS: &str =
    "id, account_sid, call_sid, kind, url, method, params, headers, body, idempotency_key, state,
    attempts, next_attempt_at, last_error, created_at, finished_at";

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    pub at: i64,
    pub status_code: Option<u16>,
    /// `None` when the peer accepted the webhook.
    pub error: Option<String>,
    pub duration_ms: i64,
    /// For a failed attempt: when to try again, or `None` to give up.
    pub retry_at: Option<i64>,
}

/// Stores `d`, due at `now`; `None` when a row with its idempotency key already exists.
pub(crate) async fn insert_delivery(
    conn: &mut AnyConnection,
    d: &NewDelivery,
    now: i64,
) -> Result<Option<i64>> {
    let params =
        serde_json::to_string(&d.params).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let headers =
        serde_json::to_string(&d.headers).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let id: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO webhook_deliveries
             (account_sid, call_sid, kind, url, method, params, headers, body, idempotency_key,
              next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (account_sid, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id",
    )
    .bind(&d.account_sid)
    .bind(&d.call_sid)
    .bind(&d.kind)
    .bind(&d.url)
    .bind(&d.method)
    .bind(params)
    .bind(headers)
    .bind(&d.body)
    .bind(&d.idempotency_key)
    .bind(now)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(id.map(|(id,)| id))
}

fn rows(rows: Vec<Row>) -> Result<Vec<Delivery>> {
    rows.into_iter().map(Delivery::try_from).collect()
}

impl Store {
    /// Persists a webhook for sending as soon as possible; `None` when its idempotency key
    /// was already used (nothing is stored).
    pub async fn enqueue_delivery(&self, d: &NewDelivery, now: i64) -> Result<Option<i64>> {
        let mut conn = self.writer.acquire().await?;
        insert_delivery(&mut conn, d, now).await
    }

    /// Pending deliveries due at `now`, oldest first (read-only; see `claim_deliveries`).
    pub async fn due_deliveries(&self, now: i64, limit: u32) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $1
             ORDER BY next_attempt_at, id LIMIT $2"
        );
        rows(
            sqlx::query_as(&sql)
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Claims up to `limit` due deliveries for `node` by pushing their next attempt `lease_ms`
    /// into the future, so a sender that dies mid-attempt leaves them to be retried, not lost
    /// (at once when its node is declared dead and its claims freed, else when the lease runs
    /// out). On PostgreSQL, rows another node is claiming at this moment are skipped, not waited
    /// for.
    pub async fn claim_deliveries(
        &self,
        now: i64,
        lease_ms: i64,
        limit: u32,
        node: &str,
    ) -> Result<Vec<Delivery>> {
        // a call's events go to its call-events plugin one at a time, in the order they
        // happened: an event waits while an older one of its call is pending (being run, or
        // waiting for its retry)
        let sql = format!(
            "UPDATE webhook_deliveries SET next_attempt_at = $1, leased_by = $4
             WHERE id IN (SELECT d.id FROM webhook_deliveries d
                          WHERE d.state = 'pending' AND d.next_attempt_at <= $2
                            AND NOT (d.kind = 'call-event' AND EXISTS (
                                SELECT 1 FROM webhook_deliveries o
                                WHERE o.call_sid = d.call_sid AND o.id < d.id
                                  AND o.kind = 'call-event' AND o.state = 'pending'))
                          ORDER BY d.next_attempt_at, d.id LIMIT $3{})
             RETURNING {COLUMNS}",
            self.skip_locked()
        );
        let mut claimed = rows(
            sqlx::query_as(&sql)
                .bind(now + lease_ms)
                .bind(now)
                .bind(i64::from(limit))
                .bind(node)
                .fetch_all(&self.writer)
                .await?,
        )?;
        claimed.sort_by_key(|d| (d.created_at, d.id));
        Ok(claimed)
    }

    /// The earliest time a pending delivery is due, if any.
    pub async fn next_delivery_due(&self) -> Result<Option<i64>> {
        let (due,): (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE state = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(due)
    }

    /// Records an attempt and moves the delivery on: delivered, rescheduled or given up.
    pub async fn record_attempt(&self, id: i64, o: &AttemptOutcome) -> Result<()> {
        self.record_attempt_with(id, o, &[]).await.map(|_| ())
    }

    /// [`Store::record_attempt`] that also stores `follow_ups` (the requests a call-events
    /// plugin asked for while handling this row) in the same transaction, so a crash either
    /// keeps both or neither. Returns how many were stored (an idempotency key already used
    /// stores nothing).
    pub async fn record_attempt_with(
        &self,
        id: i64,
        o: &AttemptOutcome,
        follow_ups: &[NewDelivery],
    ) -> Result<usize> {
        let mut tx = self.writer.begin().await?;
        let mut stored = 0;
        for d in follow_ups {
            stored += usize::from(insert_delivery(&mut tx, d, o.at).await?.is_some());
        }
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, at, status_code, error, duration_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(o.at)
        .bind(o.status_code.map(i64::from))
        .bind(&o.error)
        .bind(o.duration_ms)
        .execute(&mut *tx)
        .await?;
        let (state, next, finished) = match (&o.error, o.retry_at) {
            (None, _) => ("delivered", o.at, Some(o.at)),
            (Some(_), Some(retry)) => ("pending", retry, None),
            (Some(_), None) => ("failed", o.at, Some(o.at)),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2,
                last_error = $3, finished_at = $4, leased_by = NULL WHERE id = $5",
        )
        .bind(state)
        .bind(next)
        .bind(&o.error)
        .bind(finished)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    pub async fn delivery(&self, id: i64) -> Result<Option<Delivery>> {
        let sql = format!("SELECT {COLUMNS} FROM webhook_deliveries WHERE id = $1");
        let row: Option<Row> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Delivery::try_from).transpose()
    }

    /// Every delivery made for a call, oldest first.
    pub async fn call_deliveries(&self, call_sid: &str) -> Result<Vec<Delivery>> {
        let sql =
            format!("SELECT {COLUMNS} FROM webhook_deliveries WHERE call_sid = $1 ORDER BY id");
        rows(
            sqlx::query_as(&sql)
                .bind(call_sid)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::store;

    fn hook() -> NewDelivery {
        NewDelivery {
            account_sid: "AC1".into(),
            call_sid: Some("CA1".into()),
            kind: "status-callback".into(),
            url: "http://example.com/cb?x=1".into(),
            method: "POST".into(),
            params: vec![
                ("CallSid".into(), "CA1".into()),
                ("CallStatus".into(), "busy".into()),
            ],
            ..NewDelivery::default()
        }
    }

    fn failed(at: i64, retry_at: Option<i64>) -> AttemptOutcome {
        AttemptOutcome {
            at,
            status_code: Some(500),
            error: Some("HTTP 500".into()),
            duration_ms: 3,
            retry_at,
        }
    }

    #[tokio::test]
    async fn claim_leases_then_retry_then_deliver() {
        let store = store().await;
        let id = store.enqueue_delivery(&hook(), 100).await.unwrap().unwrap();
        assert!(
            store
                .claim_deliveries(99, 1_000, 10, "n1")
                .await
                .unwrap()
                .is_empty()
        );
        let claimed = store.claim_deliveries(100, 1_000, 10, "n1").await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].webhook, hook());
        // leased: a second claimer at the same time gets nothing; after the lease it is due again
        assert!(
            store
                .claim_deliveries(100, 1_000, 10, "n1")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.next_delivery_due().await.unwrap(), Some(1_100));
        store
            .record_attempt(id, &failed(150, Some(5_000)))
            .await
            .unwrap();
        assert!(
            store
                .claim_deliveries(4_999, 1_000, 10, "n1")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .claim_deliveries(5_000, 1_000, 10, "n1")
                .await
                .unwrap()
                .len(),
            1
        );
        let ok = AttemptOutcome {
            at: 5_010,
            status_code: Some(204),
            error: None,
            duration_ms: 2,
            retry_at: None,
        };
        store.record_attempt(id, &ok).await.unwrap();
        let d = store.delivery(id).await.unwrap().unwrap();
        assert_eq!(
            (d.state, d.attempts, d.finished_at),
            (DeliveryState::Delivered, 2, Some(5_010))
        );
        assert!(
            store
                .claim_deliveries(i64::MAX / 2, 1, 10, "n1")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.next_delivery_due().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_dead_nodes_claims_are_freed_for_the_others() {
        let store = store().await;
        let a = store.enqueue_delivery(&hook(), 100).await.unwrap().unwrap();
        let mut other = hook();
        other.url = "https://example.com/other".into();
        let b = store.enqueue_delivery(&other, 100).await.unwrap().unwrap();
        assert_eq!(
            store.claim_deliveries(100, 60_000, 1, "n1").await.unwrap()[0].id,
            a
        );
        assert_eq!(
            store.claim_deliveries(100, 60_000, 1, "n2").await.unwrap()[0].id,
            b
        );
        // n1 dies mid-attempt: its row is due at once, not when its lease runs out; n2's stays
        assert_eq!(store.release_deliveries("n1", 200).await.unwrap(), 1);
        let again = store.claim_deliveries(200, 60_000, 10, "n2").await.unwrap();
        assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), [a]);
        // an attempt recorded frees the claim: nothing of n2's is left to free after both
        store
            .record_attempt(a, &failed(300, Some(400)))
            .await
            .unwrap();
        store
            .record_attempt(b, &failed(300, Some(400)))
            .await
            .unwrap();
        assert_eq!(store.release_deliveries("n2", 350).await.unwrap(), 0);
        assert_eq!(store.next_delivery_due().await.unwrap(), Some(400));
    }

    #[tokio::test]
    async fn a_calls_events_are_claimed_one_at_a_time_in_order() {
        let store = store().await;
        let event = |call: &str, what: &str| NewDelivery {
            account_sid: "AC1".into(),
            call_sid: Some(call.into()),
            kind: "call-event".into(),
            url: "builtin:rapidpro".into(),
            method: "EVENT".into(),
            body: Some(what.as_bytes().to_vec()),
            ..NewDelivery::default()
        };
        let ringing = store
            .enqueue_delivery(&event("CA1", "ringing"), 10)
            .await
            .unwrap()
            .unwrap();
        let completed = store
            .enqueue_delivery(&event("CA1", "completed"), 11)
            .await
            .unwrap()
            .unwrap();
        let other = store
            .enqueue_delivery(&event("CA2", "ringing"), 12)
            .await
            .unwrap()
            .unwrap();
        let mut callback = hook();
        callback.call_sid = Some("CA1".into());
        let status = store
            .enqueue_delivery(&callback, 13)
            .await
            .unwrap()
            .unwrap();
        let ids = |c: Vec<Delivery>| c.into_iter().map(|d| d.id).collect::<Vec<_>>();
        // CA1's completed waits for its ringing; other calls' events and callbacks do not
        let first = ids(store.claim_deliveries(100, 1_000, 10, "n1").await.unwrap());
        assert_eq!(first, [ringing, other, status]);
        // ringing fails and waits for its retry: completed still waits
        store
            .record_attempt(ringing, &failed(150, Some(500)))
            .await
            .unwrap();
        assert!(
            store
                .claim_deliveries(400, 1_000, 10, "n1")
                .await
                .unwrap()
                .is_empty()
        );
        let retried = ids(store.claim_deliveries(500, 1_000, 10, "n1").await.unwrap());
        assert_eq!(retried, [ringing]);
        let ok = AttemptOutcome {
            at: 510,
            status_code: None,
            error: None,
            duration_ms: 1,
            retry_at: None,
        };
        store.record_attempt(ringing, &ok).await.unwrap();
        assert_eq!(
            ids(store.claim_deliveries(520, 1_000, 10, "n1").await.unwrap()),
            [completed]
        );
    }

    #[tokio::test]
    async fn giving_up_marks_failed() {
        let store = store().await;
        let id = store.enqueue_delivery(&hook(), 0).await.unwrap().unwrap();
        store.record_attempt(id, &failed(1, None)).await.unwrap();
        let d = store.delivery(id).await.unwrap().unwrap();
        assert_eq!(
            (d.state, d.last_error.as_deref()),
            (DeliveryState::Failed, Some("HTTP 500"))
        );
        assert_eq!(store.call_deliveries("CA1").await.unwrap().len(), 1);
    }

    fn plugin_request(account: &str, key: &str) -> NewDelivery {
        NewDelivery {
            account_sid: account.into(),
            call_sid: Some("CA1".into()),
            kind: "plugin-request".into(),
            url: "https://rapidpro.example/api/v2/flow_starts.json".into(),
            method: "POST".into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Some(b"{\"flow\":\"f\"}".to_vec()),
            idempotency_key: Some(key.into()),
            ..NewDelivery::default()
        }
    }

    #[tokio::test]
    async fn an_idempotency_key_stores_one_request_per_account() {
        let store = store().await;
        let first = store
            .enqueue_delivery(&plugin_request("AC1", "start:PA1"), 0)
            .await
            .unwrap();
        assert!(first.is_some());
        let again = store
            .enqueue_delivery(&plugin_request("AC1", "start:PA1"), 5)
            .await
            .unwrap();
        assert_eq!(again, None);
        // keys are per account; rows without a key are never merged
        assert!(
            store
                .enqueue_delivery(&plugin_request("AC2", "start:PA1"), 5)
                .await
                .unwrap()
                .is_some()
        );
        assert!(store.enqueue_delivery(&hook(), 5).await.unwrap().is_some());
        assert!(store.enqueue_delivery(&hook(), 6).await.unwrap().is_some());
        // headers and body come back as stored; Debug never shows a header's value
        let d = store.delivery(first.unwrap()).await.unwrap().unwrap();
        assert_eq!(d.webhook, plugin_request("AC1", "start:PA1"));
        let mut secret = plugin_request("AC1", "k");
        secret
            .headers
            .push(("Authorization".into(), "Token s3cr3t".into()));
        let shown = format!("{secret:?}");
        assert!(
            shown.contains("Authorization") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn follow_ups_are_stored_with_the_attempt_that_made_them() {
        let store = store().await;
        let event = store.enqueue_delivery(&hook(), 0).await.unwrap().unwrap();
        let ok = AttemptOutcome {
            at: 10,
            status_code: None,
            error: None,
            duration_ms: 1,
            retry_at: None,
        };
        let asks = [
            plugin_request("AC1", "k1"),
            plugin_request("AC1", "k1"),
            plugin_request("AC1", "k2"),
        ];
        assert_eq!(
            store.record_attempt_with(event, &ok, &asks).await.unwrap(),
            2
        );
        assert_eq!(
            store.delivery(event).await.unwrap().unwrap().state,
            DeliveryState::Delivered
        );
        let due = store.due_deliveries(10, 10).await.unwrap();
        assert_eq!(
            due.iter()
                .map(|d| d.webhook.idempotency_key.as_deref())
                .collect::<Vec<_>>(),
            [Some("k1"), Some("k2")]
        );
        // the same event handled again (say, after a crash) adds nothing
        assert_eq!(
            store.record_attempt_with(event, &ok, &asks).await.unwrap(),
            0
        );
    }
}
