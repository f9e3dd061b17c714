//! `/v1/lists`: an account's lists (name, description, `single` or `double` opt-in,
//! tags, the double opt-in confirmation's sender and subject) with their membership
//! counts, and memberships: adding a contact subscribes it at once (`single`) or sends a
//! confirmation and leaves it `unconfirmed` until the link is followed (`double`).
//! Nothing here subscribes a contact that bounced, complained or unsubscribed from
//! everything, or re-subscribes one that left the list: only the person can, from the
//! subscribe form.

use crate::{
    contacts::{self, db_error, page_limit, path_id, Contact, Status},
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

const MAX_LIST_NAME: usize = 100;
const MAX_DESCRIPTION: usize = 1_000;
const MAX_TAGS: usize = 20;
const MAX_URL: usize = 2_048;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptIn {
    Single,
    Double,
}

impl OptIn {
    fn as_str(self) -> &'static str {
        match self {
            OptIn::Single => "single",
            OptIn::Double => "double",
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    pub subscribed: i64,
    pub unconfirmed: i64,
    pub unsubscribed: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct List {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub opt_in: OptIn,
    pub tags: Vec<String>,
    /// Double opt-in: the confirmation message's sender (on one of the account's
    /// verified sending domains).
    pub confirm_from: Option<String>,
    /// Double opt-in: the confirmation message's subject (a Handlebars template with
    /// `list_name` and `name`).
    pub confirm_subject: Option<String>,
    /// Where a confirmed subscriber is sent (else a Sendmill page says it worked).
    pub confirmed_url: Option<String>,
    /// Whether the public subscribe form takes sign-ups.
    pub public_subscribe: bool,
    /// The public subscribe form (`GET` shows it, `POST` signs up), when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe_url: Option<String>,
    pub counts: Counts,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// What subscribing needs to know about a list (locked in the transaction).
#[derive(Clone, Debug)]
pub struct ListRef {
    pub account: AccountId,
    pub id: Uuid,
    pub name: String,
    pub opt_in: OptIn,
    pub confirm_from: Option<String>,
    pub confirm_subject: Option<String>,
}

const LIST_COLUMNS: &str = "l.id, l.name, l.description, l.opt_in, l.tags, l.confirm_from,
    l.confirm_subject, l.confirmed_url, l.public_subscribe, l.created_at, l.updated_at,
    (SELECT count(*) FROM list_members m WHERE m.list_id = l.id AND m.state = 'subscribed') AS subscribed,
    (SELECT count(*) FROM list_members m WHERE m.list_id = l.id AND m.state = 'unconfirmed') AS unconfirmed,
    (SELECT count(*) FROM list_members m WHERE m.list_id = l.id AND m.state = 'unsubscribed') AS unsubscribed";

fn from_row(state: &Audiences, r: &PgRow) -> List {
    let id: Uuid = r.get("id");
    let public_subscribe: bool = r.get("public_subscribe");
    List {
        id,
        name: r.get("name"),
        description: r.get("description"),
        opt_in: if r.get::<&str, _>("opt_in") == "double" {
            OptIn::Double
        } else {
            OptIn::Single
        },
        tags: r.get("tags"),
        confirm_from: r.get("confirm_from"),
        confirm_subject: r.get("confirm_subject"),
        confirmed_url: r.get("confirmed_url"),
        public_subscribe,
        subscribe_url: public_subscribe
            .then(|| format!("{}/subscribe/{id}", state.public_base_url)),
        counts: Counts {
            subscribed: r.get("subscribed"),
            unconfirmed: r.get("unconfirmed"),
            unsubscribed: r.get("unsubscribed"),
        },
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewList {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub opt_in: OptIn,
    #[serde(default)]
    pub tags: Vec<String>,
    pub confirm_from: Option<String>,
    pub confirm_subject: Option<String>,
    pub confirmed_url: Option<String>,
    #[serde(default)]
    pub public_subscribe: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListChange {
    pub name: Option<String>,
    pub description: Option<String>,
    pub opt_in: Option<OptIn>,
    pub tags: Option<Vec<String>>,
    pub confirm_from: Option<String>,
    pub confirm_subject: Option<String>,
    pub confirmed_url: Option<String>,
    pub public_subscribe: Option<bool>,
}

/// Checks a list's fields as they will be stored; the sender must be on one of the
/// account's verified sending domains.
async fn check_list(state: &Audiences, account: AccountId, list: &NewList) -> Result<(), ApiError> {
    let name = list.name.trim();
    if name.is_empty() || name.len() > MAX_LIST_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "1-100 characters, no control characters",
        ));
    }
    if list.description.len() > MAX_DESCRIPTION {
        return Err(ApiError::invalid(
            "description",
            "is longer than 1000 bytes",
        ));
    }
    if list.tags.len() > MAX_TAGS {
        return Err(ApiError::invalid("tags", "at most 20 tags"));
    }
    for (i, tag) in list.tags.iter().enumerate() {
        if tag.is_empty() || tag.len() > 64 || tag.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!("tags[{i}]"), "1-64 characters"));
        }
    }
    if let Some(subject) = &list.confirm_subject {
        if subject.is_empty() || subject.len() > 998 || subject.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "confirm_subject",
                "1-998 characters, one line",
            ));
        }
    }
    if let Some(url) = &list.confirmed_url {
        // Stored as written and sent as a Location header: URL parsing would quietly
        // drop control characters and spaces that the header cannot carry.
        let parsed = url::Url::parse(url).ok().filter(|u| {
            matches!(u.scheme(), "https" | "http")
                && u.host().is_some()
                && url.len() <= MAX_URL
                && url.bytes().all(|b| b.is_ascii_graphic())
        });
        if parsed.is_none() {
            return Err(ApiError::invalid("confirmed_url", "must be an http(s) URL"));
        }
    }
    match (&list.confirm_from, list.opt_in) {
        (None, OptIn::Double) => Err(ApiError::invalid(
            "confirm_from",
            "a double opt-in list needs the confirmation's sender",
        )),
        (Some(from), _) => {
            let from = contacts::normalise_email(from)
                .map_err(|m| ApiError::invalid("confirm_from", m))?;
            let domain = from.rsplit_once('@').map_or("", |(_, d)| d);
            let sending = state
                .store
                .sending_domain(account, domain)
                .await
                .map_err(contacts::store_error)?;
            let usable =
                sending.is_some_and(|d| d.verified_at.is_some() || state.allow_unverified_senders);
            if !usable {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unverified_sender",
                    "confirm_from: its domain is not a verified sending domain of the account",
                ));
            }
            Ok(())
        }
        (None, OptIn::Single) => Ok(()),
    }
}

