//! `bench submission`: messages/s through SMTP submission and the ingest process's CPU
//! per 1,000 messages. One `sendmill ingest` child process (so its CPU is its own, read
//! from /proc) listens for submission with STARTTLS on the local test certificate; this
//! process opens `connections` sessions (STARTTLS, AUTH PLAIN) and sends ~20 KB
//! messages, one recipient each, MAIL+RCPT+DATA pipelined (RFC 2920), as fast as each
//! 250 comes back. A 250 means Kafka acknowledged the record, so the rate includes the
//! broker's round trip. Needs PostgreSQL, Redis, Kafka and `deploy/local`'s certificate;
//! the run's topics are deleted afterwards.

use super::{cpu_seconds, median, pipeline::Run, BenchTopics};
use crate::SendmillConfig;
use anyhow::{bail, Context};
use serde::Serialize;
use std::{path::Path, sync::Arc, time::Instant};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpStream,
};

#[derive(Debug, Serialize)]
pub struct SubmissionReport {
    pub runs: usize,
    pub seconds_per_run: f64,
    pub connections: usize,
    pub message_bytes: usize,
    /// Medians of the runs.
    pub messages_per_sec: f64,
    pub messages_per_sec_runs: Vec<f64>,
    /// CPU-seconds of the ingest process per 1,000 messages (median of the runs).
    pub ingest_cpu_s_per_1000: f64,
    /// This process (the load generator: TLS, SMTP client) per 1,000 messages.
    pub client_cpu_s_per_1000: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs the bench (see the module doc): `runs` measured runs of `seconds` after one
/// warm-up, `connections` sessions, messages of about `message_bytes`.
pub async fn submission(
    base: &SendmillConfig,
    runs: usize,
    seconds: f64,
    connections: usize,
    message_bytes: usize,
    certificate_dir: &Path,
) -> anyhow::Result<SubmissionReport> {
    let store = super::migrated_store(base).await?;
    let run = Run::new(base)?;
    let broker = BenchTopics::create(&run.config).await?;
    let (domain, key) = super::tenant(&store, &run.id).await?;
    let submission = super::pipeline::free_addr()?;
    let config_file = run.write_config()?;
    let (certificate, private_key) = (
        certificate_dir.join("submission.pem"),
        certificate_dir.join("submission.key"),
    );
    if !certificate.exists() {
        bail!(
            "{} is missing: run deploy/local/start-services.sh",
            certificate.display()
        );
    }
    let mut toml = std::fs::read_to_string(&config_file)?;
    toml.push_str(&format!(
        "\n[ingest.submission]\nlisten = \"{submission}\"\ncertificate = {:?}\nprivate_key = {:?}\n\
         max_connections_per_account = {}\n",
        certificate.to_string_lossy(),
        private_key.to_string_lossy(),
        connections + 1
    ));
    std::fs::write(&config_file, toml)?;
    let mut ingest = run.spawn("ingest", "ingest", &config_file)?;
    ingest.wait_listening(submission).await?;

    let message = Arc::new(message(&domain.domain, message_bytes));
    let mut rates = Vec::new();
    let mut ingest_cpu = Vec::new();
    let mut client_cpu = Vec::new();
    let mut latencies = Vec::new();
    for run_index in 0..=runs {
        let (ingest_before, client_before) = (
            cpu_seconds(&ingest.pid()).unwrap_or(0.0),
            cpu_seconds("self").unwrap_or(0.0),
        );
        let started = Instant::now();
        let deadline = started + std::time::Duration::from_secs_f64(seconds);
        let mut sessions = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let (message, key) = (message.clone(), key.clone());
            sessions.spawn(async move { session(submission, &key, &message, deadline).await });
        }
        let mut run_latencies = Vec::new();
        while let Some(done) = sessions.join_next().await {
            run_latencies.extend(done??);
        }
        let elapsed = started.elapsed().as_secs_f64();
        ingest.check_alive()?;
        let sent = run_latencies.len() as f64;
        let ingest_used = cpu_seconds(&ingest.pid()).unwrap_or(0.0) - ingest_before;
        let client_used = cpu_seconds("self").unwrap_or(0.0) - client_before;
        // Run 0 warms pools, caches and the JIT of the broker; it is not counted.
        if run_index > 0 && sent > 0.0 {
            rates.push(sent / elapsed);
            ingest_cpu.push(ingest_used / sent * 1000.0);
            client_cpu.push(client_used / sent * 1000.0);
            latencies.extend(run_latencies);
        }
    }
    drop(ingest);
    broker.delete().await;
    let _ = std::fs::remove_dir_all(&run.dir);
    if latencies.is_empty() {
        bail!("no message was queued");
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    Ok(SubmissionReport {
        runs,
        seconds_per_run: seconds,
        connections,
        message_bytes: message.len(),
        messages_per_sec: median(rates.clone()),
        messages_per_sec_runs: rates,
        ingest_cpu_s_per_1000: median(ingest_cpu),
        client_cpu_s_per_1000: median(client_cpu),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
    })
}

/// A plain-text message of about `bytes` from the bench domain, dot-stuffed and ended
/// for DATA.
fn message(domain: &str, bytes: usize) -> Vec<u8> {
    let mut text = format!(
        "From: Bench <bench@{domain}>\r\nTo: <reader@d1.test>\r\nSubject: submission bench\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    let line = "Sendmill submission bench: twenty kilobytes of plain text, line by line.\r\n";
    while text.len() + line.len() < bytes {
        text.push_str(line);
    }
    text.push_str(".\r\n");
    text.into_bytes()
}

/// Reads one reply (all its lines); its code.
async fn reply<S: AsyncRead + Unpin>(reader: &mut BufReader<S>) -> anyhow::Result<(u16, String)> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection");
        }
        all.push_str(&line);
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .context("reply code")?;
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, all));
        }
    }
}

