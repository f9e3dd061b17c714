//! Starting stages in this process. `sendmill all` starts every stage; `sendmill ingest`
//! (etc.) one. Each stage gets the same shutdown token; when one stage fails the others
//! are told to stop, so a process never limps on with a dead stage.

use anyhow::Context;
use sendmill_platform::{
    backoff, http,
    kafka::{admin, KafkaConnection},
    CancellationToken,
};
use sendmill_store::Store;
use std::net::SocketAddr;
use tokio::{net::TcpListener, task::JoinSet};

use crate::SendmillConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Ingest,
    Render,
    Dispatch,
    Analytics,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Ingest,
        Stage::Render,
        Stage::Dispatch,
        Stage::Analytics,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Render => "render",
            Stage::Dispatch => "dispatcher",
            Stage::Analytics => "analytics",
        }
    }
}

/// Running stages and where their HTTP endpoints listen.
pub struct Pipeline {
    pub ingest_addr: Option<SocketAddr>,
    pub analytics_addr: Option<SocketAddr>,
    /// `/healthz` and `/metrics` of a render or dispatcher process run alone.
    pub ops_addr: Option<SocketAddr>,
    tasks: JoinSet<(Stage, anyhow::Result<()>)>,
    shutdown: CancellationToken,
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
    let store = Store::connect(&config.postgres.url, config.postgres.max_connections)
        .await
        .context("connecting to PostgreSQL")?;
    // Render alone needs no Redis; the others share one connection and one view of the
    // suppression lists.
    let redis = if needs(Stage::Ingest) || needs(Stage::Dispatch) || needs(Stage::Analytics) {
        Some(
            sendmill_platform::clients::redis(&config.redis)
                .await
                .context("connecting to Redis")?,
        )
    } else {
        None
    };
    let suppressions = redis.clone().map(|redis| {
        sendmill_platform::suppressions::SuppressionCache::new(
            store.clone(),
            redis,
            &config.redis.key_prefix,
            std::time::Duration::from_secs(config.ingest.suppression_cache_secs),
        )
    });
    let mut pipeline = Pipeline {
        ingest_addr: None,
        analytics_addr: None,
        ops_addr: None,
        tasks: JoinSet::new(),
        shutdown: shutdown.clone(),
    };

