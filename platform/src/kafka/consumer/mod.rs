//! The at-least-once consumer loop every stage runs.
//!
//! Records are handed to the handler concurrently (up to `concurrency` at once, across
//! partitions). When that many are held, the loop pauses every assigned partition and
//! goes on polling — it never stops polling, which would cost it its group membership —
//! and resumes them, from the first record it let go, once a quarter of the capacity is
//! free again. A stage whose handlers wait (the dispatcher's token waits) thus holds a
//! bounded queue. Per partition, the offset tracker ([`offsets`]) stores the offset of the
//! last record below which every handler has finished, so a crash or rebalance
//! redelivers unfinished records and never skips one. Handlers therefore see a record
//! more than once now and then and must tolerate it (the stages do, by message id).
//!
//! A handler answers [`Handled::Done`], or [`Handled::NotBefore`] for a record that is not
//! due yet (the retry delay topics): the loop pauses that partition, forgets what it
//! fetched after the record, and at the due time seeks back to it and resumes. Nothing
//! sleeps while holding a record, and other partitions keep flowing. Both kinds of pause,
//! and how they meet, are the [`gate`]'s; the loop carries out what it decides.
//!
//! ## Rooms
//! - this module: the loop, handler tasks and dead letters;
//! - [`gate`]: when to read, pause and resume;
//! - [`offsets`]: which offset may be stored;
//! - [`clients`]: one Kafka client per subscribed topic, addressed as one.
//!
//! [`HandlerError::Poison`] sends the record to the DLQ with the reason; a panicking
//! handler counts as poison. [`HandlerError::Interrupted`] (shutdown) stores nothing.
//!
//! Each record is handled inside a span named after the stage that continues the trace
//! context the record's producer wrote (see [`crate::traces`]).

pub(crate) mod clients;
pub(crate) mod gate;
pub(crate) mod offsets;

use super::{KafkaConnection, Producer};
use crate::backoff;
use crate::traces::TraceHeaders;
use clients::GroupClients;
use futures::{FutureExt, StreamExt};
use gate::{Action, Load, PartitionKey, PauseGate};
use offsets::OffsetTracker;
use rdkafka::{
    consumer::{CommitMode, Consumer},
    error::KafkaError,
    Message, Offset, TopicPartitionList,
};
use sendmill_wire::{DeadLetterV1, WirePayload};
use std::{future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};
use time::OffsetDateTime;
use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// One consumed record, detached from the client.
#[derive(Clone, Debug)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The trace context the producer wrote; the record's span continues it.
    pub trace: TraceHeaders,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The side effect is done: the offset may be stored.
    Done,
    /// The record is not due until then; redeliver it at that time.
    NotBefore(OffsetDateTime),
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The record can never be processed; it is kept in the DLQ with this reason.
    #[error("poison record: {0}")]
    Poison(String),
    /// Shutdown interrupted the handler; the record will be redelivered.
    #[error("interrupted by shutdown")]
    Interrupted,
}

impl From<backoff::ShutDown> for HandlerError {
    fn from(_: backoff::ShutDown) -> Self {
        HandlerError::Interrupted
    }
}

/// What a stage consumes and how.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// The stage name, in metrics, logs and dead letters.
    pub stage: &'static str,
    pub group_id: String,
    pub topics: Vec<String>,
    /// Records held at once (handled, or waiting inside the handler); at this many the
    /// partitions are paused.
    pub concurrency: usize,
}

/// Runs the loop until `shutdown`; then drains: fetches nothing more, lets the handlers
/// finish the records they hold for up to `kafka.drain_grace` (the token they are given
/// fires only then: [`crate::shutdown::after_grace`]), stores and commits their offsets,
/// leaves the group and returns. A drain within the grace leaves nothing to redeliver.
/// The clients' readiness ([`crate::health`]) holds from their first assignment until the
/// drain begins.
///
/// A fatal consumer error (librdkafka gives up on a client: e.g. a static member fenced
/// after a group coordinator failover, `FencedInstanceId`) does not leave the stage
/// consuming nothing: the loop finishes what its handlers hold, drops those clients and
/// subscribes new ones, which are given the partitions again from the committed offsets
/// (records handled since are redelivered, as after any rebalance).
pub async fn run<H, Fut>(
    kafka: &KafkaConnection,
    spec: ConsumerSpec,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), KafkaError>
