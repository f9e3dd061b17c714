//! Looking at what a pipeline did from outside: records on a topic, the sink's dumps,
//! MIME as Python's `email` reads it, DKIM as dkimpy checks it.

#![allow(
    clippy::print_stdout,
    reason = "tests report the figures they measured"
)]

use crate::*;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Every record in `topic` on the broker at `bootstrap`.
pub fn read_topic(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Vec<u8>> {
    read_topic_timed(bootstrap, topic, partitions)
        .into_iter()
        .map(|(_, payload)| payload)
        .collect()
}

/// Every record in `topic` with its Kafka timestamp (ms since the epoch).
pub fn read_topic_timed(bootstrap: &str, topic: &str, partitions: i32) -> Vec<(i64, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader consumer");
    let mut records = Vec::new();
    for partition in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        if high <= low {
            continue;
        }
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(low))
            .unwrap();
        consumer.assign(&list).unwrap();
        let mut next = low;
        let deadline = Instant::now() + Duration::from_secs(10);
        while next < high && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                next = message.offset() + 1;
                let at = message.timestamp().to_millis().unwrap_or_default();
                records.push((at, message.payload().unwrap_or_default().to_vec()));
            }
        }
        assert!(
            next >= high,
            "could not read {topic}[{partition}] to its end"
        );
    }
    records
}

/// A ready record built by hand, as render would write it: a minimal message whose
/// Message-ID is `<id@domain>`.
pub fn handmade_ready(
    p: &TestPipeline,
    recipient: &str,
    accepted_at: time::OffsetDateTime,
) -> sendmill_wire::ReadyV1 {
    let id = sendmill_wire::MessageId::generate();
    let message = format!(
        "From: hello@{domain}\r\nTo: {recipient}\r\nSubject: handmade\r\nMessage-ID: <{id}@{domain}>\r\n\r\nbody\r\n",
        domain = p.domain
    );
    sendmill_wire::ReadyV1 {
        message_id: id,
        account_id: p.account,
        lane: sendmill_wire::Lane::Transactional,
        accepted_at,
        envelope_from: format!("hello@{}", p.domain),
        recipient: recipient.into(),
        context: sendmill_wire::MessageContext::default(),
        attempts: 0,
        message: message.into_bytes(),
    }
}

/// Every smtp-sink dump (of the accepting sink) whose Message-ID is in `domain`, read
/// once: message id → the dumps' headers (`X-Client-Addr`, `X-Helo-Args`, …), one map
/// per dump.
pub fn dumps_for_domain(
    domain: &str,
) -> std::collections::HashMap<String, Vec<Vec<(String, String)>>> {
    let suffix = format!("@{domain}>");
    let mut found: std::collections::HashMap<String, Vec<Vec<(String, String)>>> =
        std::collections::HashMap::new();
    for (_, headers) in sink_dump_headers() {
        let id = headers.iter().find_map(|(k, v)| {
            (k.eq_ignore_ascii_case("Message-ID") && v.ends_with(&suffix))
                .then(|| v[1..v.len() - suffix.len()].to_owned())
        });
        if let Some(id) = id {
            found.entry(id).or_default().push(headers.as_ref().clone());
        }
    }
    found
}

/// A dump's envelope and header lines, shared between scans.
type Headers = std::sync::Arc<Vec<(String, String)>>;

/// The envelope and header lines (`name: value`, up to the first empty line) of every
/// sink dump. The sink's directory holds every test's messages of the day (over
/// 100,000 files after a CI run), so parsed headers are kept per file and its length:
/// a scan reads only files that are new or grew since the last one, and a poll that
/// waits for deliveries sees them while they happen, not seconds later.
fn sink_dump_headers() -> Vec<(PathBuf, Headers)> {
    type Parsed = std::collections::HashMap<PathBuf, (u64, Headers)>;
    static PARSED: std::sync::LazyLock<std::sync::Mutex<Parsed>> =
        std::sync::LazyLock::new(Default::default);
    let files = sink_dump_files();
    let mut parsed = PARSED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut all = Vec::with_capacity(files.len());
    for path in files {
        let Ok(len) = std::fs::metadata(&path).map(|m| m.len()) else {
            continue;
        };
        if let Some((_, headers)) = parsed.get(&path).filter(|(seen, _)| *seen == len) {
            all.push((path, headers.clone()));
            continue;
        }
        let headers: Headers = std::sync::Arc::new(
            dump_head(&path)
                .lines()
                .take_while(|l| !l.is_empty())
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                .collect(),
        );
        parsed.insert(path.clone(), (len, headers.clone()));
        all.push((path, headers));
    }
    all
}

