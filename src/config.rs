//! `sendmill.toml`: one file, one section per part. Unknown keys are errors; every field
//! is documented where it is declared; `SENDMILL_*` environment variables override only
//! endpoints and secrets.

use sendmill_platform::config::{
    self, ClickHouseConfig, ConfigError, KafkaConfig, PostgresConfig, RedisConfig, SecretsConfig,
    TelemetryConfig, TrackingConfig,
};
use sendmill_tenancy::suppressions::SuppressionsConfig;
use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendmillConfig {
    /// Kafka brokers, topic prefix, client settings.
    pub kafka: KafkaConfig,
    /// Redis: dedupe barrier, rate limits, caches.
    pub redis: RedisConfig,
    /// PostgreSQL: tenants, keys, domains.
    pub postgres: PostgresConfig,
    /// Key-encryption keys for DKIM private keys and webhook secrets at rest.
    pub secrets: SecretsConfig,
    /// ClickHouse: events.
    pub clickhouse: ClickHouseConfig,
    /// Logs and metrics.
    pub telemetry: TelemetryConfig,
    /// Tracking and unsubscribe links.
    pub tracking: TrackingConfig,
    /// The send path's copy of the suppression lists (one per process).
    pub suppressions: SuppressionsConfig,
    /// The send API.
    pub ingest: sendmill_ingest::Config,
    /// Templates, MIME, DKIM.
    pub render: sendmill_render::Config,
    /// SMTP delivery and retries.
    pub dispatcher: sendmill_dispatcher::Config,
    /// Event store and its API.
    pub analytics: sendmill_analytics::Config,
    /// The inbound SMTP server for returned mail (bounces, complaints, unsubscribes).
    pub inbound: sendmill_inbound::Config,
    /// The campaign sender (the campaign API is served by analytics and reads the test
    /// send's limits here).
    pub campaigns: sendmill_campaigns::Config,
    /// Deprecated settings found while loading, to be logged once logging is set up.
    #[serde(skip)]
    pub deprecations: Vec<String>,
}

impl SendmillConfig {
    /// Reads `path` (defaults for everything when `None`), applies env overrides and
    /// validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config: SendmillConfig = match path {
            Some(path) => {
                let loaded = config::load_file(path)?;
                let mut config: SendmillConfig = loaded.config;
                config.deprecations = loaded.deprecations;
                config
            }
            None => SendmillConfig::default(),
        };
        config.apply_env();
        config.upgrade();
        config.validate()?;
        Ok(config)
    }

    /// Moves deprecated settings to their new home, noting each in `deprecations`.
    fn upgrade(&mut self) {
        if let Some(cache) = self.ingest.suppression_cache.take() {
            self.suppressions.cache = cache;
            self.deprecations.push(
                "ingest.suppression_cache is deprecated: use [suppressions] cache".to_owned(),
            );
        }
    }

    pub fn apply_env(&mut self) {
        self.kafka.apply_env();
        self.telemetry.apply_env();
        self.redis.apply_env();
        self.postgres.apply_env();
        self.clickhouse.apply_env();
        self.tracking.apply_env();
        self.ingest.apply_env();
        self.render.apply_env();
        self.dispatcher.apply_env();
        self.analytics.apply_env();
        self.inbound.apply_env();
    }

    /// What serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.telemetry.validate()?;
        self.tracking.validate()?;
        self.dispatcher
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for (name, addr) in [
            ("ingest.listen", &self.ingest.listen),
            ("analytics.listen", &self.analytics.listen),
            ("render.ops_listen", &self.render.ops_listen),
            ("dispatcher.ops_listen", &self.dispatcher.ops_listen),
            ("inbound.ops_listen", &self.inbound.ops_listen),
            ("campaigns.ops_listen", &self.campaigns.ops_listen),
        ] {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|_| ConfigError::Invalid(format!("{name}: {addr:?} is not ip:port")))?;
        }
        self.kafka.validate()?;
        let held_hours = self.ingest.max_schedule_ahead.as_secs().div_ceil(3600);
        if u64::from(self.kafka.blobs_retention_hours)
            < u64::from(self.kafka.queue_retention_hours) + held_hours
        {
            return Err(ConfigError::Invalid(format!(
                "kafka.blobs_retention_hours must be at least queue_retention_hours plus \
                 ingest.max_schedule_ahead ({held_hours} h): a held message must find its parts"
            )));
        }
        self.keyring()?;
        self.inbound
            .check(&self.tracking.secret)
            .map_err(ConfigError::Invalid)?;
        self.ingest
            .submission
            .check()
            .map_err(ConfigError::Invalid)?;
        // A raw message travels base64-encoded (4/3) in JSON: a returned one in its
        // inbound record, a submitted one in its requested record. A requested record
        // carries its attachments the same way, and the ready record the MIME built from
        // them (base64 again): both must fit.
        let kafka_max = self.kafka.max_message_bytes as usize;
        for (setting, bytes, overhead) in [
            (
                "inbound.max_message_bytes",
                self.inbound.max_message_bytes,
                64 * 1024,
            ),
            (
                "ingest.submission.max_message_bytes",
                self.ingest.submission.max_message_bytes,
                64 * 1024,
            ),
            (
                "ingest.max_attachment_bytes",
                self.ingest.max_attachment_bytes,
                1024 * 1024,
            ),
        ] {
            let needed = bytes / 3 * 4 + overhead;
            if needed > kafka_max {
                return Err(ConfigError::Invalid(format!(
                    "kafka.max_message_bytes ({kafka_max}) cannot hold a message at \
                     {setting} ({bytes}): it needs at least {needed}"
                )));
            }
        }
        Ok(())
    }
}

