//! `POST /v1/messages`: from a request to queued (or held, or dropped) messages.
//!
//! Order matters, because a refused request must change nothing: parse, claim the
//! Idempotency-Key, resolve the template, validate everything ([`plan`]), check the
//! sender's domain, the suppression lists and the account's limits, and only then write:
//! held messages to PostgreSQL (`send_at`), the rest to the `requested` topics, then the
//! `accepted` events (and `dropped` for suppressed recipients). Message ids derive from
//! the batch id, so an idempotent replay after a crash queues the same ids again and the
//! dispatcher sends each once.

use crate::{
    body::JsonBody,
    request::{self, SendRequest},
    validate, AppState, Config,
};
use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use sendmill_platform::{
    api::{ApiError, Caller},
    backoff,
    ratelimit::{Admission, Limits},
};
use sendmill_store::{idempotency::Claim, Principal, Scope};
use sendmill_wire::{
    payload::domain_of, Attachment, BatchId, EmailAddress, EventType, EventV1, Header, Lane,
    MessageContext, MessageId, RenderOptions, RequestedV1,
};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};
use time::OffsetDateTime;

const MAX_TAGS: usize = 10;
const MAX_METADATA: usize = 32;
const MAX_METADATA_VALUE: usize = 1000;
/// The header carrying the caller's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What happened to each recipient of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    /// On its way to rendering and delivery.
    Queued,
    /// Held until `send_at`.
    Scheduled,
    /// Sandbox: validated and rendered, not sent.
    Sandbox,
    /// On a suppression list: not sent, ends as `dropped`.
    Suppressed,
    /// Refused: see `reason` and `field`.
    Invalid,
    /// Sandbox: the templates do not render for this recipient.
    RenderFailed,
}

/// How a recipient copy is addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyKind {
    To,
    Cc,
    Bcc,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecipientResult {
    pub to: String,
    pub kind: CopyKind,
    pub status: RecipientStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SendResponse {
    pub batch_id: BatchId,
    /// Recipients queued, held or (sandbox) rendered.
    pub accepted: usize,
    /// Recipients suppressed or refused.
    pub rejected: usize,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub send_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    /// Every recipient copy in request order.
    pub messages: Vec<RecipientResult>,
}

pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: JsonBody<SendRequest>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Send)?;
    let key = idempotency_key(&headers)?;
    let Some(key) = key else {
        let (status, response) = accept_request(
            &state,
            &caller.0,
            body.value,
            BatchId::generate(),
            OffsetDateTime::now_utc(),
        )
        .await
        .map_err(|refused| refused.error)?;
        return Ok((status, Json(response)).into_response());
    };

    let hash: [u8; 32] = sendmill_store::keys::hash_bytes(&body.bytes);
    let account = caller.0.account_id;
    let claim = state
        .store
        .claim_idempotency_key(
            account,
            &key,
            &hash,
            Duration::from_secs(state.config.idempotency_lease_secs),
            Duration::from_secs(state.config.idempotency_retention_secs),
        )
        .await
        .map_err(|error| {
            tracing::error!(%error, "idempotency claim failed");
            ApiError::unavailable("the tenant database")
        })?;
    let batch_id =
        match claim {
            Claim::Owned { batch_id } => batch_id,
            Claim::Replay { status, response } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
                let mut reply = (status, Json(response)).into_response();
                reply
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return Ok(reply);
            }
            Claim::InProgress => return Err(ApiError {
                field: Some("Idempotency-Key".into()),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_in_progress",
                    "a request with this Idempotency-Key is still being processed; retry shortly",
                )
            }),
            Claim::Mismatch => {
                return Err(ApiError {
                    field: Some("Idempotency-Key".into()),
                    ..ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used with a different request body",
                    )
                })
            }
        };
    // The batch's time is when the key was first claimed: a takeover replays it.
    match accept_request(
        &state,
        &caller.0,
        body.value,
        batch_id,
        OffsetDateTime::now_utc(),
    )
    .await
    {
        Ok((status, response)) => {
            let json = serde_json::to_value(&response).expect("responses serialize");
            if let Err(error) = state
                .store
                .complete_idempotency_key(account, &key, status.as_u16(), &json)
                .await
            {
                // The messages are queued; a retry after the lease replays the same ids.
                tracing::error!(%error, "storing the idempotent answer failed");
            }
            Ok((status, Json(json)).into_response())
        }
        Err(refused) => {
            if let Err(error) = state
                .store
                .abandon_idempotency_key(account, &key, !refused.wrote_anything)
                .await
            {
                tracing::error!(%error, "releasing the idempotency key failed");
            }
            Err(refused.error)
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(|v| Some(v.to_owned()))
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })
}

