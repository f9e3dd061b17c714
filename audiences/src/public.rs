//! The pages recipients reach without logging in, plain HTML forms that work without
//! JavaScript:
//!
//! - `GET /p/{token}`: a contact's preferences page (the signed link each contact's API
//!   answer and messages carry): their lists with a checkbox each, and "unsubscribe from
//!   everything". `POST` saves: an unchecked list is left (`unsubscribed`), a checked
//!   one the person had left is joined again; "everything" also puts the address on the
//!   account's suppression list, as the unsubscribe link does. Each change is a contact
//!   event with the client's address.
//! - `GET /subscribe/{list_id}`: a list's public sign-up form (when the list allows it);
//!   `POST` signs up, limited per client address and per account, with a honeypot field
//!   bots fill and people never see. A double opt-in list sends the confirmation; the
//!   answer is the same whether the address was new, known or refused, so the form
//!   tells nobody who is subscribed.
//! - `GET /confirm/{token}`: shows a button; `POST` confirms (a link scanner fetching
//!   the GET confirms nothing), records when and from where, and redirects to the list's
//!   `confirmed_url` when it has one: the only redirect these pages make, to an address
//!   the account set, never one from the request.
//!
//! Every page is sent with a CSP allowing no scripts and no framing.

use crate::{
    contacts::{self, Status},
    lists::{self, Subscribed},
    tokens::{self, ConfirmClaims, PreferencesClaims},
    Audiences,
};
use axum::extract::FromRef;
use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRequestParts, Path, State},
    http::{header, request::Parts, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use sendmill_store::SuppressionReason;
use sendmill_wire::AccountId;
use sqlx::Row;
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
};
use time::OffsetDateTime;
use uuid::Uuid;

/// The name of the honeypot field: hidden from people, filled by form-filling bots.
pub const HONEYPOT: &str = "website";

/// The client's address: the last entry of `client_ip_header` when one is configured
/// (a reverse proxy's), else the peer the listener saw.
pub struct ClientIp(pub Option<String>);

impl<S> FromRequestParts<S> for ClientIp
where
    S: Send + Sync,
    Audiences: FromRef<S>,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let config = Audiences::from_ref(state).config;
        let forwarded = (!config.client_ip_header.is_empty())
            .then(|| {
                parts
                    .headers
                    .get_all(config.client_ip_header.as_str())
                    .iter()
                    .next_back()
            })
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientIp(forwarded.or(peer).map(|ip| ip.to_string())))
    }
}

/// What the per-address limit counts: the address, or its /64 for IPv6 (one host
/// holds a whole /64 and could step through it).
fn rate_key(ip: Option<&str>) -> String {
    match ip.and_then(|ip| ip.parse::<IpAddr>().ok()) {
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(IpAddr::V4(v4)) => format!("ip:{v4}"),
        None => "ip:unknown".into(),
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An HTML page; `title` is escaped, `body` is HTML the caller escaped.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{t}</title><style>body{{font-family:sans-serif;\
         max-width:34em;margin:3em auto;padding:0 1em;line-height:1.5}}label{{display:block;\
         margin:.4em 0}}button{{padding:.5em 1.2em;margin:.6em .6em 0 0}}input[type=email],\
         input[type=text]{{width:100%;padding:.4em;box-sizing:border-box}}.hp{{position:absolute;\
         left:-10000px}}</style></head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn invalid_link() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Link not valid",
        "<p>This link is not valid. It may have been changed or cut short.</p>",
    )
}

fn unavailable() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again",
        "<p>This page cannot be shown right now. Please try again in a minute.</p>",
    )
}

fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

struct PreferenceRow {
    list: Uuid,
    name: String,
    description: String,
    state: String,
}

async fn preference_rows(
    state: &Audiences,
    account: AccountId,
    contact: Uuid,
) -> Result<Vec<PreferenceRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT l.id, l.name, l.description, m.state FROM list_members m
         JOIN lists l ON l.id = m.list_id AND l.account_id = m.account_id
         WHERE m.account_id = $1 AND m.contact_id = $2 ORDER BY l.name",
    )
    .bind(account.0)
    .bind(contact)
    .fetch_all(state.store.pool())
    .await?;
    Ok(rows
        .iter()
        .map(|r| PreferenceRow {
            list: r.get("id"),
            name: r.get("name"),
            description: r.get("description"),
            state: r.get("state"),
        })
        .collect())
}

