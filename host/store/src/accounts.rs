//! Accounts: the root account and its subaccounts.

use crate::sid::{Sid, SidKind, generate_token};
use crate::{Account, Page, PageRequest, Result, Store, StoreError, conflict_or};

const COLUMNS: &str =
    "seq, sid, parent_sid, is_root, friendly_name, auth_token, status, date_created, date_updated";

/// What `ensure_root` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootOutcome {
    /// The root account already existed and matched.
    Existing,
    /// A root account was created now.
    Created,
    /// The configured auth token replaced the stored one.
    TokenRotated,
}

impl Store {
    /// Creates an account. `parent` is the owning account for a subaccount.
    pub async fn create_account(
        &self,
        parent: Option<&str>,
        friendly_name: &str,
        now: i64,
    ) -> Result<Account> {
        let sid = Sid::generate(SidKind::Account);
        self.insert_account(
            sid.as_str(),
            parent,
            false,
            friendly_name,
            &generate_token(),
            now,
        )
        .await
    }

    async fn insert_account(
        &self,
        sid: &str,
        parent: Option<&str>,
        is_root: bool,
        friendly_name: &str,
        token: &str,
        now: i64,
    ) -> Result<Account> {
        let sql = format!(
            "INSERT INTO accounts (sid, parent_sid, is_root, friendly_name, auth_token, date_created, date_updated)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
        );
        sqlx::query_as(&sql)
            .bind(sid)
            .bind(parent)
            .bind(i64::from(is_root))
            .bind(friendly_name)
            .bind(token)
            .bind(now)
            .bind(now)
            .fetch_one(&self.writer)
            .await
            .map_err(|e| conflict_or(e, "account already exists"))
            .inspect(|a: &Account| self.cache.put_account(a))
    }

    /// Makes sure the root account exists.
    ///
    /// With `configured = Some((sid, token))` the root must have that SID (an existing root with
    /// another SID is a conflict, never silently replaced) and gets that token. With `None`, an
    /// existing root is kept and a missing one is generated.
    pub async fn ensure_root(
        &self,
        configured: Option<(&str, &str)>,
        now: i64,
    ) -> Result<(Account, RootOutcome)> {
        let existing = self.root_account().await?;
        match (existing, configured) {
            (Some(root), None) => Ok((root, RootOutcome::Existing)),
            (Some(root), Some((sid, token))) => {
                if root.sid != sid {
                    return Err(StoreError::Conflict(format!(
                        "the data directory's root account is {}, not the configured {sid}",
                        root.sid
                    )));
                }
                if root.auth_token == token {
                    return Ok((root, RootOutcome::Existing));
                }
                sqlx::query(
                    "UPDATE accounts SET auth_token = $1, date_updated = $2 WHERE sid = $3",
                )
                .bind(token)
                .bind(now)
                .bind(sid)
                .execute(&self.writer)
                .await?;
                self.cache.forget_account(sid);
                let root = self.account(sid).await?.ok_or(StoreError::NotFound)?;
                Ok((root, RootOutcome::TokenRotated))
            }
            (None, configured) => {
                let generated_sid;
                let generated_token;
                let (sid, token) = match configured {
                    Some(c) => c,
                    None => {
                        generated_sid = Sid::generate(SidKind::Account);
                        generated_token = generate_token();
                        (generated_sid.as_str(), generated_token.as_str())
                    }
                };
                let root = self
                    .insert_account(sid, None, true, "callflow root account", token, now)
                    .await?;
                Ok((root, RootOutcome::Created))
            }
        }
    }

    pub async fn root_account(&self) -> Result<Option<Account>> {
        let sql = format!("SELECT {COLUMNS} FROM accounts WHERE is_root = 1");
        Ok(sqlx::query_as(&sql).fetch_optional(&self.pool).await?)
    }

    pub async fn account(&self, sid: &str) -> Result<Option<Account>> {
        if let Some(a) = self.cache.account(sid) {
            return Ok(Some((*a).clone()));
        }
        let sql = format!("SELECT {COLUMNS} FROM accounts WHERE sid = $1");
        let account: Option<Account> = sqlx::query_as(&sql)
            .bind(sid)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(a) = &account {
            self.cache.offer_account(a);
        }
        Ok(account)
    }

