//! Topic names. Every name carries the configured prefix (so tests and tenants of a shared
//! cluster stay apart), the priority lane where the pipeline has lanes, and the payload
//! version.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Priority lane: transactional mail never queues behind a bulk campaign.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    #[default]
    Transactional,
    Bulk,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Transactional, Lane::Bulk];

    /// The short form used in topic names.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Transactional => "tx",
            Lane::Bulk => "bulk",
        }
    }
}

/// The delay topics a temporarily failed message waits in before its next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetryTier {
    #[serde(rename = "1m")]
    OneMinute,
    #[serde(rename = "5m")]
    FiveMinutes,
    #[serde(rename = "15m")]
    FifteenMinutes,
    #[serde(rename = "1h")]
    OneHour,
}

impl RetryTier {
    pub const ALL: [RetryTier; 4] = [
        RetryTier::OneMinute,
        RetryTier::FiveMinutes,
        RetryTier::FifteenMinutes,
        RetryTier::OneHour,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryTier::OneMinute => "1m",
            RetryTier::FiveMinutes => "5m",
            RetryTier::FifteenMinutes => "15m",
            RetryTier::OneHour => "1h",
        }
    }

    /// The delay the tier's topic is named after: the dispatcher's default for it
    /// (`dispatcher.retry_delays` may set another).
    pub fn delay(self) -> Duration {
        Duration::from_secs(match self {
            RetryTier::OneMinute => 60,
            RetryTier::FiveMinutes => 300,
            RetryTier::FifteenMinutes => 900,
            RetryTier::OneHour => 3600,
        })
    }
}

/// Names every topic of one Sendmill installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// `prefix` is prepended verbatim (e.g. `"staging."`); empty for none.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn requested(&self, lane: Lane) -> String {
        format!("{}sendmill.requested.{}.v1", self.prefix, lane.as_str())
    }

    pub fn ready(&self, lane: Lane) -> String {
        format!("{}sendmill.ready.{}.v1", self.prefix, lane.as_str())
    }

    pub fn retry(&self, lane: Lane, tier: RetryTier) -> String {
        format!(
            "{}sendmill.retry.{}.{}.v1",
            self.prefix,
            lane.as_str(),
            tier.as_str()
        )
    }

    pub fn events(&self) -> String {
        format!("{}sendmill.events.v1", self.prefix)
    }

    pub fn dlq(&self) -> String {
        format!("{}sendmill.dlq.v1", self.prefix)
    }

    pub fn alerts(&self) -> String {
        format!("{}sendmill.alerts.v1", self.prefix)
    }

    /// The large parts of requests, each written once and referenced by its recipients'
    /// `requested` records ([`crate::SharedParts`]).
    pub fn blobs(&self) -> String {
        format!("{}sendmill.blobs.v1", self.prefix)
    }

    /// Mail the inbound SMTP server took, before it is classified.
    pub fn inbound(&self) -> String {
        format!("{}sendmill.inbound.v1", self.prefix)
    }

    /// The topics accepted messages wait in (requested, ready, retry), per lane.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = Vec::new();
        for lane in Lane::ALL {
            queues.push(self.requested(lane));
            queues.push(self.ready(lane));
            for tier in RetryTier::ALL {
                queues.push(self.retry(lane, tier));
            }
        }
        queues
    }

    /// Every topic, for creating them on a broker.
    pub fn all(&self) -> Vec<String> {
        let mut all = self.queues();
        all.push(self.events());
        all.push(self.dlq());
        all.push(self.alerts());
        all.push(self.inbound());
        all.push(self.blobs());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_prefix_lane_tier_and_version() {
        let topics = Topics::new("t1.");
        assert_eq!(
            topics.requested(Lane::Bulk),
            "t1.sendmill.requested.bulk.v1"
        );
        assert_eq!(topics.ready(Lane::Transactional), "t1.sendmill.ready.tx.v1");
        assert_eq!(
            topics.retry(Lane::Transactional, RetryTier::FifteenMinutes),
            "t1.sendmill.retry.tx.15m.v1"
        );
        assert_eq!(topics.events(), "t1.sendmill.events.v1");
        assert_eq!(topics.inbound(), "t1.sendmill.inbound.v1");
        let all = topics.all();
        assert_eq!(topics.blobs(), "t1.sendmill.blobs.v1");
        assert_eq!(all.len(), 2 * 6 + 5);
        let unique: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
    }
}
