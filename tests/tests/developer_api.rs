//! The developer API against real PostgreSQL, Redis, ClickHouse, Apache Kafka,
//! dnsmasq and smtp-sink: tenancy, keys and scopes, templates, idempotency, scheduling,
//! suppressions, limits, listing, domain verification and the OpenAPI contract.
//!
//! Why one file of ~1,200 lines: every file under `tests/tests/` is a binary of its own,
//! linked against the whole platform (~30 s and ~200 MB each on the CI machine), and these
//! tests share one pipeline shape and its helpers. Each test is independent and named
//! after the behaviour it checks, so the file reads as a list.

use reqwest::Method;
use sendmill::Stage;
use sendmill_tests::{
    dumped_messages, message_to, poll_until, read_topic_timed, unique, TestPipeline,
};
use sendmill_wire::{EventV1, Lane, RequestedV1};
use serde_json::{json, Value};
use std::{collections::BTreeSet, time::Duration};

fn requested(p: &TestPipeline) -> Vec<RequestedV1> {
    Lane::ALL
        .iter()
        .flat_map(|&lane| p.read_topic(&p.topics.requested(lane)))
        .map(|bytes| sendmill_wire::decode(&bytes).expect("requested record decodes"))
        .collect()
}

fn events(p: &TestPipeline) -> Vec<EventV1> {
    p.read_topic(&p.topics.events())
        .iter()
        .map(|bytes| sendmill_wire::decode(bytes).expect("event decodes"))
        .collect()
}

