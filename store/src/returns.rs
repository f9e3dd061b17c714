//! Returned mail the inbound stage kept because it could not classify it or match it to a
//! message: one row per inbound record (its id), with the raw message, until it expires.
//! Listed per account (`GET /v1/returns`); every read takes the account id.

use crate::{Store, StoreError};
use sendmill_wire::AccountId;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

/// A kept return, as listed (without the raw message).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeptReturn {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The envelope sender (empty: the null sender `<>`).
    pub mail_from: String,
    /// The envelope recipient at the return-path domain.
    pub rcpt_to: String,
    pub subject: String,
    /// Why it was kept.
    pub reason: String,
    /// Size of the raw message, in bytes.
    pub size: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A return to keep.
pub struct NewReturn<'a> {
    pub id: Uuid,
    pub account_id: Option<AccountId>,
    pub received_at: OffsetDateTime,
    pub mail_from: &'a str,
    pub rcpt_to: &'a str,
    pub subject: &'a str,
    pub reason: &'a str,
    pub raw: &'a [u8],
    pub expires_at: OffsetDateTime,
}

impl Store {
    /// The accounts whose sending domains use `domain` (any case) as their return-path
    /// domain: who may receive mail there. Usually one; none for a stranger's domain.
    /// Accounts that verified the sending domain (DNS) come first and alone: one that
    /// merely added another's domain, unverified, does not share its returns.
    pub async fn return_path_domain_owners(
        &self,
        domain: &str,
    ) -> Result<Vec<AccountId>, StoreError> {
        let rows = sqlx::query(
            "SELECT account_id, bool_or(verified_at IS NOT NULL) AS verified
             FROM sending_domains
             WHERE lower(coalesce(return_path_domain, 'bounces.' || domain)) = lower($1)
             GROUP BY account_id",
        )
        .bind(domain)
        .fetch_all(&self.pool)
        .await?;
        let owners: Vec<(AccountId, bool)> = rows
            .iter()
            .map(|r| Ok((AccountId(r.try_get("account_id")?), r.try_get("verified")?)))
            .collect::<Result<_, StoreError>>()?;
        let verified = owners.iter().any(|(_, v)| *v);
        Ok(owners
            .into_iter()
            .filter(|(_, v)| *v || !verified)
            .map(|(account, _)| account)
            .collect())
    }

    /// Keeps a return; a second call with the same id changes nothing.
    pub async fn keep_return(&self, kept: &NewReturn<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO inbound_returns
                 (id, account_id, received_at, mail_from, rcpt_to, subject, reason, raw, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
        )
        .bind(kept.id)
        .bind(kept.account_id.map(|a| a.0))
        .bind(kept.received_at)
        .bind(kept.mail_from)
        .bind(kept.rcpt_to)
        .bind(kept.subject)
        .bind(kept.reason)
        .bind(kept.raw)
        .bind(kept.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `account`'s kept returns, newest first, received before `before` (a page cursor).
    pub async fn kept_returns(
        &self,
        account: AccountId,
        before: Option<OffsetDateTime>,
        limit: i64,
    ) -> Result<Vec<KeptReturn>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, received_at, mail_from, rcpt_to, subject, reason, octet_length(raw) AS size,
                    expires_at
             FROM inbound_returns
             WHERE account_id = $1 AND ($2::timestamptz IS NULL OR received_at < $2)
                   AND expires_at > now()
             ORDER BY received_at DESC LIMIT $3",
        )
        .bind(account.0)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeptReturn {
                    id: r.try_get("id")?,
                    received_at: r.try_get("received_at")?,
                    mail_from: r.try_get("mail_from")?,
                    rcpt_to: r.try_get("rcpt_to")?,
                    subject: r.try_get("subject")?,
                    reason: r.try_get("reason")?,
                    size: r.try_get::<i32, _>("size")? as i64,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect()
    }

    /// The raw message of one of `account`'s kept returns.
    pub async fn kept_return_raw(
        &self,
        account: AccountId,
        id: Uuid,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query(
            "SELECT raw FROM inbound_returns
             WHERE account_id = $1 AND id = $2 AND expires_at > now()",
        )
        .bind(account.0)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("raw")).transpose()?)
    }

    /// How many returns of `account` are kept (expired ones not yet deleted included).
    pub async fn count_kept_returns(&self, account: AccountId) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT count(*) AS n FROM inbound_returns WHERE account_id = $1")
            .bind(account.0)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? as u64)
    }

    /// Deletes every kept return of `account` (a bench's tenant, cleaning up); how many.
    pub async fn delete_kept_returns(&self, account: AccountId) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM inbound_returns WHERE account_id = $1")
            .bind(account.0)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes returns past their expiry; returns how many.
    pub async fn delete_expired_returns(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM inbound_returns WHERE expires_at <= now()")
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
