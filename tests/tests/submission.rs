//! SMTP submission (RFC 6409) with real clients: Python's smtplib (STARTTLS + AUTH PLAIN,
//! implicit TLS), swaks (AUTH LOGIN, pipelining, several recipients, one suppressed) and
//! Debian's postfix relaying through Sendmill as its `relayhost` with SASL. Each message
//! is delivered to the smtp-sink with the submitted body byte for byte after the DKIM
//! signature (dkimpy verifies), and its events are in ClickHouse. Refusals answer the
//! right SMTP code and queue nothing.

use reqwest::Method;
use sendmill::{SendmillConfig, Stage};
use sendmill_tests::*;
use sendmill_wire::{BatchId, Lane, MessageId, RequestedV1};
use serde_json::{json, Value};
use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

const LIMIT: Duration = Duration::from_secs(90);

/// Submission on two ports (STARTTLS and implicit TLS) with the local CA's certificate.
fn with_submission(config: &mut SendmillConfig) {
    let ca = local_dir().join("ca");
    let s = &mut config.ingest.submission;
    s.listen = "127.0.0.1:0".into();
    s.tls_listen = "127.0.0.1:0".into();
    s.certificate = ca.join("submission.pem");
    s.private_key = ca.join("submission.key");
    s.hostname = "submission.sendmill.test".into();
    assert!(
        s.certificate.exists(),
        "{} is missing: run deploy/local/start-services.sh",
        s.certificate.display()
    );
}

async fn start(tweak: impl FnOnce(&mut SendmillConfig)) -> TestPipeline {
    TestPipeline::start_configured(&Stage::ALL, |c| {
        with_submission(c);
        tweak(c);
    })
    .await
}

fn session(
    p: &TestPipeline,
    addr: SocketAddr,
    tls: &str,
    from: &str,
    to: &[&str],
    message: &str,
) -> Value {
    json!({
        "host": addr.ip().to_string(), "port": addr.port(), "tls": tls,
        "user": "apikey", "password": p.api_key,
        "from": from, "to": to, "message": message,
    })
}

/// The batch id in a `250 2.0.0 queued as <batch> (...)` reply.
fn queued_batch(reply: &str) -> BatchId {
    let id = reply
        .split("queued as ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("not a queued reply: {reply}"));
    id.parse()
        .unwrap_or_else(|_| panic!("not a batch id in {reply}"))
}

fn message_id(batch: BatchId, index: u32) -> String {
    MessageId::derive(batch, index).to_string()
}

/// The smtp-sink dump holding every one of `needles` in its first 64 KiB.
fn dump_with(needles: &[&str]) -> Option<PathBuf> {
    sink_dump_files().into_iter().find(|path| {
        std::fs::read(path).is_ok_and(|bytes| {
            let head = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]).into_owned();
            needles.iter().all(|n| head.contains(n))
        })
    })
}

