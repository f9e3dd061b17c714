//! `sendmill bench pipeline`: the whole pipeline, measured from the outside.
//!
//! Ingest, render, dispatcher and analytics run as four `sendmill` processes on the
//! configured Kafka (`kafka.brokers`, the run's topics under a prefix of their own),
//! exactly as they are deployed, so each one's CPU time and peak memory can be read from
//! /proc; so are the Kafka broker's (a local `java … kafka.Kafka`), Redis', PostgreSQL's,
//! ClickHouse's and the sinks'. A load
//! generator in this process posts the ~15 KB, 15-variable template to the real send API
//! over keep-alive HTTP, at a fixed offered rate or as fast as ingest answers; every
//! message is RSA-2048 DKIM-signed and delivered over SMTP to the smtp-sink hosts of N
//! destination domains (`BENCH_SINKS=1 deploy/local/start-services.sh`). This process
//! also reads the events topic: a message's latency runs from the 202 that accepted it to
//! its `delivered` event's timestamp. Consumer-group lag is asked of the broker every
//! second.
//!
//! A message that never reached an end by the drain timeout is reported `unfinished`.
//!
//! Afterwards, in the same run, the ceilings the figure cannot pass: smtp-source straight
//! into the same sinks, the raw RSA-2048 signing rate, and the rate of the send API's
//! Redis script by EVALSHA. With `--postfix`, Debian's postfix relays the same message to
//! the same sinks, fed by its own smtp-source, for the ratio.
//!
//! Why one file of ~1,100 lines: it is one measurement procedure (start the processes,
//! offer load, drain, read /proc, measure the ceilings) read from top to bottom; the
//! helpers it needs (/proc parsing, percentiles, the load generator) serve no other code.