fn open_preferences(state: &Audiences, token: &str) -> Option<PreferencesClaims> {
    state.links.as_ref()?.open(tokens::PREFERENCES, token).ok()
}

async fn contact_of(
    state: &Audiences,
    claims: &PreferencesClaims,
) -> Result<Option<(String, Status)>, sqlx::Error> {
    let row = sqlx::query("SELECT email, status FROM contacts WHERE account_id = $1 AND id = $2")
        .bind(claims.account.0)
        .bind(claims.contact)
        .fetch_optional(state.store.pool())
        .await?;
    Ok(row.map(|r| {
        (
            r.get::<String, _>("email"),
            Status::parse(r.get("status")).unwrap_or(Status::Active),
        )
    }))
}

/// `GET /p/{token}`.
pub async fn preferences_page(
    State(state): State<Audiences>,
    Path(token): Path<String>,
) -> Response {
    let Some(claims) = open_preferences(&state, &token) else {
        return invalid_link();
    };
    let (contact, rows) = match (
        contact_of(&state, &claims).await,
        preference_rows(&state, claims.account, claims.contact).await,
    ) {
        (Ok(Some(contact)), Ok(rows)) => (contact, rows),
        (Ok(None), _) => return invalid_link(),
        _ => return unavailable(),
    };
    preferences_html(&token, &contact.0, contact.1, &rows, None)
}

fn preferences_html(
    token: &str,
    email: &str,
    status: Status,
    rows: &[PreferenceRow],
    saved: Option<&str>,
) -> Response {
    let mut body = String::new();
    if let Some(message) = saved {
        body.push_str(&format!(
            "<p role=\"status\"><strong>{}</strong></p>",
            escape(message)
        ));
    }
    body.push_str(&format!(
        "<p>Subscriptions of <strong>{}</strong>.</p>",
        escape(email)
    ));
    if status != Status::Active {
        body.push_str(
            "<p>This address receives nothing from this sender: it unsubscribed from \
             everything, or mail to it could not be delivered.</p>",
        );
        return page(StatusCode::OK, "Your subscriptions", &body);
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/p/{}\">",
        escape(token)
    ));
    if rows.is_empty() {
        body.push_str("<p>You are not on any list.</p>");
    }
    for row in rows {
        let checked = if row.state == "unsubscribed" {
            ""
        } else {
            " checked"
        };
        let pending = if row.state == "unconfirmed" {
            " <em>(waiting for your confirmation)</em>"
        } else {
            ""
        };
        body.push_str(&format!(
            "<label><input type=\"checkbox\" name=\"list\" value=\"{}\"{checked}> {}{pending}<br><small>{}</small></label>",
            row.list,
            escape(&row.name),
            escape(&row.description)
        ));
    }
    body.push_str(
        "<button type=\"submit\" name=\"action\" value=\"save\">Save</button>\
         <button type=\"submit\" name=\"action\" value=\"unsubscribe_all\">Unsubscribe from everything</button></form>",
    );
    page(StatusCode::OK, "Your subscriptions", &body)
}

