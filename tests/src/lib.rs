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

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use sendmill::{pipeline, SendmillConfig, Stage};
use sendmill_platform::{
    kafka::{admin, KafkaConnection},
    CancellationToken,
};
use sendmill_store::{Scope, Store};
use sendmill_wire::{AccountId, Topics};
use serde_json::Value;
use std::{
    future::Future,
    net::SocketAddr,
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
    config.analytics.listen = "127.0.0.1:0".into();
    config.analytics.batch_wait = std::time::Duration::from_millis(100);
    config.dispatcher.nameservers = vec!["127.0.0.1:5353".into()];
    config.dispatcher.helo_name = "sendmill.test".into();
    config.dispatcher.connect_timeout = std::time::Duration::from_secs(5);
    config.dispatcher.command_timeout = std::time::Duration::from_secs(10);
    config.dispatcher.data_timeout = std::time::Duration::from_secs(20);
    config.dispatcher.ops_listen = "127.0.0.1:0".into();
    config.render.ops_listen = "127.0.0.1:0".into();
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

/// A whole Sendmill in this process, with a tenant that may send from its own domain.
pub struct TestPipeline {
    pub stages: Vec<Stage>,
    pub config: SendmillConfig,
    pub ingest: SocketAddr,
    pub analytics: Option<SocketAddr>,
    pub api_key: String,
    pub account: AccountId,
    /// The tenant's sending domain (a subdomain of example.test, unique to the test).
    pub domain: String,
    /// `(name, value)` of the domain's DKIM TXT record.
    pub dkim_record: (String, String),
    pub topics: Topics,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    running: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl TestPipeline {
    /// Every stage.
    pub async fn start() -> Self {
        Self::start_stages(&Stage::ALL).await
    }

    pub async fn start_stages(stages: &[Stage]) -> Self {
        Self::start_configured(stages, |_| {}).await
    }

    /// `stages` with the test config changed by `tweak` first.
    pub async fn start_configured(
        stages: &[Stage],
        tweak: impl FnOnce(&mut SendmillConfig),
    ) -> Self {
        // Without an exporter there is nothing to keep; a test that exports spans
        // installs its own subscriber first, and this call then changes nothing.
        drop(
            sendmill_platform::telemetry::init(
                &sendmill_platform::config::TelemetryConfig {
                    log_filter: "warn".into(),
                    ..Default::default()
                },
                "sendmill-test",
            )
            .expect("no exporter to build"),
        );
        let id = unique("t");
        let mut config = test_config(&id);
        tweak(&mut config);
        let store = require_postgres(&config).await;
        if stages.contains(&Stage::Analytics) {
            sendmill_analytics::schema::migrate(&config.clickhouse)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "ClickHouse is required at {} (run deploy/local/start-services.sh): {e}",
                        config.clickhouse.url
                    )
                });
        }
        require_redis(&config).await;
        require_kafka(&config).await;
        let topics = Topics::new(config.kafka.topic_prefix.clone());

        let (tenant, sending) = create_tenant(&store, &id).await;
        let Tenant {
            account,
            api_key,
            domain,
        } = tenant;

        let (shutdown, ingest, analytics, handle) = launch(&config, stages).await;
        TestPipeline {
            stages: stages.to_vec(),
            topics,
            ingest,
            analytics,
            api_key,
            account,
            dkim_record: sending.dkim_record(),
            domain,
            config,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            shutdown,
            running: Some(handle),
        }
    }

    /// Stops the stages and starts them again on the same broker, database and names,
    /// as a process restart would (the HTTP ports change).
    pub async fn restart(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("pipeline stops within 30 s")
                .expect("pipeline task does not panic")
                .expect("stages end cleanly");
        }
        let (shutdown, ingest, analytics, handle) = launch(&self.config, &self.stages).await;
        self.shutdown = shutdown;
        self.ingest = ingest;
        self.analytics = analytics;
        self.running = Some(handle);
    }

    /// A Redis connection to the installation's Redis.
    pub async fn redis(&self) -> redis::aio::ConnectionManager {
        sendmill_platform::clients::redis(&self.config.redis)
            .await
            .expect("Redis answers")
    }

    pub async fn store(&self) -> Store {
        require_postgres(&self.config).await
    }

    /// Another tenant in the same installation: its own account, domain and key.
    pub async fn tenant(&self, name: &str) -> Tenant {
        create_tenant(&self.store().await, &unique(name)).await.0
    }

    /// An operator tenant (its key has every scope, `admin` included).
    pub async fn operator(&self, name: &str) -> Tenant {
        let operator = self.tenant(name).await;
        self.store()
            .await
            .set_operator(operator.account, true)
            .await
            .unwrap();
        operator
    }

    /// A call to the ingest API with `key`: status, JSON body (Null when none) and headers.
    pub async fn call(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        call(
            &self.http,
            key,
            method,
            &format!("http://{}{path}", self.ingest),
            body,
        )
        .await
    }

    /// A call to the analytics API with `key`.
    pub async fn call_analytics(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
    ) -> (u16, Value) {
        let addr = self.analytics.expect("analytics runs");
        let (status, body, _) = call(
            &self.http,
            key,
            method,
            &format!("http://{addr}{path}"),
            None,
        )
        .await;
        (status, body)
    }

    /// `POST /v1/messages` with a JSON body; returns status and parsed body.
    pub async fn send(&self, body: &Value) -> (u16, Value) {
        self.send_raw(body.to_string(), "application/json").await
    }

    /// `POST /v1/messages` with another tenant's key.
    pub async fn send_as(&self, key: &str, body: &Value) -> (u16, Value) {
        let (status, body, _) = self
            .call(key, reqwest::Method::POST, "/v1/messages", Some(body))
            .await;
        (status, body)
    }

    pub async fn send_raw(&self, body: String, content_type: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("http://{}/v1/messages", self.ingest))
            .bearer_auth(&self.api_key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("ingest answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("response is not JSON ({status}): {text}"));
        (status, value)
    }

    /// `GET /v1/messages/{id}` on the analytics API.
    pub async fn timeline(&self, message_id: &str) -> (u16, Value) {
        let addr = self.analytics.expect("analytics runs");
        let response = self
            .http
            .get(format!("http://{addr}/v1/messages/{message_id}"))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .expect("analytics answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls the timeline until its status is `status`, for at most `limit`.
    pub async fn wait_for_status(&self, message_id: &str, status: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let (code, body) = self.timeline(message_id).await;
            if code == 200 && body["status"] == status {
                return body;
            }
            assert!(
                started.elapsed() < limit,
                "message {message_id} did not reach {status} within {limit:?}; last timeline ({code}): {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Event types of a message as ClickHouse holds them (deduplicated).
    pub async fn stored_event_types(&self, message_id: &str) -> Vec<String> {
        sendmill_platform::clients::clickhouse(&self.config.clickhouse)
            .query("SELECT event_type FROM events FINAL WHERE message_id = toUUID(?) ORDER BY occurred_at_ms")
            .bind(message_id)
            .fetch_all::<String>()
            .await
            .expect("ClickHouse answers")
    }

    /// Every record currently in `topic` (all partitions, from the start).
    /// The Prometheus text of this process (every stage's metrics), from ingest.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.ingest))
            .send()
            .await
            .expect("ingest answers /metrics")
            .text()
            .await
            .unwrap()
    }

    /// Every event on the events topic so far.
    pub fn events(&self) -> Vec<sendmill_wire::EventV1> {
        self.read_topic(&self.topics.events())
            .iter()
            .map(|b| sendmill_wire::decode(b).expect("events decode"))
            .collect()
    }

    pub fn read_topic(&self, topic: &str) -> Vec<Vec<u8>> {
        read_topic(
            &self.config.kafka.brokers,
            topic,
            self.config.kafka.partitions,
        )
    }

    /// Writes `payload` to `topic` as a stage would.
    pub async fn produce<T: sendmill_wire::WirePayload>(
        &self,
        topic: &str,
        key: &str,
        payload: &T,
    ) {
        self.producer()
            .send(topic, key, payload)
            .await
            .expect("the broker takes the record");
    }

    pub fn producer(&self) -> sendmill_platform::kafka::Producer {
        KafkaConnection::new(self.config.kafka.brokers.clone(), self.config.kafka.clone())
            .producer()
            .expect("producer")
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.running.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("pipeline stops within 30 s")
                .expect("pipeline task does not panic");
            result.expect("stages end cleanly");
        }
    }
}

impl Drop for TestPipeline {
    /// Stops the stages still running and deletes the installation's topics, so the
    /// shared broker does not gather thousands of partitions over test runs.
    fn drop(&mut self) {
        self.shutdown.cancel();
        delete_topics(&self.config);
    }
}

/// Another tenant of a test installation.
pub struct Tenant {
    pub account: AccountId,
    pub api_key: String,
    pub domain: String,
}

/// Account `name` with the sending domain `<name>.example.test` and an all-scopes key.
async fn create_tenant(store: &Store, name: &str) -> (Tenant, sendmill_store::SendingDomain) {
    let account = store.create_account(name).await.unwrap();
    let domain = format!("{name}.example.test");
    let sending = store
        .add_sending_domain(account, &domain, "s1")
        .await
        .unwrap();
    let api_key = store
        .create_api_key(account, "test", &Scope::ALL)
        .await
        .unwrap()
        .plaintext;
    let tenant = Tenant {
        account,
        api_key,
        domain,
    };
    (tenant, sending)
}

async fn launch(
    config: &SendmillConfig,
    stages: &[Stage],
) -> (
    CancellationToken,
    SocketAddr,
    Option<SocketAddr>,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let shutdown = CancellationToken::new();
    let running = pipeline::start(config, stages, shutdown.clone())
        .await
        .expect("pipeline starts");
    let ingest = running
        .ingest_addr
        .unwrap_or_else(|| "127.0.0.1:1".parse().unwrap());
    let analytics = running.analytics_addr;
    let handle = tokio::spawn(async move { running.wait().await.map_err(|e| format!("{e:#}")) });
    (shutdown, ingest, analytics, handle)
}

pub async fn call(
    http: &reqwest::Client,
    key: &str,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = http.request(method, url).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value, headers)
}

/// A message body that the tenant may send: `to` as given, everything else fixed.
pub fn message_to(pipeline: &TestPipeline, to: Value) -> Value {
    serde_json::json!({
        "from": format!("Sendmill Test <hello@{}>", pipeline.domain),
        "to": to,
        "subject": "Hello {{name}}",
        "html": "<h1>Hello {{name}}</h1><p>This is a test of Sendmill.</p>",
        "text": "Hello {{name}}\nThis is a test of Sendmill.",
        "tags": ["e2e"],
        "metadata": {"suite": "tests"}
    })
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

async fn require_postgres(config: &SendmillConfig) -> Store {
    let store = Store::connect(&config.postgres.url, config.postgres.max_connections)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required at {} (run deploy/local/start-services.sh): {e}",
                config.postgres.url
            )
        });
    store.migrate().await.expect("PostgreSQL migrations apply");
    store
}

