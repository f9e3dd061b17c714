//! The hosted APIs' drop-ins against the official client libraries, unchanged but for
//! host and key: PyPI `sendgrid` and npm `@sendgrid/mail` on `POST /v3/mail/send`, PyPI
//! `boto3` (`sesv2`, AWS Signature V4) on `POST /v2/email/outbound-emails`. Each message
//! is delivered to smtp-sink, its DKIM signature verifies (dkimpy) and its events are in
//! ClickHouse; malformed requests get the hosted API's error shapes. The clients are
//! installed by `deploy/local/install-packages.sh` (pinned); the scripts are in
//! `tests/dropin/`.

use reqwest::Method;
use sendmill_tests::{dkim_verifies, dumped_message, local_dir, repo_root, TestPipeline};
use sendmill_wire::{BatchId, MessageId};
use serde_json::{json, Value};
use std::{path::PathBuf, process::Command, time::Duration};

/// Runs `program script config` and parses the JSON it prints.
async fn run_client(
    program: PathBuf,
    script: &str,
    config: Value,
    env: Vec<(String, String)>,
) -> Value {
    assert!(
        program.exists() || program.components().count() == 1,
        "{} is missing: run deploy/local/install-packages.sh",
        program.display()
    );
    let script = repo_root().join("tests/dropin").join(script);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .arg(&script)
            .arg(config.to_string())
            .envs(env)
            .output()
            .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the client failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn python() -> PathBuf {
    local_dir().join("venv/bin/python")
}

/// The message ids of batch `batch` (its first `count` copies).
fn message_ids(batch: &str, count: u32) -> Vec<String> {
    let batch = BatchId(batch.parse().expect("the answer names a batch id"));
    (0..count)
        .map(|i| MessageId::derive(batch, i).to_string())
        .collect()
}

/// Waits for `id` to be delivered, then checks its DKIM signature and its events in
/// ClickHouse; answers the delivered message's text.
async fn delivered(p: &TestPipeline, id: &str) -> String {
    p.wait_for_status(id, "delivered", Duration::from_secs(90))
        .await;
    let dump = dumped_message(id).unwrap_or_else(|| panic!("{id} reached the sink"));
    assert!(
        dkim_verifies(&dump, &p.dkim_record),
        "dkimpy rejects {}",
        dump.display()
    );
    let types = p.stored_event_types(id).await;
    assert!(
        types.iter().any(|t| t == "accepted") && types.iter().any(|t| t == "delivered"),
        "{id}: {types:?}"
    );
    std::fs::read_to_string(&dump).unwrap()
}

/// The `accepted` event of `id` as ingest wrote it to Kafka.
fn accepted_event(p: &TestPipeline, id: &str) -> sendmill_wire::EventV1 {
    p.events()
        .into_iter()
        .find(|e| {
            e.message_id.to_string() == id && e.event_type == sendmill_wire::EventType::Accepted
        })
        .unwrap_or_else(|| panic!("{id} has an accepted event"))
}

async fn template(p: &TestPipeline, name: &str) -> String {
    let (status, created, _) = p
        .call(
            &p.api_key,
            Method::POST,
            "/v1/templates",
            Some(&json!({
                "name": name,
                "subject": "Welcome {{name}}",
                "html": "<p>Hello {{name}}, your plan is {{plan}}</p>",
                "text": "Hello {{name}}, your plan is {{plan}}"
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sendgrid_python_client_sends_through_sendmill() {
    let p = TestPipeline::start().await;
    let template_id = template(&p, "sg-welcome").await;
    let dynamic = format!("d-{}", template_id.replace('-', ""));
    let to: Vec<String> = (0..4).map(|i| format!("sg{i}@ok.test")).collect();
    let out = run_client(
        python(),
        "sendgrid_python.py",
        json!({
            "host": format!("http://{}", p.ingest),
            "key": p.api_key,
            "from": format!("hello@{}", p.domain),
            "to": to,
            "template_id": dynamic,
        }),
        vec![],
    )
    .await;

    for case in ["plain", "templated", "multi"] {
        assert_eq!(out[case]["status"], 202, "{case}: {out}");
        assert_eq!(
            out[case]["body"], "",
            "{case}: SendGrid answers 202 with no body"
        );
    }
    let plain = &message_ids(out["plain"]["message_id"].as_str().unwrap(), 1)[0];
    let text = delivered(&p, plain).await;
    assert!(
        text.contains("Subject: Plain via the sendgrid client"),
        "{text}"
    );
    // Content is sent as written: braces are not a template.
    assert!(text.contains("{{not a variable}}"), "{text}");
    // Categories are tags and custom args metadata, in every event.
    let accepted = accepted_event(&p, plain);
    assert_eq!(accepted.context.tags, ["dropin"]);
    assert_eq!(accepted.context.metadata["order"], "42");

    let templated = &message_ids(out["templated"]["message_id"].as_str().unwrap(), 1)[0];
    let text = delivered(&p, templated).await;
    assert!(text.contains("Subject: Welcome Ada"), "{text}");
    assert!(text.contains("your plan is pro"), "{text}");

    // The client puts personalizations in its own order: pair them by recipient.
    let mut held = None;
    for id in message_ids(out["multi"]["message_id"].as_str().unwrap(), 2) {
        let text = delivered(&p, &id).await;
        let i = if text.contains("To: sg2@ok.test") {
            0
        } else {
            1
        };
        assert!(text.contains(&format!("To: sg{}@ok.test", i + 2)), "{text}");
        assert!(
            text.contains(&format!("Subject: Report for Person {i}")),
            "{text}"
        );
        assert!(text.contains(&format!("Dear Person {i}")), "{text}");
        assert!(
            text.contains("Content-Disposition: attachment; filename=\"report.pdf\""),
            "{text}"
        );
        assert!(text.contains("Content-ID: <logo>"), "{text}");
        if i == 1 {
            held = Some(id);
        }
    }
    // The second personalization was held until its send_at.
    let (_, timeline) = p.timeline(&held.expect("sg3 got its copy")).await;
    let accepted = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "accepted")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        accepted["reason"],
        sendmill_wire::ACCEPTED_SCHEDULED,
        "{timeline}"
    );

    // A batch's scheduled send, cancelled through the scheduled-sends endpoint.
    assert_eq!(out["batch_valid"], 200, "{out}");
    assert_eq!(out["scheduled"]["status"], 202, "{out}");
    assert_eq!(out["cancel"]["status"], 201, "{out}");
    let scheduled = &message_ids(out["scheduled"]["message_id"].as_str().unwrap(), 1)[0];
    let timeline = p
        .wait_for_status(scheduled, "dropped", Duration::from_secs(60))
        .await;
    let dropped = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "dropped")
        .cloned()
        .unwrap();
    assert_eq!(dropped["reason"], "cancelled", "{timeline}");
    assert!(
        dumped_message(scheduled).is_none(),
        "a cancelled send never reaches the sink"
    );
    assert_eq!(out["after_cancel"]["status"], 400, "{out}");
    assert_eq!(out["pause"]["status"], 400, "{out}");
    assert_eq!(
        out["cancelled_batches"],
        json!([{"batch_id": out["batch"], "status": "cancel"}])
    );

    // SendGrid's error shape, naming the field.
    assert_eq!(out["malformed"]["status"], 400, "{out}");
    let error: Value = serde_json::from_str(out["malformed"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        error["errors"][0]["field"], "personalizations[0].to[0].email",
        "{error}"
    );
    assert_eq!(out["unauthorized"]["status"], 401, "{out}");
    let error: Value = serde_json::from_str(out["unauthorized"]["body"].as_str().unwrap()).unwrap();
    assert!(error["errors"][0]["message"].is_string(), "{error}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sendgrid_node_client_sends_through_sendmill() {
    let p = TestPipeline::start().await;
    let node_modules = local_dir().join("node/node_modules");
    assert!(
        node_modules.join("@sendgrid/mail").exists(),
        "{} has no @sendgrid/mail: run deploy/local/install-packages.sh",
        node_modules.display()
    );
    let out = run_client(
        PathBuf::from("node"),
        "sendgrid_node.js",
        json!({
            "host": format!("http://{}", p.ingest),
            "key": p.api_key,
            "from": format!("hello@{}", p.domain),
            "to": "node@ok.test",
        }),
        vec![("NODE_PATH".into(), node_modules.display().to_string())],
    )
    .await;
    assert_eq!(out["status"], 202, "{out}");
    let id = &message_ids(out["message_id"].as_str().unwrap(), 1)[0];
    let text = delivered(&p, id).await;
    assert!(text.contains("Subject: Sent with @sendgrid/mail"), "{text}");
    assert!(text.contains("Node Drop-in"), "{text}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_sesv2_sends_through_sendmill_with_signature_v4() {
    let p = TestPipeline::start().await;
    template(&p, "ses-welcome").await;
    let (status, key, _) = p
        .call(
            &p.api_key,
            Method::POST,
            "/v1/keys",
            Some(&json!({"name": "ses", "scopes": ["send"], "aws_sigv4": true})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let to: Vec<String> = (0..4).map(|i| format!("ses{i}@ok.test")).collect();
    let out = run_client(
        python(),
        "ses_boto3.py",
        json!({
            "endpoint": format!("http://{}", p.ingest),
            "access_key_id": key["aws_access_key_id"],
            "secret": key["key"],
            "from": format!("hello@{}", p.domain),
            "to": to,
            "template": "ses-welcome",
        }),
        vec![],
    )
    .await;

    // Two To addresses: a copy each, both showing the whole To field, as SES writes it.
    let simple_copies = message_ids(out["simple"]["message_id"].as_str().unwrap(), 2);
    for id in &simple_copies {
        let text = delivered(&p, id).await;
        assert!(text.contains("Subject: Simple via boto3"), "{text}");
        assert!(text.contains("SES Drop-in"), "{text}");
        assert!(
            text.replace("\r\n", "\n")
                .contains("To: ses0@ok.test,\n ses3@ok.test\n"),
            "{text}"
        );
    }
    let simple = &simple_copies[0];
    assert_eq!(accepted_event(&p, simple).context.tags, ["flow:simple"]);

    let raw = &message_ids(out["raw"]["message_id"].as_str().unwrap(), 1)[0];
    let text = delivered(&p, raw).await;
    assert!(
        text.contains("Hello from a raw message sent with boto3."),
        "{text}"
    );

    let templated = &message_ids(out["template"]["message_id"].as_str().unwrap(), 1)[0];
    let text = delivered(&p, templated).await;
    assert!(text.contains("Subject: Welcome Grace"), "{text}");
    assert!(text.contains("your plan is team"), "{text}");

    // SES's error shapes, as boto3 reads them.
    assert_eq!(out["malformed"]["code"], "BadRequestException", "{out}");
    assert_eq!(out["malformed"]["status"], 400, "{out}");
    assert!(
        out["malformed"]["message"]
            .as_str()
            .unwrap()
            .starts_with("FromEmailAddress"),
        "{out}"
    );
    assert_eq!(
        out["missing_template"]["code"], "NotFoundException",
        "{out}"
    );
    assert_eq!(
        out["wrong_secret"]["code"], "SignatureDoesNotMatch",
        "{out}"
    );
    assert_eq!(out["wrong_secret"]["status"], 403, "{out}");

    // A key made without aws_sigv4 cannot sign: it has no sealed copy to verify with.
    let (status, plain_key, _) = p
        .call(
            &p.api_key,
            Method::POST,
            "/v1/keys",
            Some(&json!({"name": "no-sigv4", "scopes": ["send"]})),
        )
        .await;
    assert_eq!(status, 201);
    assert!(plain_key.get("aws_access_key_id").is_none(), "{plain_key}");
    let out = run_client(
        python(),
        "ses_boto3.py",
        json!({
            "endpoint": format!("http://{}", p.ingest),
            "access_key_id": plain_key["id"].as_str().unwrap().replace('-', ""),
            "secret": plain_key["key"],
            "from": format!("hello@{}", p.domain),
            "to": ["w@ok.test", "x@ok.test", "y@ok.test", "z@ok.test"],
            "template": "ses-welcome",
        }),
        vec![],
    )
    .await;
    assert_eq!(
        out["simple"]["code"], "UnrecognizedClientException",
        "{out}"
    );
    p.stop().await;
}

/// A receiver written for SendGrid's Event Webhook (`tests/dropin/sendgrid_webhook_receiver.py`,
/// verifying with `sendgrid`'s `EventWebhook` helper).
struct SendgridReceiver {
    child: std::process::Child,
    out: PathBuf,
}

impl SendgridReceiver {
    fn start(port: u16, public_key: &str) -> Self {
        use std::io::BufRead;
        let out =
            std::env::temp_dir().join(format!("{}.jsonl", sendmill_tests::unique("sg-hook-")));
        let mut child = Command::new(python())
            .arg(repo_root().join("tests/dropin/sendgrid_webhook_receiver.py"))
            .args([
                port.to_string(),
                out.display().to_string(),
                public_key.to_owned(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the receiver starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening", "the receiver did not start");
        Self { child, out }
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for SendgridReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sendgrid_format_webhook_verifies_with_sendgrids_own_helper() {
    let p = TestPipeline::start().await;
    let port = sendmill_tests::free_port();
    let analytics = format!("http://{}", p.analytics.unwrap());
    let (status, hook, _) = sendmill_tests::call(
        &p.http,
        &p.api_key,
        Method::POST,
        &format!("{analytics}/v1/webhooks"),
        Some(&json!({"url": format!("http://127.0.0.1:{port}/sg"), "format": "sendgrid"})),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    assert_eq!(hook["format"], "sendgrid");
    assert!(
        hook.get("secret").is_none(),
        "the private key is never shown: {hook}"
    );
    let public_key = hook["public_key"]
        .as_str()
        .expect("a public key")
        .to_owned();
    let (status, shown, _) = sendmill_tests::call(
        &p.http,
        &p.api_key,
        Method::GET,
        &format!(
            "{analytics}/v1/webhooks/{}/secret",
            hook["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(shown, json!({"public_key": public_key}));
    let receiver = SendgridReceiver::start(port, &public_key);

    let (status, sent) = p
        .send(&sendmill_tests::message_to(&p, json!(["hook@ok.test"])))
        .await;
    assert_eq!(status, 202, "{sent}");
    let id = sendmill_tests::first_message_id(&sent);
    delivered(&p, &id).await;
    let events = sendmill_tests::poll_until(Duration::from_secs(60), || async {
        let requests = receiver.requests();
        let events: Vec<Value> = requests
            .iter()
            .flat_map(|r| r["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["sg_message_id"] == id.as_str())
            .collect();
        events
            .iter()
            .any(|e| e["event"] == "delivered")
            .then_some((requests, events))
    })
    .await;
    let (requests, events) = events.expect("the delivered event reached the receiver");
    for request in &requests {
        assert_eq!(request["verified"], true, "{request}");
        assert_eq!(request["tamper_rejected"], true, "{request}");
    }
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"processed"), "{names:?}");
    for event in &events {
        assert_eq!(event["email"], "hook@ok.test", "{event}");
        assert!(event["timestamp"].is_i64(), "{event}");
        assert!(event["sg_event_id"].is_string(), "{event}");
        assert_eq!(event["category"], json!(["e2e"]), "{event}");
        assert_eq!(
            event["suite"], "tests",
            "custom args at the top level: {event}"
        );
    }
    let delivered = events.iter().find(|e| e["event"] == "delivered").unwrap();
    assert!(
        delivered["response"].as_str().unwrap().starts_with("250"),
        "{delivered}"
    );
    p.stop().await;
}
