//! `/v1/suppressions` (the account's list, `suppressions` scope) and
//! `/v1/global-suppressions` (operators). Writes go to PostgreSQL and then the Redis copy
//! the send path checks. CSV import is all or nothing: one bad line refuses the file,
//! naming the line.

use crate::{
    body::{JsonBody, QueryParams, RawBody},
    templates::Page,
    validate, AppState,
};
use axum::{
    extract::{Path, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use sendmill_platform::api::ApiError;
use sendmill_store::{
    suppressions::{List, NewSuppression},
    Scope, Suppression, SuppressionReason,
};
use sendmill_tenancy::{auth::Caller, suppressions::SuppressionError};
use serde::{Deserialize, Serialize};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// Most entries in one JSON write.
const MAX_BATCH: usize = 1000;
/// Most lines in one CSV import.
const MAX_IMPORT: usize = 100_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub email: String,
    #[serde(default)]
    pub reason: Option<SuppressionReason>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddEntries {
    pub suppressions: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Written {
    pub written: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub reason: Option<SuppressionReason>,
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub cursor: Option<String>,
}

fn failed(error: SuppressionError) -> ApiError {
    tracing::error!(%error, "suppression write failed");
    ApiError::unavailable("the suppression list")
}

fn account_list(caller: &Caller) -> Result<List, ApiError> {
    caller.require(Scope::Suppressions)?;
    Ok(List::Account(caller.0.account_id))
}

fn global_list(caller: &Caller) -> Result<List, ApiError> {
    caller.require_operator()?;
    Ok(List::Global)
}

fn to_new(entries: Vec<Entry>, field: &str) -> Result<Vec<NewSuppression>, ApiError> {
    if entries.is_empty() || entries.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            field,
            format!("give 1 to {MAX_BATCH} entries"),
        ));
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let email = validate::email(&e.email)
                .map_err(|m| ApiError::invalid(format!("{field}[{i}].email"), m))?;
            Ok(NewSuppression {
                email,
                reason: e.reason.unwrap_or(SuppressionReason::Manual),
                source: Some("api".into()),
                expires_at: e.expires_at,
            })
        })
        .collect()
}

async fn add(state: &AppState, list: List, body: AddEntries) -> Result<Json<Written>, ApiError> {
    let entries = to_new(body.suppressions, "suppressions")?;
    let written = state
        .suppressions
        .upsert(list, &entries)
        .await
        .map_err(failed)?;
    Ok(Json(Written { written }))
}

async fn page(
    state: &AppState,
    list: List,
    query: ListQuery,
) -> Result<Json<Page<Suppression>>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let entries = state
        .store
        .suppression_page(list, query.reason, query.cursor.as_deref(), limit)
        .await
        .map_err(ApiError::from)?;
    let next_cursor = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.email.clone()))
        .flatten();
    Ok(Json(Page {
        data: entries,
        next_cursor,
    }))
}

/// An address from a URL path in the form suppressions are stored in (A-label domain),
/// so either form finds the entry; one that is no address is looked up as given (404).
fn stored_form(email: &str) -> String {
    validate::email(email).unwrap_or_else(|_| email.to_owned())
}

async fn get_one(state: &AppState, list: List, email: &str) -> Result<Json<Suppression>, ApiError> {
    let email = &stored_form(email);
    state
        .store
        .suppression_entry(list, email)
        .await
        .map_err(ApiError::from)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("suppression"))
}

async fn delete_one(state: &AppState, list: List, email: &str) -> Result<StatusCode, ApiError> {
    let email = &stored_form(email);
    if state
        .suppressions
        .delete(list, email)
        .await
        .map_err(failed)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("suppression"))
    }
}

pub async fn add_account(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<AddEntries>,
) -> Result<Json<Written>, ApiError> {
    let list = account_list(&caller)?;
    add(&state, list, body.value).await
}