async fn require_redis(config: &SendmillConfig) {
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

/// Every record in `topic` on the broker at `bootstrap`.
pub fn read_topic(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Vec<u8>> {
    read_topic_timed(bootstrap, topic, partitions)
        .into_iter()
        .map(|(_, payload)| payload)
        .collect()
}

/// Every record in `topic` with its Kafka timestamp (ms since the epoch).
pub fn read_topic_timed(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i64, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader consumer");
    let mut records = Vec::new();
    for partition in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        if high <= low {
            continue;
        }
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(low))
            .unwrap();
        consumer.assign(&list).unwrap();
        let mut next = low;
        let deadline = Instant::now() + Duration::from_secs(10);
        while next < high && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                next = message.offset() + 1;
                let at = message.timestamp().to_millis().unwrap_or_default();
                records.push((at, message.payload().unwrap_or_default().to_vec()));
            }
        }
        assert!(
            next >= high,
            "could not read {topic}[{partition}] to its end"
        );
    }
    records
}

/// A ready record built by hand, as render would write it: a minimal message whose
/// Message-ID is `<id@domain>`.
pub fn handmade_ready(
    p: &TestPipeline,
    recipient: &str,
    accepted_at: time::OffsetDateTime,
) -> sendmill_wire::ReadyV1 {
    let id = sendmill_wire::MessageId::generate();
    let message = format!(
        "From: hello@{domain}\r\nTo: {recipient}\r\nSubject: handmade\r\nMessage-ID: <{id}@{domain}>\r\n\r\nbody\r\n",
        domain = p.domain
    );
    sendmill_wire::ReadyV1 {
        message_id: id,
        account_id: p.account,
        lane: sendmill_wire::Lane::Transactional,
        accepted_at,
        envelope_from: format!("hello@{}", p.domain),
        recipient: recipient.into(),
        context: sendmill_wire::MessageContext::default(),
        attempts: 0,
        message: message.into_bytes(),
    }
}

