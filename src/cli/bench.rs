//! `sendmill bench …`: runs a measurement of [`sendmill::bench`] and prints its report.

use anyhow::{bail, Context};
use clap::Subcommand;
use sendmill::SendmillConfig;
use sendmill_platform::shutdown;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Bench {
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
    /// A fixed amount of one part of the per-message work, with no clock: run it under
    /// `valgrind --tool=callgrind` to count instructions per message
    /// (deploy/local/callgrind.sh does, for every part). Prints the bytes produced.
    Work {
        /// The part of the work.
        #[arg(long, value_enum)]
        part: sendmill::bench::work::Part,
        /// Messages (for `plan`, rounded up to whole 100-recipient requests).
        #[arg(long, default_value_t = 100)]
        messages: usize,
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
    /// Bytes one large request writes to Kafka with its shared parts in every
    /// recipient's record (`kafka.requested_version = 2`) and written once (3), with its
    /// time to 202 and the ingest process's CPU and peak memory.
    Fanout {
        /// Recipients of the request.
        #[arg(long, default_value_t = 1000)]
        recipients: usize,
        /// Size of its attachment, bytes (random, incompressible).
        #[arg(long, default_value_t = 2 * 1024 * 1024)]
        attachment_bytes: usize,
        /// Runs per record version; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Messages/s through SMTP submission (STARTTLS, AUTH PLAIN, pipelined transactions,
    /// one recipient each) into a `sendmill ingest` child process, and its CPU per 1,000
    /// messages, against PostgreSQL, Redis and Kafka (as configured).
    Submission {
        /// Measured runs (after one warm-up); medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Parallel SMTP sessions.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Size of each message in bytes.
        #[arg(long, default_value_t = 20_000)]
        bytes: usize,
        /// Directory of `submission.pem` and `submission.key` (made by
        /// deploy/local/start-services.sh).
        #[arg(
            long,
            default_value = "/var/tmp/sendmill-local/ca",
            env = "SENDMILL_BENCH_CERTIFICATES"
        )]
        certificates: PathBuf,
    },
    /// Returned mail: ~10 KB DSNs classified on one thread, then received over SMTP and
    /// processed by a `sendmill inbound` child process (received/s, processed/s, CPU per
    /// 1,000), against PostgreSQL, Redis, Kafka and ClickHouse (as configured).
    Inbound {
        /// Measured runs (after one warm-up); medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// DSNs per run.
        #[arg(long, default_value_t = 5_000)]
        messages: usize,
        /// Parallel SMTP sessions.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Size of each DSN in bytes.
        #[arg(long, default_value_t = 10_000)]
        bytes: usize,
    },
    /// Contacts imported per second (a CSV with 10 attribute columns through the import
    /// API into a `sendmill analytics` child process) and its peak RSS, then segment
    /// counts over the imported contacts, against PostgreSQL, Redis, Kafka and ClickHouse
    /// (as configured).
    Import {
        /// Imports (each of new addresses into a new list); medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Rows per import.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Counts per segment; the median is reported.
        #[arg(long, default_value_t = 5)]
        count_runs: usize,
    },
    /// A campaign to a list of `contacts` sent unthrottled through the whole pipeline as
    /// separate processes into the bench sinks: its release rate and delivered/s, and a
    /// steady transactional stream's 202-to-delivered p50/p99 alone and while the
    /// campaign drains (the priority lanes).
    Campaign {
        /// Contacts in the list.
        #[arg(long, default_value_t = 100_000)]
        contacts: usize,
        /// Transactional single-recipient requests per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Seconds of the transactional stream alone first.
        #[arg(long, default_value_t = 20.0)]
        baseline_seconds: f64,
        /// Destination domains (bench sinks d1–dN.test, at most 10).
        #[arg(long, default_value_t = 10)]
        domains: usize,
        /// Seconds to wait for the campaign to be delivered.
        #[arg(long, default_value_t = 900.0)]
        timeout: f64,
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

/// Runs `bench` and prints its report (and its JSON).
pub async fn run(config: &SendmillConfig, bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Render { runs, seconds } => {
            let report = sendmill::bench::render(runs.max(1), seconds)?;
            print_render_report(&report);
            Ok(())
        }
        Bench::Work { part, messages } => {
            let bytes = sendmill::bench::work::work(part, messages)?;
            println!("work {part:?}: {messages} messages, {bytes} bytes produced");
            Ok(())
        }
        Bench::Deliver { runs, messages } => {
            let report = sendmill::bench::deliver(config, runs.max(1), messages.max(1)).await?;
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
        Bench::Pipeline {
            seconds,
            rate,
            concurrency,
            recipients,
            domains,
            drain_timeout,
            postfix,
            postfix_script,
            report,
        } => {
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
                figures = sendmill::bench::pipeline::pipeline(config, &options) => figures?,
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
        Bench::Campaign {
            contacts,
            rate,
            baseline_seconds,
            domains,
            timeout,
        } => {
            let options = sendmill::bench::campaign::CampaignOptions {
                contacts: contacts.max(1),
                transactional_rate: rate,
                baseline_seconds,
                domains: domains.clamp(1, 10),
                timeout,
            };
            let r = sendmill::bench::campaign::campaign(config, &options).await?;
            println!(
                "campaign bench: {} contacts, {} B HTML, {} destination domains, {}",
                r.contacts, r.html_bytes, r.domains, r.broker
            );
            println!(
                "  released {:.0}/s ({:.1} s); delivered {} at {:.0}/s ({:.1} s from its start)",
                r.release_per_sec,
                r.release_seconds,
                r.delivered,
                r.delivered_per_sec,
                r.delivery_seconds
            );
            println!(
                "  transactional {}/s, 202 to delivered: alone p50 {:.0} ms p99 {:.0} ms ({} samples); \
                 while the campaign drains p50 {:.0} ms p99 {:.0} ms ({} samples); unfinished {}",
                r.transactional_rate,
                r.transactional_alone_ms.p50,
                r.transactional_alone_ms.p99,
                r.transactional_alone_ms.samples,
                r.transactional_during_campaign_ms.p50,
                r.transactional_during_campaign_ms.p99,
                r.transactional_during_campaign_ms.samples,
                r.transactional_unfinished
            );
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Bench::Import {
            runs,
            rows,
            count_runs,
        } => {
            let r = sendmill::bench::import::import(config, runs.max(1), rows.max(1), count_runs)
                .await?;
            println!(
                "import bench: {} rows x {} attribute columns ({} B of CSV), {} runs, medians",
                r.rows, r.attribute_columns, r.file_bytes, r.runs
            );
            println!(
                "  {:.0} rows/s (runs {:?}, seconds {:?}); analytics CPU {:.2} s per 10,000 rows; \
                 RSS {:.0} MiB before, peak {:.0} MiB",
                r.rows_per_sec,
                r.rows_per_sec_runs
                    .iter()
                    .map(|x| x.round() as u64)
                    .collect::<Vec<_>>(),
                r.seconds_runs
                    .iter()
                    .map(|x| (x * 10.0).round() / 10.0)
                    .collect::<Vec<_>>(),
                r.analytics_cpu_s_per_10k,
                r.rss_before_mib,
                r.peak_rss_mib
            );
            for (expression, ms, count) in &r.segment_count_ms {
                println!(
                    "  segment count over {} contacts: {ms:.0} ms, {count} match: {expression}",
                    r.contacts
                );
            }
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Bench::Inbound {
            runs,
            messages,
            connections,
            bytes,
        } => {
            let r = sendmill::bench::inbound::inbound(
                config,
                runs.max(1),
                messages.max(1),
                connections.max(1),
                bytes,
            )
            .await?;
            println!(
                "inbound bench: {} B DSNs, {} runs after a warm-up, medians",
                r.message_bytes, r.runs
            );
            println!(
                "  classify on one thread: {:.0} messages/s (runs {:?})",
                r.classify_per_sec,
                r.classify_per_sec_runs
                    .iter()
                    .map(|x| x.round() as u64)
                    .collect::<Vec<_>>()
            );
            println!(
                "  sendmill inbound, {} DSNs over {} sessions: {:.0} received/s, {:.0} processed/s (runs {:?}); \
                 {:.3} CPU-s per 1,000 = {:.0} messages/s per core",
                r.messages_per_run,
                r.connections,
                r.received_per_sec,
                r.processed_per_sec,
                r.processed_per_sec_runs
                    .iter()
                    .map(|x| x.round() as u64)
                    .collect::<Vec<_>>(),
                r.inbound_cpu_s_per_1000,
                r.per_core_per_sec
            );
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        Bench::Submission {
            runs,
            seconds,
            connections,
            bytes,
            certificates,
        } => {
            let report = sendmill::bench::submission::submission(
                config,
                runs.max(1),
                seconds,
                connections.max(1),
                bytes,
                &certificates,
            )
            .await?;
            println!(
                "submission bench: {} B messages, {} sessions, {} runs x {} s after a warm-up, medians",
                report.message_bytes, report.connections, report.runs, report.seconds_per_run
            );
            println!(
                "  {:.0} messages/s (runs {:?}), p50 {:.1} ms, p99 {:.1} ms; CPU per 1,000: ingest {:.3} s, load generator {:.3} s",
                report.messages_per_sec,
                report
                    .messages_per_sec_runs
                    .iter()
                    .map(|r| r.round() as u64)
                    .collect::<Vec<_>>(),
                report.p50_ms,
                report.p99_ms,
                report.ingest_cpu_s_per_1000,
                report.client_cpu_s_per_1000
            );
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Bench::Fanout {
            recipients,
            attachment_bytes,
            runs,
        } => {
            let report =
                sendmill::bench::fanout::fanout(config, recipients, attachment_bytes, runs.max(1))
                    .await?;
            println!(
                "fanout bench: one request, {} recipients, {} B attachment, {} B HTML, \
                 {} runs per version, medians",
                report.recipients, report.attachment_bytes, report.html_bytes, report.runs
            );
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            for s in &report.shapes {
                println!(
                    "  requested v{}: Kafka {:.1} MiB per request (requested {:.1}, blobs {:.1}, \
                     events {:.1}), 202 after {:.0} ms {:?}, ingest CPU {:.2} s, peak RSS {:.0} MiB",
                    s.requested_version,
                    mib(s.requested_bytes + s.blobs_bytes + s.events_bytes),
                    mib(s.requested_bytes),
                    mib(s.blobs_bytes),
                    mib(s.events_bytes),
                    s.accept_ms,
                    s.accept_ms_runs.iter().map(|m| m.round() as u64).collect::<Vec<_>>(),
                    s.ingest_cpu_s,
                    s.ingest_peak_mib
                );
            }
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Bench::Ingest {
            runs,
            seconds,
            concurrency,
        } => {
            let report =
                sendmill::bench::ingest(config, runs.max(1), seconds, concurrency.max(1)).await?;
            println!(
                "ingest bench: {} B HTML, {} runs x {} s after a warm-up, {} connections, medians; \
                 {}, {} CPUs; raw RSA-2048 {:.0}/s per core ({:.2} ms)",
                report.html_bytes,
                report.runs,
                report.seconds_per_run,
                report.concurrency,
                report.host.cpu,
                report.host.cpus,
                report.rsa2048_signatures_per_core,
                1000.0 / report.rsa2048_signatures_per_core
            );
            for shape in &report.shapes {
                println!(
                    "  {:>3} recipient(s)/request: {:>8.0} recipients/s ({:>7.0} requests/s), \
                     ingest CPU {:.3} ms/request ({:.2} x one RSA signature), p50 {:.1} ms, p99 {:.1} ms, runs {:?}",
                    shape.recipients_per_request,
                    shape.recipients_per_sec,
                    shape.requests_per_sec,
                    shape.ingest_cpu_ms_per_request,
                    shape.cpu_per_request_rsa,
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
    }
}

#[allow(
    clippy::print_stdout,
    reason = "a report for the person who ran the command"
)]
fn print_render_report(r: &sendmill::bench::RenderReport) {
    println!("render bench on {}", r.host);
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
    println!("  host       {}", r.host);
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
