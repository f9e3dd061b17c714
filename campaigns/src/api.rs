//! `/v1/campaigns…` (scope `campaigns`): create, read, change and delete campaigns, and
//! move them through their states. Every transition is one `UPDATE … WHERE state IN
//! (…)` on the account's row, so two requests (or a request and the sender) never both
//! win; a transition the campaign's state does not allow answers 409 naming the state.

use crate::{
    content::{self, Addressing, Recipient},
    model::{self, check, from_row, Campaign, Input, State, COLUMNS},
    Campaigns,
};
use axum::{
    extract::{Path, State as AxState},
    http::StatusCode,
    Json,
};
use sendmill_audiences::{
    contacts::{db_error, page_limit, path_id},
    segments::compile::{Compiled, Param},
};
use sendmill_platform::{
    api::ApiError,
    body::{JsonBody, QueryParams},
};
use sendmill_store::Scope;
use sendmill_tenancy::auth::Caller;
use sendmill_wire::{AccountId, MessageId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sqlx::Row;
use uuid::Uuid;

/// The campaign `id` of `account`. Errors: 404, 503.
pub async fn load(state: &Campaigns, account: AccountId, id: Uuid) -> Result<Campaign, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM campaigns WHERE account_id = $1 AND id = $2"
    ))
    .bind(account.0)
    .bind(id)
    .fetch_optional(state.store.pool())
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError::not_found("campaign"))?;
    Ok(from_row(&row))
}

fn caller_account(caller: &Caller) -> Result<AccountId, ApiError> {
    caller.require(Scope::Campaigns)?;
    Ok(caller.0.account_id)
}

/// `POST /v1/campaigns`: 201 with the draft.
pub async fn create(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    body: JsonBody<Input>,
) -> Result<(StatusCode, Json<Campaign>), ApiError> {
    let account = caller_account(&caller)?;
    let checked = check(&state, account, body.value).await?;
    let id = Uuid::now_v7();
    store(&state, account, id, &checked, None).await?;
    Ok((StatusCode::CREATED, Json(load(&state, account, id).await?)))
}

