//! # sendmill-analytics
//!
//! Consumes the events topic into ClickHouse and answers questions about it, always
//! scoped to the caller's account: `GET /v1/messages` (messages by tag, status,
//! recipient and time, paginated) and `GET /v1/messages/{id}` (a message's timeline).
//!
//! ## Layout
//! - [`schema`]: ClickHouse migrations from `deploy/clickhouse/`.
//! - [`row`]: the row an event becomes.
//! - [`inserter`]: batched, at-least-once inserts.
//! - [`engagement`]: open pixel, click redirects, unsubscribe pages and one-click POST.
//! - [`messages`]: listing an account's messages with their current status.
//! - [`outcomes`]: accepted messages without an outcome (in flight, overdue), counted
//!   for `/metrics`, `GET /v1/stats/pending`, the dashboard and an alert.
//! - [`openapi`]: the reading API's OpenAPI document, checked against [`routes`].
//! - [`metric`]: the names of the metrics it records, each with what it counts.

pub mod dashboard;
pub mod engagement;
pub mod inserter;
pub mod messages;
pub mod metric;
pub mod openapi;
pub mod outcomes;
pub mod reputation;
pub mod retention;
pub mod returns_api;
pub mod row;
pub mod schema;
pub mod sendgrid_events;
pub mod stats;
pub mod webhook_api;
pub mod webhooks;

use axum::{
    extract::{FromRef, Path, State},
    middleware,
    routing::{get, post},
    Json, Router,
};
use row::EventRow;
use sendmill_platform::{
    api::{request_id, ApiError},
    kafka::{self, consumer::decode, ConsumerSpec, Handled, HandlerError, KafkaConnection},
    tracking::LinkSigner,
    CancellationToken,
};
use sendmill_store::{Scope, Store};
use sendmill_tenancy::{
    auth::{Authenticator, Caller},
    suppressions::SuppressionCache,
};
use sendmill_wire::{EventType, EventV1, MessageId};
use serde::{Deserialize, Serialize};
use std::{sync::Arc, time::Duration};
use tokio::sync::Notify;

/// `[analytics]`: the event store and its API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the analytics API. Env: `SENDMILL_ANALYTICS_LISTEN`.
    pub listen: String,
    /// Kafka consumer group of the event inserter.
    pub group_id: String,
    /// Rows per ClickHouse insert at most.
    pub batch_rows: usize,
    /// How long an event waits at most for its batch to fill.
    #[serde(with = "sendmill_platform::config::duration")]
    pub batch_wait: Duration,
    /// How long an API key lookup is cached.
    #[serde(with = "sendmill_platform::config::duration")]
    pub auth_cache: Duration,
    /// Days of `events` kept; older day partitions are dropped.
    pub retention_days: u32,
    /// Days of the per-minute rollups kept (they are far smaller than `events`).
    pub rollup_retention_days: u32,
    /// Time between retention runs.
    #[serde(with = "sendmill_platform::config::duration")]
    pub retention_check: Duration,
    /// Customer webhooks.
    pub webhooks: webhooks::WebhookConfig,
    /// The reputation monitor.
    pub reputation: reputation::ReputationConfig,
    /// Counting accepted messages without an outcome.
    pub outcomes: outcomes::OutcomesConfig,
    /// Key that signs dashboard sessions; empty: a random key per process (sessions end
    /// with it). Set it when several analytics processes serve the dashboard. Env:
    /// `SENDMILL_DASHBOARD_SECRET`.
    pub dashboard_secret: String,
    /// Contacts, lists, imports, segments and the public subscription pages
    /// (`[analytics.audiences]`), served by this stage.
    pub audiences: sendmill_audiences::Config,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            group_id: "sendmill-analytics".into(),
            batch_rows: 10_000,
            batch_wait: Duration::from_millis(500),
            auth_cache: Duration::from_secs(30),
            retention_days: 90,
            rollup_retention_days: 400,
            retention_check: Duration::from_secs(3_600),
            webhooks: webhooks::WebhookConfig::default(),
            reputation: reputation::ReputationConfig::default(),
            outcomes: outcomes::OutcomesConfig::default(),
            dashboard_secret: String::new(),
            audiences: sendmill_audiences::Config::default(),
        }
    }
}

