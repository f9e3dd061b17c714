//! # sendmill-dispatcher
//!
//! Consumes `ready` records and delivers each to its recipient's MX hosts over SMTP:
//!
//! 1. **Barrier.** A message whose outcome is recorded (Redis) or whose data already
//!    reached a receiver (the local [`journal`]) is never sent again: its recorded event
//!    is repeated instead, or it is reported delivered.
//! 2. **Suppression**, checked again (authoritative): the address may have been
//!    suppressed since acceptance.
//! 3. **Routing.** MX lookup ([`mx`]), the recipient's [`provider`], the IP pool and a
//!    source IP by weight ([`pools`]), skipping paused IPs and IPs out of warm-up quota.
//! 4. **Shaping.** A token from the (IP or pool, provider) bucket in Redis ([`shaping`]);
//!    without one the message waits on the timer wheel, and the consumer pauses its
//!    partitions while the local queue is full.
//! 5. **SMTP** over a pooled session from the chosen IP ([`smtp`]), MX hosts by
//!    preference, the journal written the moment the data is out.
//! 6. **Outcome.** The reply is classified by the config's rule table ([`outcome`]):
//!    delivered → `delivered`; permanent → `bounced` (and a suppression when the rule says
//!    so); temporary → the next retry delay topic and `deferred`, or `expired` past the
//!    retry window. Rate-limit replies put the provider in backoff mode.
//!
//! A second loop consumes the delay topics: a record not yet due pauses its partition
//! until it is (see `platform::kafka::consumer`); a due one goes back to `ready`.
//!
//! **Exactly one terminal event.** Before a terminal event is written, it is stored in
//! Redis under the message id (`SET NX`); a redelivered record re-writes the stored event
//! with its original event id, which ClickHouse deduplicates.

pub mod config;
mod inflight;
pub mod journal;
pub mod mx;
pub mod outcome;
pub mod pools;
pub mod provider;
pub mod shaping;
pub mod smtp;

pub use config::{Config, Error};

use outcome::{Delivered, Failure, FailureReason, Outcome};
use redis::aio::ConnectionManager;
use sendmill_platform::{
    backoff,
    kafka::{self, consumer::decode, ConsumerSpec, Handled, HandlerError, KafkaConnection, Record},
    pauses::{self, Target},
    suppressions::SuppressionCache,
    CancellationToken,
};
use sendmill_wire::{
    BounceCategory, EventType, EventV1, Lane, MessageId, ReadyV1, RetryTier, RetryV1, SmtpReply,
};
use std::{
    collections::HashSet,
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    sync::Arc,
    time::Duration,
};
use time::OffsetDateTime;
use tokio::{sync::Semaphore, time::Instant};

