//! The reputation monitor: bounce and complaint rates per source IP and per account over
//! a sliding window, from the events topic as they happen. Past a threshold (with enough
//! volume for the rate to mean something) it pauses the IP or the account through the
//! Redis flags every dispatcher obeys, records an alert in PostgreSQL for the dashboard
//! and writes it to the alerts topic.
//!
//! Counts live in Redis, one hash per subject with a field per (minute bucket, outcome),
//! so every analytics process adds to the same window. One Lua call adds an outcome and
//! returns the window's sums. Resuming a subject deletes its hash (see
//! [`sendmill_tenancy::pauses::resume`]), so it is judged afresh.

use redis::{aio::ConnectionManager, Script};
use sendmill_platform::{
    backoff,
    kafka::{self, consumer::decode, ConsumerSpec, Handled, KafkaConnection},
    CancellationToken,
};
use sendmill_store::Store;
use sendmill_tenancy::pauses::{self, Target};
use sendmill_wire::{AlertV1, EventType, EventV1};
use serde::Deserialize;
use std::{net::IpAddr, sync::LazyLock, time::Duration};
use time::OffsetDateTime;

/// `[analytics.reputation]`: when the monitor pauses an IP or an account.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationConfig {
    /// Run the monitor in this analytics process.
    pub enabled: bool,
    /// Kafka consumer group of the monitor.
    pub group_id: String,
    /// Length of the sliding window rates are measured over.
    #[serde(with = "sendmill_platform::config::duration")]
    pub window: Duration,
    /// Time per bucket of the window (the window slides by this much).
    #[serde(with = "sendmill_platform::config::duration")]
    pub bucket: Duration,
    /// Messages sent in the window (delivered + bounced) before a rate is judged.
    pub min_volume: u64,
    /// Bounced / sent above which a source IP is paused.
    pub ip_bounce_rate: f64,
    /// Complained / delivered above which a source IP is paused.
    pub ip_complaint_rate: f64,
    /// Bounced / sent above which an account's sending is paused.
    pub account_bounce_rate: f64,
    /// Complained / delivered above which an account's sending is paused.
    pub account_complaint_rate: f64,
    /// Pause accounts past their thresholds (otherwise only IPs are paused).
    pub pause_accounts: bool,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            group_id: "sendmill-reputation".into(),
            window: Duration::from_secs(900),
            bucket: Duration::from_secs(60),
            min_volume: 200,
            ip_bounce_rate: 0.08,
            ip_complaint_rate: 0.003,
            account_bounce_rate: 0.10,
            account_complaint_rate: 0.005,
            pause_accounts: true,
        }
    }
}

/// Adds one outcome to a subject's current bucket and returns the window's sums of
/// delivered, bounced and complained. Buckets that slid out of the window are deleted.
static COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local bucket = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[1], bucket .. ':' .. ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
for k = n, 2 * n do
  local old = bucket - k
  redis.call('HDEL', KEYS[1], old .. ':d', old .. ':b', old .. ':c')
end
local sums = {0, 0, 0}
for i = 0, n - 1 do
  local b = bucket - i
  local v = redis.call('HMGET', KEYS[1], b .. ':d', b .. ':b', b .. ':c')
  for j = 1, 3 do sums[j] = sums[j] + (tonumber(v[j]) or 0) end
end
return sums
",
    )
});

/// The window's counts for one subject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub delivered: u64,
    pub bounced: u64,
    pub complained: u64,
}

impl Window {
    pub fn sent(&self) -> u64 {
        self.delivered + self.bounced
    }

    /// The first threshold crossed, as (metric, rate, threshold).
    pub fn verdict(
        &self,
        min_volume: u64,
        bounce_threshold: f64,
        complaint_threshold: f64,
    ) -> Option<(&'static str, f64, f64)> {
        if self.sent() < min_volume {
            return None;
        }
        let bounce = self.bounced as f64 / self.sent() as f64;
        if bounce > bounce_threshold {
            return Some(("bounce_rate", bounce, bounce_threshold));
        }
        let complaint = self.complained as f64 / self.delivered.max(1) as f64;
        if complaint > complaint_threshold {
            return Some(("complaint_rate", complaint, complaint_threshold));
        }
        None
    }
}

pub struct Monitor {
    redis: ConnectionManager,
    prefix: String,
    store: Store,
    producer: kafka::Producer,
    alerts_topic: String,
    config: ReputationConfig,
}

impl Monitor {
    pub fn new(
        redis: ConnectionManager,
        prefix: &str,
        store: Store,
        kafka: &KafkaConnection,
        config: ReputationConfig,
    ) -> Result<Self, kafka::KafkaError> {
        Ok(Self {
            redis,
            prefix: prefix.to_owned(),
            store,
            producer: kafka.producer()?,
            alerts_topic: kafka.topics.alerts(),
            config,
        })
    }

    async fn count(
        &self,
        target: &Target,
        field: &str,
        at: OffsetDateTime,
    ) -> redis::RedisResult<Window> {
        let bucket_secs = (self.config.bucket.as_secs() as i64).max(1);
        let buckets = (self.config.window.as_secs() as i64 / bucket_secs).max(1);
        let bucket = at.unix_timestamp() / bucket_secs;
        let mut redis = self.redis.clone();
        let sums: (u64, u64, u64) = COUNT
            .key(pauses::reputation_key(&self.prefix, target))
            .arg(field)
            .arg(bucket)
            .arg(buckets)
            .arg(2 * self.config.window.as_secs().max(1))
            .invoke_async(&mut redis)
            .await?;
        Ok(Window {
            delivered: sums.0,
            bounced: sums.1,
            complained: sums.2,
        })
    }

