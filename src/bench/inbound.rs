//! `bench inbound`: how fast returned mail is taken in, for ~10 KB delivery status
//! notifications (RFC 3464: a Postfix-style report returning the original message).
//!
//! 1. **Classify**: `sendmill_inbound::report::analyze` in this process on one thread,
//!    messages/s: the processor's CPU work per message on one core.
//! 2. **Receive and process**: one `sendmill inbound` child process (its CPU read from
//!    /proc) with its SMTP server on a free port; `connections` sessions send the DSN
//!    to a return-path address of the bench tenant, MAIL+RCPT+DATA pipelined (RFC 2920),
//!    each waiting for its 250 (which means Kafka acknowledged the record). The run ends
//!    when the processor has finished every message: the DSNs name no message of the
//!    tenant, so each is kept in PostgreSQL after its ClickHouse lookup, the most
//!    expensive path through the processor. Reported: received/s, processed/s and the
//!    child's CPU-seconds per 1,000 messages, whose inverse is messages/s on one core.
//!
//! Needs PostgreSQL, Redis, Kafka and ClickHouse as configured; the run's topics are
//! deleted afterwards.

use super::{
    cpu_seconds, median,
    pipeline::Run,
    submission::{expect, send},
    BenchTopics,
};
use crate::SendmillConfig;
use anyhow::{bail, Context};
use sendmill_inbound::report::{analyze, Rules};
use serde::Serialize;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{io::BufReader, net::TcpStream};

#[derive(Debug, Serialize)]
pub struct InboundReport {
    pub runs: usize,
    pub message_bytes: usize,
    /// `analyze` on one thread, messages/s (median of the runs, and each run).
    pub classify_per_sec: f64,
    pub classify_per_sec_runs: Vec<f64>,
    pub messages_per_run: usize,
    pub connections: usize,
    /// DSNs answered 250 per second (median).
    pub received_per_sec: f64,
    /// DSNs received and processed (kept) per second, first MAIL to last kept (median).
    pub processed_per_sec: f64,
    pub processed_per_sec_runs: Vec<f64>,
    /// CPU-seconds of the `sendmill inbound` process per 1,000 DSNs (median).
    pub inbound_cpu_s_per_1000: f64,
    /// 1,000 / `inbound_cpu_s_per_1000`: what one core of the stage takes in.
    pub per_core_per_sec: f64,
}

