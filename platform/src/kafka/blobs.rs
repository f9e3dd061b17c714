//! A request's shared parts: written once to the blobs topic ([`write_shared`]), and read
//! back by (partition, offset) ([`BlobReader`]).
//!
//! Ingest writes a request's large parts once ([`SharedParts`]) and each recipient's
//! `requested` record points to them ([`SharedRef`]); render needs them once per request
//! per process, not once per recipient. [`BlobReader`] keeps what it read in a cache
//! bounded in bytes, and fetches what is missing on one thread of its own with a
//! group-less consumer that assigns each wanted partition at the wanted offset (Kafka
//! reads by offset in one fetch; librdkafka's `poll` blocks, so it is not on the async
//! runtime). Concurrent wants of one record share one read.
//!
//! Outcomes ([`Blob`]): the parts; or [`Blob::Gone`] when the record is not there (the
//! broker says the offset is before the partition's first record, i.e. retention removed
//! it, or past its last, or the partition does not exist) or is not the one referenced
//! (another length or SHA-256, checked for each reference on its own): a final answer,
//! and the message ends in `render_failed`. A broker that does not answer is
//! [`BlobUnavailable`] after [`READ_TIMEOUT`], and the caller retries.

use super::KafkaConnection;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::Message,
    types::RDKafkaErrorCode,
    Offset, TopicPartitionList,
};
use sendmill_wire::{SharedParts, SharedRef};
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, oneshot};

/// Parts shared by records are written once when that saves at least this many bytes of
/// records: below it the blob's extra acknowledged produce (one round trip before the
/// records) costs more than the bytes it saves.
pub const SHARE_MIN_SAVED_BYTES: usize = 16 * 1024;

/// Writes the large parts `records` share to the blobs topic `topic`, once, and answers
/// where they are (each record then goes out as `record.pointing_to(reference)`). `None`,
/// nothing written: `producer` does not share parts (`kafka.requested_version` below 3),
/// the records' parts differ, or sharing would save less than [`SHARE_MIN_SAVED_BYTES`].
///
/// Errors: the broker did not acknowledge the blob (nothing is known written; retry).
pub async fn write_shared(
    producer: &super::Producer,
    topic: &str,
    records: &[&sendmill_wire::RequestedV1],
) -> Result<Option<SharedRef>, super::ProduceError> {
    let Some((first, others)) = records.split_first() else {
        return Ok(None);
    };
    if !producer.shares_parts() || !others.iter().all(|r| r.same_parts(first)) {
        return Ok(None);
    }
    let mut parts_of = (*first).clone();
    let parts = SharedParts::take_from(&mut parts_of);
    if others.len().saturating_mul(parts.len()) < SHARE_MIN_SAVED_BYTES {
        return Ok(None);
    }
    let bytes = parts.to_bytes();
    let key = first.batch_id.to_string();
    let (partition, offset) = producer
        .send_bytes_at(topic, &key, &bytes, sendmill_wire::BLOB_SCHEMA)
        .await?;
    Ok(Some(SharedParts::reference(&bytes, partition, offset)))
}

/// How long a read may go without an answer before it fails as [`BlobUnavailable`].
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the fetch thread waits for a partition's first and next offsets.
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(2);

/// What a reference leads to.
#[derive(Clone, Debug)]
pub enum Blob {
    Found(Arc<SharedParts>),
    /// Not in the topic, or not the referenced bytes: why, for the `render_failed`
    /// event.
    Gone(String),
}

/// The broker did not answer within [`READ_TIMEOUT`], or the reader is stopped: retry.
#[derive(Debug, thiserror::Error)]
#[error("the blobs topic did not answer: {0}")]
pub struct BlobUnavailable(String);

type Position = (i32, i64);

struct Want {
    reference: SharedRef,
    reply: oneshot::Sender<Result<Blob, BlobUnavailable>>,
}

/// Reads shared parts by reference, cached; one per process (see the module doc).
pub struct BlobReader {
    wants: mpsc::UnboundedSender<Want>,
    cache: Arc<Mutex<Cache>>,
}

