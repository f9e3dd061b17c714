//! Scheduled sending. Messages with a future `send_at` wait in PostgreSQL; the releaser
//! (one per ingest process, sharing rows through `SKIP LOCKED`) produces each when due
//! and marks it released in the same transaction, committed only after the broker took
//! the record. `DELETE /v1/messages/{id}` and `DELETE /v1/batches/{id}` cancel pending
//! messages, each ending with a `dropped` event; a message already released is past
//! cancelling (409).

use crate::AppState;
use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use sendmill_platform::{
    api::ApiError,
    kafka::{
        blobs::{Blob, BlobReader, BlobUnavailable},
        ProduceError, Producer,
    },
    CancellationToken,
};
use sendmill_store::{
    held::Held,
    schedule::{CancelTarget, ScheduledMessage},
    Scope, Store, StoreError,
};
use sendmill_tenancy::auth::Caller;
use sendmill_wire::{BatchId, EventType, EventV1, MessageId, RequestedV1, Topics};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Due messages taken per transaction.
const RELEASE_BATCH: u32 = 500;

#[derive(Debug, Serialize, Deserialize)]
pub struct Cancelled {
    /// Messages cancelled by this call.
    pub cancelled: usize,
    /// Messages of the target already released (too late to cancel).
    pub already_released: usize,
}

pub async fn cancel_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Cancelled>, ApiError> {
    caller.require(Scope::Send)?;
    let id: MessageId = id
        .parse()
        .map_err(|_| ApiError::not_found("scheduled message"))?;
    cancel(&state, caller.0.account_id, CancelTarget::Message(id)).await
}

pub async fn cancel_batch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Cancelled>, ApiError> {
    caller.require(Scope::Send)?;
    let id: BatchId = id
        .parse()
        .map_err(|_| ApiError::not_found("scheduled batch"))?;
    cancel(&state, caller.0.account_id, CancelTarget::Batch(id)).await
}

/// Cancels the account's pending messages of `target`, each with a `dropped` event: how
/// many, and how many were already released. A 404 when `target` holds no message, a 409
/// when every one was already released.
pub(crate) async fn cancel(
    state: &AppState,
    account: sendmill_wire::AccountId,
    target: CancelTarget,
) -> Result<Json<Cancelled>, ApiError> {
    let held = state
        .store
        .cancel_scheduled(account, target.clone())
        .await
        .map_err(ApiError::from)?;
    let cancelled = held.items.len();
    if cancelled > 0 {
        // The rows stay pending (locked) until every `dropped` event is written.
        let events: Vec<EventV1> = held.items.iter().filter_map(dropped_event).collect();
        if !crate::queue::produce_events(state, &events).await {
            return Err(ApiError::unavailable("the message queue"));
        }
        held.commit().await.map_err(ApiError::from)?;
    } else {
        drop(held);
    }
    let states = state
        .store
        .scheduled_states(account, target)
        .await
        .map_err(ApiError::from)?;
    if states.is_empty() {
        return Err(ApiError::not_found("scheduled message"));
    }
    let already_released = states.iter().filter(|s| *s == "released").count();
    if cancelled == 0 && already_released > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_released",
            "the message has already been released for sending and cannot be cancelled",
        ));
    }
    Ok(Json(Cancelled {
        cancelled,
        already_released,
    }))
}

fn dropped_event(held: &ScheduledMessage) -> Option<EventV1> {
    let record: RequestedV1 = sendmill_wire::decode(&held.payload).ok()?;
    let mut event = EventV1::new(
        EventType::Dropped,
        "ingest",
        record.message_id,
        record.account_id,
        record.recipient(),
        &record.context,
    );
    event.reason = Some("cancelled".into());
    Some(event)
}

