//! # sendmill-inbound
//!
//! Mail that comes back. Every message leaves with a signed VERP envelope sender
//! (`b+<message id>-<tag>@<return-path domain>`) and a signed `mailto:` List-Unsubscribe
//! (`unsubscribe+…@<return-path domain>`, `sendmill_platform::return_path`); the MX of
//! each return-path domain points here. What arrives becomes events on the same topic as
//! every other stage's:
//!
//! ```text
//!  remote MTAs ── SMTP :25 ──▶ receiver ──▶ sendmill.inbound.v1 ──▶ processor
//!  (DSN, ARF, auto-replies,    250 only after          │            report::analyze
//!   mail clients' unsubscribes) Kafka acknowledged      │            match (VERP, Message-ID)
//!                                                       ▼
//!   sendmill.events.v1: async_bounced · deferred · complained · unsubscribed · auto_replied
//!   suppressions (bad_mailbox, bad_domain, complaint, unsubscribe)
//!   inbound_returns (PostgreSQL): what could not be classified or matched, kept
//! ```
//!
//! - [`receiver`]: the SMTP server (RFC 5321 with STARTTLS, SIZE, PIPELINING, 8BITMIME,
//!   SMTPUTF8). It takes mail only for the return-path domains of known sending domains
//!   (550 5.7.1 to anything else: never an open relay), and answers 250 only once the
//!   raw message is in Kafka.
//! - [`report`]: what a returned message says (DSN, ARF, non-standard bounce, auto-reply),
//!   from its bytes alone, with the recognition table `rules.toml`.
//! - [`process`]: consumes the inbound topic (at least once; every output is keyed by the
//!   inbound record's id, so a redelivery writes nothing twice), matches each report to
//!   its message and account, and writes the events and suppressions.
//!
//! Trust: a return address names a message only if its HMAC tag verifies; a `Message-ID`
//! (which anyone can copy) is looked up only among the accounts that own the domain the
//! mail was sent to. Nothing from one account's return can touch another's messages.

pub mod metric;
pub mod process;
pub mod receiver;
pub mod report;

use sendmill_platform::{
    kafka::{self, KafkaConnection},
    return_path::ReturnPaths,
    CancellationToken,
};
use sendmill_store::Store;
use sendmill_tenancy::suppressions::SuppressionCache;
use serde::Deserialize;
use std::{path::PathBuf, sync::Arc, time::Duration};
use tokio::net::TcpListener;

/// `[inbound]`: the inbound SMTP server and the processing of what it takes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the SMTP server (port 25 in production, where the MX records of the
    /// return-path domains point); empty: no server (the processor still runs). Env:
    /// `SENDMILL_INBOUND_LISTEN`.
    pub listen: String,
    /// PEM file of the certificate chain offered by STARTTLS; empty: no STARTTLS.
    pub certificate: PathBuf,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Largest message taken, in bytes (announced as SIZE, RFC 1870); larger get 552
    /// 5.3.4. Real bounces carry the returned message, so allow its size.
    pub max_message_bytes: usize,
    /// Most envelope recipients per transaction; more get 452 4.5.3.
    pub max_recipients: usize,
    /// Most connections at once, all clients together; more are answered 421 4.7.0.
    pub max_connections: usize,
    /// Most connections from one client address at once; more are answered 421 4.7.0.
    pub max_connections_per_ip: usize,
    /// How long a command may take to arrive, which is also how long a connection may
    /// sit idle (RFC 5321 §4.5.3.2.7 suggests 5 minutes).
    #[serde(with = "sendmill_platform::config::duration")]
    pub command_timeout: Duration,
    /// How long each block of DATA may take to arrive (RFC 5321 §4.5.3.2.6: 3 minutes).
    #[serde(with = "sendmill_platform::config::duration")]
    pub data_timeout: Duration,
    /// Longest a whole session may last, however busy; then 421 4.4.2.
    #[serde(with = "sendmill_platform::config::duration")]
    pub session_timeout: Duration,
    /// How long a TLS handshake may take.
    #[serde(with = "sendmill_platform::config::duration")]
    pub tls_handshake_timeout: Duration,
    /// How long the list of return-path domains is cached before it is read again.
    #[serde(with = "sendmill_platform::config::duration")]
    pub domain_cache: Duration,
    /// Address of `/healthz` and `/metrics` when the inbound stage runs alone in a
    /// process (`sendmill inbound`). Env: `SENDMILL_INBOUND_OPS_LISTEN`.
    pub ops_listen: String,
    /// Kafka consumer group of the processor.
    pub group_id: String,
    /// Inbound records processed at once.
    pub concurrency: usize,
    /// How long a return whose signed address names a message not yet in the event
    /// store is retried (every 5 s) before it is kept as unmatched: events reach
    /// ClickHouse within seconds, and a DSN can come back faster. Only messages accepted
    /// within this window are waited for (one older than the event store's retention is
    /// kept at once).
    #[serde(with = "sendmill_platform::config::duration")]
    pub match_window: Duration,
    /// How long unclassified and unmatched returns are kept (raw message included).
    #[serde(with = "sendmill_platform::config::duration")]
    pub unclassified_retention: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: String::new(),
            certificate: PathBuf::new(),
            private_key: PathBuf::new(),
            hostname: "localhost".into(),
            max_message_bytes: 10 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_ip: 20,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            session_timeout: Duration::from_secs(1800),
            tls_handshake_timeout: Duration::from_secs(10),
            domain_cache: Duration::from_secs(30),
            ops_listen: "127.0.0.1:9104".into(),
            group_id: "sendmill-inbound".into(),
            concurrency: 16,
            match_window: Duration::from_secs(600),
            unclassified_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl Config {
    pub fn apply_env(&mut self) {
        sendmill_platform::config::override_string(&mut self.listen, "INBOUND_LISTEN");
        sendmill_platform::config::override_string(&mut self.ops_listen, "INBOUND_OPS_LISTEN");
    }

    /// The rules that need no file. `tracking_secret` is `[tracking] secret`: without it
    /// no return address can be verified, so the server would only keep what it takes.
    pub fn check(&self, tracking_secret: &str) -> Result<(), String> {
        if !self.listen.is_empty() {
            if self.listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(format!("inbound.listen: {:?} is not ip:port", self.listen));
            }
            if tracking_secret.is_empty() {
                return Err(
                    "inbound.listen needs tracking.secret (return addresses are signed with it)"
                        .into(),
                );
            }
        }
        if self.certificate.as_os_str().is_empty() != self.private_key.as_os_str().is_empty() {
            return Err("inbound.certificate and inbound.private_key go together".into());
        }
        let counts = [
            self.max_message_bytes,
            self.max_recipients,
            self.max_connections,
            self.max_connections_per_ip,
            self.concurrency,
        ];
        let times = [
            self.command_timeout,
            self.data_timeout,
            self.session_timeout,
            self.tls_handshake_timeout,
        ];
        if counts.contains(&0) || times.contains(&Duration::ZERO) {
            return Err("inbound: limits and timeouts must be positive".into());
        }
        Ok(())
    }
}