fn conflict_or(error: sqlx::Error) -> ApiError {
    contacts::conflict_or(error, "a list with this name exists")
}

/// `POST /v1/lists` (scope `contacts`): 201 with the list; 409 for a name in use.
pub async fn create(
    State(state): State<Audiences>,
    caller: Caller,
    body: JsonBody<NewList>,
) -> Result<(StatusCode, Json<List>), ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let input = body.value;
    check_list(&state, account, &input).await?;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO lists (id, account_id, name, description, opt_in, tags, confirm_from,
             confirm_subject, confirmed_url, public_subscribe)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id)
    .bind(account.0)
    .bind(input.name.trim())
    .bind(&input.description)
    .bind(input.opt_in.as_str())
    .bind(&input.tags)
    .bind(input.confirm_from.as_deref().map(str::to_lowercase))
    .bind(&input.confirm_subject)
    .bind(&input.confirmed_url)
    .bind(input.public_subscribe)
    .execute(state.store.pool())
    .await
    .map_err(conflict_or)?;
    Ok((StatusCode::CREATED, Json(load(&state, account, id).await?)))
}

pub(crate) async fn load(
    state: &Audiences,
    account: AccountId,
    id: Uuid,
) -> Result<List, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {LIST_COLUMNS} FROM lists l WHERE l.account_id = $1 AND l.id = $2"
    ))
    .bind(account.0)
    .bind(id)
    .fetch_optional(state.store.pool())
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError::not_found("list"))?;
    Ok(from_row(state, &row))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Lists {
    pub data: Vec<List>,
}