impl BlobReader {
    /// A reader of `kafka`'s blobs topic keeping up to `max_cached_bytes` of parts
    /// (at least the last one read, whatever its size). Starts its fetch thread, which
    /// ends when the reader is dropped.
    ///
    /// Errors: the consumer cannot be created (bad client settings).
    pub fn new(kafka: &KafkaConnection, max_cached_bytes: usize) -> Result<Self, KafkaError> {
        let fetch_max = kafka.config.max_message_bytes.max(50 * 1024 * 1024);
        let mut config = kafka.client_config();
        // Never joins the group (partitions are assigned, not subscribed) and never
        // commits: the id only satisfies clients that want one.
        config
            .set("group.id", kafka.group_id("sendmill-blob-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // An offset outside the partition (retention removed the record, or the
            // topic was made again) is an error to answer, never a reason to read the
            // partition from its start.
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "50")
            // What it fetches past the wanted record is dropped: keep little of it.
            .set("queued.max.messages.kbytes", "16384")
            .set("fetch.max.bytes", fetch_max.to_string())
            .set(
                "receive.message.max.bytes",
                (fetch_max + 1024 * 1024).to_string(),
            );
        let consumer: BaseConsumer = config.create()?;
        let cache = Arc::new(Mutex::new(Cache::new(max_cached_bytes)));
        let (wants, receiver) = mpsc::unbounded_channel();
        let fetcher = Fetcher {
            consumer,
            topic: kafka.topics.blobs(),
            wants: receiver,
            pending: BTreeMap::new(),
            assigned: BTreeMap::new(),
            cache: cache.clone(),
        };
        std::thread::Builder::new()
            .name("blob-reader".into())
            .spawn(move || fetcher.run())
            .expect("a thread can be started");
        Ok(Self { wants, cache })
    }

    /// The parts `reference` names, from the cache or the topic.
    ///
    /// Errors: [`BlobUnavailable`] when the broker did not answer in time.
    pub async fn get(&self, reference: &SharedRef) -> Result<Blob, BlobUnavailable> {
        if let Some(found) = self.cache.lock().expect("not poisoned").get(reference) {
            return Ok(found);
        }
        let (reply, answer) = oneshot::channel();
        self.wants
            .send(Want {
                reference: reference.clone(),
                reply,
            })
            .map_err(|_| BlobUnavailable("the reader stopped".into()))?;
        answer
            .await
            .map_err(|_| BlobUnavailable("the reader stopped".into()))?
    }
}

/// Parts read, by position, the oldest dropped first past the byte limit.
struct Cache {
    max_bytes: usize,
    bytes: usize,
    /// By position: the SHA-256 and length of the bytes there, and their parts.
    parts: HashMap<Position, (String, u64, Arc<SharedParts>)>,
    order: VecDeque<Position>,
}

impl Cache {
    fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            bytes: 0,
            parts: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The cached parts at `reference`'s position, when their SHA-256 is the
    /// reference's (another one there is [`Blob::Gone`]).
    fn get(&self, reference: &SharedRef) -> Option<Blob> {
        let (sha256, len, parts) = self.parts.get(&(reference.partition, reference.offset))?;
        Some(if *sha256 == reference.sha256 && *len == reference.len {
            Blob::Found(parts.clone())
        } else {
            Blob::Gone(gone_other(reference))
        })
    }