use anyhow::{bail, Context};
use sendmill_platform::kafka::{
    self,
    lag::{GroupTopics, LagProbe},
    Handled, KafkaConnection,
};
use sendmill_wire::{EventType, EventV1, Lane, MessageId, RetryTier};
use serde::Serialize;
use std::{
    collections::{BTreeMap, HashMap},
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use time::OffsetDateTime;

use super::{median, send_body, template};
use crate::SendmillConfig;

/// What to run.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Seconds of load.
    pub seconds: f64,
    /// Recipients per second offered; `None`: as fast as ingest answers `concurrency`
    /// requests in flight.
    pub rate: Option<f64>,
    /// Requests in flight at most.
    pub concurrency: usize,
    pub recipients_per_request: usize,
    /// Destination domains d1–dN.test (the bench sinks serve 50).
    pub domains: usize,
    /// Seconds to wait after the load for every message to end.
    pub drain_timeout: f64,
    /// Run Debian's postfix over the same sinks and report the ratio.
    pub postfix: bool,
    /// The script that runs postfix for the comparison.
    pub postfix_script: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct PipelineReport {
    pub host: super::Host,
    pub seconds: f64,
    pub offered_rate: Option<f64>,
    pub concurrency: usize,
    pub recipients_per_request: usize,
    pub domains: usize,
    pub html_bytes: usize,
    /// One rendered, signed message as the sinks receive it.
    pub message_bytes: usize,
    pub broker: String,
    /// Recipients the send API answered 202 for, and per second of load.
    pub accepted: u64,
    pub accepted_per_sec: f64,
    /// Requests answered anything but 202, by status.
    pub refused_requests: BTreeMap<u16, u64>,
    pub delivered: u64,
    /// Delivered per second while the load ran, after the pipeline filled
    /// (`settle_seconds`): the rate every stage sustains at once.
    pub delivered_per_sec: f64,
    pub settle_seconds: f64,
    /// Delivered per second from the first request to the last delivery.
    pub delivered_per_sec_overall: f64,
    /// Seconds from the end of the load to the last terminal event.
    pub drain_seconds: f64,
    /// Terminal events other than `delivered`, by type; deferrals seen.
    pub not_delivered: BTreeMap<String, u64>,
    pub deferred: u64,
    /// Accepted messages with no terminal event when the bench gave up waiting.
    pub unfinished: u64,
    /// 202 to `delivered`, milliseconds.
    pub latency_ms: Percentiles,
    /// Per process, from the start of the load to the last delivery.
    pub processes: Vec<ProcessFigures>,
    /// The machine's busy share of all its cores over the same span (0–1).
    pub machine_busy: f64,
    pub cores: usize,
    /// Delivered per second, one entry per second of the run (load, then drain).
    pub delivered_over_time: Vec<u64>,
    /// Each consumer group's lag, sampled every second.
    pub lag_over_time: Vec<LagSample>,
    pub ceilings: Ceilings,
    pub postfix: Option<PostfixFigures>,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: usize,
}

#[derive(Debug, Serialize)]
pub struct ProcessFigures {
    pub name: String,
    pub cpu_seconds: f64,
    pub cpu_seconds_per_1000: f64,
    /// Peak resident set (VmHWM) for Sendmill's processes; current RSS for the others.
    pub rss_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct LagSample {
    pub second: f64,
    pub lag: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize)]
pub struct Ceilings {
    /// smtp-source (64 sessions per sink) straight into the same sinks, same size.
    pub smtp_sink_per_sec: f64,
    /// Raw RSA-2048 signatures per second on one core.
    pub rsa2048_signatures_per_core: f64,
    /// The send API's rate-limit script by EVALSHA, 64 in flight on one connection.
    pub redis_evalsha_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct PostfixFigures {
    pub messages: u64,
    pub delivered: u64,
    pub seconds: f64,
    pub delivered_per_sec: f64,
    /// Sendmill's `delivered_per_sec` over postfix's.
    pub sendmill_ratio: f64,
    pub machine_busy: f64,
}

/// The consumer groups whose lag is sampled, by the stage names used in the report.
fn groups(config: &SendmillConfig, kafka: &KafkaConnection) -> Vec<(&'static str, GroupTopics)> {
    let topics = &kafka.topics;
    let lanes = |f: &dyn Fn(Lane) -> String| Lane::ALL.iter().map(|&l| f(l)).collect();
    vec![
        (
            "render",
            GroupTopics {
                group_id: config.render.group_id.clone(),
                topics: lanes(&|l| topics.requested(l)),
            },
        ),
        (
            "dispatcher",
            GroupTopics {
                group_id: config.dispatcher.group_id.clone(),
                topics: lanes(&|l| topics.ready(l)),
            },
        ),
        (
            "retry",
            GroupTopics {
                group_id: config.dispatcher.retry_group_id.clone(),
                topics: Lane::ALL
                    .iter()
                    .flat_map(|&l| RetryTier::ALL.map(|t| topics.retry(l, t)))
                    .collect(),
            },
        ),
        (
            "analytics",
            GroupTopics {
                group_id: config.analytics.group_id.clone(),
                topics: vec![topics.events()],
            },
        ),
        (
            "webhooks",
            GroupTopics {
                group_id: config.analytics.webhooks.group_id.clone(),
                topics: vec![topics.events()],
            },
        ),
    ]
}

/// A `sendmill` child process, killed when dropped.
pub(crate) struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    pub(crate) fn spawn(
        name: &'static str,
        config_file: &Path,
        subcommand: &str,
        env: &[(&str, String)],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log)?;
        let child = Command::new(std::env::current_exe()?)
            .args(["--config", &config_file.to_string_lossy(), subcommand])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("SENDMILL_BENCH_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting sendmill {subcommand}"))?;
        Ok(Self { name, child, log })
    }

    pub(crate) fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Waits until `addr` accepts TCP connections, polling every 100 ms for at most
    /// 60 s. Errors: the process died (with the end of its log), or it did not listen in
    /// time.
    pub(crate) async fn wait_listening(
        &mut self,
        addr: std::net::SocketAddr,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            self.check_alive()?;
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "sendmill {} did not listen at {addr} within 60 s",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// An error saying this process died, with the end of its log.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "sendmill {} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where this run's processes listen, and its names.
pub(crate) struct Run {
    pub(crate) id: String,
    pub(crate) dir: PathBuf,
    pub(crate) config: SendmillConfig,
    pub(crate) ingest: std::net::SocketAddr,
    pub(crate) analytics: std::net::SocketAddr,
    pub(crate) render_ops: std::net::SocketAddr,
    pub(crate) dispatcher_ops: std::net::SocketAddr,
}

impl Run {
    pub(crate) fn new(base: &SendmillConfig) -> anyhow::Result<Self> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let dir = std::env::temp_dir().join(format!("sendmill-bench-{id}"));
        std::fs::create_dir_all(&dir)?;
        let mut config = base.clone();
        config.kafka.topic_prefix = format!("bench{id}.");
        config.redis.key_prefix = format!("bench{id}:");
        config.clickhouse.database = format!("sendmill_bench_{id}");
        config.dispatcher.journal_dir = dir.join("journal").to_string_lossy().into_owned();
        config.ingest.allow_unverified_domains = true;
        Ok(Self {
            id,
            dir,
            config,
            ingest: free_addr()?,
            analytics: free_addr()?,
            render_ops: free_addr()?,
            dispatcher_ops: free_addr()?,
        })
    }

    /// This run's PostgreSQL schema and ClickHouse database, and its tenant: the store,
    /// the tenant's sending domain and its send key.
    pub(crate) async fn prepare(
        &self,
    ) -> anyhow::Result<(sendmill_store::Store, sendmill_store::SendingDomain, String)> {
        let config = &self.config;
        let store = sendmill_store::Store::connect(&config.postgres.url, 4)
            .await
            .context("connecting to PostgreSQL")?;
        store.migrate().await?;
        sendmill_analytics::schema::migrate(&config.clickhouse)
            .await
            .context("creating the bench's ClickHouse database")?;
        let (sending, key) = super::tenant(&store, &self.id).await?;
        Ok((store, sending, key))
    }

    /// The stages' config file: this run's names and ports. Endpoints and secrets reach
    /// the processes as the `SENDMILL_*` variables of [`Run::endpoint_env`].
    pub(crate) fn write_config(&self) -> anyhow::Result<PathBuf> {
        let c = &self.config;
        let list = |v: &[String]| {
            let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
            format!("[{}]", quoted.join(", "))
        };
        let toml = format!(
            "[kafka]\ntopic_prefix = {:?}\npartitions = {}\nreplication_factor = {}\n\
             min_insync_replicas = {}\nrequested_version = {}\n\
             [redis]\nkey_prefix = {:?}\n\
             [clickhouse]\ndatabase = {:?}\n\
             [telemetry]\nlog_format = \"text\"\n\
             [ingest]\nlisten = \"{}\"\nallow_unverified_domains = true\n\
             [ingest.domains]\nnameservers = {}\n\
             [render]\nops_listen = \"{}\"\n\
             [dispatcher]\nops_listen = \"{}\"\nnameservers = {}\nhelo_name = {:?}\njournal_dir = {:?}\n\
             [analytics]\nlisten = \"{}\"\n",
            c.kafka.topic_prefix,
            c.kafka.partitions,
            c.kafka.replication_factor,
            c.kafka.min_insync_replicas,
            c.kafka.requested_version,
            c.redis.key_prefix,
            c.clickhouse.database,
            self.ingest,
            list(&c.ingest.domains.nameservers),
            self.render_ops,
            self.dispatcher_ops,
            list(&c.dispatcher.nameservers),
            c.dispatcher.helo_name,
            c.dispatcher.journal_dir,
            self.analytics,
        );
        let path = self.dir.join("sendmill.toml");
        std::fs::write(&path, toml)?;
        Ok(path)
    }

    /// Starts `sendmill <subcommand>` for this run: `config_file`, the endpoints and
    /// secrets of [`Run::endpoint_env`], and its log at `<dir>/<name>.log`. Errors: the
    /// binary cannot be started.
    pub(crate) fn spawn(
        &self,
        name: &'static str,
        subcommand: &str,
        config_file: &Path,
    ) -> anyhow::Result<Process> {
        Process::spawn(
            name,
            config_file,
            subcommand,
            &self.endpoint_env(),
            &self.dir,
        )
    }

    pub(crate) fn endpoint_env(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        vec![
            ("SENDMILL_KAFKA_BROKERS", c.kafka.brokers.clone()),
            ("SENDMILL_REDIS_URL", c.redis.url.clone()),
            ("SENDMILL_DATABASE_URL", c.postgres.url.clone()),
            ("SENDMILL_CLICKHOUSE_URL", c.clickhouse.url.clone()),
            ("SENDMILL_CLICKHOUSE_USER", c.clickhouse.user.clone()),
            (
                "SENDMILL_CLICKHOUSE_PASSWORD",
                c.clickhouse.password.clone(),
            ),
        ]
    }
}

