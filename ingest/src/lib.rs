//! # sendmill-ingest
//!
//! The front door: the developer API. `POST /v1/messages` authenticates the caller's API
//! key, validates the request completely (nothing is written for a refused request),
//! checks the sender's domain, the suppression lists and the account's limits, then
//! writes one [`RequestedV1`](sendmill_wire::RequestedV1) per recipient copy to the
//! `requested` topic of its lane (or holds it in PostgreSQL until `send_at`) and answers
//! 202 with every recipient's message id or reason for refusal.
//!
//! Around it: API keys and tenants, sending domains with DNS verification, stored
//! templates with versions and preview, suppression lists, cancelling scheduled mail,
//! and the OpenAPI document of all of it at `/openapi.json`.
//!
//! Transactional mail (no `campaign_id`) and bulk mail travel in separate lanes so a
//! campaign never delays a password reset.
//!
//! ## Layout
//! - [`request`]: the send body and its parsing (unknown fields rejected, paths named).
//! - [`body`]: JSON, CSV and query extractors answering in the one error shape.
//! - [`validate`]: addresses, header names and values, labels.
//! - [`send`]: the send endpoint; [`send::plan`] turns a request into records (pure).
//! - [`schedule`]: the releaser of held messages and cancelling.
//! - [`submission`]: SMTP submission (587/465): the same accept sequence for raw MIME.
//! - [`keys`], [`domains`], [`templates`], [`suppressions`]: the management endpoints.
//! - [`compat`]: SendGrid v3 and SES v2 drop-ins, translated into the native request.
//! - [`openapi`]: the API's contract, checked against [`routes`] by a test.
//! - [`metric`]: the names of the metrics it records, each with what it counts.

#![recursion_limit = "512"]

pub mod body;
pub mod compat;
pub mod domains;
pub mod keys;
pub mod metric;
pub mod openapi;
pub mod queue;
pub mod request;
pub mod schedule;
pub mod send;
pub mod senders;
pub mod submission;
pub mod suppressions;
pub mod templates;
pub mod validate;

use axum::{
    extract::{DefaultBodyLimit, FromRef},
    middleware,
    routing::{get, post, MethodRouter},
    Router,
};
use sendmill_platform::{
    api::request_id,
    config::override_string,
    dns::TokioResolver,
    health,
    http::ops_router,
    kafka::{KafkaConnection, Producer},
    CancellationToken,
};
use sendmill_render::templates::AccountTemplates;
use sendmill_store::Store;
use sendmill_tenancy::{
    auth::Authenticator, ratelimit::SendLimiter, suppressions::SuppressionCache,
};
use sendmill_wire::Topics;
use serde::Deserialize;
use std::{sync::Arc, time::Duration};

pub use send::{RecipientResult, RecipientStatus, SendResponse};

/// `[ingest]`: the developer API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the API listens on. Env: `SENDMILL_INGEST_LISTEN`.
    pub listen: String,
    /// Largest accepted request body in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most recipient copies (to, cc and bcc together) in one request.
    pub max_recipients: usize,
    /// How long an API key lookup is cached: a revoked key keeps working at most this long
    /// in other processes (the revoking one forgets it at once).
    #[serde(with = "sendmill_platform::config::duration")]
    pub auth_cache: Duration,
    /// How long a sending domain found allowed to send is remembered: a deleted domain
    /// keeps working at most this long in other ingest processes. Refusals are not
    /// remembered, so a domain added or verified works at once.
    #[serde(with = "sendmill_platform::config::duration")]
    pub sending_domain_cache: Duration,
    /// Most bytes of attachments (decoded) in one message. Each recipient's record
    /// carries its own copy, so keep this well below the Kafka message size limit.
    pub max_attachment_bytes: usize,
    /// Accept mail from sending domains whose DNS records were never verified. For local
    /// development only: receivers reject unauthenticated mail.
    pub allow_unverified_domains: bool,
    /// Recipients per second an account may send unless its own limit says otherwise;
    /// 0: unlimited.
    pub default_send_rate_per_sec: u32,
    /// Recipients per UTC day an account may send unless its own quota says otherwise;
    /// 0: unlimited.
    pub default_daily_quota: u64,
    /// How far ahead `send_at` may be.
    #[serde(with = "sendmill_platform::config::duration")]
    pub max_schedule_ahead: Duration,
    /// Time between looks for due scheduled messages (at most).
    #[serde(with = "sendmill_platform::config::duration")]
    pub release_interval: Duration,
    /// How long a request holds its Idempotency-Key before a retry may take it over.
    #[serde(with = "sendmill_platform::config::duration")]
    pub idempotency_lease: Duration,
    /// How long an Idempotency-Key and its answer are kept.
    #[serde(with = "sendmill_platform::config::duration")]
    pub idempotency_retention: Duration,
    /// Deprecated (read for one release, with a warning): `[suppressions] cache`.
    #[serde(with = "sendmill_platform::config::duration")]
    pub suppression_cache: Option<Duration>,
    /// How long an account's template partials are cached (previews, sandbox sends).
    #[serde(with = "sendmill_platform::config::duration")]
    pub template_cache: Duration,
    /// What tenants' DNS records must point at, and how they are checked.
    pub domains: domains::DomainsConfig,
    /// After SIGTERM, how long the API goes on taking requests while `/readyz` already
    /// answers 503, so that load balancers stop sending before the listener closes
    /// (Kubernetes removes a terminating pod's endpoint asynchronously, within seconds).
    /// Then the listener closes and requests in flight finish (within
    /// `kafka.drain_grace`). 0 for a process no balancer fronts.
    #[serde(with = "sendmill_platform::config::duration")]
    pub drain_delay: Duration,
    /// SMTP submission listeners (off unless an address is set).
    pub submission: submission::Config,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 10 * 1024 * 1024,
            max_recipients: 1000,
            auth_cache: Duration::from_secs(30),
            sending_domain_cache: Duration::from_secs(30),
            max_attachment_bytes: 5 * 1024 * 1024,
            allow_unverified_domains: false,
            default_send_rate_per_sec: 5_000,
            default_daily_quota: 0,
            max_schedule_ahead: Duration::from_secs(72 * 3600),
            release_interval: Duration::from_millis(1_000),
            idempotency_lease: Duration::from_secs(60),
            idempotency_retention: Duration::from_secs(24 * 3600),
            suppression_cache: None,
            template_cache: Duration::from_secs(30),
            domains: domains::DomainsConfig::default(),
            drain_delay: Duration::from_secs(5),
            submission: submission::Config::default(),
        }
    }
}

