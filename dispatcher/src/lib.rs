//! # sendmill-dispatcher
//!
//! Consumes `ready` records and delivers each to its recipient's MX hosts over SMTP,
//! then records the outcome:
//! - delivered → `delivered` event;
//! - permanent failure (5xx, null MX, no such domain) → `bounced` with a category;
//! - temporary failure (4xx, no connection, timeout) → the record goes to the next retry
//!   delay topic (1m, 5m, 15m, then hourly) and a `deferred` event is written; once the
//!   message is older than the retry window it ends as `expired` instead.
//!
//! A second loop consumes the delay topics: a record not yet due pauses its partition
//! until it is (see `platform::kafka::consumer`); a due one goes back to `ready`.
//!
//! **Exactly one terminal event.** Before a terminal event is written, it is stored in
//! Redis under the message id (`SET NX`), and a message with a stored terminal event is
//! never attempted again: a redelivered record (crash before the offset was stored, a
//! duplicate retry chain) re-writes the stored event with its original event id, which
//! ClickHouse deduplicates, instead of sending the message twice.
//!
//! ## Layout
//! - [`mx`]: MX routing with hickory-resolver.
//! - [`smtp`]: sockets, pooled SMTP connections, lettre for the protocol.
//! - [`outcome`]: the outcome type and reply classification.

pub mod mx;
pub mod outcome;
pub mod smtp;

use lettre::address::{Address, Envelope};
use outcome::{Delivered, Failure, FailureReason, Outcome};
use redis::aio::ConnectionManager;
use sendmill_platform::{
    backoff,
    kafka::{self, consumer::decode, ConsumerSpec, Handled, HandlerError, KafkaConnection, Record},
    suppressions::SuppressionCache,
    CancellationToken,
};
use sendmill_wire::{
    BounceCategory, EventType, EventV1, Lane, MessageId, ReadyV1, RetryTier, RetryV1,
};
use serde::Deserialize;
use std::{net::IpAddr, net::SocketAddr, sync::Arc, time::Duration};
use time::OffsetDateTime;

/// `[dispatcher]`: delivery.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka consumer group of the delivery loop.
    pub group_id: String,
    /// Kafka consumer group of the retry (delay topic) loop.
    pub retry_group_id: String,
    /// Deliveries in flight at once per process.
    pub concurrency: usize,
    /// Address of `/healthz` and `/metrics` when the dispatcher runs as its own process.
    /// Env: `SENDMILL_DISPATCH_OPS_LISTEN`.
    pub ops_listen: String,
    /// Name announced in EHLO; empty: this machine's host name.
    pub helo_name: String,
    /// TCP port of receiving MX hosts (25 everywhere but in tests).
    pub smtp_port: u16,
    /// Source address outbound connections bind to; empty: the system's choice.
    pub source_ip: String,
    /// DNS servers for MX lookups, `ip:port`; empty: the system's resolv.conf.
    /// Env: `SENDMILL_DNS_NAMESERVERS` (comma-separated).
    pub nameservers: Vec<String>,
    /// Seconds for a DNS query.
    pub dns_timeout_secs: u64,
    /// Seconds to establish a TCP connection to an MX host.
    pub connect_timeout_secs: u64,
    /// Seconds for the greeting and each SMTP command.
    pub command_timeout_secs: u64,
    /// Seconds for a whole transaction, message data included.
    pub transaction_timeout_secs: u64,
    /// Idle connections kept per MX address.
    pub max_idle_per_host: usize,
    /// Seconds an idle connection is kept for reuse.
    pub idle_timeout_secs: u64,
    /// Seconds after acceptance a message keeps being retried; then it expires (a hard
    /// bounce with the last reply).
    pub max_retry_age_secs: u64,
    /// Seconds a message's terminal event is remembered in Redis (the dedupe barrier);
    /// longer than any redelivery can come late.
    pub terminal_ttl_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            group_id: "sendmill-dispatcher".into(),
            retry_group_id: "sendmill-retry".into(),
            concurrency: 256,
            ops_listen: "127.0.0.1:9103".into(),
            helo_name: String::new(),
            smtp_port: 25,
            source_ip: String::new(),
            nameservers: Vec::new(),
            dns_timeout_secs: 5,
            connect_timeout_secs: 30,
            command_timeout_secs: 120,
            transaction_timeout_secs: 600,
            max_idle_per_host: 16,
            idle_timeout_secs: 30,
            max_retry_age_secs: 24 * 3600,
            terminal_ttl_secs: 7 * 24 * 3600,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid dispatcher config: {0}")]
    Config(String),
    #[error("cannot build the DNS resolver: {0}")]
    Dns(String),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
}