where
    H: Fn(Record) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Handled, HandlerError>> + Send + 'static,
{
    let dlq = kafka.producer()?;
    let handler = Arc::new(handler);
    let abort = crate::shutdown::after_grace(&shutdown, kafka.config.drain_grace);
    // Between a fatal error and the new clients' subscription, the process is not ready.
    let mut restarting = None;
    loop {
        let generation = run_clients(
            kafka,
            &spec,
            handler.clone(),
            dlq.clone(),
            (&shutdown, &abort),
            restarting.take(),
        );
        match generation.await? {
            None => return Ok(()),
            Some(error) => {
                metrics::counter!(crate::metric::CONSUMER_RESTARTS_TOTAL, "stage" => spec.stage)
                    .increment(1);
                tracing::error!(stage = spec.stage, %error, "fatal consumer error: new clients subscribe");
                restarting = Some(crate::health::Condition::new(
                    format!("kafka consumer {} restart", kafka.group_id(&spec.group_id)),
                    "new clients after a fatal consumer error",
                ));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    }
}

/// One generation of clients: runs until `shutdown` (`None`) or a fatal consumer error
/// (`Some`), and finishes in-flight handlers either way; handlers watch `abort`.
/// `restarting` (the previous generation's failed readiness) ends once the new clients
/// have subscribed and registered their own.
async fn run_clients<H, Fut>(
    kafka: &KafkaConnection,
    spec: &ConsumerSpec,
    handler: Arc<H>,
    dlq: Producer,
    (shutdown, abort): (&CancellationToken, &CancellationToken),
    restarting: Option<crate::health::Condition>,
) -> Result<Option<KafkaError>, KafkaError>
where
    H: Fn(Record) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Handled, HandlerError>> + Send + 'static,
{
    let consumer = Arc::new(GroupClients::subscribe(kafka, spec)?);
    drop(restarting);
    // Every client's records, merged; the streams borrow the clients, which outlive them.
    let mut messages = futures::stream::select_all(
        consumer
            .clients
            .iter()
            .map(|(_, client)| Box::pin(client.stream())),
    );
    tracing::info!(stage = spec.stage, group = %spec.group_id, topics = ?spec.topics, "consuming");

    let dlq_topic = kafka.topics.dlq();
    let mut fatal = None;
    let mut gate = PauseGate::new(
        spec.concurrency,
        kafka.config.max_bytes_in_flight,
        spec.stage,
    );
    // Payload bytes of the records in `in_flight`.
    let mut bytes_in_flight = 0usize;
    let mut in_flight: JoinSet<Completion> = JoinSet::new();
    let mut tracker = OffsetTracker::default();
    let mut lag_tick = tokio::time::interval(Duration::from_secs(10));
    let mut lag_report = None;
    loop {
        let actions = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = lag_tick.tick() => {
                // Asking the broker blocks: off the runtime's threads, one at a time.
                if lag_report.as_ref().is_none_or(|r: &tokio::task::JoinHandle<()>| r.is_finished()) {
                    let (consumer, stage) = (consumer.clone(), spec.stage);
                    lag_report = Some(tokio::task::spawn_blocking(move || report_lag(&consumer, stage)));
                }
                Vec::new()
            }
            Some(done) = in_flight.join_next() => {
                let done = done.expect("handler tasks catch their own panics");
                bytes_in_flight -= done.bytes;
                on_completion(&consumer, &mut tracker, &mut gate, done)
            }
            _ = sleep_until_some(gate.next_wake()) => {
                gate.wake(Instant::now(), || assignment(&consumer))
            }
            // At capacity nothing more is read (librdkafka keeps fetched records queued)
            // until a handler finishes or the partitions are paused; paused, what was
            // already fetched is read and let go, to be read again after the resume.
            Some(message) = messages.next(), if gate.may_read(Load { records: in_flight.len(), bytes: bytes_in_flight }) => {
                let message = match message {
                    Ok(m) => m,
                    Err(error @ KafkaError::MessageConsumptionFatal(_)) => {
                        fatal = Some(error);
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(stage = spec.stage, %error, "consumer error");
                        continue;
                    }
                };
                let key = (message.topic().to_owned(), message.partition());
                if gate.lets_go(&key, message.offset()) {
                    continue;
                }
                let record = Record {
                    topic: key.0.clone(),
                    partition: key.1,
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    trace: message.headers().map(TraceHeaders::from_kafka).unwrap_or_default(),
                };
                drop(message);
                let bytes = record.payload.len();
                bytes_in_flight += bytes;
                let generation = tracker.begin(&key, record.offset);
                metrics::counter!(crate::metric::CONSUMED_TOTAL, "stage" => spec.stage, "topic" => key.0.clone()).increment(1);
                let task = HandlerTask {
                    handler: handler.clone(),
                    stage: spec.stage,
                    dlq: dlq.clone(),
                    dlq_topic: dlq_topic.clone(),
                    abort: abort.clone(),
                };
                let span = record_span(spec.stage, &record);
                in_flight.spawn(async move {
                    let offset = record.offset;
                    let outcome = task.run(record).instrument(span).await;
                    Completion { key, offset, generation, bytes, outcome }
                });
                Vec::new()
            }
        };
        apply(&consumer, &mut gate, actions);
        let load = Load {
            records: in_flight.len(),
            bytes: bytes_in_flight,
        };
        let settled = gate.settle(Instant::now(), load);
        apply(&consumer, &mut gate, settled);
    }

    // Drain: nothing more is fetched; the handlers finish what they hold (their token
    // fires `drain_grace` after shutdown, and then they give up quickly). Nothing is
    // resumed any more: offsets are what matters now.
    consumer.not_ready("draining");
    if !in_flight.is_empty() {
        tracing::info!(stage = spec.stage, records = in_flight.len(), "draining");
    }
    while let Some(done) = in_flight.join_next().await {
        let done = done.expect("handler tasks catch their own panics");
        on_completion(&consumer, &mut tracker, &mut gate, done);
    }
    // The lag report holds the consumer too: waited for here, so that the consumer is
    // closed by this loop while the broker is still there. Left to the report's thread,
    // the last reference could be dropped after the broker went, and closing then blocks
    // that thread (and the runtime's shutdown) for good.
    if let Some(report) = lag_report {
        let _ = report.await;
    }
    drop(messages);
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored since the last auto-commit is also a "no offset" error.
        tracing::debug!(stage = spec.stage, %error, "final commit");
    }
    // Closing a client leaves the group (revoking its partitions) and blocks until the
    // coordinator answers: every client at once, off the runtime's threads.
    if let Ok(clients) = Arc::try_unwrap(consumer) {
        let _ = tokio::task::spawn_blocking(move || clients.close()).await;
    }
    tracing::info!(stage = spec.stage, "consumer stopped");
    Ok(fatal)
}

