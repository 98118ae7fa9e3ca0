//! callflow's store: every SQL statement in the project lives in this crate.
//!
//! SQLite (WAL mode) is the default backend. Times are `i64` milliseconds since the Unix epoch and are
//! always passed in by the caller, so the store never reads the clock. Listing is newest first with an
//! opaque `seq` cursor, which is what Twilio's `PageToken` paging needs.

mod accounts;
mod cache;
pub use accounts::RootOutcome;
mod call_log;
mod callouts;
mod calls;
mod deliveries;
mod instructions;
pub mod journal;
mod model;
mod nodes;
mod numbers;
mod plugins;
mod recordings;
pub mod sid;
pub mod text;
mod trunks;

use std::path::Path;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool};

pub use call_log::{
    Amd, CallLogEntry, CallLogError, DeliveredEvent, Dialled, EventsRun, FlowFailure, FlowStarted,
    LogLevel, LogLine, LogSource, MediaError, NewInstructions, NotifyFailure, RecordingStored,
    Redirected, RequestAsked, StatusCause,
};
pub use callouts::{
    Added, CallTemplate, Callout, CalloutAnalysis, CalloutStatus, CalloutSummary, NewAttempt,
    NewCallout, NewParticipant, Participant, ParticipantFilter, ParticipantState, Settlement,
};
pub use calls::{CallFilter, CallUpdate, NewCall, TIME_LIMIT_DEFAULT, TIMEOUT_DEFAULT, Transition};
pub use deliveries::{AttemptOutcome, Delivery, DeliveryState, NewDelivery};
pub use instructions::{
    AMD_TUNING, CallInstructions, CallbackEvent, CallbackEvents, HttpMethod, MachineDetection, Pin,
    Pins, RECORDING_EVENTS, RecordingCallback, RequestParams,
};
pub use model::*;
pub use nodes::{Node, Session};
pub use numbers::{NewNumber, NumberFilter, NumberUpdate};
pub use plugins::{Binding, BindingScope, NewBinding, NewPlugin, PluginVersion};
pub use recordings::NewRecording;
pub use sid::{Sid, SidKind};
pub use trunks::Trunk;

/// Errors from the store. `NotFound` and `Conflict` are expected outcomes callers map to protocol
/// errors; `Database` is everything else.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid stored data: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// The database could not be reached (its connection failed or was lost, the pool gave up
    /// waiting, the server is shutting down or not accepting connections): the request may
    /// succeed later, unlike a refusal or a bug.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // SQLSTATE class 08 (connection exception), 57P01-57P03 (shutdown, cannot connect)
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One page request, newest first: at most `size` rows older than `before`, or the `size` rows
/// just newer than `after` (to page backwards). At most one of the two is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub size: u32,
    pub before: Option<i64>,
    pub after: Option<i64>,
}

impl PageRequest {
    pub fn first(size: u32) -> Self {
        PageRequest {
            size,
            before: None,
            after: None,
        }
    }

    pub fn before(size: u32, before: Option<i64>) -> Self {
        PageRequest {
            size,
            before,
            after: None,
        }
    }

    /// The SQL order that fetches this page's rows nearest the cursor first.
    fn order(&self) -> &'static str {
        if self.after.is_some() { "ASC" } else { "DESC" }
    }
}

/// One page of results, newest first, with the cursors of the neighbouring pages: `next` for
/// older rows (pass as `before`), `prev` for newer ones (pass as `after`).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<i64>,
    pub prev: Option<i64>,
}

impl<T> Page<T> {
    /// Builds a page from up to `size + 1` rows fetched in `req.order()`: the extra row only
    /// proves there is more in that direction.
    fn from_rows(mut rows: Vec<T>, req: PageRequest, seq: impl Fn(&T) -> i64) -> Self {
        let more = rows.len() > req.size as usize;
        rows.truncate(req.size as usize);
        if req.after.is_some() {
            rows.reverse();
            let next = rows.last().map(&seq);
            let prev = if more { rows.first().map(&seq) } else { None };
            Page {
                items: rows,
                next,
                prev,
            }
        } else {
            let next = if more { rows.last().map(&seq) } else { None };
            let prev = if req.before.is_some() {
                rows.first().map(&seq)
            } else {
                None
            };
            Page {
                items: rows,
                next,
                prev,
            }
        }
    }
}

