//! The campaign as the API shows it and as a marketer writes it, its states, and the
//! checks on what is written. A campaign's writable part ([`Input`]) is stored in its
//! row's columns; a `PATCH` merges the changed keys into the current input as JSON and
//! checks the result whole, so a field can be cleared with `null`.

use crate::Campaigns;
use axum::http::StatusCode;
use sendmill_audiences::contacts::{db_error, normalise_email, store_error};
use sendmill_platform::api::ApiError;
use sendmill_wire::AccountId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{postgres::PgRow, Row};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};
use uuid::Uuid;

/// `draft → scheduled → sending ⇄ paused → sent | cancelled`. A draft or scheduled
/// campaign can be cancelled too, and a scheduled one taken back to draft.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Draft,
    Scheduled,
    Sending,
    Paused,
    Sent,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Draft => "draft",
            State::Scheduled => "scheduled",
            State::Sending => "sending",
            State::Paused => "paused",
            State::Sent => "sent",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "scheduled" => State::Scheduled,
            "sending" => State::Sending,
            "paused" => State::Paused,
            "sent" => State::Sent,
            "cancelled" => State::Cancelled,
            _ => State::Draft,
        }
    }
}

/// How an A/B test's winner is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Unique opens per released message, machine opens (privacy proxies) left out.
    Opens,
    /// Unique clicks per released message, machine clicks (link scanners) left out.
    Clicks,
    /// The marketer picks (`POST /v1/campaigns/{id}/winner`).
    Manual,
}

/// One A/B variant: what it changes from the campaign's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// `A`–`D`, given in order when left out.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbTest {
    /// 2–4 variants; the test share is split evenly between them.
    pub variants: Vec<Variant>,
    /// The share of the audience (1–100 %) that gets the test, drawn at random.
    pub test_percent: u8,
    pub metric: Metric,
    /// Seconds between the test's last release and choosing the winner (1 s – 30 days;
    /// ignored for `manual`).
    #[serde(default)]
    pub wait_seconds: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// Contacts subscribed to any of these lists…
    #[serde(default)]
    pub lists: Vec<Uuid>,
    /// …and/or matching this saved segment (both: in a list and matching it).
    #[serde(default)]
    pub segment_id: Option<Uuid>,
    /// Minus the contacts subscribed to any of these lists.
    #[serde(default)]
    pub exclude_lists: Vec<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracking {
    #[serde(default = "yes")]
    pub opens: bool,
    #[serde(default = "yes")]
    pub clicks: bool,
}