/// A refusal, and whether anything had been written before it (then an idempotency key
/// stays with its batch, so a retry replays the same message ids).
pub struct Refused {
    pub error: ApiError,
    pub wrote_anything: bool,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Refused {
            error,
            wrote_anything: false,
        }
    }
}

async fn accept_request(
    state: &AppState,
    principal: &Principal,
    mut request: SendRequest,
    batch_id: BatchId,
    now: OffsetDateTime,
) -> Result<(StatusCode, SendResponse), Refused> {
    resolve_template(state, principal, &mut request).await?;
    let send_at = schedule_time(request.send_at, now, &state.config)?;
    let sandbox = request.sandbox;
    let mut planned = plan(principal, request, &state.config, now, batch_id)?;
    check_sender(state, principal, &planned).await?;
    mark_suppressed(state, principal, &mut planned).await?;

    let sendable = planned.sendable().count();
    if sendable > 0 && !sandbox {
        admit(state, principal, sendable as u32).await?;
    }
    if sandbox {
        sandbox_render(state, principal, &mut planned).await?;
    } else {
        let initial = if send_at.is_some() {
            RecipientStatus::Scheduled
        } else {
            RecipientStatus::Queued
        };
        for (result, _) in planned.copies.iter_mut() {
            if result.status == RecipientStatus::Queued {
                result.status = initial;
            }
        }
        write(state, &planned, send_at).await?;
    }

    let accepted = planned
        .results()
        .filter(|r| {
            matches!(
                r.status,
                RecipientStatus::Queued | RecipientStatus::Scheduled | RecipientStatus::Sandbox
            )
        })
        .count();
    metrics::counter!("sendmill_ingest_accepted_total").increment(accepted as u64);
    let results: Vec<RecipientResult> = planned.into_results();
    let status = if sandbox {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        SendResponse {
            batch_id,
            accepted,
            rejected: results.len() - accepted,
            send_at: send_at.filter(|_| !sandbox),
            sandbox,
            messages: results,
        },
    ))
}

/// Fills subject and bodies from the stored template the request names.
async fn resolve_template(
    state: &AppState,
    principal: &Principal,
    request: &mut SendRequest,
) -> Result<(), ApiError> {
    let Some(reference) = &request.template else {
        return Ok(());
    };
    if request.subject.is_some() || request.html.is_some() || request.text.is_some() {
        return Err(ApiError::invalid(
            "template",
            "give either template or subject/html/text, not both",
        ));
    }
    let version = state
        .store
        .template_version(principal.account_id, reference.id, reference.version)
        .await
        .map_err(|error| {
            tracing::error!(%error, "template lookup failed");
            ApiError::unavailable("the tenant database")
        })?
        .ok_or_else(|| ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            ..ApiError::invalid("template", "no such template (or version) in this account")
        })?;
    request.subject = Some(version.content.subject);
    request.html = version.content.html;
    request.text = version.content.text;
    Ok(())
}

fn schedule_time(
    send_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
    config: &Config,
) -> Result<Option<OffsetDateTime>, ApiError> {
    let Some(at) = send_at else {
        return Ok(None);
    };
    let limit = Duration::from_secs(config.max_schedule_ahead_secs);
    if at > now + limit {
        return Err(ApiError::invalid(
            "send_at",
            format!("at most {} hours ahead", limit.as_secs() / 3600),
        ));
    }
    // Already due (or in the past): sent now, like any other message.
    Ok((at > now).then_some(at))
}

