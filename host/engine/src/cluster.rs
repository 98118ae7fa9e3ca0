//! Several nodes on one database (issue 17). Each process is a node: it registers under its
//! name at start (a fresh incarnation), beats a heartbeat every second, and owns the calls it
//! receives or sends. One node leads (PostgreSQL: whoever holds the `leader` advisory lock;
//! SQLite: the one process): it declares dead a node whose heartbeat is older than
//! `dead_after`, ends that node's calls at the far end (the dialogs are in the shared store)
//! and in the store, and frees the outbox rows it had claimed. A node told by its own heartbeat
//! that it was declared dead (it hung, or lost the database longer than `dead_after`) stops
//! acting at once: others have ended its calls.
//!
//! On PostgreSQL a node also holds an advisory lock on its name, so two processes cannot run
//! under one name (each would take the other's calls for its own dead run's).

use std::time::Duration;

use callflow_store::{Session, StatusCause, Store, StoreError};
use tokio::sync::watch;

use crate::EngineError;
use crate::clock::now_ms;
use crate::node::{NodeConfig, Share};
use crate::telephony::Telephony;

/// How often a node beats, and the leader looks for dead nodes.
const BEAT: Duration = Duration::from_secs(1);
const LEADER_LOCK: &str = "callflow:leader";

fn name_lock(name: &str) -> String {
    format!("callflow:node:{name}")
}

/// This node, registered.
pub(crate) struct Member {
    store: Store,
    config: NodeConfig,
    incarnation: String,
    /// PostgreSQL's advisory locks (none on SQLite).
    session: Option<Session>,
    /// The session was replaced: the lead (a lock of the old one) is gone.
    session_renewed: bool,
}

impl Member {
    /// Registers this run as `config.name`. On PostgreSQL it first takes the name's lock,
    /// waiting up to `dead_after` for a previous run's session to end; a name held longer is
    /// another process's, and starting is refused.
    pub(crate) async fn join(store: Store, config: NodeConfig) -> Result<Member, EngineError> {
        let incarnation = callflow_store::Sid::generate(callflow_store::SidKind::Call)
            .as_str()
            .replacen("CA", "", 1);
        let session = store.session().await?;
        if let Some(s) = &session {
            let give_up = tokio::time::Instant::now() + config.dead_after;
            while !s.try_lock(&name_lock(&config.name)).await? {
                if tokio::time::Instant::now() >= give_up {
                    return Err(EngineError::Store(StoreError::Conflict(format!(
                        "another node named {:?} is running on this database: give each node its own name ([cluster] node)",
                        config.name
                    ))));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let previous = store
            .register_node(&config.name, &incarnation, &config.http_url, now_ms())
            .await?;
        if let Some(p) = previous.filter(|p| p.is_running()) {
            tracing::info!(node = %config.name, previous = %p.incarnation,
                "this node's previous run did not stop cleanly: its calls are ended now");
        }
        tracing::info!(node = %config.name, %incarnation, "joined the cluster");
        Ok(Member {
            store,
            config,
            incarnation,
            session,
            session_renewed: false,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// Beats, leads and sweeps until `stop`; sends on `fenced` (and returns) if this run was
    /// declared dead.
    pub(crate) async fn run(
        mut self,
        telephony: Option<Telephony>,
        engine: crate::Engine,
        mut stop: watch::Receiver<bool>,
        fenced: watch::Sender<bool>,
    ) {
        let mut leading_since: Option<i64> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(BEAT) => {}
            }
            let now = now_ms();
            // the locks live as long as the session: one lost (the database restarted, the
            // connection dropped) is taken again, and the lead with it
            match self.keep_session().await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(node = %self.config.name,
                        "another process holds this node's name now: stopping");
                    let _ = fenced.send(true);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the cluster session is lost");
                    leading_since = None;
                    continue;
                }
            }
            if self.session_renewed {
                self.session_renewed = false;
                leading_since = None;
            }
            let dead_after = i64::try_from(self.config.dead_after.as_millis()).unwrap_or(i64::MAX);
            self.reshare(&engine, now, dead_after).await;
            match self
                .store
                .heartbeat(&self.config.name, &self.incarnation, now)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(node = %self.config.name,
                        "this node was declared dead by the cluster (its calls were ended by another node): stopping");
                    let _ = fenced.send(true);
                    return;
                }
                Err(e) => {
                    // the database is out of reach (watch_database refuses new calls); not
                    // leading until it is back, so nobody is judged on heartbeats it missed
                    tracing::warn!(error = %e, "cluster heartbeat failed");
                    leading_since = None;
                    continue;
                }
            }
            if leading_since.is_none() && self.try_lead().await {
                tracing::info!(node = %self.config.name, "leading the cluster");
                leading_since = Some(now);
            }
            // a new leader first waits a whole `dead_after`: heartbeats it has not seen are
            // not yet late
            if leading_since.is_some_and(|since| now - since >= dead_after)
                && let Err(e) = self
                    .sweep(telephony.as_ref(), &engine, now, dead_after)
                    .await
            {
                tracing::warn!(error = %e, "sweeping dead nodes failed");
                leading_since = None;
            }
        }
    }

