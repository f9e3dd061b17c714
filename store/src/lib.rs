//! # sendmill-store
//!
//! Tenant data in PostgreSQL, the source of truth that Redis and in-process caches copy.
//! Every query that reads tenant data takes the account id, so one tenant's request can
//! never reach another's rows.
//!
//! ## Layout
//! - [`Store`]: the pool and the queries.
//! - [`alerts`]: the reputation monitor's alerts.
//! - [`domains`]: sending domains, their DKIM keys and verification.
//! - [`keys`]: API key generation and hashing.
//! - [`dkim`]: DKIM key generation and the DNS record to publish.
//! - [`templates`]: stored templates and their immutable versions.
//! - [`idempotency`]: Idempotency-Key claims and stored answers.
//! - [`returns`]: returned mail the inbound stage kept unclassified, and who owns a
//!   return-path domain.
//! - [`schedule`]: messages held until their `send_at`, released or cancelled.
//! - [`suppressions`]: per-account and global suppression lists.
//! - [`webhooks`]: customer webhook endpoints, their outbox and delivery attempts.
//! - [`held`]: rows locked in a transaction while a side effect (a Kafka write) happens.
//! - [`secrets`]: DKIM private keys and webhook secrets sealed at rest (AES-256-GCM under
//!   a key-encryption key from the environment or a file), and their rotation.

pub mod alerts;
pub mod dkim;
pub mod domains;
pub mod held;
pub mod idempotency;
pub mod keys;
pub mod returns;
pub mod schedule;
pub mod secrets;
pub mod suppressions;
pub mod templates;
pub mod webhooks;

pub use domains::{Ed25519DkimKey, RotationError, SendingDomain, StagedDkimKey};
pub use suppressions::{Suppression, SuppressionReason};

use sendmill_platform::api::ApiError;
use sendmill_wire::AccountId;
use sqlx::{postgres::PgPoolOptions, PgPool, Row};
use std::{fmt, str::FromStr};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot generate a signing key")]
    KeyGeneration,
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
}

/// The one mapping of a tenant-database failure to an answer: a uniqueness conflict is a
/// 409 `conflict` naming what exists; anything else is logged and answered 503
/// `unavailable` (the caller may retry; nothing was changed or the write was atomic).
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(what) => ApiError::conflict(format!("{what} already exists")),
            error => {
                tracing::error!(%error, "tenant database failed");
                ApiError::unavailable("the tenant database")
            }
        }
    }
}

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Send,
    Templates,
    Domains,
    Suppressions,
    Stats,
    Webhooks,
    /// Audiences: contacts, lists, imports, segments.
    Contacts,
    /// Campaigns: create, schedule, pause, cancel, test-send, report.
    Campaigns,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::Send,
        Scope::Templates,
        Scope::Domains,
        Scope::Suppressions,
        Scope::Stats,
        Scope::Webhooks,
        Scope::Contacts,
        Scope::Campaigns,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Templates => "templates",
            Scope::Domains => "domains",
            Scope::Suppressions => "suppressions",
            Scope::Stats => "stats",
            Scope::Webhooks => "webhooks",
            Scope::Contacts => "contacts",
            Scope::Campaigns => "campaigns",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| format!("unknown scope {s:?}"))
    }
}

/// Who is calling: the account and scopes of a valid, unrevoked key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub account_id: AccountId,
    pub key_id: Uuid,
    pub key_prefix: String,
    pub scopes: Vec<Scope>,
    pub settings: AccountSettings,
    /// Operators manage tenants and the global suppression list.
    pub operator: bool,
    pub limits: AccountLimits,
}

/// Per-account send limits; `None` means the platform default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountLimits {
    /// Recipients accepted per second.
    pub send_rate_per_sec: Option<u32>,
    /// Recipients accepted per UTC day.
    pub daily_quota: Option<u64>,
}