/// Every file the accepting smtp-sink has dumped (all tests' messages).
pub fn sink_dump_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![local_dir().join("sinks/ok")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files
}

/// The smtp-sink dump of the message whose Message-ID holds `message_id`.
pub fn dumped_message(message_id: &str) -> Option<PathBuf> {
    dumped_messages(message_id).into_iter().next()
}

/// Every smtp-sink dump holding `message_id`.
pub fn dumped_messages(message_id: &str) -> Vec<PathBuf> {
    let needle = format!("<{message_id}@");
    sink_dump_headers()
        .into_iter()
        .filter(|(_, headers)| {
            headers
                .iter()
                .any(|(k, v)| k == "Message-ID" && v.starts_with(&needle))
        })
        .map(|(path, _)| path)
        .collect()
}

/// The first 64 KiB of a dump: the envelope and the message's header, where the
/// Message-ID is. Reading only this keeps lookups fast however large the messages.
fn dump_head(path: &Path) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(64 * 1024).read_to_end(&mut head);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Removes the sink's dumps of `message_ids` (tests of multi-megabyte messages clean up
/// after themselves: the accepting sink is shared and kept across runs). Returns how
/// many files were removed.
pub fn remove_dumps(message_ids: &[String]) -> usize {
    let wanted: std::collections::HashSet<&str> = message_ids.iter().map(String::as_str).collect();
    let mut removed = 0;
    for path in sink_dump_files() {
        let head = dump_head(&path);
        // `Message-ID: <{id}@{domain}>`: the id is what stands before the `@`.
        let id = head
            .split_once("Message-ID: <")
            .and_then(|(_, rest)| rest.split_once('@'))
            .map(|(id, _)| id);
        if id.is_some_and(|id| wanted.contains(id)) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Python's `email` (policy.strict) view of `message`: decoded parts and the headers asked
/// for (see deploy/local/mime-check.py).
pub fn mime_check(message: &Path, headers: &[&str]) -> Value {
    let output = std::process::Command::new("/usr/bin/python3")
        .arg(repo_root().join("deploy/local/mime-check.py"))
        .arg(message)
        .args(headers)
        .output()
        .expect("python3 is required");
    let parsed: Value = serde_json::from_slice(&output.stdout).expect("mime-check prints JSON");
    assert!(
        output.status.success(),
        "{} does not parse strictly: {parsed}",
        message.display()
    );
    parsed
}

/// The decoded size in bytes of `message`'s part named `filename` (`mime_check`), `None`
/// when it has no such part.
pub fn attachment_size(message: &Path, filename: &str) -> Option<u64> {
    mime_check(message, &[])["parts"]
        .as_array()?
        .iter()
        .find(|part| part["filename"] == filename)?["size"]
        .as_u64()
}

/// The decoded `text/html` part of `message`, as Python's `email` reads it.
pub fn html_part(message: &Path) -> String {
    mime_check(message, &[])["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .find(|part| part["type"] == "text/html")
        .and_then(|part| part["text"].as_str())
        .expect("an HTML part")
        .to_owned()
}

/// The id of the first message in a 202 answer.
/// Every message id of a send answer (`messages[].message_id`), in order.
pub fn message_ids(response: &Value) -> Vec<String> {
    response["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["message_id"].as_str().expect("a message id").to_owned())
        .collect()
}

pub fn first_message_id(response: &Value) -> String {
    response["messages"][0]["message_id"]
        .as_str()
        .expect("a message id")
        .to_owned()
}

/// Runs dkimpy (Debian's python3-dkim) on `message` with the given key record.
pub fn dkim_verifies(message: &Path, record: &(String, String)) -> bool {
    let output = std::process::Command::new("/usr/bin/python3")
        .arg(repo_root().join("deploy/local/dkim-verify.py"))
        .arg(message)
        .arg("--txt")
        .arg(format!("{}={}", record.0, record.1))
        .output()
        .expect("dkimpy is required: run deploy/local/install-packages.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() || stdout.contains("FAIL"),
        "dkim-verify.py could not run: {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    output.status.success()
}
