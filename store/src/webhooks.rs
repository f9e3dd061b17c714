//! Customer webhooks: endpoints per account, the durable outbox of events waiting for
//! each endpoint (`webhook_deliveries`), and the record of every attempt.
//!
//! An event enters the outbox once per endpoint (the unique `(endpoint, event)` key makes
//! a redelivered event a no-op), so the Kafka offset can be stored as soon as the insert
//! commits. A sender claims an endpoint with a lease, sends its oldest pending events,
//! and marks them delivered, or counts a failure and sets when to try again. Rows older
//! than the retry window become `dead` (the dead-letter queue) and can be replayed.
//! Signing secrets are sealed at rest (`secrets`) when a keyring is configured.

use crate::{
    secrets::{open_stored, seal_stored, Keyring, SecretError, SecretKind},
    Store, StoreError,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use rand::RngCore;
use sendmill_wire::AccountId;
use serde::Serialize;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

/// An endpoint as its owner sees it (without the secret).
#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub description: String,
    /// Empty: every event type.
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub max_batch: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Consecutive failed attempts.
    pub failures: i32,
    /// `closed` (delivering), `open` (failing; waiting until `retry_at`) or `half_open`
    /// (failing; the next attempt is a one-event probe).
    pub circuit: String,
    #[serde(with = "time::serde::rfc3339")]
    pub retry_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_failure_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    /// Events waiting, and events in the dead-letter queue.
    pub pending: i64,
    pub dead: i64,
    /// How events are shaped and signed.
    pub format: WebhookFormat,
    /// `sendgrid` format: the ECDSA P-256 public key receivers verify with (base64 of
    /// its DER SubjectPublicKeyInfo, as SendGrid shows its verification key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// How an endpoint's requests are shaped and signed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// Standard Webhooks: `{"type", "timestamp", "data": {"events"}}`, HMAC-SHA256.
    #[default]
    Standard,
    /// SendGrid's Event Webhook: a JSON array of SendGrid-named events, ECDSA P-256.
    Sendgrid,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Standard => "standard",
            WebhookFormat::Sendgrid => "sendgrid",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "sendgrid" => WebhookFormat::Sendgrid,
            _ => WebhookFormat::Standard,
        }
    }
}

/// What signs an endpoint's requests, as its owner may see it.
#[derive(Clone, Debug)]
pub enum Verification {
    /// The Standard Webhooks secret (`whsec_…`).
    Secret(String),
    /// The ECDSA public key of a `sendgrid` endpoint (its private key is never shown).
    PublicKey(String),
}

/// What is needed to create or change an endpoint; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub max_batch: Option<i32>,
}

/// An endpoint the fan-out writes events for.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: Uuid,
    pub event_types: Vec<String>,
    pub format: WebhookFormat,
}

impl Target {
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }
}

/// One event bound for one endpoint.
#[derive(Clone, Debug)]
pub struct OutboxRow {
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub message_id: Uuid,
    pub event_type: String,
    pub occurred_at: OffsetDateTime,
    pub payload: serde_json::Value,
}

