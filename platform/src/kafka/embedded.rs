//! The embedded broker: librdkafka's mock cluster, a Kafka-protocol broker in memory.
//! Other processes (and kcat) reach it over TCP at `bootstrap_servers()`. It has no admin
//! API for topics, so topics are created through the mock API here. Nothing survives the
//! process: say so to whoever starts it. It also keeps only the newest ~5 MB (or 100,000
//! record batches) of each partition, a limit librdkafka does not let us change: a
//! consumer group further behind than that is reset to the oldest record kept, and the
//! records between are lost to it.

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

    /// Takes the broker off the network (open connections dropped, new ones refused)
    /// or back on, keeping every record: what clients see of a broker restart.
    pub fn set_reachable(&self, reachable: bool) -> Result<(), KafkaError> {
        // The mock cluster's one broker has id 1.
        if reachable {
            self.cluster.broker_up(1)
        } else {
            self.cluster.broker_down(1)
        }
    }

    pub fn create_topics(&self, topics: &[String], partitions: i32) -> Result<(), KafkaError> {
        for topic in topics {
            self.cluster.create_topic(topic, partitions, 1)?;
        }
        Ok(())
    }
}