async fn check_sender(
    state: &AppState,
    principal: &Principal,
    planned: &Planned,
) -> Result<(), ApiError> {
    let sender_domain = domain_of(&planned.from.email);
    if state.senders.allowed(principal.account_id, &sender_domain) {
        return Ok(());
    }
    let domain = state
        .store
        .sending_domain(principal.account_id, &sender_domain)
        .await
        .map_err(|error| {
            tracing::error!(%error, "sending domain lookup failed");
            ApiError::unavailable("the tenant database")
        })?;
    let refuse = |code, message: String| ApiError {
        field: Some("from".into()),
        ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    };
    match domain {
        None => Err(refuse(
            "unknown_sending_domain",
            format!("{sender_domain} is not a sending domain of this account; add it first"),
        )),
        Some(d) if d.verified_at.is_none() && !state.config.allow_unverified_domains => {
            Err(refuse(
                "unverified_sending_domain",
                format!(
                    "{sender_domain} is not verified: publish its DNS records, then POST /v1/domains/{sender_domain}/verify"
                ),
            ))
        }
        Some(_) => {
            state.senders.remember(principal.account_id, &sender_domain);
            Ok(())
        }
    }
}

async fn mark_suppressed(
    state: &AppState,
    principal: &Principal,
    planned: &mut Planned,
) -> Result<(), ApiError> {
    let emails: Vec<String> = planned
        .sendable()
        .map(|(_, r)| r.recipient().to_owned())
        .collect();
    if emails.is_empty() {
        return Ok(());
    }
    let found = state
        .suppressions
        .check(principal.account_id, &emails)
        .await
        .map_err(|error| {
            tracing::error!(%error, "suppression check failed");
            ApiError::unavailable("the suppression list")
        })?;
    let mut found = found.into_iter();
    for (result, record) in planned.copies.iter_mut() {
        if record.is_none() {
            continue;
        }
        if let Some(Some(suppressed)) = found.next() {
            result.status = RecipientStatus::Suppressed;
            result.reason = Some(if suppressed.global {
                format!("suppressed ({}, global list)", suppressed.reason)
            } else {
                format!("suppressed ({})", suppressed.reason)
            });
        }
    }
    Ok(())
}

async fn admit(state: &AppState, principal: &Principal, recipients: u32) -> Result<(), ApiError> {
    let limits = Limits {
        per_sec: principal
            .limits
            .send_rate_per_sec
            .unwrap_or(state.config.default_send_rate_per_sec),
        per_day: principal
            .limits
            .daily_quota
            .unwrap_or(state.config.default_daily_quota),
    };
    let admission = state
        .limiter
        .admit(principal.account_id, limits, recipients)
        .await
        .map_err(|error| {
            tracing::error!(%error, "rate limit check failed");
            ApiError::unavailable("the rate limiter")
        })?;
    let (code, message, retry_after) = match admission {
        Admission::Admitted { .. } => return Ok(()),
        Admission::RateLimited { retry_after } => (
            "rate_limited",
            format!(
                "this account may send {} recipients per second; retry later",
                limits.per_sec
            ),
            retry_after,
        ),
        Admission::QuotaExceeded { retry_after } => (
            "quota_exceeded",
            format!(
                "this account's daily quota of {} recipients is used up",
                limits.per_day
            ),
            retry_after,
        ),
    };
    metrics::counter!("sendmill_ingest_throttled_total", "limit" => code).increment(1);
    Err(ApiError {
        retry_after: Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
        ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
    })
}

/// Sandbox: renders every sendable copy as render would, reporting failures per copy.
async fn sandbox_render(
    state: &AppState,
    principal: &Principal,
    planned: &mut Planned,
) -> Result<(), ApiError> {
    let templates = state
        .templates
        .get(principal.account_id)
        .await
        .map_err(|error| {
            tracing::error!(%error, "partials lookup failed");
            ApiError::unavailable("the tenant database")
        })?;
    for (result, record) in planned.copies.iter_mut() {
        let Some(record) = record else { continue };
        if result.status != RecipientStatus::Queued {
            continue;
        }
        let outcome = match &templates {
            Ok(set) => crate::templates::render_parts(set, record).map(|_| ()),
            Err(partials) => Err(format!("partials: {partials}")),
        };
        match outcome {
            Ok(()) => result.status = RecipientStatus::Sandbox,
            Err(reason) => {
                result.status = RecipientStatus::RenderFailed;
                result.reason = Some(reason);
            }
        }
    }
    Ok(())
}

