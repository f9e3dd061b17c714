//! Writing an accepted request: its held messages to PostgreSQL (`send_at`), the rest as
//! `requested` records to Kafka, then the `accepted`/`dropped` events that follow them
//! ([`write`]); also the events of released scheduled batches ([`produce_events`]).
//!
//! Ingest answers 202 only after every record of the request is acknowledged (`acks=all`,
//! idempotent producer), so how long to wait is the question. A fixed deadline on the whole
//! request is wrong both ways: a 1,000-recipient request with a 2 MiB attachment is 2.8 GB
//! of records and needs longer than a deadline sized for a broker outage, while a broker
//! that is down should be reported in seconds. So the deadline is on *progress*: the
//! request fails when no record has been acknowledged for [`STALL`]. Records are encoded
//! and handed to the producer within a window of [`WINDOW_BYTES`], so a large request holds
//! ~64 MiB of encoded records rather than all of them, and the producer's own
//! `message.timeout.ms` measures the broker, not a backlog queued behind the record.

use crate::{
    send::{Planned, RecipientStatus, Refused},
    AppState,
};
use futures::stream::{FuturesUnordered, StreamExt};
use sendmill_platform::CancellationToken;
use sendmill_platform::{
    api::ApiError,
    backoff,
    kafka::{blobs, Producer},
};
use sendmill_wire::{EventType, EventV1, MessageId, RequestedV1, SharedRef, WirePayload};
use std::time::Duration;
use time::OffsetDateTime;

/// A request fails when Kafka has acknowledged none of its records for this long.
pub const STALL: Duration = Duration::from_secs(15);

/// Encoded bytes of one request handed to the producer and not yet acknowledged (at least
/// one record, whatever its size).
pub const WINDOW_BYTES: usize = 64 * 1024 * 1024;

/// One record to write: topic, key (the message id) and payload.
pub struct Outgoing<'a, T> {
    pub topic: String,
    pub key: String,
    pub payload: &'a T,
}

/// Why not every record was acknowledged; some may have been written.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("no record acknowledged for {} s", STALL.as_secs())]
    Stalled,
    #[error("shut down while writing")]
    ShutDown,
}

/// Writes every record, retrying each until acknowledged (see the module doc for the
/// deadline); `what` names the call in retry logs and `sendmill_infra_retries_total`.
/// `Ok` once all are acknowledged; on `Err` some records may be written.
pub async fn write_all<'a, T: WirePayload + 'a>(
    what: &'static str,
    producer: &Producer,
    shutdown: &CancellationToken,
    records: Vec<Outgoing<'a, T>>,
) -> Result<(), QueueError> {
    let mut waiting = records.into_iter();
    let mut in_flight = FuturesUnordered::new();
    let mut bytes_in_flight = 0usize;
    loop {
        while bytes_in_flight < WINDOW_BYTES {
            let Some(record) = waiting.next() else { break };
            let (schema, bytes) = producer.encode(record.payload);
            bytes_in_flight += bytes.len();
            in_flight.push(async move {
                backoff::until_ok(what, shutdown, || {
                    producer.send_bytes(&record.topic, &record.key, &bytes, schema)
                })
                .await
                .map(|()| bytes.len())
            });
        }
        if in_flight.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(STALL, in_flight.next()).await {
            Ok(Some(Ok(written))) => bytes_in_flight -= written,
            Ok(Some(Err(backoff::ShutDown(_)))) => return Err(QueueError::ShutDown),
            Ok(None) => return Ok(()),
            Err(_) => return Err(QueueError::Stalled),
        }
    }
}

/// Holds the scheduled copies (each until its own `send_at`, all in one statement) and
/// queues the rest, then writes their events. When the copies' large parts are the same
/// and sharing them saves enough, they are written once to the blobs topic first and
/// every copy points to them ([`blobs::write_shared`]).
pub(crate) async fn write(state: &AppState, planned: &Planned) -> Result<(), Refused> {
    let mut held: Vec<(MessageId, OffsetDateTime, Vec<u8>)> = Vec::new();
    let mut now: Vec<&RequestedV1> = Vec::new();
    let mut scheduled: Vec<(&RequestedV1, OffsetDateTime)> = Vec::new();
    for (result, record) in &planned.copies {
        let Some(record) = record else { continue };
        match (result.status, result.send_at) {
            (RecipientStatus::Scheduled, Some(at)) => scheduled.push((record, at)),
            (RecipientStatus::Queued, _) => now.push(record),
            _ => {}
        }
    }
    let all: Vec<&RequestedV1> = now
        .iter()
        .copied()
        .chain(scheduled.iter().map(|s| s.0))
        .collect();
    let pointing = share_parts(state, &all).await?;
    let pointing = |record: &RequestedV1| {
        pointing
            .as_ref()
            .map(|reference| record.pointing_to(reference.clone()))
    };
    for (record, at) in scheduled {
        let bytes = match pointing(record) {
            Some(head) => state.producer.encode(&head).1,
            None => state.producer.encode(record).1,
        };
        held.push((record.message_id, at, bytes));
    }
    let heads: Vec<RequestedV1> = now.iter().filter_map(|r| pointing(r)).collect();
    if !heads.is_empty() {
        now = heads.iter().collect();
    }
    if !held.is_empty() {
        let first = planned.records()[0];
        // One statement for every held copy, whatever its time: all or none are held.
        state
            .store
            .schedule(
                state.topics.prefix(),
                first.account_id,
                first.batch_id,
                &held,
                planned.sendgrid_batch.as_deref(),
            )
            .await
            .map_err(|error| match error {
                sendmill_store::StoreError::Conflict(_) => ApiError::invalid(
                    "batch_id",
                    "this batch was cancelled while the request was accepted",
                ),
                error => ApiError::from(error),
            })?;
    }
    if !now.is_empty() {
        let records = now
            .iter()
            .map(|m| Outgoing {
                topic: state.topics.requested(m.lane),
                key: m.message_id.to_string(),
                payload: *m,
            })
            .collect();
        if let Err(error) = write_all(
            "produce requested",
            &state.producer,
            &state.shutdown,
            records,
        )
        .await
        {
            tracing::error!(%error, "queueing a request failed");
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
                planned.source,
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
        metrics::counter!(crate::metric::INGEST_EVENT_LOSS_TOTAL).increment(events.len() as u64);
    }
    Ok(())
}

/// [`blobs::write_shared`] of `records`, retried until acknowledged for up to [`STALL`].
///
/// Errors: the blob was not acknowledged (503; nothing queued yet).
async fn share_parts(
    state: &AppState,
    records: &[&RequestedV1],
) -> Result<Option<SharedRef>, Refused> {
    let topic = state.topics.blobs();
    let written = tokio::time::timeout(
        STALL,
        backoff::until_ok("produce blob", &state.shutdown, || {
            blobs::write_shared(&state.producer, &topic, records)
        }),
    )
    .await;
    match written {
        Ok(Ok(reference)) => Ok(reference),
        Ok(Err(_)) | Err(_) => {
            tracing::error!("writing a request's shared parts failed");
            Err(Refused {
                error: ApiError::unavailable("the message queue"),
                wrote_anything: false,
            })
        }
    }
}

/// Writes `events` ([`write_all`]); `false` when some could not be written.
pub(crate) async fn produce_events(state: &AppState, events: &[EventV1]) -> bool {
    let topic = state.topics.events();
    let records = events
        .iter()
        .map(|event| Outgoing {
            topic: topic.clone(),
            key: event.message_id.to_string(),
            payload: event,
        })
        .collect();
    write_all("produce event", &state.producer, &state.shutdown, records)
        .await
        .is_ok()
}
