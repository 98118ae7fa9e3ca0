//! The nodes sharing one database (issue 17): each running callflow process registers a row
//! (migration 0010) and beats its heartbeat; calls record the node that drives them and the
//! outbox's claims the node that holds them, so when a node dies another can end its calls and
//! free its claims. What "dead" means and who acts on it is the engine's (`cluster.rs`); this
//! is the data.

use sqlx::FromRow;

use crate::{Call, Result, Store};

/// A node's row.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// This run of the node (fresh at every start).
    pub incarnation: String,
    /// Where other nodes reach its API.
    pub http_url: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    /// `running` or `dead`.
    pub state: String,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

const NODE_COLUMNS: &str = "name, incarnation, http_url, started_at, heartbeat_at, state";

impl Store {
    /// Registers this run as node `name`: the row is taken over whatever it held (a previous
    /// run of the same node is dead by definition once its name starts again). Returns the
    /// previous run's row, if the name had one.
    pub async fn register_node(
        &self,
        name: &str,
        incarnation: &str,
        http_url: &str,
        now: i64,
    ) -> Result<Option<Node>> {
        let mut tx = self.writer.begin().await?;
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE name = $1");
        let previous: Option<Node> = sqlx::query_as(&sql)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM nodes WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO nodes (name, incarnation, http_url, started_at, heartbeat_at, state)
             VALUES ($1, $2, $3, $4, $4, 'running')",
        )
        .bind(name)
        .bind(incarnation)
        .bind(http_url)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(previous)
    }

    /// Refreshes this run's heartbeat; `false` when the row is no longer this run's or was
    /// declared dead (another node took over its calls: this run must stop acting).
    pub async fn heartbeat(&self, name: &str, incarnation: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE nodes SET heartbeat_at = $3
             WHERE name = $1 AND incarnation = $2 AND state = 'running'",
        )
        .bind(name)
        .bind(incarnation)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every node, by name.
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY name");
        Ok(sqlx::query_as(&sql).fetch_all(&self.pool).await?)
    }

    /// Declares `name`'s run `incarnation` dead, once: `false` if it was already, or the name
    /// has started again since.
    pub async fn declare_dead(&self, name: &str, incarnation: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE nodes SET state = 'dead', heartbeat_at = $3
             WHERE name = $1 AND incarnation = $2 AND state = 'running'",
        )
        .bind(name)
        .bind(incarnation)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets a dead node's row (its calls were ended, its claims freed).
    pub async fn forget_node(&self, name: &str, incarnation: &str) -> Result<()> {
        sqlx::query("DELETE FROM nodes WHERE name = $1 AND incarnation = $2 AND state = 'dead'")
            .bind(name)
            .bind(incarnation)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Calls `node` drives that have not ended (`ringing`, `in-progress`, or `queued` but
    /// already sent), and live calls no node owns (left by a run from before nodes were
    /// recorded): at start, or once `node` is dead, these are calls nobody will finish.
    pub async fn live_calls_of(&self, node: &str) -> Result<Vec<Call>> {
        Ok(sqlx::query_as(&crate::calls::live_calls_sql())
            .bind(node)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Frees the outbox rows `node` had claimed: due now, for any node to send.
    pub async fn release_deliveries(&self, node: &str, now: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET leased_by = NULL, next_attempt_at = $2
             WHERE leased_by = $1 AND state = 'pending'",
        )
        .bind(node)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }
}

/// A database session of its own, outside the pools, holding PostgreSQL advisory locks: a
/// node's name for as long as it runs, and the leader's lock while it leads. The server drops
/// a session's locks when the session ends, so a node that dies (even by `kill -9`, whose
/// connection the kernel closes) lets them go at once.
pub struct Session {
    conn: tokio::sync::Mutex<sqlx::AnyConnection>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Store {
    /// A new session for advisory locks; `None` on SQLite (one process, nothing to share).
    pub async fn session(&self) -> Result<Option<Session>> {
        if !self.shared {
            return Ok(None);
        }
        let conn = self.pool.acquire().await?.detach();
        Ok(Some(Session {
            conn: tokio::sync::Mutex::new(conn),
        }))
    }
}

impl Session {
    /// Takes the advisory lock named `key` unless another session holds it. Taking a lock this
    /// session holds already succeeds (and stacks: one `unlock` per `try_lock`).
    pub async fn try_lock(&self, key: &str) -> Result<bool> {
        let (got,): (i64,) = sqlx::query_as(
            "SELECT CASE WHEN pg_try_advisory_lock(hashtextextended($1, 0)) THEN 1 ELSE 0 END",
        )
        .bind(key)
        .fetch_one(&mut *self.conn.lock().await)
        .await?;
        Ok(got == 1)
    }

    /// Whether the session is still there (its locks with it).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.conn.lock().await)
            .await?;
        Ok(())
    }

    /// Lets the lock named `key` go (once).
    pub async fn unlock(&self, key: &str) -> Result<()> {
        sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(key)
            .execute(&mut *self.conn.lock().await)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::store;

    #[tokio::test]
    async fn a_node_registers_beats_and_is_declared_dead_once() {
        let s = store().await;
        assert_eq!(
            s.register_node("a", "run1", "http://a", 10).await.unwrap(),
            None
        );
        assert!(s.heartbeat("a", "run1", 20).await.unwrap());
        let b = s.register_node("b", "run1", "http://b", 15).await.unwrap();
        assert_eq!(b, None);
        let nodes = s.nodes().await.unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!((nodes[0].heartbeat_at, nodes[0].is_running()), (20, true));

        // declared dead: once, and its own heartbeat then tells it so
        assert!(s.declare_dead("a", "run1", 30).await.unwrap());
        assert!(!s.declare_dead("a", "run1", 31).await.unwrap());
        assert!(!s.heartbeat("a", "run1", 32).await.unwrap());

        // a restart takes the name over; the old run's row comes back as what it was
        let previous = s.register_node("b", "run2", "http://b2", 40).await.unwrap();
        assert_eq!(previous.map(|p| p.incarnation), Some("run1".into()));
        assert!(!s.heartbeat("b", "run1", 41).await.unwrap());
        assert!(s.heartbeat("b", "run2", 41).await.unwrap());
        // a dead run's row is not declared dead by a late sweep of its old incarnation
        assert!(!s.declare_dead("b", "run1", 42).await.unwrap());

        s.forget_node("a", "run1").await.unwrap();
        s.forget_node("b", "run2").await.unwrap(); // running: kept
        let names: Vec<_> = s
            .nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["b"]);
    }

    #[tokio::test]
    async fn a_lock_is_one_sessions_until_it_lets_go_or_ends() {
        let s = store().await;
        let Some(a) = s.session().await.unwrap() else {
            // SQLite: one process, no sessions
            assert!(!s.is_shared());
            return;
        };
        let b = s.session().await.unwrap().unwrap();
        assert!(a.try_lock("node:a").await.unwrap());
        assert!(a.try_lock("node:a").await.unwrap(), "a session's own lock");
        assert!(!b.try_lock("node:a").await.unwrap());
        assert!(b.try_lock("node:b").await.unwrap());
        a.unlock("node:a").await.unwrap();
        a.unlock("node:a").await.unwrap();
        assert!(b.try_lock("node:a").await.unwrap());
        // a session that ends (a node that dies) lets its locks go
        drop(b);
        let c = s.session().await.unwrap().unwrap();
        let mut got = false;
        for _ in 0..50 {
            if c.try_lock("node:b").await.unwrap() {
                got = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(got, "the ended session's lock was freed");
    }
}
