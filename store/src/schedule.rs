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
#[derive(Clone, Copy, Debug)]
pub enum CancelTarget {
    Message(MessageId),
    Batch(BatchId),
}

fn from_row(r: &sqlx::postgres::PgRow) -> ScheduledMessage {
    ScheduledMessage {
        message_id: MessageId(r.get("message_id")),
        account_id: AccountId(r.get("account_id")),
        payload: r.get("payload"),
    }
}

impl Store {
    /// Holds `messages` until `send_at`. A message already held (a replayed request)
    /// is kept as it is.
    pub async fn schedule(
        &self,
        installation: &str,
        account_id: AccountId,
        batch_id: BatchId,
        send_at: OffsetDateTime,
        messages: &[(MessageId, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let ids: Vec<uuid::Uuid> = messages.iter().map(|(id, _)| id.0).collect();
        let payloads: Vec<&[u8]> = messages.iter().map(|(_, p)| p.as_slice()).collect();
        sqlx::query(
            "INSERT INTO scheduled_messages
                 (message_id, account_id, batch_id, send_at, payload, installation)
             SELECT id, $1, $2, $3, payload, $6
             FROM UNNEST($4::uuid[], $5::bytea[]) AS m (id, payload)
             ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(account_id.0)
        .bind(batch_id.0)
        .bind(send_at)
        .bind(&ids)
        .bind(&payloads)
        .bind(installation)
        .execute(self.pool())
        .await?;
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
        let (message, batch) = match target {
            CancelTarget::Message(id) => (Some(id.0), None),
            CancelTarget::Batch(id) => (None, Some(id.0)),
        };
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(
            "UPDATE scheduled_messages SET state = 'cancelled', updated_at = now()
             WHERE account_id = $1 AND state = 'pending'
               AND (message_id = $2 OR batch_id = $3)
             RETURNING message_id, account_id, payload",
        )
        .bind(account_id.0)
        .bind(message)
        .bind(batch)
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
        let (message, batch) = match target {
            CancelTarget::Message(id) => (Some(id.0), None),
            CancelTarget::Batch(id) => (None, Some(id.0)),
        };
        Ok(sqlx::query_scalar(
            "SELECT state FROM scheduled_messages
             WHERE account_id = $1 AND (message_id = $2 OR batch_id = $3)",
        )
        .bind(account_id.0)
        .bind(message)
        .bind(batch)
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