pub(crate) fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// What the events reader saw, shared with the progress line.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) delivered: AtomicU64,
    pub(crate) terminal: AtomicU64,
    deferred: AtomicU64,
    /// Every delivered message and when (including the warm-up's).
    pub(crate) delivered_at: Mutex<HashMap<MessageId, OffsetDateTime>>,
    not_delivered: Mutex<BTreeMap<String, u64>>,
}

/// What the load generator did.
#[derive(Default)]
pub(crate) struct Load {
    pub(crate) accepted: AtomicU64,
    pub(crate) accepted_at: Mutex<HashMap<MessageId, OffsetDateTime>>,
    pub(crate) refused: Mutex<BTreeMap<u16, u64>>,
}

#[derive(serde::Deserialize)]
struct SendResponse {
    messages: Vec<Recipient>,
}

#[derive(serde::Deserialize)]
struct Recipient {
    message_id: Option<MessageId>,
}

pub async fn pipeline(
    base: &SendmillConfig,
    options: &PipelineOptions,
) -> anyhow::Result<PipelineReport> {
    super::require_bench_sinks(options.domains.clamp(1, 10)).await?;
    let run = Run::new(base)?;
    let config = &run.config;

    let (_store, sending, key) = run.prepare().await?;
    let domain = sending.domain.clone();

    let config_file = run.write_config()?;
    let mut processes = Vec::new();
    let topics = super::BenchTopics::create(config).await?;
    for (name, subcommand) in [
        ("ingest", "ingest"),
        ("render", "render"),
        ("dispatcher", "dispatch"),
        ("analytics", "analytics"),
    ] {
        processes.push(run.spawn(name, subcommand, &config_file)?);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .build()?;
    for addr in [
        run.ingest,
        run.analytics,
        run.render_ops,
        run.dispatcher_ops,
    ] {
        wait_healthy(&http, addr, &mut processes).await?;
    }

    // The events reader.
    let kafka = KafkaConnection::new(config.kafka.brokers.clone(), config.kafka.clone());
    let seen = Arc::new(Seen::default());
    let reader_stop = sendmill_platform::CancellationToken::new();
    let reader = read_events(&kafka, &run.id, seen.clone(), reader_stop.clone());
    let (group_names, groups): (Vec<&str>, Vec<GroupTopics>) =
        groups(config, &kafka).into_iter().unzip();
    let probe = {
        let kafka = kafka.clone();
        Arc::new(
            tokio::task::spawn_blocking(move || {
                LagProbe::new(&kafka, groups, Duration::from_secs(5))
            })
            .await??,
        )
    };

    let (html, text) = template();
    let url = format!("http://{}/v1/messages", run.ingest);
    // Warm-up: every consumer group joined and every connection made before the clock.
    eprintln!("bench: warming up (consumer groups join, SMTP sessions open)…");
    let warmup = Load::default();
    let warmup_body = bytes::Bytes::from(send_body(&domain, &html, &text, 10, 0, options.domains));
    for _ in 0..5 {
        post(&http, &url, &key, warmup_body.clone(), &warmup).await?;
    }
    let warm = warmup.accepted.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.terminal.load(Ordering::Relaxed) < warm {
        if Instant::now() > deadline {
            bail!(
                "warm-up: {} of {warm} messages ended within 120 s (logs in {})",
                seen.terminal.load(Ordering::Relaxed),
                run.dir.display()
            );
        }
        for p in &mut processes {
            p.check_alive()?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let baseline_terminal = seen.terminal.load(Ordering::Relaxed);
    let baseline_delivered = seen.delivered.load(Ordering::Relaxed);

    // Distinct recipients per request, reused in turn.
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..64)
            .map(|i| {
                bytes::Bytes::from(send_body(
                    &domain,
                    &html,
                    &text,
                    options.recipients_per_request,
                    i * options.recipients_per_request,
                    options.domains,
                ))
            })
            .collect(),
    );
    let load = Arc::new(Load::default());
    let others_before = other_processes_cpu();
    let cpu_before: Vec<f64> = processes
        .iter()
        .map(|p| super::cpu_seconds(&p.pid()).unwrap_or(0.0))
        .collect();
    let machine_before = machine_ticks();
    let bench_cpu_before = super::process_cpu_seconds();
    let started = Instant::now();
    let started_wall = OffsetDateTime::now_utc();
    let load_until = started + Duration::from_secs_f64(options.seconds);
    let generator = {
        let (http, url, key, bodies, load) = (
            http.clone(),
            url.clone(),
            key.clone(),
            bodies.clone(),
            load.clone(),
        );
        let (concurrency, rate, per_request) = (
            options.concurrency,
            options.rate,
            options.recipients_per_request,
        );
        tokio::spawn(async move {
            generate(
                &http,
                &url,
                &key,
                &bodies,
                &load,
                concurrency,
                rate.map(|r| r / per_request as f64),
                load_until,
            )
            .await
        })
    };

    // Progress and lag, every second, until the load is over and every message ended.
    let interactive = std::io::stderr().is_terminal();
    let mut lag_over_time = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let drain_deadline = load_until + Duration::from_secs_f64(options.drain_timeout);
    let mut generator = Some(generator);
    let mut previous = (0u64, 0u64);
    let mut load_ended_at = None;
    loop {
        tick.tick().await;
        for p in &mut processes {
            p.check_alive()?;
        }
        if generator.as_ref().is_some_and(|g| g.is_finished()) {
            generator.take().expect("checked").await??;
            load_ended_at = Some(Instant::now());
        }
        let second = started.elapsed().as_secs_f64();
        let probe = probe.clone();
        let lags = tokio::task::spawn_blocking(move || probe.sample()).await?;
        let lag: BTreeMap<String, i64> = match lags {
            Ok(lags) => group_names
                .iter()
                .zip(lags)
                .map(|(name, (_, lag))| ((*name).to_owned(), lag))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "lag sample failed");
                BTreeMap::new()
            }
        };
        let accepted = load.accepted.load(Ordering::Relaxed);
        let delivered = seen.delivered.load(Ordering::Relaxed) - baseline_delivered;
        let ended = seen.terminal.load(Ordering::Relaxed) - baseline_terminal;
        let line = format!(
            "{second:>5.0} s  accepted {accepted:>8} ({:>5}/s)  delivered {delivered:>8} ({:>5}/s)  lag {}",
            accepted - previous.0,
            delivered - previous.1,
            lag.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if interactive {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        previous = (accepted, delivered);
        lag_over_time.push(LagSample { second, lag });
        if generator.is_none() && ended >= accepted {
            break;
        }
        if Instant::now() > drain_deadline {
            eprintln!(
                "\nbench: {} of {accepted} messages had not ended {} s after the load",
                accepted - ended,
                options.drain_timeout
            );
            break;
        }
    }
    if interactive {
        eprintln!();
    }
    let finished = Instant::now();
    let machine_busy = machine_busy_share(machine_before, machine_ticks());
    let mut figures = Vec::new();
    let delivered_total = (seen.delivered.load(Ordering::Relaxed) - baseline_delivered).max(1);
    let per_1000 = |cpu: f64| cpu / delivered_total as f64 * 1000.0;
    for (p, before) in processes.iter().zip(&cpu_before) {
        let cpu = super::cpu_seconds(&p.pid()).unwrap_or(0.0) - before;
        figures.push(ProcessFigures {
            name: p.name.to_owned(),
            cpu_seconds: cpu,
            cpu_seconds_per_1000: per_1000(cpu),
            rss_mib: peak_rss_mib(&p.pid()).unwrap_or(0.0),
        });
    }
    let bench_cpu = super::process_cpu_seconds() - bench_cpu_before;
    for (name, (cpu, rss)) in other_processes_cpu() {
        let before = others_before.get(&name).map(|b| b.0).unwrap_or(0.0);
        figures.push(ProcessFigures {
            name,
            cpu_seconds: cpu - before,
            cpu_seconds_per_1000: per_1000(cpu - before),
            rss_mib: rss,
        });
    }
    figures.push(ProcessFigures {
        name: "bench (load generator, events reader)".into(),
        cpu_seconds: bench_cpu,
        cpu_seconds_per_1000: per_1000(bench_cpu),
        rss_mib: peak_rss_mib("self").unwrap_or(0.0),
    });

    reader_stop.cancel();
    let _ = reader.await;
    drop(processes);
    drop_database(&run.config).await;
    topics.delete().await;

    // The figures.
    let load_seconds = load_ended_at
        .unwrap_or(load_until)
        .duration_since(started)
        .as_secs_f64();
    let accepted_at = std::mem::take(&mut *load.accepted_at.lock().expect("not poisoned"));
    let delivered_at = std::mem::take(&mut *seen.delivered_at.lock().expect("not poisoned"));
    let mut latencies = Vec::with_capacity(accepted_at.len());
    let mut per_second = Vec::new();
    let settle = (options.seconds / 5.0).min(5.0);
    let mut delivered_under_load = 0u64;
    let mut last_delivery = 0f64;
    for (id, accepted) in &accepted_at {
        let Some(delivered) = delivered_at.get(id) else {
            continue;
        };
        latencies.push(((*delivered - *accepted).as_seconds_f64() * 1000.0).max(0.0));
        let at = (*delivered - started_wall).as_seconds_f64().max(0.0);
        last_delivery = last_delivery.max(at);
        let slot = at as usize;
        if per_second.len() <= slot {
            per_second.resize(slot + 1, 0);
        }
        per_second[slot] += 1;
        if at >= settle && at <= load_seconds {
            delivered_under_load += 1;
        }
    }
    let delivered = latencies.len() as u64;
    let accepted = load.accepted.load(Ordering::Relaxed);
    let ended = seen.terminal.load(Ordering::Relaxed) - baseline_terminal;
    let delivered_per_sec = delivered_under_load as f64 / (load_seconds - settle).max(1e-3);
    let sample = sample_message(&sending, &html, &text)?;

    eprintln!("bench: measuring the ceilings…");
    let ceilings = Ceilings {
        smtp_sink_per_sec: super::sink_ceiling(options.domains.clamp(1, 10), 20_000, sample.len())
            .await?,
        rsa2048_signatures_per_core: rsa_rate(&sending)?,
        redis_evalsha_per_sec: evalsha_rate(base).await?,
    };
    let postfix = if options.postfix {
        eprintln!("bench: postfix over the same sinks…");
        let file = run.dir.join("message.eml");
        std::fs::write(&file, &sample)?;
        Some(postfix(options, &file, delivered_per_sec).await?)
    } else {
        None
    };
    let report = PipelineReport {
        host: super::Host::detect(),
        seconds: options.seconds,
        offered_rate: options.rate,
        concurrency: options.concurrency,
        recipients_per_request: options.recipients_per_request,
        domains: options.domains,
        html_bytes: html.len(),
        message_bytes: sample.len(),
        broker: format!("Apache Kafka at {}", config.kafka.brokers),
        accepted,
        accepted_per_sec: accepted as f64 / load_seconds,
        refused_requests: std::mem::take(&mut *load.refused.lock().expect("not poisoned")),
        delivered,
        delivered_per_sec,
        settle_seconds: settle,
        delivered_per_sec_overall: delivered as f64 / last_delivery.max(1e-3),
        drain_seconds: finished
            .duration_since(load_ended_at.unwrap_or(load_until))
            .as_secs_f64(),
        not_delivered: std::mem::take(&mut *seen.not_delivered.lock().expect("not poisoned")),
        deferred: seen.deferred.load(Ordering::Relaxed),
        unfinished: accepted.saturating_sub(ended),
        latency_ms: percentiles(latencies),
        processes: figures,
        machine_busy,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        delivered_over_time: per_second,
        lag_over_time,
        ceilings,
        postfix,
    };
    let _ = std::fs::remove_dir_all(&run.dir);
    Ok(report)
}

/// Reads the run's events topic into `seen` until `stop` (a group of its own).
pub(crate) fn read_events(
    kafka: &KafkaConnection,
    run_id: &str,
    seen: Arc<Seen>,
    stop: sendmill_platform::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), kafka::KafkaError>> {
    let spec = kafka::ConsumerSpec {
        stage: "bench",
        group_id: format!("bench-events-{run_id}"),
        topics: vec![kafka.topics.events()],
        concurrency: 4096,
    };
    let kafka = kafka.clone();
    tokio::spawn(async move {
        kafka::consumer::run(
            &kafka,
            spec,
            move |record| {
                let seen = seen.clone();
                async move {
                    let event: EventV1 = kafka::consumer::decode(&record)?;
                    seen.record(&event);
                    Ok(Handled::Done)
                }
            },
            stop,
        )
        .await
    })
}

impl Seen {
    fn record(&self, event: &EventV1) {
        match event.event_type {
            EventType::Delivered => {
                self.delivered_at
                    .lock()
                    .expect("not poisoned")
                    .insert(event.message_id, event.occurred_at);
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            EventType::Deferred => {
                self.deferred.fetch_add(1, Ordering::Relaxed);
            }
            other if other.is_terminal() => {
                *self
                    .not_delivered
                    .lock()
                    .expect("not poisoned")
                    .entry(other.as_str().to_owned())
                    .or_default() += 1;
            }
            _ => return,
        }
        if event.event_type.is_terminal() {
            self.terminal.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Posts one request; records its accepted recipients and when, or its refusal.
async fn post(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: bytes::Bytes,
    load: &Load,
) -> anyhow::Result<()> {
    let response = http
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    if status != reqwest::StatusCode::ACCEPTED {
        if status.is_server_error() && load.refused.lock().expect("not poisoned").is_empty() {
            tracing::warn!(%status, body = %String::from_utf8_lossy(&bytes), "ingest refused a request");
        }
        *load
            .refused
            .lock()
            .expect("not poisoned")
            .entry(status.as_u16())
            .or_default() += 1;
        return Ok(());
    }
    let at = OffsetDateTime::now_utc();
    let answer: SendResponse =
        serde_json::from_slice(&bytes).context("ingest's 202 body does not parse")?;
    let ids: Vec<MessageId> = answer
        .messages
        .iter()
        .filter_map(|m| m.message_id)
        .collect();
    load.accepted.fetch_add(ids.len() as u64, Ordering::Relaxed);
    let mut accepted_at = load.accepted_at.lock().expect("not poisoned");
    for id in ids {
        accepted_at.insert(id, at);
    }
    Ok(())
}

/// `concurrency` workers posting until `until`; with `requests_per_sec`, each keeps its
/// share of that schedule (catching up when a slow answer put it behind).
#[allow(
    clippy::too_many_arguments,
    reason = "one call site, all of it the load's shape"
)]
pub(crate) async fn generate(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    bodies: &Arc<Vec<bytes::Bytes>>,
    load: &Arc<Load>,
    concurrency: usize,
    requests_per_sec: Option<f64>,
    until: Instant,
) -> anyhow::Result<()> {
    let mut workers = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for worker in 0..concurrency {
        let (http, url, key, bodies, load) = (
            http.clone(),
            url.to_owned(),
            key.to_owned(),
            bodies.clone(),
            load.clone(),
        );
        let interval = requests_per_sec.map(|r| Duration::from_secs_f64(concurrency as f64 / r));
        workers.spawn(async move {
            let mut next = start
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(worker as f64 / concurrency as f64)
                });
            let mut n = worker;
            while Instant::now() < until {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next).await;
                    next += interval;
                    if Instant::now() >= until {
                        break;
                    }
                }
                post(&http, &url, &key, bodies[n % bodies.len()].clone(), &load).await?;
                n += concurrency;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

pub(crate) async fn wait_healthy(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
    processes: &mut [Process],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = http.get(format!("http://{addr}/healthz")).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        for p in processes.iter_mut() {
            p.check_alive()?;
        }
        if Instant::now() > deadline {
            bail!("nothing healthy at {addr} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn percentiles(mut values: Vec<f64>) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| values[((values.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50: pick(0.5),
        p95: pick(0.95),
        p99: pick(0.99),
        max: pick(1.0),
        samples: values.len(),
    }
}

/// VmHWM of `pid`, MiB.
pub(crate) fn peak_rss_mib(pid: &str) -> Option<f64> {
    status_kib(pid, "VmHWM:").map(|kib| kib / 1024.0)
}

fn status_kib(pid: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// The services the pipeline leans on, by command name: CPU seconds and RSS (MiB)
/// summed over their processes.
fn other_processes_cpu() -> BTreeMap<String, (f64, f64)> {
    const NAMES: [&str; 6] = [
        "java",
        "clickhouse-serv",
        "redis-server",
        "postgres",
        "smtp-sink",
        "dnsmasq",
    ];
    let mut found: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let comm = comm.trim();
        if let Some(name) = NAMES.iter().find(|n| comm == **n) {
            let name = match *name {
                "clickhouse-serv" => "clickhouse-server",
                "java" => {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if !String::from_utf8_lossy(&cmdline).contains("kafka.Kafka") {
                        continue;
                    }
                    "kafka"
                }
                name => name,
            };
            let slot = found.entry(name.to_owned()).or_default();
            slot.0 += super::cpu_seconds(&pid).unwrap_or(0.0);
            slot.1 += status_kib(&pid, "VmRSS:").unwrap_or(0.0) / 1024.0;
        }
    }
    found
}

/// (busy, total) clock ticks of all cores, from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait are the 4th and 5th.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn machine_busy_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1).max(1);
    after.0.saturating_sub(before.0) as f64 / total as f64
}

/// One message as render produces it for the bench's domain: its size sets the sinks'
/// ceiling, and postfix relays this very message.
fn sample_message(
    sending: &sendmill_store::SendingDomain,
    html: &str,
    text: &str,
) -> anyhow::Result<Vec<u8>> {
    use sendmill_render::{message, signing::SendingIdentity, templates::Templates};
    let mut request = super::request(html, text);
    request.from.email = format!("news@{}", sending.domain);
    request.account_id = sending.account_id;
    let now = OffsetDateTime::now_utc();
    let unsigned = message::build(&Templates::new(), message::Decorations::NONE, &request, now)?;
    let ready = SendingIdentity::new(sending)?.seal(&unsigned, &request, now, None)?;
    Ok(ready.message)
}

/// Raw RSA-2048 signatures per second on one core, with the bench domain's key.
pub(crate) fn rsa_rate(sending: &sendmill_store::SendingDomain) -> anyhow::Result<f64> {
    let signer = sendmill_render::dkim::DkimSigner::rsa(
        &sending.domain,
        &sending.dkim_selector,
        &sending.dkim_private_key_pkcs8,
        &["from"],
    )?;
    let tiny = b"From: a@example.test\r\n\r\nx\r\n";
    let runs: Vec<f64> = (0..3)
        .map(|_| super::rate(Duration::from_secs(1), || signer.sign(tiny, 0).map(drop)))
        .collect::<anyhow::Result<_>>()?;
    Ok(median(runs))
}

/// The send API's rate-limit script by EVALSHA, 64 calls in flight on one connection,
/// for two seconds.
async fn evalsha_rate(config: &SendmillConfig) -> anyhow::Result<f64> {
    use sendmill_tenancy::ratelimit::{Limits, SendLimiter};
    let redis = sendmill_platform::clients::redis(&config.redis).await?;
    let prefix = format!("bench{}:", uuid::Uuid::now_v7().simple());
    let limiter = Arc::new(SendLimiter::new(redis, &prefix));
    let account = sendmill_wire::AccountId::generate();
    let limits = Limits {
        per_sec: 1_000_000_000,
        per_day: 0,
    };
    // Loads the script once, outside the clock.
    limiter.admit(account, limits, 1).await?;
    let calls = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(2);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (limiter, calls) = (limiter.clone(), calls.clone());
        workers.spawn(async move {
            while Instant::now() < until {
                limiter.admit(account, limits, 1).await?;
                calls.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(calls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Runs `deploy/local/postfix-bench.sh MESSAGES DOMAINS FILE`: postfix relaying `file`
/// to d1–dN.test over the bench sinks, fed by smtp-source. Its last line is JSON.
async fn postfix(
    options: &PipelineOptions,
    message: &Path,
    sendmill_per_sec: f64,
) -> anyhow::Result<PostfixFigures> {
    let messages = 20_000u64;
    let script = options.postfix_script.clone();
    let args = [
        messages.to_string(),
        options.domains.clamp(1, 50).to_string(),
        message.to_string_lossy().into_owned(),
    ];
    let before = machine_ticks();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&script)
            .args(&args)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", script.display()))
    })
    .await??;
    let busy = machine_busy_share(before, machine_ticks());
    std::io::stderr().flush()?;
    if !output.status.success() {
        bail!("the postfix run failed ({})", output.status);
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        delivered: u64,
        seconds: f64,
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer: Answer = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("the postfix script's last line is not its JSON: {stdout}"))?;
    let per_sec = answer.delivered as f64 / answer.seconds.max(1e-3);
    Ok(PostfixFigures {
        messages,
        delivered: answer.delivered,
        seconds: answer.seconds,
        delivered_per_sec: per_sec,
        sendmill_ratio: sendmill_per_sec / per_sec.max(1e-3),
        machine_busy: busy,
    })
}

/// The bench's ClickHouse database goes with the run.
pub(crate) async fn drop_database(config: &SendmillConfig) {
    let client = sendmill_platform::clients::clickhouse_server(&config.clickhouse);
    let database = &config.clickhouse.database;
    if let Err(error) = client
        .query(&format!("DROP DATABASE IF EXISTS `{database}`"))
        .execute()
        .await
    {
        tracing::warn!(%error, %database, "could not drop the bench database");
    }
}
