//! Starting stages in this process. `sendmill all` starts every stage; `sendmill ingest`
//! (etc.) one. Each stage gets the same shutdown token; when one stage fails the others
//! are told to stop, so a process never limps on with a dead stage.

use anyhow::Context;
use futures::future::BoxFuture;
use sendmill_platform::{
    backoff, health, http,
    kafka::{admin, KafkaConnection},
    return_path::ReturnPaths,
    tracking::LinkSigner,
    CancellationToken,
};
use sendmill_store::Store;
use std::{net::SocketAddr, sync::Arc};
use tokio::{net::TcpListener, task::JoinSet};

use crate::SendmillConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Ingest,
    Render,
    Dispatch,
    Analytics,
    Inbound,
    Campaigns,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Ingest,
        Stage::Render,
        Stage::Dispatch,
        Stage::Analytics,
        Stage::Inbound,
        Stage::Campaigns,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Render => "render",
            Stage::Dispatch => "dispatcher",
            Stage::Analytics => "analytics",
            Stage::Inbound => "inbound",
            Stage::Campaigns => "campaigns",
        }
    }
}

/// Running stages and where their HTTP endpoints listen.
pub struct Pipeline {
    pub ingest_addr: Option<SocketAddr>,
    /// SMTP submission with STARTTLS (`ingest.submission.listen`), when configured.
    pub submission_addr: Option<SocketAddr>,
    /// SMTP submission with implicit TLS (`ingest.submission.tls_listen`), when configured.
    pub submission_tls_addr: Option<SocketAddr>,
    pub analytics_addr: Option<SocketAddr>,
    /// The inbound SMTP server (`inbound.listen`), when configured.
    pub inbound_addr: Option<SocketAddr>,
    /// `/healthz` and `/metrics` of a render, dispatcher or inbound process run alone.
    pub ops_addr: Option<SocketAddr>,
    tasks: JoinSet<(Stage, anyhow::Result<()>)>,
    shutdown: CancellationToken,
    /// What `/readyz` asks while the stages run (the dependencies they use).
    _probes: Vec<health::Probe>,
    /// The consumer groups `/readyz` waits for.
    _expected: Vec<health::Condition>,
    /// A lone render or dispatcher's ops endpoints, and what stops them.
    ops_server: Option<(
        tokio::task::JoinHandle<std::io::Result<()>>,
        CancellationToken,
    )>,
}

/// The consumer groups `stage` runs (ids without the topic prefix), for readiness.
fn consumer_groups(config: &SendmillConfig, stage: Stage) -> Vec<String> {
    match stage {
        Stage::Ingest => Vec::new(),
        Stage::Render => vec![config.render.group_id.clone()],
        Stage::Dispatch => vec![
            config.dispatcher.group_id.clone(),
            config.dispatcher.retry_group_id.clone(),
        ],
        Stage::Analytics => {
            let a = &config.analytics;
            let mut groups = vec![a.group_id.clone(), a.webhooks.group_id.clone()];
            if a.reputation.enabled {
                groups.push(a.reputation.group_id.clone());
            }
            groups
        }
        Stage::Inbound => vec![config.inbound.group_id.clone()],
        Stage::Campaigns => Vec::new(),
    }
}

/// The tenant store with `max_connections`, sealing secrets at rest with the configured
/// keyring; without one it says, once per process, that secrets are stored in plaintext.
pub async fn connect_store(config: &SendmillConfig, max_connections: u32) -> anyhow::Result<Store> {
    let keyring = config.keyring()?;
    if keyring.is_none() {
        tracing::warn!(
            "no key-encryption key ([secrets] kek_file, SENDMILL_KEKS): DKIM private keys and \
             webhook secrets are stored in PostgreSQL in plaintext"
        );
    }
    Ok(Store::connect(&config.postgres.url, max_connections)
        .await
        .context("connecting to PostgreSQL")?
        .with_keyring(keyring))
}

