//! `GET /v1/returns`: mail that came back to the account's return-path domains and that
//! the inbound stage could not classify or match to a message (a reply from a person, a
//! bounce in an unknown format, a report naming an unknown message). Kept for
//! `inbound.unclassified_retention`, never dropped silently; `GET /v1/returns/{id}/raw`
//! gives the message as received (`message/rfc822`). Scope `stats`; only the account's
//! own returns.

use crate::AppState;
use axum::{
    extract::{Path, State},
    http::header,
    response::{IntoResponse, Response},
    Json,
};
use sendmill_platform::{api::ApiError, body::QueryParams};
use sendmill_store::{returns::KeptReturn, Scope};
use sendmill_tenancy::auth::Caller;
use serde::{Deserialize, Serialize};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnsQuery {
    /// At most this many (1-500, default 50).
    pub limit: Option<i64>,
    /// Only returns received before this RFC 3339 instant (the `received_at` of the last
    /// one of the previous page).
    pub before: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Returns {
    pub data: Vec<KeptReturn>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<QueryParams<ReturnsQuery>, ApiError>,
) -> Result<Json<Returns>, ApiError> {
    caller.require(Scope::Stats)?;
    let QueryParams(query) = query?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 500"));
    }
    let before = query
        .before
        .as_deref()
        .map(|b| OffsetDateTime::parse(b, &Rfc3339))
        .transpose()
        .map_err(|_| ApiError::invalid("before", "not an RFC 3339 instant"))?;
    let data = state
        .store
        .kept_returns(caller.0.account_id, before, limit)
        .await?;
    Ok(Json(Returns { data }))
}

pub async fn raw(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Stats)?;
    let id: uuid::Uuid = id
        .parse()
        .map_err(|_| ApiError::invalid("id", "not a return id"))?;
    let raw = state
        .store
        .kept_return_raw(caller.0.account_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("return"))?;
    Ok(([(header::CONTENT_TYPE, "message/rfc822")], raw).into_response())
}
