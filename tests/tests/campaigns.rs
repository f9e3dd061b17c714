//! Campaigns against the real services: the state machine and bad input, tenant
//! isolation, test sends and previews; every contact reached exactly once through
//! SIGKILLs of the campaign sender and of the dispatcher; pause, resume and cancel
//! counts adding up; an A/B test decided by its metric; the report equal to a direct
//! ClickHouse count.

use reqwest::Method;
use sendmill::Stage;
use sendmill_tests::{call, dumps_for_domain, poll_until, StageProcess, TestPipeline};
use serde_json::{json, Value};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

async fn api(
    p: &TestPipeline,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("http://{}{path}", p.analytics.expect("analytics runs"));
    let (status, body, _) = call(&p.http, key, method, &url, body.as_ref()).await;
    (status, body)
}

async fn ok(p: &TestPipeline, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = api(p, &p.api_key, method, path, body).await;
    assert!((200..300).contains(&status), "{path}: {status} {answer}");
    answer
}

/// A list of `n` contacts `{prefix}{i}@ok.test` (attribute `plan` = `pro` for even i),
/// imported as CSV; its id.
async fn list_of(p: &TestPipeline, name: &str, prefix: &str, n: usize) -> String {
    list_of_as(p, &p.api_key, name, prefix, n).await
}

async fn list_of_as(p: &TestPipeline, key: &str, name: &str, prefix: &str, n: usize) -> String {
    let (status, list) = api(
        p,
        key,
        Method::POST,
        "/v1/lists",
        Some(json!({"name": name, "opt_in": "single"})),
    )
    .await;
    assert_eq!(status, 201, "{list}");
    let id = list["id"].as_str().unwrap().to_owned();
    let mut csv = String::from("email,name,plan\n");
    for i in 0..n {
        csv.push_str(&format!(
            "{prefix}{i}@ok.test,Person {i},{}\n",
            if i % 2 == 0 { "pro" } else { "free" }
        ));
    }
    let r = p
        .http
        .post(format!(
            "http://{}/v1/lists/{id}/imports",
            p.analytics.unwrap()
        ))
        .bearer_auth(key)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "import");
    let job: Value = r.json().await.unwrap();
    let job = job["id"].as_str().unwrap().to_owned();
    poll_until(LIMIT, || async {
        let (_, body) = api(p, key, Method::GET, &format!("/v1/imports/{job}"), None).await;
        (body["state"] == "completed").then_some(())
    })
    .await
    .expect("the import completes");
    id
}

fn campaign_body(p: &TestPipeline, name: &str, list: &str) -> Value {
    json!({
        "name": name,
        "from": {"email": format!("news@{}", p.domain), "name": "News"},
        "subject": "Hello {{name}}",
        "html": "<p>Hi {{name}}, your plan is {{plan}}. <a href=\"https://shop.example/{{plan}}\">Shop</a></p>",
        "audience": {"lists": [list]},
    })
}

async fn campaign(p: &TestPipeline, id: &str) -> Value {
    ok(p, Method::GET, &format!("/v1/campaigns/{id}"), None).await
}