/// An API key as listings show it: never the secret.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// An account as operators see it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AccountInfo {
    pub id: AccountId,
    pub name: String,
    pub operator: bool,
    pub limits: AccountLimits,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Account-wide defaults a message may override.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountSettings {
    pub track_opens: bool,
    pub track_clicks: bool,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

/// A key just created: the plaintext exists only here.
pub struct NewApiKey {
    pub id: Uuid,
    pub plaintext: String,
    pub prefix: String,
}

fn account_from_row(r: &sqlx::postgres::PgRow) -> AccountInfo {
    AccountInfo {
        id: AccountId(r.get("id")),
        name: r.get("name"),
        operator: r.get("operator"),
        limits: limits_from_row(r),
        created_at: r.get("created_at"),
    }
}

/// A key's principal from a row of `api_keys` joined with its account.
fn principal_from_row(r: &sqlx::postgres::PgRow) -> Principal {
    let scopes: Vec<String> = r.get("scopes");
    Principal {
        account_id: AccountId(r.get("account_id")),
        key_id: r.get("id"),
        key_prefix: r.get("prefix"),
        scopes: scopes.iter().filter_map(|s| s.parse().ok()).collect(),
        settings: AccountSettings {
            track_opens: r.get("track_opens"),
            track_clicks: r.get("track_clicks"),
        },
        operator: r.get("operator"),
        limits: limits_from_row(r),
    }
}

fn limits_from_row(r: &sqlx::postgres::PgRow) -> AccountLimits {
    AccountLimits {
        send_rate_per_sec: r
            .get::<Option<i32>, _>("send_rate_per_sec")
            .map(|v| v.max(0) as u32),
        daily_quota: r
            .get::<Option<i64>, _>("daily_quota")
            .map(|v| v.max(0) as u64),
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// Seals and opens secrets at rest; `None`: they are written in plaintext.
    keyring: Option<std::sync::Arc<secrets::Keyring>>,
}

impl Store {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Self {
            pool,
            keyring: None,
        })
    }

    /// The store sealing secrets with `keyring` (`None`: plaintext, as without one).
    pub fn with_keyring(mut self, keyring: Option<std::sync::Arc<secrets::Keyring>>) -> Self {
        self.keyring = keyring;
        self
    }

    pub(crate) fn keyring(&self) -> Option<&secrets::Keyring> {
        self.keyring.as_deref()
    }

    /// Applies the schema migrations (safe to run concurrently and repeatedly).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    /// `SELECT 1`: PostgreSQL answers and the pool can give a connection (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn create_account(&self, name: &str) -> Result<AccountId, StoreError> {
        let id = AccountId::generate();
        sqlx::query("INSERT INTO accounts (id, name) VALUES ($1, $2)")
            .bind(id.0)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    /// The id of the account named `name`, if any (the first created, when several).
    pub async fn account_by_name(&self, name: &str) -> Result<Option<AccountId>, StoreError> {
        let row =
            sqlx::query("SELECT id FROM accounts WHERE name = $1 ORDER BY created_at LIMIT 1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| AccountId(r.get("id"))))
    }

    /// A new key of the account. With `sigv4` it also verifies AWS Signature V4
    /// requests, so a copy of it is kept sealed under the KEK: `Secret(NoKeyring)` when
    /// no keyring is configured (a plaintext copy is never stored).
    pub async fn create_api_key(
        &self,
        account_id: AccountId,
        name: &str,
        scopes: &[Scope],
        sigv4: bool,
    ) -> Result<NewApiKey, StoreError> {
        let generated = keys::generate();
        let id = Uuid::now_v7();
        let scope_names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        let (kek_id, sealed) = if sigv4 {
            let ring = self.keyring().ok_or(secrets::SecretError::NoKeyring)?;
            let (kek, sealed) = ring.seal(
                secrets::SecretKind::Sigv4Secret,
                id,
                generated.plaintext.as_bytes(),
            )?;
            (Some(kek), Some(sealed))
        } else {
            (None, None)
        };
        sqlx::query(
            "INSERT INTO api_keys
                 (id, account_id, name, prefix, secret_hash, scopes, sigv4_secret, sigv4_kek_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(account_id.0)
        .bind(name)
        .bind(&generated.prefix)
        .bind(keys::hash(&generated.plaintext).as_slice())
        .bind(&scope_names)
        .bind(sealed)
        .bind(kek_id)
        .execute(&self.pool)
        .await?;
        Ok(NewApiKey {
            id,
            plaintext: generated.plaintext,
            prefix: generated.prefix,
        })
    }

    pub async fn revoke_api_key(
        &self,
        account_id: AccountId,
        key_id: Uuid,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now(), sigv4_secret = NULL, sigv4_kek_id = NULL
             WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL",
        )
        .bind(key_id)
        .bind(account_id.0)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The principal of a presented key, or `None` for an unknown or revoked key.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Principal>, StoreError> {
        if !keys::looks_like_key(presented) {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT k.id, k.account_id, k.prefix, k.scopes, a.track_opens, a.track_clicks,
                    a.operator, a.send_rate_per_sec, a.daily_quota
             FROM api_keys k JOIN accounts a ON a.id = k.account_id
             WHERE k.secret_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(keys::hash(presented).as_slice())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(principal_from_row))
    }

    /// The principal of key `key_id`, or `None` for an unknown or revoked key (a web app
    /// session re-checks its key on every request).
    pub async fn principal_by_key_id(&self, key_id: Uuid) -> Result<Option<Principal>, StoreError> {
        let row = sqlx::query(
            "SELECT k.id, k.account_id, k.prefix, k.scopes, a.track_opens, a.track_clicks,
                    a.operator, a.send_rate_per_sec, a.daily_quota
             FROM api_keys k JOIN accounts a ON a.id = k.account_id
             WHERE k.id = $1 AND k.revoked_at IS NULL",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(principal_from_row))
    }

    /// The principal of key `key_id` and its secret, for verifying an AWS Signature V4
    /// request: `None` for an unknown or revoked key, or one created without `sigv4`.
    pub async fn sigv4_key(&self, key_id: Uuid) -> Result<Option<(Principal, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT k.id, k.account_id, k.prefix, k.scopes, k.sigv4_secret, k.sigv4_kek_id,
                    a.track_opens, a.track_clicks, a.operator, a.send_rate_per_sec, a.daily_quota
             FROM api_keys k JOIN accounts a ON a.id = k.account_id
             WHERE k.id = $1 AND k.revoked_at IS NULL AND k.sigv4_secret IS NOT NULL",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        // Never written without a KEK; a row without one is not trusted.
        let kek_id: Option<String> = r.get("sigv4_kek_id");
        let kek_id = kek_id.ok_or_else(|| secrets::SecretError::Corrupt(String::new()))?;
        let plain = secrets::open_stored(
            self.keyring(),
            secrets::SecretKind::Sigv4Secret,
            key_id,
            Some(&kek_id),
            r.get("sigv4_secret"),
        )?;
        let secret =
            String::from_utf8(plain).map_err(|_| secrets::SecretError::Corrupt(kek_id.clone()))?;
        Ok(Some((principal_from_row(&r), secret)))
    }

    /// The account's keys, newest first, revoked ones included.
    pub async fn api_keys(&self, account_id: AccountId) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, prefix, scopes, created_at, revoked_at FROM api_keys
             WHERE account_id = $1 ORDER BY created_at DESC, id DESC",
        )
        .bind(account_id.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ApiKeyInfo {
                id: r.get("id"),
                name: r.get("name"),
                prefix: r.get("prefix"),
                scopes: r.get("scopes"),
                created_at: r.get("created_at"),
                revoked_at: r.get("revoked_at"),
            })
            .collect())
    }

    /// Makes the account an operator (or not).
    pub async fn set_operator(&self, account_id: AccountId, on: bool) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE accounts SET operator = $2 WHERE id = $1")
            .bind(account_id.0)
            .bind(on)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets the account's send limits (`None`: the platform default).
    pub async fn set_limits(
        &self,
        account_id: AccountId,
        limits: AccountLimits,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE accounts SET send_rate_per_sec = $2, daily_quota = $3 WHERE id = $1",
        )
        .bind(account_id.0)
        .bind(
            limits
                .send_rate_per_sec
                .map(|v| v.min(i32::MAX as u32) as i32),
        )
        .bind(limits.daily_quota.map(|v| v.min(i64::MAX as u64) as i64))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn account(&self, id: AccountId) -> Result<Option<AccountInfo>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, operator, send_rate_per_sec, daily_quota, created_at
             FROM accounts WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(account_from_row))
    }

    /// Every account, oldest first (operators only).
    pub async fn accounts(&self) -> Result<Vec<AccountInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, operator, send_rate_per_sec, daily_quota, created_at
             FROM accounts ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(account_from_row).collect())
    }

    pub async fn set_tracking_defaults(
        &self,
        account_id: AccountId,
        settings: &AccountSettings,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE accounts SET track_opens = $2, track_clicks = $3 WHERE id = $1")
            .bind(account_id.0)
            .bind(settings.track_opens)
            .bind(settings.track_clicks)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Creates or replaces the account's partial `name`. Syntax is checked by the caller
    /// (the API compiles it before saving).
    pub async fn put_partial(
        &self,
        account_id: AccountId,
        name: &str,
        source: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO template_partials (account_id, name, source) VALUES ($1, $2, $3)
             ON CONFLICT (account_id, name)
             DO UPDATE SET source = EXCLUDED.source, updated_at = now()",
        )
        .bind(account_id.0)
        .bind(name)
        .bind(source)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The account's partials as (name, source), by name.
    pub async fn partials(
        &self,
        account_id: AccountId,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, source FROM template_partials WHERE account_id = $1 ORDER BY name",
        )
        .bind(account_id.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("name"), r.get("source")))
            .collect())
    }
}
