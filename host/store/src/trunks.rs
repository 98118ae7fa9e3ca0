//! SIP trunks as configured: a stable sid per trunk name, and the trunk's settings as JSON text
//! (the store does not read it; `callflow-sip` owns its shape).

use sqlx::FromRow;

use crate::sid::{Sid, SidKind};
use crate::{Result, Store};

/// A configured trunk. Its sid stays the same for as long as its name does.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct Trunk {
    pub sid: String,
    pub name: String,
    /// The trunk's settings as JSON, password included: redact before showing it.
    pub spec: String,
    pub date_created: i64,
    pub date_updated: i64,
}

const COLUMNS: &str = "sid, name, spec, date_created, date_updated";

impl Store {
    /// Creates the trunk `name`, or replaces the spec of the one there is (keeping its sid and
    /// creation date).
    pub async fn upsert_trunk(&self, name: &str, spec_json: &str, now: i64) -> Result<Trunk> {
        let sid = Sid::generate(SidKind::Trunk);
        let sql = format!(
            "INSERT INTO trunks (sid, name, spec, date_created, date_updated)
             VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, date_updated = excluded.date_updated
             RETURNING {COLUMNS}"
        );
        Ok(sqlx::query_as(&sql)
            .bind(sid.as_str())
            .bind(name)
            .bind(spec_json)
            .bind(now)
            .fetch_one(&self.writer)
            .await?)
    }

    /// Every trunk, by name.
    pub async fn list_trunks(&self) -> Result<Vec<Trunk>> {
        let sql = format!("SELECT {COLUMNS} FROM trunks ORDER BY name");
        Ok(sqlx::query_as(&sql).fetch_all(&self.pool).await?)
    }

    pub async fn trunk_by_name(&self, name: &str) -> Result<Option<Trunk>> {
        let sql = format!("SELECT {COLUMNS} FROM trunks WHERE name = $1");
        Ok(sqlx::query_as(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::store;

    #[tokio::test]
    async fn upsert_keeps_the_sid_and_replaces_the_spec() {
        let store = store().await;
        let first = store
            .upsert_trunk("carrier", r#"{"host":"a"}"#, 1_000)
            .await
            .unwrap();
        assert!(first.sid.starts_with("TK") && first.sid.len() == 34);
        assert_eq!(
            (first.spec.as_str(), first.date_created, first.date_updated),
            (r#"{"host":"a"}"#, 1_000, 1_000)
        );
        let second = store
            .upsert_trunk("carrier", r#"{"host":"b"}"#, 2_000)
            .await
            .unwrap();
        assert_eq!(second.sid, first.sid);
        assert_eq!(
            (
                second.spec.as_str(),
                second.date_created,
                second.date_updated
            ),
            (r#"{"host":"b"}"#, 1_000, 2_000)
        );
        assert_eq!(store.trunk_by_name("carrier").await.unwrap(), Some(second));
        assert_eq!(store.trunk_by_name("other").await.unwrap(), None);
    }

    #[tokio::test]
    async fn list_is_ordered_by_name() {
        let store = store().await;
        assert!(store.list_trunks().await.unwrap().is_empty());
        for (i, name) in ["pbx", "carrier", "backup"].into_iter().enumerate() {
            store.upsert_trunk(name, "{}", i as i64).await.unwrap();
        }
        let names: Vec<String> = store
            .list_trunks()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["backup", "carrier", "pbx"]);
    }
}
