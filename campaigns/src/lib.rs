#![recursion_limit = "256"]
//! # sendmill-campaigns
//!
//! A marketer's campaign: one message (inline Handlebars or a stored template version,
//! optionally 2–4 A/B variants) to an audience (lists and/or a segment, minus excluded
//! lists), scheduled, throttled, paused, resumed or cancelled, and reported live from
//! ClickHouse.
//!
//! Two rooms:
//! - **the API** (`/v1/campaigns…`, and the same handlers under `/app/api` for the web
//!   app), served by the analytics stage next to the audiences: [`api`], [`stats`];
//! - **the campaign sender** ([`run`], `sendmill campaigns`), a stage of its own: it
//!   fixes a due campaign's audience in `campaign_recipients` (one `INSERT … SELECT`,
//!   never in memory), then releases it in chunks into the bulk lane
//!   (`sendmill.requested.bulk.v1` plus each message's `accepted` event), checking each
//!   contact's status, list membership and suppression at that moment ([`sender`]).
//!
//! **Exactly once per contact.** A recipient's message id derives from (campaign,
//! contact) ([`sendmill_wire::MessageId::for_contact`]), and the campaign's `cursor` in
//! PostgreSQL moves only in the transaction that holds the campaign row, after Kafka
//! acknowledged the chunk. A crash before the commit releases the same chunk again with
//! the same ids, which the dispatcher's terminal barrier sends once; a crash after it
//! releases the next chunk. Pause, resume, cancel and a second sender take the same row
//! lock, so none of them can interleave with a chunk half-way.
//!
//! ## Layout
//! - [`model`]: the campaign, its states and the checks on what a marketer writes.
//! - [`api`]: the routes' handlers (CRUD, transitions, test send, preview, winner).
//! - [`content`]: a recipient's record, built the same way for test sends and releases.
//! - [`sender`]: the stage's loop (start, release, A/B winner, throttle, backlog).
//! - [`stats`]: the report from the `campaign_stats` rollup.
//! - [`openapi`]: these routes' part of the analytics API document.
//! - [`app`]: the campaigns page of the account web app (`/app/campaigns`).

pub mod api;
pub mod app;
pub mod content;
pub mod model;
pub mod openapi;
pub mod sender;
pub mod stats;

use axum::{
    extract::FromRef,
    routing::{get, post, MethodRouter},
};
use sendmill_audiences::Audiences;
use sendmill_platform::{
    kafka::{KafkaConnection, Producer},
    CancellationToken,
};
use sendmill_render::templates::AccountTemplates;
use sendmill_store::Store;
use sendmill_tenancy::auth::Authenticator;
use sendmill_wire::Topics;
use serde::Deserialize;
use std::{sync::Arc, time::Duration};

/// `[campaigns]`: the campaign sender.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Contacts released per transaction (one Kafka batch, one cursor update).
    pub chunk_size: u32,
    /// Time between looks for due campaigns, pauses and A/B decisions (so a pause
    /// stops releases within this time at most, plus one chunk).
    #[serde(with = "sendmill_platform::config::duration")]
    pub poll: Duration,
    /// Bulk records waiting for render (its consumer group's lag on
    /// `sendmill.requested.bulk.v1`) above which no chunk is released: campaigns are
    /// let into the lane only as fast as it drains, so the next chunk of every account's
    /// campaign meets a short queue (fair shares) and a cancel or pause leaves little
    /// already queued. 0: no limit.
    pub max_bulk_backlog: i64,
    /// Audience contacts a test send renders in strict mode to report which of them a
    /// template would fail for.
    pub strict_check_contacts: i64,
    /// Seed addresses one test send may name.
    pub max_test_recipients: usize,
    /// `/healthz` and `/metrics` when the sender runs alone (`sendmill campaigns`).
    pub ops_listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            chunk_size: 500,
            poll: Duration::from_millis(250),
            max_bulk_backlog: 20_000,
            strict_check_contacts: 1_000,
            max_test_recipients: 10,
            ops_listen: "127.0.0.1:9095".into(),
        }
    }
}