/// Starts `stages` against the configured Kafka cluster. Waits (saying so, and until
/// `shutdown`) for the cluster to answer, then refuses to start when a topic is missing:
/// topics are `sendmill migrate`'s, never auto-created. Other drift is a warning.
pub async fn start(
    config: &SendmillConfig,
    stages: &[Stage],
    shutdown: CancellationToken,
) -> anyhow::Result<Pipeline> {
    let kafka = KafkaConnection::new(config.kafka.brokers.clone(), config.kafka.clone());
    check_kafka(&kafka, &shutdown).await?;
    let needs = |s: Stage| stages.contains(&s);
    // Every stage reads tenant data (the dispatcher: suppression lists).
    let store = connect_store(config, config.postgres.max_connections).await?;
    // Render alone needs no Redis; the others share one connection and one view of the
    // suppression lists.
    let redis = if needs(Stage::Ingest)
        || needs(Stage::Dispatch)
        || needs(Stage::Analytics)
        || needs(Stage::Inbound)
        || needs(Stage::Campaigns)
    {
        Some(
            sendmill_platform::clients::redis(&config.redis)
                .await
                .context("connecting to Redis")?,
        )
    } else {
        None
    };
    let suppressions = redis.clone().map(|redis| {
        sendmill_tenancy::suppressions::SuppressionCache::new(
            store.clone(),
            redis,
            &config.redis.key_prefix,
            config.suppressions.cache,
        )
    });
    let mut probes = vec![kafka.readiness_probe()?, {
        let store = store.clone();
        health::Probe::new("postgresql", move || {
            let store = store.clone();
            Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
        })
    }];
    probes.extend(redis.clone().map(health::redis_probe));
    if needs(Stage::Analytics) || needs(Stage::Inbound) || needs(Stage::Campaigns) {
        probes.push(health::clickhouse_probe(
            sendmill_platform::clients::clickhouse(&config.clickhouse),
        ));
    }
    // Unready until every consumer loop of the stages has subscribed (the stages set
    // themselves up first: MX resolver, journal, caches).
    let expected: Vec<health::Condition> = stages
        .iter()
        .flat_map(|&stage| consumer_groups(config, stage))
        .map(|group| health::expect_consumer(&kafka.group_id(&group)))
        .collect();
    let mut pipeline = Pipeline {
        ingest_addr: None,
        submission_addr: None,
        submission_tls_addr: None,
        analytics_addr: None,
        inbound_addr: None,
        ops_addr: None,
        tasks: JoinSet::new(),
        shutdown: shutdown.clone(),
        _probes: probes,
        _expected: expected,
        ops_server: None,
    };
    let redis_prefix = config.redis.key_prefix.clone();

    // Every stage has the same face: `run(config, deps, shutdown)`.
    for &stage in stages {
        let token = shutdown.clone();
        let running: BoxFuture<'static, anyhow::Result<()>> = match stage {
            Stage::Ingest => {
                let listener = bind(&config.ingest.listen).await?;
                pipeline.ingest_addr = Some(listener.local_addr()?);
                let submission = &config.ingest.submission;
                let mut listeners = sendmill_ingest::submission::Listeners::default();
                if !submission.listen.is_empty() {
                    let listener = bind(&submission.listen).await?;
                    pipeline.submission_addr = Some(listener.local_addr()?);
                    listeners.starttls = Some(listener);
                }
                if !submission.tls_listen.is_empty() {
                    let listener = bind(&submission.tls_listen).await?;
                    pipeline.submission_tls_addr = Some(listener.local_addr()?);
                    listeners.implicit_tls = Some(listener);
                }
                let deps = sendmill_ingest::Deps {
                    submission: listeners,
                    listener,
                    store: store.clone(),
                    kafka: kafka.clone(),
                    redis: connected(redis.clone()),
                    redis_prefix: redis_prefix.clone(),
                    suppressions: connected(suppressions.clone()),
                };
                let run = sendmill_ingest::run(config.ingest.clone(), deps, token);
                boxed(run)
            }
            Stage::Render => {
                let deps = sendmill_render::Deps {
                    kafka: kafka.clone(),
                    store: store.clone(),
                    links: sendmill_render::links::Links::from_config(&config.tracking)
                        .map(Arc::new),
                };
                let run = sendmill_render::run(config.render.clone(), deps, token);
                boxed(run)
            }
            Stage::Dispatch => {
                let deps = sendmill_dispatcher::Deps {
                    kafka: kafka.clone(),
                    redis: connected(redis.clone()),
                    redis_key_prefix: redis_prefix.clone(),
                    suppressions: connected(suppressions.clone()),
                };
                let run = sendmill_dispatcher::run(config.dispatcher.clone(), deps, token);
                boxed(run)
            }
            Stage::Analytics => {
                let listener = bind(&config.analytics.listen).await?;
                pipeline.analytics_addr = Some(listener.local_addr()?);
                let deps = sendmill_analytics::Deps {
                    listener,
                    kafka: kafka.clone(),
                    clickhouse: sendmill_platform::clients::clickhouse(&config.clickhouse),
                    store: store.clone(),
                    suppressions: connected(suppressions.clone()),
                    redis: connected(redis.clone()),
                    redis_prefix: redis_prefix.clone(),
                    links: (!config.tracking.secret.is_empty())
                        .then(|| LinkSigner::new(&config.tracking.secret)),
                    public_base_url: config.tracking.base_url.clone(),
                    allow_unverified_senders: config.ingest.allow_unverified_domains,
                    campaigns: config.campaigns.clone(),
                };
                let run = sendmill_analytics::run(config.analytics.clone(), deps, token);
                boxed(run)
            }
            Stage::Inbound => {
                let listener = if config.inbound.listen.is_empty() {
                    None
                } else {
                    let listener = bind(&config.inbound.listen).await?;
                    pipeline.inbound_addr = Some(listener.local_addr()?);
                    Some(listener)
                };
                let deps = sendmill_inbound::Deps {
                    listener,
                    kafka: kafka.clone(),
                    store: store.clone(),
                    clickhouse: sendmill_platform::clients::clickhouse(&config.clickhouse),
                    suppressions: connected(suppressions.clone()),
                    return_paths: (!config.tracking.secret.is_empty())
                        .then(|| ReturnPaths::new(&config.tracking.secret)),
                };
                let run = sendmill_inbound::run(config.inbound.clone(), deps, token);
                boxed(run)
            }
            Stage::Campaigns => {
                let clickhouse = sendmill_platform::clients::clickhouse(&config.clickhouse);
                let producer = kafka.producer()?;
                let audiences = sendmill_audiences::Audiences::new(
                    config.analytics.audiences.clone(),
                    sendmill_audiences::Deps {
                        store: store.clone(),
                        clickhouse: clickhouse.clone(),
                        producer: producer.clone(),
                        topics: kafka.topics.clone(),
                        links: (!config.tracking.secret.is_empty())
                            .then(|| LinkSigner::new(&config.tracking.secret)),
                        public_base_url: config.tracking.base_url.clone(),
                        suppressions: connected(suppressions.clone()),
                        redis: connected(redis.clone()),
                        redis_prefix: redis_prefix.clone(),
                        allow_unverified_senders: config.ingest.allow_unverified_domains,
                    },
                );
                let state = sendmill_campaigns::Campaigns::new(
                    config.campaigns.clone(),
                    sendmill_campaigns::Deps {
                        store: store.clone(),
                        clickhouse,
                        producer,
                        topics: kafka.topics.clone(),
                        audiences,
                        allow_unverified_senders: config.ingest.allow_unverified_domains,
                    },
                );
                let run = sendmill_campaigns::run(
                    state,
                    kafka.clone(),
                    config.render.group_id.clone(),
                    token,
                );
                boxed(run)
            }
        };
        pipeline.tasks.spawn(async move { (stage, running.await) });
    }
    // A render, dispatcher or inbound process on its own still answers /healthz and
    // /metrics.
    if !needs(Stage::Ingest) && !needs(Stage::Analytics) {
        let (name, listen) = if needs(Stage::Render) {
            ("render", &config.render.ops_listen)
        } else if needs(Stage::Dispatch) {
            ("dispatcher", &config.dispatcher.ops_listen)
        } else if needs(Stage::Campaigns) && !needs(Stage::Inbound) {
            ("campaigns", &config.campaigns.ops_listen)
        } else {
            ("inbound", &config.inbound.ops_listen)
        };
        let listener = bind(listen).await?;
        pipeline.ops_addr = Some(listener.local_addr()?);
        // Stopped by `wait` once the stages have drained: /livez and /metrics answer
        // through the drain.
        let token = CancellationToken::new();
        let serving = tokio::spawn(http::serve(
            name,
            listener,
            http::ops_router(name),
            token.clone(),
        ));
        pipeline.ops_server = Some((serving, token));
    }
    Ok(pipeline)
}