/// Every smtp-sink dump (of the accepting sink) whose Message-ID is in `domain`, read
/// once: message id → the dumps' headers (`X-Client-Addr`, `X-Helo-Args`, …), one map
/// per dump.
pub fn dumps_for_domain(
    domain: &str,
) -> std::collections::HashMap<String, Vec<Vec<(String, String)>>> {
    let suffix = format!("@{domain}>");
    let mut found: std::collections::HashMap<String, Vec<Vec<(String, String)>>> =
        std::collections::HashMap::new();
    for path in sink_dump_files() {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let headers: Vec<(String, String)> = text
            .lines()
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        let id = headers.iter().find_map(|(k, v)| {
            (k.eq_ignore_ascii_case("Message-ID") && v.ends_with(&suffix))
                .then(|| v[1..v.len() - suffix.len()].to_owned())
        });
        if let Some(id) = id {
            found.entry(id).or_default().push(headers);
        }
    }
    found
}

/// Every file the accepting smtp-sink has dumped (all tests' messages).
pub fn sink_dump_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![local_dir().join("sinks/ok")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files
}

/// The smtp-sink dump of the message whose Message-ID holds `message_id`.
pub fn dumped_message(message_id: &str) -> Option<PathBuf> {
    dumped_messages(message_id).into_iter().next()
}

