//! `POST /v1/lists/{id}/imports`: a CSV (`text/csv`) or NDJSON
//! (`application/x-ndjson`) body becomes an import job. The body is streamed into
//! PostgreSQL in 1 MiB chunks (never held whole; any process's [`crate::worker`] can
//! run the job, and a worker that dies mid-import leaves the file for the next), the CSV
//! header is checked as it arrives (a bad header refuses the file with 400 and nothing
//! is kept), and the answer is 202 with the job, before a row is imported.
//! `GET /v1/imports/{id}` shows its progress (`rows_read`, `created`, `updated`,
//! `skipped` and each skipped line's reason) while it runs.
//!
//! Upsert rules: an existing contact's attributes are merged (a cell left empty keeps
//! the value), its name replaced when the file gives one; a contact becomes a
//! `subscribed` member unless it already has a membership (an `unsubscribed` one stays)
//! or its status is not `active` (bounced, complained, unsubscribed, or suppressed for
//! one of those). The file vouches for consent, as an import does at SendGrid and
//! Mailchimp: double opt-in lists take imported members as `subscribed` without a
//! confirmation message each.

use crate::{
    contacts::{db_error, path_id},
    rows::{CsvRows, HeaderError},
    Audiences,
};
use axum::{
    body::Body,
    extract::{Path, State},
    http::{header, HeaderMap, StatusCode},
    Json,
};
use futures::StreamExt;
use sendmill_platform::{api::ApiError, body::QueryParams};
use sendmill_store::Scope;
use sendmill_tenancy::auth::Caller;
use sendmill_wire::AccountId;
use serde::{Deserialize, Serialize};
use sqlx::{postgres::PgRow, Row};
use time::OffsetDateTime;
use uuid::Uuid;

/// Bytes of the upload per stored chunk.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Skipped lines shown in one job's answer.
const SHOWN_ERRORS: i64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SkippedLine {
    pub line: i64,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ImportJob {
    pub id: Uuid,
    pub list_id: Uuid,
    pub format: Format,
    /// `queued`, `running`, `completed` or `failed`.
    pub state: String,
    pub upload_bytes: i64,
    /// Records read so far (the header not counted).
    pub rows_read: i64,
    pub created: i64,
    pub updated: i64,
    pub skipped: i64,
    /// The first skipped lines with why (one job's answer only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_lines: Option<Vec<SkippedLine>>,
    /// Why a failed job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

const JOB_COLUMNS: &str = "id, list_id, format, state, upload_bytes, rows_read, created, updated,
    skipped, error, created_at, updated_at, finished_at";

fn from_row(r: &PgRow) -> ImportJob {
    ImportJob {
        id: r.get("id"),
        list_id: r.get("list_id"),
        format: if r.get::<&str, _>("format") == "ndjson" {
            Format::Ndjson
        } else {
            Format::Csv
        },
        state: r.get("state"),
        upload_bytes: r.get("upload_bytes"),
        rows_read: r.get("rows_read"),
        created: r.get("created"),
        updated: r.get("updated"),
        skipped: r.get("skipped"),
        skipped_lines: None,
        error: r.get("error"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        finished_at: r.get("finished_at"),
    }
}

fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "text/csv" => Ok(Format::Csv),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Format::Ndjson),
        _ => Err(ApiError {
            field: Some("Content-Type".into()),
            ..ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send text/csv or application/x-ndjson",
            )
        }),
    }
}

/// The upload in progress: its job row exists (`receiving`) and is removed again
/// (chunks with it) unless [`Upload::finish`] ran.
struct Upload<'a> {
    state: &'a Audiences,
    job: Uuid,
    seq: i32,
    bytes: i64,
    done: bool,
}

impl Upload<'_> {
    async fn store(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        sqlx::query("INSERT INTO import_chunks (job_id, seq, data) VALUES ($1, $2, $3)")
            .bind(self.job)
            .bind(self.seq)
            .bind(chunk)
            .execute(self.state.store.pool())
            .await
            .map_err(db_error)?;
        self.seq += 1;
        self.bytes += chunk.len() as i64;
        Ok(())
    }

    async fn finish(mut self) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE import_jobs SET state = 'queued', chunks = $2, upload_bytes = $3, updated_at = now()
             WHERE id = $1",
        )
        .bind(self.job)
        .bind(self.seq)
        .bind(self.bytes)
        .execute(self.state.store.pool())
        .await
        .map_err(db_error)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Refused or cut off: nothing of it stays (a crash in between leaves a
        // `receiving` job, which the worker removes after a day).
        let (pool, job) = (self.state.store.pool().clone(), self.job);
        tokio::spawn(async move {
            if let Err(error) = sqlx::query("DELETE FROM import_jobs WHERE id = $1")
                .bind(job)
                .execute(&pool)
                .await
            {
                tracing::warn!(%error, %job, "could not remove an abandoned import upload");
            }
        });
    }
}