    /// Keeps `parts`, the bytes `actual` describes (where they are, their SHA-256 and
    /// length).
    fn insert(&mut self, actual: &SharedRef, parts: Arc<SharedParts>) {
        let position = (actual.partition, actual.offset);
        self.bytes += parts.len();
        let entry = (actual.sha256.clone(), actual.len, parts);
        if let Some((_, _, old)) = self.parts.insert(position, entry) {
            self.bytes -= old.len();
        } else {
            self.order.push_back(position);
        }
        while self.bytes > self.max_bytes && self.order.len() > 1 {
            let oldest = self.order.pop_front().expect("more than one");
            if let Some((_, _, old)) = self.parts.remove(&oldest) {
                self.bytes -= old.len();
            }
        }
    }
}

fn gone_other(reference: &SharedRef) -> String {
    format!(
        "the blobs record at partition {} offset {} is not the one this message references",
        reference.partition, reference.offset
    )
}

/// The fetch thread's state.
struct Fetcher {
    consumer: BaseConsumer,
    topic: String,
    wants: mpsc::UnboundedReceiver<Want>,
    /// Wants not yet answered, by position, with when the first came.
    pending: BTreeMap<Position, (Instant, Vec<Want>)>,
    /// The offset each partition is assigned at: its lowest pending one.
    assigned: BTreeMap<i32, i64>,
    cache: Arc<Mutex<Cache>>,
}

impl Fetcher {
    fn run(mut self) {
        loop {
            if self.pending.is_empty() && !self.assigned.is_empty() {
                // Idle: stop fetching ahead.
                let _ = self.consumer.unassign();
                self.assigned.clear();
            }
            if self.pending.is_empty() {
                // Nothing to read: wait for a want (none ever again: the reader is gone).
                match self.wants.blocking_recv() {
                    Some(want) => self.take(want),
                    None => return,
                }
            }
            while let Ok(want) = self.wants.try_recv() {
                self.take(want);
            }
            if self.pending.is_empty() {
                continue;
            }
            self.assign();
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(record)) => {
                    let position = (record.partition(), record.offset());
                    let bytes = record.payload().unwrap_or_default().to_vec();
                    drop(record);
                    self.arrived(position, &bytes);
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => self.at_end(partition),
                Some(Err(error)) => {
                    let out_of_range = error.rdkafka_error_code().is_some_and(|code| {
                        matches!(
                            code,
                            RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange
                        )
                    });
                    if out_of_range {
                        self.out_of_range();
                    } else {
                        tracing::warn!(%error, "reading the blobs topic");
                    }
                }
                None => {}
            }
            self.time_out();
        }
    }

    /// Answers `want` from the cache, or adds it to the pending ones.
    fn take(&mut self, want: Want) {
        if let Some(found) = self
            .cache
            .lock()
            .expect("not poisoned")
            .get(&want.reference)
        {
            let _ = want.reply.send(Ok(found));
            return;
        }
        if want.reference.partition < 0 || want.reference.offset < 0 {
            let gone = Blob::Gone(gone_other(&want.reference));
            let _ = want.reply.send(Ok(gone));
            return;
        }
        let position = (want.reference.partition, want.reference.offset);
        self.pending
            .entry(position)
            .or_insert_with(|| (Instant::now(), Vec::new()))
            .1
            .push(want);
    }

