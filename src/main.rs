//! `sendmill`: parses flags, loads the config, starts telemetry and calls the library.
//! This binary (here and [`cli`]) is the only code that prints to stdout: everything
//! else reports through `tracing` (`clippy::print_stdout` is denied workspace-wide).
#![allow(
    clippy::print_stdout,
    reason = "the command line's answers and reports are for the person who ran it"
)]

mod cli;

use clap::{Parser, Subcommand};
use sendmill::{pipeline, SendmillConfig, Stage};
use sendmill_platform::{shutdown, telemetry};
use std::path::PathBuf;

/// mimalloc, not glibc's malloc: every stage allocates per record (Handlebars output,
/// MIME parts, JSON heads), and glibc's `malloc`/`free` were ~25 % of building a message
/// (perf on `sendmill bench work --part build`). Figures in README → Performance.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sendmill",
    version,
    about = "Self-hosted, high-throughput outbound email"
)]
struct Cli {
    /// The config file (TOML). Without one, every setting has its default.
    #[arg(long, short, global = true, env = "SENDMILL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every stage in one process.
    All,
    /// The send API.
    Ingest,
    /// Templates, MIME and DKIM.
    Render,
    /// SMTP delivery and retries.
    Dispatch,
    /// Events into ClickHouse and the analytics API.
    Analytics,
    /// The inbound SMTP server for returned mail (DSN bounces, ARF complaints, mailto
    /// unsubscribes, auto-replies) and its processing.
    Inbound,
    /// The campaign sender: releases scheduled campaigns into the bulk lane.
    Campaigns,
    /// Applies the PostgreSQL and ClickHouse schemas, and creates the Kafka topics or
    /// reconciles them with the configured settings (partitions, configs).
    Migrate,
    /// Kafka administration.
    #[command(subcommand)]
    Kafka(cli::kafka::KafkaCommand),
    /// Checks the config file and prints the settings in effect.
    ValidateConfig,
    /// Accounts, API keys and sending domains.
    #[command(subcommand)]
    Admin(cli::admin::Admin),
    /// Measurements (build with --release).
    #[command(subcommand)]
    Bench(cli::bench::Bench),
    /// Health check for images without a shell or curl: GETs `url` (e.g.
    /// `http://127.0.0.1:8080/readyz`) and exits 0 on a 2xx answer within 2 s, else 1.
    Probe {
        /// The endpoint to ask.
        url: String,
    },
    /// Sets up a local development tenant: account `dev`, its sending domain with a
    /// DKIM key, and a new API key (printed alone on stdout).
    Seed {
        /// The sending domain.
        #[arg(long, default_value = "example.test")]
        domain: String,
        /// Where to write the domain's DKIM record for dnsmasq (a conf-dir).
        #[arg(long)]
        dnsmasq_dir: Option<PathBuf>,
    },
}

impl Command {
    /// `service.name` of this process's spans.
    fn service_name(&self) -> &'static str {
        match self {
            Command::All => "sendmill",
            Command::Ingest => "sendmill-ingest",
            Command::Render => "sendmill-render",
            Command::Dispatch => "sendmill-dispatcher",
            Command::Analytics => "sendmill-analytics",
            Command::Inbound => "sendmill-inbound",
            Command::Campaigns => "sendmill-campaigns",
            _ => "sendmill-cli",
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A health check runs every few seconds: no config, no telemetry.
    if let Command::Probe { url } = &cli.command {
        return probe(url).await;
    }
    let config = SendmillConfig::load(cli.config.as_deref())?;
    // Held to the end of main: dropping it exports the spans still queued.
    let _telemetry = telemetry::init(&config.telemetry, cli.command.service_name())?;
    for deprecation in &config.deprecations {
        tracing::warn!(config = ?cli.config, "{deprecation}");
    }
    match cli.command {
        Command::All => run_all(&config).await,
        Command::Ingest => run_stages(&config, &[Stage::Ingest]).await,
        Command::Render => run_stages(&config, &[Stage::Render]).await,
        Command::Dispatch => run_stages(&config, &[Stage::Dispatch]).await,
        Command::Analytics => run_stages(&config, &[Stage::Analytics]).await,
        Command::Inbound => run_stages(&config, &[Stage::Inbound]).await,
        Command::Campaigns => run_stages(&config, &[Stage::Campaigns]).await,
        Command::Migrate => cli::kafka::migrate(&config).await,
        Command::Kafka(command) => cli::kafka::run(&config, command).await,
        Command::ValidateConfig => {
            // Secrets are replaced: this output ends up in terminals and CI logs.
            println!("config ok\n{:#?}", config.redacted());
            Ok(())
        }
        Command::Admin(admin) => cli::admin::run(&config, admin).await,
        Command::Bench(bench) => cli::bench::run(&config, bench).await,
        Command::Probe { url } => probe(&url).await,
        Command::Seed {
            domain,
            dnsmasq_dir,
        } => cli::admin::seed(&config, &domain, dnsmasq_dir.as_deref()).await,
    }
}

async fn probe(url: &str) -> anyhow::Result<()> {
    // Plain HTTP on the pod's own address: no proxy, and no CA certificates loaded (a
    // base image without them made the client refuse to build; found running the image).
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .no_proxy()
        .tls_certs_only(Vec::new())
        .build()?;
    let status = client.get(url).send().await?.status();
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(())
}

async fn run_all(config: &SendmillConfig) -> anyhow::Result<()> {
    run_stages(config, &Stage::ALL).await
}

async fn run_stages(config: &SendmillConfig, stages: &[Stage]) -> anyhow::Result<()> {
    let running = pipeline::start(config, stages, shutdown::on_signals()).await?;
    announce(&running);
    running.wait().await
}

fn announce(running: &pipeline::Pipeline) {
    if let Some(addr) = running.ingest_addr {
        tracing::info!(%addr, "send API: POST http://{addr}/v1/messages");
    }
    if let Some(addr) = running.analytics_addr {
        tracing::info!(%addr, "analytics API: GET http://{addr}/v1/messages/{{id}}");
    }
    if let Some(addr) = running.ops_addr {
        tracing::info!(%addr, "ops endpoints: http://{addr}/healthz, /metrics");
    }
}
