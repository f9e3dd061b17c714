//! Events into ClickHouse with a `sendmill analytics` process killed mid-stream: every
//! event of every type stored once, the rollups equal to a direct count, and the stats
//! API scoped to the caller's account.

use sendmill::Stage;
use sendmill_tests::*;
use sendmill_wire::{AccountId, EventType, EventV1, MessageContext, MessageId};
use serde_json::Value;
use std::{collections::BTreeMap, time::Duration};
use time::OffsetDateTime;
use tokio::task::JoinSet;

const LIMIT: Duration = Duration::from_secs(90);

/// `per_type` events of every type for `account`, spread over the last five minutes
/// across two providers, pools, source IPs, domains and campaigns.
fn events_for(account: AccountId, per_type: usize, tag: &str, domain_prefix: &str) -> Vec<EventV1> {
    let now = OffsetDateTime::now_utc();
    let mut events = Vec::new();
    for (t, event_type) in EventType::ALL.iter().enumerate() {
        for i in 0..per_type {
            let context = MessageContext {
                tags: vec![tag.to_owned()],
                campaign_id: (i % 2 == 0).then(|| format!("{tag}-spring")),
                ip_pool: Some(["shared", "dedicated"][i % 2].to_owned()),
                requested_confirmation: false,
                ..MessageContext::default()
            };
            let recipient = format!("user{i}@{domain_prefix}{}.test", i % 3);
            let mut e = EventV1::new(
                *event_type,
                "test",
                MessageId::generate(),
                account,
                &recipient,
                &context,
            );
            e.occurred_at = now - time::Duration::seconds(((i * 7 + t) % 300) as i64);
            e.provider = Some(["gmail", "outlook"][i % 2].to_owned());
            e.source_ip = Some(["127.0.0.31", "127.0.0.32"][(i / 2) % 2].to_owned());
            events.push(e);
        }
    }
    events
}

async fn produce_all(p: &TestPipeline, events: Vec<EventV1>) {
    let producer = p.producer();
    let topic = p.topics.events();
    let mut sends = JoinSet::new();
    for chunk in events.chunks(500) {
        let (producer, topic, chunk) = (producer.clone(), topic.clone(), chunk.to_vec());
        sends.spawn(async move {
            for e in &chunk {
                producer
                    .send(&topic, &e.message_id.to_string(), e)
                    .await
                    .expect("the broker takes the event");
            }
        });
    }
    while let Some(done) = sends.join_next().await {
        done.unwrap();
    }
}

async fn scalar(ch: &clickhouse::Client, sql: &str) -> u64 {
    ch.query(sql)
        .fetch_one::<u64>()
        .await
        .expect("ClickHouse answers")
}

