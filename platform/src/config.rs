//! Configuration shared by the stages. The whole installation is one TOML file; each
//! stage crate declares its own section and the `sendmill` binary assembles them. Every
//! section denies unknown fields (a typo is an error, not a silent default) and documents
//! every field. Environment variables override only endpoints and secrets, so a file can
//! be committed and the same file used in every environment.

use serde::{de::DeserializeOwned, Deserialize};
use std::{collections::BTreeMap, path::Path, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// A config as loaded, with the deprecated settings it used (to be logged once logging
/// is set up).
pub struct Loaded<T> {
    pub config: T,
    /// One sentence per deprecated setting found, naming its replacement.
    pub deprecations: Vec<String>,
}

/// Parses a TOML file into `T` (see [`parse`]).
pub fn load_file<T: DeserializeOwned>(path: &Path) -> Result<Loaded<T>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses TOML text into `T`; `origin` names the text in errors.
///
/// Durations are humantime strings (`"15m"`, `"500ms"`; see [`duration`]). For one
/// release the integers of the old `<name>_secs` / `<name>_ms` keys are still read: each
/// becomes `<name> = "<n>s"` (or `"<n>ms"`), noted in [`Loaded::deprecations`].
pub fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<Loaded<T>, ConfigError> {
    let parse_error = |source| ConfigError::Parse {
        path: origin.to_owned(),
        source,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(parse_error)?;
    let mut deprecations = Vec::new();
    upgrade_durations(&mut table, "", &mut deprecations);
    let config = if deprecations.is_empty() {
        // Straight from the text: errors keep their line and column.
        toml::from_str(text).map_err(parse_error)?
    } else {
        toml::Value::Table(table).try_into().map_err(parse_error)?
    };
    Ok(Loaded {
        config,
        deprecations,
    })
}

/// Renames every `<name>_secs` / `<name>_ms` key holding an integer (or an array of
/// integers) to `<name>` with the same duration as a humantime string, unless `<name>`
/// is set too. Only durations are named so; nothing else is touched.
fn upgrade_durations(table: &mut toml::Table, path: &str, deprecations: &mut Vec<String>) {
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let unit = [("_secs", "s"), ("_ms", "ms")]
            .into_iter()
            .find_map(|(suffix, unit)| key.strip_suffix(suffix).map(|stem| (stem, unit)));
        if let Some((stem, unit)) = unit {
            let as_text = |v: &toml::Value| {
                v.as_integer()
                    .filter(|n| *n >= 0)
                    .map(|n| toml::Value::String(format!("{n}{unit}")))
            };
            let upgraded = match &table[&key] {
                toml::Value::Array(items) => items
                    .iter()
                    .map(as_text)
                    .collect::<Option<Vec<_>>>()
                    .map(toml::Value::Array),
                value => as_text(value),
            };
            if let Some(value) = upgraded.filter(|_| !table.contains_key(stem)) {
                deprecations.push(format!(
                    "{here} = {} is deprecated: write {}{stem} = {} (a duration)",
                    show(&table[&key]),
                    here.strip_suffix(key.as_str()).unwrap_or_default(),
                    show(&value),
                ));
                table.remove(&key);
                table.insert(stem.to_owned(), value);
                continue;
            }
        }
        match table.get_mut(&key) {
            Some(toml::Value::Table(inner)) => upgrade_durations(inner, &here, deprecations),
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let toml::Value::Table(inner) = item {
                        upgrade_durations(inner, &format!("{here}[{i}]"), deprecations);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A scalar or array of scalars as TOML writes it (for messages).
fn show(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        other => format!("{other:?}"),
    }
}

/// `#[serde(with = "duration")]` for a `Duration` setting: a humantime string such as
/// `"30s"`, `"15m"`, `"1h 30m"` or `"500ms"` (written back the same way).
pub mod duration {
    pub use humantime_serde::{deserialize, serialize};
}

/// `#[serde(deserialize_with = "durations::deserialize")]` for a fixed number of
/// `Duration` settings: an array of humantime strings of exactly that length.
pub mod durations {
    use serde::{de::Error, Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[Duration; N], D::Error> {
        let items: Vec<humantime_serde::Serde<Duration>> = Vec::deserialize(deserializer)?;
        let items: Vec<Duration> = items.into_iter().map(|d| d.into_inner()).collect();
        let found = items.len();
        items
            .try_into()
            .map_err(|_| D::Error::invalid_length(found, &format!("{N} durations").as_str()))
    }
}

/// Reads an override from the environment: `SENDMILL_<NAME>`, ignored when empty.
pub fn env_override(name: &str) -> Option<String> {
    std::env::var(format!("SENDMILL_{name}"))
        .ok()
        .filter(|v| !v.is_empty())
}

/// Applies `SENDMILL_<NAME>` to `field` when set.
pub fn override_string(field: &mut String, name: &str) {
    if let Some(v) = env_override(name) {
        *field = v;
    }
}

/// Kafka (Apache Kafka 4.x, or any Kafka-protocol service): every record between the
/// stages. Topics are created and reconciled by `sendmill migrate` with the settings
/// below (see `sendmill_platform::kafka::admin`); nothing relies on auto-creation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port,host:port`. Default: the local broker
    /// `deploy/local` starts. Env: `SENDMILL_KAFKA_BROKERS`.
    pub brokers: String,
    /// Prepended to every topic name and consumer group id, so installations sharing a
    /// cluster stay apart.
    pub topic_prefix: String,
    /// Partitions of each topic `sendmill migrate` creates; an existing topic with fewer
    /// is grown to this many (never shrunk). The ceiling on consumers per stage.
    pub partitions: i32,
    /// Replication factor of each topic `sendmill migrate` creates (3 in production, 1
    /// on a single local broker). An existing topic's is reported by `sendmill kafka
    /// check`, not changed (that is a partition reassignment).
    pub replication_factor: i32,
    /// `min.insync.replicas` of every topic: with the producer's `acks=all`, a record is
    /// acknowledged (and the send API answers 202) only once this many replicas have it.
    /// At most `replication_factor`; 2 with 3 replicas survives one broker lost.
    pub min_insync_replicas: i32,
    /// `retention.ms` of the message topics (requested, ready, retry), in hours. At least
    /// 168 (7 days): a record must outlive any outage a stage could be down for.
    pub queue_retention_hours: u32,
    /// `retention.ms` of the events and alerts topics, in hours (ClickHouse and the
    /// webhook outbox are their durable homes; the topic is a buffer and a replay window).
    pub events_retention_hours: u32,
    /// `retention.ms` of the dead-letter topic, in hours.
    pub dlq_retention_hours: u32,
    /// `retention.ms` of the blobs topic (the large parts of requests, written once and
    /// referenced by each recipient's record), in hours. At least
    /// `queue_retention_hours` plus `ingest.max_schedule_ahead`: a message held until its
    /// `send_at` and then queued as long as the queues keep it must still find its
    /// parts. A record whose parts are gone ends in `render_failed`.
    pub blobs_retention_hours: u32,
    /// The largest record, bytes: the producer's `message.max.bytes`, every topic's
    /// `max.message.bytes` and the consumers' fetch limits. Must hold a message at the
    /// attachment limit (5 MiB, base64 and JSON: ~7 MiB) with its rendered MIME; the
    /// brokers' `message.max.bytes` / `replica.fetch.max.bytes` must be at least this.
    pub max_message_bytes: u32,
    /// Bytes of records one consumer loop holds at once (being handled, or waiting in
    /// its handler, e.g. for a shaping token), at least one record whatever its size.
    /// With large messages this, not a stage's `concurrency`, bounds its memory: the
    /// dispatcher's 4,096-record queue of 2.8 MB messages is 11 GB.
    pub max_bytes_in_flight: usize,
    /// A stable identity for this process in its consumer groups (Kafka static
    /// membership, KIP-345), e.g. a StatefulSet pod name: a restart within
    /// `session_timeout` gets its partitions back without a rebalance. Each consumer
    /// appends its group id. Empty: dynamic membership. Two live processes must never
    /// share one. Env: `SENDMILL_KAFKA_INSTANCE_ID`.
    pub group_instance_id: String,
    /// Consumer session timeout; a crashed consumer's partitions move after this long.
    #[serde(with = "crate::config::duration")]
    pub session_timeout: Duration,
    /// After SIGTERM, how long work already taken may go on: a consumer stage stops
    /// fetching at once and its handlers finish the records they hold (waiting for
    /// rate-limit tokens, retrying a produce) for up to this long; then their waits and
    /// retries give up and those records are redelivered after the restart (never lost).
    /// An SMTP transaction already under way is not cut: its own timeouts bound it.
    /// Ingest's requests in flight get this long from the moment its listener closes
    /// (`ingest.drain_delay` after SIGTERM). Keep the scheduler's kill deadline
    /// (Kubernetes' `terminationGracePeriodSeconds`) above this plus `drain_delay` for
    /// ingest, above this plus a typical SMTP transaction for the dispatcher. At most
    /// 4 min (librdkafka's default `max.poll.interval.ms` is 5: the loop does not poll
    /// while it drains).
    #[serde(with = "crate::config::duration")]
    pub drain_grace: Duration,
    /// The version of the `ready` records this process writes (render writes them, and
    /// the dispatcher when a retry falls due): 2, a binary frame (default), or 1, JSON
    /// with the message in base64, which releases before version 2 can read. For a
    /// rolling upgrade from such a release, run the new release with 1 until no process
    /// of the old one is left, then switch to 2. Every release reads both.
    pub ready_version: u8,
    /// The version of the `requested` records this process writes (ingest, the
    /// scheduler and the campaign sender write them): 3 (default), a binary frame whose
    /// large parts (template, attachments, submitted MIME), when a request has more than
    /// one recipient, are written once to the blobs topic and referenced by each
    /// recipient's record; 2, a binary frame that carries them itself, which releases
    /// before version 3 can read; or 1, JSON, which releases before version 2 can read.
    /// Roll upgrades as for `ready_version`. Every release reads every version up to its
    /// own.
    pub requested_version: u8,
    /// Extra librdkafka properties for every client (e.g. `security.protocol`,
    /// `sasl.mechanisms`). Secrets belong in `SENDMILL_KAFKA_SASL_PASSWORD`.
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            partitions: 8,
            replication_factor: 3,
            min_insync_replicas: 2,
            queue_retention_hours: 7 * 24,
            events_retention_hours: 7 * 24,
            dlq_retention_hours: 30 * 24,
            // The queues' 7 days, the furthest `send_at` (72 h), and a day to spare.
            blobs_retention_hours: 11 * 24,
            max_message_bytes: 32 * 1024 * 1024,
            max_bytes_in_flight: 256 * 1024 * 1024,
            group_instance_id: String::new(),
            session_timeout: Duration::from_millis(10_000),
            drain_grace: Duration::from_secs(20),
            ready_version: 2,
            requested_version: 3,
            client: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub fn apply_env(&mut self) {
        override_string(&mut self.brokers, "KAFKA_BROKERS");
        override_string(&mut self.group_instance_id, "KAFKA_INSTANCE_ID");
        if let Some(password) = env_override("KAFKA_SASL_PASSWORD") {
            self.client.insert("sasl.password".into(), password);
        }
    }

    /// What serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("kafka.{m}")));
        if self.brokers.trim().is_empty() {
            return invalid("brokers must name at least one host:port");
        }
        if self.partitions < 1 {
            return invalid("partitions must be at least 1");
        }
        if self.replication_factor < 1 {
            return invalid("replication_factor must be at least 1");
        }
        if self.min_insync_replicas < 1 || self.min_insync_replicas > self.replication_factor {
            return invalid("min_insync_replicas must be between 1 and replication_factor");
        }
        if self.queue_retention_hours < 7 * 24 {
            return invalid("queue_retention_hours must be at least 168 (7 days)");
        }
        if self.events_retention_hours < 1 || self.dlq_retention_hours < 1 {
            return invalid("events_retention_hours and dlq_retention_hours must be at least 1");
        }
        if self.max_message_bytes < 1024 * 1024 {
            return invalid("max_message_bytes must be at least 1 MiB (1048576)");
        }
        // The loop does not poll while it drains; librdkafka's max.poll.interval.ms
        // (5 min) would take the partitions away before the handlers end.
        if self.drain_grace > Duration::from_secs(240) {
            return invalid("drain_grace must be at most 4 min");
        }
        if !matches!(self.ready_version, 1 | 2) {
            return invalid("ready_version must be 1 or 2");
        }
        if !matches!(self.requested_version, 1..=3) {
            return invalid("requested_version must be 1, 2 or 3");
        }
        if self.blobs_retention_hours < self.queue_retention_hours {
            return invalid("blobs_retention_hours must be at least queue_retention_hours");
        }
        Ok(())
    }
}

/// Redis: token buckets, dedupe barrier, caches.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`. Env: `SENDMILL_REDIS_URL`.
    pub url: String,
    /// Prepended to every key, so installations sharing a Redis stay apart.
    pub key_prefix: String,
    /// How long a command may wait for its reply before it fails (and is retried or
    /// answered 503). Redis answers in microseconds; this bounds a dead connection, and
    /// must outlast a busy process's scheduling delays (redis-rs' own default, 500 ms,
    /// failed ingest's rate-limit check under a burst of 1,000-recipient requests).
    #[serde(with = "crate::config::duration")]
    pub response_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            key_prefix: "sendmill:".into(),
            response_timeout: Duration::from_millis(2_000),
        }
    }
}