    /// Assigns each partition with a pending want at its lowest pending offset, when
    /// that is not what is assigned already.
    fn assign(&mut self) {
        let mut wanted: BTreeMap<i32, i64> = BTreeMap::new();
        for &(partition, offset) in self.pending.keys() {
            wanted.entry(partition).or_insert(offset);
        }
        if wanted == self.assigned {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in &wanted {
            // Only the topic's name can make this fail, and it is ours.
            let _ = list.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        match self.consumer.assign(&list) {
            Ok(()) => self.assigned = wanted,
            Err(error) => tracing::warn!(%error, "assigning the blobs topic"),
        }
    }

    /// A record read at `position`: answers the wants of it, or of an offset before it
    /// in its partition that is then not in the topic any more.
    fn arrived(&mut self, position: Position, bytes: &[u8]) {
        let (partition, offset) = position;
        let Some(&target) = self.assigned.get(&partition) else {
            return;
        };
        if offset < target || target < 0 {
            return;
        }
        if offset > target {
            if !self.is_gone(partition, target) {
                return;
            }
            self.answer((partition, target), |r| {
                Blob::Gone(format!(
                    "the blobs record at partition {} offset {} is no longer kept \
                     (kafka.blobs_retention_hours)",
                    r.partition, r.offset
                ))
            });
            return;
        }
        if !self.pending.contains_key(&position) {
            return;
        }
        // What is there, hashed once; each want is answered against its own reference.
        let actual = SharedParts::reference(bytes, partition, offset);
        match SharedParts::read(bytes) {
            Ok(parts) => {
                let parts = Arc::new(parts);
                self.cache
                    .lock()
                    .expect("not poisoned")
                    .insert(&actual, parts.clone());
                self.answer(position, |r| {
                    if r.sha256 == actual.sha256 && r.len == actual.len {
                        Blob::Found(parts.clone())
                    } else {
                        Blob::Gone(gone_other(r))
                    }
                });
            }
            Err(error) => self.answer(position, |r| {
                Blob::Gone(format!("{}: {error}", gone_other(r)))
            }),
        }
    }

    /// The consumer could not fetch some assigned offset: the partitions whose wanted
    /// offset the broker says is outside them are answered [`Blob::Gone`].
    fn out_of_range(&mut self) {
        let assigned: Vec<(i32, i64)> = self
            .assigned
            .iter()
            .filter(|(_, &offset)| offset >= 0)
            .map(|(&p, &o)| (p, o))
            .collect();
        for (partition, offset) in assigned {
            if self.is_gone(partition, offset) {
                self.answer((partition, offset), |r| {
                    Blob::Gone(format!(
                        "the blobs topic has no record at partition {} offset {} \
                         (kafka.blobs_retention_hours)",
                        r.partition, r.offset
                    ))
                });
            }
        }
    }

    /// The end of `partition` reached before its assigned offset: no record has it.
    fn at_end(&mut self, partition: i32) {
        if let Some(&target) = self.assigned.get(&partition) {
            if target < 0 || !self.is_gone(partition, target) {
                return;
            }
            self.answer((partition, target), |r| {
                Blob::Gone(format!(
                    "the blobs topic has no record at partition {} offset {}",
                    r.partition, r.offset
                ))
            });
        }
    }

    /// Whether `partition` has no record at `offset`, asked of the broker (its first and
    /// next offsets): a record past the wanted one, or the partition's end, may still be
    /// left from the partition's assignment before. When the broker says the record is
    /// there (or does not answer), the partition is assigned again.
    fn is_gone(&mut self, partition: i32, offset: i64) -> bool {
        match self
            .consumer
            .fetch_watermarks(&self.topic, partition, WATERMARKS_TIMEOUT)
        {
            Ok((low, high)) if offset < low || offset >= high => true,
            Ok(_) | Err(_) => {
                self.assigned.insert(partition, -1);
                false
            }
        }
    }

    /// Answers every want of `position` with `outcome` of its reference, and marks the
    /// partition's assignment done (-1) so that it moves to its next pending offset or
    /// is dropped.
    fn answer(&mut self, position: Position, outcome: impl Fn(&SharedRef) -> Blob) {
        if let Some((_, wants)) = self.pending.remove(&position) {
            for want in wants {
                let _ = want.reply.send(Ok(outcome(&want.reference)));
            }
        }
        self.assigned.insert(position.0, -1);
    }

    /// Fails the wants older than [`READ_TIMEOUT`] (the caller retries them).
    fn time_out(&mut self) {
        let late: Vec<Position> = self
            .pending
            .iter()
            .filter(|(_, (since, _))| since.elapsed() > READ_TIMEOUT)
            .map(|(&position, _)| position)
            .collect();
        // One question to the broker per partition: is the offset there at all?
        let mut bounds: BTreeMap<i32, Result<(i64, i64), bool>> = BTreeMap::new();
        for &(partition, _) in &late {
            bounds.entry(partition).or_insert_with(|| {
                self.consumer
                    .fetch_watermarks(&self.topic, partition, WATERMARKS_TIMEOUT)
                    .map_err(|e| {
                        e.rdkafka_error_code().is_some_and(|code| {
                            matches!(
                                code,
                                RDKafkaErrorCode::UnknownPartition
                                    | RDKafkaErrorCode::UnknownTopicOrPartition
                            )
                        })
                    })
            });
        }
        for position in late {
            let gone = match bounds[&position.0] {
                Ok((low, high)) => position.1 < low || position.1 >= high,
                // A partition the topic does not have: no retry will find it.
                Err(unknown) => unknown,
            };
            if gone {
                self.answer(position, |r| {
                    Blob::Gone(format!(
                        "the blobs topic has no record at partition {} offset {}",
                        r.partition, r.offset
                    ))
                });
                continue;
            }
            if let Some((_, wants)) = self.pending.remove(&position) {
                for want in wants {
                    let _ = want.reply.send(Err(BlobUnavailable(format!(
                        "no answer for partition {} offset {} within {} s",
                        position.0,
                        position.1,
                        READ_TIMEOUT.as_secs()
                    ))));
                }
            }
            self.assigned.insert(position.0, -1);
        }
    }
}