fn header_refused(error: HeaderError) -> ApiError {
    ApiError::invalid("file", format!("the file is refused: {error}"))
}

/// `POST /v1/lists/{id}/imports` (scope `contacts`): 202 with the queued job. Errors:
/// 404 (list), 415 (not CSV or NDJSON), 400 (`file`: empty, or a bad CSV header), 413
/// (over `max_import_bytes`).
pub async fn upload(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ImportJob>), ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let list = path_id(&id, "list")?;
    crate::lists::load(&state, account, list).await?;
    let format = format_of(&headers)?;
    let job = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO import_jobs (id, account_id, list_id, format) VALUES ($1, $2, $3, $4)",
    )
    .bind(job)
    .bind(account.0)
    .bind(list)
    .bind(format.as_str())
    .execute(state.store.pool())
    .await
    .map_err(db_error)?;
    let mut upload = Upload {
        state: &state,
        job,
        seq: 0,
        bytes: 0,
        done: false,
    };
    let limit = state.config.max_import_bytes;
    // The header is checked as it arrives; rows are the worker's.
    let mut header_check =
        (format == Format::Csv).then(|| CsvRows::new(state.config.max_row_bytes));
    let mut pending = Vec::with_capacity(CHUNK_BYTES);
    let mut total = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(data) = stream.next().await {
        let data = data.map_err(|_| ApiError::invalid("file", "the upload was cut off"))?;
        total += data.len();
        if total > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the file is larger than {limit} bytes"),
            ));
        }
        if let Some(check) = &mut header_check {
            check.feed(&data, &mut |_| {}).map_err(header_refused)?;
            if check.has_header() {
                header_check = None;
            }
        }
        let mut rest = &data[..];
        while !rest.is_empty() {
            let take = rest.len().min(CHUNK_BYTES - pending.len());
            pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if pending.len() == CHUNK_BYTES {
                upload.store(&pending).await?;
                pending.clear();
            }
        }
    }
    if let Some(mut check) = header_check {
        check.finish(&mut |_| {}).map_err(header_refused)?;
    }
    if total == 0 {
        return Err(header_refused(HeaderError::Empty));
    }
    if !pending.is_empty() {
        upload.store(&pending).await?;
    }
    upload.finish().await?;
    state.wake_imports.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(load(&state, account, job, false).await?),
    ))
}

async fn load(
    state: &Audiences,
    account: AccountId,
    id: Uuid,
    with_lines: bool,
) -> Result<ImportJob, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM import_jobs WHERE account_id = $1 AND id = $2 AND state <> 'receiving'"
    ))
    .bind(account.0)
    .bind(id)
    .fetch_optional(state.store.pool())
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError::not_found("import"))?;
    let mut job = from_row(&row);
    if with_lines {
        let lines = sqlx::query(
            "SELECT line, reason FROM import_errors WHERE job_id = $1 ORDER BY line LIMIT $2",
        )
        .bind(id)
        .bind(SHOWN_ERRORS)
        .fetch_all(state.store.pool())
        .await
        .map_err(db_error)?;
        job.skipped_lines = Some(
            lines
                .iter()
                .map(|r| SkippedLine {
                    line: r.get("line"),
                    reason: r.get("reason"),
                })
                .collect(),
        );
    }
    Ok(job)
}

/// `GET /v1/imports/{id}` (scope `contacts`): the job's progress and its first 100
/// skipped lines.
pub async fn get(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ImportJob>, ApiError> {
    caller.require(Scope::Contacts)?;
    let id = path_id(&id, "import")?;
    Ok(Json(load(&state, caller.0.account_id, id, true).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    pub list_id: Option<Uuid>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ImportJobs {
    pub data: Vec<ImportJob>,
}

/// `GET /v1/imports` (scope `contacts`): the latest 100 jobs, newest first.
pub async fn list(
    State(state): State<Audiences>,
    caller: Caller,
    QueryParams(query): QueryParams<ImportQuery>,
) -> Result<Json<ImportJobs>, ApiError> {
    caller.require(Scope::Contacts)?;
    let rows = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM import_jobs
         WHERE account_id = $1 AND state <> 'receiving' AND ($2::uuid IS NULL OR list_id = $2)
         ORDER BY created_at DESC LIMIT 100"
    ))
    .bind(caller.0.account_id.0)
    .bind(query.list_id)
    .fetch_all(state.store.pool())
    .await
    .map_err(db_error)?;
    Ok(Json(ImportJobs {
        data: rows.iter().map(from_row).collect(),
    }))
}