/// Holds or queues the sendable copies, then writes their events.
async fn write(
    state: &AppState,
    planned: &Planned,
    send_at: Option<OffsetDateTime>,
) -> Result<(), Refused> {
    let sendable: Vec<&RequestedV1> = planned
        .copies
        .iter()
        .filter(|(r, _)| {
            matches!(
                r.status,
                RecipientStatus::Queued | RecipientStatus::Scheduled
            )
        })
        .filter_map(|(_, record)| record.as_ref())
        .collect();
    let deadline = Duration::from_secs(15);
    if let (Some(at), Some(first)) = (send_at, sendable.first()) {
        let payloads: Vec<(MessageId, Vec<u8>)> = sendable
            .iter()
            .map(|r| (r.message_id, sendmill_wire::encode(*r)))
            .collect();
        state
            .store
            .schedule(
                state.topics.prefix(),
                first.account_id,
                first.batch_id,
                at,
                &payloads,
            )
            .await
            .map_err(|error| {
                tracing::error!(%error, "holding scheduled messages failed");
                ApiError::unavailable("the tenant database")
            })?;
    } else if !sendable.is_empty() {
        let produce = futures::future::try_join_all(sendable.iter().map(|m| {
            let key = m.message_id.to_string();
            let topic = state.topics.requested(m.lane);
            async move {
                backoff::until_ok("produce requested", &state.shutdown, || {
                    state.producer.send(&topic, &key, *m)
                })
                .await
            }
        }));
        if !matches!(tokio::time::timeout(deadline, produce).await, Ok(Ok(_))) {
            return Err(Refused {
                error: ApiError::unavailable("the message queue"),
                wrote_anything: true,
            });
        }
    }

    // Events follow the records so that no `accepted` exists for a message never queued.
    let mut events = Vec::new();
    for (result, record) in &planned.copies {
        let Some(record) = record else { continue };
        let event = |event_type| {
            EventV1::new(
                event_type,
                "ingest",
                record.message_id,
                record.account_id,
                record.recipient(),
                &record.context,
            )
        };
        match result.status {
            RecipientStatus::Queued => events.push(event(EventType::Accepted)),
            RecipientStatus::Scheduled => {
                // Held until send_at, silent until then: analytics' outcome watch must
                // not take it for lost (`analytics::outcomes`).
                let mut accepted = event(EventType::Accepted);
                accepted.reason = Some(sendmill_wire::ACCEPTED_SCHEDULED.to_owned());
                events.push(accepted);
            }
            RecipientStatus::Suppressed => {
                events.push(event(EventType::Accepted));
                let mut dropped = event(EventType::Dropped);
                dropped.reason = result.reason.clone();
                events.push(dropped);
            }
            _ => {}
        }
    }
    if !produce_events(state, &events).await {
        // The messages are queued and will be sent; only events are missing from the
        // timeline. Answering 503 would make the caller send twice.
        tracing::error!(count = events.len(), "ingest events could not be written");
        metrics::counter!("sendmill_ingest_event_loss_total").increment(events.len() as u64);
    }
    Ok(())
}

/// Writes `events`, retrying each until acknowledged or 15 s have passed; `false` when
/// some could not be written in time.
pub(crate) async fn produce_events(state: &AppState, events: &[EventV1]) -> bool {
    let topic = state.topics.events();
    let produce = futures::future::try_join_all(events.iter().map(|event| {
        let key = event.message_id.to_string();
        let topic = &topic;
        async move {
            backoff::until_ok("produce event", &state.shutdown, || {
                state.producer.send(topic, &key, event)
            })
            .await
        }
    }));
    matches!(
        tokio::time::timeout(Duration::from_secs(15), produce).await,
        Ok(Ok(_))
    )
}

