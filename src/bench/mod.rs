//! `sendmill bench …`: measurements printed as figures, never asserted in tests.
//!
//! `bench render`: one core's worth of the renderer. For a ~15 KB HTML template with 15
//! variables (and a text part), how many messages per second are rendered, MIME-encoded
//! and DKIM-signed — with RSA-2048, and with RSA-2048 + Ed25519 dual signatures — next
//! to the raw signing rate of the same keys, the ceiling the renderer cannot pass.
//! Several alternating runs; medians reported.
//!
//! Why one file of ~700 lines: the three smaller benches (render, ingest, deliver) and
//! the fixtures they share (the template, the send body, bench topics); each bench is a
//! function read top to bottom, and `pipeline` has a module of its own.

use sendmill_render::{message, signing::SendingIdentity, templates::Templates};
use sendmill_store::{dkim, Ed25519DkimKey, SendingDomain};
use sendmill_wire::{
    AccountId, BatchId, EmailAddress, Lane, MessageContext, MessageId, RenderOptions, RequestedV1,
};
use serde::Serialize;
use std::time::{Duration, Instant};

pub mod campaign;
pub mod fanout;
pub mod import;
pub mod inbound;
pub mod pipeline;
pub mod submission;
pub mod work;
use time::OffsetDateTime;

/// The machine a report was measured on. RSA-2048 signing, the ceiling every ratio divides
/// by, depends on it: aws-lc signs with its `rsaz_amm52x20_*_ifma256` code on a CPU with
/// AVX-512 IFMA, with its AVX2 code otherwise. The README's RSA rates of different days
/// (3,600 – 4,070, 2,100 – 2,800, 1,413 – 1,478 signatures/s per core) came from
/// different hosts, so figures of different hosts compare only as ratios to the RSA rate
/// of the same run.
#[derive(Debug, Serialize)]
pub struct Host {
    /// `model name` of /proc/cpuinfo.
    pub cpu: String,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// Whether the CPU has AVX-512 IFMA and VL, which aws-lc's fastest RSA code needs.
    pub avx512_ifma: bool,
}

impl Host {
    pub fn detect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                    .map(|(_, name)| name.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        #[cfg(target_arch = "x86_64")]
        let avx512_ifma = std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vl");
        #[cfg(not(target_arch = "x86_64"))]
        let avx512_ifma = false;
        Self {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            avx512_ifma,
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, {} CPUs, RSA on {}",
            self.cpu,
            self.cpus,
            if self.avx512_ifma {
                "a CPU with AVX-512 IFMA"
            } else {
                "a CPU without AVX-512 IFMA"
            }
        )
    }
}

#[derive(Debug, Serialize)]
pub struct RenderReport {
    pub host: Host,
    pub html_bytes: usize,
    pub variables: usize,
    pub runs: usize,
    pub seconds_per_run: f64,
    /// Medians, per second, one thread.
    pub raw_rsa2048_signatures: f64,
    pub raw_ed25519_signatures: f64,
    pub rendered_rsa2048: f64,
    pub rendered_dual: f64,
    /// The parts of `rendered_rsa2048`: templates + MIME only, and signing a built
    /// message only (canonicalization, hashes, RSA).
    pub build_only: f64,
    pub seal_only: f64,
    /// rendered_rsa2048 / raw_rsa2048_signatures.
    pub rsa_ratio: f64,
}