/// `GET /v1/lists` (scope `contacts`): every list with its counts, by name.
pub async fn list(State(state): State<Audiences>, caller: Caller) -> Result<Json<Lists>, ApiError> {
    caller.require(Scope::Contacts)?;
    let rows = sqlx::query(&format!(
        "SELECT {LIST_COLUMNS} FROM lists l WHERE l.account_id = $1 ORDER BY l.name LIMIT 1000"
    ))
    .bind(caller.0.account_id.0)
    .fetch_all(state.store.pool())
    .await
    .map_err(db_error)?;
    Ok(Json(Lists {
        data: rows.iter().map(|r| from_row(&state, r)).collect(),
    }))
}

/// `GET /v1/lists/{id}` (scope `contacts`).
pub async fn get(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<List>, ApiError> {
    caller.require(Scope::Contacts)?;
    let id = path_id(&id, "list")?;
    Ok(Json(load(&state, caller.0.account_id, id).await?))
}

/// `PATCH /v1/lists/{id}` (scope `contacts`).
pub async fn update(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<ListChange>,
) -> Result<Json<List>, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let id = path_id(&id, "list")?;
    let current = load(&state, account, id).await?;
    let change = body.value;
    let merged = NewList {
        name: change.name.unwrap_or(current.name),
        description: change.description.unwrap_or(current.description),
        opt_in: change.opt_in.unwrap_or(current.opt_in),
        tags: change.tags.unwrap_or(current.tags),
        confirm_from: change.confirm_from.or(current.confirm_from),
        confirm_subject: change.confirm_subject.or(current.confirm_subject),
        confirmed_url: change.confirmed_url.or(current.confirmed_url),
        public_subscribe: change.public_subscribe.unwrap_or(current.public_subscribe),
    };
    check_list(&state, account, &merged).await?;
    sqlx::query(
        "UPDATE lists SET name = $3, description = $4, opt_in = $5, tags = $6, confirm_from = $7,
             confirm_subject = $8, confirmed_url = $9, public_subscribe = $10, updated_at = now()
         WHERE account_id = $1 AND id = $2",
    )
    .bind(account.0)
    .bind(id)
    .bind(merged.name.trim())
    .bind(&merged.description)
    .bind(merged.opt_in.as_str())
    .bind(&merged.tags)
    .bind(merged.confirm_from.as_deref().map(str::to_lowercase))
    .bind(&merged.confirm_subject)
    .bind(&merged.confirmed_url)
    .bind(merged.public_subscribe)
    .execute(state.store.pool())
    .await
    .map_err(conflict_or)?;
    Ok(Json(load(&state, account, id).await?))
}

/// `DELETE /v1/lists/{id}` (scope `contacts`): the list and its memberships (contacts
/// stay).
pub async fn delete(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Contacts)?;
    contacts::delete_owned(&state, caller.0.account_id, "lists", &id, "list").await
}

/// The account's lists `ids`, locked against deletion until the transaction ends; 404
/// naming the first that is not the account's.
pub(crate) async fn lock_lists(
    tx: &mut sqlx::PgConnection,
    account: AccountId,
    ids: &[Uuid],
) -> Result<Vec<ListRef>, ApiError> {
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let row = sqlx::query(
            "SELECT id, name, opt_in, confirm_from, confirm_subject FROM lists
             WHERE account_id = $1 AND id = $2 FOR SHARE",
        )
        .bind(account.0)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ApiError {
            field: Some(format!("lists[{i}]")),
            ..ApiError::not_found("list")
        })?;
        out.push(list_ref(account, &row));
    }
    Ok(out)
}

pub(crate) fn list_ref(account: AccountId, row: &PgRow) -> ListRef {
    ListRef {
        account,
        id: row.get("id"),
        name: row.get("name"),
        opt_in: if row.get::<&str, _>("opt_in") == "double" {
            OptIn::Double
        } else {
            OptIn::Single
        },
        confirm_from: row.get("confirm_from"),
        confirm_subject: row.get("confirm_subject"),
    }
}

