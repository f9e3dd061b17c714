//! Customer webhooks: every event an account's endpoints ask for is pushed to them,
//! signed by the Standard Webhooks scheme, batched, and retried until delivered or until
//! the retry window ends (then it waits in the dead-letter queue for a replay).
//!
//! Two halves, joined by the PostgreSQL outbox (`webhook_deliveries`):
//! - [`run_fanout`] consumes the events topic and writes each event once per endpoint
//!   that wants it; the Kafka offset is stored only after that insert commits.
//! - [`run_sender`] leases endpoints with pending events (several analytics processes
//!   share the work, one sender per endpoint at a time), sends the oldest events first
//!   and records every attempt. A failure backs the endpoint off exponentially; after
//!   [`BREAKER_THRESHOLD`] failures in a row its circuit is open, and when the wait ends
//!   one event goes as a probe before whole batches resume.
//!
//! Sending an endpoint's events in order, and retrying a failed batch before anything
//! newer, keeps each message's events in order at the receiver.

use sendmill_platform::{
    backoff,
    kafka::{self, consumer::decode, ConsumerSpec, Handled, HandlerError, KafkaConnection},
    CancellationToken,
};
use sendmill_store::{
    webhooks::{AttemptRecord, Claimed, OutboxRow, Target, WebhookFormat, BREAKER_THRESHOLD},
    Store,
};
use sendmill_wire::{AccountId, EventV1};
use serde::Deserialize;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore};

/// `[analytics.webhooks]`: how events reach customer endpoints.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Kafka consumer group of the fan-out.
    pub group_id: String,
    /// How long an event is retried before it goes to the dead-letter queue.
    #[serde(with = "sendmill_platform::config::duration")]
    pub retry_for: Duration,
    /// Time before the first retry; each failure in a row doubles it.
    #[serde(with = "sendmill_platform::config::duration")]
    pub backoff_initial: Duration,
    /// Time between retries at most.
    #[serde(with = "sendmill_platform::config::duration")]
    pub backoff_max: Duration,
    /// How long an endpoint has to answer.
    #[serde(with = "sendmill_platform::config::duration")]
    pub request_timeout: Duration,
    /// Endpoints sent to at the same time by one process.
    pub concurrent_endpoints: usize,
    /// How long a process holds an endpoint before another may take it over.
    #[serde(with = "sendmill_platform::config::duration")]
    pub lease: Duration,
    /// Time between looks for endpoints that fell due (other processes' events,
    /// ended backoffs); this process's own new events wake the sender at once.
    #[serde(with = "sendmill_platform::config::duration")]
    pub poll: Duration,
    /// How long an account's endpoint list is cached by the fan-out.
    #[serde(with = "sendmill_platform::config::duration")]
    pub endpoint_cache: Duration,
    /// Days delivered events and attempts are kept for the API.
    pub history_days: u64,
    /// Allow endpoints on loopback and private addresses (tests, single-host setups).
    /// Off in production: a tenant must not reach the platform's internal network. It is
    /// checked when an endpoint is saved and again at every connection, on the
    /// addresses its name resolves to then (DNS may have changed in between).
    pub allow_private_destinations: bool,
    /// DNS servers `ip:port` that resolve endpoint host names; empty: the system's
    /// resolv.conf.
    pub nameservers: Vec<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            group_id: "sendmill-webhooks".into(),
            retry_for: Duration::from_secs(48 * 3_600),
            backoff_initial: Duration::from_millis(5_000),
            backoff_max: Duration::from_secs(3_600),
            request_timeout: Duration::from_millis(10_000),
            concurrent_endpoints: 64,
            lease: Duration::from_secs(60),
            poll: Duration::from_millis(500),
            endpoint_cache: Duration::from_secs(5),
            history_days: 7,
            allow_private_destinations: false,
            nameservers: Vec::new(),
        }
    }
}