/// A validated request: per recipient copy, its result and (unless refused) its record.
pub struct Planned {
    pub from: EmailAddress,
    pub copies: Vec<(RecipientResult, Option<RequestedV1>)>,
}

impl Planned {
    fn sendable(&self) -> impl Iterator<Item = (&RecipientResult, &RequestedV1)> {
        self.copies
            .iter()
            .filter(|(r, _)| r.status == RecipientStatus::Queued)
            .filter_map(|(r, record)| record.as_ref().map(|record| (r, record)))
    }

    fn results(&self) -> impl Iterator<Item = &RecipientResult> {
        self.copies.iter().map(|(r, _)| r)
    }

    fn into_results(self) -> Vec<RecipientResult> {
        self.copies.into_iter().map(|(r, _)| r).collect()
    }

    /// The records that would be queued (tests, benchmarks).
    pub fn records(&self) -> Vec<&RequestedV1> {
        self.copies.iter().filter_map(|(_, r)| r.as_ref()).collect()
    }
}

/// Validates a parsed request and turns it into one record per recipient copy. Pure.
/// Request-wide errors refuse the request; an error inside one recipient refuses only
/// that recipient, unless every recipient is refused.
pub fn plan(
    principal: &Principal,
    request: SendRequest,
    config: &Config,
    now: OffsetDateTime,
    batch_id: BatchId,
) -> Result<Planned, ApiError> {
    use validate::*;

    email(&request.from.email).map_err(|m| ApiError::invalid("from", m))?;
    if let Some(name) = &request.from.name {
        header_text(name, MAX_NAME).map_err(|m| ApiError::invalid("from.name", m))?;
    }
    if let Some(reply_to) = &request.reply_to {
        email(&reply_to.email).map_err(|m| ApiError::invalid("reply_to", m))?;
        if let Some(name) = &reply_to.name {
            header_text(name, MAX_NAME).map_err(|m| ApiError::invalid("reply_to.name", m))?;
        }
    }
    if request.to.is_empty() {
        return Err(ApiError::invalid(
            "to",
            "at least one recipient is required",
        ));
    }
    let copies: usize = request
        .to
        .iter()
        .map(|r| 1 + r.cc.len() + r.bcc.len())
        .sum();
    if copies > config.max_recipients {
        return Err(ApiError::invalid(
            "to",
            format!(
                "at most {} recipients (to, cc and bcc together) per request",
                config.max_recipients
            ),
        ));
    }
    let subject = request.subject.clone().unwrap_or_default();
    if subject.trim().is_empty() {
        return Err(ApiError::invalid("subject", "subject is required"));
    }
    header_text(&subject, MAX_SUBJECT).map_err(|m| ApiError::invalid("subject", m))?;
    let html = request.html.filter(|h| !h.is_empty());
    let text = request.text.filter(|t| !t.is_empty());
    if html.is_none() && text.is_none() {
        return Err(ApiError::invalid("html", "give html, text or both"));
    }
    check_headers(&request.headers, "headers")?;
    if request.tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            "tags",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    for (i, tag) in request.tags.iter().enumerate() {
        label(tag).map_err(|m| ApiError::invalid(format!("tags[{i}]"), m))?;
    }
    check_metadata(&request.metadata, "metadata")?;
    if let Some(campaign) = &request.campaign_id {
        label(campaign).map_err(|m| ApiError::invalid("campaign_id", m))?;
    }
    if let Some(pool) = &request.ip_pool {
        label(pool).map_err(|m| ApiError::invalid("ip_pool", m))?;
    }

    let attachments = decode_attachments(&request.attachments, config.max_attachment_bytes)?;
    let lane = if request.campaign_id.is_some() {
        Lane::Bulk
    } else {
        Lane::Transactional
    };
    let settings = &principal.settings;
    let options = RenderOptions {
        strict: request.strict_templates,
        track_opens: request.track_opens.unwrap_or(settings.track_opens),
        track_clicks: request.track_clicks.unwrap_or(settings.track_clicks),
        // Bulk senders must offer one-click unsubscribe (Gmail, Yahoo); others may.
        list_unsubscribe: request.list_unsubscribe.unwrap_or(lane == Lane::Bulk),
    };
    let from = EmailAddress {
        email: request.from.email,
        name: request.from.name,
    };
    let reply_to = request.reply_to.map(|r| EmailAddress {
        email: r.email,
        name: r.name,
    });

    let mut planned = Planned {
        from: from.clone(),
        copies: Vec::with_capacity(copies),
    };
    let mut index: u32 = 0;
    let mut first_error = None;
    for (i, r) in request.to.into_iter().enumerate() {
        let refused = |kind, to: &str, error: ApiError| RecipientResult {
            to: to.to_owned(),
            kind,
            status: RecipientStatus::Invalid,
            message_id: None,
            reason: Some(error.message),
            field: error.field,
        };
        if let Err(error) = check_recipient(i, &r) {
            first_error.get_or_insert_with(|| error.clone());
            // Every copy of a refused recipient is refused with it.
            planned
                .copies
                .push((refused(CopyKind::To, &r.email, error.clone()), None));
            for m in &r.cc {
                planned
                    .copies
                    .push((refused(CopyKind::Cc, &m.email, error.clone()), None));
            }
            for m in &r.bcc {
                planned
                    .copies
                    .push((refused(CopyKind::Bcc, &m.email, error.clone()), None));
            }
            continue;
        }
        let mut data = request.data.clone();
        data.extend(r.data);
        let mut metadata = request.metadata.clone();
        metadata.extend(r.metadata);
        let mut headers = request.headers.clone();
        headers.extend(r.headers);
        let headers: Vec<Header> = headers
            .into_iter()
            .map(|(name, value)| Header { name, value })
            .collect();
        let to = EmailAddress {
            email: r.email,
            name: r.name,
        };
        let cc: Vec<EmailAddress> =
            r.cc.iter()
                .map(|m| EmailAddress {
                    email: m.email.clone(),
                    name: m.name.clone(),
                })
                .collect();
        let envelopes = std::iter::once((CopyKind::To, None))
            .chain(r.cc.iter().map(|m| (CopyKind::Cc, Some(m.email.clone()))))
            .chain(r.bcc.iter().map(|m| (CopyKind::Bcc, Some(m.email.clone()))));
        for (kind, envelope_to) in envelopes {
            let message_id = MessageId::derive(batch_id, index);
            index += 1;
            let record = RequestedV1 {
                message_id,
                account_id: principal.account_id,
                batch_id,
                lane,
                accepted_at: now,
                from: from.clone(),
                to: to.clone(),
                cc: cc.clone(),
                envelope_to,
                reply_to: reply_to.clone(),
                subject: subject.clone(),
                html: html.clone(),
                text: text.clone(),
                headers: headers.clone(),
                data: data.clone(),
                context: MessageContext {
                    tags: request.tags.clone(),
                    metadata: metadata.clone(),
                    campaign_id: request.campaign_id.clone(),
                    ip_pool: request.ip_pool.clone(),
                },
                options: options.clone(),
                attachments: attachments.clone(),
            };
            let result = RecipientResult {
                to: record.recipient().to_owned(),
                kind,
                status: RecipientStatus::Queued,
                message_id: Some(message_id),
                reason: None,
                field: None,
            };
            planned.copies.push((result, Some(record)));
        }
    }
    if planned.records().is_empty() {
        return Err(first_error.unwrap_or_else(|| ApiError::invalid("to", "no valid recipient")));
    }
    Ok(planned)
}

