//! Messages with a `send_at` in the future wait here, in PostgreSQL, so they survive any
//! restart. The releaser takes due rows (`FOR UPDATE SKIP LOCKED`, so several ingest
//! processes share the work) and marks them released in the same transaction it commits
//! after producing them; a cancel marks pending rows cancelled. Row locks decide races:
//! a message is released or cancelled, never both.

use crate::{held::Held, Store, StoreError};
use sendmill_wire::{AccountId, BatchId, MessageId};
use sqlx::Row;
use time::OffsetDateTime;

/// A held message: the encoded `requested` record and whom it belongs to.
#[derive(Clone, Debug)]
pub struct ScheduledMessage {
    pub message_id: MessageId,
    pub account_id: AccountId,
    pub payload: Vec<u8>,
}

/// What to cancel.
#[derive(Clone, Debug)]
pub enum CancelTarget {
    Message(MessageId),
    Batch(BatchId),
    /// Every message sent with this SendGrid batch id (the drop-in's scheduled sends).
    SendgridBatch(String),
}

impl CancelTarget {
    /// The (message, batch, SendGrid batch) a query matches on; one is set.
    fn keys(&self) -> (Option<uuid::Uuid>, Option<uuid::Uuid>, Option<&str>) {
        match self {
            CancelTarget::Message(id) => (Some(id.0), None, None),
            CancelTarget::Batch(id) => (None, Some(id.0), None),
            CancelTarget::SendgridBatch(id) => (None, None, Some(id.as_str())),
        }
    }
}

fn from_row(r: &sqlx::postgres::PgRow) -> ScheduledMessage {
    ScheduledMessage {
        message_id: MessageId(r.get("message_id")),
        account_id: AccountId(r.get("account_id")),
        payload: r.get("payload"),
    }
}

impl Store {
    /// Holds each of `messages` (id, when to send, encoded record) until its time, in
    /// one statement, under `sendgrid_batch` when they were sent with one. A message
    /// already held (a replayed request) is kept as it is. With a SendGrid batch, the
    /// batch row is share-locked first: `Conflict` when it was cancelled (also by a
    /// cancel that committed while this waited), so no message slips past a cancel.
    pub async fn schedule(
        &self,
        installation: &str,
        account_id: AccountId,
        batch_id: BatchId,
        messages: &[(MessageId, OffsetDateTime, Vec<u8>)],
        sendgrid_batch: Option<&str>,
    ) -> Result<(), StoreError> {
        let ids: Vec<uuid::Uuid> = messages.iter().map(|(id, _, _)| id.0).collect();
        let times: Vec<OffsetDateTime> = messages.iter().map(|(_, at, _)| *at).collect();
        let payloads: Vec<&[u8]> = messages.iter().map(|(_, _, p)| p.as_slice()).collect();
        let mut tx = self.pool().begin().await?;
        if let Some(batch) = sendgrid_batch {
            let status: Option<String> = sqlx::query_scalar(
                "SELECT status FROM sendgrid_batches WHERE account_id = $1 AND id = $2 FOR SHARE",
            )
            .bind(account_id.0)
            .bind(batch)
            .fetch_optional(&mut *tx)
            .await?;
            if status.as_deref() != Some("active") {
                return Err(StoreError::Conflict("a cancellation of this batch"));
            }
        }
        sqlx::query(
            "INSERT INTO scheduled_messages
                 (message_id, account_id, batch_id, send_at, payload, installation, sendgrid_batch)
             SELECT id, $1, $2, at, payload, $6, $7
             FROM UNNEST($4::uuid[], $3::timestamptz[], $5::bytea[]) AS m (id, at, payload)
             ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(account_id.0)
        .bind(batch_id.0)
        .bind(&times)
        .bind(&ids)
        .bind(&payloads)
        .bind(installation)
        .bind(sendgrid_batch)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Up to `limit` due messages, marked released in a transaction that commits when
    /// the caller commits the [`Held`] (after producing them).
    pub async fn take_due(
        &self,
        installation: &str,
        limit: u32,
    ) -> Result<Held<ScheduledMessage>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(
            "UPDATE scheduled_messages SET state = 'released', updated_at = now()
             WHERE message_id IN (
                 SELECT message_id FROM scheduled_messages
                 WHERE installation = $2 AND state = 'pending' AND send_at <= now()
                 ORDER BY send_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING message_id, account_id, payload",
        )
        .bind(i64::from(limit))
        .bind(installation)
        .fetch_all(&mut *tx)
        .await?;
        Ok(Held::new(tx, rows.iter().map(from_row).collect()))
    }

    /// When the next pending message is due, if any is pending.
    pub async fn next_due(&self, installation: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT min(send_at) FROM scheduled_messages
             WHERE installation = $1 AND state = 'pending'",
        )
        .bind(installation)
        .fetch_one(self.pool())
        .await?)
    }