impl Config {
    pub fn apply_env(&mut self) {
        sendmill_platform::config::override_string(&mut self.listen, "ANALYTICS_LISTEN");
        sendmill_platform::config::override_string(&mut self.dashboard_secret, "DASHBOARD_SECRET");
    }
}

/// Consumes the events topic into ClickHouse until `shutdown`.
pub async fn run_inserter(
    kafka: KafkaConnection,
    clickhouse: clickhouse::Client,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), kafka::KafkaError> {
    let inserter = inserter::BatchInserter::start(
        clickhouse,
        "events",
        config.batch_rows,
        config.batch_wait,
        // Events already taken are written for up to the drain grace after shutdown.
        sendmill_platform::shutdown::after_grace(&shutdown, kafka.config.drain_grace),
    );
    let spec = ConsumerSpec {
        stage: "analytics",
        group_id: config.group_id.clone(),
        topics: vec![kafka.topics.events()],
        // Enough in flight to fill the batch being written and the next few: at exactly
        // one batch the partitions would pause (and refetch) on every batch.
        concurrency: config.batch_rows * 4,
    };
    kafka::consumer::run(
        &kafka,
        spec,
        move |record| {
            let inserter = inserter.clone();
            async move {
                let event: EventV1 = decode(&record)?;
                sendmill_platform::traces::annotate_event(&event);
                inserter
                    .add(EventRow::from(&event))
                    .await
                    .map_err(|_| HandlerError::Interrupted)?;
                Ok(Handled::Done)
            }
        },
        shutdown,
    )
    .await
}

#[derive(Clone)]
pub struct AppState {
    pub clickhouse: clickhouse::Client,
    pub auth: Authenticator,
    pub store: Store,
    pub producer: kafka::Producer,
    pub topics: sendmill_wire::Topics,
    /// `None` when no tracking secret is configured: every link token is then invalid.
    pub links: Option<LinkSigner>,
    /// Unsubscribes go to PostgreSQL and the Redis copy the send path checks.
    pub suppressions: SuppressionCache,
    pub webhooks: webhooks::WebhookConfig,
    /// How overdue is judged (`GET /v1/stats/pending`, the dashboard).
    pub outcomes: outcomes::OutcomesConfig,
    /// The fan-out's endpoint cache, dropped for an account when its endpoints change.
    pub webhook_targets: webhooks::TargetCache,
    /// Wakes this process's webhook sender (new events, a replay).
    pub wake_webhooks: Arc<Notify>,
    /// Pause flags (the dashboard lists and resumes them).
    pub redis: redis::aio::ConnectionManager,
    pub redis_prefix: String,
    pub sessions: dashboard::Sessions,
    /// The audiences' handlers' state.
    pub audiences: sendmill_audiences::Audiences,
    /// The campaigns' handlers' state.
    pub campaigns: sendmill_campaigns::Campaigns,
}

