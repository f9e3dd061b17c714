//! The terminal barrier: every message ends in exactly one terminal event. Before a
//! terminal event is written it is stored in Redis under the message id (`SET NX GET`,
//! kept `terminal_ttl`); a redelivered record finds it and re-writes the stored
//! event with its original event id, which ClickHouse deduplicates, instead of sending
//! again. Non-terminal events (`deferred`) are written as they are.

use crate::Dispatcher;
use sendmill_platform::{backoff, kafka::HandlerError};
use sendmill_wire::{EventV1, MessageId};

impl Dispatcher {
    fn terminal_key(&self, id: MessageId) -> String {
        format!("{}terminal:{id}", self.key_prefix)
    }

    /// The terminal event already recorded for `id`, if any.
    pub(crate) async fn recorded_terminal(
        &self,
        id: MessageId,
    ) -> Result<Option<EventV1>, HandlerError> {
        let key = self.terminal_key(id);
        let stored: Option<Vec<u8>> = backoff::until_ok("read terminal", &self.shutdown, || {
            let mut redis = self.redis.clone();
            let key = key.clone();
            async move { redis::cmd("GET").arg(&key).query_async(&mut redis).await }
        })
        .await?;
        Ok(stored.and_then(|bytes| sendmill_wire::decode(&bytes).ok()))
    }

    /// Records `event` as the message's terminal event unless one exists, then writes
    /// whichever is recorded to the events topic.
    pub(crate) async fn finish(&self, event: EventV1) -> Result<(), HandlerError> {
        let key = self.terminal_key(event.message_id);
        let encoded = sendmill_wire::encode(&event);
        let previous: Option<Vec<u8>> =
            backoff::until_ok("record terminal", &self.shutdown, || {
                let mut redis = self.redis.clone();
                let (key, encoded) = (key.clone(), encoded.clone());
                let ttl = self.config.terminal_ttl.as_secs().max(1);
                async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(encoded)
                        .arg("NX")
                        .arg("GET")
                        .arg("EX")
                        .arg(ttl)
                        .query_async(&mut redis)
                        .await
                }
            })
            .await?;
        let event = match previous.and_then(|bytes| sendmill_wire::decode::<EventV1>(&bytes).ok()) {
            Some(recorded) => recorded,
            None => event,
        };
        self.emit(&event).await
    }

    /// Writes `event` to the events topic (retrying until acknowledged or shutdown).
    pub(crate) async fn emit(&self, event: &EventV1) -> Result<(), HandlerError> {
        sendmill_platform::traces::annotate_event(event);
        let topic = self.kafka.topics.events();
        let key = event.message_id.to_string();
        backoff::until_ok("produce event", &self.shutdown, || {
            self.producer.send(&topic, &key, event)
        })
        .await?;
        metrics::counter!(crate::metric::DISPATCH_EVENTS_TOTAL, "type" => event.event_type.as_str())
            .increment(1);
        Ok(())
    }
}
