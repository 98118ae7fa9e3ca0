//! Plugin versions and plugin bindings.

use sqlx::FromRow;

use crate::sid::{Sid, SidKind};
use crate::{Page, PageRequest, Result, Store, StoreError, conflict_or};

/// An uploaded plugin version. Immutable: a new upload is a new version.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct PluginVersion {
    pub seq: i64,
    pub sid: String,
    pub account_sid: String,
    pub name: String,
    /// The world it implements: `call-flow`, `retry-policy`, `recording`, `call-events`.
    pub world: String,
    /// Hex SHA-256 of the wasm bytes, which name the file in the data directory.
    pub sha256: String,
    pub size: i64,
    pub date_created: i64,
}

#[derive(Debug, Clone)]
pub struct NewPlugin {
    pub name: String,
    pub world: String,
    pub sha256: String,
    pub size: i64,
}

/// Where a binding applies: the whole account, or one number or callout of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingScope {
    Account,
    Number(String),
    Callout(String),
}

impl BindingScope {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            BindingScope::Account => ("account", ""),
            BindingScope::Number(s) => ("number", s),
            BindingScope::Callout(s) => ("callout", s),
        }
    }
}

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct Binding {
    pub seq: i64,
    pub sid: String,
    pub account_sid: String,
    pub world: String,
    /// A plugin version's sid, or `builtin:<name>`.
    pub plugin: String,
    /// `account`, `number` or `callout`.
    pub scope: String,
    /// The number's or callout's sid; empty for the account scope.
    pub scope_sid: String,
    /// JSON handed to the plugin in every context.
    pub config: String,
    /// A JSON object of values merged over `config` when the plugin runs, and kept nowhere
    /// else (not in the calls' pins, not in API answers).
    pub secrets: String,
    /// The plugin's per-event deadline, in milliseconds.
    pub deadline_ms: i64,
    pub date_created: i64,
    pub date_updated: i64,
}

#[derive(Debug, Clone)]
pub struct NewBinding {
    pub world: String,
    pub plugin: String,
    pub scope: BindingScope,
    pub config: String,
    /// A JSON object (see [`Binding::secrets`]).
    pub secrets: String,
    pub deadline_ms: i64,
}

const PLUGIN_COLUMNS: &str = "seq, sid, account_sid, name, world, sha256, size, date_created";
const BINDING_COLUMNS: &str = "seq, sid, account_sid, world, plugin, scope, scope_sid, config, secrets, deadline_ms, date_created, date_updated";

impl Store {
    /// Records a version. The same bytes uploaded again by the same account give back the
    /// existing version (`false`: not created now).
    pub async fn create_plugin(
        &self,
        account: &str,
        p: &NewPlugin,
        now: i64,
    ) -> Result<(PluginVersion, bool)> {
        let sql =
            format!("SELECT {PLUGIN_COLUMNS} FROM plugins WHERE account_sid = $1 AND sha256 = $2");
        if let Some(existing) = sqlx::query_as(&sql)
            .bind(account)
            .bind(&p.sha256)
            .fetch_optional(&self.writer)
            .await?
        {
            return Ok((existing, false));
        }
        let sid = Sid::generate(SidKind::Plugin);
        let sql = format!(
            "INSERT INTO plugins (sid, account_sid, name, world, sha256, size, date_created)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {PLUGIN_COLUMNS}"
        );
        let created = sqlx::query_as(&sql)
            .bind(sid.as_str())
            .bind(account)
            .bind(&p.name)
            .bind(&p.world)
            .bind(&p.sha256)
            .bind(p.size)
            .bind(now)
            .fetch_one(&self.writer)
            .await
            .map_err(|e| conflict_or(e, "this plugin version already exists"))?;
        Ok((created, true))
    }