/// [`run`] for the common case of a handler that is a method of state shared by every
/// call: `run_shared(&kafka, spec, stage, |stage, record| async move { stage.handle(record).await }, shutdown)`.
pub async fn run_shared<S, H, Fut>(
    kafka: &KafkaConnection,
    spec: ConsumerSpec,
    state: Arc<S>,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), KafkaError>
where
    S: Send + Sync + 'static,
    H: Fn(Arc<S>, Record) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Handled, HandlerError>> + Send + 'static,
{
    run(
        kafka,
        spec,
        move |record| handler(state.clone(), record),
        shutdown,
    )
    .await
}

struct Completion {
    key: PartitionKey,
    offset: i64,
    generation: u64,
    /// The record's payload bytes, counted against `kafka.max_bytes_in_flight`.
    bytes: usize,
    outcome: Result<Handled, HandlerError>,
}

struct HandlerTask<H> {
    handler: Arc<H>,
    stage: &'static str,
    dlq: Producer,
    dlq_topic: String,
    /// Fires when the drain grace after shutdown has passed.
    abort: CancellationToken,
}

impl<H, Fut> HandlerTask<H>
where
    H: Fn(Record) -> Fut,
    Fut: Future<Output = Result<Handled, HandlerError>>,
{
    async fn run(self, record: Record) -> Result<Handled, HandlerError> {
        let started = std::time::Instant::now();
        let result = AssertUnwindSafe((self.handler)(record.clone()))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(HandlerError::Poison(format!("handler panicked: {what}")))
            });
        metrics::histogram!(crate::metric::HANDLE_SECONDS, "stage" => self.stage)
            .record(started.elapsed().as_secs_f64());
        match result {
            Err(HandlerError::Poison(reason)) => {
                tracing::error!(stage = self.stage, topic = %record.topic, partition = record.partition,
                    offset = record.offset, %reason, "record sent to the DLQ");
                metrics::counter!(crate::metric::DLQ_TOTAL, "stage" => self.stage).increment(1);
                let letter = DeadLetterV1 {
                    failed_at: OffsetDateTime::now_utc(),
                    stage: self.stage.to_owned(),
                    source_topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                    key: record
                        .key
                        .as_deref()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: record.payload,
                    reason,
                };
                let key = letter.key.clone().unwrap_or_default();
                backoff::until_ok("dlq produce", &self.abort, || {
                    self.dlq.send(&self.dlq_topic, &key, &letter)
                })
                .await?;
                Ok(Handled::Done)
            }
            other => other,
        }
    }
}