pub fn render(runs: usize, seconds: f64) -> anyhow::Result<RenderReport> {
    let rsa = dkim::generate_rsa_2048().map_err(|_| anyhow::anyhow!("RSA key generation"))?;
    let ed = dkim::generate_ed25519().map_err(|_| anyhow::anyhow!("Ed25519 key generation"))?;
    let domain = |dual_sign| SendingDomain {
        id: uuid::Uuid::nil(),
        account_id: AccountId(uuid::Uuid::nil()),
        domain: "example.test".into(),
        dkim_selector: "s1".into(),
        dkim_private_key_pkcs8: rsa.private_pkcs8.clone(),
        dkim_public_key: rsa.public_spki_base64.clone(),
        ed25519: Some(Ed25519DkimKey {
            selector: "s1e".into(),
            private_pkcs8: ed.private_pkcs8.clone(),
            public_key: ed.public_base64.clone(),
        }),
        dual_sign,
        next_dkim: None,
        return_path_domain: "bounces.example.test".into(),
        verified_at: None,
        verification: None,
    };
    let rsa_only = SendingIdentity::new(&domain(false))?;
    let dual = SendingIdentity::new(&domain(true))?;
    let raw_rsa = sendmill_render::dkim::DkimSigner::rsa(
        "example.test",
        "s1",
        &rsa.private_pkcs8,
        &["from"],
    )?;
    let raw_ed = sendmill_render::dkim::DkimSigner::ed25519(
        "example.test",
        "s1e",
        &ed.private_pkcs8,
        &["from"],
    )?;
    // The smallest signable message: the cost is the key operation.
    let tiny = b"From: a@example.test\r\n\r\nx\r\n";

    let (html, text) = template();
    let templates = Templates::new();
    let period = Duration::from_secs_f64(seconds);
    let mut samples: [Vec<f64>; 6] = Default::default();
    let sample = request(&html, &text);
    let built = message::build(
        &templates,
        message::Decorations::NONE,
        &sample,
        OffsetDateTime::now_utc(),
    )?;
    // One message for a new recipient, rendered and signed as render does it.
    let render_and_seal = |identity: &SendingIdentity| -> anyhow::Result<()> {
        let request = request(&html, &text);
        let now = OffsetDateTime::now_utc();
        let unsigned = message::build(&templates, message::Decorations::NONE, &request, now)?;
        identity.seal(&unsigned, &request, now, None)?;
        Ok(())
    };
    for _ in 0..runs {
        samples[0].push(rate(period, || raw_rsa.sign(tiny, 0).map(drop))?);
        samples[1].push(rate(period, || raw_ed.sign(tiny, 0).map(drop))?);
        samples[2].push(rate(period, || render_and_seal(&rsa_only))?);
        samples[3].push(rate(period, || render_and_seal(&dual))?);
        samples[4].push(rate(period, || {
            let request = request(&html, &text);
            message::build(
                &templates,
                message::Decorations::NONE,
                &request,
                OffsetDateTime::now_utc(),
            )
            .map(drop)
        })?);
        samples[5].push(rate(period, || {
            rsa_only
                .seal(&built, &sample, OffsetDateTime::now_utc(), None)
                .map(drop)
        })?);
    }
    let [raw_rsa, raw_ed, rendered_rsa, rendered_dual, build_only, seal_only] = samples.map(median);
    Ok(RenderReport {
        host: Host::detect(),
        html_bytes: html.len(),
        variables: 15,
        runs,
        seconds_per_run: seconds,
        raw_rsa2048_signatures: raw_rsa,
        raw_ed25519_signatures: raw_ed,
        rendered_rsa2048: rendered_rsa,
        rendered_dual,
        build_only,
        seal_only,
        rsa_ratio: rendered_rsa / raw_rsa,
    })
}