/// `POST /p/{token}`: `list` (repeated: the lists to stay on) and `action` (`save` or
/// `unsubscribe_all`).
pub async fn preferences_change(
    State(state): State<Audiences>,
    Path(token): Path<String>,
    ClientIp(ip): ClientIp,
    body: Bytes,
) -> Response {
    let Some(claims) = open_preferences(&state, &token) else {
        return invalid_link();
    };
    let fields = form_fields(&body);
    let keep: Vec<Uuid> = fields
        .iter()
        .filter(|(k, _)| k == "list")
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    let everything = field(&fields, "action") == Some("unsubscribe_all");
    let changed = match apply_preferences(&state, &claims, &keep, everything, ip.as_deref()).await {
        Ok(Some(changed)) => changed,
        Ok(None) => return invalid_link(),
        Err(error) => {
            tracing::error!(%error, "saving preferences");
            return unavailable();
        }
    };
    if everything {
        // The account's suppression list (and its Redis copy), as the unsubscribe link
        // does; the store flips the contact and its memberships with it.
        let email = match contact_of(&state, &claims).await {
            Ok(Some((email, _))) => email,
            Ok(None) => return invalid_link(),
            Err(_) => return unavailable(),
        };
        let source = format!("preferences:{}", claims.contact);
        if let Err(error) = state
            .suppressions
            .add_if_absent(
                claims.account,
                &email,
                SuppressionReason::Unsubscribe,
                Some(&source),
            )
            .await
        {
            tracing::error!(%error, "unsubscribe from everything: suppression");
            return unavailable();
        }
    }
    let (contact, rows) = match (
        contact_of(&state, &claims).await,
        preference_rows(&state, claims.account, claims.contact).await,
    ) {
        (Ok(Some(contact)), Ok(rows)) => (contact, rows),
        (Ok(None), _) => return invalid_link(),
        _ => return unavailable(),
    };
    let message = if everything {
        "You are unsubscribed from everything."
    } else if changed {
        "Your preferences are saved."
    } else {
        "Nothing changed."
    };
    preferences_html(&token, &contact.0, contact.1, &rows, Some(message))
}

/// Applies the form in one transaction; `Ok(None)` when the contact is gone, else
/// whether anything changed.
async fn apply_preferences(
    state: &Audiences,
    claims: &PreferencesClaims,
    keep: &[Uuid],
    everything: bool,
    ip: Option<&str>,
) -> Result<Option<bool>, sqlx::Error> {
    let mut tx = state.store.pool().begin().await?;
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM contacts WHERE account_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(claims.account.0)
    .bind(claims.contact)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(status) = status else {
        return Ok(None);
    };
    if status != "active" {
        return Ok(Some(false));
    }
    let mut changed = false;
    if everything {
        contacts::unsubscribe_all(&mut tx, claims.account, claims.contact, "preferences", ip)
            .await?;
        tx.commit().await?;
        return Ok(Some(true));
    }
    let left = sqlx::query(
        "UPDATE list_members SET state = 'unsubscribed', unsubscribed_at = now(),
             updated_at = now(), source = 'preferences'
         WHERE account_id = $1 AND contact_id = $2 AND state <> 'unsubscribed'
           AND NOT (list_id = ANY($3))
         RETURNING list_id",
    )
    .bind(claims.account.0)
    .bind(claims.contact)
    .bind(keep)
    .fetch_all(&mut *tx)
    .await?;
    for row in &left {
        log(&mut tx, claims, row.get("list_id"), "unsubscribed", ip).await?;
    }
    // Back on a list they left, by their own hand on their own preferences page (its
    // link came to their inbox: for a double opt-in list that is the confirmation).
    let joined = sqlx::query(
        "UPDATE list_members m SET state = 'subscribed', subscribed_at = now(), updated_at = now(),
             source = 'preferences',
             confirmed_at = CASE WHEN l.opt_in = 'double' THEN now() ELSE m.confirmed_at END,
             confirmed_ip = CASE WHEN l.opt_in = 'double' THEN $4 ELSE m.confirmed_ip END
         FROM lists l
         WHERE l.id = m.list_id AND l.account_id = m.account_id
           AND m.account_id = $1 AND m.contact_id = $2 AND m.state = 'unsubscribed'
           AND m.list_id = ANY($3)
         RETURNING m.list_id",
    )
    .bind(claims.account.0)
    .bind(claims.contact)
    .bind(keep)
    .bind(ip)
    .fetch_all(&mut *tx)
    .await?;
    for row in &joined {
        log(&mut tx, claims, row.get("list_id"), "resubscribed", ip).await?;
    }
    changed |= !left.is_empty() || !joined.is_empty();
    tx.commit().await?;
    Ok(Some(changed))
}

