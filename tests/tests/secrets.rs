//! No secret in the logs: `sendmill all` as a process of its own, logging at `debug`,
//! sends mail (DKIM-signed with a sealed key), signs webhooks with a sealed secret that
//! an unreachable endpoint keeps failing, and authenticates API keys; then every secret
//! involved is looked for in everything it wrote: the key-encryption key, the DKIM
//! private keys, the webhook secret, the API key and the tracking secret.

use base64::{engine::general_purpose::STANDARD, Engine};
use reqwest::Method;
use sendmill_tests::*;
use serde_json::json;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_logs_no_secret() {
    let p = TestPipeline::start_stages(&[]).await;
    let (ingest_port, analytics_port) = (free_port(), free_port());
    let tracking_secret = "secrets-test-tracking-secret-of-32-bytes-or-more";
    let sections = format!(
        "[ingest]\nlisten = \"127.0.0.1:{ingest_port}\"\nallow_unverified_domains = true\n\
         [render]\nops_listen = \"127.0.0.1:0\"\n\
         [dispatcher]\nnameservers = [\"127.0.0.1:5353\"]\nhelo_name = \"sendmill.test\"\n\
         ops_listen = \"127.0.0.1:0\"\njournal_dir = {journal:?}\n\
         [analytics]\nlisten = \"127.0.0.1:{analytics_port}\"\nbatch_wait = \"100ms\"\n\
         [analytics.webhooks]\nallow_private_destinations = true\nbackoff_initial = \"200ms\"\n\
         backoff_max = \"1s\"\npoll = \"100ms\"\n\
         [tracking]\nsecret = {tracking_secret:?}\n",
        journal = format!("{}-secrets", p.config.dispatcher.journal_dir),
    );
    let log = std::env::temp_dir().join(format!("{}all.log", p.config.kafka.topic_prefix));
    let process = StageProcess::start_logged(
        &p,
        &p.config,
        "all",
        "secrets-all",
        &sections,
        &log,
        "debug",
    );
    wait_for_port("127.0.0.1", ingest_port, "the ingest API");
    wait_for_port("127.0.0.1", analytics_port, "the analytics API");

    let http = reqwest::Client::new();
    let analytics = format!("http://127.0.0.1:{analytics_port}");
    // A webhook whose deliveries fail (nothing listens): its secret signs every attempt.
    let (status, hook, _) = call(
        &http,
        &p.api_key,
        Method::POST,
        &format!("{analytics}/v1/webhooks"),
        Some(&json!({"url": format!("http://127.0.0.1:{}/hook", free_port())})),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    let webhook_secret = hook["secret"].as_str().unwrap().to_owned();
    let hook_id = hook["id"].as_str().unwrap().to_owned();

    let mut body = message_to(&p, json!(["logs@ok.test"]));
    body["track_clicks"] = json!(true);
    body["html"] = json!("<p><a href=\"https://example.test/x\">x</a></p>");
    let (status, sent, _) = call(
        &http,
        &p.api_key,
        Method::POST,
        &format!("http://127.0.0.1:{ingest_port}/v1/messages"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 202, "{sent}");
    let id = first_message_id(&sent);
    let dump = poll_until(LIMIT, || async { dumped_message(&id) })
        .await
        .expect("the message was delivered");
    assert!(
        dkim_verifies(&dump, &p.dkim_record),
        "signed with the sealed key"
    );
    let attempted = poll_until(LIMIT, || async {
        let (_, attempts, _) = call(
            &http,
            &p.api_key,
            Method::GET,
            &format!("{analytics}/v1/webhooks/{hook_id}/attempts"),
            None,
        )
        .await;
        (attempts["data"].as_array().is_some_and(|a| !a.is_empty())).then_some(())
    })
    .await;
    assert!(attempted.is_some(), "the webhook sender tried the endpoint");
    process.kill();

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() > 50 && text.contains("DEBUG"),
        "the process logged little at debug: {} lines",
        text.lines().count()
    );
    let sending = p
        .store()
        .await
        .sending_domain(p.account, &p.domain)
        .await
        .unwrap()
        .unwrap();
    let kek_file = std::fs::read_to_string(&p.config.secrets.kek_file).unwrap();
    let kek = kek_file.trim().split_once(':').unwrap().1.to_owned();
    let mut secrets = vec![
        ("the key-encryption key", kek),
        (
            "the RSA DKIM key",
            STANDARD.encode(&sending.dkim_private_key_pkcs8),
        ),
        ("the webhook secret", webhook_secret.clone()),
        (
            "the webhook key",
            webhook_secret.trim_start_matches("whsec_").to_owned(),
        ),
        ("the API key", p.api_key.clone()),
        ("the tracking secret", tracking_secret.to_owned()),
    ];
    if let Some(ed) = &sending.ed25519 {
        secrets.push(("the Ed25519 DKIM key", STANDARD.encode(&ed.private_pkcs8)));
    }
    for (what, secret) in &secrets {
        // Any 24-character run from its middle gives it away as well as the whole (a
        // DER key's first characters are the same for every key).
        let start = secret.len().saturating_sub(24) / 2;
        let probe = &secret[start..(start + 24).min(secret.len())];
        assert!(
            !text.contains(probe),
            "{what} is in the log {}",
            log.display()
        );
    }
    let _ = std::fs::remove_file(&log);
    p.stop().await;
}
