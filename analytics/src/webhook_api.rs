//! `/v1/webhooks`: an account's endpoints (create, list, change, delete), their signing
//! secret, recent attempts, deliveries by status (the dead-letter queue is `dead`), and
//! replaying the dead-letter queue. Every query is scoped to the caller's account; an
//! endpoint of another account is "not found".

use crate::AppState;
use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use sendmill_platform::{
    api::ApiError,
    body::{JsonBody, QueryParams},
};
use sendmill_store::{
    webhooks::{Attempt, Delivery, Endpoint, EndpointChange, Verification, WebhookFormat},
    Scope,
};
use sendmill_tenancy::auth::Caller;
use sendmill_wire::EventType;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};
use uuid::Uuid;

const MAX_URL_LEN: usize = 2_048;
const MAX_DESCRIPTION_LEN: usize = 256;
const MAX_BATCH: i32 = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    pub url: String,
    #[serde(default)]
    pub description: String,
    /// Event types to deliver; empty or absent: every type.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Events per request at most (1-1000, default 100).
    pub max_batch: Option<i32>,
    /// `standard` (Standard Webhooks) or `sendgrid` (SendGrid's Event Webhook format and
    /// ECDSA signature, so existing SendGrid receivers keep working).
    #[serde(default)]
    pub format: WebhookFormat,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeEndpoint {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub max_batch: Option<i32>,
}

#[derive(Debug, Serialize)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// What verifies the requests: the secret (Standard Webhooks) or the public key
    /// (`sendgrid`).
    #[serde(flatten)]
    pub verification: Secret,
}

#[derive(Debug, Serialize)]
pub struct List<T> {
    pub data: Vec<T>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// `pending`, `delivered` or `dead` (default).
    pub status: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    /// RFC 3339: replay dead-lettered events that happened since then.
    pub since: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Replayed {
    pub replayed: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Secret {
    /// The signing secret for the Standard Webhooks libraries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A `sendgrid` endpoint's ECDSA P-256 public key (base64 DER), for SendGrid's
    /// `EventWebhook` verification helpers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

impl From<Verification> for Secret {
    fn from(v: Verification) -> Self {
        match v {
            Verification::Secret(secret) => Secret {
                secret: Some(secret),
                public_key: None,
            },
            Verification::PublicKey(key) => Secret {
                secret: None,
                public_key: Some(key),
            },
        }
    }
}

fn endpoint_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("webhook"))
}

/// A URL the platform may post to: http(s), a host, and, unless private destinations
/// are allowed, not an internal address ([`sendmill_platform::dns::is_internal`]) or a
/// name reserved for local hosts. Names are checked again, resolved, at every
/// connection (`webhooks::http_client`).
fn check_url(url: &str, allow_private: bool) -> Result<(), ApiError> {
    let bad = |m: &str| ApiError::invalid("url", m);
    if url.len() > MAX_URL_LEN {
        return Err(bad("is longer than 2048 characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| bad("is not a URL"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(bad("must be http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    let Some(host) = parsed.host() else {
        return Err(bad("has no host"));
    };
    if allow_private {
        return Ok(());
    }
    let private = match host {
        url::Host::Domain(name) => {
            let name = name.to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost") || name.ends_with(".internal")
        }
        url::Host::Ipv4(ip) => sendmill_platform::dns::is_internal(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => sendmill_platform::dns::is_internal(IpAddr::V6(ip)),
    };
    if private {
        return Err(bad("must not point at a private or loopback address"));
    }
    Ok(())
}

fn check_event_types(types: &[String]) -> Result<(), ApiError> {
    for (i, t) in types.iter().enumerate() {
        if !EventType::ALL.iter().any(|known| known.as_str() == t) {
            return Err(ApiError::invalid(
                format!("event_types[{i}]"),
                "not an event type",
            ));
        }
    }
    Ok(())
}

fn check_common(
    description: Option<&str>,
    event_types: Option<&[String]>,
    max_batch: Option<i32>,
) -> Result<(), ApiError> {
    if description.is_some_and(|d| d.len() > MAX_DESCRIPTION_LEN) {
        return Err(ApiError::invalid("description", "is longer than 256 bytes"));
    }
    if let Some(types) = event_types {
        check_event_types(types)?;
    }
    if max_batch.is_some_and(|b| !(1..=MAX_BATCH).contains(&b)) {
        return Err(ApiError::invalid("max_batch", "must be 1-1000"));
    }
    Ok(())
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateEndpoint>,
) -> Result<(StatusCode, Json<CreatedEndpoint>), ApiError> {
    caller.require(Scope::Webhooks)?;
    let input = body.value;
    check_url(&input.url, state.webhooks.allow_private_destinations)?;
    check_common(
        Some(&input.description),
        Some(&input.event_types),
        input.max_batch,
    )?;
    let (endpoint, verification) = state
        .store
        .create_webhook(
            caller.0.account_id,
            &input.url,
            &input.description,
            &input.event_types,
            input.max_batch.unwrap_or(100),
            input.format,
        )
        .await
        .map_err(ApiError::from)?;
    state.webhook_targets.forget(caller.0.account_id);
    Ok((
        StatusCode::CREATED,
        Json(CreatedEndpoint {
            endpoint,
            verification: verification.into(),
        }),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<List<Endpoint>>, ApiError> {
    caller.require(Scope::Webhooks)?;
    let data = state
        .store
        .webhooks(caller.0.account_id)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(List { data }))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    caller.require(Scope::Webhooks)?;
    state
        .store
        .webhook(caller.0.account_id, endpoint_id(&id)?)
        .await
        .map_err(ApiError::from)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("webhook"))
}

pub async fn change(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<ChangeEndpoint>,
) -> Result<Json<Endpoint>, ApiError> {
    caller.require(Scope::Webhooks)?;
    let id = endpoint_id(&id)?;
    let input = body.value;
    if let Some(url) = &input.url {
        check_url(url, state.webhooks.allow_private_destinations)?;
    }
    check_common(
        input.description.as_deref(),
        input.event_types.as_deref(),
        input.max_batch,
    )?;
    let change = EndpointChange {
        url: input.url,
        description: input.description,
        event_types: input.event_types,
        enabled: input.enabled,
        max_batch: input.max_batch,
    };
    let endpoint = state
        .store
        .update_webhook(caller.0.account_id, id, &change)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    state.webhook_targets.forget(caller.0.account_id);
    Ok(Json(endpoint))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Webhooks)?;
    let deleted = state
        .store
        .delete_webhook(caller.0.account_id, endpoint_id(&id)?)
        .await
        .map_err(ApiError::from)?;
    state.webhook_targets.forget(caller.0.account_id);
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook"))
    }
}

pub async fn secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Secret>, ApiError> {
    caller.require(Scope::Webhooks)?;
    state
        .store
        .webhook_secret(caller.0.account_id, endpoint_id(&id)?)
        .await
        .map_err(ApiError::from)?
        .map(|verification| Json(Secret::from(verification)))
        .ok_or_else(|| ApiError::not_found("webhook"))
}

fn limit(raw: Option<i64>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(100),
        Some(n) if (1..=1_000).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid("limit", "must be 1-1000")),
    }
}

/// Checks the endpoint is the caller's, so an empty list means "none yet", not "not
/// yours".
async fn owned(state: &AppState, caller: &Caller, id: Uuid) -> Result<(), ApiError> {
    match state.store.owns_webhook(caller.0.account_id, id).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::not_found("webhook")),
        Err(error) => Err(error.into()),
    }
}