impl RedisConfig {
    pub fn apply_env(&mut self) {
        override_string(&mut self.url, "REDIS_URL");
    }
}

/// PostgreSQL: accounts, keys, domains and the rest of the tenant data.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/db`. Env: `SENDMILL_DATABASE_URL`.
    pub url: String,
    /// Connections per process.
    pub max_connections: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: "postgres://sendmill:sendmill@127.0.0.1:5432/sendmill".into(),
            max_connections: 16,
        }
    }
}

impl PostgresConfig {
    pub fn apply_env(&mut self) {
        override_string(&mut self.url, "DATABASE_URL");
    }
}

/// ClickHouse: the event store behind stats, timelines and dashboards.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint. Env: `SENDMILL_CLICKHOUSE_URL`.
    pub url: String,
    /// Database holding Sendmill's tables; `sendmill migrate` creates it.
    pub database: String,
    /// User name. Env: `SENDMILL_CLICKHOUSE_USER`.
    pub user: String,
    /// Password. Env: `SENDMILL_CLICKHOUSE_PASSWORD`.
    pub password: String,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:18123".into(),
            database: "sendmill".into(),
            user: "default".into(),
            password: String::new(),
        }
    }
}

impl ClickHouseConfig {
    pub fn apply_env(&mut self) {
        override_string(&mut self.url, "CLICKHOUSE_URL");
        override_string(&mut self.user, "CLICKHOUSE_USER");
        override_string(&mut self.password, "CLICKHOUSE_PASSWORD");
    }
}

