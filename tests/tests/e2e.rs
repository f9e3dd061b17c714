//! One message through every stage on real services: POST → Kafka → render → dispatcher
//! → smtp-sink / postfix-style rejections → events in ClickHouse → timeline API.

use sendmill_tests::*;
use sendmill_wire::{decode, EventType, Lane, RetryTier, RetryV1};
use serde_json::json;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_delivered_dkim_signed_and_its_timeline_is_in_clickhouse() {
    let p = TestPipeline::start().await;
    let (status, body) = p
        .send(&message_to(
            &p,
            json!([{"email": "ada@ok.test", "name": "Ada", "data": {"name": "Ada"}}]),
        ))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = first_message_id(&body);

    let timeline = p.wait_for_status(&id, "delivered", LIMIT).await;
    let types: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["accepted", "delivered"]);
    let delivered = &timeline["events"][1];
    assert_eq!(delivered["smtp_code"], 250);
    assert_eq!(delivered["mx_host"], "mx.ok.test");
    assert_eq!(delivered["tags"], json!(["e2e"]));

    let dump = dumped_message(&id).expect("the message reached the smtp-sink");
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(text.contains("Subject: Hello Ada"), "{text}");
    assert!(text.contains("<h1>Hello Ada</h1>"), "{text}");
    assert!(text.contains("X-Rcpt-Args: <ada@ok.test>"), "{text}");
    assert!(
        dkim_verifies(&dump, &p.dkim_record),
        "dkimpy rejects the signature of {}",
        dump.display()
    );
    // Tampering must break it, or the check above proves nothing.
    let tampered = dump.with_extension("tampered");
    std::fs::write(&tampered, text.replace("Hello Ada", "Hello Eve")).unwrap();
    assert!(!dkim_verifies(&tampered, &p.dkim_record));
    std::fs::remove_file(&tampered).unwrap();

    // Ops endpoints answer, and the stages counted what they did.
    let health: serde_json::Value = p
        .http
        .get(format!("http://{}/healthz", p.ingest))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = p.metrics().await;
    for name in [
        "sendmill_ingest_accepted_total",
        "sendmill_rendered_total",
        "sendmill_dispatch_events_total{type=\"delivered\"}",
        "sendmill_smtp_send_seconds",
        "sendmill_analytics_rows_written_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_from_the_mx_is_a_categorized_bounce_and_suppresses_the_address() {
    let p = TestPipeline::start().await;
    let (status, body) = p.send(&message_to(&p, json!(["nobody@bounce.test"]))).await;
    assert_eq!(status, 202, "{body}");
    let id = first_message_id(&body);
    let timeline = p.wait_for_status(&id, "bounced", LIMIT).await;
    let bounced = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "bounced")
        .unwrap();
    assert_eq!(bounced["smtp_code"], 550);
    assert_eq!(bounced["smtp_enhanced"], "5.1.1");
    assert_eq!(bounced["bounce_category"], "bad_mailbox");
    assert_eq!(p.stored_event_types(&id).await, ["accepted", "bounced"]);
    // The rule for 5.1.1 suppresses the address: the next send is dropped at ingest.
    let (status, body) = p.send(&message_to(&p, json!(["nobody@bounce.test"]))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["messages"][0]["status"], "suppressed", "{body}");
    assert_eq!(
        body["messages"][0]["reason"], "suppressed (bounce)",
        "{body}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_from_the_mx_defers_onto_the_first_retry_topic() {
    let p = TestPipeline::start().await;
    let (status, body) = p.send(&message_to(&p, json!(["later@defer.test"]))).await;
    assert_eq!(status, 202, "{body}");
    let id = first_message_id(&body);
    let timeline = p.wait_for_status(&id, "deferred", LIMIT).await;
    let deferred = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "deferred")
        .unwrap();
    assert_eq!(deferred["smtp_code"], 451);
    assert_eq!(deferred["attempt"], 1);

    let retries: Vec<RetryV1> = p
        .read_topic(&p.topics.retry(Lane::Transactional, RetryTier::OneMinute))
        .iter()
        .map(|bytes| decode(bytes).unwrap())
        .collect();
    let retry = retries
        .iter()
        .find(|r| r.ready.message_id.to_string() == id)
        .expect("the deferred message waits on the 1m retry topic");
    assert_eq!(retry.ready.attempts, 1);
    assert_eq!(retry.last_reply.as_ref().unwrap().code, 451);
    let wait = retry.due_at - retry.ready.accepted_at;
    assert!(
        wait >= time::Duration::seconds(59) && wait <= time::Duration::seconds(90),
        "due {wait} after acceptance"
    );
    // Not due for a minute: nothing terminal happened.
    assert!(!p
        .stored_event_types(&id)
        .await
        .iter()
        .any(|t| t != EventType::Accepted.as_str() && t != EventType::Deferred.as_str()));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_a_large_attachment_crosses_every_stage() {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let p = TestPipeline::start().await;
    // 1.5 MB: larger than Kafka's default 1 MB record limit once encoded.
    let content: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let mut body = message_to(&p, json!(["files@ok.test"]));
    body["attachments"] = json!([{
        "filename": "data.bin",
        "content_type": "application/octet-stream",
        "content": STANDARD.encode(&content)
    }]);
    let (status, response) = p.send(&body).await;
    assert_eq!(status, 202, "{response}");
    let id = first_message_id(&response);
    p.wait_for_status(&id, "delivered", LIMIT).await;
    let dump = dumped_message(&id).expect("delivered to the sink");
    let parsed = mime_check(&dump, &[]);
    let attachment = parsed["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|part| part["filename"] == "data.bin")
        .expect("the attachment arrived");
    assert_eq!(attachment["size"], content.len());
    assert!(dkim_verifies(&dump, &p.dkim_record));
    p.stop().await;
}