    /// Counts one event against its source IP and its account, pausing either if it
    /// crossed a threshold.
    pub async fn observe(&self, event: &EventV1) -> Result<(), MonitorError> {
        let field = match event.event_type {
            EventType::Delivered => "d",
            EventType::Bounced | EventType::AsyncBounced => "b",
            EventType::Complained => "c",
            _ => return Ok(()),
        };
        // Returned mail can be reported again (an MTA resending, a feedback loop
        // sending twice, a replay): its event keeps its id, and is counted once.
        if event.stage == "inbound" {
            let key = format!("{}reputation:seen:{}", self.prefix, event.event_id);
            let mut redis = self.redis.clone();
            let first: bool = redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(2 * self.config.window.as_secs().max(1))
                .query_async::<Option<String>>(&mut redis)
                .await?
                .is_some();
            if !first {
                return Ok(());
            }
        }
        let ip: Option<IpAddr> = event.source_ip.as_deref().and_then(|ip| ip.parse().ok());
        if let Some(ip) = ip {
            let target = Target::Ip(ip);
            let window = self.count(&target, field, event.occurred_at).await?;
            let c = &self.config;
            if let Some(verdict) =
                window.verdict(c.min_volume, c.ip_bounce_rate, c.ip_complaint_rate)
            {
                self.pause(&target, "ip", &ip.to_string(), verdict, window)
                    .await?;
            }
        }
        let target = Target::Account(event.account_id);
        let window = self.count(&target, field, event.occurred_at).await?;
        let c = &self.config;
        if c.pause_accounts {
            if let Some(verdict) = window.verdict(
                c.min_volume,
                c.account_bounce_rate,
                c.account_complaint_rate,
            ) {
                self.pause(
                    &target,
                    "account",
                    &event.account_id.to_string(),
                    verdict,
                    window,
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn pause(
        &self,
        target: &Target,
        kind: &str,
        subject: &str,
        (metric, value, threshold): (&'static str, f64, f64),
        window: Window,
    ) -> Result<(), MonitorError> {
        let reason = format!(
            "reputation monitor: {metric} {:.1}% over {} s (threshold {:.1}%, {} sent)",
            value * 100.0,
            self.config.window.as_secs(),
            threshold * 100.0,
            window.sent()
        );
        let mut redis = self.redis.clone();
        if !pauses::pause(&mut redis, &self.prefix, target, &reason).await? {
            return Ok(());
        }
        tracing::warn!(
            kind,
            subject,
            metric,
            value,
            threshold,
            "reputation monitor paused sending"
        );
        metrics::counter!(crate::metric::REPUTATION_PAUSES_TOTAL, "kind" => kind.to_owned())
            .increment(1);
        let alert = AlertV1 {
            alert_id: uuid::Uuid::now_v7(),
            raised_at: OffsetDateTime::now_utc(),
            subject_kind: kind.to_owned(),
            subject: subject.to_owned(),
            metric: metric.to_owned(),
            value,
            threshold,
            window_secs: self.config.window.as_secs() as u32,
            volume: window.sent(),
            action: "paused".into(),
        };
        self.store.record_alert(&alert).await?;
        self.producer
            .send(&self.alerts_topic, subject, &alert)
            .await?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Store(#[from] sendmill_store::StoreError),
    #[error("{0}")]
    Produce(#[from] kafka::ProduceError),
}

/// Consumes the events topic into the monitor until `shutdown`.
pub async fn run(
    kafka: KafkaConnection,
    monitor: Monitor,
    shutdown: CancellationToken,
) -> Result<(), kafka::KafkaError> {
    let spec = ConsumerSpec {
        stage: "reputation",
        group_id: monitor.config.group_id.clone(),
        topics: vec![kafka.topics.events()],
        concurrency: 256,
    };
    let monitor = std::sync::Arc::new(monitor);
    // Records already taken are finished for up to the drain grace after shutdown.
    let token = sendmill_platform::shutdown::after_grace(&shutdown, kafka.config.drain_grace);
    kafka::consumer::run(
        &kafka,
        spec,
        move |record| {
            let (monitor, shutdown) = (monitor.clone(), token.clone());
            async move {
                let event: EventV1 = decode(&record)?;
                backoff::until_ok("reputation monitor", &shutdown, || monitor.observe(&event))
                    .await?;
                Ok(Handled::Done)
            }
        },
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_judged_only_with_enough_volume() {
        let w = Window {
            delivered: 5,
            bounced: 5,
            complained: 0,
        };
        assert_eq!(w.verdict(100, 0.1, 0.01), None);
        let verdict = w.verdict(10, 0.1, 0.01).unwrap();
        assert_eq!(verdict.0, "bounce_rate");
        assert_eq!(verdict.1, 0.5);
        let complaints = Window {
            delivered: 1_000,
            bounced: 0,
            complained: 20,
        };
        assert_eq!(
            complaints.verdict(100, 0.1, 0.01).unwrap().0,
            "complaint_rate"
        );
        assert_eq!(complaints.verdict(100, 0.1, 0.05), None);
    }
}