    /// The accounts `sid` can see through the Accounts API (itself and its subaccounts), newest
    /// first, optionally filtered by friendly name and status.
    pub async fn list_accounts(
        &self,
        parent: &str,
        friendly_name: Option<&str>,
        status: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Account>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM accounts
             WHERE (parent_sid = $1 OR sid = $1) AND ($2 IS NULL OR friendly_name = $2) AND ($3 IS NULL OR status = $3)
               AND ($4 IS NULL OR seq < $4) AND ($5 IS NULL OR seq > $5)
             ORDER BY seq {} LIMIT $6",
            page.order()
        );
        let rows = sqlx::query_as(&sql)
            .bind(parent)
            .bind(friendly_name)
            .bind(status)
            .bind(page.before)
            .bind(page.after)
            .bind(i64::from(page.size) + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_rows(rows, page, |a: &Account| a.seq))
    }

    /// Changes a subaccount's friendly name and/or status (`active`, `suspended`, `closed`).
    pub async fn update_account(
        &self,
        sid: &str,
        friendly_name: Option<&str>,
        status: Option<&str>,
        now: i64,
    ) -> Result<Account> {
        let sql = format!(
            "UPDATE accounts SET friendly_name = COALESCE($1, friendly_name),
                                 status = COALESCE($2, status), date_updated = $3
             WHERE sid = $4 RETURNING {COLUMNS}"
        );
        sqlx::query_as(&sql)
            .bind(friendly_name)
            .bind(status)
            .bind(now)
            .bind(sid)
            .fetch_optional(&self.writer)
            .await?
            .ok_or(StoreError::NotFound)
            .inspect(|a: &Account| self.cache.put_account(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::store;

    #[tokio::test]
    async fn root_is_generated_once_then_kept() {
        let store = store().await;
        let (root, outcome) = store.ensure_root(None, 5).await.unwrap();
        assert_eq!(outcome, RootOutcome::Created);
        assert!(root.is_root && root.parent_sid.is_none());
        let (again, outcome) = store.ensure_root(None, 6).await.unwrap();
        assert_eq!(outcome, RootOutcome::Existing);
        assert_eq!(again, root);
    }

    #[tokio::test]
    async fn configured_root_rotates_token_but_never_changes_sid() {
        let store = store().await;
        let sid = "AC0123456789abcdef0123456789abcdef";
        let (_, outcome) = store.ensure_root(Some((sid, "t1")), 1).await.unwrap();
        assert_eq!(outcome, RootOutcome::Created);
        let (root, outcome) = store.ensure_root(Some((sid, "t2")), 2).await.unwrap();
        assert_eq!(outcome, RootOutcome::TokenRotated);
        assert_eq!(root.auth_token, "t2");
        let other = "ACffffffffffffffffffffffffffffffff";
        assert!(matches!(
            store.ensure_root(Some((other, "t2")), 3).await,
            Err(StoreError::Conflict(_))
        ));
    }

    #[tokio::test]
    async fn subaccounts_page_newest_first() {
        let store = store().await;
        let (root, _) = store.ensure_root(None, 0).await.unwrap();
        for i in 0..5 {
            store
                .create_account(Some(&root.sid), &format!("sub{i}"), i)
                .await
                .unwrap();
        }
        let first = store
            .list_accounts(&root.sid, None, None, PageRequest::first(2))
            .await
            .unwrap();
        let names: Vec<_> = first
            .items
            .iter()
            .map(|a| a.friendly_name.as_str())
            .collect();
        assert_eq!(names, ["sub4", "sub3"]);
        let second = store
            .list_accounts(&root.sid, None, None, PageRequest::before(2, first.next))
            .await
            .unwrap();
        let names: Vec<_> = second
            .items
            .iter()
            .map(|a| a.friendly_name.as_str())
            .collect();
        assert_eq!(names, ["sub2", "sub1"]);
        let third = store
            .list_accounts(&root.sid, None, None, PageRequest::before(2, second.next))
            .await
            .unwrap();
        let names: Vec<_> = third
            .items
            .iter()
            .map(|a| a.friendly_name.as_str())
            .collect();
        assert_eq!(names, ["sub0", "callflow root account"]);
        assert_eq!(third.next, None);
        // and back again: the page before the third is the second
        let back = store
            .list_accounts(
                &root.sid,
                None,
                None,
                PageRequest {
                    size: 2,
                    before: None,
                    after: third.prev,
                },
            )
            .await
            .unwrap();
        let names: Vec<_> = back
            .items
            .iter()
            .map(|a| a.friendly_name.as_str())
            .collect();
        assert_eq!(names, ["sub2", "sub1"]);
        assert_eq!((back.next, back.prev.is_some()), (second.next, true));
        let top = store
            .list_accounts(
                &root.sid,
                None,
                None,
                PageRequest {
                    size: 2,
                    before: None,
                    after: back.prev,
                },
            )
            .await
            .unwrap();
        let names: Vec<_> = top.items.iter().map(|a| a.friendly_name.as_str()).collect();
        assert_eq!((names, top.prev), (vec!["sub4", "sub3"], None));
        let filtered = store
            .list_accounts(&root.sid, Some("sub3"), None, PageRequest::first(50))
            .await
            .unwrap();
        assert_eq!(filtered.items.len(), 1);
    }
}
