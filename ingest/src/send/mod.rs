//! `POST /v1/messages`: from a request to queued (or held, or dropped) messages.
//!
//! Order matters, because a refused request must change nothing: parse, claim the
//! Idempotency-Key, resolve the template, validate everything ([`plan`]), check the
//! sender's domain, the suppression lists and the account's limits, and only then write:
//! held messages to PostgreSQL (`send_at`), the rest to the `requested` topics, then the
//! `accepted` events (and `dropped` for suppressed recipients). Message ids derive from
//! the batch id, so an idempotent replay after a crash queues the same ids again and the
//! dispatcher sends each once.
//!
//! ## Rooms
//! - this module: the handler and the accept sequence (template, plan, sender, suppressions,
//!   limits, write), and the answer's types;
//! - [`idempotency`]: the `Idempotency-Key` claim, replay and release around it;
//! - [`plan`]: validation and records, pure;
//! - [`crate::queue`]: the Kafka and PostgreSQL writes.

mod idempotency;
pub mod plan;

pub use idempotency::{Answer, AnswerBody, IDEMPOTENCY_KEY};
pub use plan::{plan, Planned};

use crate::{body::JsonBody, queue, request::SendRequest, AppState};
use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use sendmill_platform::api::ApiError;
use sendmill_store::{Principal, Scope};
use sendmill_tenancy::{
    auth::Caller,
    ratelimit::{Admission, Limits},
};
use sendmill_wire::{payload::domain_of, BatchId, MessageId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

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
    /// When a held copy is released (`scheduled`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub send_at: Option<OffsetDateTime>,
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
    Ok(
        send_once(&state, &caller.0, &headers, &body.bytes, body.value)
            .await?
            .into_response(),
    )
}

/// Accepts `request` (whose body was `bytes`) for `principal`, once per
/// `Idempotency-Key` when `headers` carry one: the front door of every send API (the
/// native one and the drop-ins of [`crate::compat`]).
pub async fn send_once(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    bytes: &[u8],
    request: SendRequest,
) -> Result<Answer, ApiError> {
    let key = idempotency::key(headers)?;
    // The batch's time is when the request is accepted: a takeover replays the batch id.
    let accept = |batch_id| {
        accept_request(
            state,
            principal,
            request,
            batch_id,
            OffsetDateTime::now_utc(),
        )
    };
    match key {
        None => {
            let (status, response) = accept(BatchId::generate())
                .await
                .map_err(|refused| refused.error)?;
            Ok(Answer {
                status,
                body: AnswerBody::Fresh(response),
                replayed: false,
            })
        }
        Some(key) => {
            // The body's fingerprint tells a retry from a different request under the
            // same key; without a key nothing compares it (it was 2.5 % of ingest's CPU
            // under `bench ingest`, perf).
            let hash = sendmill_store::keys::hash_bytes(bytes);
            idempotency::once(state, principal.account_id, &key, &hash, accept).await
        }
    }
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
    let sandbox = request.sandbox;
    let mut planned = plan(principal, request, &state.config, now, batch_id)?;
    // The request's own time, for the answer (each copy has its own, maybe another).
    let send_at = planned.send_at;
    check_sender(state, principal, &planned.from.email).await?;
    mark_suppressed(state, principal, &mut planned).await?;

    let sendable = planned.sendable().count();
    if sendable > 0 && !sandbox {
        admit(state, principal, sendable as u32).await?;
    }
    if sandbox {
        sandbox_render(state, principal, &mut planned).await?;
    } else {
        for (result, _) in planned.copies.iter_mut() {
            if result.status == RecipientStatus::Queued && result.send_at.is_some() {
                result.status = RecipientStatus::Scheduled;
            }
        }
        queue::write(state, &planned).await?;
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
    metrics::counter!(crate::metric::INGEST_ACCEPTED_TOTAL).increment(accepted as u64);
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
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            ..ApiError::invalid("template", "no such template (or version) in this account")
        })?;
    request.subject = Some(version.content.subject);
    request.html = version.content.html;
    request.text = version.content.text;
    Ok(())
}

/// Whether `from` is on a sending domain of the account that may send (verified, unless
/// `allow_unverified_domains`): a 422 naming `from` when not.
pub(crate) async fn check_sender(
    state: &AppState,
    principal: &Principal,
    from: &str,
) -> Result<(), ApiError> {
    let sender_domain = domain_of(from);
    if state.senders.allowed(principal.account_id, &sender_domain) {
        return Ok(());
    }
    let domain = state
        .store
        .sending_domain(principal.account_id, &sender_domain)
        .await
        .map_err(ApiError::from)?;
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

pub(crate) async fn mark_suppressed(
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

/// Takes `recipients` from the account's rate limit and daily quota: a 429
/// (`rate_limited` or `quota_exceeded`, with Retry-After) when they do not allow it.
pub(crate) async fn admit(
    state: &AppState,
    principal: &Principal,
    recipients: u32,
) -> Result<(), ApiError> {
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
    metrics::counter!(crate::metric::INGEST_THROTTLED_TOTAL, "limit" => code).increment(1);
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
        .map_err(ApiError::from)?;
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