async fn wait_state(p: &TestPipeline, id: &str, state: &str) -> Value {
    poll_until(LIMIT, || async {
        let c = campaign(p, id).await;
        (c["state"] == state).then_some(c)
    })
    .await
    .unwrap_or_else(|| panic!("campaign {id} never became {state}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_machine_bad_input_test_sends_and_tenant_isolation() {
    // No campaign sender: scheduled campaigns stay scheduled.
    let p = TestPipeline::start_stages(&[
        Stage::Ingest,
        Stage::Render,
        Stage::Dispatch,
        Stage::Analytics,
    ])
    .await;
    let other = p.tenant("other").await;
    let list = list_of(&p, "Main", "sm", 3).await;
    let body = campaign_body(&p, "Spring", &list);
    let (status, created) = api(
        &p,
        &p.api_key,
        Method::POST,
        "/v1/campaigns",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "draft");
    let id = created["id"].as_str().unwrap().to_owned();
    let path = |rest: &str| format!("/v1/campaigns/{id}{rest}");

    // Bad input: 4xx naming the field, nothing stored.
    let bad = |change: Value| {
        let mut b = body.clone();
        for (k, v) in change.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (change, status, field) in [
        (json!({"throttle_per_hour": 0}), 400, "throttle_per_hour"),
        (json!({"send_at": "2020-01-01T00:00:00Z"}), 400, "send_at"),
        (json!({"send_at": "next tuesday"}), 400, "send_at"),
        (json!({"time_zone": "Mars/Olympus"}), 400, "time_zone"),
        (json!({"subject": null}), 400, "subject"),
        (json!({"html": "{{#if x}}never closed"}), 400, "html"),
        (
            json!({"audience": {"lists": [uuid::Uuid::now_v7()]}}),
            400,
            "audience.lists[0]",
        ),
        (
            json!({"from": {"email": "news@not-ours.test"}}),
            422,
            "from.email",
        ),
        (
            json!({"ab_test": {"variants": [{"subject": "A"}], "test_percent": 20, "metric": "opens", "wait_seconds": 60}}),
            400,
            "ab_test.variants",
        ),
        (
            json!({"ab_test": {"variants": [{"subject": "A"}, {"subject": "B"}], "test_percent": 20, "metric": "clicks"}}),
            400,
            "ab_test.wait_seconds",
        ),
        (json!({"colour": "red"}), 400, ""),
        (json!({"html": "<p>a\u{0}b</p>"}), 400, "html"),
        (json!({"time_zone": "Europe/Paris\u{0}"}), 400, "time_zone"),
        (
            json!({"tracking": {"clicks": false}, "ab_test": {"variants": [{"subject": "A"}, {"subject": "B"}], "test_percent": 20, "metric": "clicks", "wait_seconds": 60}}),
            400,
            "ab_test.metric",
        ),
    ] {
        let (s, answer) = api(
            &p,
            &p.api_key,
            Method::POST,
            "/v1/campaigns",
            Some(bad(change.clone())),
        )
        .await;
        assert_eq!(s, status, "{change}: {answer}");
        if !field.is_empty() {
            assert_eq!(answer["error"]["field"], field, "{change}: {answer}");
        }
    }
    let (_, page) = api(&p, &p.api_key, Method::GET, "/v1/campaigns", None).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");

    // A local send_at in a time zone is stored as its instant.
    let (s, patched) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &path(""),
        Some(json!({"send_at": "2099-07-01T09:00", "time_zone": "Europe/Paris"})),
    )
    .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["starts_at"], "2099-07-01T07:00:00Z", "{patched}");

    // Transitions the state does not allow: 409.
    for action in ["/pause", "/resume", "/unschedule"] {
        let (s, answer) = api(&p, &p.api_key, Method::POST, &path(action), None).await;
        assert_eq!(s, 409, "{action} of a draft: {answer}");
    }
    // A segment that matches nobody: 422 at schedule time.
    let segment = ok(
        &p,
        Method::POST,
        "/v1/segments",
        Some(json!({"name": "nobody", "expression": "attributes.plan = \"enterprise\""})),
    )
    .await;
    let (s, _) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &path(""),
        Some(json!({"audience": {"segment_id": segment["id"]}})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, answer) = api(&p, &p.api_key, Method::POST, &path("/schedule"), None).await;
    assert_eq!(
        (s, answer["error"]["field"].as_str()),
        (422, Some("audience")),
        "{answer}"
    );
    assert_eq!(campaign(&p, &id).await["state"], "draft");
    let (s, _) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &path(""),
        Some(json!({"audience": {"lists": [list]}})),
    )
    .await;
    assert_eq!(s, 200);

    // Strict check and test send: a template variable missing for some contacts.
    let (s, _) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &path(""),
        Some(json!({"text": "Your coupon: {{coupon}}"})),
    )
    .await;
    assert_eq!(s, 200);
    let coupon_holder = ok(&p, Method::POST, "/v1/contacts",
        Some(json!({"email": "coupon@ok.test", "name": "Cora", "attributes": {"plan": "pro", "coupon": "C-42"}, "lists": [list]}))).await;
    let test = ok(
        &p,
        Method::POST,
        &path("/test"),
        Some(json!({"to": ["seed@ok.test"], "contact_id": coupon_holder["id"]})),
    )
    .await;
    assert_eq!(test["checked"], 4, "{test}");
    let failing: Vec<&str> = test["strict_failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        failing,
        ["sm0@ok.test", "sm1@ok.test", "sm2@ok.test"],
        "{test}"
    );
    assert!(
        test["strict_failures"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("coupon"),
        "{test}"
    );
    let message = test["sent"][0]["message_id"].as_str().unwrap().to_owned();
    let delivered = p.wait_for_status(&message, "delivered", LIMIT).await;
    assert_eq!(delivered["status"], "delivered");
    let dump = sendmill_tests::dumped_message(&message).expect("the test message reached the sink");
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(
        text.contains("Subject: Hello Cora"),
        "rendered with the chosen contact"
    );
    assert!(
        text.contains("X-Sendmill-Test: campaign"),
        "marked as a test"
    );
    assert!(text.contains("C-42"), "the contact's attribute");
    // The preview renders the same for that contact.
    let preview = ok(
        &p,
        Method::GET,
        &format!(
            "{}?contact_id={}",
            path("/preview"),
            coupon_holder["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(preview["subject"], "Hello Cora", "{preview}");
    assert!(
        preview["html"]
            .as_str()
            .unwrap()
            .contains("your plan is pro"),
        "{preview}"
    );

    // draft → scheduled → draft → scheduled → cancelled; PATCH under way only name/throttle.
    let (s, _) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &path(""),
        Some(json!({"send_at": null})),
    )
    .await;
    assert_eq!(s, 200);
    // send_at cleared: with no sender running, it stays scheduled.
    let scheduled = ok(&p, Method::POST, &path("/schedule"), None).await;
    assert_eq!(scheduled["state"], "scheduled");
    let (s, answer) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &path(""),
        Some(json!({"subject": "changed"})),
    )
    .await;
    assert_eq!(s, 409, "{answer}");
    let (s, answer) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &path(""),
        Some(json!({"throttle_per_hour": 500})),
    )
    .await;
    assert_eq!(
        (s, answer["throttle_per_hour"].as_u64()),
        (200, Some(500)),
        "{answer}"
    );
    let (s, answer) = api(&p, &p.api_key, Method::DELETE, &path(""), None).await;
    assert_eq!(s, 409, "{answer}");
    assert_eq!(
        ok(&p, Method::POST, &path("/unschedule"), None).await["state"],
        "draft"
    );
    ok(&p, Method::POST, &path("/schedule"), None).await;
    let cancelled = ok(&p, Method::POST, &path("/cancel"), None).await;
    assert_eq!(cancelled["state"], "cancelled");
    for action in ["/schedule", "/resume", "/cancel", "/pause"] {
        let (s, answer) = api(&p, &p.api_key, Method::POST, &path(action), None).await;
        assert_eq!(s, 409, "{action} of a cancelled campaign: {answer}");
    }
    let (s, _) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &path(""),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(s, 409);

    // Another account sees nothing of it and cannot act on it.
    for (method, rest, body) in [
        (Method::GET, "", None),
        (Method::PATCH, "", Some(json!({"name": "mine"}))),
        (Method::DELETE, "", None),
        (Method::POST, "/schedule", None),
        (Method::POST, "/pause", None),
        (Method::POST, "/cancel", None),
        (Method::POST, "/test", Some(json!({"to": ["x@ok.test"]}))),
        (Method::GET, "/preview", None),
        (Method::GET, "/stats", None),
    ] {
        let (s, answer) = api(&p, &other.api_key, method.clone(), &path(rest), body).await;
        assert_eq!(s, 404, "{method} {rest}: {answer}");
    }
    let (_, theirs) = api(&p, &other.api_key, Method::GET, "/v1/campaigns", None).await;
    assert_eq!(theirs["data"], json!([]));
    // Nor can it name this account's list.
    let mut foreign = campaign_body(&p, "Theirs", &list);
    foreign["from"]["email"] = json!(format!("news@{}", other.domain));
    let (s, answer) = api(
        &p,
        &other.api_key,
        Method::POST,
        "/v1/campaigns",
        Some(foreign),
    )
    .await;
    assert_eq!(
        (s, answer["error"]["field"].as_str()),
        (400, Some("audience.lists[0]")),
        "{answer}"
    );
    // Deleting the cancelled campaign.
    let (s, _) = api(&p, &p.api_key, Method::DELETE, &path(""), None).await;
    assert_eq!(s, 204);
    p.stop().await;
}

