//! `sendmill bench fanout`: what one large request writes to Kafka, with its shared parts
//! copied into every recipient's record (`kafka.requested_version = 2`) and written once
//! to the blobs topic (3).
//!
//! Each run starts a `sendmill ingest` child on its own topics, posts one request (by
//! default 1,000 recipients, the ~15 KB bench template and a 2 MiB attachment of random
//! bytes, as incompressible as a PDF), and once it is answered 202 reads every topic back
//! and adds up its records' bytes (key and value, as the producer handed them to the
//! broker, before lz4). It reports those bytes per topic and request, the time to the 202
//! and the ingest process's CPU and peak resident memory.

use super::{median, send_body, template, IngestChild};
use anyhow::Context;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::Message,
    Offset, TopicPartitionList,
};
use std::time::{Duration, Instant};

/// One record-version's figures (medians of the runs; bytes are the same every run).
#[derive(Debug, serde::Serialize)]
pub struct FanoutShape {
    /// `kafka.requested_version` of the run.
    pub requested_version: u8,
    /// Bytes of records written per request, by topic family.
    pub requested_bytes: u64,
    pub blobs_bytes: u64,
    pub events_bytes: u64,
    /// Milliseconds from sending the request to its 202.
    pub accept_ms: f64,
    pub accept_ms_runs: Vec<f64>,
    /// CPU seconds of the ingest process for the request.
    pub ingest_cpu_s: f64,
    /// Peak resident memory of the ingest process (`VmHWM`), MiB.
    pub ingest_peak_mib: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct FanoutReport {
    pub recipients: usize,
    pub attachment_bytes: usize,
    pub html_bytes: usize,
    pub runs: usize,
    pub shapes: Vec<FanoutShape>,
}

/// Runs the bench (module doc) `runs` times per record version.
///
/// Errors: PostgreSQL, Kafka or the ingest child cannot be reached or started, or the
/// request is not answered 202.
pub async fn fanout(
    config: &crate::SendmillConfig,
    recipients: usize,
    attachment_bytes: usize,
    runs: usize,
) -> anyhow::Result<FanoutReport> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let store = super::migrated_store(config).await?;
    let (html, text) = template();
    let attachment = STANDARD.encode(random_bytes(attachment_bytes));
    let mut shapes = Vec::new();
    for version in [2u8, 3] {
        let mut bytes = (0, 0, 0);
        let (mut accept_ms, mut cpu, mut peak) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let mut base = config.clone();
            base.kafka.requested_version = version;
            let IngestChild {
                run,
                broker,
                domain,
                key,
                mut process,
            } = IngestChild::start(&base, &store).await?;
            let mut body: serde_json::Value =
                serde_json::from_str(&send_body(&domain.domain, &html, &text, recipients, 0, 10))?;
            body["attachments"] = serde_json::json!([{
                "filename": "report.pdf",
                "content_type": "application/pdf",
                "content": attachment,
            }]);
            let body = body.to_string();
            let cpu_before = super::cpu_seconds(&process.pid());
            let started = Instant::now();
            let response = reqwest::Client::new()
                .post(format!("http://{}/v1/messages", run.ingest))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let elapsed = started.elapsed();
            anyhow::ensure!(
                status.as_u16() == 202,
                "the request was answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
            process.check_alive()?;
            accept_ms.push(elapsed.as_secs_f64() * 1000.0);
            cpu.push(
                super::cpu_seconds(&process.pid())
                    .zip(cpu_before)
                    .map(|(after, before)| after - before)
                    .context("reading the ingest process's CPU time from /proc")?,
            );
            peak.push(peak_rss_mib(&process.pid()).unwrap_or(f64::NAN));
            let kafka = &broker.kafka;
            let topics = &kafka.topics;
            let requested = topics.requested(sendmill_wire::Lane::Transactional);
            bytes = (
                topic_bytes(kafka, &requested)?,
                topic_bytes(kafka, &topics.blobs())?,
                topic_bytes(kafka, &topics.events())?,
            );
            drop(process);
            broker.delete().await;
            let _ = std::fs::remove_dir_all(&run.dir);
        }
        shapes.push(FanoutShape {
            requested_version: version,
            requested_bytes: bytes.0,
            blobs_bytes: bytes.1,
            events_bytes: bytes.2,
            accept_ms: median(accept_ms.clone()),
            accept_ms_runs: accept_ms,
            ingest_cpu_s: median(cpu),
            ingest_peak_mib: median(peak),
        });
    }
    Ok(FanoutReport {
        recipients,
        attachment_bytes,
        html_bytes: html.len(),
        runs,
        shapes,
    })
}

/// `len` bytes of xorshift64 output: as incompressible for lz4 as a PDF or an image.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The process's peak resident memory (`VmHWM` of `/proc/PID/status`), MiB.
fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The bytes (keys and values) of every record in `topic`, read from the start of each
/// partition to its end.
///
/// Errors: the broker does not answer within 30 s.
fn topic_bytes(
    kafka: &sendmill_platform::kafka::KafkaConnection,
    topic: &str,
) -> anyhow::Result<u64> {
    let mut config = kafka.client_config();
    config
        .set("group.id", kafka.group_id("sendmill-bench-fanout"))
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("receive.message.max.bytes", "53477376");
    let consumer: BaseConsumer = config.create()?;
    let mut list = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for partition in 0..kafka.config.partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if high > low {
            list.add_partition_offset(topic, partition, Offset::Offset(low))?;
            ends.insert(partition, high);
        }
    }
    if ends.is_empty() {
        return Ok(0);
    }
    consumer.assign(&list)?;
    let mut total = 0u64;
    let started = Instant::now();
    while !ends.is_empty() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "reading {topic} back took over 120 s"
        );
        let Some(record) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let record = record?;
        total += (record.key_len() + record.payload_len()) as u64;
        if ends.get(&record.partition()) == Some(&(record.offset() + 1)) {
            ends.remove(&record.partition());
        }
    }
    Ok(total)
}