/// Handle to the database; cheap to clone.
///
/// Reads go through a pool of connections; writes through a single writer connection, so writers
/// queue in the pool instead of sleeping in SQLite's busy handler. Accounts and calls are read
/// through a small write-through cache (see `cache.rs`).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    writer: AnyPool,
    cache: std::sync::Arc<cache::Cache>,
    /// Calls' log entries, written by group commit (`journal.rs`).
    journal: std::sync::Arc<journal::Journal>,
    /// PostgreSQL (shared by several nodes), not SQLite (one process).
    shared: bool,
}

impl Store {
    /// Opens (creating if needed) the database at `url` and runs migrations.
    ///
    /// Accepts `sqlite://path`, `sqlite:path`, `sqlite::memory:` or `postgres://…`
    /// (`postgresql://…`).
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        if is_postgres(url) {
            return Self::open_postgres(url).await;
        }
        let memory = url.contains(":memory:");
        let url = if memory {
            url.to_owned()
        } else {
            // create the file when missing
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        };
        let pool_options = || {
            AnyPoolOptions::new()
                // A local file cannot drop a connection: pinging it before every use (sqlx's
                // default) cost a round trip to the connection's thread per query.
                .test_before_acquire(false)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::Executor::execute(&mut *conn, SQLITE_PRAGMAS).await?;
                        Ok(())
                    })
                })
        };
        if memory {
            // an in-memory database exists once per connection, so it gets exactly one
            let pool = pool_options().max_connections(1).connect(&url).await?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
            return Ok(Store::assemble(pool.clone(), pool, false));
        }
        // Switch a new file to WAL on one connection before any pool opens more: two connections
        // doing it at once can fail with "database is locked".
        let mut first = <AnyConnection as sqlx::Connection>::connect(&url).await?;
        sqlx::Executor::execute(&mut first, SQLITE_PRAGMAS).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut first)
            .await?;
        sqlx::Connection::close(first).await?;
        let writer = pool_options().max_connections(1).connect(&url).await?;
        let pool = pool_options().max_connections(8).connect(&url).await?;
        tokio::spawn(checkpointer(pool.clone()));
        Ok(Store::assemble(pool, writer, false))
    }

    /// A PostgreSQL database: migrations from `migrations/postgres`, a pool for reads and one
    /// writer connection for the journal and other writes (as on SQLite, so this node's caches
    /// see every write it makes; several nodes on one database need more, issue 17).
    async fn open_postgres(url: &str) -> Result<Self> {
        let pool_options = || {
            AnyPoolOptions::new()
                .min_connections(1)
                // a server that is gone is reported (API 503) within seconds, not after the
                // 30 s sqlx would keep trying to connect
                .acquire_timeout(Duration::from_secs(3))
        };
        let writer = pool_options().max_connections(1).connect(url).await?;
        sqlx::migrate!("./migrations/postgres").run(&writer).await?;
        let pool = pool_options().max_connections(8).connect(url).await?;
        Ok(Store::assemble(pool, writer, true))
    }

    /// The store over its reader pool and its writer: the cache in front (off when the
    /// database is `shared` with other nodes), the journal on the writer.
    fn assemble(pool: AnyPool, writer: AnyPool, shared: bool) -> Store {
        let cache = std::sync::Arc::new(if shared {
            cache::Cache::off()
        } else {
            cache::Cache::local()
        });
        Store {
            journal: std::sync::Arc::new(journal::Journal::start(
                writer.clone(),
                std::sync::Arc::clone(&cache),
            )),
            pool,
            writer,
            cache,
            shared,
        }
    }

    /// Whether other nodes may share this database (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// What a claim's subquery ends with so that concurrent claimers on other nodes skip the
    /// rows being claimed instead of waiting for them (PostgreSQL; SQLite has one writer).
    pub(crate) fn skip_locked(&self) -> &'static str {
        if self.shared {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        }
    }

    /// Opens the default SQLite file inside `data_dir`.
    pub async fn open_in_dir(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("callflow.db");
        Self::open(&format!("sqlite://{}", path.display())).await
    }

    /// Cheap liveness probe for `/health`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Writes out the call journal, then closes the connections.
    pub async fn close(&self) {
        self.journal.flush().await;
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Every SQLite connection's settings: WAL with syncs at checkpoints only (a commit survives a
/// crash of the process; a power loss may take the last ones), foreign keys enforced, writers
/// waiting up to 10 s for one another, and SQLite's own checkpoint only as a backstop should the
/// checkpointer (below) fall behind.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
    PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; PRAGMA wal_autocheckpoint = 20000;";

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies committed WAL frames into the database file every [`CHECKPOINT_EVERY`], on a reader
/// connection, until the store closes. SQLite's own checkpoint runs in the commit that crosses
/// its threshold, on the writer, where its page copies and fsyncs held up every change queued
/// behind it (the p99 of answering a call); a passive checkpoint here runs beside the writer
/// and readers, and copies each hot page once per round however often it was committed.
async fn checkpointer(pool: AnyPool) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "the WAL checkpoint failed; trying again");
        }
    }
}

