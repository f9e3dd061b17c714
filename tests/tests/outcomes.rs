//! Loss can't hide: a message whose record was lost after its `accepted` event (the
//! event is written here, the record never is) is counted in flight, then overdue, on
//! `GET /v1/stats/pending`, `/metrics` and in an alert on the alerts topic; a delivered
//! message is not counted, and a scheduled one is in flight but never overdue.

use sendmill_tests::*;
use sendmill_wire::{AlertV1, EventType, EventV1, MessageContext, MessageId};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_message_without_an_outcome_is_counted_overdue_and_alerted() {
    let p = TestPipeline::start_configured(&sendmill::Stage::ALL, |config| {
        config.analytics.outcomes.check = std::time::Duration::from_secs(1);
        config.analytics.outcomes.overdue_after = std::time::Duration::from_secs(3);
    })
    .await;

    // A delivered message: no longer in flight once its outcome is stored.
    let (status, response) = p.send(&message_to(&p, json!(["kept@ok.test"]))).await;
    assert_eq!(status, 202, "{response}");
    let delivered = first_message_id(&response);
    p.wait_for_status(&delivered, "delivered", Duration::from_secs(60))
        .await;
    // A scheduled message: in flight, silent by design, never overdue.
    let mut scheduled = message_to(&p, json!(["later@ok.test"]));
    let at = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    scheduled["send_at"] = json!(at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap());
    let (status, response) = p.send(&scheduled).await;
    assert_eq!(status, 202, "{response}");
    // The lost one: accepted, then nothing.
    let lost = MessageId::generate();
    let accepted = EventV1::new(
        EventType::Accepted,
        "ingest",
        lost,
        p.account,
        "lost@ok.test",
        &MessageContext::default(),
    );
    p.produce(&p.topics.events(), &lost.to_string(), &accepted)
        .await;

    let pending = poll_until(Duration::from_secs(60), || async {
        let (status, body) = p
            .call_analytics(&p.api_key, reqwest::Method::GET, "/v1/stats/pending")
            .await;
        assert_eq!(status, 200, "{body}");
        (body["overdue"] == 1 && body["in_flight"] == 2).then_some(body)
    })
    .await
    .expect("the lost message is counted overdue within 60 s");
    let by = pending["by"].as_array().unwrap();
    let row = |stage: &str| {
        by.iter()
            .find(|r| r["stage"] == stage && r["lane"] == "transactional")
            .unwrap_or_else(|| panic!("a transactional {stage} row in {pending}"))
    };
    assert_eq!(
        (
            row("ingest")["in_flight"].as_u64(),
            row("ingest")["overdue"].as_u64()
        ),
        (Some(1), Some(1)),
        "{pending}"
    );
    assert_eq!(
        (
            row("scheduled")["in_flight"].as_u64(),
            row("scheduled")["overdue"].as_u64()
        ),
        (Some(1), Some(0)),
        "{pending}"
    );
    assert_eq!(pending["overdue_after_secs"], 3);

    // Another tenant sees none of it.
    let other = p.tenant("outsider").await;
    let (status, body) = p
        .call_analytics(&other.api_key, reqwest::Method::GET, "/v1/stats/pending")
        .await;
    assert_eq!((status, &body["in_flight"]), (200, &json!(0)), "{body}");

    // The gauges, refreshed by the analytics task.
    let metrics = poll_until(Duration::from_secs(30), || async {
        let text = p.metrics().await;
        text.lines()
            .any(|l| {
                l.starts_with("sendmill_messages_overdue{")
                    && l.contains("lane=\"transactional\"")
                    && l.contains("stage=\"ingest\"")
                    && l.ends_with(" 1")
            })
            .then_some(text)
    })
    .await
    .expect("/metrics shows the overdue message");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sendmill_messages_in_flight{")
                && l.contains("stage=\"scheduled\"")
                && l.ends_with(" 1")),
        "the scheduled message is in flight on /metrics"
    );

    // The alert, once.
    let alerts = poll_until(Duration::from_secs(30), || async {
        let records = p.read_topic(&p.topics.alerts());
        (!records.is_empty()).then_some(records)
    })
    .await
    .expect("an alert is written to the alerts topic");
    let alert: AlertV1 = sendmill_wire::decode(&alerts[0]).unwrap();
    assert_eq!(
        (
            alert.subject_kind.as_str(),
            alert.subject.as_str(),
            alert.metric.as_str()
        ),
        ("pipeline", "transactional/ingest", "overdue_messages")
    );
    assert_eq!(alert.value, 1.0);
    assert_eq!(alerts.len(), 1, "one alert while it stays overdue");
    p.stop().await;
}