impl SendmillConfig {
    /// The keyring `[secrets]` and `SENDMILL_KEKS` give, if any. Errors: an unreadable
    /// file or a malformed entry (naming the entry, never a key).
    pub fn keyring(
        &self,
    ) -> Result<Option<std::sync::Arc<sendmill_store::secrets::Keyring>>, ConfigError> {
        let Some(text) = self.secrets.keyring_text()? else {
            return Ok(None);
        };
        sendmill_store::secrets::Keyring::parse(&text)
            .map(|ring| Some(std::sync::Arc::new(ring)))
            .map_err(|e| ConfigError::Invalid(format!("secrets: {e}")))
    }
}

/// What stands in for a secret in printed settings.
const REDACTED: &str = "<redacted>";

impl SendmillConfig {
    /// The settings with every secret replaced, for printing (`validate-config`): the
    /// tracking and dashboard secrets, the ClickHouse password, Kafka client settings
    /// named like a password or secret, and passwords inside connection URLs.
    pub fn redacted(&self) -> SendmillConfig {
        let mut c = self.clone();
        for secret in [
            &mut c.tracking.secret,
            &mut c.analytics.dashboard_secret,
            &mut c.clickhouse.password,
        ] {
            if !secret.is_empty() {
                *secret = REDACTED.to_owned();
            }
        }
        for (key, value) in c.kafka.client.iter_mut() {
            if key.contains("password") || key.contains("secret") {
                *value = REDACTED.to_owned();
            }
        }
        for url in [&mut c.postgres.url, &mut c.redis.url, &mut c.clickhouse.url] {
            *url = without_password(url);
        }
        c
    }
}