/// Maps a unique-constraint violation to `Conflict`, everything else to `Database`.
fn conflict_or(e: sqlx::Error, what: &str) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return StoreError::Conflict(what.to_owned());
    }
    StoreError::Database(e)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A new, empty store: in memory, or a fresh database on the PostgreSQL server
    /// `CALLFLOW_TEST_POSTGRES` names when it is set (`tests/run` runs the store's tests once
    /// without and once with it; `tests/postgres.sh` starts a throwaway server).
    pub async fn store() -> Store {
        match std::env::var("CALLFLOW_TEST_POSTGRES") {
            Ok(server) if !server.is_empty() => postgres_store(&server).await,
            _ => sqlite_store().await,
        }
    }

    /// A new, empty SQLite store in memory (for what only SQLite has: query plans, WAL).
    pub async fn sqlite_store() -> Store {
        Store::open("sqlite::memory:").await.unwrap()
    }

    async fn postgres_store(server: &str) -> Store {
        sqlx::any::install_default_drivers();
        let name = format!("callflow_test_{}", crate::sid::generate_token());
        let mut admin = <AnyConnection as sqlx::Connection>::connect(server)
            .await
            .unwrap();
        sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        sqlx::Connection::close(admin).await.unwrap();
        let (base, _) = server
            .rsplit_once('/')
            .expect("a server URL ends with /database");
        Store::open(&format!("{base}/{name}")).await.unwrap()
    }

    pub async fn account(store: &Store) -> Account {
        store.create_account(None, "test", 1_000).await.unwrap()
    }
}

/// SQLite's and PostgreSQL's migrations must build the same schema: the same tables with the same
/// columns (and which may be NULL), the same indexes and triggers. Runs when
/// `CALLFLOW_TEST_POSTGRES` names a server (`tests/run` always gives one).
#[cfg(test)]
mod schema_parity {
    use std::collections::BTreeSet;

    use super::*;

    type Schema = (
        BTreeSet<(String, String, bool)>,
        BTreeSet<String>,
        BTreeSet<String>,
    );

    async fn sqlite_schema(s: &Store) -> Schema {
        let columns: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT m.name, p.name, p.\"notnull\", p.pk FROM sqlite_master m, pragma_table_info(m.name) p
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
        )
        .fetch_all(&s.pool)
        .await
        .unwrap();
        let names = |kind: &'static str| async move {
            let rows: Vec<(String,)> = sqlx::query_as(
                "SELECT name FROM sqlite_master WHERE type = $1 AND name NOT LIKE 'sqlite_%'",
            )
            .bind(kind)
            .fetch_all(&s.pool)
            .await
            .unwrap();
            rows.into_iter().map(|r| r.0).collect::<BTreeSet<_>>()
        };
        (
            columns
                .into_iter()
                // a rowid key is never NULL, though SQLite does not flag it
                .map(|(t, c, notnull, pk)| (t, c, notnull == 0 && pk == 0))
                .collect(),
            names("index").await,
            names("trigger").await,
        )
    }

    async fn postgres_schema(s: &Store) -> Schema {
        let columns: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text, is_nullable::text FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
        )
        .fetch_all(&s.pool)
        .await
        .unwrap();
        // primary keys and UNIQUE constraints are named by PostgreSQL (SQLite's autoindexes)
        let indexes: Vec<(String,)> = sqlx::query_as(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public'
               AND indexname NOT LIKE '%\\_pkey' AND indexname NOT LIKE '%\\_key'",
        )
        .fetch_all(&s.pool)
        .await
        .unwrap();
        let triggers: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT trigger_name::text FROM information_schema.triggers
             WHERE trigger_schema = 'public'",
        )
        .fetch_all(&s.pool)
        .await
        .unwrap();
        (
            columns
                .into_iter()
                .map(|(t, c, nullable)| (t, c, nullable == "YES"))
                .collect(),
            indexes.into_iter().map(|r| r.0).collect(),
            triggers.into_iter().map(|r| r.0).collect(),
        )
    }

    #[tokio::test]
    async fn both_backends_build_the_same_schema() {
        if std::env::var("CALLFLOW_TEST_POSTGRES").is_err() {
            eprintln!("CALLFLOW_TEST_POSTGRES is not set: nothing compared (tests/run sets it)");
            return;
        }
        let sqlite = sqlite_schema(&test_support::sqlite_store().await).await;
        let postgres = postgres_schema(&test_support::store().await).await;
        for (what, a, b) in [
            (
                "columns",
                format!("{:#?}", sqlite.0),
                format!("{:#?}", postgres.0),
            ),
            (
                "indexes",
                format!("{:#?}", sqlite.1),
                format!("{:#?}", postgres.1),
            ),
            (
                "triggers",
                format!("{:#?}", sqlite.2),
                format!("{:#?}", postgres.2),
            ),
        ] {
            assert_eq!(a, b, "{what} differ (left SQLite, right PostgreSQL)");
        }
        assert!(sqlite.0.len() > 150, "{} columns read", sqlite.0.len());
    }
}

