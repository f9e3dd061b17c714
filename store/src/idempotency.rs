//! Idempotency keys. A request with an `Idempotency-Key` first claims the key for a
//! short lease, does its work, then stores its answer; a repeat within the retention
//! window gets that answer back and does nothing. The claim carries the batch id, from
//! which message ids derive: a claim taken over after its lease ran out (the first
//! process died mid-request) replays the same ids, so nothing is sent twice.

use crate::{Store, StoreError};
use sendmill_wire::{AccountId, BatchId};
use sqlx::{types::Json, Row};
use std::time::Duration;

/// What a claim found.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// The key is ours, new or taken over: do the work under this batch id.
    Owned { batch_id: BatchId },
    /// Done before: answer with this status and body.
    Replay {
        status: u16,
        response: serde_json::Value,
    },
    /// Another request holds the key right now.
    InProgress,
    /// The key was used for a different request body.
    Mismatch,
}

impl Store {
    /// Claims `key` for a request whose body hashes to `request_hash`.
    pub async fn claim_idempotency_key(
        &self,
        account_id: AccountId,
        key: &str,
        request_hash: &[u8; 32],
        lease: Duration,
        retention: Duration,
    ) -> Result<Claim, StoreError> {
        let mut tx = self.pool().begin().await?;
        let fresh = BatchId::generate();
        // A row past retention counts as absent: it is replaced by this claim.
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (account_id, key, request_hash, batch_id, lease_until)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
             ON CONFLICT (account_id, key) DO UPDATE
             SET request_hash = EXCLUDED.request_hash, batch_id = EXCLUDED.batch_id,
                 created_at = now(), lease_until = EXCLUDED.lease_until,
                 response_status = NULL, response = NULL
             WHERE idempotency_keys.created_at < now() - make_interval(secs => $6)
             RETURNING batch_id",
        )
        .bind(account_id.0)
        .bind(key)
        .bind(request_hash.as_slice())
        .bind(fresh.0)
        .bind(lease.as_secs_f64())
        .bind(retention.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        if claimed.is_some() {
            tx.commit().await?;
            return Ok(Claim::Owned { batch_id: fresh });
        }
        let row = sqlx::query(
            "SELECT request_hash, batch_id, lease_until > now() AS leased, response_status, response
             FROM idempotency_keys WHERE account_id = $1 AND key = $2 FOR UPDATE",
        )
        .bind(account_id.0)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        let stored_hash: Vec<u8> = row.get("request_hash");
        let claim = if stored_hash != request_hash {
            Claim::Mismatch
        } else if let Some(status) = row.get::<Option<i16>, _>("response_status") {
            let response: Option<Json<serde_json::Value>> = row.get("response");
            Claim::Replay {
                status: status as u16,
                response: response.map(|j| j.0).unwrap_or_default(),
            }
        } else if row.get::<bool, _>("leased") {
            Claim::InProgress
        } else {
            sqlx::query(
                "UPDATE idempotency_keys SET lease_until = now() + make_interval(secs => $3)
                 WHERE account_id = $1 AND key = $2",
            )
            .bind(account_id.0)
            .bind(key)
            .bind(lease.as_secs_f64())
            .execute(&mut *tx)
            .await?;
            Claim::Owned {
                batch_id: BatchId(row.get("batch_id")),
            }
        };
        tx.commit().await?;
        Ok(claim)
    }

    /// Stores the answer of the request that owns `key`.
    pub async fn complete_idempotency_key(
        &self,
        account_id: AccountId,
        key: &str,
        status: u16,
        response: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET response_status = $3, response = $4
             WHERE account_id = $1 AND key = $2",
        )
        .bind(account_id.0)
        .bind(key)
        .bind(status as i16)
        .bind(Json(response))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Gives up a claim. `forget`: the request changed nothing (it was refused), so the
    /// key is free for any request; otherwise the lease ends now and a retry takes the
    /// claim over with its batch id.
    pub async fn abandon_idempotency_key(
        &self,
        account_id: AccountId,
        key: &str,
        forget: bool,
    ) -> Result<(), StoreError> {
        let sql = if forget {
            "DELETE FROM idempotency_keys WHERE account_id = $1 AND key = $2"
        } else {
            "UPDATE idempotency_keys SET lease_until = now() WHERE account_id = $1 AND key = $2"
        };
        sqlx::query(sql)
            .bind(account_id.0)
            .bind(key)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Forgets keys older than `retention`.
    pub async fn purge_idempotency_keys(&self, retention: Duration) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
        )
        .bind(retention.as_secs_f64())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }
}
