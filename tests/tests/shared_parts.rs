//! A request's large parts cross Kafka once (`sendmill.blobs.v1`), on Apache Kafka, real
//! smtp-sink MX hosts and ClickHouse: every recipient's `requested` record points to them,
//! render reads them back by offset, and a record whose parts are gone or are not the ones
//! it names ends in `render_failed` instead of an empty or wrong message.

use sendmill_tests::*;
use sendmill_wire::{
    decode, EventType, Lane, MessageId, RequestedV1, SharedParts, SharedRef, BLOB_SCHEMA,
};
use serde_json::json;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_template_and_attachment_are_written_once_and_every_recipient_gets_them() {
    let p = TestPipeline::start().await;
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    // ~20 KB of HTML, with a marker that must reach every recipient.
    let html = format!(
        "<h1>Hello {{{{name}}}}</h1>{}<p>shared-marker-7c1</p>",
        "<p>Paragraph of the newsletter.</p>".repeat(600)
    );
    let mut body = message_to(
        &p,
        json!([
            "one@ok.test",
            "two@ok.test",
            "three@ok.test",
            "four@ok.test"
        ]),
    );
    body["html"] = json!(html);
    attach(&mut body, "report.bin", &content);
    let (status, response) = p.send(&body).await;
    assert_eq!(status, 202, "{response}");
    let ids = message_ids(&response);
    assert_eq!(ids.len(), 4);

    // One blob with the template and the attachment; four small records pointing to it.
    let blobs = p.read_topic(&p.topics.blobs());
    assert_eq!(blobs.len(), 1, "the shared parts are written once");
    assert!(blobs[0].len() > content.len() + html.len());
    let requested = p.read_topic(&p.topics.requested(Lane::Transactional));
    assert_eq!(requested.len(), 4);
    for bytes in &requested {
        assert!(bytes.starts_with(b"SMQ3"));
        assert!(bytes.len() < 4096, "a record of {} bytes", bytes.len());
        let record: RequestedV1 = decode(bytes).unwrap();
        let reference = record.shared.expect("points to the blob");
        assert!(SharedParts::from_bytes(&blobs[0], &reference).is_ok());
    }

    for id in &ids {
        p.wait_for_status(id, "delivered", LIMIT).await;
        let dump = dumped_message(id).expect("delivered to the sink");
        assert_eq!(
            attachment_size(&dump, "report.bin"),
            Some(content.len() as u64),
            "the attachment arrived whole"
        );
        assert!(html_part(&dump).contains("shared-marker-7c1"));
        assert!(dkim_verifies(&dump, &p.dkim_record));
    }
    p.stop().await;
}

/// A `requested` record of `p`'s account pointing to its parts (the wire fixture's
/// template, text and no attachment) at `reference`, and the blob holding those parts.
fn record_pointing(p: &TestPipeline, to: &str) -> (RequestedV1, Vec<u8>) {
    let fixture = repo_root().join("wire/tests/fixtures/requested.v1.json");
    let mut record: RequestedV1 = decode(&std::fs::read(fixture).unwrap()).unwrap();
    record.message_id = MessageId::generate();
    record.account_id = p.account;
    record.from.email = format!("hello@{}", p.domain);
    record.to.email = to.into();
    record.context = Default::default();
    let blob = SharedParts::take_from(&mut record).to_bytes();
    (record, blob)
}