/// An endpoint leased to one sender.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: Uuid,
    pub account_id: AccountId,
    pub url: String,
    /// The Standard Webhooks secret, or (`sendgrid`) the base64 PKCS#8 private key.
    pub secret: String,
    pub max_batch: i32,
    pub failures: i32,
    pub format: WebhookFormat,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PendingEvent {
    pub seq: i64,
    pub event_id: Uuid,
    pub payload: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Attempt {
    pub webhook_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub attempted_at: OffsetDateTime,
    pub events: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
}

/// What an attempt did, as recorded.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub webhook_id: String,
    pub events: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Delivery {
    pub event_id: Uuid,
    pub message_id: Uuid,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub queued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
}

/// A webhook secret as stored: sealed bytes in base64 under a KEK, or the plaintext.
pub(crate) fn seal_secret(
    keyring: Option<&Keyring>,
    id: Uuid,
    secret: &str,
) -> Result<(Option<String>, String), StoreError> {
    Ok(
        match seal_stored(keyring, SecretKind::WebhookSecret, id, secret.as_bytes())? {
            (Some(kek), sealed) => (Some(kek), STANDARD.encode(sealed)),
            (None, plain) => (None, String::from_utf8(plain).expect("was a str")),
        },
    )
}

/// The webhook secret of row `id` from its stored form.
pub(crate) fn open_secret(
    keyring: Option<&Keyring>,
    id: Uuid,
    kek_id: Option<&str>,
    stored: String,
) -> Result<String, StoreError> {
    let Some(kek_id) = kek_id else {
        return Ok(stored);
    };
    let corrupt = || SecretError::Corrupt(kek_id.to_owned());
    let sealed = STANDARD.decode(stored.as_bytes()).map_err(|_| corrupt())?;
    let plain = open_stored(keyring, SecretKind::WebhookSecret, id, Some(kek_id), sealed)?;
    Ok(String::from_utf8(plain).map_err(|_| corrupt())?)
}

/// A new ECDSA P-256 key pair for a `sendgrid` endpoint: (base64 PKCS#8 private key,
/// base64 DER SubjectPublicKeyInfo public key).
fn generate_ecdsa_key() -> Result<(String, String), StoreError> {
    use aws_lc_rs::{
        encoding::AsDer,
        rand::SystemRandom,
        signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING},
    };
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
        .map_err(|_| StoreError::KeyGeneration)?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .map_err(|_| StoreError::KeyGeneration)?;
    let public = pair
        .public_key()
        .as_der()
        .map_err(|_| StoreError::KeyGeneration)?;
    Ok((
        STANDARD.encode(pkcs8.as_ref()),
        STANDARD.encode(public.as_ref()),
    ))
}

