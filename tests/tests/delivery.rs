//! The dispatcher's promises, on real smtp-sink MX hosts, dnsmasq, Redis and ClickHouse:
//! a redelivered record is never sent twice, a delayed record waits until due, an
//! expired one bounces, and a record nobody can read is kept in the DLQ.

use sendmill::Stage;
use sendmill_tests::*;
use sendmill_wire::{
    decode, DeadLetterV1, EventType, EventV1, Lane, ReadyV1, RequestedV1, RetryTier, RetryV1,
};
use serde_json::json;
use std::time::Duration;
use time::OffsetDateTime;

const LIMIT: Duration = Duration::from_secs(60);

fn events_of(p: &TestPipeline, id: &str) -> Vec<EventV1> {
    p.events()
        .into_iter()
        .filter(|e| e.message_id.to_string() == id)
        .collect()
}

/// The DLQ's letter for the record keyed `key`, once it is there (`None` after `LIMIT`).
async fn dead_letter(p: &TestPipeline, key: &str) -> Option<DeadLetterV1> {
    poll_until(LIMIT, || async {
        p.read_topic(&p.topics.dlq())
            .iter()
            .map(|b| decode::<DeadLetterV1>(b).unwrap())
            .find(|d| d.key.as_deref() == Some(key))
    })
    .await
}