/// Reads one reply; an error unless its code is `code`.
pub(super) async fn expect<S: AsyncRead + Unpin>(
    reader: &mut BufReader<S>,
    code: u16,
) -> anyhow::Result<()> {
    let (got, text) = reply(reader).await?;
    if got != code {
        bail!("expected {code}, the server answered {}", text.trim_end());
    }
    Ok(())
}

/// One session: STARTTLS, AUTH PLAIN, then transactions until `deadline`. Each
/// transaction's latency (MAIL to the 250 after the dot) in ms.
async fn session(
    addr: std::net::SocketAddr,
    key: &str,
    message: &[u8],
    deadline: Instant,
) -> anyhow::Result<Vec<f64>> {
    use base64::Engine;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut plain = BufReader::new(tcp);
    expect(&mut plain, 220).await?;
    plain.get_mut().write_all(b"EHLO bench.test\r\n").await?;
    expect(&mut plain, 250).await?;
    plain.get_mut().write_all(b"STARTTLS\r\n").await?;
    expect(&mut plain, 220).await?;
    let connector =
        tokio_rustls::TlsConnector::from(sendmill_smtp::tls::opportunistic_client_config());
    let name = rustls::pki_types::ServerName::try_from("submission.sendmill.test")?;
    let tls = connector.connect(name, plain.into_inner()).await?;
    let mut s = BufReader::new(tls);
    send(&mut s, b"EHLO bench.test\r\n").await?;
    expect(&mut s, 250).await?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0apikey\0{key}"));
    send(&mut s, format!("AUTH PLAIN {token}\r\n").as_bytes()).await?;
    expect(&mut s, 235).await?;
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let sent = Instant::now();
        send(
            &mut s,
            b"MAIL FROM:<bench@bench.test>\r\nRCPT TO:<reader@d1.test>\r\nDATA\r\n",
        )
        .await?;
        expect(&mut s, 250).await?;
        expect(&mut s, 250).await?;
        expect(&mut s, 354).await?;
        send(&mut s, message).await?;
        expect(&mut s, 250).await?;
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    send(&mut s, b"QUIT\r\n").await?;
    Ok(latencies)
}

/// Writes `bytes` and flushes.
pub(super) async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    bytes: &[u8],
) -> anyhow::Result<()> {
    stream.get_mut().write_all(bytes).await?;
    stream.get_mut().flush().await?;
    Ok(())
}