/// A confirmation to send once the transaction that made the membership commits.
#[derive(Clone, Debug)]
pub struct PendingConfirmation {
    pub list: ListRef,
    pub contact_id: Uuid,
    pub email: String,
    pub name: String,
}

/// What adding a contact to a list did.
#[derive(Debug)]
pub enum Subscribed {
    /// A `single` list: subscribed now.
    Now,
    /// A `double` list: `unconfirmed`, this confirmation to send after commit.
    Unconfirmed(PendingConfirmation),
    /// Already a member, in this state (nothing changed).
    Already(String),
    /// The contact's status forbids it (bounced, complained, unsubscribed).
    Refused(Status),
}

/// Adds `contact` to `list` (in `tx`), unless its status forbids it or it already has a
/// membership; `resubscribe` lets a person's own sign-up (the subscribe form) bring an
/// `unsubscribed` membership back, through confirmation on a double opt-in list.
pub(crate) async fn add(
    tx: &mut sqlx::PgConnection,
    list: &ListRef,
    contact: &Contact,
    source: &str,
    ip: Option<&str>,
    resubscribe: bool,
    resend_after: std::time::Duration,
) -> Result<Subscribed, ApiError> {
    // A person who unsubscribed from everything may come back by their own sign-up to a
    // double opt-in list: the confirmation proves the address is theirs, and confirming
    // makes the contact active again (`public::confirm`). Nothing else brings back a
    // contact that is not active.
    let returning =
        resubscribe && list.opt_in == OptIn::Double && contact.status == Status::Unsubscribed;
    if contact.status != Status::Active && !returning {
        return Ok(Subscribed::Refused(contact.status));
    }
    let state = match list.opt_in {
        OptIn::Single => "subscribed",
        OptIn::Double => "unconfirmed",
    };
    let existing = sqlx::query(
        "SELECT state, confirmation_sent_at IS NOT NULL
                    AND confirmation_sent_at > now() - make_interval(secs => $3) AS sent
         FROM list_members WHERE list_id = $1 AND contact_id = $2 FOR UPDATE",
    )
    .bind(list.id)
    .bind(contact.id)
    .bind(resend_after.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?
    .map(|r| (r.get::<String, _>("state"), r.get::<bool, _>("sent")));
    match existing.as_ref().map(|(s, sent)| (s.as_str(), *sent)) {
        None => {
            sqlx::query(
                "INSERT INTO list_members (account_id, list_id, contact_id, state, source, subscribed_at)
                 VALUES ($1, $2, $3, $4, $5, CASE WHEN $4 = 'subscribed' THEN now() END)",
            )
            .bind(list.account.0)
            .bind(list.id)
            .bind(contact.id)
            .bind(state)
            .bind(source)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        // Only through confirmation: on a single opt-in list anyone could sign anyone
        // back up.
        Some(("unsubscribed", _)) if resubscribe && list.opt_in == OptIn::Double => {
            sqlx::query(
                "UPDATE list_members SET state = $3, source = $4, updated_at = now(),
                     confirmation_sent_at = NULL, confirmed_at = NULL, confirmed_ip = NULL
                 WHERE list_id = $1 AND contact_id = $2",
            )
            .bind(list.id)
            .bind(contact.id)
            .bind(state)
            .bind(source)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        // A confirmation never written (Kafka did not take it), or one asked for again
        // after `confirmation_resend_after` (no sooner: the form must not mail-bomb).
        Some(("unconfirmed", false)) => {}
        Some((other, _)) => return Ok(Subscribed::Already(other.to_owned())),
    }
    contacts::record_event(
        tx,
        list.account,
        contact.id,
        Some(list.id),
        state,
        source,
        ip,
    )
    .await
    .map_err(db_error)?;
    Ok(match list.opt_in {
        OptIn::Single => Subscribed::Now,
        OptIn::Double => Subscribed::Unconfirmed(PendingConfirmation {
            list: list.clone(),
            contact_id: contact.id,
            email: contact.email.clone(),
            name: contact.name.clone(),
        }),
    })
}

/// [`add`] for the API: `Some(confirmation)` to send after commit.
pub(crate) async fn subscribe(
    tx: &mut sqlx::PgConnection,
    list: &ListRef,
    contact: &Contact,
    source: &str,
    ip: Option<&str>,
    resend_after: std::time::Duration,
) -> Result<Option<PendingConfirmation>, ApiError> {
    match add(tx, list, contact, source, ip, false, resend_after).await? {
        Subscribed::Now | Subscribed::Already(_) => Ok(None),
        Subscribed::Unconfirmed(pending) => Ok(Some(pending)),
        Subscribed::Refused(status) => Err(not_active(status)),
    }
}

fn not_active(status: Status) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "contact_not_active",
        format!(
            "the contact is {}: it cannot be added to a list",
            status.as_str()
        ),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// An existing contact, or
    pub contact_id: Option<Uuid>,
    /// an address (the contact is made when it does not exist).
    pub email: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Member {
    pub contact_id: Uuid,
    pub email: String,
    pub state: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub subscribed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub unsubscribed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub confirmed_at: Option<OffsetDateTime>,
    pub confirmed_ip: Option<String>,
}

/// `POST /v1/lists/{id}/members` (scope `contacts`): 200 with the membership (`state`
/// `subscribed`, or `unconfirmed` with a confirmation sent); 409 when the contact is not
/// active or left the list.
pub async fn add_member(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<NewMember>,
) -> Result<Json<Member>, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let list_id = path_id(&id, "list")?;
    let input = body.value;
    let mut tx = state.store.pool().begin().await.map_err(db_error)?;
    let list = lock_lists(&mut tx, account, &[list_id])
        .await
        .map_err(|e| ApiError { field: None, ..e })?
        .remove(0);
    let contact = match (input.contact_id, input.email) {
        (Some(id), None) => find_contact(&mut tx, account, id).await?,
        (None, Some(email)) => {
            let email =
                contacts::normalise_email(&email).map_err(|m| ApiError::invalid("email", m))?;
            upsert_bare(&mut tx, account, &email).await?
        }
        _ => {
            return Err(ApiError::invalid(
                "contact_id",
                "give either contact_id or email",
            ))
        }
    };
    let resend_after = state.config.confirmation_resend_after;
    let pending = match add(&mut tx, &list, &contact, "api", None, false, resend_after).await? {
        Subscribed::Now => None,
        Subscribed::Unconfirmed(pending) => Some(pending),
        Subscribed::Already(state) if state == "unsubscribed" => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "unsubscribed",
                "the contact unsubscribed from this list; only they can subscribe again",
            ))
        }
        Subscribed::Already(_) => None,
        Subscribed::Refused(status) => return Err(not_active(status)),
    };
    tx.commit().await.map_err(db_error)?;
    if let Some(pending) = pending {
        crate::confirm::send(&state, &pending).await?;
    }
    member(&state, account, list_id, contact.id).await
}

