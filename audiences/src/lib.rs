//! # sendmill-audiences
//!
//! The marketer's audience, per account in PostgreSQL: contacts (a normalised address,
//! a name, typed attributes, a subscription status), lists with a membership state per
//! contact, import jobs, saved segments, and the recipient-facing pages that keep a
//! subscription true: the preferences page, the public subscribe form and double opt-in
//! confirmation. Engagement (last delivered, opened, clicked) is read from ClickHouse's
//! `contact_engagement` rollup, never written per event to PostgreSQL.
//!
//! It is served by the analytics stage (its API listener carries these routes, and its
//! process runs the import worker): the routes are generic over the host's state
//! ([`Audiences`] and the [`Authenticator`] taken from it), so no second listener or
//! process exists. Subscription status follows bounces, complaints and unsubscribes by
//! itself: `sendmill_store::Store::add_suppression`, which every stage calls for those,
//! flips the contact and its memberships in the same transaction.
//!
//! ## Layout
//! - [`contacts`]: contacts API (CRUD, search by email prefix and attribute, cursor pages).
//! - [`lists`]: lists and memberships.
//! - [`imports`]: CSV / NDJSON uploads into import jobs; [`worker`] runs them;
//!   [`rows`] parses them (bounded records, a reason per bad line).
//! - [`segments`]: the expression language, compiled to parameterised SQL.
//! - [`export`]: a list or segment as CSV, streamed.
//! - [`engagement`]: the ClickHouse lookups.
//! - [`public`]: preferences page, subscribe form, confirmation links (no login).
//! - [`confirm`]: the double opt-in confirmation message, through the normal pipeline.
//! - [`tokens`]: signed, expiring links for the public pages.
//! - [`app`]: the account's web app at `/app` (sessions over the same handlers).
//! - [`openapi`]: these routes' part of the analytics API document.

pub mod app;
pub mod confirm;
pub mod contacts;
pub mod engagement;
pub mod export;
pub mod imports;
pub mod lists;
pub mod openapi;
pub mod public;
pub mod rows;
pub mod segments;
pub mod tokens;
pub mod worker;

use axum::{
    extract::{DefaultBodyLimit, FromRef},
    routing::{get, post, MethodRouter},
};
use sendmill_platform::{kafka::Producer, tracking::LinkSigner, CancellationToken};
use sendmill_store::Store;
use sendmill_tenancy::{auth::Authenticator, suppressions::SuppressionCache};
use sendmill_wire::Topics;
use serde::Deserialize;
use std::{sync::Arc, time::Duration};
use tokio::sync::Notify;

/// `[analytics.audiences]`: contacts, imports and the public subscription pages.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Largest import upload in bytes; a larger one is refused with 413.
    pub max_import_bytes: usize,
    /// Largest CSV record or NDJSON line in bytes; a longer one is skipped and reported.
    pub max_row_bytes: usize,
    /// Rows written to PostgreSQL per transaction (and per progress update).
    pub import_batch_rows: usize,
    /// Skipped lines whose reason a job keeps (every one is counted in `skipped`).
    pub max_reported_errors: i64,
    /// How long an import worker holds a job without progress before another takes it
    /// over (a worker that died mid-import).
    #[serde(with = "sendmill_platform::config::duration")]
    pub import_lease: Duration,
    /// Time between looks for queued imports (an upload in this process wakes it at once).
    #[serde(with = "sendmill_platform::config::duration")]
    pub import_poll: Duration,
    /// How long a double opt-in confirmation link works.
    #[serde(with = "sendmill_platform::config::duration")]
    pub confirmation_ttl: Duration,
    /// A sign-up for an address still unconfirmed sends its confirmation again only
    /// this long after the last one (the form must not mail-bomb anyone).
    #[serde(with = "sendmill_platform::config::duration")]
    pub confirmation_resend_after: Duration,
    /// The request header a reverse proxy in front of the analytics listener writes the
    /// client's address into (`x-forwarded-for`: its last entry is taken); empty: the
    /// peer address. Set it only behind a proxy that overwrites the header.
    pub client_ip_header: String,
    /// Subscribe form sign-ups per client IP address per minute.
    pub subscribe_per_ip_per_minute: u32,
    /// Subscribe form sign-ups per account per minute.
    pub subscribe_per_account_per_minute: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_import_bytes: 1 << 30,
            max_row_bytes: 64 * 1024,
            import_batch_rows: 2_000,
            max_reported_errors: 1_000,
            import_lease: Duration::from_secs(60),
            import_poll: Duration::from_secs(2),
            confirmation_ttl: Duration::from_secs(7 * 24 * 3600),
            confirmation_resend_after: Duration::from_secs(3600),
            client_ip_header: String::new(),
            subscribe_per_ip_per_minute: 10,
            subscribe_per_account_per_minute: 600,
        }
    }
}

/// What the audiences need from the process that serves them.
pub struct Deps {
    pub store: Store,
    pub clickhouse: clickhouse::Client,
    /// Writes the double opt-in confirmation messages (`requested`) and their events.
    pub producer: Producer,
    pub topics: Topics,
    /// Signs the public pages' links; `None` without `tracking.secret` (the public pages
    /// then answer 503 and double opt-in lists cannot be subscribed to).
    pub links: Option<LinkSigner>,
    /// Public base URL of the analytics endpoints, as recipients reach them.
    pub public_base_url: String,
    /// "Unsubscribe from everything" on the preferences page suppresses the address.
    pub suppressions: SuppressionCache,
    /// Subscribe form rate limits.
    pub redis: redis::aio::ConnectionManager,
    pub redis_prefix: String,
    /// Let double opt-in lists send from sending domains whose DNS records were never
    /// verified: `ingest.allow_unverified_domains`, for local development only.
    pub allow_unverified_senders: bool,
}

