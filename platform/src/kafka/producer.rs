//! The idempotent producer every stage writes with. Each record carries its payload's
//! schema and the W3C trace context of the span that wrote it.

use crate::traces::TraceHeaders;
use rdkafka::{
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
    ClientConfig,
};
use sendmill_wire::{encode, WirePayload};
use std::time::Duration;

/// The Kafka header naming a record's payload type and version.
pub const SCHEMA_HEADER: &str = "sendmill-schema";

#[derive(Debug, thiserror::Error)]
#[error("cannot produce to {topic}: {source}")]
pub struct ProduceError {
    pub topic: String,
    #[source]
    pub source: KafkaError,
}

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    /// The schemas written in their previous version ([`WirePayload::previous_version`]):
    /// `kafka.ready_version = 1` and `kafka.requested_version = 1`, during a rolling
    /// upgrade.
    previous_versions: Vec<&'static str>,
    /// Whether a request's large parts may be written once to the blobs topic and
    /// referenced from its records (`kafka.requested_version` 3; see
    /// [`super::blobs::write_shared`]).
    shares_parts: bool,
}

impl Producer {
    /// A producer with `config`'s brokers and client settings; `max_message_bytes` is
    /// the largest record it takes (`kafka.max_message_bytes`, matching the topics').
    pub fn new(mut config: ClientConfig, max_message_bytes: u32) -> Result<Self, KafkaError> {
        let inner = config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            // Records with attachments are large; `migrate` gives every topic the same
            // `max.message.bytes`.
            .set("message.max.bytes", max_message_bytes.to_string())
            // A record the broker has not taken within this time fails, and the caller
            // retries it: a message is never silently dropped by the client.
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self {
            inner,
            previous_versions: Vec::new(),
            shares_parts: false,
        })
    }

    /// This producer sharing requests' large parts through the blobs topic when
    /// `shares` (`kafka.requested_version` 3), or copying them into every record.
    pub fn sharing_parts(mut self, shares: bool) -> Self {
        self.shares_parts = shares;
        self
    }

    /// Whether it shares requests' large parts ([`Producer::sharing_parts`]).
    pub fn shares_parts(&self) -> bool {
        self.shares_parts
    }

    /// This producer writing `T`'s records as `version`: 1, the previous version
    /// (`kafka.ready_version`, `kafka.requested_version`); anything else, this build's.
    pub fn writing_version<T: WirePayload>(mut self, version: u8) -> Self {
        if version == 1 {
            self.previous_versions.push(T::SCHEMA);
        }
        self
    }

    /// `payload`'s schema and bytes as this producer writes them: this build's version,
    /// or the previous one during a rolling upgrade ([`Producer::writing_version`]).
    pub fn encode<T: WirePayload>(&self, payload: &T) -> (&'static str, Vec<u8>) {
        if self.previous_versions.contains(&T::SCHEMA) {
            if let Some(previous) = payload.previous_version() {
                return previous;
            }
        }
        (payload.schema(), encode(payload))
    }

    /// Writes `payload` to `topic` under `key` and waits until the broker has it.
    pub async fn send<T: WirePayload>(
        &self,
        topic: &str,
        key: &str,
        payload: &T,
    ) -> Result<(), ProduceError> {
        let (schema, bytes) = self.encode(payload);
        self.send_bytes(topic, key, &bytes, schema).await
    }

    /// Writes `bytes` (a record of `schema`) to `topic` under `key` and waits until the
    /// broker has it.
    ///
    /// Errors: the broker did not take it within `message.timeout.ms` (30 s), or refused
    /// it; nothing is known written, and the caller retries.
    pub async fn send_bytes(
        &self,
        topic: &str,
        key: &str,
        bytes: &[u8],
        schema: &str,
    ) -> Result<(), ProduceError> {
        self.send_bytes_at(topic, key, bytes, schema)
            .await
            .map(|_| ())
    }

    /// [`Producer::send_bytes`], answering where the broker put the record:
    /// (partition, offset).
    pub async fn send_bytes_at(
        &self,
        topic: &str,
        key: &str,
        bytes: &[u8],
        schema: &str,
    ) -> Result<(i32, i64), ProduceError> {
        let headers = TraceHeaders::current().add_to_kafka(OwnedHeaders::new().insert(Header {
            key: SCHEMA_HEADER,
            value: Some(schema),
        }));
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(bytes)
            .headers(headers);
        let started = std::time::Instant::now();
        let result = self
            .inner
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await;
        metrics::histogram!(crate::metric::PRODUCE_SECONDS).record(started.elapsed().as_secs_f64());
        match result {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((source, _)) => {
                metrics::counter!(crate::metric::PRODUCE_ERRORS_TOTAL).increment(1);
                Err(ProduceError {
                    topic: topic.to_owned(),
                    source,
                })
            }
        }
    }
}
