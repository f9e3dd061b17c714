//! # sendmill-tests
//!
//! A harness for tests that cross stage boundaries, against the real services that
//! `deploy/local/start-services.sh` runs: PostgreSQL, Redis, ClickHouse, dnsmasq with
//! the `*.test` MX records, smtp-sink MX hosts, dkimpy, and Apache Kafka (the local
//! broker, `SENDMILL_TEST_KAFKA_BROKERS`, default 127.0.0.1:9092). A service that is
//! missing fails the test with a message saying how to start it; nothing is skipped.
//!
//! Every [`TestPipeline`] has its own topic prefix (its topics created as `sendmill
//! migrate` creates them, and deleted when it is dropped), consumer groups, ClickHouse
//! database, Redis key prefix, account and ports, so tests run in parallel and re-run
//! cleanly.
#![allow(
    clippy::print_stdout,
    reason = "tests report the figures they measured"
)]

mod inspect;
mod processes;
mod smtp;
mod test_pipeline;

pub use inspect::*;
pub use processes::*;
pub use smtp::*;
pub use test_pipeline::*;

use sendmill::SendmillConfig;
use sendmill_platform::kafka::{admin, KafkaConnection};
use sendmill_store::Store;
use std::{
    future::Future,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub fn local_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("SENDMILL_LOCAL_DIR").unwrap_or_else(|_| "/var/tmp/sendmill-local".into()),
    )
}

/// The Kafka cluster tests run on: `SENDMILL_TEST_KAFKA_BROKERS`, else the local broker
/// `deploy/local/start-services.sh` starts.
pub fn kafka_brokers() -> String {
    std::env::var("SENDMILL_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Creates the installation's topics as `sendmill migrate` does; fails the test, saying
/// how to start Kafka, when the broker does not answer.
pub async fn require_kafka(config: &SendmillConfig) {
    let kafka = KafkaConnection::new(config.kafka.brokers.clone(), config.kafka.clone());
    admin::reconcile(&kafka, &admin::plan(&kafka))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Apache Kafka is required at {} (run deploy/local/start-services.sh): {e}",
                config.kafka.brokers
            )
        });
}

/// Deletes the installation's topics (from `Drop`, so on a blocking thread of its own).
fn delete_topics(config: &SendmillConfig) {
    let kafka = KafkaConnection::new(config.kafka.brokers.clone(), config.kafka.clone());
    let topics = kafka.topics.all();
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        if let Err(error) = runtime.block_on(admin::delete_topics(&kafka, &topics)) {
            eprintln!("could not delete the test's topics: {error}");
        }
    })
    .join();
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// The base URL written into tracking and unsubscribe links in tests.
pub const TRACKING_BASE: &str = "http://tracking.invalid";

/// The config every test pipeline starts from: local services, port 0, own names.
pub fn test_config(id: &str) -> SendmillConfig {
    let mut config = SendmillConfig::default();
    config.postgres.url = std::env::var("SENDMILL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://sendmill:sendmill@127.0.0.1:5432/sendmill_test".into());
    config.postgres.max_connections = 4;
    // DKIM keys and webhook secrets are sealed at rest in every test.
    config.secrets.kek_file = test_kek_file();
    config.kafka.brokers = kafka_brokers();
    config.kafka.topic_prefix = format!("{id}.");
    config.kafka.partitions = 2;
    // One local broker.
    config.kafka.replication_factor = 1;
    config.kafka.min_insync_replicas = 1;
    config.redis.key_prefix = format!("{id}:");
    config.clickhouse.database = id.to_owned();
    config.ingest.listen = "127.0.0.1:0".into();
    // The tests' sending domains have no DNS to verify; the verification test turns this
    // off for itself.
    config.ingest.allow_unverified_domains = true;
    config.ingest.release_interval = std::time::Duration::from_millis(100);
    // No balancer fronts a test's ingest, and a test that stops a pipeline should not
    // wait for records held behind a rate limit: the drain test sets its own.
    config.ingest.drain_delay = std::time::Duration::ZERO;
    config.kafka.drain_grace = std::time::Duration::from_secs(2);
    config.analytics.listen = "127.0.0.1:0".into();
    config.analytics.batch_wait = std::time::Duration::from_millis(100);
    config.dispatcher.nameservers = vec!["127.0.0.1:5353".into()];
    config.dispatcher.helo_name = "sendmill.test".into();
    config.dispatcher.connect_timeout = std::time::Duration::from_secs(5);
    config.dispatcher.command_timeout = std::time::Duration::from_secs(10);
    config.dispatcher.data_timeout = std::time::Duration::from_secs(20);
    config.dispatcher.ops_listen = "127.0.0.1:0".into();
    config.render.ops_listen = "127.0.0.1:0".into();
    config.campaigns.ops_listen = "127.0.0.1:0".into();
    config.campaigns.poll = std::time::Duration::from_millis(100);
    config.dispatcher.journal_dir = std::env::temp_dir()
        .join(format!("sendmill-journal-{id}"))
        .to_string_lossy()
        .into_owned();
    // Links point at a host that does not exist; tests call the analytics address.
    config.tracking.base_url = TRACKING_BASE.into();
    config.tracking.secret = "test-only-link-secret-of-at-least-32-bytes".into();
    // Test receivers listen on loopback and must not wait minutes between retries.
    config.analytics.webhooks.allow_private_destinations = true;
    config.analytics.webhooks.backoff_initial = std::time::Duration::from_millis(200);
    config.analytics.webhooks.backoff_max = std::time::Duration::from_secs(1);
    config.analytics.webhooks.poll = std::time::Duration::from_millis(100);
    // Tests that exercise the reputation monitor lower this; others send too few
    // messages for their bounce rates to mean anything.
    config.analytics.reputation.min_volume = 1_000_000;
    config
}

pub async fn poll_until<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn require_postgres(config: &SendmillConfig) -> Store {
    let store = Store::connect(&config.postgres.url, config.postgres.max_connections)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required at {} (run deploy/local/start-services.sh): {e}",
                config.postgres.url
            )
        });
    store.migrate().await.expect("PostgreSQL migrations apply");
    store.with_keyring(config.keyring().expect("the test keyring parses"))
}

/// The tests' keyring file: one fixed KEK (tests share `sendmill_test`, so every test
/// seals with the same key; the store's own tests use databases of their own).
fn test_kek_file() -> String {
    const TEST_KEYRING: &str = "test-1:c2VuZG1pbGwtdGVzdC1rZWstMzItYnl0ZXMtbG9uZyE=\n";
    let path = std::env::temp_dir().join("sendmill-test-keks");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(TEST_KEYRING) {
        // Written whole under another name first: parallel tests never read half a file.
        let partial = path.with_extension(format!("{}", std::process::id()));
        std::fs::write(&partial, TEST_KEYRING).expect("the temp dir is writable");
        std::fs::rename(&partial, &path).expect("the temp dir is writable");
    }
    path.to_string_lossy().into_owned()
}

pub(crate) async fn require_redis(config: &SendmillConfig) {
    let mut redis = sendmill_platform::clients::redis(&config.redis)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis is required at {} (run deploy/local/start-services.sh): {e}",
                config.redis.url
            )
        });
    let pong: String = redis::cmd("PING").query_async(&mut redis).await.unwrap();
    assert_eq!(pong, "PONG");
}
