//! Incoming phone numbers: which account (and which voice URL) a dialled number belongs to.

use crate::sid::{Sid, SidKind};
use crate::{
    HttpMethod, IncomingNumber, Page, PageRequest, Result, Store, StoreError, conflict_or,
};

const COLUMNS: &str = "seq, sid, account_sid, phone_number, friendly_name, voice_url, voice_method,
    voice_fallback_url, voice_fallback_method, status_callback, status_callback_method,
    date_created, date_updated";

#[derive(Debug, Clone, Default)]
pub struct NewNumber {
    pub phone_number: String,
    pub friendly_name: String,
    pub voice_url: Option<String>,
    pub voice_method: HttpMethod,
    pub voice_fallback_url: Option<String>,
    pub voice_fallback_method: HttpMethod,
    pub status_callback: Option<String>,
    pub status_callback_method: HttpMethod,
}

/// Fields to change; `None` leaves a field as it is, `Some(None)` clears an optional URL.
#[derive(Debug, Clone, Default)]
pub struct NumberUpdate {
    pub friendly_name: Option<String>,
    pub voice_url: Option<Option<String>>,
    pub voice_method: Option<HttpMethod>,
    pub voice_fallback_url: Option<Option<String>>,
    pub voice_fallback_method: Option<HttpMethod>,
    pub status_callback: Option<Option<String>>,
    pub status_callback_method: Option<HttpMethod>,
}

#[derive(Debug, Clone, Default)]
pub struct NumberFilter {
    pub phone_number: Option<String>,
    pub friendly_name: Option<String>,
}