/// A Postfix-style delivery status notification (RFC 3464) of about `bytes` (at least
/// its fields) for `recipient`, sent to `to`: 550 5.1.1 from `mailstore.remote.test`,
/// returning the original from `domain` with `message_id`'s Message-ID if given. The
/// bench's DSNs and the inbound tests' are these.
pub fn dsn(
    to: &str,
    recipient: &str,
    domain: &str,
    message_id: Option<&str>,
    bytes: usize,
) -> String {
    let message_id = message_id
        .map(|id| format!("Message-ID: <{id}@{domain}>\r\n"))
        .unwrap_or_default();
    let mut message = format!(
        "From: MAILER-DAEMON@mx.remote.test (Mail Delivery System)\r\nTo: {to}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nThis is the mail system at host mx.remote.test.\r\n\
         <{recipient}>: host mailstore.remote.test[192.0.2.7] said: 550 5.1.1 <{recipient}>:\r\n\
         \x20   Recipient address rejected: User unknown\r\n\r\n\
         --b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.test\r\n\r\n\
         Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Remote-MTA: dns; mailstore.remote.test\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown\r\n\r\n\
         --b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: Shop <news@{domain}>\r\nTo: {recipient}\r\n\
         Subject: Offers\r\n{message_id}MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    let line = "Hello, here are this month's offers, with a line of text to make up the size.\r\n";
    while message.len() + line.len() + 12 < bytes {
        message.push_str(line);
    }
    message.push_str("\r\n--b1--\r\n");
    message
}

/// Runs the bench (see the module doc).
pub async fn inbound(
    base: &SendmillConfig,
    runs: usize,
    messages_per_run: usize,
    connections: usize,
    message_bytes: usize,
) -> anyhow::Result<InboundReport> {
    let sample = dsn(
        "b+0193a0b0c0d070008000000000000001-0011223344556677@bounces.bench.test",
        "reader@d1.test",
        "bench.test",
        Some(&uuid::Uuid::now_v7().to_string()),
        message_bytes,
    );
    let rules = Rules::builtin();
    let mut classify_runs = Vec::new();
    for _ in 0..runs {
        classify_runs.push(super::rate(Duration::from_secs(2), || {
            std::hint::black_box(analyze(sample.as_bytes(), "", &rules));
            Ok::<_, anyhow::Error>(())
        })?);
    }

    let store = super::migrated_store(base).await?;
    let run = Run::new(base)?;
    // The processor looks each DSN's message up in the run's own event store.
    sendmill_analytics::schema::migrate(&run.config.clickhouse)
        .await
        .context("migrating ClickHouse")?;
    let broker = BenchTopics::create(&run.config).await?;
    let (domain, _key) = super::tenant(&store, &run.id).await?;
    let listen = super::pipeline::free_addr()?;
    let ops = super::pipeline::free_addr()?;
    let config_file = run.write_config()?;
    let mut toml = std::fs::read_to_string(&config_file)?;
    toml.push_str(&format!(
        "\n[tracking]\nsecret = \"a-bench-only-secret-of-at-least-32-bytes\"\n\
         [inbound]\nlisten = \"{listen}\"\nops_listen = \"{ops}\"\nmax_connections_per_ip = {}\n",
        connections + 1
    ));
    std::fs::write(&config_file, toml)?;
    let mut child = run.spawn("inbound", "inbound", &config_file)?;
    child.wait_listening(listen).await?;
    let to = format!("postmaster@{}", domain.return_path_domain);
    // A Message-ID of the tenant's domain that names no message of its own.
    let unknown = uuid::Uuid::now_v7().to_string();
    let mut data = dsn(
        &to,
        "reader@d1.test",
        &domain.domain,
        Some(&unknown),
        message_bytes,
    )
    .into_bytes();
    data.extend_from_slice(b".\r\n");
    let data = Arc::new(data);

    let mut received_runs = Vec::new();
    let mut processed_runs = Vec::new();
    let mut cpu_runs = Vec::new();
    let mut kept_before = store.count_kept_returns(domain.account_id).await?;
    // Run 0 warms the clients, the consumer group and the caches; it is not counted.
    for run_index in 0..=runs {
        let cpu_before = cpu_seconds(&child.pid()).unwrap_or(0.0);
        let started = Instant::now();
        let mut sessions = tokio::task::JoinSet::new();
        for c in 0..connections {
            let share =
                messages_per_run / connections + usize::from(c < messages_per_run % connections);
            let (data, to) = (data.clone(), to.clone());
            sessions.spawn(async move { session(listen, &to, &data, share).await });
        }
        while let Some(done) = sessions.join_next().await {
            done??;
        }
        let received = started.elapsed().as_secs_f64();
        let want = kept_before + messages_per_run as u64;
        loop {
            let kept = store.count_kept_returns(domain.account_id).await?;
            if kept >= want {
                kept_before = kept;
                break;
            }
            child.check_alive()?;
            if started.elapsed().as_secs() > 600 {
                bail!(
                    "only {} of {messages_per_run} DSNs processed in 600 s",
                    kept - kept_before
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let processed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(&child.pid()).unwrap_or(0.0) - cpu_before;
        if run_index > 0 {
            received_runs.push(messages_per_run as f64 / received);
            processed_runs.push(messages_per_run as f64 / processed);
            cpu_runs.push(cpu / messages_per_run as f64 * 1000.0);
        }
    }
    drop(child);
    store.delete_kept_returns(domain.account_id).await.ok();
    broker.delete().await;
    super::pipeline::drop_database(&run.config).await;
    let _ = std::fs::remove_dir_all(&run.dir);
    let cpu = median(cpu_runs);
    Ok(InboundReport {
        runs,
        message_bytes: sample.len(),
        classify_per_sec: median(classify_runs.clone()),
        classify_per_sec_runs: classify_runs,
        messages_per_run,
        connections,
        received_per_sec: median(received_runs),
        processed_per_sec: median(processed_runs.clone()),
        processed_per_sec_runs: processed_runs,
        inbound_cpu_s_per_1000: cpu,
        per_core_per_sec: if cpu > 0.0 { 1000.0 / cpu } else { 0.0 },
    })
}

/// One session sending `count` DSNs, each MAIL+RCPT+DATA pipelined.
async fn session(
    addr: std::net::SocketAddr,
    to: &str,
    data: &[u8],
    count: usize,
) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut s = BufReader::new(tcp);
    expect(&mut s, 220).await?;
    send(&mut s, b"EHLO mx.remote.test\r\n").await?;
    expect(&mut s, 250).await?;
    let envelope = format!("MAIL FROM:<>\r\nRCPT TO:<{to}>\r\nDATA\r\n");
    for _ in 0..count {
        send(&mut s, envelope.as_bytes()).await?;
        expect(&mut s, 250).await?;
        expect(&mut s, 250).await?;
        expect(&mut s, 354).await?;
        send(&mut s, data).await?;
        expect(&mut s, 250).await?;
    }
    send(&mut s, b"QUIT\r\n").await?;
    Ok(())
}