impl WebhookConfig {
    /// The wait after `failures` failed attempts in a row: exponential, capped, with
    /// ±20% jitter so endpoints that failed together do not retry together.
    pub fn backoff(&self, failures: i32) -> Duration {
        let exponent = failures.clamp(1, 30) as u32 - 1;
        let base = self
            .backoff_initial
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.backoff_max);
        base.mul_f64(rand::random::<f64>() * 0.4 + 0.8)
    }
}

/// Standard Webhooks signing (<https://www.standardwebhooks.com>): HMAC-SHA256 over
/// `{id}.{timestamp}.{body}` with the key the `whsec_` secret encodes, sent as
/// `webhook-signature: v1,<base64>`.
pub mod signing {
    use aws_lc_rs::hmac;
    use base64::{engine::general_purpose::STANDARD, Engine};

    #[derive(Debug, thiserror::Error)]
    #[error("the webhook secret is not `whsec_` followed by base64")]
    pub struct BadSecret;

    pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, BadSecret> {
        let encoded = secret.strip_prefix("whsec_").ok_or(BadSecret)?;
        let key = STANDARD.decode(encoded).map_err(|_| BadSecret)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        let mut context = hmac::Context::with_key(&key);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        Ok(format!("v1,{}", STANDARD.encode(context.sign().as_ref())))
    }
}

/// An account's endpoints and when they were read.
type CachedTargets = (Arc<Vec<Target>>, Instant);

/// The endpoints of each account, cached briefly; the API drops an account's entry
/// when it changes one of its endpoints.
#[derive(Clone)]
pub struct TargetCache {
    store: Store,
    ttl: Duration,
    entries: Arc<Mutex<HashMap<AccountId, CachedTargets>>>,
}

impl TargetCache {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            entries: Arc::default(),
        }
    }

    pub async fn get(
        &self,
        account: AccountId,
    ) -> Result<Arc<Vec<Target>>, sendmill_store::StoreError> {
        if let Some((targets, at)) = self.entries.lock().expect("not poisoned").get(&account) {
            if at.elapsed() < self.ttl {
                return Ok(targets.clone());
            }
        }
        let targets = Arc::new(self.store.webhook_targets(account).await?);
        self.entries
            .lock()
            .expect("not poisoned")
            .insert(account, (targets.clone(), Instant::now()));
        Ok(targets)
    }

    pub fn forget(&self, account: AccountId) {
        self.entries.lock().expect("not poisoned").remove(&account);
    }
}

/// Consumes the events topic into the webhook outbox until `shutdown`.
pub async fn run_fanout(
    kafka: KafkaConnection,
    store: Store,
    targets: TargetCache,
    config: WebhookConfig,
    wake_sender: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), kafka::KafkaError> {
    let spec = ConsumerSpec {
        stage: "webhooks",
        group_id: config.group_id.clone(),
        topics: vec![kafka.topics.events()],
        concurrency: 256,
    };
    // Records already taken are finished for up to the drain grace after shutdown.
    let token = sendmill_platform::shutdown::after_grace(&shutdown, kafka.config.drain_grace);
    kafka::consumer::run(
        &kafka,
        spec,
        move |record| {
            let (store, targets, wake_sender, shutdown) = (
                store.clone(),
                targets.clone(),
                wake_sender.clone(),
                token.clone(),
            );
            async move {
                let event: EventV1 = decode(&record)?;
                let account = event.account_id;
                let wanted: Vec<_> =
                    backoff::until_ok("webhook endpoints", &shutdown, || targets.get(account))
                        .await?
                        .iter()
                        .filter(|t| t.wants(event.event_type.as_str()))
                        // SendGrid-format endpoints get only what SendGrid has a name for.
                        .filter(|t| {
                            t.format == WebhookFormat::Standard
                                || crate::sendgrid_events::event_name(event.event_type).is_some()
                        })
                        .map(|t| t.id)
                        .collect();
                if wanted.is_empty() {
                    return Ok(Handled::Done);
                }
                let payload = serde_json::to_value(&event)
                    .map_err(|e| HandlerError::Poison(e.to_string()))?;
                let rows: Vec<OutboxRow> = wanted
                    .into_iter()
                    .map(|endpoint_id| OutboxRow {
                        endpoint_id,
                        event_id: event.event_id.0,
                        message_id: event.message_id.0,
                        event_type: event.event_type.as_str().to_owned(),
                        occurred_at: event.occurred_at,
                        payload: payload.clone(),
                    })
                    .collect();
                let queued = backoff::until_ok("webhook outbox", &shutdown, || {
                    store.enqueue_webhook_events(&rows)
                })
                .await?;
                metrics::counter!(crate::metric::WEBHOOK_EVENTS_QUEUED_TOTAL).increment(queued);
                wake_sender.notify_one();
                Ok(Handled::Done)
            }
        },
        shutdown,
    )
    .await
}