async fn render_failure(p: &TestPipeline, id: &str) -> String {
    poll_until(LIMIT, || async {
        p.events()
            .into_iter()
            .find(|e| e.message_id.to_string() == id && e.event_type == EventType::RenderFailed)
            .and_then(|e| e.reason)
    })
    .await
    .unwrap_or_else(|| panic!("no render_failed event for {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_shared_parts_are_gone_or_not_its_own_ends_in_render_failed() {
    let p = TestPipeline::start().await;
    let producer = p.producer();
    let topic = p.topics.requested(Lane::Transactional);

    // The parts, really written.
    let (mut good, blob) = record_pointing(&p, "parts-found@ok.test");
    let (partition, offset) = producer
        .send_bytes_at(&p.topics.blobs(), "k", &blob, BLOB_SCHEMA)
        .await
        .unwrap();
    let reference = SharedParts::reference(&blob, partition, offset);

    // Past the end of the partition: no such record (a topic deleted and created again).
    let (mut past_end, _) = record_pointing(&p, "parts-past-end@ok.test");
    past_end.shared = Some(SharedRef {
        offset: offset + 1_000,
        ..reference.clone()
    });
    // The right place, other bytes: the reader must not render someone else's parts.
    let (mut other, _) = record_pointing(&p, "parts-other@ok.test");
    other.shared = Some(SharedRef {
        sha256: "0".repeat(64),
        ..reference.clone()
    });
    good.shared = Some(reference);

    for record in [&past_end, &other, &good] {
        p.produce(&topic, &record.message_id.to_string(), record)
            .await;
    }
    let reason = render_failure(&p, &past_end.message_id.to_string()).await;
    assert!(reason.contains("no record at partition"), "{reason}");
    let reason = render_failure(&p, &other.message_id.to_string()).await;
    assert!(reason.contains("is not the one this message"), "{reason}");
    // The same path with the right reference renders and delivers the parts.
    let id = good.message_id.to_string();
    p.wait_for_status(&id, "delivered", LIMIT).await;
    let dump = dumped_message(&id).expect("delivered to the sink");
    assert!(html_part(&dump).contains("Hi"));

    // Parts retention removed: the record is before the partition's first offset now.
    let (mut removed, blob) = record_pointing(&p, "parts-removed@ok.test");
    let (partition, offset) = producer
        .send_bytes_at(&p.topics.blobs(), "k2", &blob, BLOB_SCHEMA)
        .await
        .unwrap();
    delete_records_before(&p, partition, offset + 1).await;
    removed.shared = Some(SharedParts::reference(&blob, partition, offset));
    p.produce(&topic, &removed.message_id.to_string(), &removed)
        .await;
    let reason = render_failure(&p, &removed.message_id.to_string()).await;
    assert!(reason.contains("no record at partition"), "{reason}");
    p.stop().await;
}

/// Deletes the blobs topic's records of `partition` before `offset`, as retention would.
async fn delete_records_before(p: &TestPipeline, partition: i32, offset: i64) {
    use rdkafka::{
        admin::{AdminClient, AdminOptions},
        client::DefaultClientContext,
        ClientConfig, Offset, TopicPartitionList,
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &p.config.kafka.brokers)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&p.topics.blobs(), partition, Offset::Offset(offset))
        .unwrap();
    let done = admin
        .delete_records(&list, &AdminOptions::new())
        .await
        .unwrap();
    for element in done.elements() {
        assert!(element.error().is_ok(), "{:?}", element.error());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_version_2_the_scheduler_releases_a_message_held_as_version_3_whole() {
    // Before a rollback to a release that reads version 2 at most: a message held while
    // version 3 was written must reach the requested topic with its parts in it.
    let p = TestPipeline::start_configured(&sendmill::Stage::ALL, |c| {
        c.kafka.requested_version = 2;
    })
    .await;
    let (mut held, blob) = record_pointing(&p, "held-v3@ok.test");
    let (partition, offset) = p
        .producer()
        .send_bytes_at(&p.topics.blobs(), "k", &blob, BLOB_SCHEMA)
        .await
        .unwrap();
    held.shared = Some(SharedParts::reference(&blob, partition, offset));
    let frame = sendmill_wire::encode(&held);
    assert!(frame.starts_with(b"SMQ3"));
    // And one whose parts are gone: it cannot be released whole, so it ends there.
    let (mut gone, blob) = record_pointing(&p, "held-v3-gone@ok.test");
    gone.shared = Some(SharedParts::reference(&blob, partition, offset + 1_000));
    let now = time::OffsetDateTime::now_utc();
    p.store()
        .await
        .schedule(
            p.topics.prefix(),
            p.account,
            held.batch_id,
            &[
                (held.message_id, now, frame),
                (gone.message_id, now, sendmill_wire::encode(&gone)),
            ],
            None,
        )
        .await
        .unwrap();
    let id = held.message_id.to_string();
    p.wait_for_status(&id, "delivered", LIMIT).await;
    let reason = render_failure(&p, &gone.message_id.to_string()).await;
    assert!(reason.contains("no record at partition"), "{reason}");
    assert!(
        p.events()
            .iter()
            .any(|e| e.message_id == gone.message_id && e.stage == "scheduler"),
        "the scheduler ended it"
    );
    let requested = p.read_topic(&p.topics.requested(Lane::Transactional));
    assert_eq!(requested.len(), 1);
    assert!(
        requested[0].starts_with(b"SMQ2"),
        "released whole, as version 2"
    );
    let released: RequestedV1 = decode(&requested[0]).unwrap();
    assert!(released.shared.is_none());
    assert_eq!(released.html.as_deref(), Some("<p>Hi {{name}}</p>"));
    p.stop().await;
}
