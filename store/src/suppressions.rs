//! Suppression lists in PostgreSQL: per account, and one global list operators keep for
//! every account (spam traps, legal requests). PostgreSQL is the truth; the Redis copy
//! the send path reads (`platform::suppressions`) is rebuilt from here when it is lost.
//! Addresses are stored lower-cased (Unicode lower case, so UTF-8 local parts match in
//! any case, as ASCII ones always did).

use crate::{Store, StoreError};
use sendmill_wire::AccountId;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::{fmt, str::FromStr};
use time::OffsetDateTime;

/// Why an address is suppressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    Bounce,
    Complaint,
    Unsubscribe,
    Manual,
}

impl SuppressionReason {
    pub const ALL: [SuppressionReason; 4] = [
        SuppressionReason::Bounce,
        SuppressionReason::Complaint,
        SuppressionReason::Unsubscribe,
        SuppressionReason::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::Bounce => "bounce",
            SuppressionReason::Complaint => "complaint",
            SuppressionReason::Unsubscribe => "unsubscribe",
            SuppressionReason::Manual => "manual",
        }
    }
}

impl fmt::Display for SuppressionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SuppressionReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown reason {s:?}: use bounce, complaint, unsubscribe or manual")
            })
    }
}

/// One suppressed address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Suppression {
    pub email: String,
    pub reason: SuppressionReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// A suppression to write: an upsert replaces reason and expiry of an existing one.
#[derive(Clone, Debug)]
pub struct NewSuppression {
    pub email: String,
    pub reason: SuppressionReason,
    pub source: Option<String>,
    pub expires_at: Option<OffsetDateTime>,
}

/// Which list: an account's, or the global one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum List {
    Account(AccountId),
    Global,
}

impl List {
    fn table(self) -> &'static str {
        match self {
            List::Account(_) => "suppressions",
            List::Global => "global_suppressions",
        }
    }

    /// The account-id predicate and its bind position for this list's table.
    fn scope(self, position: usize) -> String {
        match self {
            List::Account(_) => format!("account_id = ${position}"),
            List::Global => format!("${position}::uuid IS NULL"),
        }
    }

    fn account(self) -> Option<uuid::Uuid> {
        match self {
            List::Account(id) => Some(id.0),
            List::Global => None,
        }
    }
}

/// The contact status a suppression for `reason` means, and the cause its contact event
/// names; `None` for `manual` (an operator's own reasons say nothing about the person).
fn contact_status(reason: SuppressionReason) -> Option<(&'static str, &'static str)> {
    match reason {
        SuppressionReason::Bounce => Some(("bounced", "bounce")),
        SuppressionReason::Complaint => Some(("complained", "complaint")),
        SuppressionReason::Unsubscribe => Some(("unsubscribed", "unsubscribe")),
        SuppressionReason::Manual => None,
    }
}

/// The audiences' side of a suppression: each `emails[i]` that is an `active` contact of
/// the account becomes `statuses[i]`, leaves every list, and gets a contact event naming
/// `causes[i]`. A contact already not `active` keeps its first cause.
async fn flip_contacts(
    tx: &mut sqlx::PgConnection,
    account_id: AccountId,
    emails: &[String],
    statuses: &[&str],
    causes: &[&str],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH input AS (
             SELECT * FROM unnest($2::text[], $3::text[], $4::text[]) AS i(email, status, cause)
         ), flipped AS (
             UPDATE contacts c SET status = i.status, status_changed_at = now(), updated_at = now()
             FROM input i
             WHERE c.account_id = $1 AND c.email = i.email AND c.status = 'active'
             RETURNING c.id, i.status, i.cause
         ), left_lists AS (
             UPDATE list_members m SET state = 'unsubscribed', unsubscribed_at = now(),
                 updated_at = now(), source = f.cause
             FROM flipped f
             WHERE m.account_id = $1 AND m.contact_id = f.id AND m.state <> 'unsubscribed'
         )
         INSERT INTO contact_events (account_id, contact_id, kind, source)
         SELECT $1, id, status, cause FROM flipped",
    )
    .bind(account_id.0)
    .bind(emails)
    .bind(statuses)
    .bind(causes)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn from_row(r: &sqlx::postgres::PgRow) -> Suppression {
    Suppression {
        email: r.get("email"),
        reason: r
            .get::<String, _>("reason")
            .parse()
            .unwrap_or(SuppressionReason::Manual),
        source: r.get("source"),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
    }
}