async fn check_kafka(kafka: &KafkaConnection, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let specs = admin::plan(kafka);
    let drift = backoff::until_ok("reach Kafka", shutdown, || admin::check(kafka, &specs))
        .await
        .context("shut down while waiting for Kafka")?;
    let missing: Vec<String> = drift
        .iter()
        .filter_map(|d| match d {
            admin::Drift::Missing { topic } => Some(topic.clone()),
            _ => None,
        })
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "Kafka at {} lacks {} topics ({}): run `sendmill migrate` first",
            kafka.brokers,
            missing.len(),
            missing.join(", ")
        );
    }
    for d in &drift {
        tracing::warn!(drift = %d, "a Kafka topic differs from the config; `sendmill migrate` reconciles it");
    }
    tracing::info!(brokers = %kafka.brokers, "Kafka answers, every topic exists");
    Ok(())
}

/// A stage's `run` future, its error made the binary's.
fn boxed<E>(
    run: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) -> BoxFuture<'static, anyhow::Result<()>>
where
    E: std::error::Error + Send + Sync + 'static,
{
    Box::pin(async move { Ok(run.await?) })
}

/// A client `start` connected because a stage in the list needs it.
fn connected<T>(client: Option<T>) -> T {
    client.expect("connected above for this stage")
}

async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

impl Drop for Pipeline {
    /// A pipeline dropped without `wait` stops serving its ops endpoints too.
    fn drop(&mut self) {
        if let Some((_, stop)) = &self.ops_server {
            stop.cancel();
        }
    }
}

impl Pipeline {
    /// Waits for every stage to end (then stops the ops endpoints). The first stage to
    /// fail (or to end before shutdown) stops the others; its error is returned.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let (stage, result) = joined.context("stage task panicked")?;
            match result {
                Ok(()) if self.shutdown.is_cancelled() => {}
                Ok(()) => {
                    first_error.get_or_insert_with(|| {
                        anyhow::anyhow!("{} stopped unexpectedly", stage.name())
                    });
                    self.shutdown.cancel();
                }
                Err(error) => {
                    tracing::error!(stage = stage.name(), error = %error, "stage failed");
                    first_error.get_or_insert(error.context(format!("{} failed", stage.name())));
                    self.shutdown.cancel();
                }
            }
        }
        if let Some((serving, stop)) = self.ops_server.take() {
            stop.cancel();
            if let Ok(Err(error)) = serving.await {
                first_error.get_or_insert(anyhow::Error::from(error).context("ops endpoints"));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