/// What the analytics stage needs from outside, built once by the binary.
pub struct Deps {
    /// Where the API, the engagement endpoints and the dashboard listen (bound by the
    /// caller, so it knows the address first).
    pub listener: tokio::net::TcpListener,
    /// The cluster it consumes events from and produces alerts to.
    pub kafka: KafkaConnection,
    pub clickhouse: clickhouse::Client,
    /// Tenants, keys, webhook endpoints and their outbox.
    pub store: Store,
    /// Unsubscribes go to PostgreSQL and the Redis copy the send path checks.
    pub suppressions: SuppressionCache,
    /// Pause flags and reputation counters.
    pub redis: redis::aio::ConnectionManager,
    /// Prefix of every Redis key it reads or writes.
    pub redis_prefix: String,
    /// Verifies tracking and unsubscribe tokens; `None` without `tracking.secret`.
    pub links: Option<LinkSigner>,
    /// Public base URL of this stage's endpoints as recipients reach them
    /// (`tracking.base_url`): the audiences' preferences and confirmation links.
    pub public_base_url: String,
    /// `ingest.allow_unverified_domains`: double opt-in confirmations may come from
    /// unverified sending domains too (local development only).
    pub allow_unverified_senders: bool,
    /// `[campaigns]`: the test send's and preview's limits (the campaign API is served
    /// here; the campaign sender is a stage of its own).
    pub campaigns: sendmill_campaigns::Config,
}

