//! The at-least-once consumer loop every stage runs.
//!
//! Records are handed to the handler concurrently (up to `concurrency` at once, across
//! partitions). When that many are held, the loop pauses every assigned partition and
//! goes on polling — it never stops polling, which would cost it its group membership —
//! and resumes them, from the first record it let go, once a quarter of the capacity is
//! free again. A stage whose handlers wait (the dispatcher's token waits) thus holds a
//! bounded queue. Per partition, [`OffsetTracker`] stores the offset of the last record
//! below which every handler has finished, so a crash or rebalance redelivers unfinished
//! records and never skips one. Handlers therefore see a record more than once now and
//! then and must tolerate it (the stages do, by message id).
//!
//! A handler answers [`Handled::Done`], or [`Handled::NotBefore`] for a record that is not
//! due yet (the retry delay topics): the loop pauses that partition, forgets what it
//! fetched after the record, and at the due time seeks back to it and resumes. Nothing
//! sleeps while holding a record, and other partitions keep flowing.
//!
//! [`HandlerError::Poison`] sends the record to the DLQ with the reason; a panicking
//! handler counts as poison. [`HandlerError::Interrupted`] (shutdown) stores nothing.
//!
//! Each record is handled inside a span named after the stage that continues the trace
//! context the record's producer wrote (see [`crate::traces`]).

use super::{KafkaConnection, Producer};
use crate::backoff;
use crate::traces::TraceHeaders;
use futures::{FutureExt, StreamExt};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::{KafkaError, KafkaResult},
    Message, Offset, TopicPartitionList,
};
use sendmill_wire::{DeadLetterV1, WirePayload};
use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::Duration,
};
use time::OffsetDateTime;
use tokio::task::JoinSet;
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

