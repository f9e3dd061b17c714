//! `GET /v1/messages`: the account's messages, newest first, each with its status (its
//! terminal event once it has one, else its latest), filtered by tag, status,
//! recipient, campaign and time, and paginated with an opaque cursor. Always scoped to
//! the caller's account; the time window keeps the scan to a few day partitions.

use crate::AppState;
use axum::{extract::State, Json};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use clickhouse::Row;
use sendmill_platform::{api::ApiError, body::QueryParams};
use sendmill_store::Scope;
use sendmill_tenancy::auth::Caller;
use sendmill_wire::EventType;
use serde::{Deserialize, Serialize};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// How far back a listing looks when `since` is not given.
const DEFAULT_WINDOW: time::Duration = time::Duration::days(7);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub tag: Option<String>,
    pub status: Option<String>,
    pub to: Option<String>,
    pub campaign_id: Option<String>,
    /// RFC 3339; default: 7 days ago.
    pub since: Option<String>,
    /// RFC 3339; default: now.
    pub until: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Row, Deserialize)]
struct SummaryRow {
    #[serde(with = "clickhouse::serde::uuid")]
    message_id: uuid::Uuid,
    to_address: String,
    status: String,
    first_ms: u64,
    last_ms: u64,
    message_tags: Vec<String>,
    campaign: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MessageSummary {
    pub message_id: uuid::Uuid,
    pub to: String,
    pub status: String,
    /// Milliseconds since the Unix epoch of the first and latest events.
    pub first_event_ms: u64,
    pub last_event_ms: u64,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub campaign_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MessagePage {
    pub data: Vec<MessageSummary>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_cursor: Option<String>,
}

/// An optional RFC 3339 query parameter, or a 400 naming it.
pub(crate) fn time_param(
    name: &str,
    value: Option<&str>,
) -> Result<Option<OffsetDateTime>, ApiError> {
    value
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339)
                .map_err(|_| ApiError::invalid(name, "must be an RFC 3339 time"))
        })
        .transpose()
}

/// `first_ms:message_id`, base64url: where the previous page ended.
fn decode_cursor(cursor: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::invalid("cursor", "not a cursor from a previous page");
    let text = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(text).map_err(|_| bad())?;
    let (ms, id) = text.split_once(':').ok_or_else(bad)?;
    let id: uuid::Uuid = id.parse().map_err(|_| bad())?;
    Ok((ms.parse().map_err(|_| bad())?, id.to_string()))
}

fn encode_cursor(ms: u64, id: uuid::Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{ms}:{id}"))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<QueryParams<ListQuery>, ApiError>,
) -> Result<Json<MessagePage>, ApiError> {
    caller.require(Scope::Stats)?;
    let QueryParams(query) = query?;
    let now = OffsetDateTime::now_utc();
    let since = time_param("since", query.since.as_deref())?.unwrap_or(now - DEFAULT_WINDOW);
    let until = time_param("until", query.until.as_deref())?.unwrap_or(now);
    if let Some(status) = &query.status {
        if !EventType::ALL.iter().any(|t| t.as_str() == status) {
            return Err(ApiError::invalid("status", "not an event type"));
        }
    }
    let cursor = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let limit = query.limit.unwrap_or(50).clamp(1, 500);

    let terminal: Vec<String> = EventType::ALL
        .iter()
        .filter(|t| t.is_terminal())
        .map(|t| format!("'{}'", t.as_str()))
        .collect();
    let mut inner = String::from(
        "account_id = toUUID(?) AND occurred_at >= toDateTime(?) AND occurred_at <= toDateTime(?)",
    );
    if query.to.is_some() {
        inner.push_str(" AND recipient = ?");
    }
    if query.tag.is_some() {
        inner.push_str(" AND has(tags, ?)");
    }
    if query.campaign_id.is_some() {
        inner.push_str(" AND campaign_id = ?");
    }
    let mut outer = vec!["1 = 1".to_owned()];
    if query.status.is_some() {
        outer.push("status = ?".into());
    }
    if cursor.is_some() {
        outer.push("(first_ms < ? OR (first_ms = ? AND toString(message_id) < ?))".into());
    }
    // A terminal event outranks any later one (an open after delivery keeps it delivered).
    // Aliases differ from column names: ClickHouse 18.16 would otherwise substitute the
    // aggregates into the inner WHERE.
    let sql = format!(
        "SELECT message_id, to_address, status, first_ms, last_ms, message_tags, campaign FROM (
             SELECT message_id, any(recipient) AS to_address,
                    argMax(event_type, if(event_type IN ({terminal}), 10000000000000, 0) + occurred_at_ms) AS status,
                    min(occurred_at_ms) AS first_ms, max(occurred_at_ms) AS last_ms,
                    any(tags) AS message_tags, any(campaign_id) AS campaign
             FROM events FINAL WHERE {inner} GROUP BY message_id)
         WHERE {outer}
         ORDER BY first_ms DESC, toString(message_id) DESC LIMIT {limit}",
        terminal = terminal.join(","),
        outer = outer.join(" AND "),
    );
    let mut q = state
        .clickhouse
        .query(&sql)
        .bind(caller.0.account_id.to_string())
        .bind(since.unix_timestamp().max(0))
        .bind(until.unix_timestamp().max(0));
    // Recipients are stored in their canonical form (A-label domain): `to` is found in
    // whichever form it is written.
    let to = query
        .to
        .as_deref()
        .map(|to| sendmill_wire::address::email(to).unwrap_or_else(|_| to.to_owned()));
    for value in [&to, &query.tag, &query.campaign_id].into_iter().flatten() {
        q = q.bind(value.as_str());
    }
    if let Some(status) = &query.status {
        q = q.bind(status.as_str());
    }
    if let Some((ms, id)) = &cursor {
        q = q.bind(*ms).bind(*ms).bind(id.as_str());
    }
    let rows: Vec<SummaryRow> = q.fetch_all().await.map_err(|error| {
        tracing::error!(%error, "message listing failed");
        ApiError::unavailable("the event store")
    })?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| encode_cursor(r.first_ms, r.message_id)))
        .flatten();
    Ok(Json(MessagePage {
        data: rows
            .into_iter()
            .map(|r| MessageSummary {
                message_id: r.message_id,
                to: r.to_address,
                status: r.status,
                first_event_ms: r.first_ms,
                last_event_ms: r.last_ms,
                tags: r.message_tags,
                campaign_id: r.campaign,
            })
            .collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            decode_cursor(&encode_cursor(42, id)).unwrap(),
            (42, id.to_string())
        );
        assert!(decode_cursor("nope!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("1:not-a-uuid")).is_err());
    }
}
