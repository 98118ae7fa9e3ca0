//! Recording resources. The media files live in the data directory; rows name them.

use sqlx::AnyConnection;

use crate::deliveries::insert_delivery;
use crate::sid::{Sid, SidKind};
use crate::{NewDelivery, Page, PageRequest, Recording, Result, Store, StoreError};

const COLUMNS: &str =
    "seq, sid, account_sid, call_sid, status, source, channels, duration, start_time,
    error_code, wav_path, mp3_path, date_created, date_updated";

#[derive(Debug, Clone)]
pub struct NewRecording {
    pub call_sid: String,
    pub status: String,
    /// Twilio's source, e.g. `RecordVerb`, `OutboundAPI`.
    pub source: String,
    pub channels: i64,
    pub duration: i64,
    pub start_time: i64,
    pub wav_path: Option<String>,
    pub mp3_path: Option<String>,
}

impl Store {
    pub async fn create_recording(
        &self,
        account: &str,
        r: &NewRecording,
        now: i64,
    ) -> Result<Recording> {
        let sid = Sid::generate(SidKind::Recording);
        let mut tx = self.writer.begin().await?;
        let rec = insert_recording(&mut tx, account, sid.as_str(), r, now).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Stores a recording whose media is already written (its files are named by `sid`, which
    /// the caller drew from [`Sid::generate`]), with the outbox rows that announce it
    /// (`follow_ups`) in the same transaction: the resource appears, media and all, at once.
    pub async fn store_recording(
        &self,
        account: &str,
        sid: &str,
        r: &NewRecording,
        now: i64,
        follow_ups: &[NewDelivery],
    ) -> Result<Recording> {
        let mut tx = self.writer.begin().await?;
        let rec = insert_recording(&mut tx, account, sid, r, now).await?;
        for d in follow_ups {
            insert_delivery(&mut tx, d, now).await?;
        }
        tx.commit().await?;
        Ok(rec)
    }

    pub async fn recording(&self, account: &str, sid: &str) -> Result<Option<Recording>> {
        let sql = format!("SELECT {COLUMNS} FROM recordings WHERE account_sid = $1 AND sid = $2");
        Ok(sqlx::query_as(&sql)
            .bind(account)
            .bind(sid)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Recordings of an account, or of one of its calls, newest first.
    pub async fn list_recordings(
        &self,
        account: &str,
        call_sid: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Recording>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM recordings
             WHERE account_sid = $1 AND ($2 IS NULL OR call_sid = $2) AND ($3 IS NULL OR seq < $3) AND ($4 IS NULL OR seq > $4)
             ORDER BY seq {} LIMIT $5",
            page.order()
        );
        let rows = sqlx::query_as(&sql)
            .bind(account)
            .bind(call_sid)
            .bind(page.before)
            .bind(page.after)
            .bind(i64::from(page.size) + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_rows(rows, page, |r: &Recording| r.seq))
    }

    /// Names the media files once they are written (paths relative to the data directory).
    /// Records where a recording's media is and, in the same transaction, stores the outbox
    /// rows that announce it (`follow_ups`: its recording-ready event, a recording plugin's
    /// notifications), so nobody hears of media that is not there, and nothing announced is lost.
    pub async fn set_recording_media(
        &self,
        sid: &str,
        wav: Option<&str>,
        mp3: Option<&str>,
        now: i64,
        follow_ups: &[NewDelivery],
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE recordings SET wav_path = COALESCE($1, wav_path), mp3_path = COALESCE($2, mp3_path), date_updated = $3
             WHERE sid = $4",
        )
        .bind(wav)
        .bind(mp3)
        .bind(now)
        .bind(sid)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        for d in follow_ups {
            insert_delivery(&mut tx, d, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes the row and returns it, so the caller can remove the media files.
    pub async fn delete_recording(&self, account: &str, sid: &str) -> Result<Recording> {
        let sql = format!(
            "DELETE FROM recordings WHERE account_sid = $1 AND sid = $2 RETURNING {COLUMNS}"
        );
        sqlx::query_as(&sql)
            .bind(account)
            .bind(sid)
            .fetch_optional(&self.writer)
            .await?
            .ok_or(StoreError::NotFound)
    }
}

/// Inserts a recording row.
async fn insert_recording(
    conn: &mut AnyConnection,
    account: &str,
    sid: &str,
    r: &NewRecording,
    now: i64,
) -> Result<Recording> {
    let sql = format!(
        "INSERT INTO recordings (sid, account_sid, call_sid, status, source, channels, duration, start_time,
            wav_path, mp3_path, date_created, date_updated)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(sid)
        .bind(account)
        .bind(&r.call_sid)
        .bind(&r.status)
        .bind(&r.source)
        .bind(r.channels)
        .bind(r.duration)
        .bind(r.start_time)
        .bind(&r.wav_path)
        .bind(&r.mp3_path)
        .bind(now)
        .bind(now)
        .fetch_one(conn)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{account, store};

    #[tokio::test]
    async fn a_recording_appears_with_its_media_and_its_announcements_at_once() {
        let store = store().await;
        let a = account(&store).await;
        let sid = Sid::generate(SidKind::Recording);
        let new = NewRecording {
            call_sid: "CA1".into(),
            status: "completed".into(),
            source: "RecordVerb".into(),
            channels: 1,
            duration: 3,
            start_time: 10,
            wav_path: Some(format!("recordings/{}.wav", sid.as_str())),
            mp3_path: Some(format!("recordings/{}.mp3", sid.as_str())),
        };
        let ready = NewDelivery {
            account_sid: a.sid.clone(),
            call_sid: Some("CA1".into()),
            kind: "call-event".into(),
            url: "builtin:rapidpro".into(),
            method: "EVENT".into(),
            ..NewDelivery::default()
        };
        let rec = store
            .store_recording(&a.sid, sid.as_str(), &new, 20, &[ready])
            .await
            .unwrap();
        assert_eq!(rec.sid, sid.as_str());
        assert_eq!(rec.wav_path, new.wav_path);
        assert_eq!(store.call_deliveries("CA1").await.unwrap().len(), 1);
        // a sid used twice is refused whole: no second row, no second announcement
        assert!(
            store
                .store_recording(&a.sid, sid.as_str(), &new, 30, &[NewDelivery::default()])
                .await
                .is_err()
        );
        assert_eq!(store.call_deliveries("CA1").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn recordings_by_account_and_call() {
        let store = store().await;
        let a = account(&store).await;
        let b = account(&store).await;
        let rec = |call: &str| NewRecording {
            call_sid: call.into(),
            status: "completed".into(),
            source: "RecordVerb".into(),
            channels: 1,
            duration: 4,
            start_time: 10,
            wav_path: Some("recordings/x.wav".into()),
            mp3_path: None,
        };
        let r1 = store
            .create_recording(&a.sid, &rec("CA1"), 1)
            .await
            .unwrap();
        store
            .create_recording(&a.sid, &rec("CA2"), 2)
            .await
            .unwrap();
        let all = PageRequest::first(50);
        assert_eq!(
            store
                .list_recordings(&a.sid, None, all)
                .await
                .unwrap()
                .items
                .len(),
            2
        );
        assert_eq!(
            store
                .list_recordings(&a.sid, Some("CA1"), all)
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        assert!(
            store
                .list_recordings(&b.sid, None, all)
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert!(matches!(
            store.delete_recording(&b.sid, &r1.sid).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            store.delete_recording(&a.sid, &r1.sid).await.unwrap().sid,
            r1.sid
        );
        assert!(store.recording(&a.sid, &r1.sid).await.unwrap().is_none());
    }
}