fn ids(response: &Value) -> Vec<String> {
    response["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["message_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_can_never_reach_anothers_data() {
    let p = TestPipeline::start().await;
    let a = &p.api_key;
    let b = p.tenant("other").await;
    let b = &b.api_key;

    // Tenant A's resources.
    let (status, template, _) = p
        .call(
            a,
            Method::POST,
            "/v1/templates",
            Some(&json!({"name": "welcome", "subject": "Hi {{name}}", "text": "Hello"})),
        )
        .await;
    assert_eq!(status, 201, "{template}");
    let template_id = template["id"].as_str().unwrap().to_owned();
    let (status, _, _) = p
        .call(
            a,
            Method::POST,
            "/v1/suppressions",
            Some(&json!({"suppressions": [{"email": "secret@ok.test", "reason": "complaint"}]})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, key, _) = p
        .call(
            a,
            Method::POST,
            "/v1/keys",
            Some(&json!({"name": "ci", "scopes": ["send"]})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let key_id = key["id"].as_str().unwrap().to_owned();
    let send_at = (time::OffsetDateTime::now_utc() + Duration::from_secs(3600))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, scheduled) = p
        .send(&json!({"from": format!("a@{}", p.domain), "to": ["x@ok.test"], "subject": "s", "text": "t", "send_at": send_at, "tags": ["tenant-a"]}))
        .await;
    assert_eq!(status, 202, "{scheduled}");
    let scheduled_id = ids(&scheduled)[0].clone();
    let (status, sent) = p.send(&message_to(&p, json!(["seen@ok.test"]))).await;
    assert_eq!(status, 202);
    let sent_id = ids(&sent)[0].clone();
    p.wait_for_status(&sent_id, "delivered", Duration::from_secs(30))
        .await;

    // Tenant B, with every scope, reaches none of them.
    let not_found = [
        (Method::GET, format!("/v1/templates/{template_id}")),
        (Method::DELETE, format!("/v1/templates/{template_id}")),
        (
            Method::GET,
            format!("/v1/templates/{template_id}/versions/1"),
        ),
        (Method::GET, format!("/v1/domains/{}", p.domain)),
        (Method::POST, format!("/v1/domains/{}/verify", p.domain)),
        (Method::DELETE, format!("/v1/domains/{}", p.domain)),
        (Method::GET, "/v1/suppressions/secret@ok.test".to_owned()),
        (Method::DELETE, "/v1/suppressions/secret@ok.test".to_owned()),
        (Method::DELETE, format!("/v1/keys/{key_id}")),
        (Method::DELETE, format!("/v1/messages/{scheduled_id}")),
    ];
    for (method, path) in not_found {
        let (status, body, _) = p.call(b, method.clone(), &path, None).await;
        assert_eq!(status, 404, "{method} {path} as another tenant: {body}");
    }
    let (status, body, _) = p
        .call(
            b,
            Method::POST,
            &format!("/v1/templates/{template_id}/preview"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body, _) = p
        .call(
            b,
            Method::POST,
            &format!("/v1/templates/{template_id}/versions"),
            Some(&json!({"subject": "x", "text": "y"})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    for path in [
        "/v1/templates",
        "/v1/suppressions",
        "/v1/domains",
        "/v1/keys",
    ] {
        let (status, body, _) = p.call(b, Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        let text = body.to_string();
        for secret in [
            template_id.as_str(),
            "secret@ok.test",
            p.domain.as_str(),
            key_id.as_str(),
        ] {
            assert!(
                !text.contains(secret),
                "{path} shows tenant A's {secret}: {text}"
            );
        }
    }
    let (status, body) = p
        .send_as(b, &json!({"from": format!("a@{}", p.domain), "to": ["x@ok.test"], "subject": "s", "text": "t"}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unknown_sending_domain"))
    );
    let tenant_b = p.tenant("third").await;
    let (status, body) = p
        .send_as(&tenant_b.api_key, &json!({"from": format!("b@{}", tenant_b.domain), "to": ["x@ok.test"], "template": {"id": template_id}}))
        .await;
    assert_eq!(status, 422, "another tenant's template: {body}");
    let (status, _) = p
        .call_analytics(b, Method::GET, &format!("/v1/messages/{sent_id}"))
        .await;
    assert_eq!(status, 404);
    let (status, list) = p.call_analytics(b, Method::GET, "/v1/messages").await;
    assert_eq!(status, 200);
    assert_eq!(
        list["data"],
        json!([]),
        "tenant B lists A's messages: {list}"
    );
    // Operator-only endpoints refuse a tenant's admin key.
    for (method, path) in [
        (Method::GET, "/v1/accounts"),
        (Method::GET, "/v1/global-suppressions"),
    ] {
        let (status, body, _) = p.call(b, method, path, None).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, _, _) = p
        .call(
            b,
            Method::POST,
            "/v1/accounts",
            Some(&json!({"name": "sneaky"})),
        )
        .await;
    assert_eq!(status, 403);
    // A's resources are still there for A.
    let (status, _, _) = p
        .call(
            a,
            Method::GET,
            &format!("/v1/templates/{template_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = p
        .call(a, Method::GET, "/v1/suppressions/secret@ok.test", None)
        .await;
    assert_eq!(status, 200);

    // Scopes: a send-only key cannot manage templates; a revoked key stops at once.
    let send_only = key["key"].as_str().unwrap();
    let (status, _, _) = p.call(send_only, Method::GET, "/v1/templates", None).await;
    assert_eq!(status, 403);
    let (status, _) = p
        .send_as(send_only, &message_to(&p, json!(["k@ok.test"])))
        .await;
    assert_eq!(status, 202);
    let (status, listed, _) = p.call(a, Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 200);
    assert!(
        !listed.to_string().contains(send_only),
        "a listing shows a secret"
    );
    let (status, _, _) = p
        .call(a, Method::DELETE, &format!("/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = p
        .send_as(send_only, &message_to(&p, json!(["k@ok.test"])))
        .await;
    assert_eq!(status, 401, "a revoked key still works");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_create_tenants_whose_keys_work() {
    let p = TestPipeline::start_stages(&[Stage::Ingest]).await;
    let operator = p.operator("operator").await;
    let (status, created, _) = p
        .call(
            &operator.api_key,
            Method::POST,
            "/v1/accounts",
            Some(&json!({"name": "acme", "limits": {"send_rate_per_sec": 50}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["account"]["limits"]["send_rate_per_sec"], 50);
    let key = created["key"].as_str().unwrap();
    let (status, me, _) = p.call(key, Method::GET, "/v1/account", None).await;
    assert_eq!((status, me["name"].as_str()), (200, Some("acme")));
    let (status, domain, _) = p
        .call(
            key,
            Method::POST,
            "/v1/domains",
            Some(&json!({"domain": format!("{}.example.test", unique("acme"))})),
        )
        .await;
    assert_eq!(status, 201, "{domain}");
    let purposes: Vec<&str> = domain["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["purpose"].as_str().unwrap())
        .collect();
    assert_eq!(
        purposes,
        ["dkim", "dkim_ed25519", "return_path", "spf", "dmarc"]
    );
    let id = created["account"]["id"].as_str().unwrap();
    let (status, updated, _) = p
        .call(
            &operator.api_key,
            Method::PATCH,
            &format!("/v1/accounts/{id}"),
            Some(&json!({"limits": {"daily_quota": 10}})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["limits"]["daily_quota"], 10);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_checked_versioned_previewed_and_sent_by_version() {
    let p = TestPipeline::start_stages(&[Stage::Ingest]).await;
    let key = &p.api_key;
    let (status, error, _) = p
        .call(key, Method::POST, "/v1/templates", Some(&json!({"name": "broken", "subject": "ok", "html": "<p>\n{{#if x}}never closed</p>"})))
        .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "template_syntax");
    assert_eq!(error["error"]["field"], "html");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("line ") && message.contains("column "),
        "{message}"
    );

    let (status, created, _) = p
        .call(key, Method::POST, "/v1/templates", Some(&json!({"name": "receipt", "subject": "Receipt v1 for {{name}}", "html": "<p>Total {{format_number total 2}}</p>"})))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, _, _) = p
        .call(
            key,
            Method::POST,
            "/v1/templates",
            Some(&json!({"name": "receipt", "subject": "dup", "text": "x"})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, v2, _) = p
        .call(
            key,
            Method::POST,
            &format!("/v1/templates/{id}/versions"),
            Some(&json!({"subject": "Receipt v2 for {{name}}", "text": "Total {{total}}"})),
        )
        .await;
    assert_eq!((status, v2["version"].as_i64()), (201, Some(2)), "{v2}");
    let (status, v1, _) = p
        .call(
            key,
            Method::GET,
            &format!("/v1/templates/{id}/versions/1"),
            None,
        )
        .await;
    assert_eq!(
        (status, v1["subject"].as_str()),
        (200, Some("Receipt v1 for {{name}}"))
    );
    let (status, detail, _) = p
        .call(key, Method::GET, &format!("/v1/templates/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(detail["latest_version"], 2);
    assert_eq!(detail["versions"], json!([2, 1]));

    let (status, preview, _) = p
        .call(
            key,
            Method::POST,
            &format!("/v1/templates/{id}/preview"),
            Some(&json!({"version": 1, "data": {"name": "Ada", "total": 1234.5}})),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["subject"], "Receipt v1 for Ada");
    assert_eq!(preview["html"], "<p>Total 1,234.50</p>");
    let (status, failed, _) = p
        .call(
            key,
            Method::POST,
            &format!("/v1/templates/{id}/preview"),
            Some(&json!({"strict": true, "data": {}})),
        )
        .await;
    assert_eq!(
        (status, failed["error"]["code"].as_str()),
        (422, Some("render_failed")),
        "{failed}"
    );

    let (status, sent) = p
        .send(&json!({"from": format!("a@{}", p.domain), "to": [{"email": "t@ok.test", "data": {"name": "Bo", "total": 3}}], "template": {"id": id, "version": 1}}))
        .await;
    assert_eq!(status, 202, "{sent}");
    let (status, latest) = p
        .send(&json!({"from": format!("a@{}", p.domain), "to": ["u@ok.test"], "template": {"id": id}}))
        .await;
    assert_eq!(status, 202, "{latest}");
    let (status, missing) = p
        .send(&json!({"from": format!("a@{}", p.domain), "to": ["u@ok.test"], "template": {"id": id, "version": 9}}))
        .await;
    assert_eq!(
        (status, missing["error"]["field"].as_str()),
        (422, Some("template"))
    );
    let records = requested(&p);
    let subject_of = |to: &str| {
        records
            .iter()
            .find(|r| r.to.email == to)
            .map(|r| r.subject.clone())
            .unwrap()
    };
    assert_eq!(subject_of("t@ok.test"), "Receipt v1 for {{name}}");
    assert_eq!(subject_of("u@ok.test"), "Receipt v2 for {{name}}");

    let (status, _, _) = p
        .call(key, Method::DELETE, &format!("/v1/templates/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _, _) = p
        .call(key, Method::GET, &format!("/v1/templates/{id}"), None)
        .await;
    assert_eq!(status, 404);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_produces_one_set_of_records() {
    let p = TestPipeline::start_stages(&[Stage::Ingest]).await;
    let body = message_to(
        &p,
        json!(["i1@ok.test", {"email": "i2@ok.test", "cc": ["i3@ok.test"]}]),
    );
    let key = unique("idem");
    let post = |body: Value, key: String| {
        let p = &p;
        async move {
            let response = p
                .http
                .post(format!("http://{}/v1/messages", p.ingest))
                .bearer_auth(&p.api_key)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let replayed = response.headers().get("idempotent-replayed").is_some();
            (
                response.status().as_u16(),
                replayed,
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, replayed, first) = post(body.clone(), key.clone()).await;
    assert_eq!((status, replayed), (202, false), "{first}");
    assert_eq!(ids(&first).len(), 3);
    let (status, replayed, second) = post(body.clone(), key.clone()).await;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(first, second, "a replay answers as the first request did");
    let (status, _, conflict) = post(message_to(&p, json!(["other@ok.test"])), key.clone()).await;
    assert_eq!(status, 422, "{conflict}");
    assert_eq!(conflict["error"]["code"], "idempotency_key_reused");

    let records = requested(&p);
    assert_eq!(records.len(), 3, "one set of records for one key");
    let produced: BTreeSet<String> = records.iter().map(|r| r.message_id.to_string()).collect();
    assert_eq!(produced, ids(&first).into_iter().collect());
    let accepted = events(&p)
        .iter()
        .filter(|e| e.event_type.as_str() == "accepted")
        .count();
    assert_eq!(accepted, 3);

    // A refused request frees its key.
    let bad_key = unique("idem");
    let (status, _, _) = post(message_to(&p, json!(["nope"])), bad_key.clone()).await;
    assert_eq!(status, 400);
    let (status, _, _) = post(message_to(&p, json!(["fine@ok.test"])), bad_key).await;
    assert_eq!(status, 202);

    // Sandbox: validated and rendered per recipient, nothing produced.
    let before = requested(&p).len();
    let mut sandbox = message_to(
        &p,
        json!([{"email": "s1@ok.test", "data": {"name": "S"}}, "s2@ok.test"]),
    );
    sandbox["sandbox"] = json!(true);
    sandbox["strict_templates"] = json!(true);
    let (status, answer) = p.send(&sandbox).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["messages"][0]["status"], "sandbox");
    assert_eq!(answer["messages"][1]["status"], "render_failed", "{answer}");
    assert_eq!(
        requested(&p).len(),
        before,
        "a sandbox send produced records"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_wait_for_send_at_survive_a_restart_and_can_be_cancelled() {
    let mut p = TestPipeline::start_stages(&[Stage::Ingest]).await;
    let send_at = time::OffsetDateTime::now_utc() + Duration::from_secs(5);
    let at = send_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mut body = message_to(&p, json!(["later1@ok.test", "later2@ok.test"]));
    body["send_at"] = json!(at);
    let (status, kept) = p.send(&body).await;
    assert_eq!(status, 202, "{kept}");
    assert_eq!(kept["messages"][0]["status"], "scheduled");
    let kept_ids: BTreeSet<String> = ids(&kept).into_iter().collect();
    let mut doomed = message_to(&p, json!(["cancel1@ok.test", "cancel2@ok.test"]));
    doomed["send_at"] = json!(at);
    let (status, doomed) = p.send(&doomed).await;
    assert_eq!(status, 202);
    let doomed_ids = ids(&doomed);

    assert!(requested(&p).is_empty(), "produced before send_at");
    let (status, cancelled, _) = p
        .call(
            &p.api_key,
            Method::DELETE,
            &format!("/v1/messages/{}", doomed_ids[0]),
            None,
        )
        .await;
    assert_eq!(
        (status, cancelled["cancelled"].as_u64()),
        (200, Some(1)),
        "{cancelled}"
    );
    let batch = doomed["batch_id"].as_str().unwrap();
    let (status, cancelled, _) = p
        .call(
            &p.api_key,
            Method::DELETE,
            &format!("/v1/batches/{batch}"),
            None,
        )
        .await;
    assert_eq!(
        (status, cancelled["cancelled"].as_u64()),
        (200, Some(1)),
        "{cancelled}"
    );

    // The ingest process goes away and comes back before send_at.
    p.restart().await;
    assert!(
        time::OffsetDateTime::now_utc() < send_at,
        "the restart took too long for this test"
    );
    assert!(requested(&p).is_empty(), "produced before send_at");

    let released = poll_until(Duration::from_secs(30), || async {
        let records = read_topic_timed(
            &p.config.kafka.brokers,
            &p.topics.requested(Lane::Transactional),
            p.config.kafka.partitions,
        );
        (records.len() >= 2).then_some(records)
    })
    .await
    .expect("the scheduled messages are released after send_at");
    let send_at_ms = (send_at.unix_timestamp_nanos() / 1_000_000) as i64;
    let mut released_ids = BTreeSet::new();
    for (produced_at, bytes) in &released {
        assert!(
            *produced_at >= send_at_ms,
            "released {} ms early",
            send_at_ms - produced_at
        );
        let record: RequestedV1 = sendmill_wire::decode(bytes).unwrap();
        released_ids.insert(record.message_id.to_string());
    }
    assert_eq!(
        released_ids, kept_ids,
        "exactly the kept messages, the cancelled never"
    );
    let dropped: Vec<String> = events(&p)
        .into_iter()
        .filter(|e| e.event_type.as_str() == "dropped" && e.reason.as_deref() == Some("cancelled"))
        .map(|e| e.message_id.to_string())
        .collect();
    assert_eq!(dropped.len(), 2, "each cancelled message ends as dropped");
    let (status, late, _) = p
        .call(
            &p.api_key,
            Method::DELETE,
            &format!("/v1/messages/{}", ids(&kept)[0]),
            None,
        )
        .await;
    assert_eq!(
        (status, late["error"]["code"].as_str()),
        (409, Some("already_released"))
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressed_recipients_are_dropped_at_ingest_and_at_dispatch_without_an_smtp_attempt() {
    let p = TestPipeline::start().await;
    let key = &p.api_key;
    let blocked = format!("{}@ok.test", unique("blocked"));
    let (status, _, _) = p
        .call(
            key,
            Method::POST,
            "/v1/suppressions",
            Some(&json!({"suppressions": [{"email": blocked, "reason": "bounce"}]})),
        )
        .await;
    assert_eq!(status, 200);
    // Redis loses its copy (a restart): the next check rebuilds it from PostgreSQL.
    let mut redis = sendmill_platform::clients::redis(&p.config.redis)
        .await
        .unwrap();
    let prefix = format!("{}supp:a:{}", p.config.redis.key_prefix, p.account);
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}:h"))
        .arg(format!("{prefix}:loaded"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let free = format!("{}@ok.test", unique("free"));
    let (status, answer) = p
        .send(&message_to(&p, json!([blocked.to_uppercase(), free])))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["messages"][0]["status"], "suppressed", "{answer}");
    assert_eq!(answer["messages"][1]["status"], "queued");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(1), Some(1))
    );
    let dropped_id = ids(&answer)[0].clone();
    let sent_id = ids(&answer)[1].clone();
    let timeline = p
        .wait_for_status(&dropped_id, "dropped", Duration::from_secs(30))
        .await;
    assert!(
        timeline.to_string().contains("suppressed (bounce)"),
        "{timeline}"
    );
    p.wait_for_status(&sent_id, "delivered", Duration::from_secs(30))
        .await;

    // Suppressed after acceptance (while held for send_at): the dispatcher drops it.
    let late = format!("{}@ok.test", unique("late"));
    let mut body = message_to(&p, json!([late]));
    body["send_at"] = json!((time::OffsetDateTime::now_utc() + Duration::from_secs(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap());
    let (status, held) = p.send(&body).await;
    assert_eq!(status, 202);
    let held_id = ids(&held)[0].clone();
    let operator = p.operator("ops").await;
    let (status, _, _) = p
        .call(
            &operator.api_key,
            Method::POST,
            "/v1/global-suppressions",
            Some(&json!({"suppressions": [{"email": late, "reason": "complaint"}]})),
        )
        .await;
    assert_eq!(status, 200);
    let timeline = p
        .wait_for_status(&held_id, "dropped", Duration::from_secs(30))
        .await;
    let dropped_by = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "dropped")
        .unwrap()
        .clone();
    assert_eq!(
        dropped_by["reason"], "suppressed (complaint, global list)",
        "{timeline}"
    );
    assert!(
        dumped_messages(&dropped_id).is_empty(),
        "a suppressed message reached SMTP"
    );
    assert!(
        dumped_messages(&held_id).is_empty(),
        "a suppressed message reached SMTP"
    );
    assert_eq!(dumped_messages(&sent_id).len(), 1);

    // Removing it makes the address sendable again.
    let (status, _, _) = p
        .call(
            key,
            Method::DELETE,
            &format!("/v1/suppressions/{blocked}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, again) = p.send(&message_to(&p, json!([blocked]))).await;
    assert_eq!(
        (status, again["messages"][0]["status"].as_str()),
        (202, Some("queued"))
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressions_import_and_export_as_csv_all_or_nothing() {
    let p = TestPipeline::start_stages(&[Stage::Ingest]).await;
    let post_csv = |csv: &'static str| {
        let p = &p;
        async move {
            let response = p
                .http
                .post(format!("http://{}/v1/suppressions/import", p.ingest))
                .bearer_auth(&p.api_key)
                .header("content-type", "text/csv")
                .body(csv)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, error) = post_csv("email,reason\na@ok.test,bounce\nbroken,manual\n").await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (400, Some("line 3")),
        "{error}"
    );
    let (_, listed, _) = p
        .call(&p.api_key, Method::GET, "/v1/suppressions", None)
        .await;
    assert_eq!(
        listed["data"],
        json!([]),
        "a refused import wrote something"
    );
    let (status, written) =
        post_csv("email,reason,expires_at\na@ok.test,bounce,\nB@ok.test,,2099-01-01T00:00:00Z\nc@ok.test,unsubscribe,\n").await;
    assert_eq!(
        (status, written["written"].as_u64()),
        (200, Some(3)),
        "{written}"
    );
    let (status, page, _) = p
        .call(&p.api_key, Method::GET, "/v1/suppressions?limit=2", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest, _) = p
        .call(
            &p.api_key,
            Method::GET,
            &format!("/v1/suppressions?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(rest["data"][0]["email"], "c@ok.test");
    let (_, bounces, _) = p
        .call(
            &p.api_key,
            Method::GET,
            "/v1/suppressions?reason=bounce",
            None,
        )
        .await;
    assert_eq!(bounces["data"].as_array().unwrap().len(), 1);
    let (status, error, _) = p
        .call(
            &p.api_key,
            Method::GET,
            "/v1/suppressions?colour=blue",
            None,
        )
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let export = p
        .http
        .get(format!("http://{}/v1/suppressions/export", p.ingest))
        .bearer_auth(&p.api_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = export.lines().collect();
    assert_eq!(lines[0], "email,reason,created_at,expires_at");
    assert!(lines[1].starts_with("a@ok.test,bounce,"), "{export}");
    assert!(
        lines[2].starts_with("b@ok.test,manual,") && lines[2].ends_with("2099-01-01T00:00:00Z"),
        "{export}"
    );
    assert_eq!(lines.len(), 4);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_daily_quotas_answer_429_with_retry_after_and_produce_nothing() {
    let p = TestPipeline::start_stages(&[Stage::Ingest]).await;
    let store = p.store().await;
    let slow = p.tenant("slow").await;
    store
        .set_limits(
            slow.account,
            sendmill_store::AccountLimits {
                send_rate_per_sec: Some(1),
                daily_quota: None,
            },
        )
        .await
        .unwrap();
    let capped = p.tenant("capped").await;
    store
        .set_limits(
            capped.account,
            sendmill_store::AccountLimits {
                send_rate_per_sec: None,
                daily_quota: Some(3),
            },
        )
        .await
        .unwrap();
    let body = |domain: &str, to: Value| json!({"from": format!("a@{domain}"), "to": to, "subject": "s", "text": "t"});

    // Ten recipients at 1/s leave the bucket ten seconds in debt: the next request is
    // refused however slowly this shared machine gets to it.
    let ten: Vec<String> = (0..10).map(|i| format!("r{i}@ok.test")).collect();
    let (status, _) = p
        .send_as(&slow.api_key, &body(&slow.domain, json!(ten)))
        .await;
    assert_eq!(status, 202);
    // A throttled send: 429, its code and a Retry-After within `max_wait` seconds.
    let throttled = |key: String, body: Value, code: &'static str, max_wait: u64| {
        let p = &p;
        async move {
            let (status, error, headers) = p
                .call(&key, Method::POST, "/v1/messages", Some(&body))
                .await;
            assert_eq!(
                (status, error["error"]["code"].as_str()),
                (429, Some(code)),
                "{error}"
            );
            let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(
                (1..=max_wait).contains(&retry_after),
                "Retry-After {retry_after}"
            );
        }
    };
    let before = requested(&p).len();
    throttled(
        slow.api_key.clone(),
        body(&slow.domain, json!(["r3@ok.test", "r4@ok.test"])),
        "rate_limited",
        11,
    )
    .await;
    assert_eq!(
        requested(&p).len(),
        before,
        "a throttled request produced records"
    );

    let (status, _) = p
        .send_as(
            &capped.api_key,
            &body(
                &capped.domain,
                json!(["q1@ok.test", "q2@ok.test", "q3@ok.test"]),
            ),
        )
        .await;
    assert_eq!(status, 202);
    throttled(
        capped.api_key.clone(),
        body(&capped.domain, json!(["q4@ok.test"])),
        "quota_exceeded",
        86_400,
    )
    .await;
    // Another tenant is not affected by either.
    let (status, _) = p.send(&message_to(&p, json!(["free@ok.test"]))).await;
    assert_eq!(status, 202);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_listed_by_tag_status_and_recipient_page_by_page() {
    let p = TestPipeline::start().await;
    let tag = unique("tag").replace('-', "");
    let mut body = message_to(&p, json!(["l1@ok.test", "l2@ok.test", "l3@bounce.test"]));
    body["tags"] = json!([tag]);
    let (status, answer) = p.send(&body).await;
    assert_eq!(status, 202);
    let sent = ids(&answer);
    p.wait_for_status(&sent[0], "delivered", Duration::from_secs(30))
        .await;
    p.wait_for_status(&sent[1], "delivered", Duration::from_secs(30))
        .await;
    p.wait_for_status(&sent[2], "bounced", Duration::from_secs(30))
        .await;
    let list = |query: String| {
        let p = &p;
        async move {
            let (status, body) = p
                .call_analytics(&p.api_key, Method::GET, &format!("/v1/messages?{query}"))
                .await;
            assert_eq!(status, 200, "{query}: {body}");
            body
        }
    };
    let all = list(format!("tag={tag}")).await;
    let listed: BTreeSet<String> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, sent.iter().cloned().collect());
    let bounced = list(format!("tag={tag}&status=bounced")).await;
    assert_eq!(bounced["data"].as_array().unwrap().len(), 1);
    assert_eq!(bounced["data"][0]["to"], "l3@bounce.test");
    let one = list(format!("tag={tag}&to=l2@ok.test")).await;
    assert_eq!(one["data"][0]["message_id"], sent[1].as_str());
    let first = list(format!("tag={tag}&limit=2")).await;
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = list(format!("tag={tag}&limit=2&cursor={cursor}")).await;
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert!(second.get("next_cursor").is_none());
    let (status, error) = p
        .call_analytics(&p.api_key, Method::GET, "/v1/messages?status=lost")
        .await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (400, Some("status"))
    );
    p.stop().await;
}

/// A dnsmasq of the test's own, ended (by its PID) when dropped.
/// A port below the ephemeral range (32768 and up) that is free for UDP and TCP now.
/// dnsmasq binds both, three times over in the test below; an ephemeral port could
/// meanwhile become the local end of another test's outgoing TCP connection (seen once:
/// "failed to create listening socket: Address already in use").
fn dns_port() -> u16 {
    let seed = uuid::Uuid::now_v7().as_u128() as u16;
    (0u16..2_000)
        .map(|i| 20_000 + seed.wrapping_add(i.wrapping_mul(7)) % 12_000)
        .find(|&port| {
            std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        })
        .expect("a free port below the ephemeral range")
}

struct Dns(std::process::Child);

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_sends_only_once_its_dns_records_are_verified() {
    // The records go to a dnsmasq started later on a port chosen now.
    let port = dns_port();
    let p = TestPipeline::start_configured(&[Stage::Ingest], |config| {
        config.ingest.allow_unverified_domains = false;
        config.ingest.domains.nameservers = vec![format!("127.0.0.1:{port}")];
        config.ingest.domains.dns_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let domain = format!("{}.verify.test", unique("d"));
    let (status, added, _) = p
        .call(
            &p.api_key,
            Method::POST,
            "/v1/domains",
            Some(&json!({"domain": domain})),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["verified"], false);
    let from =
        json!({"from": format!("news@{domain}"), "to": ["v@ok.test"], "subject": "s", "text": "t"});
    let (status, refused) = p.send(&from).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("unverified_sending_domain")),
        "{refused}"
    );

    let verify = || async {
        let (status, checked, _) = p
            .call(
                &p.api_key,
                Method::POST,
                &format!("/v1/domains/{domain}/verify"),
                None,
            )
            .await;
        (status, checked)
    };
    // Nothing published yet (the server answers nothing): not verified.
    let empty = start_dns_on(port, &[]);
    let (status, checked) = verify().await;
    assert_eq!(
        (status, checked["verified"].as_bool()),
        (200, Some(false)),
        "{checked}"
    );
    assert!(
        checked["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == false),
        "{checked}"
    );
    drop(empty);

    // Everything but DMARC: still not verified, and the check says which.
    let records: Vec<Value> = added["records"].as_array().unwrap().clone();
    let partial: Vec<Value> = records
        .iter()
        .filter(|r| r["purpose"] != "dmarc")
        .cloned()
        .collect();
    let dns = start_dns_on(port, &partial);
    let (_, checked) = verify().await;
    assert_eq!(checked["verified"], false);
    let failing: Vec<&str> = checked["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["purpose"].as_str().unwrap())
        .collect();
    assert_eq!(failing, ["dmarc"], "{checked}");
    drop(dns);

    let dns = start_dns_on(port, &records);
    let (status, checked) = verify().await;
    assert_eq!(
        (status, checked["verified"].as_bool()),
        (200, Some(true)),
        "{checked}"
    );
    let (status, accepted) = p.send(&from).await;
    assert_eq!(status, 202, "{accepted}");
    drop(dns);
    p.stop().await;
}

/// Serves `records` (as the domain API lists them) on 127.0.0.1:`port`.
fn start_dns_on(port: u16, records: &[Value]) -> Dns {
    let file = std::env::temp_dir().join(format!("{}.conf", unique("dns")));
    std::fs::write(&file, dns_conf(records)).unwrap();
    let child = std::process::Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            "--pid-file=",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--conf-file={}", file.display()))
        .spawn()
        .expect("dnsmasq is required: run deploy/local/install-packages.sh");
    let dns = Dns(child);
    // Ready once it holds the port.
    let started = std::time::Instant::now();
    while std::net::UdpSocket::bind(format!("127.0.0.1:{port}")).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "dnsmasq did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    dns
}

fn dns_conf(records: &[Value]) -> String {
    let mut conf = String::new();
    for r in records {
        let name = r["name"].as_str().unwrap();
        let value = r["value"].as_str().unwrap();
        if r["type"] == "MX" {
            let (preference, host) = value.split_once(' ').unwrap();
            conf.push_str(&format!("mx-host={name},{host},{preference}\n"));
        } else {
            let chunks: Vec<String> = value
                .as_bytes()
                .chunks(200)
                .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
                .collect();
            conf.push_str(&format!("txt-record={name},{}\n", chunks.join(",")));
        }
    }
    conf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_documents_describe_exactly_the_routes() {
    let p = TestPipeline::start_stages(&[Stage::Ingest, Stage::Analytics]).await;
    let sample = |path: &str| {
        path.replace("{id}", "0190a000-0000-7000-8000-000000000000")
            .replace("{version}", "1")
            .replace("{domain}", "example.test")
            .replace("{email}", "a@ok.test")
    };
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    for (base, paths, document) in [
        (
            p.ingest,
            sendmill_ingest::routes()
                .into_iter()
                .map(|(path, _)| path)
                .collect::<Vec<_>>(),
            sendmill_ingest::openapi::document(),
        ),
        (
            p.analytics.unwrap(),
            sendmill_analytics::routes()
                .into_iter()
                .map(|(path, _)| path)
                .collect(),
            sendmill_analytics::openapi::document(),
        ),
    ] {
        let mut routed = Vec::new();
        for path in &paths {
            for method in &methods {
                let response = p
                    .http
                    .request(method.clone(), format!("http://{base}{}", sample(path)))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                assert!(
                    status < 500,
                    "{method} {path} answered {status} without a key"
                );
                if status != 405 {
                    routed.push((method.as_str().to_owned(), path.to_string()));
                }
            }
        }
        routed.sort();
        let documented = sendmill_platform::openapi::operations(document);
        assert_eq!(routed, documented, "routes and the OpenAPI document differ");
        let served: Value = p
            .http
            .get(format!("http://{base}/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(&served, document);
        assert_eq!(served["openapi"], "3.1.0");
    }
    p.stop().await;
}

/// Inputs schemathesis found answered with 503 (PostgreSQL refused them mid-write): now
/// 4xx naming the field, or taken as the caller meant them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_and_repeated_addresses_get_a_clear_answer() {
    let p = TestPipeline::start_stages(&[Stage::Ingest]).await;
    let key = &p.api_key;

    let (status, body, _) = p
        .call(
            key,
            Method::POST,
            "/v1/templates",
            Some(&json!({"name": "nul", "subject": "s", "text": "a\u{0}b"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "text", "{body}");
    let (status, body, _) = p
        .call(key, Method::GET, "/v1/templates?cursor=a%00b", None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "cursor", "{body}");
    let (status, body) = p
        .send(
            &json!({"from": format!("a@{}", p.domain), "to": ["x@ok.test"],
            "subject": "s", "html": "<p>a\u{0}</p>"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "html", "{body}");
    let (status, body, _) = p.call(key, Method::GET, "/v1/templates", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], json!([]), "nothing was written: {body}");

    // The same address twice in one import: the later entry wins, as two calls would.
    let (status, body, _) = p
        .call(
            key,
            Method::POST,
            "/v1/suppressions",
            Some(&json!({"suppressions": [
                {"email": "Twice@ok.test", "reason": "manual"},
                {"email": "twice@ok.test", "reason": "complaint"},
            ]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, entry, _) = p
        .call(key, Method::GET, "/v1/suppressions/twice@ok.test", None)
        .await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["reason"], "complaint", "{entry}");
    p.stop().await;
}

/// DKIM key rotation end to end: `admin rotate-dkim` stages a key under a new selector
/// (the domain API lists its record as `dkim_next`), refuses to activate it while DNS
/// does not publish it, activates it once it does, and the next message is signed under
/// the new selector, verified by dkimpy against the new record only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_dkim_key_is_activated_only_once_published_and_then_signs() {
    let port = dns_port();
    let p = TestPipeline::start_configured(&Stage::ALL, |config| {
        config.ingest.domains.nameservers = vec![format!("127.0.0.1:{port}")];
        config.ingest.domains.dns_timeout = Duration::from_secs(1);
    })
    .await;
    let config = std::env::temp_dir().join(format!("{}rotate.toml", p.config.kafka.topic_prefix));
    std::fs::write(
        &config,
        format!(
            "[postgres]\nurl = {:?}\n[secrets]\nkek_file = {:?}\n[ingest.domains]\n\
             nameservers = [\"127.0.0.1:{port}\"]\ndns_timeout = \"1s\"\n",
            p.config.postgres.url, p.config.secrets.kek_file
        ),
    )
    .unwrap();
    let rotate = |extra: &[&str]| {
        let output = std::process::Command::new(sendmill_tests::sendmill_binary())
            .arg("--config")
            .arg(&config)
            .args(["admin", "rotate-dkim", "--account", &p.account.to_string()])
            .args(["--domain", &p.domain])
            .args(extra)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, said) = rotate(&["--selector", "s2"]);
    assert!(ok, "{said}");
    assert!(
        said.contains(&format!("s2._domainkey.{} TXT", p.domain)),
        "{said}"
    );

    let (status, domain, _) = p
        .call(
            &p.api_key,
            Method::GET,
            &format!("/v1/domains/{}", p.domain),
            None,
        )
        .await;
    assert_eq!(status, 200, "{domain}");
    let next: Vec<Value> = domain["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["purpose"] == "dkim_next")
        .cloned()
        .collect();
    assert_eq!(next.len(), 1, "{domain}");
    assert_eq!(next[0]["name"], format!("s2._domainkey.{}", p.domain));
    assert_eq!(next[0]["required"], false);

    let empty = start_dns_on(port, &[]);
    let (ok, said) = rotate(&["--activate"]);
    assert!(
        !ok && said.contains("does not publish the staged key"),
        "{said}"
    );
    drop(empty);
    let dns = start_dns_on(port, &next);
    let (ok, said) = rotate(&["--activate"]);
    assert!(ok, "{said}");
    drop(dns);

    let (status, body) = p.send(&message_to(&p, json!(["rotated@ok.test"]))).await;
    assert_eq!(status, 202, "{body}");
    let id = sendmill_tests::first_message_id(&body);
    p.wait_for_status(&id, "delivered", Duration::from_secs(60))
        .await;
    let dump = sendmill_tests::dumped_message(&id).expect("delivered to the sink");
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(text.contains("s=s2;"), "{text}");
    let new_record = (
        next[0]["name"].as_str().unwrap().to_owned(),
        next[0]["value"].as_str().unwrap().to_owned(),
    );
    assert!(sendmill_tests::dkim_verifies(&dump, &new_record));
    assert!(!sendmill_tests::dkim_verifies(
        &dump,
        &(new_record.0.clone(), p.dkim_record.1.clone())
    ));
    p.stop().await;
}
