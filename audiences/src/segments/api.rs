//! `/v1/segments`: saved expressions (checked when saved: a parse error or a list that
//! does not exist answers 400 with the `position`), their count, a page of the contacts
//! they match now, and `POST /v1/segments/check` for an editor's live count.

use super::{
    compile::{compile, resolve, Compiled},
    parse, ExprError,
};
use crate::{
    contacts::{self, db_error, page_limit, path_id, ContactPage},
    Audiences,
};
use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use sendmill_platform::{
    api::ApiError,
    body::{JsonBody, QueryParams},
};
use sendmill_store::Scope;
use sendmill_tenancy::auth::Caller;
use sendmill_wire::AccountId;
use serde::{Deserialize, Serialize};
use sqlx::{postgres::PgRow, Row};
use time::OffsetDateTime;
use uuid::Uuid;

/// A refused expression: 400 naming `field`, with the position.
pub fn expression_error(field: &str, e: ExprError) -> ApiError {
    ApiError {
        field: Some(field.into()),
        position: Some(e.position),
        ..ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_expression",
            format!("at position {}: {}", e.position, e.message),
        )
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Segment {
    pub id: Uuid,
    pub name: String,
    pub expression: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

fn from_row(r: &PgRow) -> Segment {
    Segment {
        id: r.get("id"),
        name: r.get("name"),
        expression: r.get("expression"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSegment {
    pub name: String,
    pub expression: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentChange {
    pub name: Option<String>,
    pub expression: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expression {
    pub expression: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Count {
    pub count: i64,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "1-100 characters, no control characters",
        ));
    }
    Ok(())
}

/// The expression compiled for `account` now. Errors: 400 with the position for a bad
/// expression or a missing list; 503 when a store does not answer.
pub async fn compiled(
    state: &Audiences,
    account: AccountId,
    source: &str,
) -> Result<Compiled, ApiError> {
    let expr = parse(source).map_err(|e| expression_error("expression", e))?;
    let resolved = resolve(state, account, source, &expr).await?;
    Ok(compile(&expr, &resolved))
}

async fn count_of(state: &Audiences, account: AccountId, c: &Compiled) -> Result<i64, ApiError> {
    let sql = format!(
        "SELECT count(*) FROM contacts c WHERE c.account_id = $1 AND {}",
        c.clause
    );
    c.bind(account, sqlx::query(&sql))
        .fetch_one(state.store.pool())
        .await
        .map(|r| r.get::<i64, _>(0))
        .map_err(db_error)
}

fn conflict_or(error: sqlx::Error) -> ApiError {
    contacts::conflict_or(error, "a segment with this name exists")
}

/// `POST /v1/segments` (scope `contacts`): 201 with the segment.
pub async fn create(
    State(state): State<Audiences>,
    caller: Caller,
    body: JsonBody<NewSegment>,
) -> Result<(StatusCode, Json<Segment>), ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let input = body.value;
    check_name(&input.name)?;
    compiled(&state, account, &input.expression).await?;
    let row = sqlx::query(
        "INSERT INTO segments (id, account_id, name, expression) VALUES ($1, $2, $3, $4)
         RETURNING id, name, expression, created_at, updated_at",
    )
    .bind(Uuid::now_v7())
    .bind(account.0)
    .bind(input.name.trim())
    .bind(&input.expression)
    .fetch_one(state.store.pool())
    .await
    .map_err(conflict_or)?;
    Ok((StatusCode::CREATED, Json(from_row(&row))))
}

pub(crate) async fn load(
    state: &Audiences,
    account: AccountId,
    id: Uuid,
) -> Result<Segment, ApiError> {
    let row = sqlx::query(
        "SELECT id, name, expression, created_at, updated_at FROM segments
         WHERE account_id = $1 AND id = $2",
    )
    .bind(account.0)
    .bind(id)
    .fetch_optional(state.store.pool())
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError::not_found("segment"))?;
    Ok(from_row(&row))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Segments {
    pub data: Vec<Segment>,
}

/// `GET /v1/segments` (scope `contacts`).
pub async fn list(
    State(state): State<Audiences>,
    caller: Caller,
) -> Result<Json<Segments>, ApiError> {
    caller.require(Scope::Contacts)?;
    let rows = sqlx::query(
        "SELECT id, name, expression, created_at, updated_at FROM segments
         WHERE account_id = $1 ORDER BY name LIMIT 1000",
    )
    .bind(caller.0.account_id.0)
    .fetch_all(state.store.pool())
    .await
    .map_err(db_error)?;
    Ok(Json(Segments {
        data: rows.iter().map(from_row).collect(),
    }))
}

/// `GET /v1/segments/{id}` (scope `contacts`).
pub async fn get(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Segment>, ApiError> {
    caller.require(Scope::Contacts)?;
    let id = path_id(&id, "segment")?;
    Ok(Json(load(&state, caller.0.account_id, id).await?))
}

/// `PATCH /v1/segments/{id}` (scope `contacts`).
pub async fn update(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<SegmentChange>,
) -> Result<Json<Segment>, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let id = path_id(&id, "segment")?;
    let current = load(&state, account, id).await?;
    let change = body.value;
    let name = change.name.unwrap_or(current.name);
    let expression = change.expression.unwrap_or(current.expression);
    check_name(&name)?;
    compiled(&state, account, &expression).await?;
    let row = sqlx::query(
        "UPDATE segments SET name = $3, expression = $4, updated_at = now()
         WHERE account_id = $1 AND id = $2
         RETURNING id, name, expression, created_at, updated_at",
    )
    .bind(account.0)
    .bind(id)
    .bind(name.trim())
    .bind(&expression)
    .fetch_optional(state.store.pool())
    .await
    .map_err(conflict_or)?
    .ok_or_else(|| ApiError::not_found("segment"))?;
    Ok(Json(from_row(&row)))
}

/// `DELETE /v1/segments/{id}` (scope `contacts`).
pub async fn delete(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Contacts)?;
    contacts::delete_owned(&state, caller.0.account_id, "segments", &id, "segment").await
}

/// `GET /v1/segments/{id}/count` (scope `contacts`): how many contacts match now.
pub async fn count(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Count>, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let segment = load(&state, account, path_id(&id, "segment")?).await?;
    let c = compiled(&state, account, &segment.expression).await?;
    Ok(Json(Count {
        count: count_of(&state, account, &c).await?,
    }))
}

/// `POST /v1/segments/check` (scope `contacts`): an unsaved expression's count, or its
/// error with the position.
pub async fn check(
    State(state): State<Audiences>,
    caller: Caller,
    body: JsonBody<Expression>,
) -> Result<Json<Count>, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let c = compiled(&state, account, &body.value.expression).await?;
    Ok(Json(Count {
        count: count_of(&state, account, &c).await?,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// `GET /v1/segments/{id}/contacts` (scope `contacts`): a page of the matching contacts,
/// ordered by address.
pub async fn preview(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<PreviewQuery>,
) -> Result<Json<ContactPage>, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let segment = load(&state, account, path_id(&id, "segment")?).await?;
    let limit = page_limit(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(contacts::decode_cursor)
        .transpose()?;
    let c = compiled(&state, account, &segment.expression).await?;
    let (after_p, limit_p) = (c.next_placeholder(), c.next_placeholder() + 1);
    let sql = format!(
        "SELECT {} FROM contacts c WHERE c.account_id = $1 AND {}
           AND (${after_p}::text IS NULL OR c.email > ${after_p})
         ORDER BY c.email LIMIT ${limit_p}",
        contacts::CONTACT_COLUMNS,
        c.clause
    );
    let rows = c
        .bind(account, sqlx::query(&sql))
        .bind(after)
        .bind(limit + 1)
        .fetch_all(state.store.pool())
        .await
        .map_err(db_error)?;
    Ok(Json(contacts::page_of(&state, account, rows, limit).await))
}