impl Config {
    pub fn apply_env(&mut self) {
        sendmill_platform::config::override_string(&mut self.ops_listen, "DISPATCH_OPS_LISTEN");
        if let Some(servers) = sendmill_platform::config::env_override("DNS_NAMESERVERS") {
            self.nameservers = servers.split(',').map(|s| s.trim().to_owned()).collect();
        }
    }

    /// Checks what serde cannot: addresses parse.
    pub fn validate(&self) -> Result<(), SetupError> {
        self.nameserver_addrs()?;
        self.source_addr()?;
        Ok(())
    }

    fn nameserver_addrs(&self) -> Result<Vec<SocketAddr>, SetupError> {
        sendmill_platform::dns::parse_nameservers(&self.nameservers).map_err(SetupError::Config)
    }

    fn source_addr(&self) -> Result<Option<IpAddr>, SetupError> {
        if self.source_ip.is_empty() {
            return Ok(None);
        }
        self.source_ip.parse().map(Some).map_err(|_| {
            SetupError::Config(format!("source_ip: {:?} is not an IP", self.source_ip))
        })
    }

    fn helo(&self) -> String {
        if !self.helo_name.is_empty() {
            return self.helo_name.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }
}

/// Delivers one message: route, then each MX host by preference until one answers.
pub struct Deliverer {
    resolver: mx::MxResolver,
    smtp: smtp::SmtpClient,
    source: Option<IpAddr>,
}

impl Deliverer {
    pub fn new(config: &Config) -> Result<Self, SetupError> {
        let resolver = mx::MxResolver::new(
            &config.nameserver_addrs()?,
            Duration::from_secs(config.dns_timeout_secs),
        )
        .map_err(|e| SetupError::Dns(e.to_string()))?;
        let smtp = smtp::SmtpClient::new(smtp::SmtpSettings {
            port: config.smtp_port,
            helo: config.helo(),
            connect_timeout: Duration::from_secs(config.connect_timeout_secs),
            command_timeout: Duration::from_secs(config.command_timeout_secs),
            transaction_timeout: Duration::from_secs(config.transaction_timeout_secs),
            max_idle_per_host: config.max_idle_per_host,
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
        });
        Ok(Self {
            resolver,
            smtp,
            source: config.source_addr()?,
        })
    }