/// `scheme://user:password@host/…` with the password replaced.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:{REDACTED}@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_settings_carry_no_secret() {
        let mut config = SendmillConfig::default();
        config.tracking.secret = "tracking-secret-of-thirty-two-bytes!!".into();
        config.analytics.dashboard_secret = "dashboard-secret".into();
        config.clickhouse.password = "ch-password".into();
        config.postgres.url = "postgres://sendmill:pg-password@db.internal:5432/sendmill".into();
        config.redis.url = "redis://:redis-password@cache.internal:6379/0".into();
        config
            .kafka
            .client
            .insert("sasl.password".into(), "kafka-password".into());
        let printed = format!("{:#?}", config.redacted());
        for secret in [
            "tracking-secret",
            "dashboard-secret",
            "ch-password",
            "pg-password",
            "redis-password",
            "kafka-password",
        ] {
            assert!(!printed.contains(secret), "{secret} printed");
        }
        assert!(printed.contains("postgres://sendmill:<redacted>@db.internal:5432/sendmill"));
        assert_eq!(
            without_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(without_password("http://u@h/x"), "http://u@h/x");
    }

    /// Every example config shipped under deploy/ parses and validates.
    #[test]
    fn every_example_config_in_deploy_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let mut found = Vec::new();
        let mut dirs = vec![root];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "toml") {
                    let loaded = config::load_file::<SendmillConfig>(&path)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    assert!(
                        loaded.deprecations.is_empty(),
                        "{}: {:?}",
                        path.display(),
                        loaded.deprecations
                    );
                    let mut parsed = loaded.config;
                    // Every deployment gives the tracking secret as a variable (the
                    // Secret `sendmill`, compose's sendmill.env), never in the file; the
                    // inbound stage needs it.
                    if parsed.tracking.secret.is_empty() {
                        parsed.tracking.secret = "a-secret-from-the-environment-32-bytes".into();
                    }
                    parsed
                        .validate()
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    found.push(path);
                }
            }
        }
        assert!(
            found.len() >= 2,
            "expected example configs, found {found:?}"
        );
    }

    #[test]
    fn a_record_version_this_build_does_not_write_is_refused_naming_the_key() {
        type Set = fn(&mut SendmillConfig, u8);
        let keys: [(&str, Set, u8); 2] = [
            ("kafka.ready_version", |c, v| c.kafka.ready_version = v, 2),
            (
                "kafka.requested_version",
                |c, v| c.kafka.requested_version = v,
                3,
            ),
        ];
        for (key, set, newest) in keys {
            for version in 0..=newest + 1 {
                let ok = (1..=newest).contains(&version);
                let mut config = SendmillConfig::default();
                set(&mut config, version);
                match config.validate() {
                    Ok(()) => assert!(ok, "{key} {version} accepted"),
                    Err(e) => {
                        assert!(!ok, "{key} {version} refused: {e}");
                        assert!(e.to_string().contains(key), "{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn blobs_retention_shorter_than_the_queues_plus_the_furthest_send_at_is_refused() {
        let mut config = SendmillConfig::default();
        assert!(config.validate().is_ok());
        // 7 days of queue and 72 h of send_at: 240 h at least.
        config.kafka.blobs_retention_hours = 239;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("kafka.blobs_retention_hours"), "{err}");
        config.kafka.blobs_retention_hours = 240;
        assert!(config.validate().is_ok());
        config.ingest.max_schedule_ahead = std::time::Duration::from_secs(96 * 3600);
        assert!(config.validate().is_err(), "a further send_at needs longer");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = config::parse::<SendmillConfig>("[dispatcher]\nsmtp_prot = 25\n", "test")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("smtp_prot"), "{err}");
        let err = config::parse::<SendmillConfig>("[kafak]\n", "test")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("kafak"), "{err}");
    }

    #[test]
    fn the_old_suppression_cache_setting_still_counts_with_a_warning() {
        let dir = std::env::temp_dir().join(format!("sendmill-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("old.toml");
        std::fs::write(&path, "[ingest]\nsuppression_cache_secs = 120\n").unwrap();
        let loaded = SendmillConfig::load(Some(&path)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            loaded.suppressions.cache,
            std::time::Duration::from_secs(120)
        );
        assert_eq!(loaded.ingest.suppression_cache, None);
        assert_eq!(loaded.deprecations.len(), 2, "{:?}", loaded.deprecations);
        assert!(loaded.deprecations[0].contains("ingest.suppression_cache = \"120s\""));
        assert!(loaded.deprecations[1].contains("[suppressions] cache"));
    }

    #[test]
    fn invalid_addresses_fail_validation() {
        let mut c = SendmillConfig::default();
        c.dispatcher.nameservers = vec!["not-an-address".into()];
        assert!(c.validate().is_err());
        let mut c = SendmillConfig::default();
        c.ingest.listen = "8080".into();
        assert!(c.validate().is_err());
    }
}
