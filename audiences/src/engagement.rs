//! Contacts' engagement from ClickHouse's `contact_engagement` rollup (a materialized
//! view over `events`, see `deploy/clickhouse/0004_contact_engagement.sql`): the last
//! delivery, open and click of each address of an account, people only. PostgreSQL gets
//! no write per event.

use crate::segments::Engagement as Kind;
use clickhouse::Row;
use sendmill_wire::AccountId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use time::OffsetDateTime;

/// A contact's last delivery, open and click (absent: never, or before the events'
/// retention).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engagement {
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_delivered_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_opened_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_clicked_at: Option<OffsetDateTime>,
}

#[derive(Debug, Row, Deserialize)]
struct LastRow {
    email: String,
    event_type: String,
    /// Seconds since the Unix epoch.
    at: u32,
}

/// The engagement of `emails` (normalised addresses) in one query. ClickHouse not
/// answering is logged and reads as no engagement: a contact page must not fail with
/// the analytics store.
pub async fn lookup(
    client: &clickhouse::Client,
    account: AccountId,
    emails: &[String],
) -> HashMap<String, Engagement> {
    let mut out: HashMap<String, Engagement> = HashMap::new();
    if emails.is_empty() {
        return out;
    }
    let rows = client
        .query(
            "SELECT email, event_type, toUInt32(maxMerge(last_at)) AS at FROM contact_engagement
             WHERE account_id = toUUID(?) AND has(?, email)
             GROUP BY email, event_type",
        )
        .bind(account.to_string())
        .bind(emails)
        .fetch_all::<LastRow>()
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, "contact engagement lookup");
            return out;
        }
    };
    for row in rows {
        let at = OffsetDateTime::from_unix_timestamp(i64::from(row.at)).ok();
        let entry = out.entry(row.email).or_default();
        match row.event_type.as_str() {
            "delivered" => entry.last_delivered_at = at,
            "opened" => entry.last_opened_at = at,
            "clicked" => entry.last_clicked_at = at,
            _ => {}
        }
    }
    out
}

#[derive(Debug, Row, Deserialize)]
struct EmailRow {
    email: String,
}

/// Addresses of `account` with a `kind` event in the last `hours`.
pub async fn engaged_within(
    client: &clickhouse::Client,
    account: AccountId,
    kind: Kind,
    hours: u64,
) -> Result<Vec<String>, clickhouse::error::Error> {
    let since = OffsetDateTime::now_utc().unix_timestamp() - (hours as i64) * 3600;
    let rows = client
        .query(
            "SELECT email FROM contact_engagement
             WHERE account_id = toUUID(?) AND event_type = ?
             GROUP BY email HAVING maxMerge(last_at) >= toDateTime(?)",
        )
        .bind(account.to_string())
        .bind(kind.event_type())
        .bind(since.max(0))
        .fetch_all::<EmailRow>()
        .await?;
    Ok(rows.into_iter().map(|r| r.email).collect())
}