/// The handlers' state, cloned into every request.
#[derive(Clone)]
pub struct Audiences {
    pub store: Store,
    pub clickhouse: clickhouse::Client,
    pub producer: Producer,
    pub topics: Topics,
    pub links: Option<LinkSigner>,
    pub public_base_url: Arc<str>,
    pub suppressions: SuppressionCache,
    pub redis: redis::aio::ConnectionManager,
    pub redis_prefix: Arc<str>,
    pub config: Arc<Config>,
    pub allow_unverified_senders: bool,
    /// Wakes this process's import worker when an upload completes.
    pub wake_imports: Arc<Notify>,
}

impl Audiences {
    pub fn new(config: Config, deps: Deps) -> Self {
        Self {
            store: deps.store,
            clickhouse: deps.clickhouse,
            producer: deps.producer,
            topics: deps.topics,
            links: deps.links,
            public_base_url: deps.public_base_url.trim_end_matches('/').into(),
            suppressions: deps.suppressions,
            redis: deps.redis,
            redis_prefix: deps.redis_prefix.into(),
            config: Arc::new(config),
            allow_unverified_senders: deps.allow_unverified_senders,
            wake_imports: Arc::new(Notify::new()),
        }
    }
}

/// Runs the import worker until `shutdown`: queued jobs, and jobs whose worker stopped
/// renewing its lease, are taken and run to the end.
pub async fn run(state: Audiences, shutdown: CancellationToken) {
    worker::run(state, shutdown).await
}

/// The account API's routes (`/v1/contacts`, `/v1/lists`, `/v1/imports`,
/// `/v1/segments`), for the host's route table and OpenAPI test.
pub fn routes<S>() -> Vec<(&'static str, MethodRouter<S>)>
where
    S: Clone + Send + Sync + 'static,
    Audiences: FromRef<S>,
    Authenticator: FromRef<S>,
{
    vec![
        ("/v1/contacts", get(contacts::list).post(contacts::create)),
        (
            "/v1/contacts/{id}",
            get(contacts::get)
                .patch(contacts::update)
                .delete(contacts::delete),
        ),
        ("/v1/contacts/{id}/events", get(contacts::events)),
        ("/v1/lists", get(lists::list).post(lists::create)),
        (
            "/v1/lists/{id}",
            get(lists::get).patch(lists::update).delete(lists::delete),
        ),
        (
            "/v1/lists/{id}/members",
            get(lists::members).post(lists::add_member),
        ),
        (
            "/v1/lists/{id}/members/{contact_id}",
            axum::routing::delete(lists::remove_member),
        ),
        (
            "/v1/lists/{id}/imports",
            post(imports::upload).layer(DefaultBodyLimit::disable()),
        ),
        ("/v1/lists/{id}/export", get(export::list)),
        ("/v1/imports", get(imports::list)),
        ("/v1/imports/{id}", get(imports::get)),
        (
            "/v1/segments",
            get(segments::api::list).post(segments::api::create),
        ),
        (
            "/v1/segments/{id}",
            get(segments::api::get)
                .patch(segments::api::update)
                .delete(segments::api::delete),
        ),
        ("/v1/segments/{id}/count", get(segments::api::count)),
        ("/v1/segments/{id}/contacts", get(segments::api::preview)),
        ("/v1/segments/{id}/export", get(export::segment)),
        ("/v1/segments/check", post(segments::api::check)),
    ]
}

/// The pages without an API key: preferences, subscribe form and confirmation
/// (recipients), and the account web app's pages and sign-in.
pub fn public_router<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    Audiences: FromRef<S>,
{
    axum::Router::new()
        .route(
            "/p/{token}",
            get(public::preferences_page).post(public::preferences_change),
        )
        .route(
            "/subscribe/{list_id}",
            get(public::subscribe_form).post(public::subscribe),
        )
        .route(
            "/confirm/{token}",
            get(public::confirm_page).post(public::confirm),
        )
        .route("/app", get(app::page))
        .route("/app/login", get(app::login_form).post(app::login))
        .route("/app/logout", post(app::logout))
        .route("/app/assets/app.js", get(app::script))
        .route("/app/assets/icon.svg", get(app::icon))
}

/// The web app's API: `routes` (the audiences' [`routes`] and the host's others, such as
/// the campaigns') under `/app/api`, for a signed-in session ([`app::require_session`])
/// instead of a bearer key.
pub fn app_api_router<S>(
    state: Audiences,
    routes: Vec<(&'static str, MethodRouter<S>)>,
) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    Authenticator: FromRef<S>,
    Audiences: FromRef<S>,
{
    let api = sendmill_platform::api::router(routes).layer(axum::middleware::from_fn_with_state(
        state,
        app::require_session,
    ));
    axum::Router::new().nest("/app/api", api)
}

/// Metric names.
pub mod metric {
    /// Contacts rows an import wrote, by `outcome` (`created`, `updated`, `skipped`).
    pub const IMPORT_ROWS_TOTAL: &str = "sendmill_audiences_import_rows_total";
    /// Subscribe form posts refused, by `reason` (`rate_limited`, `honeypot`, `invalid`).
    pub const SUBSCRIBE_REFUSED_TOTAL: &str = "sendmill_audiences_subscribe_refused_total";
    /// Double opt-in confirmation messages written to the pipeline.
    pub const CONFIRMATIONS_SENT_TOTAL: &str = "sendmill_audiences_confirmations_sent_total";
}