#[cfg(test)]
mod placeholders {
    /// Queries use numbered placeholders, reusing a number for a value used twice, because that is
    /// what PostgreSQL needs (it cannot type a parameter that only appears in `IS NULL`). SQLite
    /// must accept the same text.
    #[tokio::test]
    async fn numbered_placeholders_can_repeat_and_come_in_any_order() {
        let s = crate::test_support::store().await;
        let (a, b): (i64, Option<String>) =
            sqlx::query_as("SELECT $2 + 1, CASE WHEN $1 IS NULL THEN $3 ELSE $1 END")
                .bind(Option::<String>::None)
                .bind(41_i64)
                .bind("x")
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert_eq!((a, b.as_deref()), (42, Some("x")));
    }
}

#[cfg(test)]
mod file_backed {
    use super::*;

    /// The file-backed store (separate reader pool and writer, the cache in front) reads its own
    /// writes, through every path that changes a cached record.
    #[tokio::test]
    async fn reads_see_the_latest_write_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_dir(dir.path()).await.unwrap();
        let (root, _) = store
            .ensure_root(
                Some(("AC0123456789abcdef0123456789abcdef", "token-one-1234567")),
                1,
            )
            .await
            .unwrap();
        assert_eq!(
            store.account(&root.sid).await.unwrap().unwrap().auth_token,
            "token-one-1234567"
        );
        store
            .ensure_root(Some((&root.sid, "token-two-1234567")), 2)
            .await
            .unwrap();
        assert_eq!(
            store.account(&root.sid).await.unwrap().unwrap().auth_token,
            "token-two-1234567"
        );
        let sub = store
            .create_account(Some(&root.sid), "sub", 3)
            .await
            .unwrap();
        store
            .update_account(&sub.sid, None, Some("suspended"), 4)
            .await
            .unwrap();
        assert_eq!(
            store.account(&sub.sid).await.unwrap().unwrap().status,
            "suspended"
        );

        let call = store
            .create_call(&root.sid, &calls::tests::new_call("+1555"), 5)
            .await
            .unwrap();
        assert_eq!(
            store
                .call(&root.sid, &call.sid)
                .await
                .unwrap()
                .unwrap()
                .status(),
            CallStatus::Queued
        );
        assert!(
            store.call(&sub.sid, &call.sid).await.unwrap().is_none(),
            "the cache keeps accounts apart"
        );
        let t = Transition {
            to: CallStatus::Canceled,
            at: 6,
            sip_response_code: None,
            answered_by: None,
            cause: StatusCause::Unspecified,
        };
        store
            .transition_call(&root.sid, &call.sid, &t, |_| Vec::new())
            .await
            .unwrap();
        assert_eq!(
            store
                .call(&root.sid, &call.sid)
                .await
                .unwrap()
                .unwrap()
                .status(),
            CallStatus::Canceled
        );

        // a second store on the same file (a restart) reads what the first wrote
        store.close().await;
        let again = Store::open_in_dir(dir.path()).await.unwrap();
        assert_eq!(
            again
                .call(&root.sid, &call.sid)
                .await
                .unwrap()
                .unwrap()
                .status(),
            CallStatus::Canceled
        );
    }

    /// The checkpointer copies what was committed into the database file without waiting for
    /// SQLite's own threshold (far from reached here): the file grows while the store idles.
    #[tokio::test]
    async fn the_checkpointer_copies_commits_into_the_file_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_dir(dir.path()).await.unwrap();
        let (root, _) = store.ensure_root(None, 1).await.unwrap();
        let file = dir.path().join("callflow.db");
        let size = || std::fs::metadata(&file).unwrap().len();
        tokio::time::sleep(CHECKPOINT_EVERY * 2).await;
        let before = size();
        for i in 0..300 {
            store
                .create_call(&root.sid, &calls::tests::new_call("+1555"), 10 + i)
                .await
                .unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while size() <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing was checkpointed into the file ({before} bytes)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.close().await;
    }
}