async fn stats(p: &TestPipeline, addr: &str, key: &str, query: &str) -> (u16, Value) {
    let (status, body, _) = call(
        &p.http,
        key,
        reqwest::Method::GET,
        &format!("http://{addr}/v1/stats?{query}"),
        None,
    )
    .await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_once_through_a_kill_rollups_match_and_stats_stay_in_their_account() {
    // The pipeline here only provides the broker, databases and tenants; the analytics
    // stage runs as `sendmill analytics` processes.
    let p = TestPipeline::start_stages(&[Stage::Ingest]).await;
    sendmill_analytics::schema::migrate(&p.config.clickhouse)
        .await
        .expect("ClickHouse migrates");
    let other = p.tenant("other").await;
    let operator = p.operator("operator").await;

    let ours = events_for(p.account, 1_000, "ours", "a");
    let theirs = events_for(other.account, 50, "theirs", "b");
    let total = (ours.len() + theirs.len()) as u64;
    let mut all = ours;
    all.extend(theirs);
    produce_all(&p, all).await;

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Small batches, so the kill lands between many of them.
    let section = format!(
        "[analytics]\nlisten = {addr:?}\nbatch_rows = 100\nbatch_wait = \"50ms\"\n\
         [analytics.reputation]\nenabled = false\n"
    );
    let ch = sendmill_platform::clients::clickhouse(&p.config.clickhouse);
    let first = StageProcess::start(&p, &p.config, "analytics", "analytics-a", &section);
    let stored_at_kill = poll_until(LIMIT, || async {
        let n = scalar(&ch, "SELECT count() FROM events").await;
        (n >= 1_000).then_some(n)
    })
    .await
    .expect("the first analytics process stores events");
    first.kill();
    assert!(
        stored_at_kill < total,
        "the kill came after every event was stored ({stored_at_kill} of {total}); it tests nothing"
    );

    let _second = StageProcess::start(&p, &p.config, "analytics", "analytics-b", &section);
    let distinct = poll_until(LIMIT, || async {
        let n = scalar(&ch, "SELECT uniqExact(event_id) FROM events").await;
        (n == total).then_some(n)
    })
    .await;
    let rows = scalar(&ch, "SELECT count() FROM events").await;
    assert_eq!(
        distinct,
        Some(total),
        "not every event reached ClickHouse after the restart ({rows} rows, {stored_at_kill} at the kill)"
    );
    // Redelivered rows collapse: FINAL now, and physically after a merge.
    assert_eq!(scalar(&ch, "SELECT count() FROM events FINAL").await, total);
    ch.query("OPTIMIZE TABLE events FINAL")
        .execute()
        .await
        .unwrap();
    assert_eq!(scalar(&ch, "SELECT count() FROM events").await, total);
    let per_type: Vec<(String, u64)> = ch
        .query("SELECT event_type, count() FROM events WHERE account_id = toUUID(?) GROUP BY event_type ORDER BY event_type")
        .bind(p.account.to_string())
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(per_type.len(), EventType::ALL.len(), "{per_type:?}");
    assert!(per_type.iter().all(|(_, n)| *n == 1_000), "{per_type:?}");

    // The rollups equal a direct count, cell by cell.
    let mut direct: Vec<(String, String, String, String, String, u64)> = ch
        .query(
            "SELECT toString(account_id), event_type, provider, ip_pool, source_ip, count()
             FROM events FINAL GROUP BY account_id, event_type, provider, ip_pool, source_ip
",
        )
        .fetch_all()
        .await
        .unwrap();
    let mut rolled: Vec<(String, String, String, String, String, u64)> = ch
        .query(
            "SELECT toString(account_id), event_type, provider, ip_pool, source_ip, uniqExactMerge(events)
             FROM events_minute GROUP BY account_id, event_type, provider, ip_pool, source_ip
",
        )
        .fetch_all()
        .await
        .unwrap();
    direct.sort();
    rolled.sort();
    assert!(rolled == direct, "rollup cells differ from a direct count");
    assert_eq!(direct.len(), 2 * EventType::ALL.len() * 2 * 2);
    let mut direct: Vec<(String, String, u64)> = ch
        .query("SELECT campaign_id, event_type, count() FROM events FINAL WHERE campaign_id != '' GROUP BY campaign_id, event_type")
        .fetch_all()
        .await
        .unwrap();
    let mut rolled: Vec<(String, String, u64)> = ch
        .query("SELECT campaign_id, event_type, uniqExactMerge(events) FROM campaign_minute GROUP BY campaign_id, event_type")
        .fetch_all()
        .await
        .unwrap();
    direct.sort();
    rolled.sort();
    assert_eq!(rolled, direct);
    assert_eq!(direct.len(), 2 * EventType::ALL.len());

    // Stats: each account sees its own events only; operators see both.
    let from = (OffsetDateTime::now_utc() - time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let window = format!("from={from}");
    let (status, mine) = stats(&p, &addr, &p.api_key, &window).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["totals"]["delivered"], 1_000);
    assert_eq!(mine["totals"]["accepted"], 1_000);
    assert_eq!(mine["totals"]["unique_opened"], 1_000);
    // Sent = delivered + bounced + expired; a bounce that came back by mail after its
    // 250 moves its message from the delivery rate to the bounce rate.
    assert_eq!(mine["totals"]["async_bounced"], 1_000);
    let rate = mine["rates"]["delivery"].as_f64().unwrap();
    assert!((rate - 0.0 / 3.0).abs() < 1e-9, "{rate}");
    let bounce = mine["rates"]["bounce"].as_f64().unwrap();
    assert!((bounce - 2.0 / 3.0).abs() < 1e-9, "{bounce}");
    let (_, theirs) = stats(&p, &addr, &other.api_key, &window).await;
    assert_eq!(theirs["totals"]["delivered"], 50, "{theirs}");
    let (_, everyone) = stats(&p, &addr, &operator.api_key, &window).await;
    assert_eq!(everyone["totals"]["delivered"], 1_050, "{everyone}");
    let (status, refused) = stats(
        &p,
        &addr,
        &other.api_key,
        &format!("{window}&account_id={}", p.account),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["field"], "account_id");

    for (group_by, foreign) in [
        ("domain", "a0.test"),
        ("tag", "ours"),
        ("campaign", "ours-spring"),
    ] {
        let (status, grouped) = stats(
            &p,
            &addr,
            &other.api_key,
            &format!("{window}&group_by={group_by}"),
        )
        .await;
        assert_eq!(status, 200, "{grouped}");
        let keys: Vec<&str> = grouped["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["key"].as_str().unwrap())
            .collect();
        assert!(
            !keys.is_empty() && !keys.contains(&foreign),
            "{group_by}: {keys:?}"
        );
    }
    // Groups add up to the totals, and a filter narrows to its group.
    let (_, by_provider) = stats(
        &p,
        &addr,
        &p.api_key,
        &format!("{window}&group_by=provider"),
    )
    .await;
    let sums: BTreeMap<&str, u64> = by_provider["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap(),
                g["counts"]["bounced"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sums, BTreeMap::from([("gmail", 500), ("outlook", 500)]));
    let (_, gmail) = stats(
        &p,
        &addr,
        &p.api_key,
        &format!("{window}&provider=gmail&interval=minute"),
    )
    .await;
    assert_eq!(gmail["totals"]["bounced"], 500);
    let points: u64 = gmail["groups"][0]["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pt| pt["counts"]["bounced"].as_u64().unwrap())
        .sum();
    assert_eq!(points, 500, "the series adds up to the total");
    let (status, bad) = stats(&p, &addr, &p.api_key, "group_by=colour").await;
    assert_eq!(
        (status, bad["error"]["field"].as_str()),
        (400, Some("group_by"))
    );
    p.stop().await;
}
