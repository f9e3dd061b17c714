//! The send API while Kafka is gone: never a 202 for a record the broker has not
//! acknowledged. With the test's own broker SIGKILLed, a request is answered 503 with
//! `Retry-After`; once the broker is back (on its data), the same request with the same
//! `Idempotency-Key` is accepted, and the broker holds the records of exactly the
//! messages the 202s name.
#![allow(
    clippy::print_stdout,
    reason = "tests report the figures they measured"
)]

use sendmill::Stage;
use sendmill_tests::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_503_while_the_broker_is_down_and_202_once_it_is_back() {
    let kafka = KafkaCluster::start(&["127.0.0.1"]);
    let brokers = kafka.brokers();
    let mut kafka = kafka;
    let p = TestPipeline::start_configured(&[Stage::Ingest], move |config| {
        config.kafka.brokers = brokers;
    })
    .await;
    let body = message_to(&p, json!(["outage@ok.test", "outage2@ok.test"]));
    let post = |key: &'static str| {
        p.http
            .post(format!("http://{}/v1/messages", p.ingest))
            .bearer_auth(&p.api_key)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let (status, before) = p.send(&body).await;
    assert_eq!(status, 202, "{before}");

    tokio::task::block_in_place(|| kafka.kill(0));
    let started = Instant::now();
    let refused = post("outage-1").await.expect("ingest answers");
    let waited = started.elapsed();
    assert_eq!(refused.status().as_u16(), 503);
    assert!(
        refused.headers().contains_key("retry-after"),
        "{:?}",
        refused.headers()
    );
    let error: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unavailable", "{error}");
    println!("503 after {waited:?} with the broker down");

    tokio::task::block_in_place(|| kafka.restart(0));
    let accepted = poll_until(Duration::from_secs(60), || async {
        let response = post("outage-1").await.ok()?;
        (response.status().as_u16() == 202).then_some(())?;
        response.json::<serde_json::Value>().await.ok()
    })
    .await
    .expect("accepted once the broker is back");
    let ids = message_ids(&accepted);
    assert_eq!(ids.len(), 2);

    // The records the 202s promised are on the broker, and nothing else: the refused
    // attempt's records, if the client library delivered them once the broker was back,
    // carry the same message ids (ids derive from the idempotent batch), which the
    // dispatcher sends once.
    let first = message_ids(&before);
    let requested: std::collections::BTreeSet<String> = sendmill_wire::Lane::ALL
        .iter()
        .flat_map(|&lane| p.read_topic(&p.topics.requested(lane)))
        .map(|b| {
            let r: sendmill_wire::RequestedV1 = sendmill_wire::decode(&b).unwrap();
            r.message_id.to_string()
        })
        .collect();
    let promised: std::collections::BTreeSet<String> = first.into_iter().chain(ids).collect();
    assert_eq!(requested, promised);
    p.stop().await;
    drop(kafka);
}