/// The HTTP client webhooks are sent with: no redirects followed, endpoint names
/// resolved by `config.nameservers` and, unless private destinations are allowed,
/// refused when they resolve only to internal addresses (checked per connection).
/// Errors: bad nameservers, or a client that cannot be built.
pub fn http_client(config: &WebhookConfig) -> Result<reqwest::Client, String> {
    use sendmill_platform::dns;
    let servers = dns::parse_nameservers(&config.nameservers)
        .map_err(|e| format!("analytics.webhooks.{e}"))?;
    let resolver = dns::resolver(&servers, Duration::from_secs(5), 1_024)
        .map_err(|e| format!("analytics.webhooks: cannot build the DNS resolver: {e}"))?;
    reqwest::Client::builder()
        .timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        // Straight to the destination: a proxy from the environment would resolve the
        // name itself, around the internal-address check.
        .no_proxy()
        .dns_resolver(Arc::new(dns::HttpResolver::new(
            resolver,
            config.allow_private_destinations,
        )))
        .user_agent(concat!("Sendmill-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("analytics.webhooks: cannot build the HTTP client: {e}"))
}

/// Whether `url` names an internal IP address literally (resolvers are not asked for
/// those, so the connect-time check is made here).
fn internal_literal(url: &str) -> bool {
    let host = reqwest::Url::parse(url).ok().and_then(|u| match u.host()? {
        url::Host::Ipv4(ip) => Some(std::net::IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(std::net::IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    });
    host.is_some_and(sendmill_platform::dns::is_internal)
}

/// An error with its causes, `a: b: c` (reqwest's own text is only the outermost).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Sends the outbox to the endpoints with `client` ([`http_client`]) until `shutdown`.
pub async fn run_sender(
    store: Store,
    config: WebhookConfig,
    client: reqwest::Client,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.concurrent_endpoints.max(1)));
    let lease = config.lease;
    let mut last_housekeeping: Option<Instant> = None;
    loop {
        if last_housekeeping.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            last_housekeeping = Some(Instant::now());
            housekeeping(&store, &config).await;
        }
        // Lease endpoints while there are free slots and due endpoints.
        while let Ok(slot) = slots.clone().try_acquire_owned() {
            match store.claim_webhook_endpoint(lease).await {
                Ok(Some(endpoint)) => {
                    let (store, config, client) = (store.clone(), config.clone(), client.clone());
                    tokio::spawn(async move {
                        deliver(&store, &config, &client, endpoint).await;
                        drop(slot);
                    });
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "webhooks: cannot claim an endpoint");
                    break;
                }
            }
        }
        // An endpoint falls due (its backoff ends, another process queues events) at
        // most one poll late.
        let wait = config.poll;
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn housekeeping(store: &Store, config: &WebhookConfig) {
    match store.webhook_dead_letters().await {
        Ok(dead) => metrics::gauge!(crate::metric::WEBHOOK_DEAD_LETTERS).set(dead as f64),
        Err(error) => tracing::warn!(%error, "webhooks: cannot count dead letters"),
    }
    let keep = Duration::from_secs(config.history_days * 86_400);
    if let Err(error) = store.prune_webhook_history(keep).await {
        tracing::warn!(%error, "webhooks: cannot prune history");
    }
}

/// The body of one request: the events in the order they happened.
fn body(events: &[serde_json::Value]) -> Vec<u8> {
    let timestamp = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::to_vec(&serde_json::json!({
        "type": "message.events",
        "timestamp": timestamp,
        "data": {"events": events},
    }))
    .expect("JSON values encode")
}

/// A request's body and signature headers in the endpoint's format.
struct SignedRequest {
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

/// Why a request could not be signed (a broken stored key: our error, not the endpoint's).
#[derive(Debug, thiserror::Error)]
enum SignError {
    #[error(transparent)]
    Secret(#[from] signing::BadSecret),
    #[error(transparent)]
    Key(#[from] crate::sendgrid_events::BadKey),
}

/// The body of `payloads` (outbox events) and its signature headers for `endpoint`:
/// Standard Webhooks (`webhook-id`, `-timestamp`, `-signature`) or SendGrid's format
/// ([`crate::sendgrid_events`]), whose events the fan-out already filtered.
fn signed_request(
    endpoint: &Claimed,
    id: &str,
    timestamp: i64,
    payloads: &[serde_json::Value],
) -> Result<SignedRequest, SignError> {
    use crate::sendgrid_events as sg;
    match endpoint.format {
        WebhookFormat::Standard => {
            let body = body(payloads);
            let signature = signing::sign(&endpoint.secret, id, timestamp, &body)?;
            Ok(SignedRequest {
                body,
                headers: vec![
                    ("webhook-id", id.to_owned()),
                    ("webhook-timestamp", timestamp.to_string()),
                    ("webhook-signature", signature),
                ],
            })
        }
        WebhookFormat::Sendgrid => {
            let events: Vec<serde_json::Value> = payloads
                .iter()
                .filter_map(|p| serde_json::from_value::<EventV1>(p.clone()).ok())
                .filter_map(|e| sg::event(&e))
                .collect();
            let body = serde_json::to_vec(&events).expect("JSON values encode");
            let signature = sg::sign(&endpoint.secret, timestamp, &body)?;
            Ok(SignedRequest {
                body,
                headers: vec![
                    (sg::SIGNATURE_HEADER, signature),
                    (sg::TIMESTAMP_HEADER, timestamp.to_string()),
                ],
            })
        }
    }
}

/// The same events always get the same `webhook-id`, so a receiver can drop a retry it
/// already processed.
fn webhook_id(event_ids: &[uuid::Uuid]) -> String {
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for id in event_ids {
        hash.update(id.as_bytes());
    }
    let digest = hash.finish();
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("msg_{hex}")
}

/// Sends the endpoint's pending events, batch after batch, until none is left or an
/// attempt fails.
async fn deliver(
    store: &Store,
    config: &WebhookConfig,
    client: &reqwest::Client,
    endpoint: Claimed,
) {
    let mut failures = endpoint.failures;
    loop {
        match store
            .dead_letter_expired(endpoint.id, config.retry_for)
            .await
        {
            Ok(0) => {}
            Ok(moved) => {
                tracing::warn!(endpoint = %endpoint.id, moved, "webhooks: events past the retry window dead-lettered");
                metrics::counter!(crate::metric::WEBHOOK_DEAD_LETTERED_TOTAL).increment(moved);
            }
            Err(error) => return give_back(store, &endpoint, error).await,
        }
        // A failing endpoint gets a one-event probe before whole batches again.
        let limit = if failures >= BREAKER_THRESHOLD {
            1
        } else {
            endpoint.max_batch.max(1)
        };
        let batch = match store
            .pending_webhook_events(endpoint.id, i64::from(limit))
            .await
        {
            Ok(batch) if batch.is_empty() => {
                return release(store, &endpoint).await;
            }
            Ok(batch) => batch,
            Err(error) => return give_back(store, &endpoint, error).await,
        };
        let ids: Vec<uuid::Uuid> = batch.iter().map(|p| p.event_id).collect();
        let seqs: Vec<i64> = batch.iter().map(|p| p.seq).collect();
        let payloads: Vec<serde_json::Value> = batch.into_iter().map(|p| p.payload).collect();
        let id = webhook_id(&ids);
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let request = match signed_request(&endpoint, &id, timestamp, &payloads) {
            Ok(request) => request,
            Err(error) => return give_back(store, &endpoint, error).await,
        };
        let started = Instant::now();
        let sent = if !config.allow_private_destinations && internal_literal(&endpoint.url) {
            Err("the endpoint's address is internal, which webhooks may not use".to_owned())
        } else {
            let mut builder = client
                .post(&endpoint.url)
                .header("content-type", "application/json");
            for (name, value) in request.headers {
                builder = builder.header(name, value);
            }
            builder
                .body(request.body)
                .send()
                .await
                // The error's text never includes the secret or the body.
                .map_err(|error| error_chain(&error.without_url()))
        };
        let elapsed = started.elapsed();
        metrics::histogram!(crate::metric::WEBHOOK_ATTEMPT_SECONDS).record(elapsed.as_secs_f64());
        let (status_code, error) = match sent {
            Ok(response) if response.status().is_success() => {
                (Some(response.status().as_u16()), None)
            }
            Ok(response) => (
                Some(response.status().as_u16()),
                Some(format!("answered {}", response.status())),
            ),
            Err(error) => (None, Some(error)),
        };
        let record = AttemptRecord {
            webhook_id: id,
            events: ids.len() as i32,
            status_code: status_code.map(i32::from),
            error: error.clone(),
            duration_ms: elapsed.as_millis().min(i32::MAX as u128) as i32,
        };
        let retry_at = error
            .as_ref()
            .map(|_| OffsetDateTime::now_utc() + config.backoff(failures + 1));
        let outcome = if error.is_none() {
            "delivered"
        } else {
            "failed"
        };
        metrics::counter!(crate::metric::WEBHOOK_ATTEMPTS_TOTAL, "outcome" => outcome).increment(1);
        if let Err(e) = store
            .record_webhook_attempt(endpoint.id, &seqs, &record, retry_at, config.lease)
            .await
        {
            // Not recorded: the events stay pending and go again (the same webhook-id
            // lets the receiver drop them).
            return give_back(store, &endpoint, e).await;
        }
        match error {
            None => {
                metrics::counter!(crate::metric::WEBHOOK_EVENTS_DELIVERED_TOTAL)
                    .increment(ids.len() as u64);
                failures = 0;
            }
            Some(error) => {
                tracing::info!(endpoint = %endpoint.id, account = %endpoint.account_id, %error, "webhooks: attempt failed; backing off");
                return;
            }
        }
    }
}

/// Gives the endpoint back after an error of our own (not the endpoint's).
async fn give_back(store: &Store, endpoint: &Claimed, why: impl std::fmt::Display) {
    tracing::warn!(endpoint = %endpoint.id, error = %why, "webhooks: giving the endpoint back");
    release(store, endpoint).await;
}

async fn release(store: &Store, endpoint: &Claimed) {
    if let Err(error) = store.release_webhook_endpoint(endpoint.id).await {
        tracing::warn!(%error, "webhooks: cannot release an endpoint (its lease will run out)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        // The example in the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signing::sign(secret, id, 1614265330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(signing::sign("MfKQ9r8G", id, 1, body).is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = WebhookConfig {
            backoff_initial: Duration::from_millis(1_000),
            backoff_max: Duration::from_secs(10),
            ..WebhookConfig::default()
        };
        let around = |d: Duration, secs: f64| {
            let s = d.as_secs_f64();
            s >= secs * 0.8 && s <= secs * 1.2
        };
        assert!(around(config.backoff(1), 1.0));
        assert!(around(config.backoff(3), 4.0));
        assert!(around(config.backoff(20), 10.0));
    }

    #[test]
    fn the_same_events_get_the_same_webhook_id() {
        let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        assert_eq!(webhook_id(&[a, b]), webhook_id(&[a, b]));
        assert_ne!(webhook_id(&[a, b]), webhook_id(&[a]));
    }
}
