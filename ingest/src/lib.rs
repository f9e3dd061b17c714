//! # sendmill-ingest
//!
//! The front door. `POST /v1/messages` authenticates the caller's API key, parses and
//! validates the request completely (nothing is produced for a request with any error),
//! checks that the sender's domain belongs to the account, then writes one
//! [`RequestedV1`] per recipient to the `requested` topic of its lane and an `accepted`
//! event, and answers 202 with a message id per recipient.
//!
//! Transactional mail (no `campaign_id`) and bulk mail travel in separate lanes so a
//! campaign never delays a password reset.
//!
//! ## Layout
//! - [`request`]: the JSON body and its parsing (unknown fields rejected, paths named).
//! - [`validate`]: addresses, header names and values, labels.
//! - [`plan`]: a parsed request becomes validated wire records (pure, no I/O).

pub mod request;
pub mod validate;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, FromRef, State},
    http::{header, HeaderMap, StatusCode},
    middleware,
    routing::post,
    Json, Router,
};
use request::SendRequest;
use sendmill_platform::{
    api::{request_id, ApiError, Authenticator, Caller},
    backoff,
    config::override_string,
    http::ops_router,
    kafka::Producer,
    CancellationToken,
};
use sendmill_store::{Principal, Scope, Store};
use sendmill_wire::{
    payload::domain_of, Attachment, BatchId, EmailAddress, EventType, EventV1, Header, Lane,
    MessageContext, MessageId, RenderOptions, RequestedV1, Topics,
};
use serde::{Deserialize, Serialize};
use std::{sync::Arc, time::Duration};
use time::OffsetDateTime;

/// `[ingest]`: the send API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the API listens on. Env: `SENDMILL_INGEST_LISTEN`.
    pub listen: String,
    /// Largest accepted request body in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most recipients in one request.
    pub max_recipients: usize,
    /// Seconds an API key lookup is cached: a revoked key keeps working at most this long.
    pub auth_cache_secs: u64,
    /// Most bytes of attachments (decoded) in one message. Each recipient's record
    /// carries its own copy, so keep this well below the Kafka message size limit.
    pub max_attachment_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 10 * 1024 * 1024,
            max_recipients: 1000,
            auth_cache_secs: 30,
            max_attachment_bytes: 5 * 1024 * 1024,
        }
    }
}

impl Config {
    pub fn apply_env(&mut self) {
        override_string(&mut self.listen, "INGEST_LISTEN");
    }
}

const MAX_TAGS: usize = 10;
const MAX_METADATA: usize = 32;
const MAX_METADATA_VALUE: usize = 1000;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub auth: Authenticator,
    pub producer: Producer,
    pub topics: Topics,
    pub config: Arc<Config>,
    pub shutdown: CancellationToken,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

impl AppState {
    pub fn new(
        config: Config,
        store: Store,
        producer: Producer,
        topics: Topics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            auth: Authenticator::new(store.clone(), Duration::from_secs(config.auth_cache_secs)),
            store,
            producer,
            topics,
            config: Arc::new(config),
            shutdown,
        }
    }
}

/// The ingest API with its ops endpoints.
pub fn app(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/messages", post(send))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
        .merge(ops_router("ingest"))
        .layer(middleware::from_fn(request_id))
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    sendmill_platform::http::serve("ingest", listener, app(state), shutdown).await
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SendResponse {
    pub batch_id: BatchId,
    pub messages: Vec<AcceptedMessage>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AcceptedMessage {
    pub message_id: MessageId,
    pub to: String,
}

async fn send(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    caller.require(Scope::Send)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the request as Content-Type: application/json",
        ));
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body exceeds {} bytes",
                    state.config.max_body_bytes
                ),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                rejection.body_text(),
            )
        }
    })?;
    let request = SendRequest::parse(&body).map_err(|e| ApiError {
        field: (!e.field.is_empty()).then_some(e.field),
        ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.message)
    })?;
    let messages = plan(&caller.0, request, &state.config, OffsetDateTime::now_utc())?;

    let sender_domain = domain_of(&messages[0].from.email);
    let known = state
        .store
        .sending_domain(caller.0.account_id, &sender_domain)
        .await
        .map_err(|error| {
            tracing::error!(%error, "sending domain lookup failed");
            ApiError::unavailable("the tenant database")
        })?;
    if known.is_none() {
        return Err(ApiError {
            field: Some("from".into()),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_sending_domain",
                format!("{sender_domain} is not a sending domain of this account; add it first"),
            )
        });
    }

    accept(&state, &messages).await?;
    let response = SendResponse {
        batch_id: messages[0].batch_id,
        messages: messages
            .iter()
            .map(|m| AcceptedMessage {
                message_id: m.message_id,
                to: m.to.email.clone(),
            })
            .collect(),
    };
    metrics::counter!("sendmill_ingest_accepted_total").increment(messages.len() as u64);
    Ok((StatusCode::ACCEPTED, Json(response)))
}