/// A new signing secret: `whsec_` + base64 of 24 random bytes.
pub fn generate_secret() -> String {
    let mut key = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

/// Consecutive failures after which an endpoint's circuit opens.
pub const BREAKER_THRESHOLD: i32 = 5;

const ENDPOINT_COLUMNS: &str = "e.id, e.url, e.description, e.event_types, e.enabled,
    e.max_batch, e.created_at, e.failures, e.retry_at, e.last_success_at, e.last_failure_at,
    e.last_error, e.format, e.public_key,
    (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.status = 'pending') AS pending,
    (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.status = 'dead') AS dead";

fn endpoint(row: &sqlx::postgres::PgRow) -> Result<Endpoint, sqlx::Error> {
    let failures: i32 = row.try_get("failures")?;
    let retry_at: OffsetDateTime = row.try_get("retry_at")?;
    let circuit = if failures < BREAKER_THRESHOLD {
        "closed"
    } else if retry_at > OffsetDateTime::now_utc() {
        "open"
    } else {
        "half_open"
    };
    Ok(Endpoint {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        event_types: row.try_get("event_types")?,
        enabled: row.try_get("enabled")?,
        max_batch: row.try_get("max_batch")?,
        created_at: row.try_get("created_at")?,
        failures,
        circuit: circuit.to_owned(),
        retry_at,
        last_success_at: row.try_get("last_success_at")?,
        last_failure_at: row.try_get("last_failure_at")?,
        last_error: row.try_get("last_error")?,
        pending: row.try_get("pending")?,
        dead: row.try_get("dead")?,
        format: WebhookFormat::parse(row.try_get("format")?),
        public_key: row.try_get("public_key")?,
    })
}

impl Store {
    /// Creates an endpoint; returns it with what verifies its requests: the secret
    /// (shown to the owner once here and on request by id) or, for `sendgrid`, the public
    /// key of a new ECDSA P-256 key pair whose private key is kept sealed like a secret.
    pub async fn create_webhook(
        &self,
        account_id: AccountId,
        url: &str,
        description: &str,
        event_types: &[String],
        max_batch: i32,
        format: WebhookFormat,
    ) -> Result<(Endpoint, Verification), StoreError> {
        let id = Uuid::now_v7();
        let (secret, public_key) = match format {
            WebhookFormat::Standard => (generate_secret(), None),
            WebhookFormat::Sendgrid => {
                let (private, public) = generate_ecdsa_key()?;
                (private, Some(public))
            }
        };
        let (kek_id, stored) = seal_secret(self.keyring(), id, &secret)?;
        sqlx::query(
            "INSERT INTO webhook_endpoints
               (id, account_id, url, description, event_types, secret, max_batch, secret_kek_id,
                format, public_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id)
        .bind(account_id.0)
        .bind(url)
        .bind(description)
        .bind(event_types)
        .bind(&stored)
        .bind(max_batch)
        .bind(kek_id)
        .bind(format.as_str())
        .bind(&public_key)
        .execute(&self.pool)
        .await?;
        let endpoint = self
            .webhook(account_id, id)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))?;
        let verification = match public_key {
            Some(key) => Verification::PublicKey(key),
            None => Verification::Secret(secret),
        };
        Ok((endpoint, verification))
    }

    pub async fn webhooks(&self, account_id: AccountId) -> Result<Vec<Endpoint>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e
             WHERE e.account_id = $1 ORDER BY e.created_at"
        ))
        .bind(account_id.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(endpoint).collect::<Result<_, _>>()?)
    }

    pub async fn webhook(
        &self,
        account_id: AccountId,
        id: Uuid,
    ) -> Result<Option<Endpoint>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e
             WHERE e.account_id = $1 AND e.id = $2"
        ))
        .bind(account_id.0)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(endpoint).transpose()?)
    }

    /// What verifies endpoint `id`'s requests: its secret, or its public key (a
    /// `sendgrid` endpoint's private key is never returned).
    pub async fn webhook_secret(
        &self,
        account_id: AccountId,
        id: Uuid,
    ) -> Result<Option<Verification>, StoreError> {
        let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT secret, secret_kek_id, public_key FROM webhook_endpoints
             WHERE account_id = $1 AND id = $2",
        )
        .bind(account_id.0)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(stored, kek_id, public_key)| match public_key {
            Some(key) => Ok(Verification::PublicKey(key)),
            None => {
                open_secret(self.keyring(), id, kek_id.as_deref(), stored).map(Verification::Secret)
            }
        })
        .transpose()
    }

    /// Applies `change`; `None` when the account has no such endpoint. Enabling an
    /// endpoint (or changing its URL) closes its circuit: the next attempt is immediate.
    pub async fn update_webhook(
        &self,
        account_id: AccountId,
        id: Uuid,
        change: &EndpointChange,
    ) -> Result<Option<Endpoint>, StoreError> {
        let reset = change.url.is_some() || change.enabled == Some(true);
        let updated = sqlx::query(
            "UPDATE webhook_endpoints SET
                 url = coalesce($3, url),
                 description = coalesce($4, description),
                 event_types = coalesce($5, event_types),
                 enabled = coalesce($6, enabled),
                 max_batch = coalesce($7, max_batch),
                 failures = CASE WHEN $8 THEN 0 ELSE failures END,
                 retry_at = CASE WHEN $8 THEN now() ELSE retry_at END,
                 updated_at = now()
             WHERE account_id = $1 AND id = $2",
        )
        .bind(account_id.0)
        .bind(id)
        .bind(&change.url)
        .bind(&change.description)
        .bind(&change.event_types)
        .bind(change.enabled)
        .bind(change.max_batch)
        .bind(reset)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        self.webhook(account_id, id).await
    }

    pub async fn delete_webhook(
        &self,
        account_id: AccountId,
        id: Uuid,
    ) -> Result<bool, StoreError> {
        let deleted =
            sqlx::query("DELETE FROM webhook_endpoints WHERE account_id = $1 AND id = $2")
                .bind(account_id.0)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(deleted.rows_affected() == 1)
    }

    /// The account's enabled endpoints, for the fan-out.
    pub async fn webhook_targets(&self, account_id: AccountId) -> Result<Vec<Target>, StoreError> {
        let rows: Vec<(Uuid, Vec<String>, String)> = sqlx::query_as(
            "SELECT id, event_types, format FROM webhook_endpoints WHERE account_id = $1 AND enabled",
        )
        .bind(account_id.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, event_types, format)| Target {
                id,
                event_types,
                format: WebhookFormat::parse(&format),
            })
            .collect())
    }

    /// Whether the account has endpoint `id` (cheaper than [`Store::webhook`], which
    /// counts the endpoint's queue).
    pub async fn owns_webhook(&self, account_id: AccountId, id: Uuid) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE account_id = $1 AND id = $2)",
        )
        .bind(account_id.0)
        .bind(id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Puts events in the outbox; an event already there for that endpoint is skipped.
    pub async fn enqueue_webhook_events(&self, rows: &[OutboxRow]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let inserted = sqlx::query(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, message_id, event_type, occurred_at, payload)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[], $6::jsonb[])
             ON CONFLICT (endpoint_id, event_id) DO NOTHING",
        )
        .bind(rows.iter().map(|r| r.endpoint_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event_type.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.payload.clone()).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected())
    }

    /// Leases the endpoint that has waited longest among those due with pending events.
    pub async fn claim_webhook_endpoint(
        &self,
        lease: std::time::Duration,
    ) -> Result<Option<Claimed>, StoreError> {
        let row = sqlx::query(
            "UPDATE webhook_endpoints SET lease_until = now() + make_interval(secs => $1)
             WHERE id = (
                 SELECT e.id FROM webhook_endpoints e
                 WHERE e.enabled AND e.retry_at <= now() AND e.lease_until < now()
                   AND EXISTS (SELECT 1 FROM webhook_deliveries d
                               WHERE d.endpoint_id = e.id AND d.status = 'pending')
                 ORDER BY e.retry_at LIMIT 1
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, account_id, url, secret, secret_kek_id, max_batch, failures, format",
        )
        .bind(lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let id: Uuid = r.try_get("id")?;
            let kek_id: Option<String> = r.try_get("secret_kek_id")?;
            Ok(Claimed {
                id,
                account_id: AccountId(r.try_get("account_id")?),
                url: r.try_get("url")?,
                secret: open_secret(self.keyring(), id, kek_id.as_deref(), r.try_get("secret")?)?,
                max_batch: r.try_get("max_batch")?,
                failures: r.try_get("failures")?,
                format: WebhookFormat::parse(r.try_get("format")?),
            })
        })
        .transpose()
    }

    /// Moves the endpoint's events queued longer than `retry_for` to the dead-letter
    /// queue; returns how many.
    pub async fn dead_letter_expired(
        &self,
        endpoint_id: Uuid,
        retry_for: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let moved = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'dead',
                 last_error = coalesce(last_error, 'not delivered within the retry window')
             WHERE endpoint_id = $1 AND status = 'pending'
               AND queued_at < now() - make_interval(secs => $2)",
        )
        .bind(endpoint_id)
        .bind(retry_for.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(moved.rows_affected())
    }

    /// The endpoint's oldest pending events, by when they happened.
    pub async fn pending_webhook_events(
        &self,
        endpoint_id: Uuid,
        limit: i64,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT seq, event_id, payload FROM webhook_deliveries
             WHERE endpoint_id = $1 AND status = 'pending'
             ORDER BY occurred_at, seq LIMIT $2",
        )
        .bind(endpoint_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records an attempt and its outcome in one transaction: on success the events are
    /// delivered and the circuit closes; on failure the events count an attempt and the
    /// endpoint waits until `retry_at`. The lease is kept on success (the sender goes on)
    /// and released on failure.
    pub async fn record_webhook_attempt(
        &self,
        endpoint_id: Uuid,
        seqs: &[i64],
        attempt: &AttemptRecord,
        failure_retry_at: Option<OffsetDateTime>,
        lease: std::time::Duration,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (endpoint_id, webhook_id, events, status_code, error, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(endpoint_id)
        .bind(&attempt.webhook_id)
        .bind(attempt.events)
        .bind(attempt.status_code)
        .bind(&attempt.error)
        .bind(attempt.duration_ms)
        .execute(&mut *tx)
        .await?;
        match failure_retry_at {
            None => {
                sqlx::query(
                    "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(),
                         attempts = attempts + 1
                     WHERE endpoint_id = $1 AND seq = ANY($2) AND status = 'pending'",
                )
                .bind(endpoint_id)
                .bind(seqs)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE webhook_endpoints SET failures = 0, last_success_at = now(),
                         lease_until = now() + make_interval(secs => $2)
                     WHERE id = $1",
                )
                .bind(endpoint_id)
                .bind(lease.as_secs_f64())
                .execute(&mut *tx)
                .await?;
            }
            Some(retry_at) => {
                sqlx::query(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = $3
                     WHERE endpoint_id = $1 AND seq = ANY($2) AND status = 'pending'",
                )
                .bind(endpoint_id)
                .bind(seqs)
                .bind(&attempt.error)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE webhook_endpoints SET failures = failures + 1, retry_at = $2,
                         last_failure_at = now(), last_error = $3, lease_until = '-infinity'
                     WHERE id = $1",
                )
                .bind(endpoint_id)
                .bind(retry_at)
                .bind(&attempt.error)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Gives the endpoint back before its lease runs out.
    pub async fn release_webhook_endpoint(&self, endpoint_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE webhook_endpoints SET lease_until = '-infinity' WHERE id = $1")
            .bind(endpoint_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn webhook_attempts(
        &self,
        account_id: AccountId,
        endpoint_id: Uuid,
        limit: i64,
    ) -> Result<Vec<Attempt>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT a.webhook_id, a.attempted_at, a.events, a.status_code, a.error, a.duration_ms
             FROM webhook_attempts a JOIN webhook_endpoints e ON e.id = a.endpoint_id
             WHERE e.account_id = $1 AND a.endpoint_id = $2
             ORDER BY a.id DESC LIMIT $3",
        )
        .bind(account_id.0)
        .bind(endpoint_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The endpoint's deliveries in `status` (`pending`, `delivered` or `dead`), newest
    /// first.
    pub async fn webhook_deliveries(
        &self,
        account_id: AccountId,
        endpoint_id: Uuid,
        status: &str,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT d.event_id, d.message_id, d.event_type, d.status, d.attempts, d.queued_at,
                    d.delivered_at, d.last_error
             FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE e.account_id = $1 AND d.endpoint_id = $2 AND d.status = $3
             ORDER BY d.seq DESC LIMIT $4",
        )
        .bind(account_id.0)
        .bind(endpoint_id)
        .bind(status)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Puts the endpoint's dead-lettered events queued since `since` back in the queue
    /// with a fresh retry window, and makes the endpoint due now. `None` when the account
    /// has no such endpoint.
    pub async fn replay_webhook(
        &self,
        account_id: AccountId,
        endpoint_id: Uuid,
        since: OffsetDateTime,
    ) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let owned = sqlx::query(
            "UPDATE webhook_endpoints SET retry_at = now(), failures = 0
             WHERE account_id = $1 AND id = $2",
        )
        .bind(account_id.0)
        .bind(endpoint_id)
        .execute(&mut *tx)
        .await?;
        if owned.rows_affected() == 0 {
            return Ok(None);
        }
        let replayed = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', queued_at = now(), last_error = NULL
             WHERE endpoint_id = $1 AND status = 'dead' AND occurred_at >= $2",
        )
        .bind(endpoint_id)
        .bind(since)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(replayed.rows_affected()))
    }

    /// Events in every endpoint's dead-letter queue (a metric).
    pub async fn webhook_dead_letters(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'dead'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Deletes delivered events and attempts older than `keep`.
    pub async fn prune_webhook_history(
        &self,
        keep: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let deliveries = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE status = 'delivered'
               AND delivered_at < now() - make_interval(secs => $1)",
        )
        .bind(keep.as_secs_f64())
        .execute(&self.pool)
        .await?;
        let attempts = sqlx::query(
            "DELETE FROM webhook_attempts WHERE attempted_at < now() - make_interval(secs => $1)",
        )
        .bind(keep.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(deliveries.rows_affected() + attempts.rows_affected())
    }
}