    /// Marks the account's pending messages of `target` cancelled, in a transaction the
    /// caller commits after writing their `dropped` events.
    pub async fn cancel_scheduled(
        &self,
        account_id: AccountId,
        target: CancelTarget,
    ) -> Result<Held<ScheduledMessage>, StoreError> {
        let (message, batch, sendgrid) = target.keys();
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(
            "UPDATE scheduled_messages SET state = 'cancelled', updated_at = now()
             WHERE account_id = $1 AND state = 'pending'
               AND (message_id = $2 OR batch_id = $3 OR sendgrid_batch = $4)
             RETURNING message_id, account_id, payload",
        )
        .bind(account_id.0)
        .bind(message)
        .bind(batch)
        .bind(sendgrid)
        .fetch_all(&mut *tx)
        .await?;
        Ok(Held::new(tx, rows.iter().map(from_row).collect()))
    }

    /// The state (`pending`, `released`, `cancelled`) of the account's scheduled
    /// message, or of the messages of a batch; empty when there are none.
    pub async fn scheduled_states(
        &self,
        account_id: AccountId,
        target: CancelTarget,
    ) -> Result<Vec<String>, StoreError> {
        let (message, batch, sendgrid) = target.keys();
        Ok(sqlx::query_scalar(
            "SELECT state FROM scheduled_messages
             WHERE account_id = $1 AND (message_id = $2 OR batch_id = $3 OR sendgrid_batch = $4)",
        )
        .bind(account_id.0)
        .bind(message)
        .bind(batch)
        .bind(sendgrid)
        .fetch_all(self.pool())
        .await?)
    }

    /// Forgets released and cancelled rows older than `age`.
    pub async fn purge_scheduled(&self, age: std::time::Duration) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM scheduled_messages
             WHERE state <> 'pending' AND updated_at < now() - make_interval(secs => $1)",
        )
        .bind(age.as_secs_f64())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }
}

/// A SendGrid batch id's state: `active`, or `cancel` once its sends were cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendgridBatchStatus {
    Active,
    Cancel,
}

impl Store {
    /// A new SendGrid batch id for the account: 32 characters of base64url (192 random
    /// bits).
    pub async fn create_sendgrid_batch(&self, account_id: AccountId) -> Result<String, StoreError> {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
        use rand::RngCore;
        let mut bytes = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let id = URL_SAFE_NO_PAD.encode(bytes);
        sqlx::query("INSERT INTO sendgrid_batches (account_id, id) VALUES ($1, $2)")
            .bind(account_id.0)
            .bind(&id)
            .execute(self.pool())
            .await?;
        Ok(id)
    }

    /// The status of the account's SendGrid batch `id`; `None` when it has none.
    pub async fn sendgrid_batch(
        &self,
        account_id: AccountId,
        id: &str,
    ) -> Result<Option<SendgridBatchStatus>, StoreError> {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM sendgrid_batches WHERE account_id = $1 AND id = $2",
        )
        .bind(account_id.0)
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(status.map(|s| match s.as_str() {
            "cancel" => SendgridBatchStatus::Cancel,
            _ => SendgridBatchStatus::Active,
        }))
    }

    /// Marks the account's SendGrid batch `id` cancelled; `false` when it has none.
    pub async fn cancel_sendgrid_batch(
        &self,
        account_id: AccountId,
        id: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sendgrid_batches SET status = 'cancel' WHERE account_id = $1 AND id = $2",
        )
        .bind(account_id.0)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The account's cancelled SendGrid batch ids, newest first.
    pub async fn cancelled_sendgrid_batches(
        &self,
        account_id: AccountId,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sendgrid_batches WHERE account_id = $1 AND status = 'cancel'
             ORDER BY created_at DESC LIMIT 1000",
        )
        .bind(account_id.0)
        .fetch_all(self.pool())
        .await?)
    }
}
