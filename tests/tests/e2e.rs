//! One message through every stage on real services: POST → Kafka → render → dispatcher
//! → smtp-sink / postfix-style rejections → events in ClickHouse → timeline API.

use sendmill_tests::*;
use sendmill_wire::{decode, EventType, Lane, RetryTier, RetryV1};
use serde_json::json;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// SIGTERM to an ingest process: `/readyz` fails at once (the balancer's cue) while
/// requests are still taken for `drain_delay`; then the listener closes, and the
/// process exits 0. Every request answered 202 is in Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_on_sigterm_fails_readiness_first_then_stops_taking_requests() {
    let p = TestPipeline::start_stages(&[]).await;
    let log = std::env::temp_dir().join(format!("{}ingest.log", p.config.kafka.topic_prefix));
    // Long enough that the requests below land inside it on a loaded machine.
    let section = "[ingest]\nlisten = \"127.0.0.1:0\"\nallow_unverified_domains = true\n\
                   drain_delay = \"15s\"\n";
    let mut ingest =
        StageProcess::start_logged(&p, &p.config, "ingest", "ingest", section, &log, "info");
    let api = logged_address(&log, "send API");
    let readyz = |http: reqwest::Client| async move {
        let response = http.get(format!("http://{api}/readyz")).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json::<serde_json::Value>().await.ok()?))
    };
    poll_until(LIMIT, || async {
        readyz(p.http.clone()).await.filter(|(s, _)| *s == 200)
    })
    .await
    .expect("/readyz answers 200");
    let send = |http: reqwest::Client, to: &'static str| {
        let (body, key) = (message_to(&p, json!([to])), p.api_key.clone());
        async move {
            http.post(format!("http://{api}/v1/messages"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
        }
    };
    // `sendmill probe`, the images' health check, says the same.
    let probe = |path: &str| {
        std::process::Command::new(sendmill_binary())
            .args(["probe", &format!("http://{api}{path}")])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(probe("/readyz"));
    let before = send(p.http.clone(), "before@ok.test").await.unwrap();
    assert_eq!(before.status().as_u16(), 202);
    let before = first_message_id(&before.json().await.unwrap());

    ingest.sigterm();
    let (_, not_ready) = poll_until(LIMIT, || async {
        readyz(p.http.clone()).await.filter(|(s, _)| *s == 503)
    })
    .await
    .expect("/readyz answers 503 once draining");
    assert_eq!(not_ready["status"], "not_ready");
    assert_eq!(not_ready["checks"]["ingest accepting requests"], "draining");
    assert!(!probe("/readyz"), "sendmill probe fails while draining");
    assert!(probe("/livez"), "still live while draining");
    let during = send(p.http.clone(), "during@ok.test").await.unwrap();
    assert_eq!(
        during.status().as_u16(),
        202,
        "taken during the drain delay"
    );
    let during = first_message_id(&during.json().await.unwrap());

    let status = tokio::task::spawn_blocking(move || {
        let status = ingest.wait_exit(LIMIT);
        drop(ingest);
        status
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(send(p.http.clone(), "after@ok.test").await.is_err());
    let queued: Vec<String> = p
        .read_topic(&p.topics.requested(Lane::Transactional))
        .iter()
        .map(|payload| String::from_utf8_lossy(payload).into_owned())
        .collect();
    for id in [&before, &during] {
        assert!(
            queued.iter().any(|r| r.contains(id.as_str())),
            "{id} is not in Kafka"
        );
    }
    p.stop().await;
}

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
    let p = TestPipeline::start().await;
    // 1.5 MB: larger than Kafka's default 1 MB record limit once encoded.
    let content: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let mut body = message_to(&p, json!(["files@ok.test"]));
    attach(&mut body, "data.bin", &content);
    let (status, response) = p.send(&body).await;
    assert_eq!(status, 202, "{response}");
    let id = first_message_id(&response);
    p.wait_for_status(&id, "delivered", LIMIT).await;
    let dump = dumped_message(&id).expect("delivered to the sink");
    assert_eq!(
        attachment_size(&dump, "data.bin"),
        Some(content.len() as u64),
        "the attachment arrived whole"
    );
    assert!(dkim_verifies(&dump, &p.dkim_record));
    p.stop().await;
}
