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
//! - [`lag::LagProbe`]: consumer-group lag asked of the broker from outside the group.
//! - [`EmbeddedBroker`]: librdkafka's in-memory mock cluster for `sendmill all`,
//!   `sendmill dev-broker` and tests. Nothing in it is durable.

pub mod consumer;
mod embedded;
pub mod lag;
mod producer;

pub use consumer::{ConsumerSpec, Handled, HandlerError, Record};
pub use embedded::EmbeddedBroker;
pub use producer::{ProduceError, Producer};
pub use rdkafka::error::KafkaError;

use crate::config::KafkaConfig;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
    ClientConfig,
};
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
        Producer::new(self.client_config())
    }

    /// Creates `topics` on a real cluster (admin API), leaving existing ones alone.
    pub async fn ensure_topics(&self, topics: &[String]) -> Result<(), KafkaError> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.config.partitions,
                    TopicReplication::Fixed(self.config.replication_factor),
                )
            })
            .collect();
        for result in admin.create_topics(&new, &AdminOptions::new()).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                        tracing::error!(%topic, ?code, "cannot create topic");
                    })
                }
            }
        }
        Ok(())
    }
}
