//! `sendmill`: parses flags, loads the config, starts telemetry and calls the library.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use sendmill::{pipeline, SendmillConfig, Stage};
use sendmill_platform::{
    kafka::{admin, KafkaConnection},
    shutdown, telemetry,
};
use sendmill_store::{Scope, Store};
use sendmill_wire::AccountId;
use std::path::{Path, PathBuf};

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
    /// Applies the PostgreSQL and ClickHouse schemas, and creates the Kafka topics or
    /// reconciles them with the configured settings (partitions, configs).
    Migrate,
    /// Kafka administration.
    #[command(subcommand)]
    Kafka(KafkaCommand),
    /// Checks the config file and prints the settings in effect.
    ValidateConfig,
    /// Accounts, API keys and sending domains.
    #[command(subcommand)]
    Admin(Admin),
    /// Measurements (build with --release).
    #[command(subcommand)]
    Bench(Bench),
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

#[derive(Subcommand)]
enum Bench {
    /// Rendered + DKIM-signed messages/s on one core (~15 KB HTML, 15 variables) beside
    /// the raw signing rate of the same keys.
    Render {
        /// Alternating runs of each measurement; medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds per run and measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Accepted recipients/s at the send API alone, for 1- and 100-recipient requests
    /// (~15 KB HTML), against PostgreSQL, Redis and Kafka (as configured).
    Ingest {
        /// Measured runs per request shape (after one warm-up); medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Delivered messages/s of one dispatcher (and per CPU-second) with messages
    /// pre-loaded in `ready`, to 1 and to 50 destination domains on local smtp-sink hosts,
    /// beside the sinks' own ceiling measured with smtp-source.
    Deliver {
        /// Runs per shape; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Messages per run (~10 KB each).
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
    },
    /// The whole pipeline as separate processes, from the send API to the bench sinks
    /// (~15 KB HTML, 15 variables, RSA-2048 DKIM): accepted/s, delivered/s, 202-to-delivery
    /// latency, CPU per 1,000 messages and peak RSS per process, lag over time; then the
    /// ceilings (smtp-sink, RSA-2048, Redis EVALSHA) and, with --postfix, postfix over the
    /// same sinks.
    Pipeline {
        /// Seconds of load.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Recipients per second offered; without it, as fast as ingest answers.
        #[arg(long)]
        rate: Option<f64>,
        /// Requests in flight at most.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Recipients per request.
        #[arg(long, default_value_t = 1)]
        recipients: usize,
        /// Destination domains d1..dN.test (on the ten bench sinks).
        #[arg(long, default_value_t = 10)]
        domains: usize,
        /// Seconds to wait after the load for every message to end.
        #[arg(long, default_value_t = 300.0)]
        drain_timeout: f64,
        /// Also relay the same message through Debian's postfix to the same sinks.
        #[arg(long)]
        postfix: bool,
        /// The script that runs postfix for --postfix.
        #[arg(long, default_value = "deploy/local/postfix-bench.sh")]
        postfix_script: PathBuf,
        /// Also write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KafkaCommand {
    /// Lists every topic with the settings `migrate` gives it, and exits non-zero when
    /// the cluster differs (a topic missing, too few partitions, another replication
    /// factor or config).
    Check,
}

#[derive(Subcommand)]
enum Admin {
    /// Creates an account and prints its id.
    CreateAccount {
        #[arg(long)]
        name: String,
        /// An operator account: manages tenants and the global suppression list.
        #[arg(long)]
        operator: bool,
    },
    /// Creates an API key and prints it (the only time it is shown).
    CreateKey {
        #[arg(long)]
        account: AccountId,
        #[arg(long, default_value = "default")]
        name: String,
        /// Comma-separated scopes: send, templates, domains, suppressions, stats,
        /// webhooks, admin.
        #[arg(long, value_delimiter = ',', default_value = "send,stats")]
        scopes: Vec<Scope>,
    },
    /// Creates or replaces a Handlebars partial (or layout) of an account.
    PutPartial {
        #[arg(long)]
        account: AccountId,
        #[arg(long)]
        name: String,
        /// File holding the partial's source.
        #[arg(long)]
        file: PathBuf,
    },
    /// Sets an account's tracking defaults (a message may override them).
    Tracking {
        #[arg(long)]
        account: AccountId,
        /// Add an open pixel to HTML messages.
        #[arg(long, action = clap::ArgAction::Set)]
        opens: bool,
        /// Route HTML links through the click endpoint.
        #[arg(long, action = clap::ArgAction::Set)]
        clicks: bool,
    },
    /// Turns Ed25519 + RSA dual DKIM signing of a sending domain on or off.
    DualSign {
        #[arg(long)]
        account: AccountId,
        #[arg(long)]
        domain: String,
        #[arg(long, action = clap::ArgAction::Set)]
        on: bool,
    },
    /// Pauses a source IP or an IP pool on every dispatcher: no new connections, no new
    /// messages from it until `resume`.
    Pause {
        /// A source IP of a pool.
        #[arg(long, conflicts_with = "pool", required_unless_present = "pool")]
        ip: Option<std::net::IpAddr>,
        /// A pool name.
        #[arg(long)]
        pool: Option<String>,
        /// Why, shown by `paused`.
        #[arg(long, default_value = "paused by ops")]
        reason: String,
    },
    /// Lifts a pause set by `pause` (or by the reputation monitor).
    Resume {
        #[arg(long, conflicts_with = "pool", required_unless_present = "pool")]
        ip: Option<std::net::IpAddr>,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Lists paused IPs and pools with their reasons.
    Paused,
    /// Adds a sending domain with a new DKIM key and prints the DNS record to publish.
    AddDomain {
        #[arg(long)]
        account: AccountId,
        #[arg(long)]
        domain: String,
        #[arg(long, default_value = "s1")]
        selector: String,
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
            _ => "sendmill-cli",
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
        Command::Migrate => migrate(&config).await,
        Command::Kafka(KafkaCommand::Check) => kafka_check(&config).await,
        Command::ValidateConfig => {
            println!("config ok\n{config:#?}");
            Ok(())
        }
        Command::Admin(admin) => run_admin(&config, admin).await,
        Command::Bench(Bench::Render { runs, seconds }) => {
            let report = sendmill::bench::render(runs.max(1), seconds)?;
            print_render_report(&report);
            Ok(())
        }
        Command::Bench(Bench::Deliver { runs, messages }) => {
            let report = sendmill::bench::deliver(&config, runs.max(1), messages.max(1)).await?;
            println!(
                "deliver bench: {} messages of ~{} B per run, {} runs, medians",
                report.messages_per_run, report.message_bytes, report.runs
            );
            for shape in &report.shapes {
                println!(
                    "  {:>2} domain(s): {:>6.0} delivered/s, {:>6.0} per CPU-second, runs {:?}; smtp-sink ceiling {:.0}/s",
                    shape.domains,
                    shape.delivered_per_sec,
                    shape.delivered_per_cpu_sec,
                    shape
                        .delivered_per_sec_runs
                        .iter()
                        .map(|r| r.round() as u64)
                        .collect::<Vec<_>>(),
                    shape.sink_ceiling_per_sec
                );
            }
            Ok(())
        }
        Command::Bench(Bench::Pipeline {
            seconds,
            rate,
            concurrency,
            recipients,
            domains,
            drain_timeout,
            postfix,
            postfix_script,
            report,
        }) => {
            let options = sendmill::bench::pipeline::PipelineOptions {
                seconds,
                rate,
                concurrency: concurrency.max(1),
                recipients_per_request: recipients.clamp(1, 1000),
                domains: domains.clamp(1, 50),
                drain_timeout,
                postfix,
                postfix_script,
            };
            // Interrupted, the bench's future is dropped, and with it its processes.
            let interrupted = shutdown::on_signals();
            let figures = tokio::select! {
                figures = sendmill::bench::pipeline::pipeline(&config, &options) => figures?,
                _ = interrupted.cancelled() => bail!("interrupted"),
            };
            print_pipeline_report(&figures);
            let json = serde_json::to_string_pretty(&figures)?;
            if let Some(path) = report {
                std::fs::write(&path, &json)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{json}");
            Ok(())
        }
        Command::Bench(Bench::Ingest {
            runs,
            seconds,
            concurrency,
        }) => {
            let report =
                sendmill::bench::ingest(&config, runs.max(1), seconds, concurrency.max(1)).await?;
            println!(
                "ingest bench: {} B HTML, {} runs x {} s after a warm-up, {} connections, medians",
                report.html_bytes, report.runs, report.seconds_per_run, report.concurrency
            );
            for shape in &report.shapes {
                println!(
                    "  {:>3} recipient(s)/request: {:>8.0} recipients/s ({:>7.0} requests/s), p50 {:.1} ms, p99 {:.1} ms, runs {:?}",
                    shape.recipients_per_request,
                    shape.recipients_per_sec,
                    shape.requests_per_sec,
                    shape.p50_ms,
                    shape.p99_ms,
                    shape
                        .recipients_per_sec_runs
                        .iter()
                        .map(|r| r.round() as u64)
                        .collect::<Vec<_>>()
                );
            }
            println!(
                "{}",
                serde_json::to_string(&report).expect("report encodes")
            );
            Ok(())
        }
        Command::Seed {
            domain,
            dnsmasq_dir,
        } => seed(&config, &domain, dnsmasq_dir.as_deref()).await,
    }
}

#[allow(
    clippy::print_stdout,
    reason = "a report for the person who ran the command"
)]
fn print_render_report(r: &sendmill::bench::RenderReport) {
    println!(
        "render bench: {} B HTML, {} variables, {} runs x {} s, one thread, medians\n\
         raw RSA-2048 signatures/s      {:>9.0}\n\
         raw Ed25519 signatures/s       {:>9.0}\n\
         rendered+signed RSA-2048/s     {:>9.0}  ({:.0}% of the raw RSA rate)\n\
         rendered+signed RSA+Ed25519/s  {:>9.0}\n\
         of which: build only/s         {:>9.0}  ({:.0} µs each)\n\
         of which: sign only/s          {:>9.0}  ({:.0} µs each)",
        r.html_bytes,
        r.variables,
        r.runs,
        r.seconds_per_run,
        r.raw_rsa2048_signatures,
        r.raw_ed25519_signatures,
        r.rendered_rsa2048,
        r.rsa_ratio * 100.0,
        r.rendered_dual,
        r.build_only,
        1e6 / r.build_only,
        r.seal_only,
        1e6 / r.seal_only,
    );
    println!("{}", serde_json::to_string(r).expect("report encodes"));
}

#[allow(
    clippy::print_stdout,
    reason = "a report for the person who ran the command"
)]
fn print_pipeline_report(r: &sendmill::bench::pipeline::PipelineReport) {
    let offered = r
        .offered_rate
        .map_or("as fast as ingest answers".to_owned(), |rate| {
            format!("{rate:.0} recipients/s offered")
        });
    println!(
        "pipeline bench: {} s of load, {offered}, {} in flight, {} recipient(s)/request, \
         {} domains, {} B HTML -> {} B signed messages, broker: {}",
        r.seconds,
        r.concurrency,
        r.recipients_per_request,
        r.domains,
        r.html_bytes,
        r.message_bytes,
        r.broker
    );
    println!(
        "  accepted   {:>8} ({:.0}/s){}",
        r.accepted,
        r.accepted_per_sec,
        if r.refused_requests.is_empty() {
            String::new()
        } else {
            format!(", refused requests {:?}", r.refused_requests)
        }
    );
    println!(
        "  delivered  {:>8} ({:.0}/s under load after {:.0} s, {:.0}/s first request to last delivery; drained in {:.1} s)",
        r.delivered, r.delivered_per_sec, r.settle_seconds, r.delivered_per_sec_overall, r.drain_seconds
    );
    println!(
        "  not delivered {:?}, deferrals {}, unfinished {}",
        r.not_delivered, r.deferred, r.unfinished
    );
    let l = &r.latency_ms;
    println!(
        "  202 -> delivered: p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} messages)",
        l.p50, l.p95, l.p99, l.max, l.samples
    );
    println!(
        "  machine busy {:.0}% of {} cores; per process (CPU s, per 1,000 delivered, RSS MiB):",
        r.machine_busy * 100.0,
        r.cores
    );
    for p in &r.processes {
        println!(
            "    {:<40} {:>8.1} s {:>7.3} s {:>8.0} MiB",
            p.name, p.cpu_seconds, p.cpu_seconds_per_1000, p.rss_mib
        );
    }
    let c = &r.ceilings;
    println!(
        "  ceilings: smtp-sink {:.0}/s, raw RSA-2048 {:.0}/s per core, Redis EVALSHA {:.0}/s",
        c.smtp_sink_per_sec, c.rsa2048_signatures_per_core, c.redis_evalsha_per_sec
    );
    if let Some(p) = &r.postfix {
        println!(
            "  postfix: {} of {} delivered in {:.1} s = {:.0}/s (machine busy {:.0}%); Sendmill/postfix = {:.2}",
            p.delivered,
            p.messages,
            p.seconds,
            p.delivered_per_sec,
            p.machine_busy * 100.0,
            p.sendmill_ratio
        );
    }
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

async fn migrate(config: &SendmillConfig) -> anyhow::Result<()> {
    let store = Store::connect(&config.postgres.url, 2)
        .await
        .context("connecting to PostgreSQL")?;
    store.migrate().await.context("PostgreSQL migrations")?;
    tracing::info!("PostgreSQL schema is up to date");
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

async fn kafka_check(config: &SendmillConfig) -> anyhow::Result<()> {
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

async fn connect_store(config: &SendmillConfig) -> anyhow::Result<Store> {
    let store = Store::connect(&config.postgres.url, 2)
        .await
        .context("connecting to PostgreSQL")?;
    store.migrate().await.context("PostgreSQL migrations")?;
    Ok(store)
}

async fn run_admin(config: &SendmillConfig, admin: Admin) -> anyhow::Result<()> {
    use sendmill_platform::pauses::{self, Target};
    let target = |ip: Option<std::net::IpAddr>, pool: Option<String>| match (ip, pool) {
        (Some(ip), _) => Target::Ip(ip),
        (None, Some(pool)) => Target::Pool(pool),
        (None, None) => unreachable!("clap requires one"),
    };
    let prefix = &config.redis.key_prefix;
    match admin {
        Admin::Pause { ip, pool, reason } => {
            let mut redis = sendmill_platform::clients::redis(&config.redis).await?;
            let target = target(ip, pool);
            pauses::pause(&mut redis, prefix, &target, &reason).await?;
            println!("paused {}", target.member());
            return Ok(());
        }
        Admin::Resume { ip, pool } => {
            let mut redis = sendmill_platform::clients::redis(&config.redis).await?;
            let target = target(ip, pool);
            let was = pauses::resume(&mut redis, prefix, &target).await?;
            println!(
                "{} {}",
                if was { "resumed" } else { "was not paused:" },
                target.member()
            );
            return Ok(());
        }
        Admin::Paused => {
            let mut redis = sendmill_platform::clients::redis(&config.redis).await?;
            for (member, reason) in pauses::list(&mut redis, prefix).await? {
                println!("{member}\t{reason}");
            }
            return Ok(());
        }
        _ => {}
    }
    let store = connect_store(config).await?;
    match admin {
        Admin::Pause { .. } | Admin::Resume { .. } | Admin::Paused => unreachable!("handled above"),
        Admin::CreateAccount { name, operator } => {
            let id = store.create_account(&name).await?;
            if operator {
                store.set_operator(id, true).await?;
            }
            println!("{id}");
        }
        Admin::CreateKey {
            account,
            name,
            scopes,
        } => println!(
            "{}",
            store
                .create_api_key(account, &name, &scopes)
                .await?
                .plaintext
        ),
        Admin::AddDomain {
            account,
            domain,
            selector,
        } => {
            let added = store
                .add_sending_domain(account, &domain, &selector)
                .await?;
            println!("Publish these DNS records, then send from any address @{domain}:");
            for (name, value) in added.dkim_records() {
                println!("{name} TXT \"{value}\"");
            }
        }
        Admin::PutPartial {
            account,
            name,
            file,
        } => {
            let source = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            sendmill_render::templates::Templates::with_partials(&[(name.clone(), source.clone())])
                .map_err(|e| anyhow::anyhow!("the partial does not compile: {e}"))?;
            store.put_partial(account, &name, &source).await?;
            println!("partial {name} saved");
        }
        Admin::Tracking {
            account,
            opens,
            clicks,
        } => {
            let settings = sendmill_store::AccountSettings {
                track_opens: opens,
                track_clicks: clicks,
            };
            store.set_tracking_defaults(account, &settings).await?;
            println!("tracking defaults: opens {opens}, clicks {clicks}");
        }
        Admin::DualSign {
            account,
            domain,
            on,
        } => {
            if !store.set_dual_sign(account, &domain, on).await? {
                bail!("the account has no sending domain {domain} with an Ed25519 key");
            }
            println!(
                "dual signing of {domain}: {}",
                if on { "on" } else { "off" }
            );
        }
    }
    Ok(())
}

async fn seed(
    config: &SendmillConfig,
    domain: &str,
    dnsmasq_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let store = connect_store(config).await?;
    let account = match store.account_by_name("dev").await? {
        Some(id) => id,
        None => store.create_account("dev").await?,
    };
    let sending = match store.sending_domain(account, domain).await? {
        Some(existing) => existing,
        None => store.add_sending_domain(account, domain, "s1").await?,
    };
    if let Some(dir) = dnsmasq_dir {
        let (name, value) = sending.dkim_record();
        // A TXT string holds at most 255 bytes; verifiers join the pieces.
        let pieces: Vec<String> = value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        let file = dir.join(format!("dkim-{domain}.conf"));
        std::fs::write(&file, format!("txt-record={name},{}\n", pieces.join(",")))
            .with_context(|| format!("writing {}", file.display()))?;
        eprintln!("wrote the DKIM record for {domain} to {}", file.display());
    }
    let key = store.create_api_key(account, "seed", &Scope::ALL).await?;
    eprintln!("account dev ({account}), sending domain {domain}, new API key:");
    println!("{}", key.plaintext);
    Ok(())
}