/// The span a record is handled in: named after the stage, a child of the span that
/// produced the record, and carrying the record key (the message id, on every topic that
/// carries messages or their events).
fn record_span(stage: &'static str, record: &Record) -> tracing::Span {
    let key = record
        .key
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let span = tracing::info_span!(
        "record",
        otel.name = stage,
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.destination.name = %record.topic,
        messaging.kafka.partition = record.partition,
        messaging.kafka.offset = record.offset,
        messaging.kafka.message.key = %key,
    );
    record.trace.continue_in(&span);
    span
}

/// Stores the offset a finished record frees, or hands a record that is not due yet to
/// the gate (its partition is re-read from it at the due time).
fn on_completion(
    consumer: &GroupClients,
    tracker: &mut OffsetTracker,
    gate: &mut PauseGate,
    done: Completion,
) -> Vec<Action> {
    match done.outcome {
        Ok(Handled::Done) => {
            if let Some(offset) = tracker.complete(&done.key, done.generation, done.offset) {
                if let Err(error) = consumer.store_offset(&done.key.0, done.key.1, offset) {
                    // The partition moved to another consumer, which redelivers.
                    tracing::debug!(topic = %done.key.0, partition = done.key.1, %error, "offset not stored");
                }
            }
            Vec::new()
        }
        Ok(Handled::NotBefore(due)) => {
            if tracker.is_stale(&done.key, done.generation, done.offset) {
                return Vec::new();
            }
            tracker.rewind(&done.key, done.offset);
            let wait: Duration = (due - OffsetDateTime::now_utc())
                .try_into()
                .unwrap_or(Duration::ZERO);
            gate.not_before(done.key, done.offset, Instant::now() + wait)
        }
        Err(HandlerError::Interrupted) => Vec::new(),
        Err(HandlerError::Poison(_)) => unreachable!("poison is turned into a dead letter"),
    }
}

/// Carries out the gate's `actions` on the clients. A seek that fails (the broker
/// unreachable) leaves its partition paused; the gate tries it again shortly.
fn apply(consumer: &GroupClients, gate: &mut PauseGate, actions: Vec<Action>) {
    let list = |keys: &[PartitionKey]| {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in keys {
            list.add_partition(topic, *partition);
        }
        list
    };
    for action in actions {
        match action {
            Action::Pause(keys) => {
                if let Err(error) = consumer.pause(&list(&keys)) {
                    tracing::debug!(%error, "pause failed");
                }
            }
            Action::Resume(key) => {
                if let Err(error) = consumer.resume(&list(std::slice::from_ref(&key))) {
                    tracing::debug!(%error, "resume failed");
                }
            }
            Action::ResumeFrom(key, offset) => {
                let (topic, partition) = (&key.0, key.1);
                if let Err(error) = consumer.seek(
                    topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(5),
                ) {
                    tracing::warn!(%topic, partition, offset, %error, "seek failed: staying paused, trying again");
                    gate.seek_failed(key, offset, Instant::now());
                    continue;
                }
                if let Err(error) = consumer.resume(&list(std::slice::from_ref(&key))) {
                    tracing::debug!(%error, "resume failed");
                }
            }
        }
    }
}

/// Every partition assigned to the clients now; `None` when it cannot be read.
fn assignment(consumer: &GroupClients) -> Option<Vec<PartitionKey>> {
    match consumer.assignment() {
        Ok(list) => Some(
            list.elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect(),
        ),
        Err(error) => {
            tracing::debug!(%error, "no assignment to pause");
            None
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `sendmill_consumer_lag{stage, topic, partition}`: records between this consumer's
/// position and the end of each assigned partition. The end is asked of the broker (one
/// short call per partition every few seconds; rdkafka does not expose librdkafka's
/// cached watermarks).
fn report_lag(consumer: &GroupClients, stage: &'static str) {
    for (_, client) in &consumer.clients {
        if let Ok(positions) = client.position() {
            report_client_lag(client, &positions, stage);
        }
    }
}

fn report_client_lag(
    consumer: &clients::Client,
    positions: &TopicPartitionList,
    stage: &'static str,
) {
    for element in positions.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let Ok((_, high)) = consumer.fetch_watermarks(topic, partition, Duration::from_millis(200))
        else {
            continue;
        };
        let lag = match element.offset() {
            Offset::Offset(position) => (high - position).max(0),
            // Nothing consumed yet: everything up to the end is waiting.
            _ => high.max(0),
        };
        metrics::gauge!(crate::metric::CONSUMER_LAG, "stage" => stage, "topic" => topic.to_owned(),
            "partition" => partition.to_string())
        .set(lag as f64);
    }
}

/// Decodes a record's payload, turning failure into poison.
pub fn decode<T: WirePayload>(record: &Record) -> Result<T, HandlerError> {
    sendmill_wire::decode(&record.payload).map_err(|e| HandlerError::Poison(e.to_string()))
}
