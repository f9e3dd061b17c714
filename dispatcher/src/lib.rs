//! # sendmill-dispatcher
//!
//! Consumes `ready` records and delivers each to its recipient's MX hosts over SMTP.
//! [`Dispatcher::handle_ready`] is the recipe, one room per step:
//!
//! 1. **Barrier** ([`barrier`]). A message whose outcome is recorded (Redis) or whose data
//!    already reached a receiver (the local [`journal`]) is never sent again: its
//!    recorded event is repeated instead, or it is reported delivered.
//! 2. **Suppression** ([`record`]), checked again (authoritative): the address may have
//!    been suppressed since acceptance.
//! 3. **Routing** ([`attempt`]). MX lookup ([`mx`]), the recipient domain's MTA-STS
//!    policy ([`mta_sts`]: in `enforce` mode only matching MX hosts, over TLS whose
//!    certificate is verified), the recipient's [`provider`], the IP pool ([`pools`]) and
//!    TLS policy.
//! 4. **Shaping** ([`attempt`]). A source IP by weight, skipping paused IPs
//!    ([`pause_watch`]) and IPs out of warm-up quota, and a token from the (IP or pool,
//!    provider) bucket in Redis ([`shaping`]); without one the message waits on the timer
//!    wheel, and the consumer pauses its partitions while the local queue is full.
//! 5. **SMTP** ([`attempt`]) over a pooled session from the chosen IP (`sendmill-smtp`),
//!    MX hosts by preference, the journal written the moment the data is out.
//! 6. **Outcome** ([`record`]). The reply is classified by the config's rule table
//!    ([`outcome`]): delivered → `delivered`; permanent → `bounced` (and a suppression
//!    when the rule says so); temporary → the next retry delay topic and `deferred`, or
//!    `expired` past the retry window. Rate-limit replies put the provider in backoff.
//!
//! A second loop consumes the delay topics ([`Dispatcher::handle_retry`]): a record not
//! yet due pauses its partition until it is (see `platform::kafka::consumer`); a due one
//! goes back to `ready`.
//!
//! **Exactly one terminal event.** Before a terminal event is written, it is stored in
//! Redis under the message id (`SET NX`); a redelivered record re-writes the stored event
//! with its original event id, which ClickHouse deduplicates.
//!
//! Metric names: [`metric`].

mod attempt;
mod barrier;
pub mod config;
mod inflight;
pub mod journal;
pub mod metric;
pub mod mta_sts;
pub mod mx;
pub mod outcome;
mod pause_watch;
pub mod pools;
pub mod provider;
mod record;
pub mod shaping;

pub use config::{Config, Error};

use pause_watch::PauseWatch;
use redis::aio::ConnectionManager;
use sendmill_platform::{
    backoff,
    kafka::{self, consumer::decode, ConsumerSpec, Handled, HandlerError, KafkaConnection, Record},
    CancellationToken,
};
use sendmill_smtp::{ConnectionPool, PoolSettings, Timeouts};
use sendmill_tenancy::suppressions::SuppressionCache;
use sendmill_wire::{EventType, Lane, ReadyV1, RetryTier, RetryV1};
use std::{path::Path, sync::Arc};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

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
    /// A bulk message's share of the send slots, taken before `sending`.
    bulk_sending: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Everything the dispatcher needs, built once per process.