impl Default for Tracking {
    fn default() -> Self {
        Self {
            opens: true,
            clicks: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// What a marketer writes (`POST`, merged for `PATCH`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub name: String,
    pub from: From,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Inline content (Handlebars over the contact's attributes, `email`, `name` and
    /// `preferences_url`); or a stored template:
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub template_id: Option<Uuid>,
    /// The template version sent; left out: the latest when the campaign is saved.
    #[serde(default)]
    pub template_version: Option<i32>,
    #[serde(default)]
    pub audience: Audience,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub ip_pool: Option<String>,
    #[serde(default)]
    pub tracking: Tracking,
    /// One-click `List-Unsubscribe` (RFC 8058); on unless turned off.
    #[serde(default = "yes")]
    pub list_unsubscribe: bool,
    /// When to start: RFC 3339 with an offset, or a local time (`2026-12-24T09:00`) in
    /// `time_zone`. Left out: when scheduled.
    #[serde(default)]
    pub send_at: Option<String>,
    /// IANA zone name the local `send_at` is in (`Europe/Paris`); `UTC` when left out.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// At most this many messages released per hour; left out: as fast as the pipeline
    /// takes them.
    #[serde(default)]
    pub throttle_per_hour: Option<u32>,
    #[serde(default)]
    pub ab_test: Option<AbTest>,
}

/// A campaign as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Campaign {
    pub id: Uuid,
    pub state: State,
    #[serde(flatten)]
    pub input: Input,
    /// When it starts (the stored instant of `send_at`), RFC 3339 UTC.
    #[serde(with = "time::serde::rfc3339::option")]
    pub starts_at: Option<OffsetDateTime>,
    pub progress: Progress,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winner: Option<String>,
    /// Each variant's figure when the winner was chosen, and how.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winner_reason: Option<Value>,
    /// `all` (no test), `test`, `waiting` (for the winner) or `rest`.
    pub phase: String,
    /// Why the sender paused or cancelled it on its own (its template or segment gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub test_ends_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Where the release stands. Once a campaign has ended, `released + skipped + not_sent
/// = audience_size`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Contacts in the audience when sending began (none before).
    pub audience_size: Option<i64>,
    /// The A/B test's share of it.
    pub test_size: Option<i64>,
    /// Messages written to the bulk lane.
    pub released: i64,
    /// Contacts passed over at release: unsubscribed, bounced, complained, suppressed,
    /// off the list or excluded by then.
    pub skipped: i64,
    /// Contacts never released because the campaign was cancelled.
    pub not_sent: i64,
}

pub const COLUMNS: &str = "id, state, name, from_email, from_name, reply_to, subject, html, text,
    template_id, template_version, lists, segment_id, exclude_lists, tags, ip_pool, track_opens,
    track_clicks, list_unsubscribe, send_at, time_zone, throttle_per_hour, ab_test, phase,
    test_ends_at, winner, winner_reason, audience_size, test_size, released, skipped, not_sent,
    started_at, finished_at, created_at, updated_at, cursor, note";

pub fn from_row(r: &PgRow) -> Campaign {
    let send_at: Option<OffsetDateTime> = r.get("send_at");
    let time_zone: String = r.get("time_zone");
    let ab: Option<sqlx::types::Json<AbTest>> = r.get("ab_test");
    Campaign {
        id: r.get("id"),
        state: State::parse(r.get("state")),
        input: Input {
            name: r.get("name"),
            from: From {
                email: r.get("from_email"),
                name: r.get("from_name"),
            },
            reply_to: r.get("reply_to"),
            subject: r.get("subject"),
            html: r.get("html"),
            text: r.get("text"),
            template_id: r.get("template_id"),
            template_version: r.get("template_version"),
            audience: Audience {
                lists: r.get("lists"),
                segment_id: r.get("segment_id"),
                exclude_lists: r.get("exclude_lists"),
            },
            tags: r.get("tags"),
            ip_pool: r.get("ip_pool"),
            tracking: Tracking {
                opens: r.get("track_opens"),
                clicks: r.get("track_clicks"),
            },
            list_unsubscribe: r.get("list_unsubscribe"),
            send_at: send_at.and_then(|t| t.format(&Rfc3339).ok()),
            time_zone: (time_zone != "UTC").then_some(time_zone),
            throttle_per_hour: r
                .get::<Option<i32>, _>("throttle_per_hour")
                .map(|t| t as u32),
            ab_test: ab.map(|j| j.0),
        },
        starts_at: send_at,
        progress: Progress {
            audience_size: r.get("audience_size"),
            test_size: r.get("test_size"),
            released: r.get("released"),
            skipped: r.get("skipped"),
            not_sent: r.get("not_sent"),
        },
        winner: r.get("winner"),
        winner_reason: r
            .get::<Option<sqlx::types::Json<Value>>, _>("winner_reason")
            .map(|j| j.0),
        phase: r.get("phase"),
        note: r.get("note"),
        test_ends_at: r.get("test_ends_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

/// An input that passed [`check`]: what is stored.
#[derive(Debug)]
pub struct Checked {
    pub input: Input,
    pub send_at: Option<OffsetDateTime>,
    pub time_zone: String,
    pub template_version: Option<i32>,
}

const MAX_NAME: usize = 200;
const MAX_SUBJECT: usize = 998;
const MAX_BODY: usize = 2 * 1024 * 1024;
const MAX_WAIT_SECONDS: u32 = 30 * 24 * 3600;
const MAX_THROTTLE: u32 = 100_000_000;

fn one_line(value: &str, max: usize) -> bool {
    !value.trim().is_empty() && value.len() <= max && !value.chars().any(char::is_control)
}

fn check_source(field: &str, source: &str) -> Result<(), ApiError> {
    if source.len() > MAX_BODY {
        return Err(ApiError::invalid(field, "is longer than 2 MiB"));
    }
    if source.contains('\0') {
        return Err(ApiError::invalid(field, "contains a NUL character"));
    }
    sendmill_render::templates::check_syntax(source)
        .map_err(|e| ApiError::invalid(field, format!("template syntax: {e}")))
}

/// A 422 about one field: well-formed, but not usable now.
pub fn unprocessable(field: &str, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        field: Some(field.into()),
        ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
}

/// Checks `input` for `account` as it will be stored. Errors: 400 naming the field
/// (`name`, `from.email`, `subject`, `audience.lists[1]`, `ab_test.variants`, …), 422
/// `unverified_sender` for a sender off the account's verified domains, 503 when
/// PostgreSQL does not answer.
pub async fn check(
    state: &Campaigns,
    account: AccountId,
    input: Input,
) -> Result<Checked, ApiError> {
    let mut input = input;
    input.name = input.name.trim().to_owned();
    if !one_line(&input.name, MAX_NAME) {
        return Err(ApiError::invalid(
            "name",
            "1-200 characters, no control characters",
        ));
    }
    input.from.email =
        normalise_email(&input.from.email).map_err(|m| ApiError::invalid("from.email", m))?;
    if let Some(name) = &input.from.name {
        if !one_line(name, MAX_NAME) {
            return Err(ApiError::invalid("from.name", "1-200 characters, one line"));
        }
    }
    let domain = input
        .from
        .email
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_owned();
    let sending = state
        .store
        .sending_domain(account, &domain)
        .await
        .map_err(store_error)?;
    if !sending.is_some_and(|d| d.verified_at.is_some() || state.allow_unverified_senders) {
        return Err(unprocessable(
            "from.email",
            "unverified_sender",
            "from.email: its domain is not a verified sending domain of the account",
        ));
    }
    if let Some(reply_to) = &input.reply_to {
        input.reply_to =
            Some(normalise_email(reply_to).map_err(|m| ApiError::invalid("reply_to", m))?);
    }
    // Content: a stored template, or inline.
    let mut template_version = None;
    if let Some(template) = input.template_id {
        let version = state
            .store
            .template_version(account, template, input.template_version)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                if input.template_version.is_some() {
                    ApiError::invalid("template_version", "the template has no such version")
                } else {
                    ApiError::invalid("template_id", "the account has no such template")
                }
            })?;
        template_version = Some(version.version);
        if input.html.is_some() || input.text.is_some() {
            return Err(ApiError::invalid(
                "html",
                "give either template_id or inline html/text, not both",
            ));
        }
    } else {
        if input.template_version.is_some() {
            return Err(ApiError::invalid("template_version", "needs template_id"));
        }
        if input.subject.is_none() {
            return Err(ApiError::invalid(
                "subject",
                "inline content needs a subject (or give template_id)",
            ));
        }
        if input.html.is_none() && input.text.is_none() {
            return Err(ApiError::invalid(
                "html",
                "inline content needs html or text (or give template_id)",
            ));
        }
    }
    if let Some(subject) = &input.subject {
        if !one_line(subject, MAX_SUBJECT) {
            return Err(ApiError::invalid("subject", "1-998 characters, one line"));
        }
        check_source("subject", subject)?;
    }
    if let Some(html) = &input.html {
        check_source("html", html)?;
    }
    if let Some(text) = &input.text {
        check_source("text", text)?;
    }
    check_audience(state, account, &input.audience).await?;
    if input.tags.len() > 20 {
        return Err(ApiError::invalid("tags", "at most 20 tags"));
    }
    for (i, tag) in input.tags.iter().enumerate() {
        sendmill_platform::api::check_label(tag)
            .map_err(|m| ApiError::invalid(format!("tags[{i}]"), m))?;
    }
    if let Some(pool) = &input.ip_pool {
        sendmill_platform::api::check_label(pool).map_err(|m| ApiError::invalid("ip_pool", m))?;
    }
    if let Some(throttle) = input.throttle_per_hour {
        if throttle == 0 || throttle > MAX_THROTTLE {
            return Err(ApiError::invalid(
                "throttle_per_hour",
                "must be 1-100000000 messages per hour (leave it out for no limit)",
            ));
        }
    }
    let time_zone = input.time_zone.clone().unwrap_or_else(|| "UTC".into());
    if time_zone.is_empty() || time_zone.len() > 64 || time_zone.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "time_zone",
            "not an IANA time zone name (e.g. Europe/Paris)",
        ));
    }
    let known: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1)")
            .bind(&time_zone)
            .fetch_one(state.store.pool())
            .await
            .map_err(db_error)?;
    if !known {
        return Err(ApiError::invalid(
            "time_zone",
            "not an IANA time zone name (e.g. Europe/Paris)",
        ));
    }
    let send_at = match &input.send_at {
        None => None,
        Some(raw) => Some(send_instant(state, raw, &time_zone).await?),
    };
    if let Some(at) = send_at {
        if at <= OffsetDateTime::now_utc() {
            return Err(ApiError::invalid("send_at", "is in the past"));
        }
    }
    if let Some(ab) = &mut input.ab_test {
        check_ab(ab)?;
        let tracked = match ab.metric {
            Metric::Opens => input.tracking.opens,
            Metric::Clicks => input.tracking.clicks,
            Metric::Manual => true,
        };
        if !tracked {
            return Err(ApiError::invalid(
                "ab_test.metric",
                "the winner is chosen by something the campaign does not track (tracking)",
            ));
        }
    }
    Ok(Checked {
        input,
        send_at,
        time_zone,
        template_version,
    })
}