/// What the inbound stage needs from outside, built once by the binary.
pub struct Deps {
    /// The SMTP listener (bound by the caller, so it knows the address first); `None`
    /// when `listen` is empty.
    pub listener: Option<TcpListener>,
    /// The cluster: the inbound topic, the events topic.
    pub kafka: KafkaConnection,
    /// Return-path domains and their accounts; kept returns.
    pub store: Store,
    /// The event store, where the message a return is about is looked up.
    pub clickhouse: clickhouse::Client,
    /// The suppression lists bounces, complaints and unsubscribes add to.
    pub suppressions: SuppressionCache,
    /// Verifies return addresses (`[tracking] secret`); `None` without a secret, when
    /// only `Message-ID` matching is possible.
    pub return_paths: Option<ReturnPaths>,
}

/// Why the inbound stage stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid inbound config: {0}")]
    Config(String),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
}

/// Runs the SMTP server (when a listener is given) and the processor until `shutdown`.
/// The server stops taking connections at once and lets transactions in flight finish
/// for the drain grace; the processor finishes the records it holds.
pub async fn run(config: Config, deps: Deps, shutdown: CancellationToken) -> Result<(), Error> {
    let Deps {
        listener,
        kafka,
        store,
        clickhouse,
        suppressions,
        return_paths,
    } = deps;
    let tls = if config.certificate.as_os_str().is_empty() {
        None
    } else {
        Some(
            sendmill_smtp::server::tls_acceptor(&config.certificate, &config.private_key)
                .map_err(|e| Error::Config(e.to_string()))?,
        )
    };
    let domains = Arc::new(receiver::ReturnPathDomains::new(
        store.clone(),
        config.domain_cache,
    ));
    let server = listener.map(|listener| {
        let shared = receiver::Shared::new(
            config.clone(),
            tls,
            domains.clone(),
            kafka.producer()?,
            kafka.topics.inbound(),
            sendmill_platform::shutdown::after_grace(&shutdown, kafka.config.drain_grace),
        );
        Ok::<_, kafka::KafkaError>(tokio::spawn(receiver::serve(
            shared,
            listener,
            shutdown.clone(),
        )))
    });
    let server = server.transpose()?;
    let processor = process::Processor::new(
        config.clone(),
        kafka.clone(),
        store,
        clickhouse,
        suppressions,
        return_paths,
        domains,
        sendmill_platform::shutdown::after_grace(&shutdown, kafka.config.drain_grace),
    )?;
    let processed = process::run(kafka, processor, shutdown).await;
    if let Some(server) = server {
        let _ = server.await;
    }
    processed.map_err(Error::from)
}
