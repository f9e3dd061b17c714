//! [`TestPipeline`]: a whole Sendmill in the test's process, with its own names, and
//! the tenants and calls tests make on it.

#![allow(
    clippy::print_stdout,
    reason = "tests report the figures they measured"
)]

use crate::*;
use sendmill::{pipeline, SendmillConfig, Stage};
use sendmill_platform::{kafka::KafkaConnection, CancellationToken};
use sendmill_store::{Scope, Store};
use sendmill_wire::{AccountId, Topics};
use serde_json::Value;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

/// A whole Sendmill in this process, with a tenant that may send from its own domain.
pub struct TestPipeline {
    pub stages: Vec<Stage>,
    pub config: SendmillConfig,
    pub ingest: SocketAddr,
    pub analytics: Option<SocketAddr>,
    /// SMTP submission with STARTTLS, when the test configured it.
    pub submission: Option<SocketAddr>,
    /// SMTP submission with implicit TLS, when the test configured it.
    pub submission_tls: Option<SocketAddr>,
    /// The inbound SMTP server, when the test configured it.
    pub inbound: Option<SocketAddr>,
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

        let (shutdown, addrs, handle) = launch(&config, stages).await;
        TestPipeline {
            ingest: addrs.ingest,
            analytics: addrs.analytics,
            submission: addrs.submission,
            submission_tls: addrs.submission_tls,
            inbound: addrs.inbound,
            stages: stages.to_vec(),
            topics,
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
        let (shutdown, addrs, handle) = launch(&self.config, &self.stages).await;
        self.shutdown = shutdown;
        self.ingest = addrs.ingest;
        self.analytics = addrs.analytics;
        self.submission = addrs.submission;
        self.submission_tls = addrs.submission_tls;
        self.inbound = addrs.inbound;
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
        .create_api_key(account, "test", &Scope::ALL, false)
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

/// Where a launched pipeline listens.
struct Addresses {
    ingest: SocketAddr,
    analytics: Option<SocketAddr>,
    submission: Option<SocketAddr>,
    submission_tls: Option<SocketAddr>,
    inbound: Option<SocketAddr>,
}

async fn launch(
    config: &SendmillConfig,
    stages: &[Stage],
) -> (
    CancellationToken,
    Addresses,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let shutdown = CancellationToken::new();
    let running = pipeline::start(config, stages, shutdown.clone())
        .await
        .expect("pipeline starts");
    let ingest = running
        .ingest_addr
        .unwrap_or_else(|| "127.0.0.1:1".parse().unwrap());
    let addrs = Addresses {
        ingest,
        analytics: running.analytics_addr,
        submission: running.submission_addr,
        submission_tls: running.submission_tls_addr,
        inbound: running.inbound_addr,
    };
    let handle = tokio::spawn(async move { running.wait().await.map_err(|e| format!("{e:#}")) });
    (shutdown, addrs, handle)
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

/// Sets `body`'s attachments to one file, `filename`, of `content` (base64, as the send
/// API takes it; `application/octet-stream`).
pub fn attach(body: &mut Value, filename: &str, content: &[u8]) {
    use base64::{engine::general_purpose::STANDARD, Engine};
    body["attachments"] = serde_json::json!([{
        "filename": filename,
        "content_type": "application/octet-stream",
        "content": STANDARD.encode(content)
    }]);
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