pub async fn attempts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<LimitQuery>,
) -> Result<Json<List<Attempt>>, ApiError> {
    caller.require(Scope::Webhooks)?;
    let id = endpoint_id(&id)?;
    let limit = limit(query.limit)?;
    owned(&state, &caller, id).await?;
    let data = state
        .store
        .webhook_attempts(caller.0.account_id, id, limit)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(List { data }))
}

pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<DeliveriesQuery>,
) -> Result<Json<List<Delivery>>, ApiError> {
    caller.require(Scope::Webhooks)?;
    let id = endpoint_id(&id)?;
    let status = query.status.as_deref().unwrap_or("dead");
    if !matches!(status, "pending" | "delivered" | "dead") {
        return Err(ApiError::invalid(
            "status",
            "must be pending, delivered or dead",
        ));
    }
    let limit = limit(query.limit)?;
    owned(&state, &caller, id).await?;
    let data = state
        .store
        .webhook_deliveries(caller.0.account_id, id, status, limit)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(List { data }))
}

pub async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<ReplayQuery>,
) -> Result<Json<Replayed>, ApiError> {
    caller.require(Scope::Webhooks)?;
    let id = endpoint_id(&id)?;
    let since = OffsetDateTime::parse(&query.since, &Rfc3339)
        .map_err(|_| ApiError::invalid("since", "must be an RFC 3339 time"))?;
    let replayed = state
        .store
        .replay_webhook(caller.0.account_id, id, since)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    state.wake_webhooks.notify_one();
    Ok(Json(Replayed { replayed }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_public_http_unless_allowed() {
        assert!(check_url("https://hooks.example.com/x", false).is_ok());
        for bad in [
            "ftp://example.com/",
            "not a url",
            "https://user:pw@example.com/",
            "http://127.0.0.1:8080/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[::ffff:192.168.0.1]/",
            "http://localhost:9000/",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:8080/", true).is_ok());
        assert!(check_url("ftp://127.0.0.1/", true).is_err());
    }

    #[test]
    fn only_known_event_types_and_sane_batches() {
        assert!(check_common(
            None,
            Some(&["delivered".into(), "bounced".into()]),
            Some(10)
        )
        .is_ok());
        let e = check_common(None, Some(&["delivered".into(), "nope".into()]), None).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("event_types[1]"));
        assert!(check_common(None, None, Some(0)).is_err());
        assert!(check_common(None, None, Some(1_001)).is_err());
    }
}