/// Writes the records, then their `accepted` events. A record that cannot be written
/// within the deadline fails the request with 503 (the caller retries); events follow
/// the records so that no `accepted` exists for a message that was never queued.
async fn accept(state: &AppState, messages: &[RequestedV1]) -> Result<(), ApiError> {
    let deadline = Duration::from_secs(15);
    let produce = futures::future::try_join_all(messages.iter().map(|m| {
        let key = m.message_id.to_string();
        let topic = state.topics.requested(m.lane);
        async move {
            backoff::until_ok("produce requested", &state.shutdown, || {
                state.producer.send(&topic, &key, m)
            })
            .await
        }
    }));
    match tokio::time::timeout(deadline, produce).await {
        Ok(Ok(_)) => {}
        _ => return Err(ApiError::unavailable("the message queue")),
    }
    let events_topic = state.topics.events();
    let events = futures::future::try_join_all(messages.iter().map(|m| {
        let event = EventV1::new(
            EventType::Accepted,
            "ingest",
            m.message_id,
            m.account_id,
            &m.to.email,
            &m.context,
        );
        let key = m.message_id.to_string();
        let topic = &events_topic;
        async move {
            backoff::until_ok("produce accepted", &state.shutdown, || {
                state.producer.send(topic, &key, &event)
            })
            .await
        }
    }));
    if !matches!(tokio::time::timeout(deadline, events).await, Ok(Ok(_))) {
        // The messages are queued and will be sent; only their `accepted` events are
        // missing from the timeline. Answering 503 would make the caller send twice.
        tracing::error!(
            count = messages.len(),
            "accepted events could not be written"
        );
        metrics::counter!("sendmill_ingest_event_loss_total").increment(messages.len() as u64);
    }
    Ok(())
}

/// Validates a parsed request and turns it into one record per recipient. Pure: the
/// whole request is checked before anything is produced.
pub fn plan(
    principal: &Principal,
    request: SendRequest,
    config: &Config,
    now: OffsetDateTime,
) -> Result<Vec<RequestedV1>, ApiError> {
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
    if request.to.len() > config.max_recipients {
        return Err(ApiError::invalid(
            "to",
            format!("at most {} recipients per request", config.max_recipients),
        ));
    }
    for (i, r) in request.to.iter().enumerate() {
        email(&r.email).map_err(|m| ApiError::invalid(format!("to[{i}].email"), m))?;
        if let Some(name) = &r.name {
            header_text(name, MAX_NAME)
                .map_err(|m| ApiError::invalid(format!("to[{i}].name"), m))?;
        }
        check_metadata(&r.metadata, &format!("to[{i}].metadata"))?;
    }
    if request.subject.trim().is_empty() {
        return Err(ApiError::invalid("subject", "subject is required"));
    }
    header_text(&request.subject, MAX_SUBJECT).map_err(|m| ApiError::invalid("subject", m))?;
    let html = request.html.filter(|h| !h.is_empty());
    let text = request.text.filter(|t| !t.is_empty());
    if html.is_none() && text.is_none() {
        return Err(ApiError::invalid("html", "give html, text or both"));
    }
    for (name, value) in &request.headers {
        header_name(name).map_err(|m| ApiError::invalid(format!("headers.{name}"), m))?;
        header_value(value).map_err(|m| ApiError::invalid(format!("headers.{name}"), m))?;
    }
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
    let batch_id = BatchId::generate();
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
    let headers: Vec<Header> = request
        .headers
        .into_iter()
        .map(|(name, value)| Header { name, value })
        .collect();
    Ok(request
        .to
        .into_iter()
        .map(|r| {
            let mut data = request.data.clone();
            data.extend(r.data);
            let mut metadata = request.metadata.clone();
            metadata.extend(r.metadata);
            RequestedV1 {
                message_id: MessageId::generate(),
                account_id: principal.account_id,
                batch_id,
                lane,
                accepted_at: now,
                from: from.clone(),
                to: EmailAddress {
                    email: r.email,
                    name: r.name,
                },
                reply_to: reply_to.clone(),
                subject: request.subject.clone(),
                html: html.clone(),
                text: text.clone(),
                headers: headers.clone(),
                data,
                context: MessageContext {
                    tags: request.tags.clone(),
                    metadata,
                    campaign_id: request.campaign_id.clone(),
                    ip_pool: request.ip_pool.clone(),
                },
                options: options.clone(),
                attachments: attachments.clone(),
            }
        })
        .collect())
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

fn check_metadata(
    metadata: &std::collections::BTreeMap<String, String>,
    field: &str,
) -> Result<(), ApiError> {
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
    use sendmill_store::AccountSettings;

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
        }
    }

    fn plan_json(principal: &Principal, body: serde_json::Value) -> Vec<RequestedV1> {
        let request = SendRequest::parse(body.to_string().as_bytes()).unwrap();
        plan(
            principal,
            request,
            &Config::default(),
            OffsetDateTime::now_utc(),
        )
        .unwrap()
    }

    #[test]
    fn tracking_follows_the_account_unless_the_message_says_otherwise() {
        let base = serde_json::json!({"from": "a@example.test", "to": ["b@ok.test"], "subject": "s", "text": "t"});
        let on = principal(true, true);
        let planned = plan_json(&on, base.clone());
        assert!(planned[0].options.track_opens && planned[0].options.track_clicks);
        let mut off = base.clone();
        off["track_opens"] = serde_json::json!(false);
        let planned = plan_json(&on, off);
        assert!(!planned[0].options.track_opens && planned[0].options.track_clicks);
        let planned = plan_json(&principal(false, false), base);
        assert!(!planned[0].options.track_opens && !planned[0].options.track_clicks);
    }

    #[test]
    fn campaigns_go_bulk_with_one_click_unsubscribe_by_default() {
        let p = principal(false, false);
        let mut body = serde_json::json!({"from": "a@example.test", "to": ["b@ok.test"], "subject": "s", "text": "t"});
        let planned = plan_json(&p, body.clone());
        assert_eq!(planned[0].lane, Lane::Transactional);
        assert!(!planned[0].options.list_unsubscribe);
        body["campaign_id"] = serde_json::json!("spring");
        let planned = plan_json(&p, body.clone());
        assert_eq!(planned[0].lane, Lane::Bulk);
        assert!(planned[0].options.list_unsubscribe);
        body["list_unsubscribe"] = serde_json::json!(false);
        assert!(!plan_json(&p, body)[0].options.list_unsubscribe);
    }
}
