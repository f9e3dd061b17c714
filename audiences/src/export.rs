//! `GET /v1/lists/{id}/export` and `GET /v1/segments/{id}/export`: the contacts as CSV,
//! streamed a page of 500 rows at a time (never the whole audience in memory, and no
//! database connection held while a slow client reads), in the
//! import's own shape (`email`, `name`, one column per attribute, then `status` and, for
//! a list, the membership `state`), so an export can be imported again. The attribute
//! columns are found first with one pass over the attribute names.

use crate::{
    contacts::{db_error, path_id},
    segments::{api::compiled, compile::Compiled},
    Audiences,
};
use axum::{
    body::Body,
    extract::{Path, State},
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};
use sendmill_platform::api::ApiError;
use sendmill_store::Scope;
use sendmill_tenancy::auth::Caller;
use sendmill_wire::AccountId;
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

/// Rows per chunk of the response body.
const ROWS_PER_CHUNK: usize = 500;

enum Source {
    List(Uuid),
    Segment(Compiled),
}

/// `GET /v1/lists/{id}/export` (scope `contacts`): every member with its state.
pub async fn list(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let id = path_id(&id, "list")?;
    let list = crate::lists::load(&state, account, id).await?;
    stream(
        state,
        account,
        Source::List(id),
        &format!("list-{}", list.id),
    )
    .await
}

/// `GET /v1/segments/{id}/export` (scope `contacts`): every contact it matches now.
pub async fn segment(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let segment = crate::segments::api::load(&state, account, path_id(&id, "segment")?).await?;
    let c = compiled(&state, account, &segment.expression).await?;
    stream(
        state,
        account,
        Source::Segment(c),
        &format!("segment-{}", segment.id),
    )
    .await
}

fn condition(source: &Source) -> String {
    match source {
        // $2 is the list.
        Source::List(_) => "EXISTS (SELECT 1 FROM list_members m WHERE m.list_id = $2
             AND m.contact_id = c.id)"
            .into(),
        Source::Segment(c) => c.clause.clone(),
    }
}

fn bind<'q>(
    source: &'q Source,
    account: AccountId,
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    match source {
        Source::List(id) => query.bind(account.0).bind(*id),
        Source::Segment(c) => c.bind(account, query),
    }
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

async fn stream(
    state: Audiences,
    account: AccountId,
    source: Source,
    name: &str,
) -> Result<Response, ApiError> {
    let names_sql = format!(
        "SELECT DISTINCT k FROM contacts c, jsonb_object_keys(c.attributes) AS k
         WHERE c.account_id = $1 AND {} ORDER BY k",
        condition(&source)
    );
    let attributes: Vec<String> = bind(&source, account, sqlx::query(&names_sql))
        .fetch_all(state.store.pool())
        .await
        .map_err(db_error)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let is_list = matches!(source, Source::List(_));
    let mut header = vec!["email".to_owned(), "name".to_owned()];
    header.extend(attributes.iter().cloned());
    header.push("status".into());
    if is_list {
        header.push("state".into());
    }
    // Keyset pages: each page is its own short query, so a slow reader holds no
    // database connection between them.
    let after_p = match &source {
        Source::List(_) => 3,
        Source::Segment(c) => c.next_placeholder(),
    };
    let rows_sql = format!(
        "SELECT c.email, c.name, c.attributes, c.status{} FROM contacts c
         WHERE c.account_id = $1 AND {} AND (${after_p}::text IS NULL OR c.email > ${after_p})
         ORDER BY c.email LIMIT {ROWS_PER_CHUNK}",
        if is_list {
            ", (SELECT m.state FROM list_members m WHERE m.list_id = $2 AND m.contact_id = c.id) AS state"
        } else {
            ""
        },
        condition(&source)
    );
    let pool = state.store.pool().clone();
    let body = async_stream(pool, source, account, rows_sql, header, attributes, is_list);
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.csv\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// The CSV body: the header, then a page of rows at a time. A database error midway
/// ends the body early (the client sees a cut-off download).
fn async_stream(
    pool: sqlx::PgPool,
    source: Source,
    account: AccountId,
    sql: String,
    header: Vec<String>,
    attributes: Vec<String>,
    is_list: bool,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::spawn(async move {
        if tx
            .send(Ok(csv_bytes(std::iter::once(header))))
            .await
            .is_err()
        {
            return;
        }
        let mut after: Option<String> = None;
        loop {
            let page = bind(&source, account, sqlx::query(&sql))
                .bind(&after)
                .fetch_all(&pool)
                .await;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(%error, "export page");
                    let _ = tx
                        .send(Err(std::io::Error::other("export interrupted")))
                        .await;
                    return;
                }
            };
            let Some(last) = page.last() else { return };
            after = Some(last.get("email"));
            let records = page.iter().map(|r| {
                let attrs: sqlx::types::Json<serde_json::Map<String, Value>> = r.get("attributes");
                let mut record = vec![r.get::<String, _>("email"), r.get::<String, _>("name")];
                record.extend(attributes.iter().map(|a| cell(attrs.0.get(a))));
                record.push(r.get::<String, _>("status"));
                if is_list {
                    record.push(r.get::<Option<String>, _>("state").unwrap_or_default());
                }
                record
            });
            if tx.send(Ok(csv_bytes(records))).await.is_err() {
                return;
            }
            if page.len() < ROWS_PER_CHUNK {
                return;
            }
        }
    });
    tokio_stream(rx)
}

/// `records` as CSV (RFC 4180 quoting, by the csv crate).
fn csv_bytes(records: impl Iterator<Item = Vec<String>>) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for record in records {
        // Writing into a Vec cannot fail.
        let _ = writer.write_record(&record);
    }
    writer.into_inner().unwrap_or_default()
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
