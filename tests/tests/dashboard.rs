//! The reputation monitor and the operations dashboard, after real traffic: bounces past
//! the threshold pause the source IP (and the dispatcher stops using it within seconds),
//! an alert is raised, and in headless Chromium the dashboard's charts draw data and its
//! Resume button lifts the pause. The screenshot is kept under
//! `target/test-artifacts/dashboard.png`.

use sendmill::Stage;
use sendmill_dispatcher::config::{PoolConfig, PoolIp};
use sendmill_tenancy::pauses;
use sendmill_tests::*;
use sendmill_wire::{AlertV1, EventType};
use serde_json::{json, Value};
use std::{
    process::Command,
    time::{Duration, Instant},
};

const LIMIT: Duration = Duration::from_secs(90);
const SOURCE: &str = "127.0.0.1";

async fn send(p: &TestPipeline, to: &str) -> String {
    let (status, body) = p.send(&message_to(p, json!([to]))).await;
    assert_eq!(status, 202, "{body}");
    first_message_id(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounces_pause_the_ip_and_the_dashboard_shows_and_resumes_it() {
    let p = TestPipeline::start_configured(&Stage::ALL, |c| {
        c.dispatcher.pools = vec![PoolConfig {
            name: "main".into(),
            accounts: vec![],
            ips: vec![PoolIp {
                ip: SOURCE.parse().unwrap(),
                ehlo: "mta.sendmill.test".into(),
                weight: 1,
            }],
        }];
        c.analytics.reputation.min_volume = 10;
        c.analytics.reputation.ip_bounce_rate = 0.3;
        c.analytics.reputation.pause_accounts = false;
        // Each message reads the pause flags. With the default (cached for 1 s), a
        // message handled within a second of the pause may still leave on a pooled
        // session, as documented: that made this test fail now and then (with a 10 s
        // cache it failed every time, the held message delivered from the paused IP).
        c.dispatcher.pause_refresh = Duration::ZERO;
    })
    .await;
    let prefix = p.config.redis.key_prefix.clone();
    let member = format!("ip:{SOURCE}");

    // Healthy traffic first, then a run of hard bounces.
    for i in 0..4 {
        let id = send(&p, &format!("ok{i}@ok.test")).await;
        p.wait_for_status(&id, "delivered", LIMIT).await;
    }
    // The monitor may pause the IP before the last of these is tried (those are then
    // deferred), so the test waits for the pause, not for every bounce.
    for i in 0..12 {
        send(&p, &format!("gone{i}@bounce.test")).await;
    }
    let mut redis = p.redis().await;
    let paused = poll_until(LIMIT, || {
        let mut redis = redis.clone();
        let (prefix, member) = (prefix.clone(), member.clone());
        async move {
            let list = pauses::list(&mut redis, &prefix).await.unwrap();
            list.get(&member).cloned()
        }
    })
    .await
    .expect("the reputation monitor paused the IP");
    assert!(paused.contains("bounce_rate"), "{paused}");
    let paused_at = Instant::now();

    // The alert: on this installation's alerts topic, and in PostgreSQL for the
    // dashboard (the test database is shared, so it is found by id).
    let on_topic: Vec<AlertV1> = p
        .read_topic(&p.topics.alerts())
        .iter()
        .map(|b| sendmill_wire::decode(b).unwrap())
        .collect();
    assert_eq!(on_topic.len(), 1, "{on_topic:?}");
    assert_eq!(
        (
            on_topic[0].subject_kind.as_str(),
            on_topic[0].subject.as_str()
        ),
        ("ip", SOURCE)
    );
    assert!(
        on_topic[0].value > 0.3 && on_topic[0].volume >= 10,
        "{on_topic:?}"
    );
    let alert_id = on_topic[0].alert_id;
    let stored = |alerts: Vec<sendmill_store::alerts::Alert>| {
        alerts.into_iter().find(|a| a.alert.alert_id == alert_id)
    };
    let alert = stored(p.store().await.alerts(100).await.unwrap()).expect("the alert is stored");
    assert!(alert.resolved_at.is_none());

    // The dispatcher stops using the IP within seconds: a new message is deferred with
    // the pause as its reason, not delivered.
    let held = send(&p, "held@ok.test").await;
    let deferred = poll_until(LIMIT, || async {
        p.events()
            .into_iter()
            .find(|e| e.message_id.to_string() == held && e.event_type == EventType::Deferred)
    })
    .await
    .unwrap_or_else(|| {
        let seen: Vec<_> = p
            .events()
            .into_iter()
            .filter(|e| e.message_id.to_string() == held)
            .map(|e| (e.event_type, e.reason, e.source_ip))
            .collect();
        panic!("the message sent after the pause is deferred; its events: {seen:?}")
    });
    assert!(
        deferred.reason.as_deref().unwrap_or("").contains("paused"),
        "{deferred:?}"
    );
    assert!(
        !p.events()
            .iter()
            .any(|e| e.message_id.to_string() == held && e.event_type == EventType::Delivered),
        "a message left from the paused IP"
    );
    let stopped_within = paused_at.elapsed();
    assert!(
        stopped_within < Duration::from_secs(30),
        "{stopped_within:?}"
    );

    // The dashboard: operators only.
    let base = format!("http://{}", p.analytics.unwrap());
    let anonymous = p
        .http
        .get(format!("{base}/dashboard/api/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let refused = p
        .http
        .post(format!("{base}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={}", p.api_key))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "a tenant's key is not an operator's");
    let operator = p.operator("ops").await;

    let node_dir = local_dir().join("node/node_modules/playwright-core");
    assert!(
        node_dir.exists(),
        "{} is missing: run deploy/local/install-packages.sh",
        node_dir.display()
    );
    let artifacts = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let run = tokio::task::spawn_blocking({
        let (base, key, screenshot, member) = (
            base.clone(),
            operator.api_key.clone(),
            screenshot.clone(),
            member.clone(),
        );
        move || {
            Command::new("node")
                .arg(repo_root().join("deploy/local/dashboard-check.js"))
                .args([
                    base.as_str(),
                    key.as_str(),
                    screenshot.to_str().unwrap(),
                    member.as_str(),
                ])
                .env("PLAYWRIGHT_CORE", node_dir)
                .output()
                .expect("node runs")
        }
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "the browser check failed: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let seen: Value = serde_json::from_slice(&run.stdout).expect("one JSON line");
    assert_eq!(seen["redirectedToLogin"], true, "{seen}");
    for chart in [
        "chart-volume",
        "chart-rates",
        "chart-groups",
        "chart-pipeline",
    ] {
        assert!(
            seen["points"][chart].as_u64().unwrap_or(0) > 0,
            "{chart} drew no data: {seen}"
        );
    }
    assert!(seen["canvases"].as_u64().unwrap() >= 4, "{seen}");
    assert!(
        seen["rows"]["table-bounces"].as_u64().unwrap() >= 1,
        "{seen}"
    );
    assert!(
        seen["rows"]["table-alerts"].as_u64().unwrap() >= 1,
        "{seen}"
    );
    assert_eq!(seen["errors"], json!([]), "the page logged errors: {seen}");
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "no screenshot"
    );

    // The Resume button lifted the pause, and the alert is resolved.
    let list = pauses::list(&mut redis, &prefix).await.unwrap();
    assert!(!list.contains_key(&member), "{list:?}");
    let alert = stored(p.store().await.alerts(100).await.unwrap()).unwrap();
    assert!(alert.resolved_at.is_some(), "{alert:?}");
    // And mail leaves from the IP again.
    let after = send(&p, "after@ok.test").await;
    p.wait_for_status(&after, "delivered", LIMIT).await;
    p.stop().await;
}