/// Where an attempt went, for its events.
#[derive(Debug, Default)]
pub struct Routed {
    pub provider: Option<String>,
    pub pool: Option<String>,
    /// A rejection whose rule says to suppress the address.
    pub suppress: bool,
    /// The send slot, held until the outcome is recorded: it bounds how many messages
    /// can be out at a receiver without a recorded outcome (what a crash leaves to the
    /// journal), and keeps recording from falling behind sending.
    sending: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Everything the dispatcher needs, built once per process.
pub struct Dispatcher {
    resolver: mx::MxResolver,
    providers: provider::Providers,
    pools: pools::Pools,
    shaper: shaping::Shaper,
    connections: smtp::ConnectionPool,
    journal: journal::Journal,
    handling: inflight::MessageLocks,
    sending: Arc<Semaphore>,
    pause_watch: PauseWatch,
    producer: kafka::Producer,
    redis: ConnectionManager,
    key_prefix: String,
    suppressions: SuppressionCache,
    kafka: KafkaConnection,
    config: Config,
    shutdown: CancellationToken,
}

/// What the dispatcher needs from outside, built once by the binary.
pub struct Deps {
    /// The cluster it consumes `ready` and the retry topics from, and produces events,
    /// retries and DLQ records to.
    pub kafka: KafkaConnection,
    /// Shaping buckets, recorded outcomes, pause flags, warm-up counters.
    pub redis: ConnectionManager,
    /// Prefix of every Redis key it reads or writes.
    pub redis_key_prefix: String,
    /// The suppression lists, checked again before each attempt.
    pub suppressions: SuppressionCache,
}

/// Runs the delivery loop and the retry loop until `shutdown`. Returns `Err` when the
/// config is invalid, the journal or the resolver cannot be set up, or consuming fails
/// for good.
pub async fn run(config: Config, deps: Deps, shutdown: CancellationToken) -> Result<(), Error> {
    let Deps {
        kafka,
        redis,
        redis_key_prefix,
        suppressions,
    } = deps;
    config.validate()?;
    let dispatcher = Arc::new(Dispatcher::new(
        kafka.clone(),
        redis,
        redis_key_prefix,
        suppressions,
        config.clone(),
        shutdown.clone(),
    )?);
    let deliveries = {
        let spec = ConsumerSpec {
            stage: "dispatcher",
            group_id: config.group_id.clone(),
            topics: Lane::ALL.iter().map(|&l| kafka.topics.ready(l)).collect(),
            concurrency: config.queue_capacity.max(config.concurrency),
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
    pub fn new(
        kafka: KafkaConnection,
        redis: ConnectionManager,
        key_prefix: String,
        suppressions: SuppressionCache,
        config: Config,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        let resolver = mx::MxResolver::new(
            &config.nameserver_addrs()?,
            Duration::from_secs(config.dns_timeout_secs),
        )
        .map_err(|e| Error::Dns(e.to_string()))?;
        let connections = smtp::ConnectionPool::new(smtp::SmtpSettings {
            port: config.smtp_port,
            connect_timeout: Duration::from_secs(config.connect_timeout_secs),
            command_timeout: Duration::from_secs(config.command_timeout_secs),
            data_timeout: Duration::from_secs(config.data_timeout_secs),
            max_idle_per_host: config.max_idle_per_host,
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
        });
        let journal = journal::Journal::open(
            Path::new(&config.journal_dir),
            config.journal_segment_entries,
            config.journal_segments,
        )?;
        Ok(Self {
            resolver,
            providers: provider::Providers::new(&config.providers),
            pools: pools::Pools::new(&config),
            shaper: shaping::Shaper::new(redis.clone(), &key_prefix, &config, shutdown.clone()),
            connections,
            journal,
            handling: inflight::MessageLocks::default(),
            sending: Arc::new(Semaphore::new(config.concurrency.max(1))),
            pause_watch: PauseWatch::new(
                redis.clone(),
                &key_prefix,
                Duration::from_millis(config.pause_refresh_ms),
            ),
            producer: kafka.producer()?,
            redis,
            key_prefix,
            suppressions,
            kafka,
            config,
            shutdown,
        })
    }

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
        sendmill_platform::traces::annotate_event(event);
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
        let _handling = self.handling.lock(ready.message_id).await;
        if let Some(recorded) = self.recorded_terminal(ready.message_id).await? {
            // Redelivered after its outcome was recorded: repeat the event, not the send.
            self.emit(&recorded).await?;
            return Ok(Handled::Done);
        }
        if self.journal.contains(ready.message_id) {
            // Its data reached a receiver, but the process stopped (or the session broke)
            // before the outcome was recorded: sending again would deliver it twice.
            let mut event = new_event(EventType::Delivered, &ready);
            event.attempt = ready.attempts.max(1);
            event.reason = Some(
                "the message data reached the receiver but its reply was not read (dispatcher restart or broken session); not sent again".into(),
            );
            metrics::counter!("sendmill_dispatch_unconfirmed_total").increment(1);
            self.finish(event).await?;
            return Ok(Handled::Done);
        }
        // Checked again here: the address may have been suppressed since acceptance
        // (a bounce of another message, an unsubscribe, a scheduled or retried send).
        if let Some(suppressed) = self.suppressed(&ready).await? {
            let mut event = new_event(EventType::Dropped, &ready);
            event.reason = Some(suppressed);
            metrics::counter!("sendmill_dispatch_suppressed_total").increment(1);
            self.finish(event).await?;
            return Ok(Handled::Done);
        }
        let attempt = ready.attempts + 1;
        let (outcome, routed) = self.deliver(&ready).await?;
        self.record_outcome(ready, attempt, outcome, routed).await?;
        Ok(Handled::Done)
    }

    /// One delivery attempt: route, wait for a token, try MX hosts by preference.
    async fn deliver(&self, ready: &ReadyV1) -> Result<(Outcome, Routed), HandlerError> {
        let mut routed = Routed::default();
        if !envelope_ok(&ready.envelope_from) || !envelope_ok(&ready.recipient) {
            let reason = FailureReason::Protocol("invalid envelope address".into());
            let failure = Failure::new(reason, BounceCategory::BadMailbox);
            return Ok((Outcome::Permanent(failure), routed));
        }
        let domain = ready.recipient_domain();
        let hosts = match self.resolver.route(&domain).await {
            Ok(hosts) => hosts,
            Err(error) => return Ok((route_failure(error), routed)),
        };
        let provider = self.providers.classify(&domain, &hosts);
        let pool = self.pools.choose(
            ready.account_id,
            ready.lane,
            ready.context.ip_pool.as_deref(),
        );
        routed.provider = Some(provider.name.clone());
        routed.pool = Some(pool.name.clone());
        let (max_connections, per_connection) = self
            .shaper
            .rule(&provider.name)
            .map_or((0, 0), |r| (r.max_connections, r.messages_per_connection));
        let tls = if provider.require_tls {
            smtp::TlsMode::Required
        } else {
            smtp::TlsMode::Opportunistic
        };
        let addrs: Vec<SocketAddr> = hosts
            .iter()
            .flat_map(|h| h.addrs.iter())
            .map(|&a| SocketAddr::new(a, self.config.smtp_port))
            .collect();

        // A source IP that is not paused and has quota, and a token for it.
        let source = loop {
            let paused = self.pause_watch.snapshot(&self.shutdown).await?;
            if paused.contains(&Target::Account(ready.account_id).member()) {
                metrics::counter!("sendmill_dispatch_no_source_total").increment(1);
                let reason = format!("sending of account {} is paused", ready.account_id);
                let failure =
                    Failure::new(FailureReason::NoSource(reason), BounceCategory::Routing);
                return Ok((Outcome::Temporary(failure), routed));
            }
            let pool_paused = paused.contains(&Target::Pool(pool.name.clone()).member());
            let picked = (!pool_paused)
                .then(|| {
                    self.pools.pick(pool, |ip| {
                        paused.contains(&Target::Ip(ip).member())
                            || self.shaper.is_exhausted(ip, &provider.name)
                    })
                })
                .flatten();
            let Some(source) = picked else {
                let reason = if pool_paused
                    || pool
                        .ips
                        .iter()
                        .all(|ip| paused.contains(&Target::Ip(ip.ip).member()))
                {
                    format!("every IP of pool {} is paused", pool.name)
                } else {
                    format!(
                        "every IP of pool {} reached its warm-up cap for {} today",
                        pool.name, provider.name
                    )
                };
                metrics::counter!("sendmill_dispatch_no_source_total").increment(1);
                let failure =
                    Failure::new(FailureReason::NoSource(reason), BounceCategory::Routing);
                return Ok((Outcome::Temporary(failure), routed));
            };
            let route = shaping::Route {
                pool: &pool.name,
                ip: source.ip,
                provider: &provider.name,
            };
            match self.shaper.acquire(&route).await? {
                shaping::Token::Granted => break source,
                shaping::Token::WarmupExhausted => self.shaper.exhaust(source.ip, &provider.name),
            }
        };
        let route = shaping::Route {
            pool: &pool.name,
            ip: source.ip,
            provider: &provider.name,
        };
        let source_ip = (!source.ip.is_unspecified()).then(|| source.ip.to_string());
        let bind = (!source.ip.is_unspecified()).then_some(source.ip);

        routed.sending = Some(
            self.sending
                .clone()
                .acquire_owned()
                .await
                .expect("never closed"),
        );
        let mut last: Option<(String, smtp::SmtpError)> = None;
        for host in &hosts {
            for &addr in &host.addrs {
                let endpoint = smtp::Endpoint {
                    source: bind,
                    addr: SocketAddr::new(addr, self.config.smtp_port),
                    host_name: &host.name,
                    helo: &source.helo,
                    tls,
                };
                let started = std::time::Instant::now();
                let result = self
                    .send_via(
                        ready,
                        &endpoint,
                        &route,
                        max_connections,
                        per_connection,
                        &addrs,
                    )
                    .await?;
                metrics::histogram!("sendmill_smtp_send_seconds", "provider" => provider.name.clone())
                    .record(started.elapsed().as_secs_f64());
                match result {
                    Ok(reply) => {
                        let delivered = Delivered {
                            mx_host: host.name.clone(),
                            source_ip,
                            reply,
                        };
                        return Ok((Outcome::Delivered(delivered), routed));
                    }
                    Err(error) => {
                        if let smtp::SmtpError::Rejected { reply, .. } = &error {
                            let verdict = outcome::classify(&self.config.classify, reply);
                            if verdict.category == BounceCategory::RateLimited {
                                self.shaper.rate_limited(&route).await?;
                            }
                        }
                        if error.try_next_host() {
                            last = Some((host.name.clone(), error));
                        } else {
                            let outcome = self.failure(
                                Some(host.name.clone()),
                                source_ip,
                                error,
                                &mut routed,
                            );
                            return Ok((outcome, routed));
                        }
                    }
                }
            }
        }
        let outcome = match last {
            Some((host, error)) => self.failure(Some(host), source_ip, error, &mut routed),
            None => Outcome::Temporary(Failure::new(
                FailureReason::Connect("no MX host has an address".into()),
                BounceCategory::Routing,
            )),
        };
        Ok((outcome, routed))
    }

    /// One message over a pooled or new session to `endpoint`. A pooled session that
    /// turns out dead before the data went out is replaced by a new one, once.
    async fn send_via(
        &self,
        ready: &ReadyV1,
        endpoint: &smtp::Endpoint<'_>,
        route: &shaping::Route<'_>,
        max_connections: usize,
        per_connection: u32,
        provider_addrs: &[SocketAddr],
    ) -> Result<Result<SmtpReply, smtp::SmtpError>, HandlerError> {
        let data_sent = AtomicBool::new(false);
        if let Some(session) = self.connections.take_idle(endpoint.source, endpoint.addr) {
            let result = self
                .send_on(session, endpoint, ready, per_connection, &data_sent)
                .await;
            let stale = matches!(
                result,
                Err(smtp::SmtpError::Session(_)) | Err(smtp::SmtpError::Timeout(_))
            );
            if !stale || data_sent.load(Ordering::Relaxed) {
                return Ok(result);
            }
        }
        // A new connection: the pause flags are read now, not from the cache.
        let targets = [Target::Ip(route.ip), Target::Pool(route.pool.to_owned())];
        let paused = backoff::until_ok("read pause flags", &self.shutdown, || {
            let mut redis = self.redis.clone();
            let targets = &targets;
            async move { pauses::any_paused(&mut redis, &self.key_prefix, targets).await }
        })
        .await?;
        if paused {
            self.pause_watch.invalidate().await;
            return Ok(Err(smtp::SmtpError::SourcePaused(format!(
                "source {} (pool {}) was paused",
                route.ip, route.pool
            ))));
        }
        let slot = match self
            .connections
            .slot(
                endpoint.source,
                route.provider,
                max_connections,
                provider_addrs,
            )
            .await
        {
            Ok(slot) => slot,
            Err(error) => return Ok(Err(error)),
        };
        let session = match smtp::Session::open(endpoint, self.connections.settings(), slot).await {
            Ok(session) => session,
            Err(error) => return Ok(Err(error)),
        };
        metrics::counter!("sendmill_smtp_connections_total", "provider" => route.provider.to_owned(), "tls" => if session.tls { "yes" } else { "no" }).increment(1);
        Ok(self
            .send_on(session, endpoint, ready, per_connection, &data_sent)
            .await)
    }

    /// One transaction on `session`, journaling the message the moment its data is out;
    /// the session goes back to the pool (or is closed) after.
    async fn send_on(
        &self,
        mut session: smtp::Session,
        endpoint: &smtp::Endpoint<'_>,
        ready: &ReadyV1,
        per_connection: u32,
        data_sent: &AtomicBool,
    ) -> Result<SmtpReply, smtp::SmtpError> {
        let journal_entry = || {
            data_sent.store(true, Ordering::Relaxed);
            if let Err(error) = self.journal.record(ready.message_id) {
                metrics::counter!("sendmill_dispatch_journal_errors_total").increment(1);
                tracing::error!(message_id = %ready.message_id, %error, "dedupe journal write failed");
            }
        };
        let result = session
            .send(
                &ready.envelope_from,
                &ready.recipient,
                &ready.message,
                self.connections.settings(),
                journal_entry,
            )
            .await;
        self.connections
            .put_back(endpoint.source, endpoint.addr, session, per_connection);
        result
    }

    fn failure(
        &self,
        mx_host: Option<String>,
        source_ip: Option<String>,
        error: smtp::SmtpError,
        routed: &mut Routed,
    ) -> Outcome {
        let (reason, reply, permanent, category) = match error {
            smtp::SmtpError::Rejected { reply, step } => {
                let verdict = outcome::classify(&self.config.classify, &reply);
                routed.suppress = verdict.suppress;
                let reason = FailureReason::Rejected {
                    step,
                    code: reply.code,
                    text: reply.text.clone(),
                };
                (reason, Some(reply), verdict.permanent, verdict.category)
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
            smtp::SmtpError::TlsUnavailable(e) => (
                FailureReason::Tls(e),
                None,
                false,
                BounceCategory::TlsRequired,
            ),
            smtp::SmtpError::Unsupported(e) => (
                FailureReason::Protocol(e),
                None,
                true,
                BounceCategory::Protocol,
            ),
            smtp::SmtpError::SourcePaused(e) => (
                FailureReason::NoSource(e),
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
        routed: Routed,
    ) -> Result<(), HandlerError> {
        let event = |event_type| {
            let mut e = new_event(event_type, &ready);
            e.attempt = attempt;
            e.provider = Some(
                routed
                    .provider
                    .clone()
                    .unwrap_or_else(|| ready.recipient_domain()),
            );
            if let Some(pool) = &routed.pool {
                e.context.ip_pool = Some(pool.clone());
            }
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
                if routed.suppress {
                    self.suppress_bounced(&ready, &failure).await?;
                }
                self.finish(failure_event(event(EventType::Bounced), failure))
                    .await
            }
            Outcome::Temporary(failure) => {
                let (tier, delay) = self.config.retry_delay(attempt);
                let tier = RetryTier::ALL[tier];
                let now = OffsetDateTime::now_utc();
                let due_at = now + delay;
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

    /// A hard bounce whose rule says so puts the address on the account's list, so later
    /// sends are dropped at ingest instead of hurting the IPs' reputation.
    async fn suppress_bounced(
        &self,
        ready: &ReadyV1,
        failure: &Failure,
    ) -> Result<(), HandlerError> {
        let source = format!("bounce of {}: {}", ready.message_id, failure.reason);
        let added = backoff::until_ok("suppress bounced address", &self.shutdown, || {
            self.suppressions.add_if_absent(
                ready.account_id,
                &ready.recipient,
                sendmill_store::SuppressionReason::Bounce,
                Some(&source),
            )
        })
        .await?;
        if added {
            metrics::counter!("sendmill_dispatch_bounce_suppressions_total").increment(1);
        }
        Ok(())
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

fn new_event(event_type: EventType, ready: &ReadyV1) -> EventV1 {
    EventV1::new(
        event_type,
        "dispatcher",
        ready.message_id,
        ready.account_id,
        &ready.recipient,
        &ready.context,
    )
}

fn route_failure(error: mx::RouteError) -> Outcome {
    match error {
        mx::RouteError::NoSuchDomain => Outcome::Permanent(Failure::new(
            FailureReason::NoSuchDomain,
            BounceCategory::BadDomain,
        )),
        mx::RouteError::NullMx => Outcome::Permanent(Failure::new(
            FailureReason::NullMx,
            BounceCategory::BadDomain,
        )),
        mx::RouteError::Temporary(e) => {
            Outcome::Temporary(Failure::new(FailureReason::Dns(e), BounceCategory::Routing))
        }
    }
}

/// An envelope address we can put in `MAIL FROM:<…>` / `RCPT TO:<…>` as it is. Ingest
/// validated it; this guards the protocol against anything that slipped through.
fn envelope_ok(address: &str) -> bool {
    address.contains('@')
        && address.len() <= 254
        && !address
            .bytes()
            .any(|b| b.is_ascii_control() || matches!(b, b'<' | b'>' | b' '))
}

/// The pause flags, read from Redis at most every `refresh` (new connections read them
/// themselves, so a pause stops new connections at once).
struct PauseWatch {
    redis: ConnectionManager,
    prefix: String,
    refresh: Duration,
    cached: tokio::sync::Mutex<(Arc<HashSet<String>>, Option<Instant>)>,
}

impl PauseWatch {
    fn new(redis: ConnectionManager, prefix: &str, refresh: Duration) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            refresh,
            cached: tokio::sync::Mutex::new((Arc::default(), None)),
        }
    }

    async fn snapshot(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Arc<HashSet<String>>, backoff::ShutDown> {
        let mut cached = self.cached.lock().await;
        if cached.1.is_some_and(|at| at.elapsed() < self.refresh) {
            return Ok(cached.0.clone());
        }
        let flags = backoff::until_ok("read pause flags", shutdown, || {
            let mut redis = self.redis.clone();
            async move { pauses::paused(&mut redis, &self.prefix).await }
        })
        .await?;
        *cached = (Arc::new(flags), Some(Instant::now()));
        Ok(cached.0.clone())
    }

    async fn invalidate(&self) {
        self.cached.lock().await.1 = None;
    }
}
