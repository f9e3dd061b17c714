//! `sendmill migrate` and `sendmill kafka check`: the schemas and topics.

use anyhow::{bail, Context};
use clap::Subcommand;
use sendmill::SendmillConfig;
use sendmill_platform::kafka::{admin, KafkaConnection};

#[derive(Subcommand)]
pub enum KafkaCommand {
    /// Lists every topic with the settings `migrate` gives it, and exits non-zero when
    /// the cluster differs (a topic missing, too few partitions, another replication
    /// factor or config).
    Check,
}

/// Runs `command`.
pub async fn run(config: &SendmillConfig, command: KafkaCommand) -> anyhow::Result<()> {
    match command {
        KafkaCommand::Check => check(config).await,
    }
}

/// Applies the PostgreSQL and ClickHouse schemas and reconciles the Kafka topics.
pub async fn migrate(config: &SendmillConfig) -> anyhow::Result<()> {
    let store = crate::pipeline::connect_store(config, 2).await?;
    store.migrate().await.context("PostgreSQL migrations")?;
    tracing::info!("PostgreSQL schema is up to date");
    // Secrets are not resealed here: processes of the previous version may still run
    // and could not read them. `sendmill admin rotate-kek` does it when all have the
    // keyring.
    let applied = sendmill_analytics::schema::migrate(&config.clickhouse)
        .await
        .context("ClickHouse migrations")?;
    tracing::info!(?applied, "ClickHouse schema is up to date");
    let kafka = KafkaConnection::new(config.kafka.brokers.clone(), config.kafka.clone());
    let done = admin::reconcile(&kafka, &admin::plan(&kafka))
        .await
        .context("reconciling Kafka topics")?;
    tracing::info!(
        created = done.created.len(),
        partitions_added = done.partitions_added.len(),
        configs_altered = done.configs_altered.len(),
        "Kafka topics are up to date"
    );
    for drift in &done.left {
        tracing::warn!(%drift, "left for an operator");
    }
    Ok(())
}

async fn check(config: &SendmillConfig) -> anyhow::Result<()> {
    let kafka = KafkaConnection::new(config.kafka.brokers.clone(), config.kafka.clone());
    let specs = admin::plan(&kafka);
    let drift = admin::check(&kafka, &specs).await?;
    for spec in &specs {
        let configs: Vec<String> = spec
            .configs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{}\tpartitions={}\treplication_factor={}\t{}",
            spec.name,
            spec.partitions,
            spec.replication_factor,
            configs.join(",")
        );
    }
    if drift.is_empty() {
        println!(
            "ok: {} topics as configured on {}",
            specs.len(),
            kafka.brokers
        );
        return Ok(());
    }
    for d in &drift {
        println!("DRIFT {d}");
    }
    bail!(
        "{} differences; `sendmill migrate` reconciles all but replication factors",
        drift.len()
    )
}
