//! Consumer-group lag seen from outside the group: for each group, the records between
//! its committed offsets and the end of every partition it reads. The stages report
//! their own lag as a metric every few seconds; this is what a benchmark or an operator
//! tool asks the broker directly, without joining any group.
//!
//! Calls block on the broker: run them on a blocking thread.

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    Offset, TopicPartitionList,
};
use std::time::Duration;

use super::KafkaConnection;

/// One consumer group and the topics it reads.
pub struct GroupTopics {
    pub group_id: String,
    pub topics: Vec<String>,
}

pub struct LagProbe {
    /// One client per group: librdkafka fetches committed offsets of its own group only.
    groups: Vec<(String, BaseConsumer, TopicPartitionList)>,
    /// Every partition of every probed topic, for the watermarks.
    watermarks: BaseConsumer,
    timeout: Duration,
}

impl LagProbe {
    /// Looks up the partitions of each group's topics once; topics must exist.
    pub fn new(
        kafka: &KafkaConnection,
        groups: Vec<GroupTopics>,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let watermarks: BaseConsumer = kafka.client_config().create()?;
        let mut probed = Vec::with_capacity(groups.len());
        for group in groups {
            let mut partitions = TopicPartitionList::new();
            for topic in &group.topics {
                let metadata = watermarks.fetch_metadata(Some(topic), timeout)?;
                for t in metadata.topics() {
                    for p in t.partitions() {
                        partitions.add_partition(topic, p.id());
                    }
                }
            }
            let consumer: BaseConsumer = kafka
                .client_config()
                .set("group.id", kafka.group_id(&group.group_id))
                .set("enable.auto.commit", "false")
                .create()?;
            probed.push((group.group_id, consumer, partitions));
        }
        Ok(Self {
            groups: probed,
            watermarks,
            timeout,
        })
    }

    /// Each group's total lag, in the order given to [`LagProbe::new`]. A partition the
    /// group has not committed yet counts from its low watermark: all of it is waiting.
    pub fn sample(&self) -> Result<Vec<(String, i64)>, KafkaError> {
        let mut lags = Vec::with_capacity(self.groups.len());
        for (group, consumer, partitions) in &self.groups {
            let committed = consumer.committed_offsets(partitions.clone(), self.timeout)?;
            let mut lag = 0;
            for element in committed.elements() {
                let (low, high) = self.watermarks.fetch_watermarks(
                    element.topic(),
                    element.partition(),
                    self.timeout,
                )?;
                lag += match element.offset() {
                    Offset::Offset(at) => (high - at).max(0),
                    _ => (high - low).max(0),
                };
            }
            lags.push((group.clone(), lag));
        }
        Ok(lags)
    }
}