pub async fn list_account(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Page<Suppression>>, ApiError> {
    let list = account_list(&caller)?;
    page(&state, list, query).await
}

pub async fn get_account(
    State(state): State<AppState>,
    caller: Caller,
    Path(email): Path<String>,
) -> Result<Json<Suppression>, ApiError> {
    let list = account_list(&caller)?;
    get_one(&state, list, &email).await
}

pub async fn delete_account(
    State(state): State<AppState>,
    caller: Caller,
    Path(email): Path<String>,
) -> Result<StatusCode, ApiError> {
    let list = account_list(&caller)?;
    delete_one(&state, list, &email).await
}

pub async fn add_global(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<AddEntries>,
) -> Result<Json<Written>, ApiError> {
    let list = global_list(&caller)?;
    add(&state, list, body.value).await
}

pub async fn list_global(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Page<Suppression>>, ApiError> {
    let list = global_list(&caller)?;
    page(&state, list, query).await
}

pub async fn get_global(
    State(state): State<AppState>,
    caller: Caller,
    Path(email): Path<String>,
) -> Result<Json<Suppression>, ApiError> {
    let list = global_list(&caller)?;
    get_one(&state, list, &email).await
}

pub async fn delete_global(
    State(state): State<AppState>,
    caller: Caller,
    Path(email): Path<String>,
) -> Result<StatusCode, ApiError> {
    let list = global_list(&caller)?;
    delete_one(&state, list, &email).await
}

/// `POST /v1/suppressions/import`: `text/csv` with a header line naming `email` and
/// optionally `reason` and `expires_at` columns.
pub async fn import(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(body): RawBody,
) -> Result<Json<Written>, ApiError> {
    let list = account_list(&caller)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid("body", "the CSV is not UTF-8"))?;
    let entries = parse_csv(text)?;
    let mut written = 0;
    for chunk in entries.chunks(MAX_BATCH) {
        written += state
            .suppressions
            .upsert(list, chunk)
            .await
            .map_err(failed)?;
    }
    Ok(Json(Written { written }))
}

/// Parses an import; the first bad line refuses the whole file.
pub fn parse_csv(text: &str) -> Result<Vec<NewSuppression>, ApiError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .ok_or_else(|| ApiError::invalid("body", "the CSV is empty"))?;
    let columns: Vec<String> = header
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_ascii_lowercase())
        .collect();
    let position = |name: &str| columns.iter().position(|c| c == name);
    let email_at = position("email")
        .ok_or_else(|| ApiError::invalid("line 1", "the header line must name an email column"))?;
    let reason_at = position("reason");
    let expires_at = position("expires_at");
    if let Some(unknown) = columns
        .iter()
        .find(|c| !["email", "reason", "expires_at", "created_at"].contains(&c.as_str()))
    {
        return Err(ApiError::invalid(
            "line 1",
            format!("unknown column {unknown:?}"),
        ));
    }
    let mut entries = Vec::new();
    for (number, line) in lines {
        let field = format!("line {}", number + 1);
        if entries.len() >= MAX_IMPORT {
            return Err(ApiError::invalid(
                field,
                format!("at most {MAX_IMPORT} lines"),
            ));
        }
        let cells: Vec<&str> = line
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        if cells.len() != columns.len() {
            return Err(ApiError::invalid(
                field,
                format!("expected {} cells, found {}", columns.len(), cells.len()),
            ));
        }
        let email =
            validate::email(cells[email_at]).map_err(|m| ApiError::invalid(field.clone(), m))?;
        let reason = match reason_at.map(|i| cells[i]).filter(|r| !r.is_empty()) {
            Some(r) => r
                .parse()
                .map_err(|m: String| ApiError::invalid(field.clone(), m))?,
            None => SuppressionReason::Manual,
        };
        let expires = match expires_at.map(|i| cells[i]).filter(|e| !e.is_empty()) {
            Some(e) => Some(OffsetDateTime::parse(e, &Rfc3339).map_err(|_| {
                ApiError::invalid(field.clone(), "expires_at is not an RFC 3339 time")
            })?),
            None => None,
        };
        entries.push(NewSuppression {
            email,
            reason,
            source: Some("import".into()),
            expires_at: expires,
        });
    }
    Ok(entries)
}

/// `GET /v1/suppressions/export`: the whole list as CSV.
pub async fn export(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let list = account_list(&caller)?;
    let mut csv = String::from("email,reason,created_at,expires_at\n");
    let mut after: Option<String> = None;
    loop {
        let entries = state
            .store
            .suppression_page(list, None, after.as_deref(), 5000)
            .await
            .map_err(ApiError::from)?;
        for e in &entries {
            let created = e.created_at.format(&Rfc3339).unwrap_or_default();
            let expires = e
                .expires_at
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default();
            csv.push_str(&format!("{},{},{created},{expires}\n", e.email, e.reason));
        }
        match entries.last() {
            Some(last) if entries.len() == 5000 => after = Some(last.email.clone()),
            _ => break,
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_imports_read_columns_by_name_and_name_the_bad_line() {
        let parsed = parse_csv(
            "reason,email,expires_at\nbounce,a@ok.test,\n,B@ok.test,2030-01-01T00:00:00Z\n",
        )
        .unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].reason, SuppressionReason::Bounce);
        assert_eq!(parsed[1].reason, SuppressionReason::Manual);
        assert!(parsed[1].expires_at.is_some());
        let error = parse_csv("email\na@ok.test\nnot-an-address\n").unwrap_err();
        assert_eq!(error.field.as_deref(), Some("line 3"));
        let error = parse_csv("email,reason\na@ok.test,spam\n").unwrap_err();
        assert_eq!(error.field.as_deref(), Some("line 2"));
        assert!(parse_csv("mail\na@ok.test\n").is_err());
        assert!(parse_csv("").is_err());
    }
}
