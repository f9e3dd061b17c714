//! The send API against real PostgreSQL and Kafka: bad input gets a 4xx JSON error naming
//! the field and produces nothing; good input is accepted once per recipient.

use sendmill::Stage;
use sendmill_tests::*;
use sendmill_wire::{decode, EventType, EventV1, Lane, RequestedV1};
use serde_json::{json, Value};

/// Records on the requested and events topics.
fn produced(p: &TestPipeline) -> usize {
    Lane::ALL
        .iter()
        .map(|&l| p.read_topic(&p.topics.requested(l)).len())
        .sum::<usize>()
        + p.read_topic(&p.topics.events()).len()
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::{engine::general_purpose::STANDARD, Engine};
    STANDARD.encode(bytes)
}

fn with(mut body: Value, path: &[&str], value: Value) -> Value {
    let mut target = &mut body;
    for key in &path[..path.len() - 1] {
        target = &mut target[*key];
    }
    target[path[path.len() - 1]] = value;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_rejected_naming_the_field_and_produce_nothing() {
    let p = TestPipeline::start_stages(&[Stage::Ingest]).await;
    let good = message_to(&p, json!(["ada@ok.test"]));
    let other_domain = format!("x@other-{}", p.domain);
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            with(good.clone(), &["to"], json!(["not-an-address"])),
            400,
            "to[0].email",
        ),
        (
            with(
                good.clone(),
                &["to"],
                json!([{"email": "ada@ok.test", "name": "A\r\nBcc: eve@evil.test"}]),
            ),
            400,
            "to[0].name",
        ),
        (with(good.clone(), &["to"], json!([])), 400, "to"),
        (with(good.clone(), &["from"], json!("nobody")), 400, "from"),
        (
            with(
                good.clone(),
                &["subject"],
                json!("Hi\r\nBcc: eve@evil.test"),
            ),
            400,
            "subject",
        ),
        (
            with(
                good.clone(),
                &["headers"],
                json!({"X-Custom": "a\r\nBcc: eve@evil.test"}),
            ),
            400,
            "headers.X-Custom",
        ),
        (
            with(good.clone(), &["headers"], json!({"Bcc": "eve@evil.test"})),
            400,
            "headers.Bcc",
        ),
        (
            with(good.clone(), &["headers"], json!({"X Bad": "v"})),
            400,
            "headers.X Bad",
        ),
        (
            with(good.clone(), &["tags"], json!(["ok", "no spaces"])),
            400,
            "tags[1]",
        ),
        (with(good.clone(), &["txet"], json!("typo")), 400, "txet"),
        (
            with(
                good.clone(),
                &["to"],
                json!([{"email": "ada@ok.test", "nmae": "Ada"}]),
            ),
            400,
            "to[0].nmae",
        ),
        (with(good.clone(), &["to"], json!("ada@ok.test")), 400, "to"),
        (
            with(
                with(good.clone(), &["html"], Value::Null),
                &["text"],
                Value::Null,
            ),
            400,
            "html",
        ),
        (
            with(good.clone(), &["from"], json!(other_domain)),
            422,
            "from",
        ),
        // The developer API's fields.
        (
            with(
                good.clone(),
                &["to"],
                json!([{"email": "ada@ok.test", "cc": ["nope"]}]),
            ),
            400,
            "to[0].cc[0].email",
        ),
        (
            with(
                good.clone(),
                &["to"],
                json!([{"email": "ada@ok.test", "bcc": [{"email": "b@ok.test", "nmae": "B"}]}]),
            ),
            400,
            "to[0].bcc[0].nmae",
        ),
        (
            with(
                good.clone(),
                &["to"],
                json!([{"email": "ada@ok.test", "headers": {"X-A": "1\r\nBcc: eve@evil.test"}}]),
            ),
            400,
            "to[0].headers.X-A",
        ),
        (
            with(
                good.clone(),
                &["to"],
                json!([{"email": "ada@ok.test", "cc": vec!["c@ok.test"; 1000]}]),
            ),
            400,
            "to",
        ),
        (with(good.clone(), &["send_at"], json!(12)), 400, "send_at"),
        (
            with(good.clone(), &["send_at"], json!("soon")),
            400,
            "send_at",
        ),
        (
            with(good.clone(), &["send_at"], json!("2099-01-01T00:00:00Z")),
            400,
            "send_at",
        ),
        (
            with(good.clone(), &["sandbox"], json!("yes")),
            400,
            "sandbox",
        ),
        (
            with(
                good.clone(),
                &["template"],
                json!({"id": "00000000-0000-7000-8000-000000000000"}),
            ),
            400,
            "template",
        ),
        (
            with(good.clone(), &["template"], json!({"id": "not-a-uuid"})),
            400,
            "template.id",
        ),
        // Unicode edge cases: a domain that is no valid IDN, zero-width characters in an
        // address, direction overrides and NUL in names, a subject past its length in
        // multi-byte characters. (UTF-8 local parts and IDN domains are valid:
        // tests/international.rs.)
        (
            with(good.clone(), &["to"], json!(["ädä@bü_cher.test"])),
            400,
            "to[0].email",
        ),
        (
            with(good.clone(), &["to"], json!(["a\u{200b}b@ok.test"])),
            400,
            "to[0].email",
        ),
        (
            with(
                good.clone(),
                &["to"],
                json!([{"email": "ada@ok.test", "name": "A\u{0}B"}]),
            ),
            400,
            "to[0].name",
        ),
        (
            with(good.clone(), &["subject"], json!("é".repeat(2001))),
            400,
            "subject",
        ),
    ];
    for (body, status, field) in cases {
        let (got, error) = p.send(&body).await;
        assert_eq!(got, status, "{body} → {error}");
        assert_eq!(error["error"]["field"], field, "{body} → {error}");
        assert!(error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(error["error"]["code"].is_string());
    }

    let (status, error) = p.send_raw("{\"from\": ".into(), "application/json").await;
    assert_eq!(status, 400, "{error}");
    // A lone surrogate is not Unicode: refused by the JSON parser, not passed on.
    let lone = good
        .to_string()
        .replace("\"Hello {{name}}\"", "\"Hi \\ud800\"");
    assert!(lone.contains("ud800"));
    let (status, error) = p.send_raw(lone, "application/json").await;
    assert_eq!(status, 400, "{error}");
    let bad_key = p
        .http
        .post(format!("http://{}/v1/messages", p.ingest))
        .bearer_auth(&p.api_key)
        .header("idempotency-key", "")
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_key.status(), 400);
    let (status, error) = p.send_raw(good.to_string(), "text/plain").await;
    assert_eq!(status, 415, "{error}");
    let huge = with(good.clone(), &["html"], json!("x".repeat(11 * 1024 * 1024)));
    let (status, error) = p.send(&huge).await;
    assert_eq!(status, 413, "{error}");
    // Attachments over the per-message limit (5 MiB decoded), within the body limit.
    let big = base64_of(&vec![7u8; 6 * 1024 * 1024]);
    let too_many_bytes = with(
        good.clone(),
        &["attachments"],
        json!([{"filename": "big.bin", "content_type": "application/octet-stream", "content": big}]),
    );
    let (status, error) = p.send(&too_many_bytes).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["field"], "attachments");

    let unauthenticated = p
        .http
        .post(format!("http://{}/v1/messages", p.ingest))
        .bearer_auth("sm_not-a-real-key")
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let body: Value = unauthenticated.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    assert_eq!(produced(&p), 0, "a rejected request produced records");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_request_produces_one_record_and_one_accepted_event_per_recipient() {
    let p = TestPipeline::start_stages(&[Stage::Ingest]).await;
    let body = with(
        message_to(
            &p,
            json!([{"email": "ada@ok.test", "data": {"name": "Ada"}, "metadata": {"user": "1"}}, "Bob <bob@ok.test>"]),
        ),
        &["campaign_id"],
        json!("spring-sale"),
    );
    let (status, response) = p.send(&body).await;
    assert_eq!(status, 202, "{response}");
    let ids = message_ids(&response);
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);

    // A campaign travels in the bulk lane.
    assert!(p
        .read_topic(&p.topics.requested(Lane::Transactional))
        .is_empty());
    let requested: Vec<RequestedV1> = p
        .read_topic(&p.topics.requested(Lane::Bulk))
        .iter()
        .map(|b| decode(b).unwrap())
        .collect();
    assert_eq!(requested.len(), 2);
    let ada = requested
        .iter()
        .find(|r| r.to.email == "ada@ok.test")
        .unwrap();
    assert_eq!(ada.message_id.to_string(), ids[0]);
    assert_eq!(ada.account_id, p.account);
    assert_eq!(ada.data["name"], "Ada");
    assert_eq!(ada.context.metadata["user"], "1");
    assert_eq!(ada.context.metadata["suite"], "tests");
    assert_eq!(ada.context.campaign_id.as_deref(), Some("spring-sale"));
    let bob = requested
        .iter()
        .find(|r| r.to.email == "bob@ok.test")
        .unwrap();
    assert_eq!(bob.to.name.as_deref(), Some("Bob"));

    let events: Vec<EventV1> = p
        .read_topic(&p.topics.events())
        .iter()
        .map(|b| decode(b).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.event_type == EventType::Accepted));
    p.stop().await;
}