impl Config {
    pub fn apply_env(&mut self) {
        override_string(&mut self.listen, "INGEST_LISTEN");
        self.submission.apply_env();
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub auth: Authenticator,
    pub producer: Producer,
    pub topics: Topics,
    pub config: Arc<Config>,
    pub shutdown: CancellationToken,
    pub suppressions: SuppressionCache,
    pub limiter: SendLimiter,
    pub templates: Arc<AccountTemplates>,
    pub senders: Arc<senders::SenderCache>,
    /// Uncached: verification must see what is published now.
    pub resolver: Arc<TokioResolver>,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

/// What the ingest stage needs from outside, built once by the binary.
pub struct Deps {
    /// Where the API listens (bound by the caller, so it knows the address first).
    pub listener: tokio::net::TcpListener,
    /// Tenants, keys, domains, templates, idempotency keys, scheduled batches.
    pub store: Store,
    /// The cluster `requested` records and events are written to.
    pub kafka: KafkaConnection,
    /// Send limits (per-account token buckets).
    pub redis: redis::aio::ConnectionManager,
    /// Prefix of every Redis key it reads or writes.
    pub redis_prefix: String,
    /// The suppression lists, checked for every recipient.
    pub suppressions: SuppressionCache,
    /// The SMTP submission listeners (bound by the caller; none when it is off).
    pub submission: submission::Listeners,
}

/// Why the ingest stage stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid ingest config: {0}")]
    Config(String),
    #[error(transparent)]
    Kafka(#[from] sendmill_platform::kafka::KafkaError),
    #[error("serving the API: {0}")]
    Serve(#[from] std::io::Error),
}

impl AppState {
    /// The handlers' state: `deps` with the caches and clients `config` asks for, and
    /// the listener it leaves. Fails when the DNS resolver settings are invalid or the
    /// producer cannot be made.
    fn new(
        config: Config,
        deps: Deps,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::net::TcpListener, submission::Listeners), Error> {
        let nameservers = sendmill_platform::dns::parse_nameservers(&config.domains.nameservers)
            .map_err(Error::Config)?;
        let resolver =
            sendmill_platform::dns::resolver(&nameservers, config.domains.dns_timeout, 0)
                .map_err(|e| Error::Config(format!("DNS resolver: {e}")))?;
        let state = Self {
            auth: Authenticator::new(deps.store.clone(), config.auth_cache),
            suppressions: deps.suppressions,
            limiter: SendLimiter::new(deps.redis, &deps.redis_prefix),
            templates: Arc::new(AccountTemplates::new(
                deps.store.clone(),
                config.template_cache,
            )),
            senders: Arc::new(senders::SenderCache::new(config.sending_domain_cache)),
            resolver: Arc::new(resolver),
            store: deps.store,
            producer: deps.kafka.producer()?,
            topics: deps.kafka.topics.clone(),
            config: Arc::new(config),
            shutdown,
        };
        Ok((state, deps.listener, deps.submission))
    }
}

/// Every route of the API with its handlers: the router is built from this table, and
/// the OpenAPI test probes each path to compare the routes with the document.
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    use axum::routing::{delete, patch};
    vec![
        ("/openapi.json", get(openapi::serve)),
        ("/v1/messages", post(send::send)),
        ("/v3/mail/send", post(compat::sendgrid::mail_send)),
        ("/v3/mail/batch", post(compat::sendgrid::create_batch)),
        (
            "/v3/mail/batch/{batch_id}",
            get(compat::sendgrid::get_batch),
        ),
        (
            "/v3/user/scheduled_sends",
            get(compat::sendgrid::scheduled_sends).post(compat::sendgrid::scheduled_send),
        ),
        ("/v2/email/outbound-emails", post(compat::ses::send_email)),
        ("/v1/messages/{id}", delete(schedule::cancel_message)),
        ("/v1/batches/{id}", delete(schedule::cancel_batch)),
        ("/v1/account", get(keys::me)),
        (
            "/v1/accounts",
            get(keys::list_accounts).post(keys::create_account),
        ),
        ("/v1/accounts/{id}", patch(keys::update_account)),
        ("/v1/keys", get(keys::list).post(keys::create)),
        ("/v1/keys/{id}", delete(keys::revoke)),
        ("/v1/domains", get(domains::list).post(domains::add)),
        (
            "/v1/domains/{domain}",
            get(domains::get).delete(domains::delete),
        ),
        ("/v1/domains/{domain}/verify", post(domains::verify)),
        (
            "/v1/templates",
            get(templates::list).post(templates::create),
        ),
        (
            "/v1/templates/{id}",
            get(templates::get).delete(templates::delete),
        ),
        ("/v1/templates/{id}/versions", post(templates::add_version)),
        (
            "/v1/templates/{id}/versions/{version}",
            get(templates::get_version),
        ),
        ("/v1/templates/{id}/preview", post(templates::preview)),
        (
            "/v1/suppressions",
            get(suppressions::list_account).post(suppressions::add_account),
        ),
        ("/v1/suppressions/import", post(suppressions::import)),
        ("/v1/suppressions/export", get(suppressions::export)),
        (
            "/v1/suppressions/{email}",
            get(suppressions::get_account).delete(suppressions::delete_account),
        ),
        (
            "/v1/global-suppressions",
            get(suppressions::list_global).post(suppressions::add_global),
        ),
        (
            "/v1/global-suppressions/{email}",
            get(suppressions::get_global).delete(suppressions::delete_global),
        ),
    ]
}

/// The ingest API with its ops endpoints.
pub fn app(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    sendmill_platform::api::router(routes())
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
        .merge(ops_router("ingest"))
        .layer(middleware::from_fn(request_id))
}

/// Serves the API on `deps.listener`, and releases scheduled messages, until `shutdown`.
/// Returns `Err` when the config is invalid, the producer cannot be made or the listener
/// fails.
///
/// On `shutdown` it drains: `/readyz` fails at once, requests are still taken for
/// `drain_delay`, then the listener closes and the requests in flight finish; their
/// Kafka writes go on for up to `kafka.drain_grace` after the listener closed.
pub async fn run(config: Config, deps: Deps, shutdown: CancellationToken) -> Result<(), Error> {
    let grace = deps.kafka.config.drain_grace;
    let kafka = deps.kafka.clone();
    // Closes the listener: `drain_delay` after shutdown.
    let close = CancellationToken::new();
    // What requests in flight watch: `drain_grace` after the listener closed.
    let in_flight = sendmill_platform::shutdown::after_grace(&close, grace);
    let tls = config.submission.tls().map_err(Error::Config)?;
    let (state, listener, submission_listeners) = AppState::new(config, deps, in_flight.clone())?;
    let submission = tokio::spawn(submission::serve(
        state.clone(),
        state.config.submission.clone(),
        tls,
        submission_listeners,
        close.clone(),
    ));
    let drain_delay = state.config.drain_delay;
    let accepting = Arc::new(health::Condition::new(
        "ingest accepting requests",
        "starting",
    ));
    accepting.holds();
    // Writing `requested` records older releases read (version 2 or 1), the releaser
    // puts the parts of a message held as version 3 back into it (see `schedule`).
    let blobs = match state.producer.shares_parts() {
        true => None,
        false => Some(sendmill_platform::kafka::blobs::BlobReader::new(
            &kafka,
            schedule::BLOB_CACHE_BYTES,
        )?),
    };
    let releaser = tokio::spawn(schedule::run_releaser(
        state.store.clone(),
        state.producer.clone(),
        blobs,
        state.topics.clone(),
        state.config.release_interval,
        shutdown.clone(),
    ));
    let closer = {
        let (shutdown, close, accepting) = (shutdown.clone(), close.clone(), accepting.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            accepting.fails("draining");
            tracing::info!(
                drain_delay_ms = drain_delay.as_millis() as u64,
                "draining: /readyz fails, requests are taken until the listener closes"
            );
            tokio::time::sleep(drain_delay).await;
            close.cancel();
        })
    };
    let served =
        sendmill_platform::http::serve("ingest", listener, app(state), close.clone()).await;
    shutdown.cancel();
    close.cancel();
    in_flight.cancel();
    let _ = closer.await;
    let _ = releaser.await;
    let _ = submission.await;
    // Not ready until the very end (dropped here, the condition would vanish).
    drop(accepting);
    Ok(served?)
}