    pub async fn plugin(&self, account: &str, sid: &str) -> Result<Option<PluginVersion>> {
        let sql =
            format!("SELECT {PLUGIN_COLUMNS} FROM plugins WHERE account_sid = $1 AND sid = $2");
        Ok(sqlx::query_as(&sql)
            .bind(account)
            .bind(sid)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_plugins(
        &self,
        account: &str,
        name: Option<&str>,
        world: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<PluginVersion>> {
        let sql = format!(
            "SELECT {PLUGIN_COLUMNS} FROM plugins
             WHERE account_sid = $1 AND ($2 IS NULL OR name = $2) AND ($3 IS NULL OR world = $3)
               AND ($4 IS NULL OR seq < $4) AND ($5 IS NULL OR seq > $5)
             ORDER BY seq {} LIMIT $6",
            page.order()
        );
        let rows = sqlx::query_as(&sql)
            .bind(account)
            .bind(name)
            .bind(world)
            .bind(page.before)
            .bind(page.after)
            .bind(i64::from(page.size) + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_rows(rows, page, |p: &PluginVersion| p.seq))
    }

    /// Deletes a version that no binding uses (a bound one is a conflict). Returns it, and whether
    /// any version (of any account) still has the same bytes, so the caller knows whether the file
    /// can go.
    pub async fn delete_plugin(&self, account: &str, sid: &str) -> Result<(PluginVersion, bool)> {
        let mut tx = self.writer.begin().await?;
        let (bound,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM plugin_bindings WHERE account_sid = $1 AND plugin = $2",
        )
        .bind(account)
        .bind(sid)
        .fetch_one(&mut *tx)
        .await?;
        if bound > 0 {
            return Err(StoreError::Conflict(
                "the plugin version is bound; delete its bindings first".into(),
            ));
        }
        let sql = format!(
            "DELETE FROM plugins WHERE account_sid = $1 AND sid = $2 RETURNING {PLUGIN_COLUMNS}"
        );
        let deleted: PluginVersion = sqlx::query_as(&sql)
            .bind(account)
            .bind(sid)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let (others,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM plugins WHERE sha256 = $1")
            .bind(&deleted.sha256)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((deleted, others > 0))
    }

    /// Creates the binding for its (world, scope), replacing the one there was (`false`: replaced).
    pub async fn put_binding(
        &self,
        account: &str,
        b: &NewBinding,
        now: i64,
    ) -> Result<(Binding, bool)> {
        self.cache.bindings.changed();
        let put = self.write_binding(account, b, now).await;
        self.cache.bindings.changed();
        put
    }

    async fn write_binding(
        &self,
        account: &str,
        b: &NewBinding,
        now: i64,
    ) -> Result<(Binding, bool)> {
        let (scope, scope_sid) = b.scope.parts();
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM plugin_bindings
             WHERE account_sid = $1 AND world = $2 AND scope = $3 AND scope_sid = $4"
        );
        let existing: Option<Binding> = sqlx::query_as(&sql)
            .bind(account)
            .bind(&b.world)
            .bind(scope)
            .bind(scope_sid)
            .fetch_optional(&self.writer)
            .await?;
        if let Some(existing) = existing {
            let sql = format!(
                "UPDATE plugin_bindings SET plugin = $1, config = $2, deadline_ms = $5, date_updated = $3,
                    secrets = $6
                 WHERE sid = $4 RETURNING {BINDING_COLUMNS}"
            );
            let updated = sqlx::query_as(&sql)
                .bind(&b.plugin)
                .bind(&b.config)
                .bind(now)
                .bind(&existing.sid)
                .bind(b.deadline_ms)
                .bind(&b.secrets)
                .fetch_one(&self.writer)
                .await?;
            return Ok((updated, false));
        }
        let sid = Sid::generate(SidKind::PluginBinding);
        let sql = format!(
            "INSERT INTO plugin_bindings (sid, account_sid, world, plugin, scope, scope_sid, config, deadline_ms,
                date_created, date_updated, secrets)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $8, $8, $10) RETURNING {BINDING_COLUMNS}"
        );
        let created = sqlx::query_as(&sql)
            .bind(sid.as_str())
            .bind(account)
            .bind(&b.world)
            .bind(&b.plugin)
            .bind(scope)
            .bind(scope_sid)
            .bind(&b.config)
            .bind(now)
            .bind(b.deadline_ms)
            .bind(&b.secrets)
            .fetch_one(&self.writer)
            .await
            .map_err(|e| {
                conflict_or(
                    e,
                    "a binding for this world and scope was created at the same time",
                )
            })?;
        Ok((created, true))
    }

    pub async fn binding(&self, account: &str, sid: &str) -> Result<Option<Binding>> {
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM plugin_bindings WHERE account_sid = $1 AND sid = $2"
        );
        Ok(sqlx::query_as(&sql)
            .bind(account)
            .bind(sid)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_bindings(
        &self,
        account: &str,
        world: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Binding>> {
        let sql = format!(
            "SELECT {BINDING_COLUMNS} FROM plugin_bindings
             WHERE account_sid = $1 AND ($2 IS NULL OR world = $2)
               AND ($3 IS NULL OR seq < $3) AND ($4 IS NULL OR seq > $4)
             ORDER BY seq {} LIMIT $5",
            page.order()
        );
        let rows = sqlx::query_as(&sql)
            .bind(account)
            .bind(world)
            .bind(page.before)
            .bind(page.after)
            .bind(i64::from(page.size) + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_rows(rows, page, |b: &Binding| b.seq))
    }

    pub async fn delete_binding(&self, account: &str, sid: &str) -> Result<()> {
        self.cache.bindings.changed();
        let done = sqlx::query("DELETE FROM plugin_bindings WHERE account_sid = $1 AND sid = $2")
            .bind(account)
            .bind(sid)
            .execute(&self.writer)
            .await;
        self.cache.bindings.changed();
        let done = done?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// The binding of `world` a new call of `account` runs with: the callout's, else the
    /// number's, else the account's. Read from the account's bindings, which are cached (every
    /// write of a binding or plugin empties the cache).
    pub async fn resolve_binding(
        &self,
        account: &str,
        world: &str,
        number_sid: Option<&str>,
        callout_sid: Option<&str>,
    ) -> Result<Option<Binding>> {
        let all = self.account_bindings(account).await?;
        let rank = |b: &Binding| match b.scope.as_str() {
            "callout" if Some(b.scope_sid.as_str()) == callout_sid => Some(0),
            "number" if Some(b.scope_sid.as_str()) == number_sid => Some(1),
            "account" => Some(2),
            _ => None,
        };
        Ok(all
            .iter()
            .filter(|b| b.world == world)
            .filter_map(|b| rank(b).map(|r| (r, b)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, b)| b.clone()))
    }

    /// Every binding of `account`, through the cache.
    async fn account_bindings(&self, account: &str) -> Result<std::sync::Arc<Vec<Binding>>> {
        if let Some(all) = self.cache.bindings.get(account) {
            return Ok(all);
        }
        let version = self.cache.bindings.version();
        let sql = format!("SELECT {BINDING_COLUMNS} FROM plugin_bindings WHERE account_sid = $1");
        let all: Vec<Binding> = sqlx::query_as(&sql)
            .bind(account)
            .fetch_all(&self.pool)
            .await?;
        let all = std::sync::Arc::new(all);
        self.cache
            .bindings
            .offer(account, std::sync::Arc::clone(&all), version);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{account, store};

    fn new_plugin(sha: &str) -> NewPlugin {
        NewPlugin {
            name: "menu".into(),
            world: "call-flow".into(),
            sha256: sha.into(),
            size: 10,
        }
    }

    fn binding(plugin: &str, scope: BindingScope) -> NewBinding {
        NewBinding {
            world: "call-flow".into(),
            plugin: plugin.into(),
            scope,
            config: "{}".into(),
            secrets: "{}".into(),
            deadline_ms: 10,
        }
    }

    #[tokio::test]
    async fn versions_are_idempotent_per_account_and_deletion_respects_bindings() {
        let store = store().await;
        let a = account(&store).await;
        let b = account(&store).await;
        let (v1, created) = store
            .create_plugin(&a.sid, &new_plugin("aa"), 1)
            .await
            .unwrap();
        assert!(created && v1.sid.starts_with("ZP"));
        let (again, created) = store
            .create_plugin(&a.sid, &new_plugin("aa"), 2)
            .await
            .unwrap();
        assert_eq!((again.sid.as_str(), created), (v1.sid.as_str(), false));
        let (other, created) = store
            .create_plugin(&b.sid, &new_plugin("aa"), 3)
            .await
            .unwrap();
        assert!(created && other.sid != v1.sid);
        assert!(store.plugin(&b.sid, &v1.sid).await.unwrap().is_none());

        store
            .put_binding(&a.sid, &binding(&v1.sid, BindingScope::Account), 4)
            .await
            .unwrap();
        assert!(matches!(
            store.delete_plugin(&a.sid, &v1.sid).await,
            Err(StoreError::Conflict(_))
        ));
        let page = store
            .list_bindings(&a.sid, None, PageRequest::first(10))
            .await
            .unwrap();
        store
            .delete_binding(&a.sid, &page.items[0].sid)
            .await
            .unwrap();
        let (_, still_used) = store.delete_plugin(&a.sid, &v1.sid).await.unwrap();
        assert!(still_used, "account b still has the same bytes");
        let (_, still_used) = store.delete_plugin(&b.sid, &other.sid).await.unwrap();
        assert!(!still_used);
    }

    #[tokio::test]
    async fn bindings_replace_per_slot_and_resolve_most_specific_first() {
        let store = store().await;
        let a = account(&store).await;
        let (b1, created) = store
            .put_binding(&a.sid, &binding("builtin:hello", BindingScope::Account), 1)
            .await
            .unwrap();
        assert!(created);
        let (b2, created) = store
            .put_binding(&a.sid, &binding("ZPx", BindingScope::Account), 2)
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(
            (b2.sid.as_str(), b2.plugin.as_str()),
            (b1.sid.as_str(), "ZPx")
        );
        store
            .put_binding(
                &a.sid,
                &binding("ZPnum", BindingScope::Number("PN1".into())),
                3,
            )
            .await
            .unwrap();
        store
            .put_binding(
                &a.sid,
                &binding("ZPco", BindingScope::Callout("CO1".into())),
                4,
            )
            .await
            .unwrap();
        let pick = |n: Option<&'static str>, c: Option<&'static str>| {
            let store = store.clone();
            let account = a.sid.clone();
            async move {
                store
                    .resolve_binding(&account, "call-flow", n, c)
                    .await
                    .unwrap()
                    .unwrap()
                    .plugin
            }
        };
        assert_eq!(pick(None, None).await, "ZPx");
        assert_eq!(pick(Some("PN1"), None).await, "ZPnum");
        assert_eq!(pick(Some("PN2"), None).await, "ZPx");
        assert_eq!(pick(Some("PN1"), Some("CO1")).await, "ZPco");
        assert!(
            store
                .resolve_binding(&a.sid, "recording", None, None)
                .await
                .unwrap()
                .is_none()
        );
        // resolved from the cache, which every write of a binding empties
        store
            .put_binding(
                &a.sid,
                &binding("ZPnew", BindingScope::Number("PN1".into())),
                5,
            )
            .await
            .unwrap();
        assert_eq!(pick(Some("PN1"), None).await, "ZPnew");
        let co = store
            .list_bindings(&a.sid, None, PageRequest::first(10))
            .await
            .unwrap();
        let callout_binding = co.items.iter().find(|b| b.plugin == "ZPco").unwrap();
        store
            .delete_binding(&a.sid, &callout_binding.sid)
            .await
            .unwrap();
        assert_eq!(pick(Some("PN1"), Some("CO1")).await, "ZPnew");
    }
}