/// Why the analytics stage stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid analytics config: {0}")]
    Config(String),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
    #[error("serving the API: {0}")]
    Serve(#[from] std::io::Error),
    #[error("the {0} task ended before shutdown")]
    Ended(&'static str),
    #[error("the {0} task panicked")]
    Panicked(&'static str),
}

impl From<outcomes::OutcomesError> for Error {
    fn from(error: outcomes::OutcomesError) -> Self {
        match error {
            outcomes::OutcomesError::Kafka(e) => Error::Kafka(e),
        }
    }
}

impl AppState {
    fn new(deps: &Deps, config: &Config) -> Result<Self, kafka::KafkaError> {
        let store = deps.store.clone();
        let producer = deps.kafka.producer()?;
        let audiences = sendmill_audiences::Audiences::new(
            config.audiences.clone(),
            sendmill_audiences::Deps {
                store: store.clone(),
                clickhouse: deps.clickhouse.clone(),
                producer: producer.clone(),
                topics: deps.kafka.topics.clone(),
                links: deps.links.clone(),
                public_base_url: deps.public_base_url.clone(),
                suppressions: deps.suppressions.clone(),
                redis: deps.redis.clone(),
                redis_prefix: deps.redis_prefix.clone(),
                allow_unverified_senders: deps.allow_unverified_senders,
            },
        );
        let campaigns = sendmill_campaigns::Campaigns::new(
            deps.campaigns.clone(),
            sendmill_campaigns::Deps {
                store: store.clone(),
                clickhouse: deps.clickhouse.clone(),
                producer: producer.clone(),
                topics: deps.kafka.topics.clone(),
                audiences: audiences.clone(),
                allow_unverified_senders: deps.allow_unverified_senders,
            },
        );
        Ok(Self {
            audiences,
            campaigns,
            suppressions: deps.suppressions.clone(),
            clickhouse: deps.clickhouse.clone(),
            auth: Authenticator::new(store.clone(), config.auth_cache),
            producer,
            topics: deps.kafka.topics.clone(),
            links: deps.links.clone(),
            webhooks: config.webhooks.clone(),
            outcomes: config.outcomes.clone(),
            webhook_targets: webhooks::TargetCache::new(
                store.clone(),
                config.webhooks.endpoint_cache,
            ),
            wake_webhooks: Arc::new(Notify::new()),
            redis: deps.redis.clone(),
            redis_prefix: deps.redis_prefix.clone(),
            sessions: dashboard::Sessions::new(&config.dashboard_secret),
            store,
        })
    }
}

/// Runs the analytics stage until `shutdown`: the API and dashboard, the event inserter,
/// webhook fan-out and sending, retention, the reputation monitor and the outcome watch
/// (the last two when enabled). The first task to fail (or to end before shutdown)
/// stops the others, and its error is returned.
pub async fn run(config: Config, deps: Deps, shutdown: CancellationToken) -> Result<(), Error> {
    let state = AppState::new(&deps, &config)?;
    let audiences = state.audiences.clone();
    let Deps {
        listener,
        kafka,
        clickhouse,
        store,
        redis,
        redis_prefix,
        ..
    } = deps;
    let mut tasks = tokio::task::JoinSet::<(&'static str, Result<(), Error>)>::new();
    let (targets, wake) = (state.webhook_targets.clone(), state.wake_webhooks.clone());
    let token = shutdown.clone();
    tasks.spawn(async move {
        let served = sendmill_platform::http::serve("analytics", listener, app(state), token);
        ("API", served.await.map_err(Into::into))
    });
    let fanout = webhooks::run_fanout(
        kafka.clone(),
        store.clone(),
        targets,
        config.webhooks.clone(),
        wake.clone(),
        shutdown.clone(),
    );
    tasks.spawn(async move { ("webhook fan-out", fanout.await.map_err(Into::into)) });
    let client = webhooks::http_client(&config.webhooks).map_err(Error::Config)?;
    let sender = webhooks::run_sender(
        store.clone(),
        config.webhooks.clone(),
        client,
        wake,
        shutdown.clone(),
    );
    tasks.spawn(async move {
        sender.await;
        ("webhook sender", Ok(()))
    });
    let retention = retention::Retention::new(config.retention_days, config.rollup_retention_days)
        .run(
            clickhouse.clone(),
            config.retention_check.max(Duration::from_secs(1)),
            shutdown.clone(),
        );
    tasks.spawn(async move {
        retention.await;
        ("retention", Ok(()))
    });
    if config.reputation.enabled {
        let monitor = reputation::Monitor::new(
            redis,
            &redis_prefix,
            store.clone(),
            &kafka,
            config.reputation.clone(),
        )?;
        let monitoring = reputation::run(kafka.clone(), monitor, shutdown.clone());
        tasks.spawn(async move { ("reputation", monitoring.await.map_err(Into::into)) });
    }
    if config.outcomes.enabled {
        let watching = outcomes::run(
            clickhouse.clone(),
            store,
            kafka.clone(),
            config.outcomes.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move { ("outcome watch", watching.await.map_err(Into::into)) });
    }
    let importing = sendmill_audiences::run(audiences, shutdown.clone());
    tasks.spawn(async move {
        importing.await;
        ("import worker", Ok(()))
    });
    let inserting = run_inserter(kafka, clickhouse, config, shutdown.clone());
    tasks.spawn(async move { ("inserter", inserting.await.map_err(Into::into)) });

    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let error = match joined {
            Ok((_, Ok(()))) if shutdown.is_cancelled() => continue,
            Ok((task, Ok(()))) => Error::Ended(task),
            Ok((task, Err(error))) => {
                tracing::error!(task, %error, "analytics task failed");
                error
            }
            Err(_) => Error::Panicked("analytics"),
        };
        first_error.get_or_insert(error);
        shutdown.cancel();
    }
    first_error.map_or(Ok(()), Err)
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

impl FromRef<AppState> for sendmill_campaigns::Campaigns {
    fn from_ref(state: &AppState) -> Self {
        state.campaigns.clone()
    }
}

impl FromRef<AppState> for sendmill_audiences::Audiences {
    fn from_ref(state: &AppState) -> Self {
        state.audiences.clone()
    }
}

/// The developer-facing routes: the router is built from this table, and the OpenAPI
/// test probes each to compare them with the document.
pub fn routes() -> Vec<(&'static str, axum::routing::MethodRouter<AppState>)> {
    let mut routes = vec![
        ("/openapi.json", get(openapi::serve)),
        ("/v1/messages", get(messages::list)),
        ("/v1/messages/{id}", get(message_timeline)),
        ("/v1/stats", get(stats::get)),
        ("/v1/stats/pending", get(stats::pending)),
        (
            "/v1/webhooks",
            get(webhook_api::list).post(webhook_api::create),
        ),
        (
            "/v1/webhooks/{id}",
            get(webhook_api::get)
                .patch(webhook_api::change)
                .delete(webhook_api::delete),
        ),
        ("/v1/webhooks/{id}/secret", get(webhook_api::secret)),
        ("/v1/webhooks/{id}/attempts", get(webhook_api::attempts)),
        ("/v1/webhooks/{id}/deliveries", get(webhook_api::deliveries)),
        ("/v1/webhooks/{id}/replay", post(webhook_api::replay)),
        ("/v1/returns", get(returns_api::list)),
        ("/v1/returns/{id}/raw", get(returns_api::raw)),
    ];
    routes.extend(sendmill_audiences::routes());
    routes.extend(sendmill_campaigns::routes());
    routes
}

pub fn app(state: AppState) -> Router {
    sendmill_platform::api::router(routes())
        .route("/t/o/{token}", get(engagement::open))
        .route("/t/c/{token}", get(engagement::click))
        .route(
            "/u/{token}",
            get(engagement::unsubscribe_page).post(engagement::unsubscribe),
        )
        .merge(dashboard::router())
        .merge(sendmill_audiences::public_router())
        .merge(sendmill_campaigns::app::router())
        .merge(sendmill_audiences::app_api_router(
            state.audiences.clone(),
            {
                let mut routes = sendmill_audiences::routes();
                routes.extend(sendmill_campaigns::routes());
                routes
            },
        ))
        .with_state(state)
        .merge(sendmill_platform::http::ops_router("analytics"))
        .layer(middleware::from_fn(request_id))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Timeline {
    pub message_id: MessageId,
    /// The terminal event's type once there is one, else the latest event's.
    pub status: String,
    pub events: Vec<TimelineEvent>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TimelineEvent {
    pub event_id: uuid::Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub recipient: String,
    /// The stage that wrote it; for `accepted`, the front door the message came through:
    /// `ingest` (the API) or `submission` (SMTP).
    #[serde(default)]
    pub stage: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub mx_host: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub smtp_code: Option<u16>,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub smtp_enhanced: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub smtp_reply: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub bounce_category: String,
    pub attempt: u16,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub reason: String,
    pub tags: Vec<String>,
}

fn is_terminal(event_type: &str) -> bool {
    EventType::ALL
        .iter()
        .any(|t| t.as_str() == event_type && t.is_terminal())
}

async fn message_timeline(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Timeline>, ApiError> {
    caller.require(Scope::Stats)?;
    let message_id: MessageId = id
        .parse()
        .map_err(|_| ApiError::invalid("id", "not a message id"))?;
    let rows: Vec<EventRow> = state
        .clickhouse
        .query(
            "SELECT ?fields FROM events FINAL
             WHERE account_id = toUUID(?) AND message_id = toUUID(?)
             ORDER BY occurred_at_ms, event_id",
        )
        .bind(caller.0.account_id.to_string())
        .bind(message_id.to_string())
        .fetch_all()
        .await
        .map_err(|error| {
            tracing::error!(%error, "timeline query failed");
            ApiError::unavailable("the event store")
        })?;
    if rows.is_empty() {
        return Err(ApiError::not_found("message"));
    }
    let status = rows
        .iter()
        .rev()
        .find(|r| is_terminal(&r.event_type))
        .or(rows.last())
        .map(|r| r.event_type.clone())
        .unwrap_or_default();
    let events = rows
        .into_iter()
        .map(|r| TimelineEvent {
            event_id: r.event_id,
            event_type: r.event_type,
            at_ms: r.occurred_at_ms,
            recipient: r.recipient,
            stage: r.stage,
            mx_host: r.mx_host,
            smtp_code: (r.smtp_code != 0).then_some(r.smtp_code),
            smtp_enhanced: r.smtp_enhanced,
            smtp_reply: r.smtp_reply,
            bounce_category: r.bounce_category,
            attempt: r.attempt,
            reason: r.reason,
            tags: r.tags,
        })
        .collect();
    Ok(Json(Timeline {
        message_id,
        status,
        events,
    }))
}