/// Runs the loop until `shutdown`; then finishes in-flight handlers (handlers watch the
/// same token), stores and commits their offsets, and returns.
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
    let consumer = Arc::new(GroupClients::subscribe(kafka, &spec)?);
    // Every client's records, merged; the streams borrow the clients, which outlive them.
    let mut messages = futures::stream::select_all(
        consumer
            .clients
            .iter()
            .map(|(_, client)| Box::pin(client.stream())),
    );
    tracing::info!(stage = spec.stage, group = %spec.group_id, topics = ?spec.topics, "consuming");

    let dlq = kafka.producer()?;
    let dlq_topic = kafka.topics.dlq();
    let handler = Arc::new(handler);
    let capacity = spec.concurrency.max(1);
    let mut full = CapacityPause::default();
    let mut in_flight: JoinSet<Completion> = JoinSet::new();
    let mut resume_timers: JoinSet<PartitionKey> = JoinSet::new();
    let mut tracker = OffsetTracker::default();
    let mut paused: HashMap<PartitionKey, i64> = HashMap::new();

    let mut lag_tick = tokio::time::interval(Duration::from_secs(10));
    let mut lag_report = None;
    // Since when every handler slot has been taken without one finishing.
    let mut full_since: Option<tokio::time::Instant> = None;
    loop {
        let pause_at = full_since.map(|since| since + FULL_BEFORE_PAUSE);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = lag_tick.tick() => {
                // Asking the broker blocks: off the runtime's threads, one at a time.
                if lag_report.as_ref().is_none_or(|r: &tokio::task::JoinHandle<()>| r.is_finished()) {
                    let (consumer, stage) = (consumer.clone(), spec.stage);
                    lag_report = Some(tokio::task::spawn_blocking(move || report_lag(&consumer, stage)));
                }
            }
            Some(done) = in_flight.join_next() => {
                let done = done.expect("handler tasks catch their own panics");
                on_completion(&consumer, &mut tracker, &mut paused, &mut resume_timers, done);
            }
            _ = sleep_until_some(pause_at), if !full.active => {
                full.pause(&consumer, spec.stage);
            }
            Some(key) = resume_timers.join_next() => {
                let key = key.expect("timer tasks do not panic");
                if let Some(offset) = paused.remove(&key) {
                    if full.active && full.partitions.contains(&key) {
                        // Still paused for capacity: that resume reads from here.
                        full.holds(&key, offset);
                    } else {
                        resume_at(&consumer, &key, offset, &mut paused, &mut resume_timers);
                    }
                }
            }
            // At capacity nothing more is read (librdkafka keeps fetched records queued)
            // until a handler finishes or the partitions are paused; paused, what was
            // already fetched is read and let go, to be read again after the resume.
            Some(message) = messages.next(), if in_flight.len() < capacity || full.active => {
                let message = match message {
                    Ok(m) => m,
                    Err(error) => {
                        tracing::warn!(stage = spec.stage, %error, "consumer error");
                        continue;
                    }
                };
                let key = (message.topic().to_owned(), message.partition());
                if paused.get(&key).is_some_and(|&from| message.offset() >= from) {
                    // Fetched before the pause took effect; it comes again after resume.
                    continue;
                }
                if full.holds(&key, message.offset()) {
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
                let generation = tracker.begin(&key, record.offset);
                metrics::counter!("sendmill_consumed_total", "stage" => spec.stage, "topic" => key.0.clone()).increment(1);
                let task = HandlerTask {
                    handler: handler.clone(),
                    stage: spec.stage,
                    dlq: dlq.clone(),
                    dlq_topic: dlq_topic.clone(),
                    shutdown: shutdown.clone(),
                };
                let span = record_span(spec.stage, &record);
                in_flight.spawn(async move {
                    let offset = record.offset;
                    let outcome = task.run(record).instrument(span).await;
                    Completion { key, offset, generation, outcome }
                });
            }
        }
        if in_flight.len() < capacity {
            full_since = None;
        } else if full_since.is_none() {
            full_since = Some(tokio::time::Instant::now());
        }
        if full.active && in_flight.len() <= capacity - capacity / 4 {
            full.resume(&consumer, &mut paused, &mut resume_timers, spec.stage);
        }
    }

    // Shutdown: handlers see the same token and finish or give up quickly.
    while let Some(done) = in_flight.join_next().await {
        let done = done.expect("handler tasks catch their own panics");
        on_completion(
            &consumer,
            &mut tracker,
            &mut paused,
            &mut resume_timers,
            done,
        );
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
    Ok(())
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

type PartitionKey = (String, i32);

/// The loop's clients: one per subscribed topic, all members of the stage's group.
///
/// Why not one client subscribed to every topic: with cooperative-sticky assignment a
/// member that joins takes over whole topics when that balances the partition counts
/// (librdkafka moves them in sorted order), so a second dispatcher got both partitions
/// of `ready.bulk` and none of `ready.tx` and sent nothing (found by the two-dispatcher
/// shaping test on Apache Kafka). A client per topic is assigned only that topic's
/// partitions, so every topic is spread over the processes on its own.
pub(crate) struct GroupClients {
    clients: Vec<(String, StreamConsumer)>,
}

impl GroupClients {
    fn subscribe(kafka: &KafkaConnection, spec: &ConsumerSpec) -> Result<Self, KafkaError> {
        let mut clients = Vec::with_capacity(spec.topics.len());
        for (i, topic) in spec.topics.iter().enumerate() {
            let client: StreamConsumer = kafka.consumer_config(&spec.group_id, i).create()?;
            client.subscribe(&[topic.as_str()])?;
            clients.push((topic.clone(), client));
        }
        Ok(Self { clients })
    }

    fn client(&self, topic: &str) -> Option<&StreamConsumer> {
        self.clients
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, client)| client)
    }

    /// `list` split by the client that owns each partition's topic.
    fn by_client(&self, list: &TopicPartitionList) -> Vec<(&StreamConsumer, TopicPartitionList)> {
        let mut split: Vec<(&StreamConsumer, TopicPartitionList)> = Vec::new();
        for element in list.elements() {
            let Some(client) = self.client(element.topic()) else {
                continue;
            };
            let at = match split.iter().position(|(c, _)| std::ptr::eq(*c, client)) {
                Some(at) => at,
                None => {
                    split.push((client, TopicPartitionList::new()));
                    split.len() - 1
                }
            };
            split[at]
                .1
                .add_partition(element.topic(), element.partition());
        }
        split
    }

    fn assignment(&self) -> KafkaResult<TopicPartitionList> {
        let mut all = TopicPartitionList::new();
        for (_, client) in &self.clients {
            for e in client.assignment()?.elements() {
                all.add_partition(e.topic(), e.partition());
            }
        }
        Ok(all)
    }

    fn pause(&self, list: &TopicPartitionList) -> KafkaResult<()> {
        for (client, part) in self.by_client(list) {
            client.pause(&part)?;
        }
        Ok(())
    }

    fn resume(&self, list: &TopicPartitionList) -> KafkaResult<()> {
        for (client, part) in self.by_client(list) {
            client.resume(&part)?;
        }
        Ok(())
    }

    fn seek(
        &self,
        topic: &str,
        partition: i32,
        offset: Offset,
        timeout: Duration,
    ) -> KafkaResult<()> {
        match self.client(topic) {
            Some(client) => client.seek(topic, partition, offset, timeout),
            None => Ok(()),
        }
    }

    fn store_offset(&self, topic: &str, partition: i32, offset: i64) -> KafkaResult<()> {
        match self.client(topic) {
            Some(client) => client.store_offset(topic, partition, offset),
            None => Ok(()),
        }
    }

    /// Closes every client, side by side.
    fn close(self) {
        std::thread::scope(|scope| {
            for (_, client) in self.clients {
                scope.spawn(move || drop(client));
            }
        });
    }

    fn commit_consumer_state(&self, mode: CommitMode) -> KafkaResult<()> {
        let mut result = Ok(());
        for (_, client) in &self.clients {
            if let Err(error) = client.commit_consumer_state(mode) {
                result = Err(error);
            }
        }
        result
    }
}

