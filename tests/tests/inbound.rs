//! Mail that comes back, end to end on the real services: a message is sent through the
//! pipeline and delivered to the smtp-sink; what a receiver would send back (a DSN to
//! the signed VERP envelope sender, an ARF report to the feedback-loop mailbox, a mail
//! client's unsubscribe to the signed `mailto:`) is sent to the inbound SMTP server by
//! swaks and Python's smtplib, and ends as the event, suppression and pause it means.
//! Relaying, forgeries, a message past the size limit, a flood of connections and a
//! SIGKILL after the 250 are tried too.

use sendmill::{SendmillConfig, Stage};
use sendmill_tenancy::pauses::{self, Target};
use sendmill_tests::*;
use serde_json::{json, Value};
use std::{net::SocketAddr, process::Command, time::Duration};

const LIMIT: Duration = Duration::from_secs(120);

/// The inbound server on a port of its own, with STARTTLS (the local CA's certificate).
fn with_inbound(config: &mut SendmillConfig) {
    let ca = local_dir().join("ca");
    let i = &mut config.inbound;
    i.listen = "127.0.0.1:0".into();
    i.certificate = ca.join("inbound.pem");
    i.private_key = ca.join("inbound.key");
    i.hostname = "inbound.sendmill.test".into();
    assert!(
        i.certificate.exists(),
        "{} is missing: run deploy/local/start-services.sh",
        i.certificate.display()
    );
}

async fn start(tweak: impl FnOnce(&mut SendmillConfig)) -> TestPipeline {
    TestPipeline::start_configured(&Stage::ALL, |c| {
        with_inbound(c);
        tweak(c);
    })
    .await
}

fn inbound_addr(p: &TestPipeline) -> SocketAddr {
    p.inbound.expect("the inbound server listens")
}

/// What the smtp-sink saw of a delivered message: the envelope sender (`X-Mail-Args`)
/// and the `List-Unsubscribe` field, from its dump.
struct Delivered {
    message_id: String,
    envelope_from: String,
    list_unsubscribe: Option<String>,
}

/// Sends one message to `to` (one-click unsubscribe on), waits until it is delivered
/// and its dump is written.
async fn deliver(p: &TestPipeline, key: &str, domain: &str, to: &str) -> Delivered {
    let mut body = message_to(p, json!([to]));
    body["from"] = json!(format!("Shop <news@{domain}>"));
    body["list_unsubscribe"] = json!(true);
    let (status, answer) = p.send_as(key, &body).await;
    assert_eq!(status, 202, "{answer}");
    let id = first_message_id(&answer);
    let headers = poll_until(LIMIT, || {
        let (id, domain) = (id.clone(), domain.to_owned());
        async move {
            dumps_for_domain(&domain)
                .remove(&id)
                .map(|mut d| d.remove(0))
        }
    })
    .await
    .unwrap_or_else(|| panic!("{id} was never delivered to the sink"));
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    // The dump's header section (the sink's fields, then the message's), folded lines
    // joined (List-Unsubscribe is folded).
    let dump = dumped_message(&id).expect("the dump");
    let text = std::fs::read_to_string(dump).unwrap();
    let unfolded = text
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .replace("\n ", " ")
        .replace("\n\t", " ");
    let list_unsubscribe = unfolded
        .lines()
        .find_map(|l| l.strip_prefix("List-Unsubscribe: "))
        .map(str::to_owned);
    let mail_args = get("X-Mail-Args").expect("the dump names the envelope sender");
    let envelope_from = mail_args
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(address, _)| address.to_owned())
        .unwrap_or_else(|| mail_args.split_whitespace().next().unwrap().to_owned());
    Delivered {
        message_id: id,
        envelope_from,
        list_unsubscribe,
    }
}

/// The analytics timeline of a message once it has an event of `event_type` from the
/// inbound stage.
async fn timeline_with(p: &TestPipeline, key: &str, id: &str, event_type: &str) -> Value {
    poll_until(LIMIT, || async {
        let (status, body) = p
            .call_analytics(key, reqwest::Method::GET, &format!("/v1/messages/{id}"))
            .await;
        (status == 200
            && body["events"]
                .as_array()?
                .iter()
                .any(|e| e["type"] == event_type && e["stage"] == "inbound"))
        .then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("no {event_type} event from inbound for {id}"))
}

fn event<'a>(timeline: &'a Value, event_type: &str) -> &'a Value {
    timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == event_type)
        .unwrap_or_else(|| panic!("no {event_type} in {timeline}"))
}