    pub async fn deliver(&self, ready: &ReadyV1) -> Outcome {
        let source_ip = self.source.map(|ip| ip.to_string());
        let envelope = match envelope(ready) {
            Ok(e) => e,
            Err(reason) => {
                return Outcome::Permanent(Failure::new(reason, BounceCategory::BadMailbox))
            }
        };
        let hosts = match self.resolver.route(&ready.recipient_domain()).await {
            Ok(hosts) => hosts,
            Err(mx::RouteError::NoSuchDomain) => {
                return Outcome::Permanent(Failure::new(
                    FailureReason::NoSuchDomain,
                    BounceCategory::BadDomain,
                ))
            }
            Err(mx::RouteError::NullMx) => {
                return Outcome::Permanent(Failure::new(
                    FailureReason::NullMx,
                    BounceCategory::BadDomain,
                ))
            }
            Err(mx::RouteError::Temporary(e)) => {
                return Outcome::Temporary(Failure::new(
                    FailureReason::Dns(e),
                    BounceCategory::Routing,
                ))
            }
        };

        let mut last: Option<(String, smtp::SmtpError)> = None;
        for host in &hosts {
            for &addr in &host.addrs {
                let started = std::time::Instant::now();
                let result = self
                    .smtp
                    .send(self.source, addr, &envelope, &ready.message)
                    .await;
                metrics::histogram!("sendmill_smtp_send_seconds")
                    .record(started.elapsed().as_secs_f64());
                match result {
                    Ok(reply) => {
                        return Outcome::Delivered(Delivered {
                            mx_host: host.name.clone(),
                            source_ip,
                            reply,
                        })
                    }
                    Err(error) if error.try_next_host() => last = Some((host.name.clone(), error)),
                    Err(error) => return failure(Some(host.name.clone()), source_ip, error),
                }
            }
        }
        match last {
            Some((host, error)) => failure(Some(host), source_ip, error),
            None => Outcome::Temporary(Failure::new(
                FailureReason::Connect("no MX host has an address".into()),
                BounceCategory::Routing,
            )),
        }
    }
}

fn envelope(ready: &ReadyV1) -> Result<Envelope, FailureReason> {
    let bad = |what: &str| FailureReason::Protocol(format!("invalid envelope {what}"));
    let from: Address = ready.envelope_from.parse().map_err(|_| bad("sender"))?;
    let to: Address = ready.recipient.parse().map_err(|_| bad("recipient"))?;
    Envelope::new(Some(from), vec![to]).map_err(|_| bad("addresses"))
}

fn failure(mx_host: Option<String>, source_ip: Option<String>, error: smtp::SmtpError) -> Outcome {
    let (reason, reply, permanent, category) = match error {
        smtp::SmtpError::Rejected { reply, permanent } => {
            let category = outcome::categorize(&reply);
            let reason = FailureReason::Rejected {
                code: reply.code,
                text: reply.text.clone(),
            };
            (reason, Some(reply), permanent, category)
        }
        smtp::SmtpError::Timeout(step) => (
            FailureReason::Timeout(step),
            None,
            false,
            BounceCategory::Routing,
        ),
        smtp::SmtpError::Connect { .. } => (
            FailureReason::Connect(error.to_string()),
            None,
            false,
            BounceCategory::Routing,
        ),
        smtp::SmtpError::Session(e) => (
            FailureReason::Protocol(e),
            None,
            false,
            BounceCategory::Protocol,
        ),
    };
    let failure = Failure {
        reason,
        mx_host,
        source_ip,
        reply,
        category,
    };
    if permanent {
        Outcome::Permanent(failure)
    } else {
        Outcome::Temporary(failure)
    }
}

/// Everything the dispatcher needs, built once per process.
pub struct Dispatcher {
    deliverer: Deliverer,
    producer: kafka::Producer,
    redis: ConnectionManager,
    key_prefix: String,
    suppressions: SuppressionCache,
    kafka: KafkaConnection,
    config: Config,
    shutdown: CancellationToken,
}

/// Runs the delivery loop and the retry loop until `shutdown`.
pub async fn run(
    kafka: KafkaConnection,
    redis: ConnectionManager,
    redis_key_prefix: String,
    suppressions: SuppressionCache,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), SetupError> {
    config.validate()?;
    let dispatcher = Arc::new(Dispatcher {
        deliverer: Deliverer::new(&config)?,
        producer: kafka.producer()?,
        redis,
        key_prefix: redis_key_prefix,
        suppressions,
        kafka: kafka.clone(),
        config: config.clone(),
        shutdown: shutdown.clone(),
    });
    let deliveries = {
        let spec = ConsumerSpec {
            stage: "dispatcher",
            group_id: config.group_id.clone(),
            topics: Lane::ALL.iter().map(|&l| kafka.topics.ready(l)).collect(),
            concurrency: config.concurrency,
        };
        kafka::consumer::run_shared(
            &kafka,
            spec,
            dispatcher.clone(),
            |d, record| async move { d.handle_ready(record).await },
            shutdown.clone(),
        )
    };
    let retries = {
        let spec = ConsumerSpec {
            stage: "retry",
            group_id: config.retry_group_id.clone(),
            topics: Lane::ALL
                .iter()
                .flat_map(|&l| RetryTier::ALL.map(|t| kafka.topics.retry(l, t)))
                .collect(),
            concurrency: config.concurrency,
        };
        kafka::consumer::run_shared(
            &kafka,
            spec,
            dispatcher.clone(),
            |d, record| async move { d.handle_retry(record).await },
            shutdown.clone(),
        )
    };
    let (a, b) = tokio::join!(deliveries, retries);
    a?;
    b?;
    Ok(())
}

impl Dispatcher {
    fn terminal_key(&self, id: MessageId) -> String {
        format!("{}terminal:{id}", self.key_prefix)
    }

