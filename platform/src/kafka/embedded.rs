//! The embedded broker: librdkafka's mock cluster, a Kafka-protocol broker in memory.
//! Other processes (and kcat) reach it over TCP at `bootstrap_servers()`. It has no admin
//! API for topics, so topics are created through the mock API here. Nothing survives the
//! process: say so to whoever starts it.

use rdkafka::{error::KafkaError, mocking::MockCluster, producer::DefaultProducerContext};

pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    pub fn start() -> Result<Self, KafkaError> {
        Ok(Self {
            cluster: MockCluster::new(1)?,
        })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    pub fn create_topics(&self, topics: &[String], partitions: i32) -> Result<(), KafkaError> {
        for topic in topics {
            self.cluster.create_topic(topic, partitions, 1)?;
        }
        Ok(())
    }
}