async fn suppression(p: &TestPipeline, key: &str, email: &str) -> Option<Value> {
    let (status, body, _) = p
        .call(
            key,
            reqwest::Method::GET,
            &format!("/v1/suppressions/{email}"),
            None,
        )
        .await;
    (status == 200).then_some(body)
}

/// A Postfix delivery status notification (RFC 3464, 550 5.1.1) for `recipient`, to
/// `to`, returning the original (without a Message-ID): the bench's.
fn dsn(to: &str, recipient: &str, domain: &str) -> String {
    sendmill::bench::inbound::dsn(to, recipient, domain, None, 0)
}

/// An RFC 5965 feedback report about the message whose headers are `original`.
fn arf(original: &str) -> String {
    format!(
        "From: feedback@fbl.remote.test\r\nTo: fbl@example.test\r\nSubject: Feedback report\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"f1\"\r\n\r\n\
         --f1\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n\
         --f1\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\
         User-Agent: RemoteFBL/1.0\r\nVersion: 1\r\nReporting-MTA: dns; fbl.remote.test\r\n\r\n\
         --f1\r\nContent-Type: message/rfc822\r\n\r\n{original}\r\nbody\r\n--f1--\r\n"
    )
}

/// One smtplib session (on a blocking thread: the server runs on this runtime).
async fn send(addr: SocketAddr, tls: &str, from: &str, to: &[&str], message: &str) -> Value {
    let spec = json!({
        "host": addr.ip().to_string(), "port": addr.port(), "tls": tls,
        "from": from, "to": to, "message": message,
    });
    tokio::task::spawn_blocking(move || smtplib(spec))
        .await
        .expect("smtplib session")
}

