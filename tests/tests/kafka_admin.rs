//! `sendmill migrate`'s topic administration on the real broker: created with the
//! documented settings, drift reported by `check`, reconciled (partitions grown, configs
//! altered), and a second run changes nothing.

use sendmill_platform::kafka::{admin, KafkaConnection};
use sendmill_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_reports_and_reconciles_every_topic() {
    let mut config = test_config(&unique("admin"));
    let kafka = KafkaConnection::new(config.kafka.brokers.clone(), config.kafka.clone());
    let specs = admin::plan(&kafka);
    assert_eq!(specs.len(), kafka.topics.all().len());
    let queue = specs
        .iter()
        .find(|s| s.name == kafka.topics.requested(sendmill_wire::Lane::Bulk))
        .unwrap();
    assert_eq!(
        queue.configs["retention.ms"],
        (7 * 24 * 3_600_000u64).to_string()
    );
    assert_eq!(queue.configs["max.message.bytes"], "33554432");

    let missing = admin::check(&kafka, &specs).await.expect("Kafka answers");
    assert_eq!(
        missing.len(),
        specs.len(),
        "every topic missing: {missing:?}"
    );
    let created = admin::reconcile(&kafka, &specs).await.unwrap();
    assert_eq!(created.created.len(), specs.len());
    assert_eq!(admin::check(&kafka, &specs).await.unwrap(), vec![]);
    assert!(admin::reconcile(&kafka, &specs)
        .await
        .unwrap()
        .changed_nothing());

    // The config changes: more partitions, longer event retention.
    config.kafka.partitions = 3;
    config.kafka.events_retention_hours = 240;
    let changed = KafkaConnection::new(config.kafka.brokers.clone(), config.kafka.clone());
    let new_specs = admin::plan(&changed);
    let drift = admin::check(&changed, &new_specs).await.unwrap();
    let events = changed.topics.events();
    assert!(
        drift.contains(&admin::Drift::TooFewPartitions {
            topic: events.clone(),
            have: 2,
            want: 3
        }),
        "{drift:?}"
    );
    assert!(
        drift.contains(&admin::Drift::Config {
            topic: events.clone(),
            key: "retention.ms",
            have: Some((7 * 24 * 3_600_000u64).to_string()),
            want: (240 * 3_600_000u64).to_string(),
        }),
        "{drift:?}"
    );
    let done = admin::reconcile(&changed, &new_specs).await.unwrap();
    assert_eq!(done.partitions_added.len(), new_specs.len());
    assert_eq!(
        done.configs_altered,
        vec![events.clone(), changed.topics.alerts()]
    );
    // New partitions reach the metadata the check reads a moment after CreatePartitions
    // answers (seen on a busy host): wait for the cluster to show them.
    let settled = poll_until(Duration::from_secs(30), || async {
        let drift = admin::check(&changed, &new_specs).await.unwrap();
        drift.is_empty().then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "{:?}",
        admin::check(&changed, &new_specs).await.unwrap()
    );
    assert!(admin::reconcile(&changed, &new_specs)
        .await
        .unwrap()
        .changed_nothing());

    admin::delete_topics(&changed, &changed.topics.all())
        .await
        .unwrap();
}