    /// The terminal event already recorded for `id`, if any.
    async fn recorded_terminal(&self, id: MessageId) -> Result<Option<EventV1>, HandlerError> {
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
    async fn finish(&self, event: EventV1) -> Result<(), HandlerError> {
        let key = self.terminal_key(event.message_id);
        let encoded = sendmill_wire::encode(&event);
        let previous: Option<Vec<u8>> =
            backoff::until_ok("record terminal", &self.shutdown, || {
                let mut redis = self.redis.clone();
                let (key, encoded) = (key.clone(), encoded.clone());
                let ttl = self.config.terminal_ttl_secs;
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

    async fn emit(&self, event: &EventV1) -> Result<(), HandlerError> {
        let topic = self.kafka.topics.events();
        let key = event.message_id.to_string();
        backoff::until_ok("produce event", &self.shutdown, || {
            self.producer.send(&topic, &key, event)
        })
        .await?;
        metrics::counter!("sendmill_dispatch_events_total", "type" => event.event_type.as_str())
            .increment(1);
        Ok(())
    }

    async fn handle_ready(&self, record: Record) -> Result<Handled, HandlerError> {
        let ready: ReadyV1 = decode(&record)?;
        if let Some(recorded) = self.recorded_terminal(ready.message_id).await? {
            // Redelivered after its outcome was recorded: repeat the event, not the send.
            self.emit(&recorded).await?;
            return Ok(Handled::Done);
        }
        // Checked again here: the address may have been suppressed since acceptance
        // (a bounce of another message, an unsubscribe, a scheduled or retried send).
        if let Some(suppressed) = self.suppressed(&ready).await? {
            let mut event = EventV1::new(
                EventType::Dropped,
                "dispatcher",
                ready.message_id,
                ready.account_id,
                &ready.recipient,
                &ready.context,
            );
            event.reason = Some(suppressed);
            metrics::counter!("sendmill_dispatch_suppressed_total").increment(1);
            self.finish(event).await?;
            return Ok(Handled::Done);
        }
        let attempt = ready.attempts + 1;
        let outcome = self.deliverer.deliver(&ready).await;
        self.record_outcome(ready, attempt, outcome).await?;
        Ok(Handled::Done)
    }

    /// Why the recipient is suppressed for the account now, if it is.
    async fn suppressed(&self, ready: &ReadyV1) -> Result<Option<String>, HandlerError> {
        let recipients = [ready.recipient.clone()];
        let found = backoff::until_ok("check suppressions", &self.shutdown, || {
            self.suppressions.check(ready.account_id, &recipients)
        })
        .await?;
        Ok(found.into_iter().next().flatten().map(|s| {
            if s.global {
                format!("suppressed ({}, global list)", s.reason)
            } else {
                format!("suppressed ({})", s.reason)
            }
        }))
    }

    async fn record_outcome(
        &self,
        ready: ReadyV1,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<(), HandlerError> {
        let event = |event_type| {
            let mut e = EventV1::new(
                event_type,
                "dispatcher",
                ready.message_id,
                ready.account_id,
                &ready.recipient,
                &ready.context,
            );
            e.attempt = attempt;
            e.provider = Some(ready.recipient_domain());
            e
        };
        match outcome {
            Outcome::Delivered(delivered) => {
                let mut e = event(EventType::Delivered);
                e.mx_host = Some(delivered.mx_host);
                e.source_ip = delivered.source_ip;
                e.smtp = Some(delivered.reply);
                self.finish(e).await
            }
            Outcome::Permanent(failure) => {
                tracing::info!(message_id = %ready.message_id, reason = %failure, "bounced");
                self.finish(failure_event(event(EventType::Bounced), failure))
                    .await
            }
            Outcome::Temporary(failure) => {
                let tier = RetryTier::after_attempts(attempt);
                let now = OffsetDateTime::now_utc();
                let due_at = now + tier.delay();
                let deadline =
                    ready.accepted_at + Duration::from_secs(self.config.max_retry_age_secs);
                if due_at > deadline {
                    let mut e = failure_event(event(EventType::Expired), failure);
                    e.bounce_category = Some(BounceCategory::Expired);
                    return self.finish(e).await;
                }
                tracing::debug!(message_id = %ready.message_id, reason = %failure, tier = tier.as_str(), "deferred");
                let retry = RetryV1 {
                    due_at,
                    last_reply: failure.reply.clone(),
                    last_error: Some(failure.reason.to_string()),
                    ready: ReadyV1 {
                        attempts: attempt,
                        ..ready.clone()
                    },
                };
                let topic = self.kafka.topics.retry(ready.lane, tier);
                let key = ready.message_id.to_string();
                backoff::until_ok("produce retry", &self.shutdown, || {
                    self.producer.send(&topic, &key, &retry)
                })
                .await?;
                self.emit(&failure_event(event(EventType::Deferred), failure))
                    .await
            }
        }
    }

    async fn handle_retry(&self, record: Record) -> Result<Handled, HandlerError> {
        let retry: RetryV1 = decode(&record)?;
        if retry.due_at > OffsetDateTime::now_utc() {
            return Ok(Handled::NotBefore(retry.due_at));
        }
        let topic = self.kafka.topics.ready(retry.ready.lane);
        let key = retry.ready.message_id.to_string();
        backoff::until_ok("produce ready", &self.shutdown, || {
            self.producer.send(&topic, &key, &retry.ready)
        })
        .await?;
        Ok(Handled::Done)
    }
}

fn failure_event(mut event: EventV1, failure: Failure) -> EventV1 {
    event.mx_host = failure.mx_host;
    event.source_ip = failure.source_ip;
    event.bounce_category = Some(failure.category);
    event.reason = Some(failure.reason.to_string());
    event.smtp = failure.reply;
    event
}