/// A change the person made on their preferences page, in the contact's log.
async fn log(
    tx: &mut sqlx::PgConnection,
    claims: &PreferencesClaims,
    list: Uuid,
    kind: &str,
    ip: Option<&str>,
) -> Result<(), sqlx::Error> {
    contacts::record_event(
        tx,
        claims.account,
        claims.contact,
        Some(list),
        kind,
        "preferences",
        ip,
    )
    .await
}

/// A list that takes public sign-ups.
async fn public_list(
    state: &Audiences,
    list_id: &str,
) -> Result<Option<(lists::ListRef, String)>, sqlx::Error> {
    let Ok(id) = list_id.parse::<Uuid>() else {
        return Ok(None);
    };
    let row = sqlx::query(
        "SELECT id, account_id, name, description, opt_in, confirm_from, confirm_subject
         FROM lists WHERE id = $1 AND public_subscribe",
    )
    .bind(id)
    .fetch_optional(state.store.pool())
    .await?;
    Ok(row.map(|r| {
        let account = AccountId(r.get("account_id"));
        (lists::list_ref(account, &r), r.get("description"))
    }))
}

fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        "<p>There is no sign-up form here.</p>",
    )
}

fn subscribe_html(list: &lists::ListRef, description: &str, error: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(error) = error {
        body.push_str(&format!(
            "<p role=\"alert\"><strong>{}</strong></p>",
            escape(error)
        ));
    }
    body.push_str(&format!(
        "<p>{}</p><form method=\"post\" action=\"/subscribe/{}\">\
         <label>Email address <input type=\"email\" name=\"email\" required maxlength=\"254\"></label>\
         <label>Name (optional) <input type=\"text\" name=\"name\" maxlength=\"256\"></label>\
         <label class=\"hp\" aria-hidden=\"true\">Leave this empty <input type=\"text\" name=\"{HONEYPOT}\" tabindex=\"-1\" autocomplete=\"off\"></label>\
         <button type=\"submit\">Subscribe</button></form>",
        escape(description),
        list.id
    ));
    body
}

/// `GET /subscribe/{list_id}`.
pub async fn subscribe_form(
    State(state): State<Audiences>,
    Path(list_id): Path<String>,
) -> Response {
    match public_list(&state, &list_id).await {
        Ok(Some((list, description))) => page(
            StatusCode::OK,
            &format!("Subscribe to {}", list.name),
            &subscribe_html(&list, &description, None),
        ),
        Ok(None) => not_found(),
        Err(_) => unavailable(),
    }
}

/// Counts one sign-up against `key` for the current minute; whether it is within `limit`.
async fn within_limit(state: &Audiences, key: &str, limit: u32) -> Result<bool, redis::RedisError> {
    let minute = OffsetDateTime::now_utc().unix_timestamp() / 60;
    let key = format!("{}audiences:subscribe:{key}:{minute}", state.redis_prefix);
    let mut redis = state.redis.clone();
    let (count,): (u64,) = redis::pipe()
        .atomic()
        .incr(&key, 1)
        .expire(&key, 120)
        .ignore()
        .query_async(&mut redis)
        .await?;
    Ok(count <= u64::from(limit))
}

fn refused(reason: &'static str) {
    metrics::counter!(crate::metric::SUBSCRIBE_REFUSED_TOTAL, "reason" => reason).increment(1);
}