/// Calls `work` for `period`; returns calls per second.
pub(crate) fn rate<E: Into<anyhow::Error>>(
    period: Duration,
    mut work: impl FnMut() -> Result<(), E>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < period {
        work().map_err(Into::into)?;
        count += 1;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// A ~15 KB newsletter-like HTML template with 15 variables, and its text part.
pub fn template() -> (String, String) {
    let mut html = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{{v1}}</title></head>\
         <body style=\"margin:0;padding:0;font-family:Helvetica,Arial,sans-serif\">\
         <table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\">\
         <tr><td><h1>Hello {{v2}}, here is your {{v3}} digest</h1></td></tr>",
    );
    let mut n = 0;
    while html.len() < 15_000 {
        let var = 4 + n % 12;
        html.push_str(&format!(
            "<tr><td style=\"padding:12px 24px;font-size:15px;line-height:22px;color:#333333\">\
             <p>Item {n}: {{{{v{var}}}}} — Lorem ipsum dolor sit amet, consectetur adipiscing elit, \
             sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim \
             veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip.</p>\
             <a href=\"https://example.test/items/{n}?utm_source=newsletter&amp;u={{{{v15}}}}\" \
             style=\"color:#0066cc\">Read more</a></td></tr>"
        ));
        n += 1;
    }
    html.push_str("<tr><td><p>You get this because you subscribed as {{v15}}.</p></td></tr></table></body></html>");
    let text = "Hello {{v2}}, here is your {{v3}} digest.\n\n{{v4}} {{v5}} {{v6}} {{v7}} {{v8}} \
                {{v9}} {{v10}} {{v11}} {{v12}} {{v13}} {{v14}}\n\nYou get this as {{v15}}.\n"
        .to_owned();
    (html, text)
}

fn request(html: &str, text: &str) -> RequestedV1 {
    let id = MessageId::generate();
    let mut data = serde_json::Map::new();
    for i in 1..=15 {
        data.insert(
            format!("v{i}"),
            format!("value {i} for {}", id.0.simple()).into(),
        );
    }
    RequestedV1 {
        message_id: id,
        account_id: AccountId(uuid::Uuid::nil()),
        batch_id: BatchId::generate(),
        lane: Lane::Bulk,
        accepted_at: OffsetDateTime::now_utc(),
        from: EmailAddress {
            email: "news@example.test".into(),
            name: Some("Example News".into()),
        },
        to: EmailAddress {
            email: format!("r{}@d1.test", id.0.simple()),
            name: None,
        },
        to_list: Vec::new(),
        cc: Vec::new(),
        envelope_to: None,
        reply_to: None,
        subject: "{{v3}} digest for {{v2}}".into(),
        html: Some(html.to_owned()),
        text: Some(text.to_owned()),
        headers: vec![],
        data,
        context: MessageContext::default(),
        options: RenderOptions::default(),
        attachments: vec![],
        mime: None,
        shared: None,
    }
}

/// A `POST /v1/messages` body from news@`domain` with the ~15 KB template and 15
/// variables per recipient, to `recipients` addresses spread over d1–d`domains`.test,
/// their local parts numbered from `first`.
pub fn send_body(
    domain: &str,
    html: &str,
    text: &str,
    recipients: usize,
    first: usize,
    domains: usize,
) -> String {
    let to: Vec<serde_json::Value> = (first..first + recipients)
        .map(|i| {
            let data: serde_json::Map<String, serde_json::Value> = (1..=15)
                .map(|v| (format!("v{v}"), serde_json::json!(format!("value {v} for {i}"))))
                .collect();
            serde_json::json!({"email": format!("r{i}@d{}.test", i % domains.max(1) + 1), "data": data})
        })
        .collect();
    serde_json::json!({
        "from": format!("News <news@{domain}>"),
        "to": to,
        "subject": "{{v1}}: your {{v3}} digest",
        "html": html,
        "text": text,
        "tags": ["bench"],
    })
    .to_string()
}

/// What `sendmill bench ingest` measured: accepted recipients per second at the send API
/// alone (HTTP, validation, PostgreSQL domain lookup, Redis suppression check and rate
/// limit, idempotent produce to Kafka), per request shape, and the ingest process's CPU
/// per request beside one raw RSA-2048 signature on the same host.
#[derive(Debug, serde::Serialize)]
pub struct IngestReport {
    pub host: Host,
    pub runs: usize,
    pub seconds_per_run: f64,
    pub concurrency: usize,
    pub html_bytes: usize,
    /// Raw RSA-2048 signatures per second on one core, measured before the load (median
    /// of three 1 s runs): what `cpu_per_request_rsa` divides by.
    pub rsa2048_signatures_per_core: f64,
    pub shapes: Vec<IngestShape>,
}

#[derive(Debug, serde::Serialize)]
pub struct IngestShape {
    pub recipients_per_request: usize,
    /// Median of the runs.
    pub requests_per_sec: f64,
    pub recipients_per_sec: f64,
    /// Every run's recipients/s, for the spread.
    pub recipients_per_sec_runs: Vec<f64>,
    /// CPU time (user + system, from /proc) of the ingest process per accepted request,
    /// in ms: median of the runs. Redis, Kafka and PostgreSQL are not in it.
    pub ingest_cpu_ms_per_request: f64,
    /// `ingest_cpu_ms_per_request` over the time of one raw RSA-2048 signature (issue
    /// target for single-recipient requests: ≤ 0.25).
    pub cpu_per_request_rsa: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Drives `POST /v1/messages` of an ingest process started for the bench (this binary's
/// `ingest`, with its own topics, Redis prefix and tenant) with `concurrency` keep-alive
/// connections, for 1- and 100-recipient requests carrying the ~15 KB template; `runs`
/// measured runs of `seconds` per shape after one warm-up. The load generator runs in
/// this process, so the ingest process's CPU is its own.
///
/// Errors: a service missing, ingest not listening within 60 s or dying, or any answer
/// but 202.
pub async fn ingest(
    config: &crate::SendmillConfig,
    runs: usize,
    seconds: f64,
    concurrency: usize,
) -> anyhow::Result<IngestReport> {
    use anyhow::Context;

    let store = migrated_store(config).await?;
    let IngestChild {
        run,
        broker,
        domain,
        key,
        mut process,
    } = IngestChild::start(config, &store).await?;
    let rsa_per_sec = pipeline::rsa_rate(&domain)?;

    let (html, text) = template();
    let url = format!("http://{}/v1/messages", run.ingest);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let mut shapes = Vec::new();
    for recipients in [1usize, 100] {
        let body = send_body(&domain.domain, &html, &text, recipients, 0, 10);
        let mut per_run = Vec::new();
        let mut cpu_ms = Vec::new();
        let mut latencies = Vec::new();
        // One unmeasured warm-up run fills pools and caches.
        for run_index in 0..=runs {
            let cpu_before = cpu_seconds(&process.pid());
            let (accepted, lat) =
                drive(&client, &url, &key, &body, recipients, seconds, concurrency).await?;
            process.check_alive()?;
            let cpu_used = cpu_seconds(&process.pid())
                .zip(cpu_before)
                .map(|(after, before)| after - before)
                .context("reading the ingest process's CPU time from /proc")?;
            if run_index > 0 && !lat.is_empty() {
                per_run.push(accepted);
                cpu_ms.push(cpu_used * 1000.0 / lat.len() as f64);
                latencies.extend(lat);
            }
        }
        anyhow::ensure!(!latencies.is_empty(), "no request was accepted");
        latencies.sort_by(|a, b| a.total_cmp(b));
        let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
        let recipients_per_sec = median(per_run.clone());
        let ingest_cpu_ms_per_request = median(cpu_ms);
        shapes.push(IngestShape {
            recipients_per_request: recipients,
            requests_per_sec: recipients_per_sec / recipients as f64,
            recipients_per_sec,
            recipients_per_sec_runs: per_run,
            ingest_cpu_ms_per_request,
            cpu_per_request_rsa: ingest_cpu_ms_per_request * rsa_per_sec / 1000.0,
            p50_ms: pick(0.5),
            p99_ms: pick(0.99),
        });
    }
    drop(process);
    broker.delete().await;
    let _ = std::fs::remove_dir_all(&run.dir);
    Ok(IngestReport {
        host: Host::detect(),
        runs,
        seconds_per_run: seconds,
        concurrency,
        html_bytes: html.len(),
        rsa2048_signatures_per_core: rsa_per_sec,
        shapes,
    })
}

/// The configured PostgreSQL (a pool of 2), its schema migrated: where a bench's tenant
/// lives.
///
/// Errors: PostgreSQL cannot be reached or migrated.
pub(crate) async fn migrated_store(
    config: &crate::SendmillConfig,
) -> anyhow::Result<sendmill_store::Store> {
    use anyhow::Context;
    let store = sendmill_store::Store::connect(&config.postgres.url, 2)
        .await
        .context("connecting to PostgreSQL")?;
    store.migrate().await?;
    Ok(store)
}

/// A `sendmill ingest` child process of a new run (its own topics, created, and a bench
/// tenant in `store`), listening.
pub(crate) struct IngestChild {
    pub(crate) run: pipeline::Run,
    pub(crate) broker: BenchTopics,
    pub(crate) domain: SendingDomain,
    pub(crate) key: String,
    pub(crate) process: pipeline::Process,
}

impl IngestChild {
    /// Errors: Kafka or PostgreSQL refuse the run's topics or tenant, or the child does
    /// not start listening within 60 s.
    pub(crate) async fn start(
        base: &crate::SendmillConfig,
        store: &sendmill_store::Store,
    ) -> anyhow::Result<Self> {
        let run = pipeline::Run::new(base)?;
        let broker = BenchTopics::create(&run.config).await?;
        let (domain, key) = tenant(store, &run.id).await?;
        let config_file = run.write_config()?;
        let mut process = run.spawn("ingest", "ingest", &config_file)?;
        process.wait_listening(run.ingest).await?;
        Ok(Self {
            run,
            broker,
            domain,
            key,
            process,
        })
    }
}

/// A bench tenant: an account whose limits never refuse (so the rate-limit script
/// still runs), its sending domain `bench-ID.example.test` with a new RSA-2048 key, and
/// a send key.
pub(crate) async fn tenant(
    store: &sendmill_store::Store,
    id: &str,
) -> anyhow::Result<(SendingDomain, String)> {
    use sendmill_store::{AccountLimits, Scope};
    let account = store.create_account(&format!("bench-{id}")).await?;
    store
        .set_limits(
            account,
            AccountLimits {
                send_rate_per_sec: Some(1_000_000_000),
                daily_quota: None,
            },
        )
        .await?;
    let domain = store
        .add_sending_domain(account, &format!("bench-{id}.example.test"), "s1")
        .await?;
    let key = store
        .create_api_key(account, "bench", &[Scope::Send], false)
        .await?
        .plaintext;
    Ok((domain, key))
}

/// `concurrency` loops posting `body` for `seconds`: accepted recipients/s and each
/// request's latency in ms. Anything but 202 stops the bench.
async fn drive(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &str,
    recipients: usize,
    seconds: f64,
    concurrency: usize,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs_f64(seconds);
    let body = bytes::Bytes::from(body.to_owned());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, key, body) =
            (client.clone(), url.to_owned(), key.to_owned(), body.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while std::time::Instant::now() < deadline {
                let sent = std::time::Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                let status = response.status();
                let text = response.bytes().await?;
                anyhow::ensure!(
                    status == reqwest::StatusCode::ACCEPTED,
                    "ingest answered {status}: {}",
                    String::from_utf8_lossy(&text)
                );
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = workers.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(((latencies.len() * recipients) as f64 / elapsed, latencies))
}

/// `bench deliver`: the dispatcher alone. Messages are pre-loaded into `ready`, then one
/// dispatcher in this process sends them to the local smtp-sink bench hosts
/// (`BENCH_SINKS=1 deploy/local/start-services.sh`: d1–d50.test over 127.0.0.11–20).
#[derive(Debug, Serialize)]
pub struct DeliverReport {
    pub messages_per_run: usize,
    pub message_bytes: usize,
    pub runs: usize,
    pub shapes: Vec<DeliverShape>,
}

#[derive(Debug, Serialize)]
pub struct DeliverShape {
    pub domains: usize,
    /// Medians of the runs.
    pub delivered_per_sec: f64,
    /// Delivered messages per CPU-second of this process (dispatcher and in-process
    /// broker together): the per-core rate.
    pub delivered_per_cpu_sec: f64,
    pub delivered_per_sec_runs: Vec<f64>,
    /// smtp-source straight into the same sinks, same message size and 64 sessions per
    /// sink: the sinks' own ceiling.
    pub sink_ceiling_per_sec: f64,
}

pub async fn deliver(
    config: &crate::SendmillConfig,
    runs: usize,
    messages: usize,
) -> anyhow::Result<DeliverReport> {
    use sendmill_wire::{EventType, EventV1, ReadyV1};
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    let store =
        sendmill_store::Store::connect(&config.postgres.url, config.postgres.max_connections)
            .await?;
    // The dispatcher reads suppressions from PostgreSQL: its tables must exist.
    store.migrate().await?;
    drop(store);
    let body_line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    let body = body_line.repeat(10_000 / body_line.len());
    let mut shapes = Vec::new();
    for domains in [1usize, 50] {
        require_bench_sinks(domains.min(10)).await?;
        let mut per_run = Vec::new();
        let mut per_cpu = Vec::new();
        let mut message_bytes = 0;
        for _ in 0..runs {
            let mut config = config.clone();
            let id = uuid::Uuid::now_v7().simple().to_string();
            config.kafka.topic_prefix = format!("bench{id}.");
            config.redis.key_prefix = format!("bench{id}:");
            config.dispatcher.ops_listen = "127.0.0.1:0".into();
            config.dispatcher.journal_dir = std::env::temp_dir()
                .join(format!("sendmill-bench-journal-{id}"))
                .to_string_lossy()
                .into_owned();
            let broker = BenchTopics::create(&config).await?;
            let topics = broker.kafka.topics.clone();
            let kafka = broker.kafka.clone();
            let producer = kafka.producer()?;
            let account = AccountId::generate();
            let ready_topic = topics.ready(Lane::Transactional);
            for chunk in (0..messages).collect::<Vec<_>>().chunks(1000) {
                let sends = chunk.iter().map(|i| {
                    let message_id = MessageId::generate();
                    let to = format!("r{i}@d{}.test", i % domains + 1);
                    let message = format!(
                        "From: bench@bench.test\r\nTo: {to}\r\nSubject: bench {i}\r\nMessage-ID: <{message_id}@bench.test>\r\n\r\n{body}"
                    );
                    message_bytes = message.len();
                    let ready = ReadyV1 {
                        message_id,
                        account_id: account,
                        lane: Lane::Transactional,
                        accepted_at: OffsetDateTime::now_utc(),
                        envelope_from: "bounce@bench.test".into(),
                        recipient: to,
                        context: MessageContext::default(),
                        attempts: 0,
                        message: message.into_bytes(),
                    };
                    let (producer, topic) = (producer.clone(), ready_topic.clone());
                    async move { producer.send(&topic, &message_id.to_string(), &ready).await }
                });
                for result in futures::future::join_all(sends).await {
                    result?;
                }
            }

            // Counts `delivered` events; the clock runs from the first to the last one, so
            // the consumer group's join (seconds, once per start) is not counted.
            let delivered = Arc::new(AtomicUsize::new(0));
            let first_at = Arc::new(std::sync::OnceLock::<(Instant, f64)>::new());
            let done = Arc::new(tokio::sync::Notify::new());
            let counter_stop = sendmill_platform::CancellationToken::new();
            let counter = {
                let (delivered, done, kafka, first_at) = (
                    delivered.clone(),
                    done.clone(),
                    kafka.clone(),
                    first_at.clone(),
                );
                let spec = sendmill_platform::kafka::ConsumerSpec {
                    stage: "bench",
                    group_id: format!("bench-count-{id}"),
                    topics: vec![topics.events()],
                    concurrency: 1024,
                };
                let stop = counter_stop.clone();
                tokio::spawn(async move {
                    sendmill_platform::kafka::consumer::run(
                        &kafka,
                        spec,
                        move |record| {
                            let (delivered, done, first_at) =
                                (delivered.clone(), done.clone(), first_at.clone());
                            async move {
                                let event: EventV1 =
                                    sendmill_platform::kafka::consumer::decode(&record)?;
                                if event.event_type != EventType::Delivered {
                                    // Not a figure worth printing: say why instead.
                                    tracing::error!(kind = ?event.event_type, reason = ?event.reason, "a bench message was not delivered");
                                    return Ok(sendmill_platform::kafka::Handled::Done);
                                }
                                first_at.get_or_init(|| (Instant::now(), process_cpu_seconds()));
                                if delivered.fetch_add(1, Ordering::Relaxed) + 1 == messages {
                                    done.notify_one();
                                }
                                Ok(sendmill_platform::kafka::Handled::Done)
                            }
                        },
                        stop,
                    )
                    .await
                })
            };

            let shutdown = sendmill_platform::CancellationToken::new();
            let running =
                crate::pipeline::start(&config, &[crate::Stage::Dispatch], shutdown.clone())
                    .await?;
            let waiting = tokio::spawn(running.wait());
            tokio::time::timeout(Duration::from_secs(600), done.notified())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "only {} of {messages} delivered within 600 s",
                        delivered.load(Ordering::Relaxed)
                    )
                })?;
            let (started, cpu_before) = *first_at.get().expect("a first delivery");
            let elapsed = started.elapsed().as_secs_f64();
            let cpu = process_cpu_seconds() - cpu_before;
            // The first delivery opened the clock: the other messages were timed.
            let messages_timed = messages - 1;
            shutdown.cancel();
            waiting.await??;
            counter_stop.cancel();
            counter.await??;
            broker.delete().await;
            let _ = std::fs::remove_dir_all(&config.dispatcher.journal_dir);
            per_run.push(messages_timed as f64 / elapsed);
            per_cpu.push(messages_timed as f64 / cpu.max(1e-3));
        }
        shapes.push(DeliverShape {
            domains,
            delivered_per_sec: median(per_run.clone()),
            delivered_per_cpu_sec: median(per_cpu),
            delivered_per_sec_runs: per_run,
            sink_ceiling_per_sec: sink_ceiling(domains.min(10), messages, message_bytes).await?,
        });
    }
    Ok(DeliverReport {
        messages_per_run: messages,
        message_bytes: body.len(),
        runs,
        shapes,
    })
}

/// The first `sinks` bench sinks (127.0.0.11 on) accept connections, or an error saying
/// how to start them.
pub(crate) async fn require_bench_sinks(sinks: usize) -> anyhow::Result<()> {
    for n in 1..=sinks {
        let addr = format!("127.0.0.{}:25", 10 + n);
        tokio::net::TcpStream::connect(&addr).await.map_err(|e| {
            anyhow::anyhow!(
                "no bench sink at {addr} ({e}): run BENCH_SINKS=1 deploy/local/start-services.sh"
            )
        })?;
    }
    Ok(())
}

/// This process' user + system CPU seconds.
fn process_cpu_seconds() -> f64 {
    cpu_seconds("self").unwrap_or(0.0)
}

/// User + system CPU seconds of process `pid` ("self" for this one), from /proc (clock
/// ticks of 1/100 s); `None` once it is gone.
pub(crate) fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at its closing paren.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Messages/s that postfix's `smtp-source` pushes into `sinks` bench sinks at once
/// (64 sessions each, `messages` in all, messages of `bytes`).
pub(crate) async fn sink_ceiling(
    sinks: usize,
    messages: usize,
    bytes: usize,
) -> anyhow::Result<f64> {
    let per_sink = messages / sinks;
    let kbytes = (bytes / 1024).max(1);
    let started = Instant::now();
    let mut children = Vec::new();
    for n in 1..=sinks {
        let child = std::process::Command::new("smtp-source")
            .args([
                "-s",
                "64",
                "-m",
                &per_sink.to_string(),
                "-l",
                &(kbytes * 1024).to_string(),
                "-f",
                "bench@bench.test",
                "-t",
                &format!("sink@d{n}.test"),
                &format!("127.0.0.{}:25", 10 + n),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("smtp-source (postfix) is required: {e}"))?;
        children.push(child);
    }
    for mut child in children {
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        anyhow::ensure!(status.success(), "smtp-source failed: {status}");
    }
    Ok((per_sink * sinks) as f64 / started.elapsed().as_secs_f64())
}

/// A bench run's own topics on the configured cluster (`kafka.brokers`), created as
/// `sendmill migrate` creates them under the run's prefix, deleted by [`BenchTopics::delete`].
pub struct BenchTopics {
    pub kafka: sendmill_platform::kafka::KafkaConnection,
}

impl BenchTopics {
    pub async fn create(config: &crate::SendmillConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        use sendmill_platform::kafka::{admin, KafkaConnection};
        let kafka = KafkaConnection::new(config.kafka.brokers.clone(), config.kafka.clone());
        admin::reconcile(&kafka, &admin::plan(&kafka))
            .await
            .with_context(|| {
                format!("creating the bench's topics on Kafka at {}", kafka.brokers)
            })?;
        Ok(Self { kafka })
    }

    /// Best effort: a failure is logged, the figures stand.
    pub async fn delete(self) {
        let topics = self.kafka.topics.all();
        if let Err(error) =
            sendmill_platform::kafka::admin::delete_topics(&self.kafka, &topics).await
        {
            tracing::warn!(%error, "could not delete the bench's topics");
        }
    }
}