impl Store {
    /// Suppresses `email` for the account, keeping an existing entry as it is. Returns
    /// whether it was newly added.
    ///
    /// A bounce, complaint or unsubscribe also flips the account's contact with that
    /// address (if any, and if still `active`) to `bounced`, `complained` or
    /// `unsubscribed`, and all its list memberships to `unsubscribed`, with a contact
    /// event naming the cause, in the same transaction: every stage that records one of
    /// those (the dispatcher's hard bounces, inbound's returns and complaints, the
    /// unsubscribe page and one-click POST) keeps the audience true without knowing it.
    pub async fn add_suppression(
        &self,
        account_id: AccountId,
        email: &str,
        reason: SuppressionReason,
        source: Option<&str>,
    ) -> Result<bool, StoreError> {
        let email = email.to_lowercase();
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "INSERT INTO suppressions (account_id, email, reason, source)
             VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, email) DO NOTHING",
        )
        .bind(account_id.0)
        .bind(&email)
        .bind(reason.as_str())
        .bind(source)
        .execute(&mut *tx)
        .await?;
        if let Some((status, cause)) = contact_status(reason) {
            flip_contacts(&mut tx, account_id, &[email], &[status], &[cause]).await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// The active reason `email` is suppressed for the account (its own list or the
    /// global one), if it is.
    pub async fn suppression(
        &self,
        account_id: AccountId,
        email: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT reason FROM suppressions
             WHERE account_id = $1 AND email = $2 AND (expires_at IS NULL OR expires_at > now())
             UNION ALL
             SELECT reason FROM global_suppressions
             WHERE email = $2 AND (expires_at IS NULL OR expires_at > now())
             LIMIT 1",
        )
        .bind(account_id.0)
        .bind(email.to_lowercase())
        .fetch_optional(self.pool())
        .await?)
    }

    /// Creates or replaces entries of `list` in one statement. An address given twice
    /// keeps its last entry, as one upsert after another would (one statement may not
    /// touch a row twice).
    pub async fn upsert_suppressions(
        &self,
        list: List,
        entries: &[NewSuppression],
    ) -> Result<u64, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut last_of: std::collections::HashMap<String, usize> = Default::default();
        for (i, entry) in entries.iter().enumerate() {
            last_of.insert(entry.email.to_lowercase(), i);
        }
        let mut kept: Vec<(String, usize)> = last_of.into_iter().collect();
        kept.sort_unstable_by_key(|&(_, i)| i);
        let entries: Vec<&NewSuppression> = kept.iter().map(|&(_, i)| &entries[i]).collect();
        let emails: Vec<String> = kept.into_iter().map(|(email, _)| email).collect();
        let reasons: Vec<&str> = entries.iter().map(|e| e.reason.as_str()).collect();
        let sources: Vec<Option<String>> = entries.iter().map(|e| e.source.clone()).collect();
        let expiries: Vec<Option<OffsetDateTime>> = entries.iter().map(|e| e.expires_at).collect();
        let sql = match list {
            List::Account(_) => {
                "INSERT INTO suppressions (account_id, email, reason, source, expires_at)
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::timestamptz[])
                 ON CONFLICT (account_id, email) DO UPDATE
                 SET reason = EXCLUDED.reason, source = EXCLUDED.source,
                     expires_at = EXCLUDED.expires_at, created_at = now()"
            }
            List::Global => {
                "INSERT INTO global_suppressions (email, reason, source, expires_at)
                 SELECT * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::timestamptz[])
                 WHERE $1::uuid IS NULL
                 ON CONFLICT (email) DO UPDATE
                 SET reason = EXCLUDED.reason, source = EXCLUDED.source,
                     expires_at = EXCLUDED.expires_at, created_at = now()"
            }
        };
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(sql)
            .bind(list.account())
            .bind(&emails)
            .bind(&reasons)
            .bind(&sources)
            .bind(&expiries)
            .execute(&mut *tx)
            .await?;
        // Lasting entries of an account's list flip its contacts as the stages' do.
        if let List::Account(account) = list {
            let mut flips = (Vec::new(), Vec::new(), Vec::new());
            for (email, entry) in emails.iter().zip(&entries) {
                if let (Some((status, cause)), None) =
                    (contact_status(entry.reason), entry.expires_at)
                {
                    flips.0.push(email.clone());
                    flips.1.push(status);
                    flips.2.push(cause);
                }
            }
            if !flips.0.is_empty() {
                flip_contacts(&mut tx, account, &flips.0, &flips.1, &flips.2).await?;
            }
        }
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// One entry of `list`, expired or not.
    pub async fn suppression_entry(
        &self,
        list: List,
        email: &str,
    ) -> Result<Option<Suppression>, StoreError> {
        let sql = format!(
            "SELECT email, reason, source, created_at, expires_at FROM {} WHERE {} AND email = $2",
            list.table(),
            list.scope(1)
        );
        let row = sqlx::query(&sql)
            .bind(list.account())
            .bind(email.to_lowercase())
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Removes an entry; `false` when there was none.
    pub async fn delete_suppression(&self, list: List, email: &str) -> Result<bool, StoreError> {
        let sql = format!(
            "DELETE FROM {} WHERE {} AND email = $2",
            list.table(),
            list.scope(1)
        );
        let done = sqlx::query(&sql)
            .bind(list.account())
            .bind(email.to_lowercase())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A page of `list` by address, after `after`, optionally of one reason.
    pub async fn suppression_page(
        &self,
        list: List,
        reason: Option<SuppressionReason>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Suppression>, StoreError> {
        let sql = format!(
            "SELECT email, reason, source, created_at, expires_at FROM {}
             WHERE {} AND ($2::text IS NULL OR reason = $2) AND ($3::text IS NULL OR email > $3)
             ORDER BY email LIMIT $4",
            list.table(),
            list.scope(1)
        );
        let rows = sqlx::query(&sql)
            .bind(list.account())
            .bind(reason.map(|r| r.as_str()))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Every active entry of `list` as `(email, reason)`: what a cache is built from.
    pub async fn active_suppressions(
        &self,
        list: List,
    ) -> Result<Vec<(String, String, Option<OffsetDateTime>)>, StoreError> {
        let sql = format!(
            "SELECT email, reason, expires_at FROM {}
             WHERE {} AND (expires_at IS NULL OR expires_at > now())",
            list.table(),
            list.scope(1)
        );
        let rows = sqlx::query(&sql)
            .bind(list.account())
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("email"), r.get("reason"), r.get("expires_at")))
            .collect())
    }
}