/// Everything inside one `to` entry: its address, name, copies, data and headers.
fn check_recipient(i: usize, r: &request::Recipient) -> Result<(), ApiError> {
    use validate::*;
    email(&r.email).map_err(|m| ApiError::invalid(format!("to[{i}].email"), m))?;
    if let Some(name) = &r.name {
        header_text(name, MAX_NAME).map_err(|m| ApiError::invalid(format!("to[{i}].name"), m))?;
    }
    for (list, mailboxes) in [("cc", &r.cc), ("bcc", &r.bcc)] {
        for (j, m) in mailboxes.iter().enumerate() {
            email(&m.email)
                .map_err(|msg| ApiError::invalid(format!("to[{i}].{list}[{j}].email"), msg))?;
            if let Some(name) = &m.name {
                header_text(name, MAX_NAME)
                    .map_err(|msg| ApiError::invalid(format!("to[{i}].{list}[{j}].name"), msg))?;
            }
        }
    }
    check_metadata(&r.metadata, &format!("to[{i}].metadata"))?;
    check_headers(&r.headers, &format!("to[{i}].headers"))
}

fn check_headers(headers: &BTreeMap<String, String>, field: &str) -> Result<(), ApiError> {
    for (name, value) in headers {
        validate::header_name(name).map_err(|m| ApiError::invalid(format!("{field}.{name}"), m))?;
        validate::header_value(value)
            .map_err(|m| ApiError::invalid(format!("{field}.{name}"), m))?;
    }
    Ok(())
}