/// Bytes of shared parts the releaser keeps read (`blobs` of [`run_releaser`]).
pub const BLOB_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Releases due messages until `shutdown`, looking at most every `interval`. With
/// `blobs` (this process writes `requested` records as version 2 or 1, for a release
/// before version 3), a message held as version 3 gets its parts back from the blobs
/// topic and is released in the version written, so that such a release can read it.
pub async fn run_releaser(
    store: Store,
    producer: Producer,
    blobs: Option<BlobReader>,
    topics: Topics,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut last_purge = std::time::Instant::now();
    while !shutdown.is_cancelled() {
        match release_once(&store, &producer, blobs.as_ref(), &topics).await {
            // A full batch: more may be due right away.
            Ok(n) if n == RELEASE_BATCH as usize => continue,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "releasing scheduled messages failed"),
        }
        if last_purge.elapsed() > Duration::from_secs(3600) {
            last_purge = std::time::Instant::now();
            let day = Duration::from_secs(24 * 3600);
            if let Err(error) = store.purge_scheduled(7 * day).await {
                tracing::warn!(%error, "purging scheduled messages failed");
            }
            if let Err(error) = store.purge_idempotency_keys(day).await {
                tracing::warn!(%error, "purging idempotency keys failed");
            }
        }
        let wait = match store.next_due(topics.prefix()).await {
            Ok(Some(at)) => {
                let until = at - time::OffsetDateTime::now_utc();
                Duration::try_from(until)
                    .unwrap_or(Duration::ZERO)
                    .min(interval)
            }
            _ => interval,
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ReleaseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error(transparent)]
    Blob(#[from] BlobUnavailable),
}

/// What a held message becomes when it is released.
enum Release {
    /// The record, to its `requested` topic.
    Record(RequestedV1),
    /// A record whose parts could not be put back (why): a `render_failed` event.
    Failed(RequestedV1, String),
    /// A payload this release cannot read (why): a DLQ letter.
    DeadLetter(String),
}

/// One transaction: take due messages, produce them, commit. Returns how many.
async fn release_once(
    store: &Store,
    producer: &Producer,
    blobs: Option<&BlobReader>,
    topics: &Topics,
) -> Result<usize, ReleaseError> {
    let held: Held<ScheduledMessage> = store.take_due(topics.prefix(), RELEASE_BATCH).await?;
    let count = held.items.len();
    if count == 0 {
        return Ok(0);
    }
    // Every message is read (and, writing a version before 3, a message held as version
    // 3 gets its parts back) before anything is produced: a blob that cannot be read yet
    // fails the round with nothing written, and the batch is taken again.
    let prepared = held.items.iter().map(|m| async move {
        Ok::<_, ReleaseError>(match sendmill_wire::decode::<RequestedV1>(&m.payload) {
            Ok(mut record) => match (blobs, record.shared.clone()) {
                (Some(blobs), Some(reference)) => match blobs.get(&reference).await? {
                    Blob::Found(parts) => match parts.fill(&mut record) {
                        Ok(()) => Release::Record(record),
                        Err(error) => Release::Failed(record, error.to_string()),
                    },
                    Blob::Gone(why) => Release::Failed(record, why),
                },
                _ => Release::Record(record),
            },
            Err(error) => Release::DeadLetter(error.to_string()),
        })
    });
    let prepared = futures::future::try_join_all(prepared).await?;
    let sends = held.items.iter().zip(prepared).map(|(m, release)| async move {
        let key = m.message_id.to_string();
        match release {
            Release::Record(record) => producer
                .send(&topics.requested(record.lane), &key, &record)
                .await
                .map_err(ReleaseError::from),
            // Its parts are gone: a release before version 3 could not read it as it
            // is, so it ends here, with the reason, instead of in that release's DLQ.
            Release::Failed(record, why) => {
                tracing::warn!(message_id = %m.message_id, %why, "held message's parts are gone");
                let mut event = EventV1::new(
                    EventType::RenderFailed,
                    "scheduler",
                    record.message_id,
                    record.account_id,
                    record.recipient(),
                    &record.context,
                );
                event.reason = Some(format!(
                    "the request's template and attachments cannot be read: {why}"
                ));
                producer
                    .send(&topics.events(), &key, &event)
                    .await
                    .map_err(ReleaseError::from)
            }
            // Written by this code (or a later release's) when it was accepted; a payload
            // it cannot read is kept in the DLQ with its reason, never dropped unseen.
            Release::DeadLetter(reason) => {
                tracing::error!(%reason, message_id = %m.message_id, "undecodable scheduled message sent to the DLQ");
                let letter = sendmill_wire::DeadLetterV1 {
                    failed_at: time::OffsetDateTime::now_utc(),
                    stage: "scheduler".into(),
                    source_topic: "scheduled_messages".into(),
                    partition: -1,
                    offset: -1,
                    key: Some(key.clone()),
                    payload: m.payload.clone(),
                    reason,
                };
                producer
                    .send(&topics.dlq(), &key, &letter)
                    .await
                    .map_err(ReleaseError::from)
            }
        }
    });
    futures::future::try_join_all(sends).await?;
    held.commit().await?;
    metrics::counter!(crate::metric::INGEST_RELEASED_TOTAL).increment(count as u64);
    Ok(count)
}