struct Completion {
    key: PartitionKey,
    offset: i64,
    generation: u64,
    outcome: Result<Handled, HandlerError>,
}

struct HandlerTask<H> {
    handler: Arc<H>,
    stage: &'static str,
    dlq: Producer,
    dlq_topic: String,
    shutdown: CancellationToken,
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
        metrics::histogram!("sendmill_handle_seconds", "stage" => self.stage)
            .record(started.elapsed().as_secs_f64());
        match result {
            Err(HandlerError::Poison(reason)) => {
                tracing::error!(stage = self.stage, topic = %record.topic, partition = record.partition,
                    offset = record.offset, %reason, "record sent to the DLQ");
                metrics::counter!("sendmill_dlq_total", "stage" => self.stage).increment(1);
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
                backoff::until_ok("dlq produce", &self.shutdown, || {
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

fn on_completion(
    consumer: &GroupClients,
    tracker: &mut OffsetTracker,
    paused: &mut HashMap<PartitionKey, i64>,
    resume_timers: &mut JoinSet<PartitionKey>,
    done: Completion,
) {
    match done.outcome {
        Ok(Handled::Done) => {
            if let Some(offset) = tracker.complete(&done.key, done.generation, done.offset) {
                if let Err(error) = consumer.store_offset(&done.key.0, done.key.1, offset) {
                    // The partition moved to another consumer, which redelivers.
                    tracing::debug!(topic = %done.key.0, partition = done.key.1, %error, "offset not stored");
                }
            }
        }
        Ok(Handled::NotBefore(due)) => {
            if tracker.is_stale(&done.key, done.generation, done.offset) {
                return;
            }
            tracker.rewind(&done.key, done.offset);
            let first_pause = !paused.contains_key(&done.key);
            let from = paused.entry(done.key.clone()).or_insert(done.offset);
            *from = (*from).min(done.offset);
            if first_pause {
                let mut list = TopicPartitionList::new();
                list.add_partition(&done.key.0, done.key.1);
                if let Err(error) = consumer.pause(&list) {
                    tracing::debug!(%error, "pause failed");
                }
                let wait = (due - OffsetDateTime::now_utc())
                    .try_into()
                    .unwrap_or(Duration::ZERO);
                let key = done.key.clone();
                resume_timers.spawn(async move {
                    tokio::time::sleep(wait).await;
                    key
                });
            }
        }
        Err(HandlerError::Interrupted) => {}
        Err(HandlerError::Poison(_)) => unreachable!("poison is turned into a dead letter"),
    }
}

/// How long every handler slot may stay taken, none finishing, before the partitions are
/// paused. Fast handlers (render) free a slot within milliseconds and never cause a
/// pause, whose resume costs a refetch; slow ones (deliveries waiting for shaping tokens)
/// pause, so the consumer keeps polling and stays in its group however long they wait.
const FULL_BEFORE_PAUSE: Duration = Duration::from_millis(250);

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The partitions paused because the handlers hold `concurrency` records.
#[derive(Default)]
struct CapacityPause {
    active: bool,
    partitions: Vec<PartitionKey>,
    /// Per partition, the first record received during the pause (dropped, so read again).
    first_dropped: HashMap<PartitionKey, i64>,
}

impl CapacityPause {
    fn pause(&mut self, consumer: &GroupClients, stage: &'static str) {
        let assignment = match consumer.assignment() {
            Ok(a) => a,
            Err(error) => {
                tracing::debug!(%error, "no assignment to pause");
                return;
            }
        };
        if let Err(error) = consumer.pause(&assignment) {
            tracing::debug!(%error, "pause failed");
        }
        self.partitions = assignment
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        self.active = true;
        metrics::counter!("sendmill_consumer_capacity_pauses_total", "stage" => stage).increment(1);
        metrics::gauge!("sendmill_consumer_paused", "stage" => stage).set(1.0);
        tracing::debug!(stage, "handlers full: partitions paused");
    }

    /// Whether a record arriving now is let go (to be read again after the resume).
    fn holds(&mut self, key: &PartitionKey, offset: i64) -> bool {
        if !self.active {
            return false;
        }
        let first = self.first_dropped.entry(key.clone()).or_insert(offset);
        *first = (*first).min(offset);
        true
    }

    /// Resumes what the pause stopped, except partitions also waiting for a due time:
    /// their own timer resumes them, from the earlier of the two offsets.
    fn resume(
        &mut self,
        consumer: &GroupClients,
        due_paused: &mut HashMap<PartitionKey, i64>,
        resume_timers: &mut JoinSet<PartitionKey>,
        stage: &'static str,
    ) {
        for key in self.partitions.drain(..) {
            let dropped = self.first_dropped.remove(&key);
            if let Some(from) = due_paused.get_mut(&key) {
                if let Some(dropped) = dropped {
                    *from = (*from).min(dropped);
                }
                continue;
            }
            match dropped {
                Some(offset) => resume_at(consumer, &key, offset, due_paused, resume_timers),
                None => {
                    let mut list = TopicPartitionList::new();
                    list.add_partition(&key.0, key.1);
                    if let Err(error) = consumer.resume(&list) {
                        tracing::debug!(%error, "resume failed");
                    }
                }
            }
        }
        // Records of partitions assigned during the pause.
        for (key, offset) in self.first_dropped.drain() {
            resume_at(consumer, &key, offset, due_paused, resume_timers);
        }
        self.active = false;
        metrics::counter!("sendmill_consumer_capacity_resumes_total", "stage" => stage)
            .increment(1);
        metrics::gauge!("sendmill_consumer_paused", "stage" => stage).set(0.0);
        tracing::debug!(stage, "handlers have room: partitions resumed");
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
    consumer: &StreamConsumer,
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
        metrics::gauge!("sendmill_consumer_lag", "stage" => stage, "topic" => topic.to_owned(),
            "partition" => partition.to_string())
        .set(lag as f64);
    }
}

/// Seeks a paused partition back to `offset` and resumes it. If the seek fails (the
/// broker unreachable), the partition stays paused and is tried again shortly: resumed
/// without the seek it would read on after records that were let go, and those would
/// never be handled.
fn resume_at(
    consumer: &GroupClients,
    key: &PartitionKey,
    offset: i64,
    paused: &mut HashMap<PartitionKey, i64>,
    resume_timers: &mut JoinSet<PartitionKey>,
) {
    if let Err(error) = consumer.seek(
        &key.0,
        key.1,
        Offset::Offset(offset),
        Duration::from_secs(5),
    ) {
        tracing::warn!(topic = %key.0, partition = key.1, offset, %error, "seek failed: staying paused, trying again");
        let from = paused.entry(key.clone()).or_insert(offset);
        *from = (*from).min(offset);
        let key = key.clone();
        resume_timers.spawn(async move {
            tokio::time::sleep(SEEK_RETRY).await;
            key
        });
        return;
    }
    let mut list = TopicPartitionList::new();
    list.add_partition(&key.0, key.1);
    if let Err(error) = consumer.resume(&list) {
        tracing::debug!(%error, "resume failed");
    }
}

const SEEK_RETRY: Duration = Duration::from_millis(500);

/// Which offsets of each partition may be stored: everything below the oldest record
/// still in flight. Records arrive in offset order per partition (until a rewind), so
/// with nothing in flight the highest finished offset is safe.
#[derive(Default)]
pub(crate) struct OffsetTracker {
    partitions: HashMap<PartitionKey, PartitionProgress>,
}

#[derive(Default)]
struct PartitionProgress {
    /// Offset → the generation it was received in.
    in_flight: BTreeMap<i64, u64>,
    /// The lowest offset this consumer received: nothing below it is ours to store.
    first_received: Option<i64>,
    highest_done: Option<i64>,
    stored: Option<i64>,
    /// Bumped on rewind: completions of records fetched before it no longer count.
    generation: u64,
}

impl OffsetTracker {
    /// Registers a received record; returns the generation to report its completion with.
    pub(crate) fn begin(&mut self, key: &PartitionKey, offset: i64) -> u64 {
        let p = self.partitions.entry(key.clone()).or_default();
        p.in_flight.insert(offset, p.generation);
        p.first_received = Some(p.first_received.map_or(offset, |f| f.min(offset)));
        p.generation
    }

    /// Whether a completion no longer counts: its record was let go by a rewind (it
    /// will be read again) or was received again since.
    pub(crate) fn is_stale(&self, key: &PartitionKey, generation: u64, offset: i64) -> bool {
        self.partitions
            .get(key)
            .is_none_or(|p| p.in_flight.get(&offset) != Some(&generation))
    }

    /// Marks a record done; returns the offset to store if it advanced.
    pub(crate) fn complete(
        &mut self,
        key: &PartitionKey,
        generation: u64,
        offset: i64,
    ) -> Option<i64> {
        if self.is_stale(key, generation, offset) {
            return None;
        }
        let p = self.partitions.get_mut(key)?;
        p.in_flight.remove(&offset);
        p.highest_done = Some(p.highest_done.map_or(offset, |h| h.max(offset)));
        let safe = match p.in_flight.first_key_value() {
            Some((&oldest, _)) => oldest - 1,
            None => p.highest_done?,
        };
        let ours = p.first_received.is_some_and(|f| safe >= f);
        if ours && p.stored.is_none_or(|s| safe > s) {
            p.stored = Some(safe);
            Some(safe)
        } else {
            None
        }
    }

    /// The partition will be re-read from `offset`: forget it and everything after.
    /// Records before it still in flight are not re-read, so they stay tracked: their
    /// completions count, and no offset past them is stored until they finish.
    pub(crate) fn rewind(&mut self, key: &PartitionKey, offset: i64) {
        let p = self.partitions.entry(key.clone()).or_default();
        p.generation += 1;
        p.in_flight.retain(|&o, _| o < offset);
        p.highest_done = p.highest_done.map(|h| h.min(offset - 1));
    }
}

/// Decodes a record's payload, turning failure into poison.
pub fn decode<T: WirePayload>(record: &Record) -> Result<T, HandlerError> {
    sendmill_wire::decode(&record.payload).map_err(|e| HandlerError::Poison(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PartitionKey {
        ("t".into(), 0)
    }

    #[test]
    fn stores_only_below_the_oldest_record_in_flight() {
        let mut t = OffsetTracker::default();
        let g = t.begin(&key(), 10);
        t.begin(&key(), 11);
        t.begin(&key(), 12);
        assert_eq!(t.complete(&key(), g, 12), None);
        assert_eq!(t.complete(&key(), g, 10), Some(10));
        assert_eq!(t.complete(&key(), g, 11), Some(12));
    }

    #[test]
    fn a_rewind_discards_completions_of_older_generations() {
        let mut t = OffsetTracker::default();
        let g0 = t.begin(&key(), 5);
        t.begin(&key(), 6);
        assert_eq!(t.complete(&key(), g0, 5), Some(5));
        t.rewind(&key(), 6);
        // A record fetched after 6 before the rewind finishes late: it must not count.
        assert_eq!(t.complete(&key(), g0, 7), None);
        let g1 = t.begin(&key(), 6);
        t.begin(&key(), 7);
        assert_eq!(t.complete(&key(), g1, 7), None);
        assert_eq!(t.complete(&key(), g1, 6), Some(7));
    }

    #[test]
    fn a_record_before_the_rewind_point_still_counts() {
        // 5 and 6 in flight; 6 is not due yet and rewinds the partition to 6 first.
        let mut t = OffsetTracker::default();
        let g0 = t.begin(&key(), 5);
        t.begin(&key(), 6);
        t.rewind(&key(), 6);
        // 5 is not read again, so its answer (done, or not due either) must count...
        assert!(!t.is_stale(&key(), g0, 5));
        assert!(t.is_stale(&key(), g0, 6));
        // ...and nothing past it is stored before it finishes.
        let g1 = t.begin(&key(), 6);
        assert_eq!(t.complete(&key(), g1, 6), None);
        assert_eq!(t.complete(&key(), g0, 5), Some(6));
    }

    #[test]
    fn nothing_is_stored_twice() {
        let mut t = OffsetTracker::default();
        let g = t.begin(&key(), 0);
        assert_eq!(t.complete(&key(), g, 0), Some(0));
        let g = t.begin(&key(), 0);
        assert_eq!(t.complete(&key(), g, 0), None);
    }
}