/// What the API handlers and the sender need.
pub struct Deps {
    pub store: Store,
    pub clickhouse: clickhouse::Client,
    /// Writes released messages (`requested`) and their `accepted` events.
    pub producer: Producer,
    pub topics: Topics,
    /// Segments, list checks and preferences links.
    pub audiences: Audiences,
    /// Let campaigns send from sending domains whose DNS records were never verified:
    /// `ingest.allow_unverified_domains`, for local development only.
    pub allow_unverified_senders: bool,
}

/// The handlers' and the sender's state, cloned into every request.
#[derive(Clone)]
pub struct Campaigns {
    pub store: Store,
    pub clickhouse: clickhouse::Client,
    pub producer: Producer,
    pub topics: Topics,
    pub audiences: Audiences,
    /// The account's templates with its partials, as render compiles them: previews
    /// and strict checks render exactly what render will.
    pub templates: Arc<AccountTemplates>,
    pub config: Arc<Config>,
    pub allow_unverified_senders: bool,
}

impl Campaigns {
    pub fn new(config: Config, deps: Deps) -> Self {
        Self {
            templates: Arc::new(AccountTemplates::new(
                deps.store.clone(),
                Duration::from_secs(30),
            )),
            store: deps.store,
            clickhouse: deps.clickhouse,
            producer: deps.producer,
            topics: deps.topics,
            audiences: deps.audiences,
            config: Arc::new(config),
            allow_unverified_senders: deps.allow_unverified_senders,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// The campaign sender: runs until `shutdown`. `kafka` is for the bulk backlog probe
/// (the lag of `render_group` on `sendmill.requested.bulk.v1`). Errors: a Kafka client
/// that cannot be created; PostgreSQL and Kafka outages are waited out.
pub async fn run(
    state: Campaigns,
    kafka: KafkaConnection,
    render_group: String,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    sender::run(state, kafka, render_group, shutdown).await
}

/// The account API's routes (`/v1/campaigns…`), for the host's route table and
/// OpenAPI test.
pub fn routes<S>() -> Vec<(&'static str, MethodRouter<S>)>
where
    S: Clone + Send + Sync + 'static,
    Campaigns: FromRef<S>,
    Authenticator: FromRef<S>,
{
    vec![
        ("/v1/campaigns", get(api::list).post(api::create)),
        (
            "/v1/campaigns/{id}",
            get(api::get).patch(api::update).delete(api::delete),
        ),
        ("/v1/campaigns/{id}/schedule", post(api::schedule)),
        ("/v1/campaigns/{id}/unschedule", post(api::unschedule)),
        ("/v1/campaigns/{id}/pause", post(api::pause)),
        ("/v1/campaigns/{id}/resume", post(api::resume)),
        ("/v1/campaigns/{id}/cancel", post(api::cancel)),
        ("/v1/campaigns/{id}/winner", post(api::choose_winner)),
        ("/v1/campaigns/{id}/test", post(api::test_send)),
        ("/v1/campaigns/{id}/preview", get(api::preview)),
        ("/v1/campaigns/{id}/stats", get(stats::get)),
    ]
}

/// Metric names.
pub mod metric {
    /// Campaign contacts released into the bulk lane.
    pub const RELEASED_TOTAL: &str = "sendmill_campaigns_released_total";
    /// Campaign contacts skipped at release, by `reason` (`unsubscribed`, `bounced`,
    /// `complained`, `suppressed`, `left_list`, `excluded`, `deleted`).
    pub const SKIPPED_TOTAL: &str = "sendmill_campaigns_skipped_total";
    /// Release rounds held back because the bulk lane's backlog was over the limit.
    pub const BACKLOG_WAITS_TOTAL: &str = "sendmill_campaigns_backlog_waits_total";
}
