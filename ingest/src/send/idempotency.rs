//! The `Idempotency-Key` of `POST /v1/messages` (the IETF httpapi draft's header, as
//! Stripe and SendGrid use it): the first request with a key claims it in PostgreSQL for a
//! lease and gets a batch id; a retry with the same key and body gets the stored answer
//! again (`Idempotent-Replayed: true`), one with another body a 422, one while the first
//! is still running a 409. A refusal that wrote nothing releases the key; one that wrote
//! something keeps it with its batch, so a retry replays the same message ids.

use super::{Refused, SendResponse};
use crate::AppState;
use axum::{
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use sendmill_platform::api::ApiError;
use sendmill_store::idempotency::Claim;
use sendmill_wire::{AccountId, BatchId};
use std::future::Future;

/// The header carrying the caller's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The request's key: `None` without the header; a 400 naming `Idempotency-Key` when it is
/// not 1 to 255 visible ASCII characters.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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

/// An answer to a request: its status and body, and whether it is an earlier request's
/// answer replayed.
pub struct Answer {
    pub status: StatusCode,
    pub body: AnswerBody,
    pub replayed: bool,
}

/// The body of an [`Answer`]: the request's own (serialized only when sent), or JSON
/// already (stored for an `Idempotency-Key`, or replayed from there).
pub enum AnswerBody {
    Fresh(SendResponse),
    Json(serde_json::Value),
}

impl Answer {
    /// The batch id the answer names.
    pub fn batch_id(&self) -> Option<String> {
        match &self.body {
            AnswerBody::Fresh(response) => Some(response.batch_id.to_string()),
            AnswerBody::Json(json) => json["batch_id"].as_str().map(str::to_owned),
        }
    }

    /// The native API's response: the body as JSON, `Idempotent-Replayed: true` on a
    /// replay.
    pub fn into_response(self) -> Response {
        let mut reply = match self.body {
            AnswerBody::Fresh(response) => (self.status, Json(response)).into_response(),
            AnswerBody::Json(json) => (self.status, Json(json)).into_response(),
        };
        if self.replayed {
            reply
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        reply
    }
}

/// Runs `accept` once for `key` (see the module doc): `hash` is the SHA-256 of the request
/// body. Answers what `accept` answered, or the stored answer of an earlier request.
pub async fn once<F, Fut>(
    state: &AppState,
    account: AccountId,
    key: &str,
    hash: &[u8; 32],
    accept: F,
) -> Result<Answer, ApiError>
where
    F: FnOnce(BatchId) -> Fut,
    Fut: Future<Output = Result<(StatusCode, SendResponse), Refused>>,
{
    let claim = state
        .store
        .claim_idempotency_key(
            account,
            key,
            hash,
            state.config.idempotency_lease,
            state.config.idempotency_retention,
        )
        .await
        .map_err(ApiError::from)?;
    let batch_id =
        match claim {
            Claim::Owned { batch_id } => batch_id,
            Claim::Replay { status, response } => {
                return Ok(Answer {
                    status: StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED),
                    body: AnswerBody::Json(response),
                    replayed: true,
                })
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
    match accept(batch_id).await {
        Ok((status, response)) => {
            let json = serde_json::to_value(&response).expect("responses serialize");
            if let Err(error) = state
                .store
                .complete_idempotency_key(account, key, status.as_u16(), &json)
                .await
            {
                // The messages are queued; a retry after the lease replays the same ids.
                tracing::error!(%error, "storing the idempotent answer failed");
            }
            Ok(Answer {
                status,
                body: AnswerBody::Json(json),
                replayed: false,
            })
        }
        Err(refused) => {
            if let Err(error) = state
                .store
                .abandon_idempotency_key(account, key, !refused.wrote_anything)
                .await
            {
                tracing::error!(%error, "releasing the idempotency key failed");
            }
            Err(refused.error)
        }
    }
}