fn assert_queued(answer: &Value) {
    assert_eq!(answer["data"][0], 250, "{answer}");
    assert!(
        answer["data"][1].as_str().unwrap().contains("queued as"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_dsn_from_swaks_bounces_the_delivered_message_and_suppresses_its_recipient() {
    let p = start(|_| {}).await;
    let recipient = format!("{}@ok.test", unique("gone"));
    let delivered = deliver(&p, &p.api_key, &p.domain, &recipient).await;
    // Render signed the envelope sender: b+<message id>-<tag>@bounces.<domain>.
    let verp = &delivered.envelope_from;
    let hex = delivered.message_id.replace('-', "");
    assert!(
        verp.starts_with(&format!("b+{hex}-")) && verp.ends_with(&format!("@bounces.{}", p.domain)),
        "{verp}"
    );

    let path = std::env::temp_dir().join(format!("{}.dsn", unique("dsn")));
    std::fs::write(&path, dsn(verp, &recipient, &p.domain)).unwrap();
    let addr = inbound_addr(&p);
    let mut swaks = Command::new("swaks");
    swaks
        .args([
            "--server",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args(["--ehlo", "mx.remote.test", "--tls", "--pipeline"])
        .args(["--from", "<>", "--to", verp])
        .args(["--data", path.to_str().unwrap()]);
    let output = tokio::task::spawn_blocking(move || swaks.output())
        .await
        .unwrap()
        .expect("swaks is required (deploy/local/install-packages.sh)");
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{transcript}");
    assert!(
        transcript.contains("<~  250 2.0.0 queued as"),
        "{transcript}"
    );
    assert!(transcript.contains("MAIL FROM:<>"), "{transcript}");

    let timeline = timeline_with(&p, &p.api_key, &delivered.message_id, "async_bounced").await;
    // The terminal event stays `delivered`; the bounce is a further event after it.
    assert_eq!(timeline["status"], "delivered", "{timeline}");
    let bounce = event(&timeline, "async_bounced");
    assert!(
        bounce["at_ms"].as_u64() >= event(&timeline, "delivered")["at_ms"].as_u64(),
        "{timeline}"
    );
    assert_eq!(bounce["recipient"], recipient.as_str());
    assert_eq!(bounce["smtp_code"], 550);
    assert_eq!(bounce["smtp_enhanced"], "5.1.1");
    assert_eq!(bounce["bounce_category"], "bad_mailbox");
    assert_eq!(bounce["mx_host"], "mailstore.remote.test");
    assert!(
        bounce["smtp_reply"]
            .as_str()
            .unwrap()
            .contains("User unknown"),
        "{bounce}"
    );
    let suppressed = suppression(&p, &p.api_key, &recipient)
        .await
        .expect("the recipient is suppressed");
    assert_eq!(suppressed["reason"], "bounce", "{suppressed}");
    let metrics = p.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sendmill_inbound_processed_total{")
                && [
                    "kind=\"failed\"",
                    "category=\"bad_mailbox\"",
                    "matched=\"true\""
                ]
                .iter()
                .all(|label| l.contains(label))),
        "{metrics}"
    );
    std::fs::remove_file(path).ok();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arf_report_is_a_complaint_and_the_reputation_monitor_pauses_the_account() {
    let p = start(|c| {
        let r = &mut c.analytics.reputation;
        r.min_volume = 3;
        r.account_complaint_rate = 0.2;
        r.ip_complaint_rate = 1.0;
        r.ip_bounce_rate = 1.0;
    })
    .await;
    let mut sent = Vec::new();
    for _ in 0..3 {
        let to = format!("{}@ok.test", unique("fan"));
        sent.push((deliver(&p, &p.api_key, &p.domain, &to).await, to));
    }
    let (reported, recipient) = &sent[0];
    // The complainant is a contact on a list: the complaint flips both.
    let analytics = format!("http://{}", p.analytics.unwrap());
    let (status, list, _) = call(
        &p.http,
        &p.api_key,
        reqwest::Method::POST,
        &format!("{analytics}/v1/lists"),
        Some(&json!({"name": "Fans", "opt_in": "single"})),
    )
    .await;
    assert_eq!(status, 201, "{list}");
    let (status, contact, _) = call(
        &p.http,
        &p.api_key,
        reqwest::Method::POST,
        &format!("{analytics}/v1/contacts"),
        Some(&json!({"email": recipient, "lists": [list["id"]]})),
    )
    .await;
    assert_eq!(status, 201, "{contact}");
    // The feedback loop returns the message with the recipient redacted: it is matched
    // by the signed Return-Path in the returned copy, sent to the FBL mailbox.
    let original = format!(
        "Return-Path: <{}>\r\nFrom: Shop <news@{}>\r\nTo: redacted@fbl.remote.test\r\nSubject: Hello\r\n",
        reported.envelope_from, p.domain
    );
    let fbl = format!("fbl@bounces.{}", p.domain);
    // Sent twice (a feedback loop repeating itself, or a replay): one complaint.
    for _ in 0..2 {
        let answer = send(
            inbound_addr(&p),
            "starttls",
            "feedback@fbl.remote.test",
            &[&fbl],
            &arf(&original),
        )
        .await;
        assert_queued(&answer);
    }
    // Another report names its message only by the returned Message-ID: found among
    // the messages of the account that owns the FBL mailbox's domain.
    let (second, second_recipient) = &sent[1];
    let by_message_id = format!(
        "From: Shop <news@{d}>\r\nTo: redacted@fbl.remote.test\r\nSubject: Hello\r\nMessage-ID: <{id}@{d}>\r\n",
        d = p.domain,
        id = second.message_id
    );
    assert_queued(
        &send(
            inbound_addr(&p),
            "none",
            "feedback@fbl.remote.test",
            &[&fbl],
            &arf(&by_message_id),
        )
        .await,
    );

    let timeline = timeline_with(&p, &p.api_key, &reported.message_id, "complained").await;
    assert_eq!(timeline["status"], "delivered", "{timeline}");
    let complaint = event(&timeline, "complained");
    assert_eq!(complaint["recipient"], recipient.as_str());
    assert!(
        complaint["reason"].as_str().unwrap().contains("abuse"),
        "{complaint}"
    );
    let suppressed = suppression(&p, &p.api_key, recipient)
        .await
        .expect("the complainant is suppressed");
    assert_eq!(suppressed["reason"], "complaint");
    let contact_url = format!(
        "{analytics}/v1/contacts/{}",
        contact["id"].as_str().unwrap()
    );
    let (_, contact, _) = call(
        &p.http,
        &p.api_key,
        reqwest::Method::GET,
        &contact_url,
        None,
    )
    .await;
    assert_eq!(contact["status"], "complained", "{contact}");
    assert_eq!(contact["lists"][0]["state"], "unsubscribed", "{contact}");
    let timeline = timeline_with(&p, &p.api_key, &second.message_id, "complained").await;
    assert_eq!(
        event(&timeline, "complained")["recipient"],
        second_recipient.as_str()
    );

    // 2 complaints in 3 delivered is past the account's 20 %: the monitor pauses it.
    let mut redis = p.redis().await;
    let prefix = p.config.redis.key_prefix.clone();
    let member = Target::Account(p.account).member();
    let paused = poll_until(LIMIT, || {
        let (mut redis, prefix, member) = (redis.clone(), prefix.clone(), member.clone());
        async move {
            let list = pauses::list(&mut redis, &prefix).await.unwrap();
            list.get(&member).cloned()
        }
    })
    .await
    .expect("the reputation monitor paused the account");
    assert!(paused.contains("complaint_rate"), "{paused}");
    // The repeated report was counted once: the account's window holds 2 complaints
    // once both reports are in (never 3).
    let key = pauses::reputation_key(&prefix, &Target::Account(p.account));
    let complaints = poll_until(LIMIT, || {
        let (mut redis, key) = (redis.clone(), key.clone());
        async move {
            let counts: std::collections::HashMap<String, u64> =
                redis::AsyncCommands::hgetall(&mut redis, &key)
                    .await
                    .unwrap();
            let c: u64 = counts
                .iter()
                .filter(|(field, _)| field.ends_with(":c"))
                .map(|(_, n)| n)
                .sum();
            (c >= 2).then_some(c)
        }
    })
    .await
    .expect("both complaints are counted");
    assert_eq!(complaints, 2);
    pauses::resume(&mut redis, &prefix, &Target::Account(p.account))
        .await
        .unwrap();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_clients_unsubscribe_to_the_mailto_address_unsubscribes_the_recipient() {
    let p = start(|_| {}).await;
    let recipient = format!("{}@ok.test", unique("leaving"));
    let delivered = deliver(&p, &p.api_key, &p.domain, &recipient).await;
    let field = delivered
        .list_unsubscribe
        .expect("the message has List-Unsubscribe");
    let mailto = field
        .split("<mailto:")
        .nth(1)
        .and_then(|m| m.split_once('?'))
        .map(|(address, _)| address.to_owned())
        .unwrap_or_else(|| panic!("no mailto in {field}"));
    assert!(mailto.starts_with("unsubscribe+"), "{mailto}");

    let message = format!(
        "From: {recipient}\r\nTo: {mailto}\r\nSubject: unsubscribe\r\n\r\nThis message was sent automatically by Mail to unsubscribe.\r\n"
    );
    assert_queued(&send(inbound_addr(&p), "none", &recipient, &[&mailto], &message).await);

    let timeline = timeline_with(&p, &p.api_key, &delivered.message_id, "unsubscribed").await;
    assert_eq!(
        event(&timeline, "unsubscribed")["recipient"],
        recipient.as_str()
    );
    let suppressed = suppression(&p, &p.api_key, &recipient)
        .await
        .expect("the recipient is suppressed");
    assert_eq!(suppressed["reason"], "unsubscribe");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaying_forgeries_oversize_and_floods_are_refused_or_kept_and_change_nothing() {
    let p = start(|c| c.inbound.max_connections_per_ip = 3).await;
    let addr = inbound_addr(&p);
    let fbl = format!("fbl@bounces.{}", p.domain);

    // Not a return-path domain of any account: never an open relay.
    let relay = send(
        addr,
        "none",
        "spammer@remote.test",
        &["victim@gmail.test"],
        "Subject: x\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(relay["rcpt"][0][0], 550, "{relay}");
    assert!(
        relay["rcpt"][0][1].as_str().unwrap().starts_with("5.7.1"),
        "{relay}"
    );
    assert!(relay.get("data").is_none(), "{relay}");
    let sending_domain = send(addr, "none", "", &[&format!("b+x@{}", p.domain)], "x").await;
    assert_eq!(sending_domain["rcpt"][0][0], 550, "{sending_domain}");

    // 50 MB: read and thrown away, then 552.
    let line = format!("{}\r\n", "x".repeat(998));
    let big = format!(
        "Subject: big\r\n\r\n{}",
        line.repeat(50 * 1024 * 1024 / line.len())
    );
    let oversize = send(addr, "none", "", &[&fbl], &big).await;
    assert_eq!(oversize["data"][0], 552, "{}", oversize["data"]);

    let recipient = format!("{}@ok.test", unique("target"));
    let delivered = deliver(&p, &p.api_key, &p.domain, &recipient).await;
    // A DSN to a VERP address whose tag was made up: taken (250) but trusted for
    // nothing, so it is kept for a person.
    let hex = delivered.message_id.replace('-', "");
    let forged = format!("b+{hex}-0123456789abcdef@bounces.{}", p.domain);
    assert_queued(
        &send(
            addr,
            "none",
            "",
            &[&forged],
            &dsn(&forged, &recipient, &p.domain),
        )
        .await,
    );

    // Another account's message named by its Message-ID in an ARF report sent to this
    // account's FBL mailbox: looked up only among this account's messages, so kept.
    let other = p.tenant("other").await;
    let theirs = format!("{}@ok.test", unique("theirs"));
    let their_message = deliver(&p, &other.api_key, &other.domain, &theirs).await;
    let original = format!(
        "From: Shop <news@{d}>\r\nTo: {theirs}\r\nSubject: Hello\r\nMessage-ID: <{id}@{d}>\r\n",
        d = other.domain,
        id = their_message.message_id
    );
    assert_queued(&send(addr, "none", "fbl@remote.test", &[&fbl], &arf(&original)).await);

    // A subject with a NUL (PostgreSQL text takes none) is kept all the same.
    assert_queued(
        &send(
            addr,
            "none",
            "someone@remote.test",
            &[&fbl],
            "Subject: nul\u{0}here\r\n\r\nHello there.\r\n",
        )
        .await,
    );

    // All three end in this account's kept returns, with why.
    let kept = poll_until(LIMIT, || async {
        let (status, body) = p
            .call_analytics(&p.api_key, reqwest::Method::GET, "/v1/returns")
            .await;
        assert_eq!(status, 200, "{body}");
        let data = body["data"].as_array()?.clone();
        (data.len() >= 3).then_some(data)
    })
    .await
    .expect("the forged DSN, the foreign ARF and the NUL subject are kept");
    assert!(kept.iter().any(|r| r["subject"] == "nulhere"), "{kept:?}");
    assert!(
        kept.iter().any(|r| r["rcpt_to"] == forged.to_lowercase()
            && r["reason"].as_str().unwrap().contains("no message named")),
        "{kept:?}"
    );
    let foreign = kept
        .iter()
        .find(|r| r["rcpt_to"] == fbl && r["mail_from"] == "fbl@remote.test")
        .unwrap_or_else(|| panic!("{kept:?}"));
    assert!(
        foreign["reason"].as_str().unwrap().contains("not found"),
        "{foreign}"
    );
    let raw_path = format!("/v1/returns/{}/raw", foreign["id"].as_str().unwrap());
    let (status, raw) = p
        .call_analytics(&p.api_key, reqwest::Method::GET, &raw_path)
        .await;
    assert_eq!(status, 200);
    assert!(raw.as_str().unwrap().contains("feedback-report"), "{raw}");
    // The other account cannot see them.
    let (_, theirs_kept) = p
        .call_analytics(&other.api_key, reqwest::Method::GET, "/v1/returns")
        .await;
    assert_eq!(theirs_kept["data"], json!([]), "{theirs_kept}");
    // Neither message got an event from inbound, nor either recipient a suppression.
    for (key, id) in [
        (&p.api_key, &delivered.message_id),
        (&other.api_key, &their_message.message_id),
    ] {
        let types = p.stored_event_types(id).await;
        assert!(
            !types
                .iter()
                .any(|t| t == "async_bounced" || t == "complained"),
            "{key} {types:?}"
        );
    }
    assert!(suppression(&p, &p.api_key, &recipient).await.is_none());
    assert!(suppression(&p, &other.api_key, &theirs).await.is_none());

    // A flood from one address: connections past the cap are told 421 at once.
    let mut held = Vec::new();
    let mut greetings = Vec::new();
    for _ in 0..5 {
        use tokio::io::AsyncReadExt;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 128];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a greeting")
            .unwrap();
        greetings.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        held.push(stream);
    }
    let refused = greetings
        .iter()
        .filter(|g| g.starts_with("421 4.7.0"))
        .count();
    let greeted = greetings.iter().filter(|g| g.starts_with("220 ")).count();
    assert_eq!((greeted, refused), (3, 2), "{greetings:?}");
    drop(held);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_of_the_inbound_process_after_its_250_loses_nothing() {
    // The pipeline's own inbound stage has no listener here: a separate `sendmill
    // inbound` process takes the mail and is killed right after answering 250.
    let p = TestPipeline::start_configured(&Stage::ALL, |_| {}).await;
    let recipient = format!("{}@ok.test", unique("killed"));
    let delivered = deliver(&p, &p.api_key, &p.domain, &recipient).await;
    let port = free_port();
    let process = StageProcess::start(
        &p,
        &p.config,
        "inbound",
        &unique("inbound"),
        &format!(
            "[tracking]\nsecret = {:?}\n[inbound]\nlisten = \"127.0.0.1:{port}\"\nops_listen = \"127.0.0.1:0\"\n",
            p.config.tracking.secret
        ),
    );
    wait_for_port("127.0.0.1", port, "sendmill inbound");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let answer = send(
        addr,
        "none",
        "",
        &[&delivered.envelope_from],
        &dsn(&delivered.envelope_from, &recipient, &p.domain),
    )
    .await;
    assert_queued(&answer);
    process.kill();

    let timeline = timeline_with(&p, &p.api_key, &delivered.message_id, "async_bounced").await;
    let bounces = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "async_bounced")
        .count();
    assert_eq!(bounces, 1, "{timeline}");
    p.stop().await;
}