/// Every smtp-sink dump holding `message_id`.
pub fn dumped_messages(message_id: &str) -> Vec<PathBuf> {
    let needle = format!("Message-ID: <{message_id}@");
    sink_dump_files()
        .into_iter()
        .filter(|path| std::fs::read_to_string(path).is_ok_and(|t| t.contains(&needle)))
        .collect()
}

/// Python's `email` (policy.strict) view of `message`: decoded parts and the headers asked
/// for (see deploy/local/mime-check.py).
pub fn mime_check(message: &Path, headers: &[&str]) -> Value {
    let output = std::process::Command::new("/usr/bin/python3")
        .arg(repo_root().join("deploy/local/mime-check.py"))
        .arg(message)
        .args(headers)
        .output()
        .expect("python3 is required");
    let parsed: Value = serde_json::from_slice(&output.stdout).expect("mime-check prints JSON");
    assert!(
        output.status.success(),
        "{} does not parse strictly: {parsed}",
        message.display()
    );
    parsed
}

/// The decoded `text/html` part of `message`, as Python's `email` reads it.
pub fn html_part(message: &Path) -> String {
    mime_check(message, &[])["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .find(|part| part["type"] == "text/html")
        .and_then(|part| part["text"].as_str())
        .expect("an HTML part")
        .to_owned()
}

/// The id of the first message in a 202 answer.
/// Every message id of a send answer (`messages[].message_id`), in order.
pub fn message_ids(response: &Value) -> Vec<String> {
    response["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["message_id"].as_str().expect("a message id").to_owned())
        .collect()
}

pub fn first_message_id(response: &Value) -> String {
    response["messages"][0]["message_id"]
        .as_str()
        .expect("a message id")
        .to_owned()
}

/// Runs dkimpy (Debian's python3-dkim) on `message` with the given key record.
pub fn dkim_verifies(message: &Path, record: &(String, String)) -> bool {
    let output = std::process::Command::new("/usr/bin/python3")
        .arg(repo_root().join("deploy/local/dkim-verify.py"))
        .arg(message)
        .arg("--txt")
        .arg(format!("{}={}", record.0, record.1))
        .output()
        .expect("dkimpy is required: run deploy/local/install-packages.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() || stdout.contains("FAIL"),
        "dkim-verify.py could not run: {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    output.status.success()
}

/// A `sendmill <stage>` process of the test's installation (same broker, topics, Redis
/// prefix, databases), for tests that kill a stage with SIGKILL or run several.
pub struct StageProcess {
    child: std::process::Child,
}

impl StageProcess {
    /// Starts `sendmill <subcommand>` with the installation's shared sections and
    /// `sections` (TOML) for the stage.
    pub fn start(
        p: &TestPipeline,
        config: &SendmillConfig,
        subcommand: &str,
        name: &str,
        sections: &str,
    ) -> Self {
        let binary = sendmill_binary();
        let path = std::env::temp_dir().join(format!("{}{name}.toml", p.config.kafka.topic_prefix));
        let toml = format!(
            "[kafka]\ntopic_prefix = {prefix:?}\npartitions = {partitions}\nreplication_factor = {rf}\n\
             min_insync_replicas = {isr}\n[redis]\nurl = {redis_url:?}\nkey_prefix = {redis:?}\n\
             [postgres]\nurl = {pg:?}\n[clickhouse]\nurl = {ch_url:?}\ndatabase = {ch:?}\n{sections}\n",
            prefix = config.kafka.topic_prefix,
            partitions = config.kafka.partitions,
            rf = config.kafka.replication_factor,
            isr = config.kafka.min_insync_replicas,
            redis_url = config.redis.url,
            redis = config.redis.key_prefix,
            pg = config.postgres.url,
            ch_url = config.clickhouse.url,
            ch = config.clickhouse.database,
        );
        std::fs::write(&path, toml).unwrap();
        let child = std::process::Command::new(&binary)
            .args(["--config", path.to_str().unwrap(), subcommand])
            .env("SENDMILL_KAFKA_BROKERS", &config.kafka.brokers)
            // Static group membership under the process's name: a process restarted
            // under the same name (the fault suite's) takes its partitions back at once.
            .env("SENDMILL_KAFKA_INSTANCE_ID", name)
            // SENDMILL_TEST_CHILD_LOG: a tracing filter for these processes when debugging.
            .env(
                "RUST_LOG",
                std::env::var("SENDMILL_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self { child }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A redis-server of the test's own on a free port, keeping nothing on disk, so a
/// test can kill it and start it again empty.
pub struct RedisProcess {
    child: std::process::Child,
    pub port: u16,
}

impl RedisProcess {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is required: run deploy/local/install-packages.sh");
        wait_for_port("127.0.0.1", port, "redis-server");
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then a new, empty server on the same port.
    pub fn restart_empty(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        *self = Self::start_on(self.port);
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A clickhouse-server of the test's own (Debian's config with its own ports and
/// folder), so a test can stop it and start it again on the same data.
pub struct ClickHouseProcess {
    child: Option<std::process::Child>,
    dir: PathBuf,
    pub http_port: u16,
}

impl ClickHouseProcess {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("clickhouse"));
        for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let (http_port, tcp_port, interserver_port) = (free_port(), free_port(), free_port());
        let config = std::fs::read_to_string("/etc/clickhouse-server/config.xml")
            .expect("clickhouse-server is required: run deploy/local/install-packages.sh");
        let d = dir.display();
        let config = config
            .replace(
                "<http_port>8123</http_port>",
                &format!("<http_port>{http_port}</http_port>"),
            )
            .replace(
                "<tcp_port>9000</tcp_port>",
                &format!("<tcp_port>{tcp_port}</tcp_port>"),
            )
            .replace(
                "<interserver_http_port>9009</interserver_http_port>",
                &format!("<interserver_http_port>{interserver_port}</interserver_http_port>"),
            )
            .replace("/var/lib/clickhouse/tmp/", &format!("{d}/tmp/"))
            .replace(
                "/var/lib/clickhouse/user_files/",
                &format!("{d}/user_files/"),
            )
            .replace(
                "/var/lib/clickhouse/format_schemas/",
                &format!("{d}/format_schemas/"),
            )
            .replace("/var/lib/clickhouse/", &format!("{d}/data/"))
            .replace("/var/log/clickhouse-server/", &format!("{d}/log/"))
            .replace("<listen_host>::1</listen_host>", "");
        std::fs::write(dir.join("config.xml"), config).unwrap();
        std::fs::copy("/etc/clickhouse-server/users.xml", dir.join("users.xml")).unwrap();
        let mut server = Self {
            child: None,
            dir,
            http_port,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// SIGKILL: the server is gone until [`ClickHouseProcess::resume`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts the server on its data and waits for it to answer.
    pub fn resume(&mut self) {
        let child = std::process::Command::new("clickhouse-server")
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("clickhouse-server is required: run deploy/local/install-packages.sh");
        self.child = Some(child);
        wait_for_port("127.0.0.1", self.http_port, "clickhouse-server");
    }
}

impl Drop for ClickHouseProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Apache Kafka nodes of the test's own (KRaft, each a combined broker and controller,
/// started by `deploy/local/kafka-node.sh` on the jars `install-packages.sh` fetched), so
/// a test can SIGKILL a broker and start it again on its data. One node, or a cluster of
/// several on their own loopback addresses.
pub struct KafkaCluster {
    dir: PathBuf,
    nodes: Vec<KafkaNode>,
}

struct KafkaNode {
    id: usize,
    host: String,
    port: u16,
    controller_port: u16,
    pid: Option<u32>,
}

impl KafkaCluster {
    /// One node per host in `hosts` (e.g. `["127.0.0.31", "127.0.0.32", "127.0.0.33"]`),
    /// every one a voter of the controller quorum; returns once all serve.
    pub fn start(hosts: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique("kafka"));
        let nodes = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| KafkaNode {
                id: i + 1,
                host: host.to_string(),
                port: free_port(),
                controller_port: free_port(),
                pid: None,
            })
            .collect();
        let mut cluster = Self { dir, nodes };
        let cluster_id = uuid::Uuid::new_v4().simple().to_string()[..22].to_owned();
        // A quorum of several needs its voters up together: start them side by side.
        let ids: Vec<usize> = (0..cluster.nodes.len()).collect();
        let pids: Vec<u32> = std::thread::scope(|scope| {
            let handles: Vec<_> = ids
                .iter()
                .map(|&i| {
                    let command = cluster.command(i, &cluster_id);
                    scope.spawn(move || run_kafka_node(command))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (node, pid) in cluster.nodes.iter_mut().zip(pids) {
            node.pid = Some(pid);
        }
        cluster
    }

    /// Bootstrap servers of every node.
    pub fn brokers(&self) -> String {
        let list: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}:{}", n.host, n.port))
            .collect();
        list.join(",")
    }

    /// SIGKILL node `i` (0-based): no shutdown path runs, the page cache keeps what it
    /// wrote.
    pub fn kill(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].pid.take() {
            kill_pid(pid);
        }
    }

    /// Starts node `i` again on its data and waits for it to serve.
    pub fn restart(&mut self, i: usize) {
        let command = self.command(i, "unused: the node has its cluster id");
        self.nodes[i].pid = Some(run_kafka_node(command));
    }

    fn command(&self, i: usize, cluster_id: &str) -> std::process::Command {
        let voters: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}@{}:{}", n.id, n.host, n.controller_port))
            .collect();
        let n = &self.nodes[i];
        let mut command =
            std::process::Command::new(repo_root().join("deploy/local/kafka-node.sh"));
        command
            .arg(self.dir.join(format!("node{}", n.id)))
            .args([n.id.to_string(), n.host.clone(), n.port.to_string()])
            .args([n.controller_port.to_string(), voters.join(",")])
            .env("KAFKA_CLUSTER_ID", cluster_id)
            .env("KAFKA_HEAP", "-Xms128m -Xmx384m")
            .env("SENDMILL_LOCAL_DIR", local_dir());
        command
    }
}

fn run_kafka_node(mut command: std::process::Command) -> u32 {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bash runs deploy/local/kafka-node.sh");
    assert!(
        output.status.success(),
        "a Kafka node did not start (is Kafka installed? run deploy/local/install-packages.sh): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("kafka-node.sh prints the pid")
}

fn kill_pid(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    // Gone once /proc no longer has it (it is not our child: nothing to reap).
    let started = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits up to 30 s for something to accept connections on `host`:`port`.
pub fn wait_for_port(host: &str, port: u16, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect((host, port)).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{what} did not listen on {host}:{port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The `sendmill` binary next to the running test binary.
pub fn sendmill_binary() -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/sendmill
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("sendmill");
    assert!(
        path.exists(),
        "{} is missing: `cargo test --workspace` builds it (or `cargo build --bin sendmill`)",
        path.display()
    );
    path
}

/// A loopback port nothing listens on right now (for a process that must be told its
/// port before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