fn ready_to(p: &TestPipeline, recipient: &str, accepted_at: OffsetDateTime) -> ReadyV1 {
    handmade_ready(p, recipient, accepted_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ready_version_1_render_writes_json_records_that_are_delivered() {
    // The first rollout of an upgrade: records an older release can read.
    let p = TestPipeline::start_configured(&Stage::ALL, |c| {
        c.kafka.ready_version = 1;
        c.kafka.requested_version = 1;
    })
    .await;
    let (status, body) = p
        .send(&message_to(&p, json!(["v1@ok.test", "v1b@ok.test"])))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = first_message_id(&body);
    p.wait_for_status(&id, "delivered", LIMIT).await;
    // Render's `ready` and ingest's `requested` records are both version 1: JSON.
    let ready = p.read_topic(&p.topics.ready(Lane::Transactional));
    let requested = p.read_topic(&p.topics.requested(Lane::Transactional));
    for (what, records) in [("ready", &ready), ("requested", &requested)] {
        assert_eq!(records.len(), 2, "{what}");
        for bytes in records {
            assert!(
                bytes.starts_with(b"{"),
                "{what}: {}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
    for bytes in &ready {
        let json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(
            json["recipient"],
            decode::<ReadyV1>(bytes).unwrap().recipient.as_str()
        );
    }
    for bytes in &requested {
        let json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let record = decode::<RequestedV1>(bytes).unwrap();
        assert_eq!(json["message_id"], record.message_id.to_string().as_str());
    }
    assert_eq!(dumped_messages(&id).len(), 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_ready_record_is_not_sent_twice() {
    let p = TestPipeline::start().await;
    let (status, body) = p.send(&message_to(&p, json!(["once@ok.test"]))).await;
    assert_eq!(status, 202, "{body}");
    let id = first_message_id(&body);
    p.wait_for_status(&id, "delivered", LIMIT).await;

    // The crash case: the record comes again after its delivery.
    let records = p.read_topic(&p.topics.ready(Lane::Transactional));
    // Render wrote it as a version 2 frame (the default `kafka.ready_version`), and
    // ingest its `requested` record (`kafka.requested_version`).
    assert!(records.iter().all(|b| b.starts_with(b"SMR2")));
    let requested = p.read_topic(&p.topics.requested(Lane::Transactional));
    assert!(!requested.is_empty() && requested.iter().all(|b| b.starts_with(b"SMQ2")));
    let ready: ReadyV1 = records
        .iter()
        .map(|b| decode::<ReadyV1>(b).unwrap())
        .find(|r| r.message_id.to_string() == id)
        .unwrap();
    p.produce(&p.topics.ready(Lane::Transactional), &id, &ready)
        .await;

    // The dispatcher answers a redelivery by repeating the recorded event.
    let repeated = poll_until(LIMIT, || async {
        let delivered: Vec<EventV1> = events_of(&p, &id)
            .into_iter()
            .filter(|e| e.event_type == EventType::Delivered)
            .collect();
        (delivered.len() == 2).then_some(delivered)
    })
    .await
    .expect("the redelivered record was handled");
    assert_eq!(
        repeated[0].event_id, repeated[1].event_id,
        "the same event, not a new one"
    );
    assert_eq!(
        dumped_messages(&id).len(),
        1,
        "the message reached the MX twice"
    );
    // ClickHouse collapses the repeated event.
    let stored = poll_until(LIMIT, || async {
        let types = p.stored_event_types(&id).await;
        (types == ["accepted", "delivered"]).then_some(types)
    })
    .await;
    assert!(stored.is_some(), "{:?}", p.stored_event_types(&id).await);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_record_goes_back_to_delivery_when_due_and_not_before() {
    let p = TestPipeline::start().await;
    let ready = ready_to(&p, "retry@ok.test", OffsetDateTime::now_utc());
    let id = ready.message_id.to_string();
    let due_at = OffsetDateTime::now_utc() + Duration::from_secs(3);
    let retry = RetryV1 {
        ready: ReadyV1 {
            attempts: 1,
            ..ready
        },
        due_at,
        last_reply: None,
        last_error: Some("test".into()),
    };
    p.produce(
        &p.topics.retry(Lane::Transactional, RetryTier::OneMinute),
        &id,
        &retry,
    )
    .await;
    let timeline = p.wait_for_status(&id, "delivered", LIMIT).await;
    let delivered = &timeline["events"][0];
    assert_eq!(delivered["attempt"], 2);
    let at_ms = delivered["at_ms"].as_u64().unwrap() as i128;
    let due_ms = due_at.unix_timestamp_nanos() / 1_000_000;
    assert!(
        at_ms >= due_ms,
        "delivered {} ms before it was due",
        due_ms - at_ms
    );
    assert_eq!(dumped_messages(&id).len(), 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_failure_past_the_retry_window_expires_with_the_last_reply() {
    let p = TestPipeline::start().await;
    // Accepted almost 24 h ago: the next retry would fall past the window.
    let accepted = OffsetDateTime::now_utc() - Duration::from_secs(24 * 3600 - 30);
    let ready = ready_to(&p, "late@defer.test", accepted);
    let id = ready.message_id.to_string();
    p.produce(&p.topics.ready(Lane::Transactional), &id, &ready)
        .await;
    let timeline = p.wait_for_status(&id, "expired", LIMIT).await;
    let expired = &timeline["events"][0];
    assert_eq!(expired["smtp_code"], 451);
    assert_eq!(expired["bounce_category"], "expired");
    assert!(p
        .read_topic(&p.topics.retry(Lane::Transactional, RetryTier::OneMinute))
        .is_empty());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_the_scheduler_cannot_read_is_kept_in_the_dlq() {
    // A release that cannot read a held payload (a rollback past a record version, a
    // damaged row) must not drop it unseen: the releaser dead-letters it.
    let p = TestPipeline::start_stages(&[Stage::Ingest]).await;
    let id = sendmill_wire::MessageId::generate();
    p.store()
        .await
        .schedule(
            p.topics.prefix(),
            p.account,
            sendmill_wire::BatchId::generate(),
            &[(
                id,
                OffsetDateTime::now_utc(),
                b"SMQ9 from the future".to_vec(),
            )],
            None,
        )
        .await
        .unwrap();
    let letter = dead_letter(&p, &id.to_string())
        .await
        .expect("the unreadable held message reached the DLQ");
    assert_eq!(letter.stage, "scheduler");
    assert_eq!(letter.payload, b"SMQ9 from the future");
    assert!(
        letter.reason.contains("sendmill.requested.v2"),
        "{}",
        letter.reason
    );
    assert!(
        p.read_topic(&p.topics.requested(Lane::Transactional))
            .is_empty()
            && p.read_topic(&p.topics.requested(Lane::Bulk)).is_empty(),
        "nothing was released as a message"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_is_kept_in_the_dlq_with_its_reason() {
    let p = TestPipeline::start().await;
    p.producer()
        .send_bytes(
            &p.topics.requested(Lane::Transactional),
            "k1",
            b"not json",
            "garbage",
        )
        .await
        .unwrap();
    let letter = dead_letter(&p, "k1")
        .await
        .expect("the record reached the DLQ");
    assert_eq!(letter.stage, "render");
    assert_eq!(letter.payload, b"not json");
    assert_eq!(letter.source_topic, p.topics.requested(Lane::Transactional));
    assert!(
        letter.reason.contains("sendmill.requested.v2"),
        "{}",
        letter.reason
    );
    // The stage goes on: a good message after the poison one is delivered.
    let (status, body) = p
        .send(&message_to(&p, json!(["after-poison@ok.test"])))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["messages"][0]["message_id"].as_str().unwrap();
    p.wait_for_status(id, "delivered", LIMIT).await;
    p.stop().await;
}