async fn find_contact(
    tx: &mut sqlx::PgConnection,
    account: AccountId,
    id: Uuid,
) -> Result<Contact, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {} FROM contacts c WHERE c.account_id = $1 AND c.id = $2 FOR UPDATE",
        contacts::CONTACT_COLUMNS
    ))
    .bind(account.0)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError {
        field: Some("contact_id".into()),
        ..ApiError::not_found("contact")
    })?;
    Ok(contacts::from_row(&row))
}

/// The contact with address `email`, made (no name, no attributes) when there is none.
pub(crate) async fn upsert_bare(
    tx: &mut sqlx::PgConnection,
    account: AccountId,
    email: &str,
) -> Result<Contact, ApiError> {
    let row = sqlx::query(&format!(
        "INSERT INTO contacts AS c (id, account_id, email, status)
         VALUES ($1, $2, $3, COALESCE({}, 'active'))
         ON CONFLICT (account_id, email) DO UPDATE SET updated_at = c.updated_at
         RETURNING {}",
        contacts::suppressed_status_sql("$2", "$3"),
        contacts::CONTACT_COLUMNS
    ))
    .bind(Uuid::now_v7())
    .bind(account.0)
    .bind(email)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    Ok(contacts::from_row(&row))
}

async fn member(
    state: &Audiences,
    account: AccountId,
    list: Uuid,
    contact: Uuid,
) -> Result<Json<Member>, ApiError> {
    let row = sqlx::query(
        "SELECT m.contact_id, c.email, m.state, m.subscribed_at, m.unsubscribed_at,
                m.confirmed_at, m.confirmed_ip
         FROM list_members m JOIN contacts c ON c.id = m.contact_id AND c.account_id = m.account_id
         WHERE m.account_id = $1 AND m.list_id = $2 AND m.contact_id = $3",
    )
    .bind(account.0)
    .bind(list)
    .bind(contact)
    .fetch_optional(state.store.pool())
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError::not_found("member"))?;
    Ok(Json(member_from_row(&row)))
}

