//! `/v1/contacts`: an account's contacts. Create, read, change (attributes merge as in
//! RFC 7396: a `null` removes a key), delete; search by email prefix, attribute, list
//! and status, in pages ordered by address with an opaque cursor. Each contact shows its
//! lists, its engagement from ClickHouse and a signed preferences link. Every query
//! names the caller's account: another account's contact is "not found".

use crate::{engagement, Audiences};
use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use sendmill_platform::{
    api::ApiError,
    body::{JsonBody, QueryParams},
};
use sendmill_store::{Scope, StoreError};
use sendmill_tenancy::auth::Caller;
use sendmill_wire::AccountId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{postgres::PgRow, Row};
use time::OffsetDateTime;
use uuid::Uuid;

/// Most attributes one contact carries.
pub const MAX_ATTRIBUTES: usize = 100;
/// Most bytes of a contact's attributes as JSON.
pub const MAX_ATTRIBUTE_BYTES: usize = 16 * 1024;
/// Longest attribute name.
pub const MAX_ATTRIBUTE_NAME: usize = 64;
/// Longest contact name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
const MAX_PAGE: i64 = 500;

/// A contact's subscription status (to everything the account sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Bounced,
    Complained,
    Unsubscribed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Bounced => "bounced",
            Status::Complained => "complained",
            Status::Unsubscribed => "unsubscribed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Status::Active,
            Status::Bounced,
            Status::Complained,
            Status::Unsubscribed,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Contact {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub attributes: Map<String, Value>,
    pub status: Status,
    #[serde(with = "time::serde::rfc3339::option")]
    pub status_changed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Last delivered, opened and clicked (people only), from the analytics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engagement: Option<engagement::Engagement>,
    /// The contact's lists (one contact's answer only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lists: Option<Vec<Membership>>,
    /// The contact's preferences page (signed; one contact's answer only, when tracking
    /// links are configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferences_url: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Membership {
    pub list_id: Uuid,
    pub list_name: String,
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

pub(crate) const CONTACT_COLUMNS: &str =
    "c.id, c.email, c.name, c.attributes, c.status, c.status_changed_at, c.created_at, c.updated_at";

pub(crate) fn from_row(row: &PgRow) -> Contact {
    let attributes: sqlx::types::Json<Map<String, Value>> = row.get("attributes");
    Contact {
        id: row.get("id"),
        email: row.get("email"),
        name: row.get("name"),
        attributes: attributes.0,
        status: Status::parse(row.get("status")).unwrap_or(Status::Active),
        status_changed_at: row.get("status_changed_at"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        engagement: None,
        lists: None,
        preferences_url: None,
    }
}

/// The address as contacts keep it: [`sendmill_wire::address::email`]'s canonical form
/// (IDNA A-label domain), lower-cased like the suppression lists. Errors: why it is not
/// an address.
pub fn normalise_email(raw: &str) -> Result<String, &'static str> {
    let lower = sendmill_wire::address::email(raw)?.to_lowercase();
    // Lower-casing can lengthen a UTF-8 local part past RFC 5321's limits (and change
    // its normal form): the result is checked again, so a stored address is one.
    sendmill_wire::address::email(&lower)
}

/// Column names of the import and export files that are not attributes.
pub const RESERVED_COLUMNS: [&str; 4] = ["email", "name", "status", "state"];

/// An attribute name: 1-64 of `A-Z a-z 0-9 _ -`, so a segment can name it
/// (`attributes.<name>`), and none of [`RESERVED_COLUMNS`] (any case), so every
/// contact exports to a file that imports again.
pub fn check_attribute_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME {
        return Err("attribute names are 1-64 characters");
    }
    if RESERVED_COLUMNS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        return Err("email, name, status and state are columns, not attribute names");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("attribute names are letters, digits, '_' and '-'");
    }
    Ok(())
}

/// A contact's whole attribute object: at most 100 names, each valid, 16 KiB as JSON.
/// Errors: the field at fault (`attributes.<name>`) and why.
pub fn check_attributes(attributes: &Map<String, Value>) -> Result<(), (String, &'static str)> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(("attributes".into(), "at most 100 attributes"));
    }
    for name in attributes.keys() {
        check_attribute_name(name).map_err(|m| (format!("attributes.{name}"), m))?;
    }
    let size = serde_json::to_vec(attributes).map_or(usize::MAX, |v| v.len());
    if size > MAX_ATTRIBUTE_BYTES {
        return Err(("attributes".into(), "attributes are larger than 16 KiB"));
    }
    Ok(())
}

pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(ApiError::invalid("name", "is longer than 256 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "must not hold control characters",
        ));
    }
    Ok(())
}

pub fn store_error(error: impl Into<StoreError>) -> ApiError {
    let error = error.into();
    tracing::error!(%error, "audience store");
    ApiError::unavailable("the audience store")
}

pub fn db_error(error: sqlx::Error) -> ApiError {
    store_error(StoreError::Database(error))
}

/// A path id that is not a uuid names nothing.
pub fn path_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(what))
}

pub(crate) fn encode_cursor(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(value)
}

pub(crate) fn decode_cursor(raw: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        // Addresses hold no control characters (and PostgreSQL text no NUL).
        .filter(|s| !s.chars().any(char::is_control))
        .ok_or_else(|| ApiError::invalid("cursor", "not a cursor this API gave"))
}

pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid("limit", "must be 1-500")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewContact {
    pub email: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub attributes: Map<String, Value>,
    /// Lists to add the contact to (a double opt-in list sends a confirmation).
    #[serde(default)]
    pub lists: Vec<Uuid>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactChange {
    pub name: Option<String>,
    /// Merged into the attributes (RFC 7396): a `null` removes the attribute.
    pub attributes: Option<Map<String, Value>>,
    /// `unsubscribed` (from everything; an active contact only). `active` is refused
    /// for a contact that is not: only its own confirmed sign-up brings it back.
    pub status: Option<Status>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactQuery {
    /// Only addresses that start with this (lower-cased).
    pub email_prefix: Option<String>,
    /// `name:value`: only contacts whose attribute `name` is `value` (typed as an import
    /// types CSV values: a number, `true`/`false`, else a string).
    pub attribute: Option<String>,
    /// Only members of this list (any membership state).
    pub list_id: Option<Uuid>,
    pub status: Option<Status>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ContactPage {
    pub data: Vec<Contact>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/contacts` (scope `contacts`): 201 with the contact; 409 when the address
/// is already a contact; 404 when a list is not the account's.
pub async fn create(
    State(state): State<Audiences>,
    caller: Caller,
    body: JsonBody<NewContact>,
) -> Result<(StatusCode, Json<Contact>), ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let input = body.value;
    let email = normalise_email(&input.email).map_err(|m| ApiError::invalid("email", m))?;
    check_name(&input.name)?;
    check_attributes(&input.attributes).map_err(|(f, m)| ApiError::invalid(f, m))?;
    let mut tx = state.store.pool().begin().await.map_err(db_error)?;
    let lists = crate::lists::lock_lists(&mut tx, account, &input.lists).await?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query(&format!(
        "INSERT INTO contacts AS c (id, account_id, email, name, attributes, status, status_changed_at)
         VALUES ($1, $2, $3, $4, $5, COALESCE({}, 'active'), NULL)
         ON CONFLICT (account_id, email) DO NOTHING
         RETURNING {CONTACT_COLUMNS}",
        suppressed_status_sql("$2", "$3")
    ))
    .bind(id)
    .bind(account.0)
    .bind(&email)
    .bind(&input.name)
    .bind(sqlx::types::Json(&input.attributes))
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?;
    let Some(row) = inserted else {
        return Err(ApiError::conflict("a contact with this email exists"));
    };
    let contact = from_row(&row);
    let mut confirmations = Vec::new();
    for list in &lists {
        if let Some(pending) = crate::lists::subscribe(
            &mut tx,
            list,
            &contact,
            "api",
            None,
            state.config.confirmation_resend_after,
        )
        .await?
        {
            confirmations.push(pending);
        }
    }
    tx.commit().await.map_err(db_error)?;
    for pending in confirmations {
        crate::confirm::send(&state, &pending).await?;
    }
    let contact = load(&state, account, contact.id).await?;
    Ok((StatusCode::CREATED, Json(contact)))
}

/// SQL for the status a new contact starts with when its address is on the account's
/// suppression list, for good, for a bounce, complaint or unsubscribe (NULL otherwise),
/// so an address the account may not mail never starts `active`. An entry that expires
/// says nothing lasting about the person (as `Store::upsert_suppressions` has it).
pub(crate) fn suppressed_status_sql(account: &str, email: &str) -> String {
    format!(
        "(SELECT CASE s.reason WHEN 'bounce' THEN 'bounced' WHEN 'complaint' THEN 'complained'
                  WHEN 'unsubscribe' THEN 'unsubscribed' END
          FROM suppressions s
          WHERE s.account_id = {account} AND s.email = {email}
            AND s.reason IN ('bounce', 'complaint', 'unsubscribe') AND s.expires_at IS NULL)"
    )
}

/// One contact with its lists, engagement and preferences link.
pub(crate) async fn load(
    state: &Audiences,
    account: AccountId,
    id: Uuid,
) -> Result<Contact, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {CONTACT_COLUMNS} FROM contacts c WHERE c.account_id = $1 AND c.id = $2"
    ))
    .bind(account.0)
    .bind(id)
    .fetch_optional(state.store.pool())
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError::not_found("contact"))?;
    let mut contact = from_row(&row);
    let lists = sqlx::query(
        "SELECT m.list_id, l.name, m.state, m.updated_at FROM list_members m
         JOIN lists l ON l.id = m.list_id AND l.account_id = m.account_id
         WHERE m.account_id = $1 AND m.contact_id = $2 ORDER BY l.name",
    )
    .bind(account.0)
    .bind(id)
    .fetch_all(state.store.pool())
    .await
    .map_err(db_error)?;
    contact.lists = Some(
        lists
            .iter()
            .map(|r| Membership {
                list_id: r.get("list_id"),
                list_name: r.get("name"),
                state: r.get("state"),
                updated_at: r.get("updated_at"),
            })
            .collect(),
    );
    let mut found = engagement::lookup(&state.clickhouse, account, &[contact.email.clone()]).await;
    contact.engagement = Some(found.remove(&contact.email).unwrap_or_default());
    contact.preferences_url = crate::tokens::preferences_url(state, account, contact.id);
    Ok(contact)
}

/// `GET /v1/contacts/{id}` (scope `contacts`).
pub async fn get(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Contact>, ApiError> {
    caller.require(Scope::Contacts)?;
    let id = path_id(&id, "contact")?;
    Ok(Json(load(&state, caller.0.account_id, id).await?))
}

/// `PATCH /v1/contacts/{id}` (scope `contacts`).
pub async fn update(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<ContactChange>,
) -> Result<Json<Contact>, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let id = path_id(&id, "contact")?;
    let change = body.value;
    if let Some(name) = &change.name {
        check_name(name)?;
    }
    if let Some(status) = change.status {
        if !matches!(status, Status::Active | Status::Unsubscribed) {
            return Err(ApiError::invalid(
                "status",
                "only active or unsubscribed can be set; bounced and complained follow the mail",
            ));
        }
    }
    let mut tx = state.store.pool().begin().await.map_err(db_error)?;
    let row = sqlx::query(&format!(
        "SELECT {CONTACT_COLUMNS} FROM contacts c WHERE c.account_id = $1 AND c.id = $2 FOR UPDATE"
    ))
    .bind(account.0)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError::not_found("contact"))?;
    let current = from_row(&row);
    let mut attributes = current.attributes.clone();
    if let Some(patch) = &change.attributes {
        for (name, value) in patch {
            if value.is_null() {
                attributes.remove(name);
            } else {
                attributes.insert(name.clone(), value.clone());
            }
        }
        check_attributes(&attributes).map_err(|(f, m)| ApiError::invalid(f, m))?;
    }
    // The account may unsubscribe an active contact; nothing but the person's own
    // confirmed sign-up (double opt-in) makes one active again.
    let status = match (change.status, current.status) {
        (Some(Status::Active), now) if now != Status::Active => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "contact_not_active",
                format!(
                    "the contact is {}: only their own confirmed sign-up to a double opt-in list makes it active again",
                    now.as_str()
                ),
            ))
        }
        (Some(Status::Unsubscribed), Status::Active) => Status::Unsubscribed,
        _ => current.status,
    };
    sqlx::query(
        "UPDATE contacts SET name = $3, attributes = $4, status = $5,
             status_changed_at = CASE WHEN status <> $5 THEN now() ELSE status_changed_at END,
             updated_at = now()
         WHERE account_id = $1 AND id = $2",
    )
    .bind(account.0)
    .bind(id)
    .bind(change.name.as_deref().unwrap_or(&current.name))
    .bind(sqlx::types::Json(&attributes))
    .bind(status.as_str())
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    if status != current.status {
        unsubscribe_all(&mut tx, account, id, "api", None)
            .await
            .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(Json(load(&state, account, id).await?))
}

/// Sets the contact's memberships (one list's, or all when `list` is `None`) to
/// `unsubscribed`; returns how many changed.
pub(crate) async fn unsubscribe_memberships(
    tx: &mut sqlx::PgConnection,
    account: AccountId,
    contact: Uuid,
    list: Option<Uuid>,
    source: &str,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE list_members SET state = 'unsubscribed', unsubscribed_at = now(),
             updated_at = now(), source = $4
         WHERE account_id = $1 AND contact_id = $2 AND ($3::uuid IS NULL OR list_id = $3)
           AND state <> 'unsubscribed'",
    )
    .bind(account.0)
    .bind(contact)
    .bind(list)
    .bind(source)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}

/// Unsubscribes the contact from everything: status `unsubscribed` (if it was active),
/// every membership `unsubscribed`, and an `unsubscribed_all` event naming `source`.
pub(crate) async fn unsubscribe_all(
    tx: &mut sqlx::PgConnection,
    account: AccountId,
    contact: Uuid,
    source: &str,
    ip: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE contacts SET status = 'unsubscribed', status_changed_at = now(), updated_at = now()
         WHERE account_id = $1 AND id = $2 AND status = 'active'",
    )
    .bind(account.0)
    .bind(contact)
    .execute(&mut *tx)
    .await?;
    unsubscribe_memberships(tx, account, contact, None, source).await?;
    record_event(tx, account, contact, None, "unsubscribed_all", source, ip).await
}

/// Appends to the contact's subscription log.
pub(crate) async fn record_event(
    tx: &mut sqlx::PgConnection,
    account: AccountId,
    contact: Uuid,
    list: Option<Uuid>,
    kind: &str,
    source: &str,
    ip: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO contact_events (account_id, contact_id, list_id, kind, source, ip)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(account.0)
    .bind(contact)
    .bind(list)
    .bind(kind)
    .bind(source)
    .bind(ip)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// `DELETE /v1/contacts/{id}` (scope `contacts`): the contact, its memberships and log.
/// Suppressions stay: deleting a contact never makes an address mailable again.
pub async fn delete(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Contacts)?;
    delete_owned(&state, caller.0.account_id, "contacts", &id, "contact").await
}

/// Deletes the account's row `raw_id` of `table` (one of this crate's table names,
/// never user text): 204, or 404 naming `what` when the account has none.
pub(crate) async fn delete_owned(
    state: &Audiences,
    account: AccountId,
    table: &'static str,
    raw_id: &str,
    what: &str,
) -> Result<StatusCode, ApiError> {
    let id = path_id(raw_id, what)?;
    let done = sqlx::query(&format!(
        "DELETE FROM {table} WHERE account_id = $1 AND id = $2"
    ))
    .bind(account.0)
    .bind(id)
    .execute(state.store.pool())
    .await
    .map_err(db_error)?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found(what));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A unique violation as 409 saying `message`; any other error as [`db_error`].
pub(crate) fn conflict_or(error: sqlx::Error, message: &str) -> ApiError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => ApiError::conflict(message),
        _ => db_error(error),
    }
}

/// `GET /v1/contacts` (scope `contacts`): a page ordered by address.
pub async fn list(
    State(state): State<Audiences>,
    caller: Caller,
    QueryParams(query): QueryParams<ContactQuery>,
) -> Result<Json<ContactPage>, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let limit = page_limit(query.limit)?;
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let prefix = query
        .email_prefix
        .as_deref()
        .map(|p| format!("{}%", like_escape(&p.trim().to_lowercase())));
    let attribute = query
        .attribute
        .as_deref()
        .map(|raw| {
            let (name, value) = raw
                .split_once(':')
                .ok_or_else(|| ApiError::invalid("attribute", "is name:value"))?;
            check_attribute_name(name).map_err(|m| ApiError::invalid("attribute", m))?;
            let mut object = Map::new();
            object.insert(name.to_owned(), crate::rows::typed_value(value));
            Ok::<_, ApiError>(Value::Object(object))
        })
        .transpose()?;
    let rows = sqlx::query(&format!(
        "SELECT {CONTACT_COLUMNS} FROM contacts c
         WHERE c.account_id = $1
           AND ($2::text IS NULL OR c.email > $2)
           AND ($3::text IS NULL OR c.email LIKE $3)
           AND ($4::jsonb IS NULL OR c.attributes @> $4)
           AND ($5::uuid IS NULL OR EXISTS (SELECT 1 FROM list_members m
                 WHERE m.account_id = $1 AND m.list_id = $5 AND m.contact_id = c.id))
           AND ($6::text IS NULL OR c.status = $6)
         ORDER BY c.email LIMIT $7"
    ))
    .bind(account.0)
    .bind(after)
    .bind(prefix)
    .bind(attribute.map(sqlx::types::Json))
    .bind(query.list_id)
    .bind(query.status.map(Status::as_str))
    .bind(limit + 1)
    .fetch_all(state.store.pool())
    .await
    .map_err(db_error)?;
    Ok(Json(page_of(&state, account, rows, limit).await))
}

/// A page of `limit` from `rows` (fetched with one more to know whether more follow),
/// with engagement looked up in one ClickHouse query.
pub(crate) async fn page_of(
    state: &Audiences,
    account: AccountId,
    rows: Vec<PgRow>,
    limit: i64,
) -> ContactPage {
    let more = rows.len() as i64 > limit;
    let mut data: Vec<Contact> = rows.iter().take(limit as usize).map(from_row).collect();
    let emails: Vec<String> = data.iter().map(|c| c.email.clone()).collect();
    let mut found = engagement::lookup(&state.clickhouse, account, &emails).await;
    for contact in &mut data {
        contact.engagement = Some(found.remove(&contact.email).unwrap_or_default());
    }
    let next_cursor = more
        .then(|| data.last().map(|c| encode_cursor(&c.email)))
        .flatten();
    ContactPage { data, next_cursor }
}

/// `value` with LIKE's `%`, `_` and `\` escaped.
pub(crate) fn like_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ContactEvent {
    pub kind: String,
    pub list_id: Option<Uuid>,
    pub source: String,
    pub ip: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ContactEvents {
    pub data: Vec<ContactEvent>,
}

/// `GET /v1/contacts/{id}/events` (scope `contacts`): every subscription change, oldest
/// first.
pub async fn events(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ContactEvents>, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let id = path_id(&id, "contact")?;
    let exists: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM contacts WHERE account_id = $1 AND id = $2")
            .bind(account.0)
            .bind(id)
            .fetch_optional(state.store.pool())
            .await
            .map_err(db_error)?;
    if exists.is_none() {
        return Err(ApiError::not_found("contact"));
    }
    let rows = sqlx::query(
        "SELECT kind, list_id, source, ip, at FROM contact_events
         WHERE account_id = $1 AND contact_id = $2 ORDER BY id LIMIT 1000",
    )
    .bind(account.0)
    .bind(id)
    .fetch_all(state.store.pool())
    .await
    .map_err(db_error)?;
    Ok(Json(ContactEvents {
        data: rows
            .iter()
            .map(|r| ContactEvent {
                kind: r.get("kind"),
                list_id: r.get("list_id"),
                source: r.get("source"),
                ip: r.get("ip"),
                at: r.get("at"),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised_like_suppressions() {
        assert_eq!(
            normalise_email(" Ada@Example.TEST ").unwrap(),
            "ada@example.test"
        );
        assert!(normalise_email("no-at-sign").is_err());
        // 32 × 'İ' is 64 octets; lower-cased ("i̇", 3 octets each) it is too long.
        assert!(normalise_email(&format!("{}@ok.test", "İ".repeat(32))).is_err());
    }

    #[test]
    fn attribute_names_a_segment_can_name() {
        assert!(check_attribute_name("plan_2-b").is_ok());
        for bad in ["", "a.b", "a b", "ü", &"x".repeat(65)] {
            assert!(check_attribute_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn like_metacharacters_are_escaped() {
        assert_eq!(like_escape("a_b%c\\"), "a\\_b\\%c\\\\");
    }
}