/// Writes `checked` as campaign `id` (a new row, or the draft's columns).
async fn store(
    state: &Campaigns,
    account: AccountId,
    id: Uuid,
    checked: &model::Checked,
    expected: Option<State>,
) -> Result<(), ApiError> {
    let i = &checked.input;
    let sql = if expected.is_none() {
        "INSERT INTO campaigns (id, account_id, name, from_email, from_name, reply_to, subject,
             html, text, template_id, template_version, lists, segment_id, exclude_lists, tags,
             ip_pool, track_opens, track_clicks, list_unsubscribe, send_at, time_zone,
             throttle_per_hour, ab_test, installation)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
             $18, $19, $20, $21, $22, $23, $25)"
    } else {
        "UPDATE campaigns SET name = $3, from_email = $4, from_name = $5, reply_to = $6,
             subject = $7, html = $8, text = $9, template_id = $10, template_version = $11,
             lists = $12, segment_id = $13, exclude_lists = $14, tags = $15, ip_pool = $16,
             track_opens = $17, track_clicks = $18, list_unsubscribe = $19, send_at = $20,
             time_zone = $21, throttle_per_hour = $22, ab_test = $23, updated_at = now()
         WHERE id = $1 AND account_id = $2 AND state = $24"
    };
    let stored = sqlx::query(sql)
        .bind(id)
        .bind(account.0)
        .bind(&i.name)
        .bind(&i.from.email)
        .bind(&i.from.name)
        .bind(&i.reply_to)
        .bind(&i.subject)
        .bind(&i.html)
        .bind(&i.text)
        .bind(i.template_id)
        .bind(checked.template_version)
        .bind(&i.audience.lists)
        .bind(i.audience.segment_id)
        .bind(&i.audience.exclude_lists)
        .bind(&i.tags)
        .bind(&i.ip_pool)
        .bind(i.tracking.opens)
        .bind(i.tracking.clicks)
        .bind(i.list_unsubscribe)
        .bind(checked.send_at)
        .bind(&checked.time_zone)
        .bind(i.throttle_per_hour.map(|t| t as i32))
        .bind(i.ab_test.as_ref().map(sqlx::types::Json))
        .bind(expected.map(State::as_str))
        .bind(state.topics.prefix())
        .execute(state.store.pool())
        .await
        .map_err(db_error)?;
    // A change is written only in the state it was checked for: a campaign that began
    // sending (or was cancelled) meanwhile is left as it is.
    if stored.rows_affected() == 0 {
        return Err(ApiError::conflict(
            "the campaign changed state meanwhile; read it and try again",
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<State>,
    pub limit: Option<i64>,
    /// The last id of the previous page.
    pub cursor: Option<Uuid>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    pub data: Vec<Campaign>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<Uuid>,
}

/// `GET /v1/campaigns?state=&limit=&cursor=`: newest first.
pub async fn list(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Page>, ApiError> {
    let account = caller_account(&caller)?;
    let limit = page_limit(query.limit)?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM campaigns
         WHERE account_id = $1 AND ($2::text IS NULL OR state = $2)
           AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(account.0)
    .bind(query.state.map(State::as_str))
    .bind(query.cursor)
    .bind(limit + 1)
    .fetch_all(state.store.pool())
    .await
    .map_err(db_error)?;
    let mut data: Vec<Campaign> = rows.iter().map(from_row).collect();
    let next_cursor = (data.len() as i64 > limit).then(|| {
        data.truncate(limit as usize);
        data.last().map(|c| c.id)
    });
    Ok(Json(Page {
        data,
        next_cursor: next_cursor.flatten(),
    }))
}

/// `GET /v1/campaigns/{id}`.
pub async fn get(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Campaign>, ApiError> {
    let account = caller_account(&caller)?;
    Ok(Json(
        load(&state, account, path_id(&id, "campaign")?).await?,
    ))
}

/// Fields a campaign under way (scheduled, sending, paused) may still change.
const LIVE_FIELDS: &[&str] = &["name", "throttle_per_hour"];

/// `PATCH /v1/campaigns/{id}`: the keys given replace the current ones (`null` clears
/// one). A draft changes freely; a scheduled, sending or paused campaign only its
/// `name` and `throttle_per_hour` (409 otherwise), an ended one nothing.
pub async fn update(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<Map<String, Value>>,
) -> Result<Json<Campaign>, ApiError> {
    let account = caller_account(&caller)?;
    let id = path_id(&id, "campaign")?;
    let current = load(&state, account, id).await?;
    let patch = body.value;
    match current.state {
        State::Draft => {}
        State::Scheduled | State::Sending | State::Paused => {
            if let Some(key) = patch.keys().find(|k| !LIVE_FIELDS.contains(&k.as_str())) {
                return Err(ApiError::conflict(format!(
                    "{key}: a {} campaign changes only its name and throttle_per_hour \
                     (unschedule it first)",
                    current.state.as_str()
                )));
            }
        }
        State::Sent | State::Cancelled => {
            return Err(ApiError::conflict(format!(
                "the campaign is {}: it changes no more",
                current.state.as_str()
            )))
        }
    }
    let mut merged = match serde_json::to_value(&current.input) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    // The pinned template version follows a new template unless one is given.
    if patch.contains_key("template_id") && !patch.contains_key("template_version") {
        merged.remove("template_version");
    }
    for (key, value) in patch {
        merged.insert(key, value);
    }
    if current.state != State::Draft {
        // Under way, the start time is history: not checked again, kept as it is.
        merged.remove("send_at");
    }
    let input: Input = serde_path_to_error::deserialize(Value::Object(merged)).map_err(|e| {
        let field = e.path().to_string();
        ApiError::invalid(field, e.into_inner().to_string())
    })?;
    let mut checked = check(&state, account, input).await?;
    if current.state != State::Draft {
        checked.send_at = current.starts_at;
        checked.input.send_at = current.input.send_at.clone();
    }
    store(&state, account, id, &checked, Some(current.state)).await?;
    Ok(Json(load(&state, account, id).await?))
}

/// `DELETE /v1/campaigns/{id}`: a draft, sent or cancelled campaign (its report goes
/// with it); 409 for one under way.
pub async fn delete(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let account = caller_account(&caller)?;
    let id = path_id(&id, "campaign")?;
    let deleted = sqlx::query(
        "DELETE FROM campaigns WHERE id = $1 AND account_id = $2
           AND state IN ('draft', 'sent', 'cancelled')",
    )
    .bind(id)
    .bind(account.0)
    .execute(state.store.pool())
    .await
    .map_err(db_error)?;
    if deleted.rows_affected() == 1 {
        return Ok(StatusCode::NO_CONTENT);
    }
    let current = load(&state, account, id).await?;
    Err(ApiError::conflict(format!(
        "the campaign is {}: cancel it first",
        current.state.as_str()
    )))
}

/// Moves `id` from one of `from` to `to` with `set` (more SQL assignments). Errors: 404,
/// or 409 naming the state it is in.
async fn transition(
    state: &Campaigns,
    account: AccountId,
    id: Uuid,
    from: &[State],
    to: State,
) -> Result<Campaign, ApiError> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let moved = sqlx::query(
        "UPDATE campaigns SET state = $3, updated_at = now()
         WHERE id = $1 AND account_id = $2 AND state = ANY($4)",
    )
    .bind(id)
    .bind(account.0)
    .bind(to.as_str())
    .bind(&from)
    .execute(state.store.pool())
    .await
    .map_err(db_error)?;
    let campaign = load(state, account, id).await?;
    if moved.rows_affected() == 0 {
        return Err(ApiError::conflict(format!(
            "a {} campaign cannot become {} (only from {})",
            campaign.state.as_str(),
            to.as_str(),
            from.join(" or ")
        )));
    }
    Ok(campaign)
}

/// `POST /v1/campaigns/{id}/schedule`: draft → scheduled. Everything is checked again
/// as of now: the sender, the template, `send_at` in the future, and an audience that
/// matches somebody (422 `empty_audience` otherwise).
pub async fn schedule(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Campaign>, ApiError> {
    let account = caller_account(&caller)?;
    let id = path_id(&id, "campaign")?;
    let current = load(&state, account, id).await?;
    if current.state != State::Draft {
        return Err(ApiError::conflict(format!(
            "a {} campaign cannot be scheduled (only a draft)",
            current.state.as_str()
        )));
    }
    check(&state, account, current.input.clone()).await?;
    content::base(&state, account, &current).await?;
    let count = audience_count(&state, account, &current.input.audience).await?;
    if count == 0 {
        return Err(model::unprocessable(
            "audience",
            "empty_audience",
            "the audience matches nobody now (no active, subscribed, unsuppressed contact)",
        ));
    }
    Ok(Json(
        transition(&state, account, id, &[State::Draft], State::Scheduled).await?,
    ))
}

/// A request's plain transition (`from` → `to`) of campaign `id` (a path segment).
async fn move_by_request(
    state: &Campaigns,
    caller: &Caller,
    id: &str,
    from: State,
    to: State,
) -> Result<Json<Campaign>, ApiError> {
    let account = caller_account(caller)?;
    let id = path_id(id, "campaign")?;
    Ok(Json(transition(state, account, id, &[from], to).await?))
}

/// `POST /v1/campaigns/{id}/unschedule`: scheduled → draft.
pub async fn unschedule(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Campaign>, ApiError> {
    move_by_request(&state, &caller, &id, State::Scheduled, State::Draft).await
}

/// `POST /v1/campaigns/{id}/pause`: sending → paused. The sender takes the campaign's
/// row for each chunk, so once this answers no further chunk is released.
pub async fn pause(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Campaign>, ApiError> {
    move_by_request(&state, &caller, &id, State::Sending, State::Paused).await
}

/// `POST /v1/campaigns/{id}/resume`: paused → sending, from the cursor.
pub async fn resume(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Campaign>, ApiError> {
    move_by_request(&state, &caller, &id, State::Paused, State::Sending).await
}

/// `POST /v1/campaigns/{id}/cancel`: a draft, scheduled, sending or paused campaign
/// ends; every recipient not yet released is counted `not_sent` (and marked so).
pub async fn cancel(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Campaign>, ApiError> {
    let account = caller_account(&caller)?;
    let id = path_id(&id, "campaign")?;
    let mut tx = state.store.pool().begin().await.map_err(db_error)?;
    let row = sqlx::query(
        "SELECT state, cursor FROM campaigns WHERE id = $1 AND account_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(account.0)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_error)?
    .ok_or_else(|| ApiError::not_found("campaign"))?;
    let current = State::parse(row.get("state"));
    if matches!(current, State::Sent | State::Cancelled) {
        return Err(ApiError::conflict(format!(
            "a {} campaign cannot become cancelled",
            current.as_str()
        )));
    }
    let cursor: i64 = row.get("cursor");
    let not_sent = sqlx::query(
        "UPDATE campaign_recipients SET outcome = 'not_sent'
         WHERE campaign_id = $1 AND seq > $2",
    )
    .bind(id)
    .bind(cursor)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?
    .rows_affected() as i64;
    sqlx::query(
        "UPDATE campaigns SET state = 'cancelled', not_sent = $2, finished_at = now(),
             updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(not_sent)
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(Json(load(&state, account, id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WinnerChoice {
    pub variant: String,
}

/// `POST /v1/campaigns/{id}/winner` (`{"variant": "B"}`): while the campaign waits for
/// its A/B test's winner (any metric: the marketer may decide before the wait is over),
/// the rest of the audience gets `variant`. 409 outside the wait (while the test share
/// is still being released, too), 400 for a variant the test lacks.
pub async fn choose_winner(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<WinnerChoice>,
) -> Result<Json<Campaign>, ApiError> {
    let account = caller_account(&caller)?;
    let id = path_id(&id, "campaign")?;
    let current = load(&state, account, id).await?;
    let Some(ab) = &current.input.ab_test else {
        return Err(ApiError::conflict("the campaign has no A/B test"));
    };
    let variant = body.value.variant;
    if !ab.variants.iter().any(|v| v.name == variant) {
        return Err(ApiError::invalid("variant", "the test has no such variant"));
    }
    let figures = crate::stats::variant_figures(&state, account, &current)
        .await
        .map(|f| json!(f))
        .unwrap_or(Value::Null);
    let reason = json!({"chosen_by": "manual", "metric": ab.metric, "figures": figures});
    let moved = sqlx::query(
        "UPDATE campaigns SET winner = $3, winner_reason = $4, phase = 'rest', updated_at = now()
         WHERE id = $1 AND account_id = $2 AND phase = 'waiting'
           AND state IN ('sending', 'paused')",
    )
    .bind(id)
    .bind(account.0)
    .bind(&variant)
    .bind(sqlx::types::Json(reason))
    .execute(state.store.pool())
    .await
    .map_err(db_error)?;
    if moved.rows_affected() == 0 {
        return Err(ApiError::conflict(format!(
            "the campaign is {} ({}): a winner is chosen while it waits for one",
            current.state.as_str(),
            current.phase
        )));
    }
    Ok(Json(load(&state, account, id).await?))
}

/// The SQL condition on `contacts c` for `audience` as of now, with its parameters
/// (`$1` the account): active, subscribed to one of the lists, matching the segment,
/// in no excluded list, and not suppressed by the account.
pub async fn audience_condition(
    state: &Campaigns,
    account: AccountId,
    audience: &model::Audience,
) -> Result<Compiled, ApiError> {
    if audience.lists.is_empty() && audience.segment_id.is_none() {
        // Never "everyone": an audience names lists or a segment (one deleted after
        // scheduling leaves nothing, and the campaign cannot start).
        return Err(ApiError::invalid(
            "audience",
            "name lists or a segment to send to",
        ));
    }
    let mut c = match audience.segment_id {
        Some(segment) => {
            let expression: Option<String> = sqlx::query_scalar(
                "SELECT expression FROM segments WHERE account_id = $1 AND id = $2",
            )
            .bind(account.0)
            .bind(segment)
            .fetch_optional(state.store.pool())
            .await
            .map_err(db_error)?;
            let expression = expression.ok_or_else(|| {
                ApiError::invalid("audience.segment_id", "the segment no longer exists")
            })?;
            sendmill_audiences::segments::api::compiled(&state.audiences, account, &expression)
                .await
                .map_err(|mut e| {
                    e.field = Some("audience.segment_id".into());
                    e
                })?
        }
        None => Compiled {
            clause: "TRUE".into(),
            params: Vec::new(),
        },
    };
    let mut clause = format!(
        "c.status = 'active' AND ({}) AND NOT EXISTS (SELECT 1 FROM suppressions s
           WHERE s.account_id = $1 AND s.email = c.email
             AND (s.expires_at IS NULL OR s.expires_at > now()))",
        c.clause
    );
    for (ids, negate) in [(&audience.lists, false), (&audience.exclude_lists, true)] {
        if ids.is_empty() {
            continue;
        }
        let n = c.next_placeholder();
        c.params
            .push(Param::Texts(ids.iter().map(Uuid::to_string).collect()));
        clause.push_str(&format!(
            " AND {}EXISTS (SELECT 1 FROM list_members m WHERE m.account_id = $1
                AND m.contact_id = c.id AND m.list_id = ANY(${n}::uuid[])
                AND m.state = 'subscribed')",
            if negate { "NOT " } else { "" }
        ));
    }
    c.clause = clause;
    Ok(c)
}

async fn audience_count(
    state: &Campaigns,
    account: AccountId,
    audience: &model::Audience,
) -> Result<i64, ApiError> {
    let c = audience_condition(state, account, audience).await?;
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

/// Up to `limit` audience contacts, in address order (`contact`: that one only, in or
/// out of the audience).
async fn sample(
    state: &Campaigns,
    account: AccountId,
    campaign: &Campaign,
    contact: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Recipient>, ApiError> {
    let rows = match contact {
        Some(id) => sqlx::query(
            "SELECT c.id, c.email, c.name, c.attributes FROM contacts c
             WHERE c.account_id = $1 AND c.id = $2",
        )
        .bind(account.0)
        .bind(id)
        .fetch_all(state.store.pool())
        .await
        .map_err(db_error)?,
        None => {
            let c = audience_condition(state, account, &campaign.input.audience).await?;
            let sql = format!(
                "SELECT c.id, c.email, c.name, c.attributes FROM contacts c
                 WHERE c.account_id = $1 AND {} ORDER BY c.email LIMIT {limit}",
                c.clause
            );
            c.bind(account, sqlx::query(&sql))
                .fetch_all(state.store.pool())
                .await
                .map_err(db_error)?
        }
    };
    if contact.is_some() && rows.is_empty() {
        return Err(ApiError::invalid(
            "contact_id",
            "the account has no such contact",
        ));
    }
    Ok(rows.iter().map(recipient_from_row).collect())
}

pub(crate) fn recipient_from_row(r: &sqlx::postgres::PgRow) -> Recipient {
    let attributes: sqlx::types::Json<Map<String, Value>> = r.get("attributes");
    Recipient {
        contact_id: r.get("id"),
        email: r.get("email"),
        name: r.get("name"),
        attributes: attributes.0,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSend {
    /// Seed addresses that get the test (1 to `max_test_recipients`).
    pub to: Vec<String>,
    /// Whose data the test is rendered with; left out: the audience's first contact.
    #[serde(default)]
    pub contact_id: Option<Uuid>,
    /// The A/B variant to send; left out: every variant (one message each), or the
    /// content without a test.
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TestSent {
    pub to: String,
    pub variant: Option<String>,
    pub message_id: MessageId,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StrictFailure {
    pub contact_id: Uuid,
    pub email: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The part and the missing variable or error, as render would report it.
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TestResult {
    pub sent: Vec<TestSent>,
    /// Audience contacts rendered in strict mode (up to `strict_check_contacts`).
    pub checked: usize,
    /// Those a variable was missing for (the message renders it empty).
    pub strict_failures: Vec<StrictFailure>,
}

/// `POST /v1/campaigns/{id}/test`: sends the campaign to seed addresses on the
/// transactional lane, built exactly as a release builds it (marked with the
/// `sendmill:test` tag and an `X-Sendmill-Test` field, outside the report), and renders
/// it in strict mode for the audience's first contacts to name those a variable is
/// missing for. Errors: 400 `to`, `variant`, `contact_id`; 503 when Kafka does not take
/// it.
pub async fn test_send(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<TestSend>,
) -> Result<Json<TestResult>, ApiError> {
    let account = caller_account(&caller)?;
    let id = path_id(&id, "campaign")?;
    let campaign = load(&state, account, id).await?;
    let input = body.value;
    if input.to.is_empty() || input.to.len() > state.config.max_test_recipients {
        return Err(ApiError::invalid(
            "to",
            format!("1 to {} seed addresses", state.config.max_test_recipients),
        ));
    }
    let mut seeds = Vec::with_capacity(input.to.len());
    for (i, to) in input.to.iter().enumerate() {
        seeds.push(
            sendmill_audiences::contacts::normalise_email(to)
                .map_err(|m| ApiError::invalid(format!("to[{i}]"), m))?,
        );
    }
    let variants = variants_of(&campaign, input.variant.as_deref())?;
    let base = content::base(&state, account, &campaign).await?;
    let who = sample(&state, account, &campaign, input.contact_id, 1).await?;
    let recipient = who.into_iter().next().unwrap_or_else(|| Recipient {
        contact_id: Uuid::nil(),
        email: seeds[0].clone(),
        name: String::new(),
        attributes: Map::new(),
    });
    let mut sent = Vec::new();
    for variant in &variants {
        let content = content::variant(&base, campaign.input.ab_test.as_ref(), variant.as_deref());
        for to in &seeds {
            let message_id = MessageId::generate();
            let record = content::record(
                &state,
                account,
                &campaign,
                &content,
                &recipient,
                message_id,
                Addressing::Test { to },
            );
            crate::sender::produce(&state, &record, "campaigns")
                .await
                .map_err(|error| {
                    tracing::error!(%error, "campaign test send");
                    ApiError::unavailable("the message queue")
                })?;
            sent.push(TestSent {
                to: to.clone(),
                variant: variant.clone(),
                message_id,
            });
        }
    }
    // Strict mode over the audience's first contacts: CPU work, off the runtime.
    let contacts = sample(
        &state,
        account,
        &campaign,
        None,
        state.config.strict_check_contacts,
    )
    .await?;
    let set = content::template_set(&state, account).await?;
    let jobs: Vec<(Option<String>, content::Content)> = variants
        .iter()
        .map(|v| {
            let c = content::variant(&base, campaign.input.ab_test.as_ref(), v.as_deref());
            (v.clone(), c)
        })
        .collect();
    let data: Vec<(Uuid, String, Map<String, Value>)> = contacts
        .iter()
        .map(|r| {
            (
                r.contact_id,
                r.email.clone(),
                content::data(&state, account, r),
            )
        })
        .collect();
    let checked = data.len();
    let strict_failures = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        for (variant, content) in &jobs {
            for (contact_id, email, data) in &data {
                let outcome = match &set {
                    Ok(set) => content::render_with(set, content, data, true).map(drop),
                    Err(e) => Err(e.clone()),
                };
                if let Err(reason) = outcome {
                    failures.push(StrictFailure {
                        contact_id: *contact_id,
                        email: email.clone(),
                        variant: variant.clone(),
                        reason,
                    });
                }
            }
        }
        failures
    })
    .await
    .expect("rendering does not panic");
    Ok(Json(TestResult {
        sent,
        checked,
        strict_failures,
    }))
}

/// The variants a test or preview covers: `named` (checked), or all of them, or none.
fn variants_of(campaign: &Campaign, named: Option<&str>) -> Result<Vec<Option<String>>, ApiError> {
    match (&campaign.input.ab_test, named) {
        (Some(ab), Some(name)) => {
            if ab.variants.iter().any(|v| v.name == name) {
                Ok(vec![Some(name.to_owned())])
            } else {
                Err(ApiError::invalid("variant", "the test has no such variant"))
            }
        }
        (Some(ab), None) => Ok(ab.variants.iter().map(|v| Some(v.name.clone())).collect()),
        (None, Some(_)) => Err(ApiError::invalid("variant", "the campaign has no A/B test")),
        (None, None) => Ok(vec![None]),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewQuery {
    pub contact_id: Option<Uuid>,
    pub variant: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Preview {
    /// The contact rendered for (none: the audience is empty; data is then blank).
    pub contact_id: Option<Uuid>,
    pub email: Option<String>,
    pub variant: Option<String>,
    #[serde(flatten)]
    pub rendered: Option<content::Rendered>,
    /// Why it does not render (a template error), when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/campaigns/{id}/preview?contact_id=&variant=`: subject, HTML and text as
/// render renders them for that contact (default: the audience's first).
pub async fn preview(
    AxState(state): AxState<Campaigns>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<PreviewQuery>,
) -> Result<Json<Preview>, ApiError> {
    let account = caller_account(&caller)?;
    let id = path_id(&id, "campaign")?;
    let campaign = load(&state, account, id).await?;
    let variant = variants_of(&campaign, query.variant.as_deref())?
        .into_iter()
        .next()
        .flatten();
    let base = content::base(&state, account, &campaign).await?;
    let content = content::variant(&base, campaign.input.ab_test.as_ref(), variant.as_deref());
    let who = sample(&state, account, &campaign, query.contact_id, 1)
        .await?
        .into_iter()
        .next();
    let data = who
        .as_ref()
        .map(|r| content::data(&state, account, r))
        .unwrap_or_default();
    let (rendered, error) = match content::render(&state, account, &content, &data, false).await? {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e)),
    };
    Ok(Json(Preview {
        contact_id: who.as_ref().map(|r| r.contact_id),
        email: who.map(|r| r.email),
        variant,
        rendered,
        error,
    }))
}