/// `raw` as an instant: RFC 3339 with its offset, or a local date-time in `zone`
/// (PostgreSQL's time zone database converts it, daylight saving included).
async fn send_instant(
    state: &Campaigns,
    raw: &str,
    zone: &str,
) -> Result<OffsetDateTime, ApiError> {
    if let Ok(at) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(at);
    }
    let local = raw.len() <= 19
        && time::PrimitiveDateTime::parse(
            raw,
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]"),
        )
        .or_else(|_| {
            time::PrimitiveDateTime::parse(
                raw,
                time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
            )
        })
        .is_ok();
    if !local {
        return Err(ApiError::invalid(
            "send_at",
            "RFC 3339 (2026-12-24T09:00:00+01:00) or a local time (2026-12-24T09:00) in time_zone",
        ));
    }
    sqlx::query_scalar("SELECT ($1::timestamp AT TIME ZONE $2)")
        .bind(raw)
        .bind(zone)
        .fetch_one(state.store.pool())
        .await
        .map_err(db_error)
}

fn check_ab(ab: &mut AbTest) -> Result<(), ApiError> {
    if !(2..=4).contains(&ab.variants.len()) {
        return Err(ApiError::invalid("ab_test.variants", "2 to 4 variants"));
    }
    if !(1..=100).contains(&ab.test_percent) {
        return Err(ApiError::invalid("ab_test.test_percent", "must be 1-100"));
    }
    if ab.metric != Metric::Manual && !(1..=MAX_WAIT_SECONDS).contains(&ab.wait_seconds) {
        return Err(ApiError::invalid(
            "ab_test.wait_seconds",
            "must be 1 s to 30 days for a metric winner",
        ));
    }
    for (i, variant) in ab.variants.iter_mut().enumerate() {
        let field = |f: &str| format!("ab_test.variants[{i}].{f}");
        let expected = ["A", "B", "C", "D"][i];
        if variant.name.is_empty() {
            variant.name = expected.into();
        } else if variant.name != expected {
            return Err(ApiError::invalid(
                field("name"),
                "variants are named A, B, C, D in order",
            ));
        }
        if variant.subject.is_none()
            && variant.from_name.is_none()
            && variant.html.is_none()
            && variant.text.is_none()
        {
            return Err(ApiError::invalid(
                field("subject"),
                "a variant changes the subject, the from name or the content",
            ));
        }
        if let Some(subject) = &variant.subject {
            if !one_line(subject, MAX_SUBJECT) {
                return Err(ApiError::invalid(
                    field("subject"),
                    "1-998 characters, one line",
                ));
            }
            check_source(&field("subject"), subject)?;
        }
        if let Some(name) = &variant.from_name {
            if !one_line(name, MAX_NAME) {
                return Err(ApiError::invalid(
                    field("from_name"),
                    "1-200 characters, one line",
                ));
            }
        }
        if let Some(html) = &variant.html {
            check_source(&field("html"), html)?;
        }
        if let Some(text) = &variant.text {
            check_source(&field("text"), text)?;
        }
    }
    Ok(())
}

async fn check_audience(
    state: &Campaigns,
    account: AccountId,
    audience: &Audience,
) -> Result<(), ApiError> {
    for (field, ids) in [
        ("audience.lists", &audience.lists),
        ("audience.exclude_lists", &audience.exclude_lists),
    ] {
        if ids.len() > 50 {
            return Err(ApiError::invalid(field, "at most 50 lists"));
        }
        let known: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM lists WHERE account_id = $1 AND id = ANY($2)")
                .bind(account.0)
                .bind(ids)
                .fetch_all(state.store.pool())
                .await
                .map_err(db_error)?;
        if let Some(i) = ids.iter().position(|id| !known.contains(id)) {
            return Err(ApiError::invalid(
                format!("{field}[{i}]"),
                "the account has no such list",
            ));
        }
    }
    if let Some(segment) = audience.segment_id {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM segments WHERE account_id = $1 AND id = $2)",
        )
        .bind(account.0)
        .bind(segment)
        .fetch_one(state.store.pool())
        .await
        .map_err(db_error)?;
        if !known {
            return Err(ApiError::invalid(
                "audience.segment_id",
                "the account has no such segment",
            ));
        }
    }
    Ok(())
}
