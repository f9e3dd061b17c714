//! Kafka plumbing: how a stage connects, produces and consumes.
//!
//! - [`KafkaConnection`]: brokers + settings + topic names, the handle a stage is given.
//! - [`Producer`]: idempotent (`acks=all`, `enable.idempotence`), lz4, small linger;
//!   `send` resolves once the broker has the record.
//! - [`consumer::run`]: the at-least-once loop. Handlers run concurrently; a partition's
//!   offset is stored only up to the last record whose handler finished, so a crash
//!   redelivers, never skips. Poison records go to the DLQ with the reason. A handler may
//!   answer "not before T" (delay topics): the partition is paused and rewound to that
//!   record until T, never blocked.
//! - [`blobs::BlobReader`]: a request's shared parts read back by offset, cached.
//! - [`lag::LagProbe`]: consumer-group lag asked of the broker from outside the group.
//! - [`admin`]: every topic's settings, and `migrate`'s reconciliation of a cluster with
//!   them (topics are never auto-created).
//!
//! There is no in-memory broker: librdkafka's mock cluster keeps ~5 MB per partition
//! and nothing across a restart, so a stage that falls behind silently loses records.
//! Every process, test and benchmark runs on Apache Kafka (`deploy/local` starts one).

pub mod admin;
pub mod blobs;
pub mod consumer;
pub mod lag;
mod producer;

pub use consumer::{ConsumerSpec, Handled, HandlerError, Record};
pub use producer::{ProduceError, Producer};
pub use rdkafka::error::KafkaError;

use crate::config::KafkaConfig;
use rdkafka::ClientConfig;
use sendmill_wire::Topics;

/// Where and how a stage talks to Kafka.
#[derive(Clone, Debug)]
pub struct KafkaConnection {
    pub brokers: String,
    pub config: KafkaConfig,
    pub topics: Topics,
}

impl KafkaConnection {
    pub fn new(brokers: impl Into<String>, config: KafkaConfig) -> Self {
        let topics = Topics::new(config.topic_prefix.clone());
        Self {
            brokers: brokers.into(),
            config,
            topics,
        }
    }

    /// librdkafka settings shared by every client of this connection.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.config.client {
            c.set(key, value);
        }
        c
    }

    pub fn producer(&self) -> Result<Producer, KafkaError> {
        Ok(
            Producer::new(self.client_config(), self.config.max_message_bytes)?
                .writing_version::<sendmill_wire::ReadyV1>(self.config.ready_version)
                .writing_version::<sendmill_wire::RequestedV1>(self.config.requested_version)
                .sharing_parts(self.config.requested_version >= 3),
        )
    }

    /// A readiness probe ([`crate::health`]): the cluster answers a metadata request for
    /// the dead-letter topic (every stage may write it) within the probe timeout, and has
    /// a leader for its partitions.
    pub fn readiness_probe(&self) -> Result<crate::health::Probe, KafkaError> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        // A client without a group: metadata requests only.
        let client: std::sync::Arc<BaseConsumer> =
            std::sync::Arc::new(self.client_config().create()?);
        let topic = self.topics.dlq();
        Ok(crate::health::Probe::new("kafka", move || {
            let (client, topic) = (client.clone(), topic.clone());
            Box::pin(async move {
                // A metadata request blocks: off the runtime's threads.
                tokio::task::spawn_blocking(move || {
                    let metadata = client
                        .fetch_metadata(Some(&topic), crate::health::PROBE_TIMEOUT)
                        .map_err(|e| format!("metadata request: {e}"))?;
                    match metadata.topics().first() {
                        Some(t)
                            if t.error().is_none()
                                && t.partitions().iter().all(|p| p.leader() >= 0) =>
                        {
                            Ok(())
                        }
                        Some(t) if t.error().is_some() => {
                            Err(format!("topic {topic}: {:?}", t.error()))
                        }
                        _ => Err(format!("topic {topic}: a partition has no leader")),
                    }
                })
                .await
                .map_err(|e| e.to_string())?
            })
        }))
    }

    /// The consumer group `group_id` of this installation: carries the topic prefix, so
    /// that installations (and tests) sharing a cluster never share a group, whose
    /// rebalances would then stop them all.
    pub fn group_id(&self, group_id: &str) -> String {
        format!("{}{group_id}", self.config.topic_prefix)
    }

    /// Settings of client `member` (the topic it reads: unique within this process) of a consumer in
    /// `group_id` (prefixed by [`KafkaConnection::group_id`]) (the at-least-once loop's; see [`consumer`]):
    /// offsets stored by the loop after each side effect and committed every second,
    /// cooperative-sticky assignment (a rebalance moves only the partitions that change
    /// owner; the others keep flowing), static membership when `group_instance_id` is
    /// set, fetch limits that take the largest record.
    pub fn consumer_config(&self, group_id: &str, member: &str) -> ClientConfig {
        let group_id = &self.group_id(group_id);
        let mut c = self.client_config();
        // librdkafka fetches up to `fetch.max.bytes` per request and refuses responses
        // over `receive.message.max.bytes`, which must exceed it.
        let fetch_max = self.config.max_message_bytes.max(50 * 1024 * 1024);
        c.set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                self.config.session_timeout.as_millis().to_string(),
            )
            .set("fetch.max.bytes", fetch_max.to_string())
            .set(
                "receive.message.max.bytes",
                (fetch_max + 1024 * 1024).to_string(),
            );
        if !self.config.group_instance_id.is_empty() {
            // One id per client: a process runs one client per topic of a group.
            c.set(
                "group.instance.id",
                format!("{}.{group_id}.{member}", self.config.group_instance_id),
            );
        }
        c
    }
}