/// `POST /subscribe/{list_id}`: `email`, `name` and the honeypot.
pub async fn subscribe(
    State(state): State<Audiences>,
    Path(list_id): Path<String>,
    ClientIp(ip): ClientIp,
    body: Bytes,
) -> Response {
    let (list, description) = match public_list(&state, &list_id).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(),
        Err(_) => return unavailable(),
    };
    let title = format!("Subscribe to {}", list.name);
    let fields = form_fields(&body);
    let thanks = || {
        let text = match list.opt_in {
            lists::OptIn::Double => {
                "<p>Thank you. Please check your inbox: we sent you a link to confirm.</p>"
            }
            lists::OptIn::Single => "<p>Thank you, you are subscribed.</p>",
        };
        page(StatusCode::OK, &title, text)
    };
    if field(&fields, HONEYPOT).is_some_and(|v| !v.is_empty()) {
        refused("honeypot");
        return thanks();
    }
    let ip_key = rate_key(ip.as_deref());
    let account_key = format!("account:{}", list.account);
    let limits = async {
        Ok::<_, redis::RedisError>(
            within_limit(&state, &ip_key, state.config.subscribe_per_ip_per_minute).await?
                && within_limit(
                    &state,
                    &account_key,
                    state.config.subscribe_per_account_per_minute,
                )
                .await?,
        )
    };
    match limits.await {
        Ok(true) => {}
        Ok(false) => {
            refused("rate_limited");
            let mut response = page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many sign-ups",
                "<p>Too many sign-ups from here just now. Please try again in a minute.</p>",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return response;
        }
        Err(error) => {
            tracing::error!(%error, "subscribe rate limit");
            return unavailable();
        }
    }
    let email = match contacts::normalise_email(field(&fields, "email").unwrap_or_default()) {
        Ok(email) => email,
        Err(message) => {
            refused("invalid");
            return page(
                StatusCode::BAD_REQUEST,
                &title,
                &subscribe_html(
                    &list,
                    &description,
                    Some(&format!("Email address: {message}")),
                ),
            );
        }
    };
    let name = field(&fields, "name").unwrap_or_default().trim();
    if name.len() > contacts::MAX_NAME_BYTES || name.chars().any(char::is_control) {
        refused("invalid");
        return page(
            StatusCode::BAD_REQUEST,
            &title,
            &subscribe_html(
                &list,
                &description,
                Some("Name: too long, or holds control characters"),
            ),
        );
    }
    match sign_up(&state, &list, &email, name, ip.as_deref()).await {
        Ok(()) => thanks(),
        Err(error) => {
            tracing::error!(?error, "public sign-up");
            unavailable()
        }
    }
}

