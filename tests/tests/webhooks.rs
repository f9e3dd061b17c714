//! Customer webhooks end to end: a receiver that verifies every request with the
//! Standard Webhooks reference library (PyPI `standardwebhooks`) sees every event of the
//! account's messages; while it answers 500 the events wait and then arrive in order per
//! message; a tampered body fails verification; an endpoint that never answers fills its
//! dead-letter queue, which a replay empties into a working URL.

use sendmill::Stage;
use sendmill_tests::*;
use serde_json::{json, Value};
use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

const LIMIT: Duration = Duration::from_secs(90);

struct Receiver {
    child: Child,
    out: PathBuf,
    fail_flag: PathBuf,
}

impl Receiver {
    fn start(port: u16, secrets: &[&str]) -> Self {
        let python = local_dir().join("venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run deploy/local/install-packages.sh (it installs standardwebhooks)",
            python.display()
        );
        let dir = std::env::temp_dir().join(unique("webhooks-"));
        std::fs::create_dir_all(&dir).unwrap();
        let (out, fail_flag) = (dir.join("received.jsonl"), dir.join("fail"));
        let mut child = Command::new(python)
            .arg(repo_root().join("deploy/local/webhook-receiver.py"))
            .args([
                port.to_string(),
                out.display().to_string(),
                fail_flag.display().to_string(),
                secrets.join(","),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the webhook receiver starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening", "the receiver did not start");
        Self {
            child,
            out,
            fail_flag,
        }
    }

    /// Every request recorded so far, in arrival order.
    fn requests(&self) -> Vec<Value> {
        read_lines(&self.out)
    }

    fn fail(&self, on: bool) {
        if on {
            std::fs::write(&self.fail_flag, b"").unwrap();
        } else {
            std::fs::remove_file(&self.fail_flag).unwrap();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(secret index, event)` for every event received, in arrival order.
fn received_events(receiver: &Receiver) -> Vec<(i64, Value)> {
    receiver
        .requests()
        .into_iter()
        .flat_map(|r| {
            let index = r["verified"].as_i64().unwrap_or(-1);
            r["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |e| (index, e))
        })
        .collect()
}

/// The ids of the events received so far, verified with secret `secret`.
fn received_ids(receiver: &Receiver, secret: i64) -> HashSet<String> {
    received_events(receiver)
        .into_iter()
        .filter(|(index, _)| *index == secret)
        .map(|(_, e)| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn analytics(
    p: &TestPipeline,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let url = format!("http://{}{path}", p.analytics.unwrap());
    let (status, body, _) = call(&p.http, &p.api_key, method, &url, body).await;
    (status, body)
}

/// The recorded delivery attempts of webhook endpoint `hook_id`, newest first.
async fn attempts(p: &TestPipeline, hook_id: &str) -> Vec<Value> {
    let (status, attempts) = analytics(
        p,
        reqwest::Method::GET,
        &format!("/v1/webhooks/{hook_id}/attempts"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{attempts}");
    attempts["data"].as_array().unwrap().clone()
}

/// The event ids the pipeline wrote for `messages`.
fn topic_event_ids(p: &TestPipeline, messages: &HashSet<String>) -> HashSet<String> {
    p.events()
        .into_iter()
        .filter(|e| messages.contains(&e.message_id.to_string()))
        .map(|e| e.event_id.to_string())
        .collect()
}

/// Sends one message to each address and waits for its terminal status (bounce.test
/// bounces, the rest deliver).
async fn send_to(p: &TestPipeline, addresses: &[&str]) -> HashSet<String> {
    let mut ids = HashSet::new();
    for address in addresses {
        let (status, body) = p.send(&message_to(p, json!([address]))).await;
        assert_eq!(status, 202, "{body}");
        let id = first_message_id(&body);
        let terminal = if address.ends_with("@bounce.test") {
            "bounced"
        } else {
            "delivered"
        };
        p.wait_for_status(&id, terminal, LIMIT).await;
        ids.insert(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_reach_the_receiver_in_order_through_outages_and_replays() {
    let p = TestPipeline::start_configured(&Stage::ALL, |c| {
        c.analytics.webhooks.retry_for = std::time::Duration::from_secs(6);
    })
    .await;
    let port = free_port();
    let (status, hook) = analytics(
        &p,
        reqwest::Method::POST,
        "/v1/webhooks",
        Some(&json!({"url": format!("http://127.0.0.1:{port}/hook"), "description": "all events"})),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    // A second endpoint, for deliveries only, at a port where nothing listens.
    let (status, dead) = analytics(
        &p,
        reqwest::Method::POST,
        "/v1/webhooks",
        Some(&json!({"url": format!("http://127.0.0.1:{}/gone", free_port()), "event_types": ["delivered"]})),
    )
    .await;
    assert_eq!(status, 201, "{dead}");
    let (status, refused) = analytics(
        &p,
        reqwest::Method::POST,
        "/v1/webhooks",
        Some(&json!({"url": "http://127.0.0.1/x", "event_types": ["sent"]})),
    )
    .await;
    assert_eq!(
        (status, refused["error"]["field"].as_str()),
        (400, Some("event_types[0]"))
    );
    let receiver = Receiver::start(
        port,
        &[
            hook["secret"].as_str().unwrap(),
            dead["secret"].as_str().unwrap(),
        ],
    );

    // Every event of every message arrives, verified, and a tampered copy does not verify.
    let first = send_to(
        &p,
        &[
            "ada@ok.test",
            "bob@ok.test",
            "cy@ok.test",
            "no-one@bounce.test",
        ],
    )
    .await;
    let expected = topic_event_ids(&p, &first);
    assert!(expected.len() >= 8, "{expected:?}");
    let arrived = poll_until(LIMIT, || async {
        let got = received_ids(&receiver, 0);
        expected.is_subset(&got).then_some(got)
    })
    .await;
    assert!(
        arrived.is_some(),
        "not every event reached the receiver: {:?}",
        receiver.requests()
    );
    let requests = receiver.requests();
    assert!(requests.iter().all(|r| r["verified"] == 0), "{requests:?}");
    assert!(
        requests.iter().all(|r| r["tamper_rejected"] == true),
        "{requests:?}"
    );

    // An outage: the receiver answers 500 until the sender has retried a few times.
    receiver.fail(true);
    let hook_id = hook["id"].as_str().unwrap();
    let second = send_to(&p, &["dee@ok.test", "eve@ok.test", "fay@bounce.test"]).await;
    let failed_attempts = poll_until(LIMIT, || async {
        let failed = attempts(&p, hook_id)
            .await
            .iter()
            .filter(|a| a["status_code"] == 500)
            .count();
        (failed >= 3).then_some(failed)
    })
    .await;
    assert!(
        failed_attempts.is_some(),
        "the sender did not retry through the outage"
    );
    let (_, state) = analytics(
        &p,
        reqwest::Method::GET,
        &format!("/v1/webhooks/{hook_id}"),
        None,
    )
    .await;
    assert!(state["failures"].as_i64().unwrap() >= 3, "{state}");
    assert!(state["pending"].as_i64().unwrap() >= 1, "{state}");
    receiver.fail(false);
    let expected = topic_event_ids(&p, &second);
    let arrived = poll_until(LIMIT, || async {
        expected
            .is_subset(&received_ids(&receiver, 0))
            .then_some(())
    })
    .await;
    assert!(
        arrived.is_some(),
        "the events held during the outage never arrived"
    );
    // In order per message: each message's events arrive by the time they happened, and
    // its terminal event last.
    let mut per_message: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (_, e) in received_events(&receiver) {
        per_message
            .entry(e["message_id"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                e["occurred_at"].as_str().unwrap().to_owned(),
                e["event_type"].as_str().unwrap().to_owned(),
            ));
    }
    for id in first.iter().chain(&second) {
        let events = &per_message[id];
        let times: Vec<_> = events
            .iter()
            .map(|(t, _)| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .unwrap()
            })
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{id}: {events:?}");
        assert_eq!(events.first().unwrap().1, "accepted", "{id}: {events:?}");
        assert!(
            ["delivered", "bounced"].contains(&events.last().unwrap().1.as_str()),
            "{id}: {events:?}"
        );
    }
    let (_, state) = analytics(
        &p,
        reqwest::Method::GET,
        &format!("/v1/webhooks/{hook_id}"),
        None,
    )
    .await;
    assert_eq!(
        (state["failures"].as_i64(), state["circuit"].as_str()),
        (Some(0), Some("closed")),
        "{state}"
    );

    // The endpoint that never answers: past the retry window its events are dead letters;
    // pointed at the receiver, a replay delivers them, signed with its own secret.
    let dead_id = dead["id"].as_str().unwrap();
    let delivered: HashSet<String> = p
        .events()
        .into_iter()
        .filter(|e| e.event_type == sendmill_wire::EventType::Delivered)
        .map(|e| e.event_id.to_string())
        .collect();
    assert_eq!(delivered.len(), 5);
    let dead_letters = poll_until(LIMIT, || async {
        let (_, list) = analytics(
            &p,
            reqwest::Method::GET,
            &format!("/v1/webhooks/{dead_id}/deliveries?status=dead"),
            None,
        )
        .await;
        let ids: HashSet<String> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["event_id"].as_str().unwrap().to_owned())
            .collect();
        (ids == delivered).then_some(ids)
    })
    .await;
    assert!(
        dead_letters.is_some(),
        "the dead endpoint's events did not reach its DLQ"
    );
    let (status, _) = analytics(
        &p,
        reqwest::Method::PATCH,
        &format!("/v1/webhooks/{dead_id}"),
        Some(&json!({"url": format!("http://127.0.0.1:{port}/replayed")})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, replayed) = analytics(
        &p,
        reqwest::Method::POST,
        &format!("/v1/webhooks/{dead_id}/replay?since=2000-01-01T00:00:00Z"),
        None,
    )
    .await;
    assert_eq!(
        (status, replayed["replayed"].as_u64()),
        (200, Some(5)),
        "{replayed}"
    );
    let arrived = poll_until(LIMIT, || async {
        (received_ids(&receiver, 1) == delivered).then_some(())
    })
    .await;
    assert!(arrived.is_some(), "the replayed events did not arrive");

    // Another account cannot see or replay these endpoints.
    let other = p.tenant("other").await;
    let url = format!("http://{}/v1/webhooks/{hook_id}", p.analytics.unwrap());
    let (status, _, _) = call(&p.http, &other.api_key, reqwest::Method::GET, &url, None).await;
    assert_eq!(status, 404);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_an_internal_address_is_refused_at_connect_time() {
    let p = TestPipeline::start_configured(&Stage::ALL, |c| {
        c.analytics.webhooks.allow_private_destinations = false;
        // dnsmasq: hook.rebind.test → 127.0.0.1, as a rebinding attacker would answer.
        c.analytics.webhooks.nameservers = vec!["127.0.0.1:5353".into()];
    })
    .await;
    // What a request to the internal service would reach: it must see no connection.
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = internal.local_addr().unwrap().port();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reached.clone();
    tokio::spawn(async move {
        while internal.accept().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // Saved: the name is not one reserved for local hosts (names resolve at use).
    let (status, hook) = analytics(
        &p,
        reqwest::Method::POST,
        "/v1/webhooks",
        Some(&json!({"url": format!("http://hook.rebind.test:{port}/hook")})),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    // An internal address written as such is refused when saved.
    for url in [
        format!("http://127.0.0.1:{port}/x"),
        "http://169.254.169.254/latest/meta-data".into(),
        "http://[::ffff:10.0.0.1]/x".into(),
    ] {
        let (status, refused) = analytics(
            &p,
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(&json!({"url": url})),
        )
        .await;
        assert_eq!(
            (status, refused["error"]["field"].as_str()),
            (400, Some("url")),
            "{url}"
        );
    }

    send_to(&p, &["rebind@ok.test"]).await;
    let hook_id = hook["id"].as_str().unwrap();
    let refused = poll_until(LIMIT, || async {
        attempts(&p, hook_id).await.into_iter().find(|a| {
            a["error"]
                .as_str()
                .is_some_and(|e| e.contains("does not resolve to a public address"))
        })
    })
    .await;
    assert!(refused.is_some(), "no refused attempt was recorded");
    assert_eq!(refused.unwrap()["status_code"], Value::Null);
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the sender connected to the internal address"
    );
    p.stop().await;
}