/// `sendmill campaigns` as a process of the test's installation.
fn sender_process(p: &TestPipeline, name: &str) -> StageProcess {
    let section = format!(
        "[campaigns]\nops_listen = \"127.0.0.1:0\"\nchunk_size = 50\npoll = \"100ms\"\n\
         [tracking]\nsecret = {secret:?}\nbase_url = {base:?}\n[render]\ngroup_id = {group:?}\n\
         [ingest]\nallow_unverified_domains = true\n",
        secret = p.config.tracking.secret,
        base = p.config.tracking.base_url,
        group = p.config.render.group_id,
    );
    StageProcess::start(p, &p.config, "campaigns", name, &section)
}

fn dispatcher_process(p: &TestPipeline, name: &str) -> StageProcess {
    let section = format!(
        "[dispatcher]\nnameservers = [\"127.0.0.1:5353\"]\nhelo_name = \"{name}.sendmill.test\"\n\
         ops_listen = \"127.0.0.1:0\"\njournal_dir = {journal:?}\n",
        journal = p.config.dispatcher.journal_dir,
    );
    StageProcess::start(p, &p.config, "dispatch", name, &section)
}

/// ClickHouse's count of distinct messages of `campaign` with `event`, read directly.
async fn direct_count(p: &TestPipeline, campaign: &str, event: &str) -> u64 {
    let client = sendmill_platform::clients::clickhouse(&p.config.clickhouse);
    client
        .query("SELECT uniqExact(message_id) FROM events FINAL WHERE campaign_id = ? AND event_type = ?")
        .bind(campaign)
        .bind(event)
        .fetch_one::<u64>()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_contact_once_across_kills_and_pause_resume_cancel_counts_add_up() {
    let p = TestPipeline::start_stages(&[Stage::Ingest, Stage::Render, Stage::Analytics]).await;
    let n = 1_200;
    let list = list_of(&p, "Big", "k", n).await;
    let mut dispatcher = Some(dispatcher_process(&p, "dispatch-a"));
    let mut sender = Some(sender_process(&p, "campaigns-a"));

    // Started at one message an hour: the audience is fixed, one contact released.
    let big = ok(
        &p,
        Method::POST,
        "/v1/campaigns",
        Some({
            let mut b = campaign_body(&p, "Big", &list);
            b["throttle_per_hour"] = json!(1);
            b
        }),
    )
    .await;
    let big_id = big["id"].as_str().unwrap().to_owned();
    ok(
        &p,
        Method::POST,
        &format!("/v1/campaigns/{big_id}/schedule"),
        None,
    )
    .await;
    let started = poll_until(LIMIT, || async {
        let c = campaign(&p, &big_id).await;
        (c["progress"]["released"] == 1).then_some(c)
    })
    .await
    .expect("the campaign starts");
    assert_eq!(started["progress"]["audience_size"], n as u64, "{started}");
    // Three contacts not yet released change: unsubscribed, suppressed, off the list.
    let store = p.store().await;
    let gone: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT contact_id FROM campaign_recipients WHERE campaign_id = $1 AND outcome IS NULL
         ORDER BY seq DESC LIMIT 3",
    )
    .bind(big_id.parse::<uuid::Uuid>().unwrap())
    .fetch_all(store.pool())
    .await
    .unwrap();
    let gone: Vec<String> = gone.iter().map(ToString::to_string).collect();
    ok(
        &p,
        Method::PATCH,
        &format!("/v1/contacts/{}", gone[0]),
        Some(json!({"status": "unsubscribed"})),
    )
    .await;
    let email1 = ok(&p, Method::GET, &format!("/v1/contacts/{}", gone[1]), None).await["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, answer, _) = p
        .call(
            &p.api_key,
            Method::POST,
            "/v1/suppressions",
            Some(&json!({"suppressions": [{"email": email1, "reason": "manual"}]})),
        )
        .await;
    assert!(s == 200 || s == 201, "{answer}");
    ok(
        &p,
        Method::DELETE,
        &format!("/v1/lists/{list}/members/{}", gone[2]),
        None,
    )
    .await;
    // Unthrottled from here.
    let (s, answer) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &format!("/v1/campaigns/{big_id}"),
        Some(json!({"throttle_per_hour": null})),
    )
    .await;
    assert_eq!(s, 200, "{answer}");

    // SIGKILL the sender mid-release, and the dispatcher mid-delivery; start them again.
    poll_until(LIMIT, || async {
        (campaign(&p, &big_id).await["progress"]["released"]
            .as_i64()
            .unwrap()
            >= 200)
            .then_some(())
    })
    .await
    .expect("releases begin");
    sender.take().unwrap().kill();
    let at_kill = campaign(&p, &big_id).await["progress"]["released"]
        .as_i64()
        .unwrap();
    assert!(at_kill < n as i64, "killed mid-send ({at_kill})");
    sender = Some(sender_process(&p, "campaigns-b"));
    poll_until(LIMIT, || async {
        (direct_count(&p, &big_id, "delivered").await >= 400).then_some(())
    })
    .await
    .expect("deliveries begin");
    dispatcher.take().unwrap().kill();
    let killed_at = std::time::SystemTime::now();
    // What the killed dispatcher journaled (it opened the journal's first segment).
    let journaled_before_kill: std::collections::HashSet<[u8; 16]> = std::fs::read(
        std::path::Path::new(&p.config.dispatcher.journal_dir)
            .join("segment-00000000000000000000.ids"),
    )
    .expect("the first dispatcher's journal segment")
    .chunks_exact(16)
    .map(|id| id.try_into().unwrap())
    .collect();
    dispatcher = Some(dispatcher_process(&p, "dispatch-b"));
    let sent = wait_state(&p, &big_id, "sent").await;
    let progress = &sent["progress"];
    assert_eq!(progress["skipped"], 3, "{sent}");
    assert_eq!(progress["released"], n as u64 - 3, "{sent}");
    assert_eq!(progress["not_sent"], 0, "{sent}");

    // Every released contact delivered exactly once: one terminal event each, one copy
    // in the sink each, none for the skipped three.
    poll_until(LIMIT, || async {
        (direct_count(&p, &big_id, "delivered").await == (n - 3) as u64).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("not every released message was delivered"));
    let dumps = dumps_for_domain(&p.domain);
    let campaign_uuid: uuid::Uuid = big_id.parse().unwrap();
    let (_, members) = api(
        &p,
        &p.api_key,
        Method::GET,
        &format!("/v1/contacts?list_id={list}&limit=500"),
        None,
    )
    .await;
    assert!(!members["data"].as_array().unwrap().is_empty());
    let mut contacts = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor
            .as_ref()
            .map_or(String::new(), |c| format!("&cursor={c}"));
        let (_, page) = api(
            &p,
            &p.api_key,
            Method::GET,
            &format!("/v1/contacts?email_prefix=k&limit=500{q}"),
            None,
        )
        .await;
        contacts.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(contacts.len(), n);
    let mut once = 0;
    let mut in_the_gap = 0;
    for contact in &contacts {
        let message_id = sendmill_wire::MessageId::for_contact(campaign_uuid, *contact);
        let id = message_id.to_string();
        let copies = dumps.get(&id).map_or(0, Vec::len);
        if gone.contains(&contact.to_string()) {
            assert_eq!(copies, 0, "skipped contact {contact} got mail");
            continue;
        }
        once += 1;
        if copies == 2 {
            // The one gap the README names: the data's final write came back and the
            // kill landed before the journal append right after it. Then the killed
            // dispatcher did not journal the message, and its first copy reached the
            // sink at the kill. Anything else sent twice is a bug.
            assert!(
                !journaled_before_kill.contains(message_id.0.as_bytes()),
                "contact {contact} got 2 copies, though the first was journaled"
            );
            let first = sendmill_tests::dumped_messages(&id)
                .iter()
                .filter_map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
                .min()
                .unwrap();
            let from_kill = killed_at
                .duration_since(first)
                .unwrap_or_else(|e| e.duration());
            assert!(
                from_kill < Duration::from_secs(1),
                "contact {contact} got 2 copies; the first {from_kill:?} away from the kill"
            );
            in_the_gap += 1;
        } else {
            assert_eq!(copies, 1, "contact {contact} got {copies} copies");
        }
    }
    assert_eq!(once, n - 3);
    // The gap is microseconds wide: more than two messages in it would mean the journal
    // lags behind the data.
    assert!(
        in_the_gap <= 2,
        "{in_the_gap} messages sent twice at the kill"
    );
    let terminal = {
        let client = sendmill_platform::clients::clickhouse(&p.config.clickhouse);
        client
            .query("SELECT count() FROM events FINAL WHERE campaign_id = ? AND event_type IN ('delivered','bounced','expired','dropped','failed')")
            .bind(&big_id)
            .fetch_one::<u64>()
            .await
            .unwrap()
    };
    assert_eq!(
        terminal,
        (n - 3) as u64,
        "one terminal event per released message"
    );
    // The report equals the direct count.
    let stats = ok(
        &p,
        Method::GET,
        &format!("/v1/campaigns/{big_id}/stats"),
        None,
    )
    .await;
    assert_eq!(
        stats["delivered"],
        direct_count(&p, &big_id, "delivered").await,
        "{stats}"
    );
    assert_eq!(stats["released"], n as u64 - 3);

    // Pause, resume and cancel on a throttled campaign while another keeps releasing.
    let slow = ok(
        &p,
        Method::POST,
        "/v1/campaigns",
        Some({
            let mut b = campaign_body(&p, "Slow", &list);
            b["throttle_per_hour"] = json!(36_000); // 10 per second
            b
        }),
    )
    .await;
    let slow_id = slow["id"].as_str().unwrap().to_owned();
    let witness = ok(
        &p,
        Method::POST,
        "/v1/campaigns",
        Some({
            let mut b = campaign_body(&p, "Witness", &list);
            b["throttle_per_hour"] = json!(7_200); // 2 per second
            b
        }),
    )
    .await;
    let witness_id = witness["id"].as_str().unwrap().to_owned();
    ok(
        &p,
        Method::POST,
        &format!("/v1/campaigns/{slow_id}/schedule"),
        None,
    )
    .await;
    ok(
        &p,
        Method::POST,
        &format!("/v1/campaigns/{witness_id}/schedule"),
        None,
    )
    .await;
    poll_until(LIMIT, || async {
        (campaign(&p, &slow_id).await["progress"]["released"]
            .as_i64()
            .unwrap()
            >= 20)
            .then_some(())
    })
    .await
    .expect("the slow campaign releases");
    let paused = ok(
        &p,
        Method::POST,
        &format!("/v1/campaigns/{slow_id}/pause"),
        None,
    )
    .await;
    let at_pause = paused["progress"]["released"].as_i64().unwrap();
    let witness_at_pause = campaign(&p, &witness_id).await["progress"]["released"]
        .as_i64()
        .unwrap();
    // The sender keeps working (the witness releases 6 more), the paused one releases nothing.
    poll_until(LIMIT, || async {
        (campaign(&p, &witness_id).await["progress"]["released"]
            .as_i64()
            .unwrap()
            >= witness_at_pause + 6)
            .then_some(())
    })
    .await
    .expect("the witness keeps releasing");
    assert_eq!(
        campaign(&p, &slow_id).await["progress"]["released"],
        at_pause,
        "released while paused"
    );
    let resumed = ok(
        &p,
        Method::POST,
        &format!("/v1/campaigns/{slow_id}/resume"),
        None,
    )
    .await;
    assert_eq!(resumed["state"], "sending");
    poll_until(LIMIT, || async {
        (campaign(&p, &slow_id).await["progress"]["released"]
            .as_i64()
            .unwrap()
            >= at_pause + 10)
            .then_some(())
    })
    .await
    .expect("it carries on after resume");
    let cancelled = ok(
        &p,
        Method::POST,
        &format!("/v1/campaigns/{slow_id}/cancel"),
        None,
    )
    .await;
    let c = &cancelled["progress"];
    let (released, skipped, not_sent) = (
        c["released"].as_i64().unwrap(),
        c["skipped"].as_i64().unwrap(),
        c["not_sent"].as_i64().unwrap(),
    );
    assert!(not_sent > 0, "{cancelled}");
    assert_eq!(
        released + skipped + not_sent,
        c["audience_size"].as_i64().unwrap(),
        "{cancelled}"
    );
    ok(
        &p,
        Method::POST,
        &format!("/v1/campaigns/{witness_id}/cancel"),
        None,
    )
    .await;
    // Nothing released after the cancel: the slow campaign's deliveries settle at `released`.
    poll_until(LIMIT, || async {
        (direct_count(&p, &slow_id, "delivered").await == released as u64).then_some(())
    })
    .await
    .expect("every released message of the cancelled campaign is delivered");
    assert_eq!(
        campaign(&p, &slow_id).await["progress"]["released"],
        released
    );
    drop(sender);
    drop(dispatcher);
    p.stop().await;
}

const BROWSER: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";

/// The click-tracking links of a delivered message, pointed at this pipeline.
fn tracked_links(p: &TestPipeline, dump: &std::path::Path) -> Vec<String> {
    let parsed = sendmill_tests::mime_check(dump, &[]);
    let html = parsed["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|part| part["type"] == "text/html")
        .and_then(|part| part["text"].as_str())
        .unwrap()
        .to_owned();
    let base = format!("{}/t/c/", sendmill_tests::TRACKING_BASE);
    html.match_indices(&base)
        .map(|(i, _)| html[i..].split('"').next().unwrap().to_owned())
        .map(|link| {
            link.replacen(
                sendmill_tests::TRACKING_BASE,
                &format!("http://{}", p.analytics.unwrap()),
                1,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_test_is_decided_by_peoples_clicks_and_the_rest_gets_the_winner() {
    let p = TestPipeline::start().await;
    let list = list_of(&p, "AB", "ab", 20).await;
    let mut body = campaign_body(&p, "AB", &list);
    // A template large enough that a chunk's records share it through the blobs topic.
    body["html"] = json!(format!(
        "{}{}",
        body["html"].as_str().unwrap(),
        "<p>Terms of the offer, in the small print of a real newsletter.</p>".repeat(60)
    ));
    body["ab_test"] = json!({
        "variants": [{"subject": "Offer A for {{name}}"}, {"subject": "Offer B for {{name}}"}],
        "test_percent": 50, "metric": "clicks", "wait_seconds": 30,
    });
    let created = ok(&p, Method::POST, "/v1/campaigns", Some(body)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["ab_test"]["variants"][1]["name"], "B", "{created}");
    ok(
        &p,
        Method::POST,
        &format!("/v1/campaigns/{id}/schedule"),
        None,
    )
    .await;
    // The test share released, the campaign waits for its winner: hold it there.
    let waiting = poll_until(LIMIT, || async {
        let c = campaign(&p, &id).await;
        (c["phase"] == "waiting").then_some(c)
    })
    .await
    .expect("the test share is released");
    let paused = ok(&p, Method::POST, &format!("/v1/campaigns/{id}/pause"), None).await;
    assert_eq!(
        paused["phase"], "waiting",
        "decided before the pause: {paused}"
    );
    assert_eq!(waiting["progress"]["test_size"], 10);
    assert_eq!(waiting["progress"]["released"], 10);
    poll_until(LIMIT, || async {
        (direct_count(&p, &id, "delivered").await == 10).then_some(())
    })
    .await
    .expect("the test share is delivered");

    // People click B's link; a link scanner clicks A's (machines do not count).
    let dumps = dumps_for_domain(&p.domain);
    let campaign_uuid: uuid::Uuid = id.parse().unwrap();
    let store = p.store().await;
    let test_share: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT contact_id, variant FROM campaign_recipients WHERE campaign_id = $1 AND variant IS NOT NULL",
    )
    .bind(campaign_uuid)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        test_share.iter().filter(|(_, v)| v == "A").count(),
        5,
        "an even split"
    );
    let (mut people, mut machines) = (0, 0);
    for (contact, variant) in &test_share {
        let message = sendmill_wire::MessageId::for_contact(campaign_uuid, *contact).to_string();
        let dump = sendmill_tests::dumped_message(&message).expect("delivered");
        let text = std::fs::read_to_string(&dump).unwrap();
        assert!(
            text.contains(&format!("Subject: Offer {variant} for")),
            "variant {variant}'s subject"
        );
        assert_eq!(dumps.get(&message).map_or(0, Vec::len), 1);
        let link = tracked_links(&p, &dump).pop().expect("a tracked link");
        let (agent, tally) = if variant == "B" {
            (BROWSER, &mut people)
        } else {
            ("curl/8.0", &mut machines)
        };
        let r = p
            .http
            .get(&link)
            .header("user-agent", agent)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 302);
        *tally += 1;
    }
    assert_eq!((people, machines), (5, 5));
    poll_until(LIMIT, || async {
        let stats = ok(&p, Method::GET, &format!("/v1/campaigns/{id}/stats"), None).await;
        (stats["clicked"]["unique"] == 5 && stats["clicked"]["machine"] == 5).then_some(())
    })
    .await
    .expect("the clicks reach the report");

    // Resumed, the wait ends and the metric decides: B.
    ok(
        &p,
        Method::POST,
        &format!("/v1/campaigns/{id}/resume"),
        None,
    )
    .await;
    let sent = wait_state(&p, &id, "sent").await;
    assert_eq!(sent["winner"], "B", "{sent}");
    assert_eq!(sent["winner_reason"]["chosen_by"], "clicks", "{sent}");
    let figures = sent["winner_reason"]["figures"].as_array().unwrap();
    assert_eq!(
        figures[0]["unique_clicks"], 0,
        "machine clicks are not a person's: {sent}"
    );
    assert_eq!(figures[1]["unique_clicks"], 5, "{sent}");
    assert_eq!(sent["progress"]["released"], 20);
    poll_until(LIMIT, || async {
        (direct_count(&p, &id, "delivered").await == 20).then_some(())
    })
    .await
    .expect("the rest is delivered");
    let rest: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT contact_id FROM campaign_recipients WHERE campaign_id = $1 AND variant IS NULL",
    )
    .bind(campaign_uuid)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(rest.len(), 10);
    // Both variants' records point to the chunks' shared template (the variants differ
    // in their subjects only, which each record carries).
    let requested = p.read_topic(&p.topics.requested(sendmill_wire::Lane::Bulk));
    assert_eq!(requested.len(), 20);
    let blobs = p.read_topic(&p.topics.blobs());
    assert!(
        !blobs.is_empty() && blobs.len() < 20,
        "{} blobs",
        blobs.len()
    );
    for bytes in &requested {
        assert!(
            bytes.starts_with(b"SMQ3"),
            "every record points to its parts"
        );
        let record: sendmill_wire::RequestedV1 = sendmill_wire::decode(bytes).unwrap();
        let reference = record.shared.unwrap();
        assert!(blobs
            .iter()
            .any(|b| sendmill_wire::SharedParts::from_bytes(b, &reference).is_ok()));
    }
    for contact in rest {
        let message = sendmill_wire::MessageId::for_contact(campaign_uuid, contact).to_string();
        let text =
            std::fs::read_to_string(sendmill_tests::dumped_message(&message).expect("delivered"))
                .unwrap();
        assert!(
            text.contains("Subject: Offer B for"),
            "the rest gets the winner"
        );
    }

    // The report equals ClickHouse counted directly; per variant and per link.
    let stats = ok(&p, Method::GET, &format!("/v1/campaigns/{id}/stats"), None).await;
    assert_eq!(
        stats["delivered"],
        direct_count(&p, &id, "delivered").await,
        "{stats}"
    );
    let client = sendmill_platform::clients::clickhouse(&p.config.clickhouse);
    let human_clicks: u64 = client
        .query("SELECT uniqExact(message_id) FROM events FINAL WHERE campaign_id = ? AND event_type = 'clicked' AND machine = 0")
        .bind(&id)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(stats["clicked"]["unique"], human_clicks, "{stats}");
    assert_eq!(stats["variants"][1]["variant"], "B");
    assert_eq!(stats["variants"][1]["unique_clicks"], 5);
    let links = stats["links"].as_array().unwrap();
    assert!(
        links.iter().all(|l| l["url"]
            .as_str()
            .unwrap()
            .starts_with("https://shop.example/")),
        "{stats}"
    );
    assert_eq!(
        links
            .iter()
            .map(|l| l["unique_clicks"].as_u64().unwrap())
            .sum::<u64>(),
        5,
        "people's clicks per link: {stats}"
    );
    assert_eq!(stats["winner"], "B");
    assert!(!stats["timeline"].as_array().unwrap().is_empty(), "{stats}");
    p.stop().await;
}

/// Two accounts' campaigns started together take turns in the bulk lane: the small one
/// is sent while the large one is still releasing, not after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_take_turns_in_the_bulk_lane() {
    let p =
        TestPipeline::start_configured(&[Stage::Ingest, Stage::Analytics, Stage::Campaigns], |c| {
            c.campaigns.chunk_size = 20;
            // Nothing renders here: the lane's backlog only grows.
            c.campaigns.max_bulk_backlog = 0;
        })
        .await;
    let other = p.tenant("turns").await;
    let big_list = list_of(&p, "Big", "tb", 400).await;
    let small_list = list_of_as(&p, &other.api_key, "Small", "ts", 40).await;
    let big = ok(
        &p,
        Method::POST,
        "/v1/campaigns",
        Some(campaign_body(&p, "Big", &big_list)),
    )
    .await;
    let big_id = big["id"].as_str().unwrap().to_owned();
    let mut small_body = campaign_body(&p, "Small", &small_list);
    small_body["from"]["email"] = json!(format!("news@{}", other.domain));
    let (s, small) = api(
        &p,
        &other.api_key,
        Method::POST,
        "/v1/campaigns",
        Some(small_body),
    )
    .await;
    assert_eq!(s, 201, "{small}");
    let small_id = small["id"].as_str().unwrap().to_owned();
    // Both scheduled at the same instant.
    let at = (time::OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (s, answer) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &format!("/v1/campaigns/{big_id}"),
        Some(json!({"send_at": at})),
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    let (s, answer) = api(
        &p,
        &other.api_key,
        Method::PATCH,
        &format!("/v1/campaigns/{small_id}"),
        Some(json!({"send_at": at})),
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    ok(
        &p,
        Method::POST,
        &format!("/v1/campaigns/{big_id}/schedule"),
        None,
    )
    .await;
    let (s, answer) = api(
        &p,
        &other.api_key,
        Method::POST,
        &format!("/v1/campaigns/{small_id}/schedule"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    let small_sent = poll_until(LIMIT, || async {
        let (_, c) = api(
            &p,
            &other.api_key,
            Method::GET,
            &format!("/v1/campaigns/{small_id}"),
            None,
        )
        .await;
        (c["state"] == "sent").then_some(c)
    })
    .await
    .expect("the small campaign is sent");
    assert_eq!(small_sent["progress"]["released"], 40);
    let big_then = campaign(&p, &big_id).await;
    let released = big_then["progress"]["released"].as_i64().unwrap();
    assert!(
        released < 400,
        "the small campaign waited for the big one: {big_then}"
    );
    wait_state(&p, &big_id, "sent").await;

    // A segment deleted after its campaign was scheduled leaves it nobody to send to
    // (never "everyone"): the sender cancels it, saying why.
    let segment = ok(
        &p,
        Method::POST,
        "/v1/segments",
        Some(json!({"name": "pros", "expression": "attributes.plan = \"pro\""})),
    )
    .await;
    let mut body = campaign_body(&p, "Orphan", &big_list);
    body["audience"] = json!({"segment_id": segment["id"]});
    body["send_at"] = json!(
        (time::OffsetDateTime::now_utc() + time::Duration::seconds(3))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    let orphan = ok(&p, Method::POST, "/v1/campaigns", Some(body)).await;
    let orphan_id = orphan["id"].as_str().unwrap().to_owned();
    ok(
        &p,
        Method::POST,
        &format!("/v1/campaigns/{orphan_id}/schedule"),
        None,
    )
    .await;
    let (s, _) = api(
        &p,
        &p.api_key,
        Method::DELETE,
        &format!("/v1/segments/{}", segment["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let cancelled = wait_state(&p, &orphan_id, "cancelled").await;
    assert_eq!(cancelled["progress"]["released"], 0, "{cancelled}");
    assert!(
        cancelled["note"]
            .as_str()
            .unwrap()
            .contains("lists or a segment"),
        "{cancelled}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marketer_pages_drive_campaigns_in_chromium() {
    let p = TestPipeline::start().await;
    let list = list_of(&p, "Main", "ui", 3).await;
    let base = format!("http://{}", p.analytics.unwrap());
    let node_dir = sendmill_tests::local_dir().join("node/node_modules/playwright-core");
    assert!(
        node_dir.exists(),
        "{} is missing: run deploy/local/install-packages.sh",
        node_dir.display()
    );
    let artifacts = sendmill_tests::repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("campaigns-app.png");
    let browser = tokio::task::spawn_blocking({
        let args = [
            base.clone(),
            p.api_key.clone(),
            list.clone(),
            p.domain.clone(),
            "ui1@ok.test".to_owned(),
            screenshot.to_string_lossy().into_owned(),
        ];
        move || {
            std::process::Command::new("node")
                .arg(sendmill_tests::repo_root().join("deploy/local/campaign-check.js"))
                .args(args)
                .env("PLAYWRIGHT_CORE", node_dir)
                .output()
                .expect("node runs")
        }
    });
    // Meanwhile, as a person: click the link of one delivered message of "Welcome".
    let click = async {
        let id = poll_until(LIMIT, || async {
            let (_, page) = api(
                &p,
                &p.api_key,
                Method::GET,
                "/v1/campaigns?state=sent",
                None,
            )
            .await;
            page["data"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "Welcome")
                .map(|c| c["id"].as_str().unwrap().to_owned())
        })
        .await
        .expect("the browser sends Welcome");
        poll_until(LIMIT, || async {
            (direct_count(&p, &id, "delivered").await == 3).then_some(())
        })
        .await
        .expect("Welcome is delivered");
        let (_, contacts) = api(
            &p,
            &p.api_key,
            Method::GET,
            &format!("/v1/contacts?list_id={list}"),
            None,
        )
        .await;
        let contact: uuid::Uuid = contacts["data"][0]["id"].as_str().unwrap().parse().unwrap();
        let message =
            sendmill_wire::MessageId::for_contact(id.parse().unwrap(), contact).to_string();
        let dump = sendmill_tests::dumped_message(&message).expect("delivered");
        let link = tracked_links(&p, &dump).pop().expect("a tracked link");
        let r = p
            .http
            .get(&link)
            .header("user-agent", BROWSER)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 302);
    };
    let (run, ()) = tokio::join!(browser, click);
    let run = run.unwrap();
    assert!(
        run.status.success(),
        "the browser check failed: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let seen: Value = serde_json::from_slice(&run.stdout).expect("one JSON line");
    assert_eq!(seen["redirectedToLogin"], true, "{seen}");
    assert_eq!(seen["errors"], json!([]), "{seen}");
    // The one failed request is the refused sender's 422, shown in the editor.
    assert!(
        seen["consoleErrors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e.as_str().unwrap().contains("422")),
        "{seen}"
    );
    assert_eq!(seen["refusedField"], "from.email", "{seen}");
    assert_eq!(seen["previewSubject"], "Hello Person 1", "{seen}");
    assert!(
        seen["previewHtml"]
            .as_str()
            .unwrap()
            .contains("Hi Person 1"),
        "{seen}"
    );
    assert_eq!(seen["funnel"]["Delivered"], "3", "{seen}");
    assert_eq!(seen["funnel"]["Clicked (people)"], "1", "{seen}");
    assert!(
        seen["links"][0]
            .as_str()
            .unwrap()
            .starts_with("https://shop.example/"),
        "{seen}"
    );
    assert!(seen["bars"].as_u64().unwrap() >= 3, "{seen}");
    assert_eq!(seen["slow"]["Released"], "1", "{seen}");
    assert_eq!(seen["slow"]["Not sent"], "2", "{seen}");
    // What the page did is what the API has.
    let (_, cancelled) = api(
        &p,
        &p.api_key,
        Method::GET,
        "/v1/campaigns?state=cancelled",
        None,
    )
    .await;
    assert_eq!(cancelled["data"][0]["name"], "Slow", "{cancelled}");
    assert_eq!(cancelled["data"][0]["progress"]["not_sent"], 2);
    // The A/B test set up in the editor.
    let ab = &cancelled["data"][0]["ab_test"];
    assert_eq!(
        ab["variants"][0]["subject"], "Hello {{name}}",
        "{cancelled}"
    );
    assert_eq!(
        ab["variants"][1]["subject"], "Offer B for {{name}}",
        "{cancelled}"
    );
    assert_eq!(
        (
            ab["test_percent"].as_u64(),
            ab["metric"].as_str(),
            ab["wait_seconds"].as_u64()
        ),
        (Some(50), Some("clicks"), Some(1800)),
        "{cancelled}"
    );
    assert_eq!(
        cancelled["data"][0]["progress"]["test_size"], 2,
        "{cancelled}"
    );
    p.stop().await;
}
