//! # sendmill-platform
//!
//! The infrastructure every stage shares (Kafka, HTTP, telemetry, config, DNS, retries),
//! so that a stage crate holds only its own logic.
//!
//! ## Layout
//! - [`config`]: the shared TOML sections (Kafka, Redis, PostgreSQL, ClickHouse,
//!   telemetry), file loading with `deny_unknown_fields`, and `SENDMILL_*` env overrides
//!   for endpoints and secrets.
//! - [`kafka`]: the idempotent producer, the at-least-once consumer loop (offsets stored
//!   only after the handler's side effect), topic administration (`kafka::admin`).
//! - [`telemetry`]: tracing subscriber, the optional OTLP span exporter and the
//!   Prometheus recorder.
//! - [`traces`]: W3C trace context carried in Kafka record and HTTP headers.
//! - [`http`]: `/livez`, `/readyz`, `/metrics`, and serving a router until shutdown.
//! - [`health`]: what makes this process ready (conditions and dependency probes).
//! - [`shutdown`]: one cancellation token fired by SIGTERM or ctrl-c, and the drain
//!   grace after it.
//! - [`api`]: the JSON error shape every HTTP API answers with, its router, request ids.
//! - [`body`]: JSON bodies and query strings parsed into the one 4xx error shape.
//! - [`backoff`]: retrying an infrastructure call until it succeeds or shutdown.
//! - [`clients`]: Redis and ClickHouse clients built from config.
//! - [`openapi`]: shared pieces of the OpenAPI documents.
//! - [`dns`]: building a DNS resolver (MX routing, domain verification).
//! - [`tracking`]: signed tokens in open, click and unsubscribe links.
//! - [`metric`]: the names of the metrics it records, each with what it counts.
//!
//! Tenant policy (API keys, suppressions, send limits, pauses) is `sendmill-tenancy`'s:
//! this crate knows no tenant and reads no tenant database.

pub mod api;
pub mod backoff;
pub mod body;
pub mod clients;
pub mod config;
pub mod dns;
pub mod health;
pub mod http;
pub mod kafka;
pub mod metric;
pub mod openapi;
pub mod return_path;
pub mod shutdown;
pub mod telemetry;
pub mod traces;
pub mod tracking;

pub use tokio_util::sync::CancellationToken;