    /// Checks the session holding this node's locks, and replaces one that is gone: `false`
    /// when the name's lock is another session's now.
    async fn keep_session(&mut self) -> Result<bool, StoreError> {
        let Some(s) = &self.session else {
            return Ok(true);
        };
        // a server that stopped answering holds a ping forever: a few beats is long enough
        if let Ok(Ok(())) = tokio::time::timeout(BEAT * 3, s.ping()).await {
            return Ok(true);
        }
        let Some(fresh) = self.store.session().await? else {
            return Ok(true);
        };
        if !fresh.try_lock(&name_lock(&self.config.name)).await? {
            return Ok(false);
        }
        tracing::info!(node = %self.config.name, "the cluster session was renewed");
        self.session = Some(fresh);
        self.session_renewed = true;
        Ok(true)
    }

    /// Recounts the nodes that beat (within `dead_after`) and gives the engine this node's
    /// share of the limits.
    async fn reshare(&self, engine: &crate::Engine, now: i64, dead_after: i64) {
        let nodes = match self.store.nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the cluster's nodes failed");
                return;
            }
        };
        let running: Vec<&str> = nodes
            .iter()
            .filter(|n| n.is_running() && now - n.heartbeat_at < dead_after)
            .map(|n| n.name.as_str())
            .collect();
        let share = Share::of(&self.config.name, &running);
        if engine.set_share(share) {
            tracing::info!(node = %self.config.name, nodes = share.nodes, rank = share.rank,
                "this node's share of every limit changed");
        }
    }

    /// Whether this node leads now (SQLite: always).
    async fn try_lead(&self) -> bool {
        match &self.session {
            None => true,
            Some(s) => match s.try_lock(LEADER_LOCK).await {
                Ok(got) => got,
                Err(e) => {
                    tracing::warn!(error = %e, "trying for the cluster's lead failed");
                    false
                }
            },
        }
    }

    /// Declares dead every running node silent for `dead_after`, ends its calls and frees its
    /// claims.
    async fn sweep(
        &self,
        telephony: Option<&Telephony>,
        engine: &crate::Engine,
        now: i64,
        dead_after: i64,
    ) -> Result<(), StoreError> {
        for node in self.store.nodes().await? {
            if !node.is_running()
                || node.name == self.config.name
                || now - node.heartbeat_at < dead_after
            {
                continue;
            }
            if !self
                .store
                .declare_dead(&node.name, &node.incarnation, now)
                .await?
            {
                continue;
            }
            tracing::warn!(node = %node.name, silent_ms = now - node.heartbeat_at,
                "a node stopped beating: ending its calls and freeing its claims");
            let cause = StatusCause::Error {
                error: format!("node {} stopped during the call", node.name),
            };
            take_over(&self.store, telephony, engine, &node.name, cause, now).await?;
            self.store
                .forget_node(&node.name, &node.incarnation)
                .await?;
        }
        Ok(())
    }
}

/// Ends the calls `node` drove (said to have ended for `cause`) and frees the outbox rows it
/// held, for a node the leader declared dead. (A node's own previous run is taken over the same
/// way at start: `Telephony::start`, `Outbox::run`.)
pub(crate) async fn take_over(
    store: &Store,
    telephony: Option<&Telephony>,
    engine: &crate::Engine,
    node: &str,
    cause: StatusCause,
    now: i64,
) -> Result<(), StoreError> {
    if let Some(t) = telephony {
        t.end_calls_of(node, cause).await?;
    }
    let freed = store.release_deliveries(node, now).await?;
    if freed > 0 {
        tracing::info!(
            node,
            freed,
            "webhook deliveries the node held are due again"
        );
        engine.wake_outbox();
    }
    // its participants' attempts ended; its queued calls are anyone's
    engine.callouts_changed();
    Ok(())
}
