//! The consumer loop's Kafka clients: one `StreamConsumer` per subscribed topic, all
//! members of the stage's group, addressed as one.

use super::ConsumerSpec;
use crate::{health::Condition, kafka::KafkaConnection};
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, KafkaResult},
    ClientContext, Offset, TopicPartitionList,
};
use std::time::Duration;

/// A client's context: its readiness condition holds once the group has given it an
/// assignment (possibly of no partition: more members than partitions), and fails while
/// a rebalance errs. Called on the thread that polls the client.
pub(crate) struct GroupContext {
    joined: Condition,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) => self.joined.holds(),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => self.joined.fails(format!("rebalance failed: {error}")),
        }
    }
}

pub(crate) type Client = StreamConsumer<GroupContext>;

/// The loop's clients: one per subscribed topic, all members of the stage's group.
///
/// Why not one client subscribed to every topic: with cooperative-sticky assignment a
/// member that joins takes over whole topics when that balances the partition counts
/// (librdkafka moves them in sorted order), so a second dispatcher got both partitions
/// of `ready.bulk` and none of `ready.tx` and sent nothing (found by the two-dispatcher
/// shaping test on Apache Kafka). A client per topic is assigned only that topic's
/// partitions, so every topic is spread over the processes on its own.
pub(crate) struct GroupClients {
    pub(super) clients: Vec<(String, Client)>,
}

impl GroupClients {
    pub(super) fn subscribe(
        kafka: &KafkaConnection,
        spec: &ConsumerSpec,
    ) -> Result<Self, KafkaError> {
        let mut clients = Vec::with_capacity(spec.topics.len());
        for topic in &spec.topics {
            let joined = Condition::new(
                format!(
                    "kafka consumer {} of {topic}",
                    kafka.group_id(&spec.group_id)
                ),
                "joining the consumer group",
            );
            let client: Client = kafka
                .consumer_config(&spec.group_id, topic)
                .create_with_context(GroupContext { joined })?;
            client.subscribe(&[topic.as_str()])?;
            clients.push((topic.clone(), client));
        }
        crate::health::consumer_subscribed(&kafka.group_id(&spec.group_id));
        Ok(Self { clients })
    }

    fn client(&self, topic: &str) -> Option<&Client> {
        self.clients
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, client)| client)
    }

    /// `list` split by the client that owns each partition's topic.
    fn by_client(&self, list: &TopicPartitionList) -> Vec<(&Client, TopicPartitionList)> {
        let mut split: Vec<(&Client, TopicPartitionList)> = Vec::new();
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

    pub(super) fn assignment(&self) -> KafkaResult<TopicPartitionList> {
        let mut all = TopicPartitionList::new();
        for (_, client) in &self.clients {
            for e in client.assignment()?.elements() {
                all.add_partition(e.topic(), e.partition());
            }
        }
        Ok(all)
    }

    pub(super) fn pause(&self, list: &TopicPartitionList) -> KafkaResult<()> {
        for (client, part) in self.by_client(list) {
            client.pause(&part)?;
        }
        Ok(())
    }

    pub(super) fn resume(&self, list: &TopicPartitionList) -> KafkaResult<()> {
        for (client, part) in self.by_client(list) {
            client.resume(&part)?;
        }
        Ok(())
    }

    pub(super) fn seek(
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

    pub(super) fn store_offset(&self, topic: &str, partition: i32, offset: i64) -> KafkaResult<()> {
        match self.client(topic) {
            Some(client) => client.store_offset(topic, partition, offset),
            None => Ok(()),
        }
    }

    /// Marks every client not ready, for `reason` (e.g. draining after SIGTERM).
    pub(super) fn not_ready(&self, reason: &str) {
        for (_, client) in &self.clients {
            client.context().joined.fails(reason);
        }
    }

    /// Closes every client, side by side.
    pub(super) fn close(self) {
        std::thread::scope(|scope| {
            for (_, client) in self.clients {
                scope.spawn(move || drop(client));
            }
        });
    }

    pub(super) fn commit_consumer_state(&self, mode: CommitMode) -> KafkaResult<()> {
        let mut result = Ok(());
        for (_, client) in &self.clients {
            if let Err(error) = client.commit_consumer_state(mode) {
                result = Err(error);
            }
        }
        result
    }
}