fn decode_attachments(
    inputs: &[request::AttachmentInput],
    max_bytes: usize,
) -> Result<Vec<Attachment>, ApiError> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let mut total = 0;
    let mut attachments = Vec::with_capacity(inputs.len());
    for (i, a) in inputs.iter().enumerate() {
        let field = |name: &str| format!("attachments[{i}].{name}");
        validate::filename(&a.filename).map_err(|m| ApiError::invalid(field("filename"), m))?;
        validate::content_type(&a.content_type)
            .map_err(|m| ApiError::invalid(field("content_type"), m))?;
        if let Some(cid) = &a.content_id {
            validate::content_id(cid).map_err(|m| ApiError::invalid(field("content_id"), m))?;
        }
        // Line breaks are common in base64 from other tools; they carry nothing.
        let compact: String = a.content.split_ascii_whitespace().collect();
        let content = STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| ApiError::invalid(field("content"), "content is not valid base64"))?;
        total += content.len();
        if total > max_bytes {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                ..ApiError::invalid(
                    "attachments",
                    format!("attachments exceed {max_bytes} bytes in total"),
                )
            });
        }
        attachments.push(Attachment {
            filename: a.filename.clone(),
            content_type: a.content_type.to_ascii_lowercase(),
            content,
            content_id: a.content_id.clone(),
        });
    }
    Ok(attachments)
}