    if needs(Stage::Ingest) {
        let listener = bind(&config.ingest.listen).await?;
        pipeline.ingest_addr = Some(listener.local_addr()?);
        let state = sendmill_ingest::AppState::new(
            config.ingest.clone(),
            sendmill_ingest::Dependencies {
                store: store.clone(),
                producer: kafka.producer()?,
                topics: kafka.topics.clone(),
                redis: redis.clone().expect("connected above"),
                redis_prefix: config.redis.key_prefix.clone(),
            },
            shutdown.clone(),
        )?;
        let token = shutdown.clone();
        pipeline.tasks.spawn(async move {
            let result = sendmill_ingest::serve(listener, state, token).await;
            (Stage::Ingest, result.map_err(Into::into))
        });
    }
    if needs(Stage::Render) {
        let (kafka, store, cfg, tracking, token) = (
            kafka.clone(),
            store.clone(),
            config.render.clone(),
            config.tracking.clone(),
            shutdown.clone(),
        );
        pipeline.tasks.spawn(async move {
            let result = sendmill_render::run(kafka, store, cfg, tracking, token).await;
            (Stage::Render, result.map_err(Into::into))
        });
    }
    if needs(Stage::Dispatch) {
        let (kafka, cfg, prefix, token, redis, suppressions) = (
            kafka.clone(),
            config.dispatcher.clone(),
            config.redis.key_prefix.clone(),
            shutdown.clone(),
            redis.clone().expect("connected above"),
            suppressions.clone().expect("connected above"),
        );
        pipeline.tasks.spawn(async move {
            let result =
                sendmill_dispatcher::run(kafka, redis, prefix, suppressions, cfg, token).await;
            (Stage::Dispatch, result.map_err(Into::into))
        });
    }
    if needs(Stage::Analytics) {
        let clickhouse = sendmill_platform::clients::clickhouse(&config.clickhouse);
        let listener = bind(&config.analytics.listen).await?;
        pipeline.analytics_addr = Some(listener.local_addr()?);
        let state = sendmill_analytics::AppState::new(
            sendmill_analytics::Dependencies {
                clickhouse: clickhouse.clone(),
                store: store.clone(),
                suppressions: suppressions.clone().expect("connected above"),
                redis: redis.clone().expect("connected above"),
                redis_prefix: config.redis.key_prefix.clone(),
            },
            &kafka,
            &config.tracking,
            &config.analytics,
        )?;
        let (targets, wake) = (state.webhook_targets.clone(), state.wake_webhooks.clone());
        let token = shutdown.clone();
        pipeline.tasks.spawn(async move {
            let result = sendmill_analytics::serve(listener, state, token).await;
            (Stage::Analytics, result.map_err(Into::into))
        });
        let (kafka2, store2, cfg, token, wake2) = (
            kafka.clone(),
            store.clone(),
            config.analytics.webhooks.clone(),
            shutdown.clone(),
            wake.clone(),
        );
        pipeline.tasks.spawn(async move {
            let result = sendmill_analytics::webhooks::run_fanout(
                kafka2, store2, targets, cfg, wake2, token,
            )
            .await;
            (Stage::Analytics, result.map_err(Into::into))
        });
        let (store2, cfg, token) = (
            store.clone(),
            config.analytics.webhooks.clone(),
            shutdown.clone(),
        );
        pipeline.tasks.spawn(async move {
            sendmill_analytics::webhooks::run_sender(store2, cfg, wake, token).await;
            (Stage::Analytics, Ok(()))
        });
        let retention = sendmill_analytics::retention::Retention::new(
            config.analytics.retention_days,
            config.analytics.rollup_retention_days,
        );
        let (ch, every, token) = (
            clickhouse.clone(),
            std::time::Duration::from_secs(config.analytics.retention_check_secs.max(1)),
            shutdown.clone(),
        );
        pipeline.tasks.spawn(async move {
            retention.run(ch, every, token).await;
            (Stage::Analytics, Ok(()))
        });
        if config.analytics.reputation.enabled {
            let monitor = sendmill_analytics::reputation::Monitor::new(
                redis.clone().expect("connected above"),
                &config.redis.key_prefix,
                store.clone(),
                &kafka,
                config.analytics.reputation.clone(),
            )?;
            let (kafka2, token) = (kafka.clone(), shutdown.clone());
            pipeline.tasks.spawn(async move {
                let result = sendmill_analytics::reputation::run(kafka2, monitor, token).await;
                (Stage::Analytics, result.map_err(Into::into))
            });
        }
        if config.analytics.outcomes.enabled {
            let (ch, store2, kafka2, cfg, token) = (
                clickhouse.clone(),
                store.clone(),
                kafka.clone(),
                config.analytics.outcomes.clone(),
                shutdown.clone(),
            );
            pipeline.tasks.spawn(async move {
                let result =
                    sendmill_analytics::outcomes::run(ch, store2, kafka2, cfg, token).await;
                (Stage::Analytics, result.map_err(Into::into))
            });
        }
        let (kafka, cfg, token) = (kafka.clone(), config.analytics.clone(), shutdown.clone());
        pipeline.tasks.spawn(async move {
            let result = sendmill_analytics::run_inserter(kafka, clickhouse, cfg, token).await;
            (Stage::Analytics, result.map_err(Into::into))
        });
    }
    // A render or dispatcher process on its own still answers /healthz and /metrics.
    if !needs(Stage::Ingest) && !needs(Stage::Analytics) {
        let (name, listen) = if needs(Stage::Render) {
            ("render", &config.render.ops_listen)
        } else {
            ("dispatcher", &config.dispatcher.ops_listen)
        };
        let listener = bind(listen).await?;
        pipeline.ops_addr = Some(listener.local_addr()?);
        let token = shutdown.clone();
        let stage = if needs(Stage::Render) {
            Stage::Render
        } else {
            Stage::Dispatch
        };
        pipeline.tasks.spawn(async move {
            let result = http::serve(name, listener, http::ops_router(name), token).await;
            (stage, result.map_err(Into::into))
        });
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

async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

impl Pipeline {
    /// Waits for every stage to end. The first stage to fail (or to end before shutdown)
    /// stops the others; its error is returned.
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
        first_error.map_or(Ok(()), Err)
    }
}