/// The part of a dump after the smtp-sink's own lines: the message as it arrived.
fn delivered_message(dump: &std::path::Path) -> Vec<u8> {
    let bytes = std::fs::read(dump).unwrap();
    let at = memchr_find(&bytes, b"DKIM-Signature:").expect("the message is signed");
    bytes[at..].to_vec()
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A body that breaks if anything re-encodes or re-wraps it: quoted-printable soft
/// breaks, a stuffed dot, 8-bit UTF-8, trailing white space.
fn tricky_body(marker: &str) -> String {
    format!(
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
         Hello {marker}, caf=C3=A9 and a soft=\r\n break.\r\n.leading dot line\r\ntrailing space   \r\n\r\n\
         --b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         <p>Hello {marker}, café</p>\r\n--b1--\r\n"
    )
}

fn tricky_message(from: &str, to: &str, extra_headers: &str, marker: &str) -> (String, String) {
    let body = tricky_body(marker);
    let message = format!(
        "From: Sendmill Test <{from}>\r\nTo: <{to}>\r\nSubject: Submitted {marker}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\
         {extra_headers}\r\n{body}"
    );
    (message, body)
}

/// The checks every delivered submission passes: the body byte for byte after the
/// added fields and the signature, Sendmill's fields and Bcc gone, dkimpy verifies (and
/// rejects the tampered copy).
fn assert_delivered_intact(p: &TestPipeline, dump: &std::path::Path, body: &str) -> String {
    let message = delivered_message(dump);
    let text = String::from_utf8_lossy(&message).into_owned();
    // The sink writes its dumps with LF line ends, and one more LF at the end.
    let body = body.replace("\r\n", "\n");
    assert!(
        message.ends_with(format!("\n\n{body}\n").as_bytes()),
        "the body changed on the way: {text}"
    );
    assert!(!text.to_ascii_lowercase().contains("x-sendmill-"), "{text}");
    assert!(!text.contains("\nBcc:"), "{text}");
    assert!(
        dkim_verifies(dump, &p.dkim_record),
        "dkimpy rejects {}",
        dump.display()
    );
    let tampered = dump.with_extension("tampered");
    std::fs::write(
        &tampered,
        String::from_utf8_lossy(&std::fs::read(dump).unwrap()).replace("caf=C3=A9", "caf=C3=A8"),
    )
    .unwrap();
    assert!(
        !dkim_verifies(&tampered, &p.dkim_record),
        "the check above proves nothing"
    );
    let _ = std::fs::remove_file(tampered);
    text
}

/// Submits `message` from the tenant's `app@` address to `to` in one smtplib session
/// and expects 250: the session's answers and the recipient's message id.
fn submit_one(
    p: &TestPipeline,
    addr: SocketAddr,
    tls: &str,
    to: &str,
    message: &str,
) -> (Value, String) {
    let from = format!("app@{}", p.domain);
    let out = smtplib(session(p, addr, tls, &from, &[to], message));
    assert_eq!(out["data"][0], 250, "{out}");
    let id = message_id(queued_batch(out["data"][1].as_str().unwrap()), 0);
    (out, id)
}

/// Once message `id` is delivered: its first timeline event (`accepted`) and the sink's
/// dump of it (found by the Message-ID Sendmill adds when the client gave none).
async fn delivered(p: &TestPipeline, id: &str) -> (Value, PathBuf) {
    let timeline = p.wait_for_status(id, "delivered", LIMIT).await;
    let dump = dumped_message(id).expect("the message reached the sink with its Message-ID");
    (timeline["events"][0].clone(), dump)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_submits_over_starttls_and_implicit_tls_and_the_body_arrives_unchanged() {
    let p = start(|_| {}).await;
    let from = format!("app@{}", p.domain);
    let marker = unique("m");
    let (message, body) = tricky_message(
        &from,
        "ada@ok.test",
        "Bcc: hidden@ok.test\r\nX-Sendmill-Tags: welcome, smtp\r\nX-Sendmill-Metadata: {\"user\": \"42\"}\r\n",
        &marker,
    );
    let (out, id) = submit_one(
        &p,
        p.submission.unwrap(),
        "starttls",
        "ada@ok.test",
        &message,
    );
    assert_eq!(out["auth"][0], 235, "{out}");
    assert!(
        out["ehlo"][1].as_str().unwrap().contains("PIPELINING"),
        "{out}"
    );

    let (accepted, dump) = delivered(&p, &id).await;
    assert_eq!(accepted["type"], "accepted");
    assert_eq!(
        accepted["stage"], "submission",
        "the timeline names the front door"
    );
    assert_eq!(accepted["tags"], json!(["welcome", "smtp"]));
    let head = assert_delivered_intact(&p, &dump, &body);
    assert!(
        head.contains(&format!("Message-ID: <{id}@{}>", p.domain)),
        "{head}"
    );
    assert!(head.contains("\nDate: "), "{head}");
    assert!(
        !head.contains("List-Unsubscribe"),
        "transactional mail gets no unsubscribe header"
    );

    // Implicit TLS (port 465 style), a campaign: the bulk lane and one-click unsubscribe.
    let (message, body) = tricky_message(
        &from,
        "bob@ok.test",
        "X-Sendmill-Campaign: spring\r\n",
        &marker,
    );
    let (_, id) = submit_one(
        &p,
        p.submission_tls.unwrap(),
        "implicit",
        "bob@ok.test",
        &message,
    );
    let (_, dump) = delivered(&p, &id).await;
    let head = assert_delivered_intact(&p, &dump, &body);
    assert!(
        head.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{head}"
    );
    let bulk = p.read_topic(&p.topics.requested(Lane::Bulk));
    assert_eq!(
        bulk.len(),
        1,
        "the campaign's one record is on the bulk lane"
    );

    // Click tracking asked for by the message: the HTML part's link goes through the
    // tracking endpoint; the text part is kept as it came.
    let (message, _) = tricky_message(
        &from,
        "cy@ok.test",
        "X-Sendmill-Track-Clicks: yes\r\n",
        &marker,
    );
    let message = message.replace(
        "<p>Hello",
        "<p><a href=\"https://shop.test/offer\">offer</a> Hello",
    );
    let (_, id) = submit_one(
        &p,
        p.submission.unwrap(),
        "starttls",
        "cy@ok.test",
        &message,
    );
    let (_, dump) = delivered(&p, &id).await;
    let html = html_part(&dump);
    assert!(
        html.contains(&format!("<a href=\"{TRACKING_BASE}/t/c/")),
        "{html}"
    );
    assert!(!html.contains("https://shop.test/offer"), "{html}");
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(
        text.contains(&format!("Hello {marker}, caf=C3=A9 and a soft=\n break.")),
        "{text}"
    );
    assert!(dkim_verifies(&dump, &p.dkim_record), "{}", dump.display());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_pipelines_auth_login_and_several_recipients_and_the_suppressed_one_is_refused() {
    let p = start(|_| {}).await;
    let (status, _, _) = p
        .call(
            &p.api_key,
            Method::POST,
            "/v1/suppressions",
            Some(&json!({"suppressions": [{"email": "gone@ok.test", "reason": "bounce"}]})),
        )
        .await;
    assert_eq!(status, 200);
    let addr = p.submission.unwrap();
    let marker = unique("swaks");
    let output = Command::new("swaks")
        .args([
            "--server",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args([
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "apikey",
            "--auth-password",
            &p.api_key,
        ])
        .args(["--pipeline", "--ehlo", "client.test"])
        .args(["--from", &format!("app@{}", p.domain)])
        .args(["--to", "one@ok.test,gone@ok.test,two@ok.test"])
        .args(["--header", &format!("Subject: swaks {marker}")])
        .args([
            "--body",
            &format!("Sent by swaks {marker}\n..with a leading dot\n"),
        ])
        .output()
        .expect("swaks is required (deploy/local/install-packages.sh)");
    let transcript = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(transcript.contains("PIPELINING"), "{transcript}");
    assert!(transcript.contains("235 2.7.0"), "AUTH LOGIN: {transcript}");
    assert!(
        transcript.contains("550 5.7.1 <gone@ok.test> is on a suppression list"),
        "{transcript}"
    );
    let queued = transcript
        .lines()
        .find(|l| l.contains("queued as"))
        .unwrap_or_else(|| panic!("no 250 for the message: {transcript}"));
    assert!(queued.contains("(2 recipient(s))"), "{queued}");
    let batch = queued_batch(queued);
    // swaks writes its own Message-ID: the dumps are found by recipient and marker.
    for (index, recipient) in [(0, "one@ok.test"), (1, "two@ok.test")] {
        let id = message_id(batch, index);
        p.wait_for_status(&id, "delivered", LIMIT).await;
        let dump =
            dump_with(&[&marker, &format!("X-Rcpt-Args: <{recipient}>")]).expect("delivered");
        let text = std::fs::read_to_string(&dump).unwrap();
        assert!(
            text.contains(&format!("Sent by swaks {marker}\n..with a leading dot\n")),
            "{text}"
        );
        assert!(dkim_verifies(&dump, &p.dkim_record), "{}", dump.display());
    }
    let records = p.read_topic(&p.topics.requested(Lane::Transactional));
    let recipients: Vec<String> = records
        .iter()
        .map(|r| sendmill_wire::decode::<RequestedV1>(r).unwrap().to.email)
        .collect();
    assert_eq!(recipients.len(), 2, "{recipients:?}");
    assert!(!recipients.contains(&"gone@ok.test".to_owned()));
    p.stop().await;
}

/// A postfix instance of the test's own that relays everything through Sendmill with
/// SASL over STARTTLS; stopped when dropped.
struct RelayingPostfix {
    dir: PathBuf,
    address: &'static str,
}

impl RelayingPostfix {
    fn start(relay: SocketAddr, api_key: &str) -> Self {
        let address = "127.0.0.31";
        // Postfix logs only under /var (maillog_file_prefixes).
        let dir = local_dir().join(unique("postfix-relay"));
        let settings = format!(
            "myhostname = relay.client.test\n\
             relayhost = [{}]:{}\n\
             smtp_sasl_auth_enable = yes\n\
             smtp_sasl_password_maps = static:apikey:{api_key}\n\
             smtp_sasl_security_options = noanonymous\n\
             smtp_sasl_tls_security_options = noanonymous\n\
             smtp_tls_security_level = encrypt\n",
            relay.ip(),
            relay.port()
        );
        let status = Command::new("bash")
            .arg(repo_root().join("deploy/local/postfix-instance.sh"))
            .arg(&dir)
            .arg(address)
            .arg(settings)
            .status()
            .expect("bash");
        assert!(
            status.success(),
            "postfix did not start (see {}/maillog)",
            dir.display()
        );
        RelayingPostfix { dir, address }
    }

    fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for RelayingPostfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.dir)
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_relays_through_sendmill_as_its_relayhost_with_sasl() {
    let p = start(|_| {}).await;
    let postfix = RelayingPostfix::start(p.submission.unwrap(), &p.api_key);
    let from = format!("app@{}", p.domain);
    let marker = unique("pf");
    let own_id = format!("<{marker}@{}>", p.domain);
    let (message, body) = tricky_message(
        &from,
        "carol@ok.test",
        &format!("Message-ID: {own_id}\r\nDate: Tue, 1 Dec 2026 06:00:00 +0000\r\n"),
        &marker,
    );
    // The application hands the message to its local postfix, without AUTH.
    let out = smtplib(json!({
        "host": postfix.address, "port": 25, "tls": "none",
        "from": from, "to": ["carol@ok.test"], "message": message,
    }));
    assert_eq!(out["data"][0], 250, "postfix took the message: {out}");
    let sent = poll_until(LIMIT, || async {
        postfix
            .maillog()
            .lines()
            .find(|l| l.contains("status=sent") && l.contains("queued as"))
            .map(str::to_owned)
    })
    .await
    .unwrap_or_else(|| panic!("postfix did not relay: {}", postfix.maillog()));
    assert!(sent.contains("relay=127.0.0.1"), "{sent}");
    let batch = queued_batch(&sent);
    let id = message_id(batch, 0);
    let timeline = p.wait_for_status(&id, "delivered", LIMIT).await;
    assert_eq!(timeline["events"][0]["stage"], "submission");
    let dump = poll_until(LIMIT, || async {
        dump_with(&[&format!("Message-ID: {own_id}")])
    })
    .await
    .expect("the message reached the sink with its own Message-ID");
    assert_delivered_intact(&p, &dump, &body);
    drop(postfix);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_answer_the_right_codes_and_queue_nothing_and_a_resend_is_not_a_duplicate() {
    let p = start(|c| {
        c.ingest.submission.max_message_bytes = 64 * 1024;
        c.ingest.submission.max_connections_per_account = 2;
        c.ingest.submission.max_recipients = 2;
    })
    .await;
    let store = p.store().await;
    let other = p.tenant("other").await;
    let from = format!("app@{}", p.domain);
    let addr = p.submission.unwrap();
    // One recipient a day: the first accepted message uses it up.
    store
        .set_limits(
            p.account,
            sendmill_store::AccountLimits {
                send_rate_per_sec: None,
                daily_quota: Some(1),
            },
        )
        .await
        .unwrap();
    let ok_message = |marker: &str| {
        tricky_message(
            &from,
            "dan@ok.test",
            &format!("Message-ID: <{marker}@{}>\r\n", p.domain),
            marker,
        )
        .0
    };

    // AUTH in the clear, before STARTTLS: 530, and nothing goes further.
    let mut spec = session(&p, addr, "none", &from, &["dan@ok.test"], &ok_message("a"));
    spec["auth"] = json!("raw-plain");
    let out = smtplib(spec);
    assert_eq!(out["auth"][0], 530, "{out}");
    assert_eq!(out["mail"][0], 530, "MAIL without AUTH: {out}");
    assert!(
        !out["ehlo"][1].as_str().unwrap().contains("AUTH"),
        "AUTH is not offered in the clear: {out}"
    );

    // A wrong key, and a key of the right form but revoked-or-unknown.
    let mut spec = session(
        &p,
        addr,
        "starttls",
        &from,
        &["dan@ok.test"],
        &ok_message("b"),
    );
    spec["password"] = json!(format!("{}x", p.api_key));
    let out = smtplib(spec);
    assert_eq!(out["auth"][0], 535, "{out}");
    assert!(
        out["auth"][1].as_str().unwrap().starts_with("5.7.8"),
        "{out}"
    );

    // Two sessions of the account at once, not three; a slot frees when a session ends.
    let mut spec = session(&p, addr, "starttls", &from, &[], "");
    spec["parallel_auth"] = json!(3);
    let out = smtplib(spec.clone());
    let codes: Vec<u64> = out["auths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a[0].as_u64().unwrap())
        .collect();
    assert_eq!(codes[..2], [235, 235], "{out}");
    // smtplib tries PLAIN, then LOGIN: both refused the same way.
    assert_eq!(codes[2], 454, "{out}");
    assert!(
        out["auths"][2][1]
            .as_str()
            .unwrap()
            .contains("too many connections"),
        "{out}"
    );
    let again = poll_until(LIMIT, || {
        let spec = spec.clone();
        async move {
            let out = smtplib(spec);
            (out["auths"][0][0] == 235).then_some(out)
        }
    })
    .await;
    assert!(again.is_some(), "the closed sessions gave their slots back");

    // A key without the send scope.
    let stats_only = store
        .create_api_key(
            p.account,
            "stats-only",
            &[sendmill_store::Scope::Stats],
            false,
        )
        .await
        .unwrap()
        .plaintext;
    let mut spec = session(
        &p,
        addr,
        "starttls",
        &from,
        &["dan@ok.test"],
        &ok_message("scope"),
    );
    spec["password"] = json!(stats_only);
    let out = smtplib(spec);
    assert_eq!(out["auth"][0], 535, "{out}");
    assert_eq!(out["mail"][0], 530, "{out}");

    // More recipients than max_recipients: the third is refused for now (452), the
    // others go on; and a second From hidden by a space before its colon is refused.
    let hidden = ok_message("hidden").replace("Subject:", "From : ceo@victim.test\r\nSubject:");
    let out = smtplib(session(
        &p,
        addr,
        "starttls",
        &from,
        &["f1@ok.test", "f2@ok.test", "f3@ok.test"],
        &hidden,
    ));
    let rcpt: Vec<u64> = out["rcpt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_u64().unwrap())
        .collect();
    assert_eq!(rcpt, [250, 250, 452], "{out}");
    assert!(
        out["rcpt"][2][1].as_str().unwrap().starts_with("4.5.3"),
        "{out}"
    );
    assert_eq!(out["data"][0], 554, "{out}");
    assert!(
        out["data"][1]
            .as_str()
            .unwrap()
            .contains("malformed field name"),
        "{out}"
    );

    // From on another account's domain.
    let foreign = format!("app@{}", other.domain);
    let out = smtplib(session(
        &p,
        addr,
        "starttls",
        &foreign,
        &["dan@ok.test"],
        &tricky_message(&foreign, "dan@ok.test", "", "c").0,
    ));
    assert_eq!(out["data"][0], 550, "{out}");
    assert!(
        out["data"][1].as_str().unwrap().contains(&other.domain),
        "{out}"
    );

    // Over the size limit: announced with SIZE, and sent anyway.
    let big = tricky_message(&from, "dan@ok.test", "", &"x".repeat(80 * 1024)).0;
    let mut spec = session(&p, addr, "starttls", &from, &["dan@ok.test"], &big);
    spec["mail_options"] = json!([format!("SIZE={}", big.len())]);
    let out = smtplib(spec);
    assert_eq!(out["mail"][0], 552, "{out}");
    let out = smtplib(session(&p, addr, "starttls", &from, &["dan@ok.test"], &big));
    assert_eq!(out["data"][0], 552, "{out}");
    assert!(
        out["data"][1].as_str().unwrap().starts_with("5.3.4"),
        "{out}"
    );

    // A message without From.
    let out = smtplib(session(
        &p,
        addr,
        "starttls",
        &from,
        &["dan@ok.test"],
        "Subject: no sender\r\n\r\nbody\r\n",
    ));
    assert_eq!(out["data"][0], 554, "{out}");
    assert!(out["data"][1].as_str().unwrap().contains("From"), "{out}");

    // One message goes through; sent again as after a lost reply, it is not queued twice.
    let message = ok_message("resent");
    let out = smtplib(session(
        &p,
        addr,
        "starttls",
        &from,
        &["dan@ok.test"],
        &message,
    ));
    assert_eq!(out["data"][0], 250, "{out}");
    let batch = queued_batch(out["data"][1].as_str().unwrap());
    let again = smtplib(session(
        &p,
        addr,
        "starttls",
        &from,
        &["dan@ok.test"],
        &message,
    ));
    assert_eq!(again["data"][0], 250, "{again}");
    assert!(
        again["data"][1]
            .as_str()
            .unwrap()
            .contains(&format!("already queued as {batch}")),
        "{again}"
    );

    // Over the daily quota: 452 4.7.1, temporary (the quota resets).
    let out = smtplib(session(
        &p,
        addr,
        "starttls",
        &from,
        &["erin@ok.test"],
        &ok_message("quota"),
    ));
    assert_eq!(out["data"][0], 452, "{out}");
    assert!(out["data"][1].as_str().unwrap().contains("quota"), "{out}");

    // Only the one accepted message was queued, on either lane.
    let records = p.read_topic(&p.topics.requested(Lane::Transactional));
    assert_eq!(
        records.len(),
        1,
        "refused and resent messages are not queued"
    );
    assert!(p.read_topic(&p.topics.requested(Lane::Bulk)).is_empty());
    let record: RequestedV1 = sendmill_wire::decode(&records[0]).unwrap();
    assert_eq!(record.message_id.to_string(), message_id(batch, 0));
    p.stop().await;
}