impl Store {
    /// Creates a number; a number already owned by any account is a conflict.
    pub async fn create_number(
        &self,
        account: &str,
        n: &NewNumber,
        now: i64,
    ) -> Result<IncomingNumber> {
        let sid = Sid::generate(SidKind::PhoneNumber);
        let sql = format!(
            "INSERT INTO incoming_phone_numbers (sid, account_sid, phone_number, friendly_name, voice_url,
                voice_method, voice_fallback_url, voice_fallback_method, status_callback,
                status_callback_method, date_created, date_updated)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {COLUMNS}"
        );
        sqlx::query_as(&sql)
            .bind(sid.as_str())
            .bind(account)
            .bind(&n.phone_number)
            .bind(&n.friendly_name)
            .bind(&n.voice_url)
            .bind(n.voice_method)
            .bind(&n.voice_fallback_url)
            .bind(n.voice_fallback_method)
            .bind(&n.status_callback)
            .bind(n.status_callback_method)
            .bind(now)
            .bind(now)
            .fetch_one(&self.writer)
            .await
            .map_err(|e| conflict_or(e, "phone number is already in use"))
    }

    pub async fn number(&self, account: &str, sid: &str) -> Result<Option<IncomingNumber>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM incoming_phone_numbers WHERE account_sid = $1 AND sid = $2"
        );
        Ok(sqlx::query_as(&sql)
            .bind(account)
            .bind(sid)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The number record for `phone_number` in `account`, if the account owns it.
    pub async fn number_by_phone(
        &self,
        account: &str,
        phone_number: &str,
    ) -> Result<Option<IncomingNumber>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM incoming_phone_numbers WHERE account_sid = $1 AND phone_number = $2"
        );
        Ok(sqlx::query_as(&sql)
            .bind(account)
            .bind(phone_number)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The number record for `phone_number` in whichever account has it (numbers are unique
    /// across accounts): where an inbound call goes.
    pub async fn number_owner(&self, phone_number: &str) -> Result<Option<IncomingNumber>> {
        if let Some(n) = self.cache.numbers.get(phone_number) {
            return Ok(Some((*n).clone()));
        }
        let version = self.cache.numbers.version();
        let sql = format!("SELECT {COLUMNS} FROM incoming_phone_numbers WHERE phone_number = $1");
        let number: Option<IncomingNumber> = sqlx::query_as(&sql)
            .bind(phone_number)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(n) = &number {
            self.cache
                .numbers
                .offer(&n.phone_number, std::sync::Arc::new(n.clone()), version);
        }
        Ok(number)
    }

    pub async fn list_numbers(
        &self,
        account: &str,
        filter: &NumberFilter,
        page: PageRequest,
    ) -> Result<Page<IncomingNumber>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM incoming_phone_numbers
             WHERE account_sid = $1 AND ($2 IS NULL OR phone_number = $2) AND ($3 IS NULL OR friendly_name = $3)
               AND ($4 IS NULL OR seq < $4) AND ($5 IS NULL OR seq > $5)
             ORDER BY seq {} LIMIT $6",
            page.order()
        );
        let rows = sqlx::query_as(&sql)
            .bind(account)
            .bind(&filter.phone_number)
            .bind(&filter.friendly_name)
            .bind(page.before)
            .bind(page.after)
            .bind(i64::from(page.size) + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_rows(rows, page, |n: &IncomingNumber| n.seq))
    }

    pub async fn update_number(
        &self,
        account: &str,
        sid: &str,
        u: &NumberUpdate,
        now: i64,
    ) -> Result<IncomingNumber> {
        let mut n = self
            .number(account, sid)
            .await?
            .ok_or(StoreError::NotFound)?;
        if let Some(v) = &u.friendly_name {
            n.friendly_name = v.clone();
        }
        if let Some(v) = &u.voice_url {
            n.voice_url = v.clone();
        }
        if let Some(v) = u.voice_method {
            n.voice_method = v;
        }
        if let Some(v) = &u.voice_fallback_url {
            n.voice_fallback_url = v.clone();
        }
        if let Some(v) = u.voice_fallback_method {
            n.voice_fallback_method = v;
        }
        if let Some(v) = &u.status_callback {
            n.status_callback = v.clone();
        }
        if let Some(v) = u.status_callback_method {
            n.status_callback_method = v;
        }
        let sql = format!(
            "UPDATE incoming_phone_numbers SET friendly_name = $1, voice_url = $2, voice_method = $3,
                voice_fallback_url = $4, voice_fallback_method = $5, status_callback = $6,
                status_callback_method = $7, date_updated = $8
             WHERE account_sid = $9 AND sid = $10 RETURNING {COLUMNS}"
        );
        let updated: std::result::Result<Option<IncomingNumber>, sqlx::Error> =
            sqlx::query_as(&sql)
                .bind(&n.friendly_name)
                .bind(&n.voice_url)
                .bind(n.voice_method)
                .bind(&n.voice_fallback_url)
                .bind(n.voice_fallback_method)
                .bind(&n.status_callback)
                .bind(n.status_callback_method)
                .bind(now)
                .bind(account)
                .bind(sid)
                .fetch_optional(&self.writer)
                .await;
        self.cache.numbers.changed();
        updated?.ok_or(StoreError::NotFound)
    }

    pub async fn delete_number(&self, account: &str, sid: &str) -> Result<()> {
        let done =
            sqlx::query("DELETE FROM incoming_phone_numbers WHERE account_sid = $1 AND sid = $2")
                .bind(account)
                .bind(sid)
                .execute(&self.writer)
                .await;
        self.cache.numbers.changed();
        if done?.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{account, store};

    fn new(phone: &str) -> NewNumber {
        NewNumber {
            phone_number: phone.into(),
            friendly_name: phone.into(),
            voice_method: HttpMethod::Post,
            voice_fallback_method: HttpMethod::Post,
            status_callback_method: HttpMethod::Post,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn numbers_are_unique_and_scoped_to_their_account() {
        let store = store().await;
        let a = account(&store).await;
        let b = account(&store).await;
        let n = store
            .create_number(&a.sid, &new("+15005550006"), 1)
            .await
            .unwrap();
        assert!(matches!(
            store.create_number(&b.sid, &new("+15005550006"), 2).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(store.number(&b.sid, &n.sid).await.unwrap().is_none());
        let owner = store.number_owner("+15005550006").await.unwrap().unwrap();
        assert_eq!(owner.account_sid, a.sid);
        assert!(store.number_owner("+15005550007").await.unwrap().is_none());
        // cached now; an update and a delete must show through the cache
        let upd = NumberUpdate {
            voice_url: Some(Some("http://example.com/routed".into())),
            ..Default::default()
        };
        store.update_number(&a.sid, &n.sid, &upd, 2).await.unwrap();
        let owner = store.number_owner("+15005550006").await.unwrap().unwrap();
        assert_eq!(
            owner.voice_url.as_deref(),
            Some("http://example.com/routed")
        );
        assert!(matches!(
            store.delete_number(&b.sid, &n.sid).await,
            Err(StoreError::NotFound)
        ));
        let upd = NumberUpdate {
            voice_url: Some(Some("http://example.com/v".into())),
            ..Default::default()
        };
        let n2 = store.update_number(&a.sid, &n.sid, &upd, 3).await.unwrap();
        assert_eq!(n2.voice_url.as_deref(), Some("http://example.com/v"));
        assert_eq!(n2.date_updated, 3);
        let clear = NumberUpdate {
            voice_url: Some(None),
            ..Default::default()
        };
        assert_eq!(
            store
                .update_number(&a.sid, &n.sid, &clear, 4)
                .await
                .unwrap()
                .voice_url,
            None
        );
        store.delete_number(&a.sid, &n.sid).await.unwrap();
        assert!(store.number(&a.sid, &n.sid).await.unwrap().is_none());
        assert!(store.number_owner("+15005550006").await.unwrap().is_none());
    }
}