pub struct Dispatcher {
    resolver: mx::MxResolver,
    mta_sts: mta_sts::MtaSts,
    /// Judges MX certificates where a domain's MTA-STS policy asks (`None` when MTA-STS
    /// is off: no policy is then ever found).
    verifier: Option<sendmill_smtp::CertificateVerifier>,
    providers: provider::Providers,
    pools: pools::Pools,
    shaper: shaping::Shaper,
    connections: ConnectionPool,
    journal: journal::Journal,
    handling: inflight::MessageLocks,
    sending: Arc<Semaphore>,
    /// Three quarters of the send slots (at least one): a bulk message takes one of
    /// these before a send slot, so a quarter always stays for transactional mail
    /// however much bulk mail holds tokens (the transactional lane first).
    bulk_sending: Arc<Semaphore>,
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
        // Records already taken (waiting for tokens, being sent, their events produced)
        // are finished for up to the drain grace after shutdown.
        sendmill_platform::shutdown::after_grace(&shutdown, kafka.config.drain_grace),
    )?);
    // One loop per lane, each with its own capacity: bulk records waiting for tokens
    // never fill the queue a transactional record needs to be fetched into.
    let lane = |lane: Lane| {
        let spec = ConsumerSpec {
            stage: "dispatcher",
            group_id: config.group_id.clone(),
            topics: vec![kafka.topics.ready(lane)],
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
    // A lane whose loop fails ends the other too, and the stage fails.
    let deliveries =
        async { tokio::try_join!(lane(Lane::Transactional), lane(Lane::Bulk)).map(drop) };
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
        let resolver = mx::MxResolver::new(&config.nameserver_addrs()?, config.dns_timeout)
            .map_err(|e| Error::Dns(e.to_string()))?;
        let mta_sts = mta_sts::MtaSts::new(config.mta_sts.clone(), resolver.resolver().clone())
            .map_err(|e| Error::MtaSts(e.to_string()))?;
        let verifier = if config.mta_sts.enabled {
            Some(
                sendmill_smtp::CertificateVerifier::new(&config.mta_sts.extra_roots)
                    .map_err(|e| Error::MtaSts(e.to_string()))?,
            )
        } else {
            None
        };
        let connections = ConnectionPool::new(PoolSettings {
            timeouts: Timeouts {
                connect: config.connect_timeout,
                command: config.command_timeout,
                data: config.data_timeout,
            },
            max_idle_per_host: config.max_idle_per_host,
            idle_timeout: config.idle_timeout,
        });
        let journal = journal::Journal::open(
            Path::new(&config.journal_dir),
            config.journal_segment_entries,
            config.journal_segments,
        )?;
        Ok(Self {
            resolver,
            mta_sts,
            verifier,
            providers: provider::Providers::new(&config.providers),
            pools: pools::Pools::new(&config),
            shaper: shaping::Shaper::new(redis.clone(), &key_prefix, &config, shutdown.clone()),
            connections,
            journal,
            handling: inflight::MessageLocks::default(),
            sending: Arc::new(Semaphore::new(config.concurrency.max(1))),
            bulk_sending: Arc::new(Semaphore::new((config.concurrency * 3 / 4).max(1))),
            pause_watch: PauseWatch::new(redis.clone(), &key_prefix, config.pause_refresh),
            producer: kafka.producer()?,
            redis,
            key_prefix,
            suppressions,
            kafka,
            config,
            shutdown,
        })
    }

    /// Handles one `ready` record: the six steps of the module doc.
    async fn handle_ready(&self, record: Record) -> Result<Handled, HandlerError> {
        let ready: ReadyV1 = decode(&record)?;
        let _handling = self.handling.lock(ready.message_id).await;
        // 1. Barrier.
        if let Some(recorded) = self.recorded_terminal(ready.message_id).await? {
            // Redelivered after its outcome was recorded: repeat the event, not the send.
            self.emit(&recorded).await?;
            return Ok(Handled::Done);
        }
        if self.journal.contains(ready.message_id) {
            // Its data reached a receiver, but the process stopped (or the session broke)
            // before the outcome was recorded: sending again would deliver it twice.
            let mut event = record::new_event(EventType::Delivered, &ready);
            event.attempt = ready.attempts.max(1);
            event.reason = Some(
                "the message data reached the receiver but its reply was not read (dispatcher restart or broken session); not sent again".into(),
            );
            metrics::counter!(crate::metric::DISPATCH_UNCONFIRMED_TOTAL).increment(1);
            self.finish(event).await?;
            return Ok(Handled::Done);
        }
        // 2. Suppression.
        if self.drop_if_suppressed(&ready).await? {
            return Ok(Handled::Done);
        }
        let attempt = ready.attempts + 1;
        let mut routed = Routed::default();
        // 3. Routing, 4. shaping, 5. SMTP: each may end the attempt with an outcome.
        let outcome = match self.route(&ready, &mut routed).await {
            Err(outcome) => outcome,
            Ok(route) => match self.shape(&ready, &route).await? {
                Err(outcome) => outcome,
                Ok(source) => self.attempt(&ready, &route, &source, &mut routed).await?,
            },
        };
        // 6. Outcome.
        self.record_outcome(ready, attempt, outcome, routed).await?;
        Ok(Handled::Done)
    }

    /// Handles one retry record: not due yet, its partition waits; due, it goes back to
    /// its lane's `ready` topic.
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