/// Logs and metrics.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `json` (one object per line, for log shippers) or `text` (for people).
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info,sendmill_dispatcher=debug`. `RUST_LOG` overrides it.
    pub log_filter: String,
    /// Base URL of an OpenTelemetry collector's OTLP/HTTP receiver, e.g.
    /// `http://127.0.0.1:4318`; spans are posted as OTLP JSON to `<url>/v1/traces`. Empty:
    /// no spans are exported and no trace context is written into Kafka records.
    /// Env: `SENDMILL_OTLP_ENDPOINT`.
    pub otlp_endpoint: String,
    /// Share of new traces kept, 0.0 to 1.0. A message's later spans follow the decision
    /// made where its trace began, so a trace is kept whole or not at all.
    pub trace_sample_ratio: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_filter: "info,sqlx=warn".into(),
            otlp_endpoint: String::new(),
            trace_sample_ratio: 1.0,
        }
    }
}

impl TelemetryConfig {
    pub fn apply_env(&mut self) {
        override_string(&mut self.otlp_endpoint, "OTLP_ENDPOINT");
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(ConfigError::Invalid(
                "telemetry.trace_sample_ratio must be between 0.0 and 1.0".into(),
            ));
        }
        if !(self.otlp_endpoint.is_empty()
            || self.otlp_endpoint.starts_with("https://")
            || self.otlp_endpoint.starts_with("http://"))
        {
            return Err(ConfigError::Invalid(
                "telemetry.otlp_endpoint must be empty or an http(s) URL".into(),
            ));
        }
        Ok(())
    }
}