async fn sign_up(
    state: &Audiences,
    list: &lists::ListRef,
    email: &str,
    name: &str,
    ip: Option<&str>,
) -> Result<(), sendmill_platform::api::ApiError> {
    let mut tx = state
        .store
        .pool()
        .begin()
        .await
        .map_err(contacts::db_error)?;
    let mut contact = lists::upsert_bare(&mut tx, list.account, email).await?;
    if contact.name.is_empty() && !name.is_empty() {
        sqlx::query(
            "UPDATE contacts SET name = $3, updated_at = now() WHERE account_id = $1 AND id = $2",
        )
        .bind(list.account.0)
        .bind(contact.id)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(contacts::db_error)?;
        contact.name = name.to_owned();
    }
    let resend_after = state.config.confirmation_resend_after;
    let outcome = lists::add(&mut tx, list, &contact, "form", ip, true, resend_after).await?;
    tx.commit().await.map_err(contacts::db_error)?;
    if let Subscribed::Unconfirmed(pending) = outcome {
        crate::confirm::send(state, &pending).await?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum ConfirmError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Suppressions(#[from] sendmill_tenancy::suppressions::SuppressionError),
}

fn open_confirm(state: &Audiences, token: &str) -> Option<ConfirmClaims> {
    state.links.as_ref()?.open(tokens::CONFIRM, token).ok()
}

fn expired() -> Response {
    page(
        StatusCode::GONE,
        "Link expired",
        "<p>This confirmation link has expired. Please sign up again to get a new one.</p>",
    )
}

/// `GET /confirm/{token}`: a button that confirms (POST).
pub async fn confirm_page(State(state): State<Audiences>, Path(token): Path<String>) -> Response {
    let Some(claims) = open_confirm(&state, &token) else {
        return invalid_link();
    };
    if claims.expires < OffsetDateTime::now_utc().unix_timestamp() {
        return expired();
    }
    page(
        StatusCode::OK,
        "Confirm your subscription",
        &format!(
            "<form method=\"post\" action=\"/confirm/{}\"><button type=\"submit\">Yes, subscribe me</button></form>",
            escape(&token)
        ),
    )
}

/// `POST /confirm/{token}`: `unconfirmed` → `subscribed`, with when and from where.
pub async fn confirm(
    State(state): State<Audiences>,
    Path(token): Path<String>,
    ClientIp(ip): ClientIp,
) -> Response {
    let Some(claims) = open_confirm(&state, &token) else {
        return invalid_link();
    };
    if claims.expires < OffsetDateTime::now_utc().unix_timestamp() {
        return expired();
    }
    match confirm_membership(&state, &claims, ip.as_deref()).await {
        // Checked when the list was saved; a value that still cannot be a header
        // (written by hand into the database) gets the page instead.
        Ok(Some(Some(url))) if HeaderValue::from_str(&url).is_ok() => {
            Redirect::to(&url).into_response()
        }
        Ok(Some(_)) => page(
            StatusCode::OK,
            "Subscription confirmed",
            "<p>Thank you, your subscription is confirmed.</p>",
        ),
        Ok(None) => page(
            StatusCode::CONFLICT,
            "Cannot confirm",
            "<p>This subscription cannot be confirmed: it was cancelled, or the address \
             unsubscribed.</p>",
        ),
        Err(error) => {
            tracing::error!(%error, "confirming a subscription");
            unavailable()
        }
    }
}

/// `Ok(None)`: nothing to confirm (the membership left, the contact is not active);
/// `Ok(Some(url))`: confirmed (or already), and where to send the person.
async fn confirm_membership(
    state: &Audiences,
    claims: &ConfirmClaims,
    ip: Option<&str>,
) -> Result<Option<Option<String>>, ConfirmError> {
    let mut tx = state.store.pool().begin().await?;
    let row = sqlx::query(
        "SELECT m.state, c.status, c.email, l.confirmed_url FROM list_members m
         JOIN contacts c ON c.id = m.contact_id AND c.account_id = m.account_id
         JOIN lists l ON l.id = m.list_id AND l.account_id = m.account_id
         WHERE m.account_id = $1 AND m.list_id = $2 AND m.contact_id = $3
         FOR UPDATE OF m",
    )
    .bind(claims.account.0)
    .bind(claims.list)
    .bind(claims.contact)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let url: Option<String> = row.get("confirmed_url");
    let status: &str = row.get("status");
    match (row.get::<&str, _>("state"), status) {
        ("subscribed", "active") => return Ok(Some(url)),
        ("unconfirmed", "active" | "unsubscribed") => {}
        _ => return Ok(None),
    }
    if status == "unsubscribed" {
        // A person who had unsubscribed from everything signed up again and confirmed
        // it: their own earlier unsubscribe is lifted (a bounce or complaint never is).
        let email: String = row.get("email");
        let reason: Option<String> = sqlx::query_scalar(
            "SELECT reason FROM suppressions WHERE account_id = $1 AND email = $2",
        )
        .bind(claims.account.0)
        .bind(&email)
        .fetch_optional(&mut *tx)
        .await?;
        if reason.as_deref().is_some_and(|r| r != "unsubscribe") {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE contacts SET status = 'active', status_changed_at = now(), updated_at = now()
             WHERE account_id = $1 AND id = $2",
        )
        .bind(claims.account.0)
        .bind(claims.contact)
        .execute(&mut *tx)
        .await?;
        if reason.is_some() {
            state
                .suppressions
                .delete(
                    sendmill_store::suppressions::List::Account(claims.account),
                    &email,
                )
                .await?;
        }
    }
    sqlx::query(
        "UPDATE list_members SET state = 'subscribed', subscribed_at = now(), confirmed_at = now(),
             confirmed_ip = $4, updated_at = now()
         WHERE account_id = $1 AND list_id = $2 AND contact_id = $3",
    )
    .bind(claims.account.0)
    .bind(claims.list)
    .bind(claims.contact)
    .bind(ip)
    .execute(&mut *tx)
    .await?;
    contacts::record_event(
        &mut tx,
        claims.account,
        claims.contact,
        Some(claims.list),
        "confirmed",
        "confirmation",
        ip,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        assert_eq!(
            rate_key(Some("2001:db8:1:2:a::1")),
            rate_key(Some("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            rate_key(Some("2001:db8:1:2::1")),
            rate_key(Some("2001:db8:1:3::1"))
        );
        assert_eq!(rate_key(Some("192.0.2.7")), "ip:192.0.2.7");
    }

    #[test]
    fn text_is_escaped_into_pages() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }
}