fn member_from_row(r: &PgRow) -> Member {
    Member {
        contact_id: r.get("contact_id"),
        email: r.get("email"),
        state: r.get("state"),
        subscribed_at: r.get("subscribed_at"),
        unsubscribed_at: r.get("unsubscribed_at"),
        confirmed_at: r.get("confirmed_at"),
        confirmed_ip: r.get("confirmed_ip"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberQuery {
    /// `subscribed`, `unconfirmed` or `unsubscribed`.
    pub state: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MemberPage {
    pub data: Vec<Member>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/lists/{id}/members` (scope `contacts`): a page ordered by address.
pub async fn members(
    State(state): State<Audiences>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<MemberQuery>,
) -> Result<Json<MemberPage>, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let list = path_id(&id, "list")?;
    load(&state, account, list).await?;
    if let Some(s) = &query.state {
        if !["subscribed", "unconfirmed", "unsubscribed"].contains(&s.as_str()) {
            return Err(ApiError::invalid(
                "state",
                "subscribed, unconfirmed or unsubscribed",
            ));
        }
    }
    let limit = page_limit(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(contacts::decode_cursor)
        .transpose()?;
    let rows = sqlx::query(
        "SELECT m.contact_id, c.email, m.state, m.subscribed_at, m.unsubscribed_at,
                m.confirmed_at, m.confirmed_ip
         FROM list_members m JOIN contacts c ON c.id = m.contact_id AND c.account_id = m.account_id
         WHERE m.account_id = $1 AND m.list_id = $2 AND ($3::text IS NULL OR m.state = $3)
           AND ($4::text IS NULL OR c.email > $4)
         ORDER BY c.email LIMIT $5",
    )
    .bind(account.0)
    .bind(list)
    .bind(&query.state)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(state.store.pool())
    .await
    .map_err(db_error)?;
    let more = rows.len() as i64 > limit;
    let data: Vec<Member> = rows
        .iter()
        .take(limit as usize)
        .map(member_from_row)
        .collect();
    let next_cursor = more
        .then(|| data.last().map(|m| contacts::encode_cursor(&m.email)))
        .flatten();
    Ok(Json(MemberPage { data, next_cursor }))
}

/// `DELETE /v1/lists/{id}/members/{contact_id}` (scope `contacts`): unsubscribes the
/// contact from the list (the membership stays, `unsubscribed`, so an import never adds
/// it back).
pub async fn remove_member(
    State(state): State<Audiences>,
    caller: Caller,
    Path((id, contact)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Contacts)?;
    let account = caller.0.account_id;
    let list = path_id(&id, "list")?;
    let contact = path_id(&contact, "member")?;
    let mut tx = state.store.pool().begin().await.map_err(db_error)?;
    let exists: Option<String> = sqlx::query_scalar(
        "SELECT state FROM list_members WHERE account_id = $1 AND list_id = $2 AND contact_id = $3",
    )
    .bind(account.0)
    .bind(list)
    .bind(contact)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?;
    if exists.is_none() {
        return Err(ApiError::not_found("member"));
    }
    let left = contacts::unsubscribe_memberships(&mut tx, account, contact, Some(list), "api")
        .await
        .map_err(db_error)?;
    if left > 0 {
        contacts::record_event(
            &mut tx,
            account,
            contact,
            Some(list),
            "unsubscribed",
            "api",
            None,
        )
        .await
        .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(StatusCode::NO_CONTENT)
}