/// `[secrets]`: where the key-encryption keys (KEKs) come from that seal DKIM private
/// keys and webhook signing secrets in PostgreSQL (AES-256-GCM; `sendmill_store::secrets`).
/// The keys themselves never live in this file or in the config printed by
/// `validate-config`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// A file of KEKs, one `id:base64-of-32-bytes` per line, the current one first; the
    /// others are older KEKs that still open rows until `sendmill admin rotate-kek` has
    /// resealed them. Empty: no file. Env `SENDMILL_KEKS` (the same entries,
    /// comma-separated) takes precedence. With neither, secrets are stored in plaintext
    /// and every process says so at start.
    pub kek_file: String,
}

impl SecretsConfig {
    /// The keyring's text: `SENDMILL_KEKS`, else the file's contents, else `None`.
    /// Errors: the file cannot be read.
    pub fn keyring_text(&self) -> Result<Option<String>, ConfigError> {
        if let Some(keks) = env_override("KEKS") {
            return Ok(Some(keks));
        }
        if self.kek_file.is_empty() {
            return Ok(None);
        }
        std::fs::read_to_string(&self.kek_file)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("secrets.kek_file {}: {e}", self.kek_file)))
    }
}

/// Open and click tracking and unsubscribe links (render writes them, analytics answers
/// them).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// Public base URL of the analytics endpoints, as recipients reach them (no trailing
    /// slash). Env: `SENDMILL_TRACKING_BASE_URL`.
    pub base_url: String,
    /// HMAC key for link tokens and for the signed return addresses (the VERP envelope
    /// sender and the `mailto:` unsubscribe, `return_path`), at least 32 characters.
    /// Empty: no tracking or unsubscribe links are written, return paths are unsigned
    /// and the inbound stage cannot match returned mail by them. Changing it makes the
    /// links and return addresses of messages already sent unverifiable (their bounces
    /// and complaints are then kept unmatched). Env: `SENDMILL_TRACKING_SECRET`.
    pub secret: String,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8081".into(),
            secret: String::new(),
        }
    }
}

impl TrackingConfig {
    pub fn apply_env(&mut self) {
        override_string(&mut self.base_url, "TRACKING_BASE_URL");
        override_string(&mut self.secret, "TRACKING_SECRET");
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.secret.is_empty() && self.secret.len() < 32 {
            return Err(ConfigError::Invalid(
                "tracking.secret must be at least 32 characters".into(),
            ));
        }
        if !(self.base_url.starts_with("https://") || self.base_url.starts_with("http://")) {
            return Err(ConfigError::Invalid(
                "tracking.base_url must be an http(s) URL".into(),
            ));
        }
        Ok(())
    }
}