fn check_metadata(metadata: &BTreeMap<String, String>, field: &str) -> Result<(), ApiError> {
    if metadata.len() > MAX_METADATA {
        return Err(ApiError::invalid(
            field,
            format!("at most {MAX_METADATA} metadata keys"),
        ));
    }
    for (key, value) in metadata {
        validate::label(key).map_err(|m| ApiError::invalid(format!("{field}.{key}"), m))?;
        validate::header_text(value, MAX_METADATA_VALUE)
            .map_err(|m| ApiError::invalid(format!("{field}.{key}"), m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sendmill_store::{AccountLimits, AccountSettings};

    fn principal(track_opens: bool, track_clicks: bool) -> Principal {
        Principal {
            account_id: sendmill_wire::AccountId::generate(),
            key_id: uuid::Uuid::now_v7(),
            key_prefix: "sm_test".into(),
            scopes: vec![Scope::Send],
            settings: AccountSettings {
                track_opens,
                track_clicks,
            },
            operator: false,
            limits: AccountLimits::default(),
        }
    }

    fn plan_json(principal: &Principal, body: serde_json::Value) -> Result<Planned, ApiError> {
        let request = SendRequest::parse(body.to_string().as_bytes()).unwrap();
        plan(
            principal,
            request,
            &Config::default(),
            OffsetDateTime::now_utc(),
            BatchId::generate(),
        )
    }

    fn records(principal: &Principal, body: serde_json::Value) -> Vec<RequestedV1> {
        plan_json(principal, body)
            .unwrap()
            .records()
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn tracking_follows_the_account_unless_the_message_says_otherwise() {
        let base = serde_json::json!({"from": "a@example.test", "to": ["b@ok.test"], "subject": "s", "text": "t"});
        let on = principal(true, true);
        let planned = records(&on, base.clone());
        assert!(planned[0].options.track_opens && planned[0].options.track_clicks);
        let mut off = base.clone();
        off["track_opens"] = serde_json::json!(false);
        let planned = records(&on, off);
        assert!(!planned[0].options.track_opens && planned[0].options.track_clicks);
        let planned = records(&principal(false, false), base);
        assert!(!planned[0].options.track_opens && !planned[0].options.track_clicks);
    }

    #[test]
    fn campaigns_go_bulk_with_one_click_unsubscribe_by_default() {
        let p = principal(false, false);
        let mut body = serde_json::json!({"from": "a@example.test", "to": ["b@ok.test"], "subject": "s", "text": "t"});
        let planned = records(&p, body.clone());
        assert_eq!(planned[0].lane, Lane::Transactional);
        assert!(!planned[0].options.list_unsubscribe);
        body["campaign_id"] = serde_json::json!("spring");
        let planned = records(&p, body.clone());
        assert_eq!(planned[0].lane, Lane::Bulk);
        assert!(planned[0].options.list_unsubscribe);
        body["list_unsubscribe"] = serde_json::json!(false);
        assert!(!records(&p, body)[0].options.list_unsubscribe);
    }

    #[test]
    fn cc_and_bcc_get_their_own_copies_and_only_cc_is_shown() {
        let p = principal(false, false);
        let body = serde_json::json!({"from": "a@example.test", "subject": "s", "text": "t",
            "to": [{"email": "b@ok.test", "cc": ["Carol <c@ok.test>"], "bcc": ["d@ok.test"],
                    "headers": {"X-Per-Recipient": "1"}}]});
        let planned = records(&p, body);
        let envelope: Vec<&str> = planned.iter().map(|r| r.recipient()).collect();
        assert_eq!(envelope, ["b@ok.test", "c@ok.test", "d@ok.test"]);
        for r in &planned {
            assert_eq!(r.to.email, "b@ok.test");
            assert_eq!(r.cc.len(), 1);
            assert_eq!(r.headers[0].name, "X-Per-Recipient");
        }
        let ids: std::collections::HashSet<_> = planned.iter().map(|r| r.message_id).collect();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn one_bad_recipient_is_refused_alone_but_all_bad_refuses_the_request() {
        let p = principal(false, false);
        let body = serde_json::json!({"from": "a@example.test", "subject": "s", "text": "t",
            "to": ["good@ok.test", "not an address", {"email": "x@ok.test", "cc": ["bad"]}]});
        let planned = plan_json(&p, body).unwrap();
        let statuses: Vec<_> = planned
            .results()
            .map(|r| (r.status, r.field.clone()))
            .collect();
        assert_eq!(statuses[0], (RecipientStatus::Queued, None));
        assert_eq!(
            statuses[1],
            (RecipientStatus::Invalid, Some("to[1].email".into()))
        );
        assert_eq!(
            statuses[2],
            (RecipientStatus::Invalid, Some("to[2].cc[0].email".into()))
        );
        let body = serde_json::json!({"from": "a@example.test", "subject": "s", "text": "t", "to": ["nope"]});
        let error = plan_json(&p, body).err().expect("refused");
        assert_eq!(error.field.as_deref(), Some("to[0].email"));
    }

    #[test]
    fn a_replayed_batch_derives_the_same_message_ids() {
        let p = principal(false, false);
        let body = serde_json::json!({"from": "a@example.test", "to": ["b@ok.test", "c@ok.test"], "subject": "s", "text": "t"});
        let batch = BatchId::generate();
        let ids = |body: &serde_json::Value| -> Vec<MessageId> {
            let request = SendRequest::parse(body.to_string().as_bytes()).unwrap();
            plan(
                &p,
                request,
                &Config::default(),
                OffsetDateTime::now_utc(),
                batch,
            )
            .unwrap()
            .records()
            .iter()
            .map(|r| r.message_id)
            .collect()
        };
        assert_eq!(ids(&body), ids(&body));
    }
}
