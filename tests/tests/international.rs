//! Internationalised email (RFC 6530–6533) end to end, on dnsmasq, the accepting
//! smtp-sink (which does not offer SMTPUTF8) and a postfix that does (utf8.test,
//! delivering into a Maildir): an IDN recipient goes out with an A-label RCPT and an
//! encoded To; a UTF-8 local part goes only to the server that offers SMTPUTF8 and
//! fails permanently, with its reason, at the other; suppressions match either form.

use reqwest::Method;
use sendmill_tests::*;
use serde_json::{json, Value};
use std::{path::PathBuf, time::Duration};

const LIMIT: Duration = Duration::from_secs(60);

/// The Maildir file of the SMTPUTF8 postfix holding `message_id`.
fn maildir_message(message_id: &str) -> Option<PathBuf> {
    let needle = format!("Message-ID: <{message_id}@");
    let dir = local_dir().join("postfix-utf8/mail/new");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}): run deploy/local/start-services.sh",
                dir.display()
            )
        })
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            std::fs::read(path).is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(&needle))
        })
}

/// The header section of a stored message, as raw text.
fn header_section(path: &PathBuf) -> String {
    let bytes = std::fs::read(path).unwrap();
    let text = String::from_utf8(bytes).expect("the message is UTF-8");
    text.split("\r\n\r\n")
        .next()
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap()
        .to_owned()
}

fn header_values<'a>(section: &'a str, name: &str) -> Vec<&'a str> {
    section
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idn_recipient_is_delivered_with_an_a_label_rcpt_and_an_encoded_to() {
    let p = TestPipeline::start().await;
    let (status, body) = p
        .send(&message_to(
            &p,
            json!(["  Kunde Müller <kunde@BÜCHER.test> "]),
        ))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["messages"][0]["to"], "kunde@xn--bcher-kva.test",
        "{body}"
    );
    let id = first_message_id(&body);
    p.wait_for_status(&id, "delivered", LIMIT).await;

    let dump = dumped_message(&id).expect("the message reached the MX");
    let head = header_section(&dump);
    assert_eq!(
        header_values(&head, "X-Rcpt-Args"),
        ["<kunde@xn--bcher-kva.test>"]
    );
    // An ASCII message: the name as an encoded word, the domain as A-labels.
    let message_head = head.split_once("Received:").unwrap().1;
    assert!(message_head.is_ascii(), "{message_head}");
    let parsed = mime_check(&dump, &["To"]);
    assert_eq!(
        parsed["headers"]["To"][0], "Kunde Müller <kunde@xn--bcher-kva.test>",
        "{parsed}"
    );
    assert!(dkim_verifies(&dump, &p.dkim_record));

    // The timeline's message list finds the recipient in either form.
    for form in ["kunde@bücher.test", "kunde@xn--bcher-kva.test"] {
        let found = poll_until(LIMIT, || async {
            let (status, page) = p
                .call_analytics(&p.api_key, Method::GET, &format!("/v1/messages?to={form}"))
                .await;
            assert_eq!(status, 200, "{page}");
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["message_id"] == id.as_str())
                .then_some(())
        })
        .await;
        assert!(found.is_some(), "{form} not found in /v1/messages");
    }

    // A suppression given in one form stops mail to the other.
    let (status, added, _) = p
        .call(
            &p.api_key,
            Method::POST,
            "/v1/suppressions",
            Some(&json!({"suppressions": [{"email": "leser@bücher.test"}, {"email": "Ädä@bücher.test"}]})),
        )
        .await;
    assert_eq!(status, 200, "{added}");
    let (status, body) = p
        .send(&message_to(&p, json!(["leser@xn--bcher-kva.test"])))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["messages"][0]["status"], "suppressed", "{body}");
    // Case does not matter beyond ASCII either.
    let (status, body) = p
        .send(&message_to(&p, json!(["ädä@xn--bcher-kva.test"])))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["messages"][0]["status"], "suppressed", "{body}");
    for form in ["leser@xn--bcher-kva.test", "leser@bücher.test"] {
        let (status, entry, _) = p
            .call(
                &p.api_key,
                Method::GET,
                &format!("/v1/suppressions/{form}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{form}: {entry}");
        assert_eq!(entry["email"], "leser@xn--bcher-kva.test");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sending_domain_given_in_u_labels_signs_as_a_labels() {
    let p = TestPipeline::start().await;
    let (status, domain, _) = p
        .call(
            &p.api_key,
            Method::POST,
            "/v1/domains",
            Some(&json!({"domain": "Versand.Bücher.test."})),
        )
        .await;
    assert_eq!(status, 201, "{domain}");
    assert_eq!(domain["domain"], "versand.xn--bcher-kva.test", "{domain}");
    assert_eq!(domain["domain_unicode"], "versand.bücher.test", "{domain}");
    let dkim = domain["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "TXT" && r["name"].as_str().unwrap().contains("._domainkey."))
        .unwrap_or_else(|| panic!("no DKIM record in {domain}"));
    let dkim_name = dkim["name"].as_str().unwrap().to_owned();
    assert!(
        dkim_name.ends_with("._domainkey.versand.xn--bcher-kva.test"),
        "{dkim}"
    );
    // Found under either form.
    let (status, again, _) = p
        .call(
            &p.api_key,
            Method::GET,
            "/v1/domains/versand.bücher.test",
            None,
        )
        .await;
    assert_eq!(
        (status, &again["domain"]),
        (200, &domain["domain"]),
        "{again}"
    );

    let mut body = message_to(&p, json!(["kunde@ok.test"]));
    body["from"] = json!("Versand <news@versand.bücher.test>");
    let (status, sent) = p.send(&body).await;
    assert_eq!(status, 202, "{sent}");
    let id = first_message_id(&sent);
    p.wait_for_status(&id, "delivered", LIMIT).await;
    let dump = dumped_message(&id).unwrap();
    let head = header_section(&dump);
    assert_eq!(
        header_values(&head, "From"),
        ["\"Versand\" <news@versand.xn--bcher-kva.test>"]
    );
    assert!(
        head.contains("d=versand.xn--bcher-kva.test;"),
        "DKIM d= is not the A-label domain:\n{head}"
    );
    let record = (dkim_name, dkim["value"].as_str().unwrap().to_owned());
    assert!(dkim_verifies(&dump, &record));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_utf8_local_part_goes_only_to_an_mx_offering_smtputf8() {
    let p = TestPipeline::start().await;
    let (status, body) = p
        .send(&message_to(
            &p,
            json!([
                {"email": "jürgen.müller@utf8.test", "name": "Jürgen Müller"},
                "jürgen.müller@ok.test",
                // Combining marks (Devanagari) and symbols: RFC 6531 allows them, and
                // lettre's own address parser does not.
                "नमस्ते@utf8.test",
                "😀@utf8.test"
            ]),
        ))
        .await;
    assert_eq!(status, 202, "{body}");
    let ids = message_ids(&body);
    assert_eq!(body["accepted"], 4, "{body}");

    // The SMTPUTF8 MX got it: the envelope recipient as written, UTF-8 headers
    // (RFC 6532), a valid signature.
    p.wait_for_status(&ids[0], "delivered", LIMIT).await;
    let stored = poll_until(LIMIT, || async { maildir_message(&ids[0]) })
        .await
        .expect("postfix delivered the message into its Maildir");
    let head = header_section(&stored);
    assert_eq!(
        header_values(&head, "X-Original-To"),
        ["jürgen.müller@utf8.test"]
    );
    let parsed = mime_check(&stored, &["To"]);
    assert_eq!(
        parsed["headers"]["To"][0], "Jürgen Müller <jürgen.müller@utf8.test>",
        "{parsed}"
    );
    assert!(dkim_verifies(&stored, &p.dkim_record));

    for (id, rcpt) in [(&ids[2], "नमस्ते@utf8.test"), (&ids[3], "😀@utf8.test")] {
        p.wait_for_status(id, "delivered", LIMIT).await;
        let stored = poll_until(LIMIT, || async { maildir_message(id) })
            .await
            .expect("postfix delivered the message into its Maildir");
        assert_eq!(
            header_values(&header_section(&stored), "X-Original-To"),
            [rcpt]
        );
    }

    // The sink does not offer SMTPUTF8: a permanent failure that says why, nothing sent
    // (no punycoded local part, no raw UTF-8 to a server that did not offer it).
    let timeline = p.wait_for_status(&ids[1], "bounced", LIMIT).await;
    let bounced: &Value = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "bounced")
        .unwrap();
    let reason = bounced["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("SMTPUTF8"), "{bounced}");
    assert_eq!(bounced["bounce_category"], "protocol", "{bounced}");
    assert!(dumped_message(&ids[1]).is_none());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_where_the_field_is_lenient_strict_where_it_matters() {
    let p = TestPipeline::start().await;
    let logo = "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";
    let mut body = message_to(&p, json!(["\"O\\\"Brien, Ada\" <inline@ok.test>"]));
    body["html"] = json!("<p><img src=\"cid:logo\"><img src=\"cid:mark@x\"></p>");
    body["attachments"] = json!([
        {"filename": "logo.gif", "content_type": "image/gif", "content": logo, "content_id": "<logo>"},
        {"filename": "mark.gif", "content_type": "IMAGE/GIF", "content": logo, "content_id": "mark@x"}
    ]);
    body["headers"] = json!({"x-lower-case": "kept", "X-Mixed-Case": "kept"});
    let (status, sent) = p.send(&body).await;
    assert_eq!(status, 202, "{sent}");
    let id = first_message_id(&sent);
    p.wait_for_status(&id, "delivered", LIMIT).await;
    let dump = dumped_message(&id).unwrap();
    let parsed = mime_check(&dump, &["x-lower-case", "X-Mixed-Case"]);
    let ids: Vec<&str> = parsed["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|part| part["content_id"].as_str())
        .collect();
    assert_eq!(ids, ["<logo>", "<mark@x>"], "{parsed}");
    assert_eq!(parsed["headers"]["x-lower-case"][0], "kept");
    // A quoted display name's quoted-pairs are read, then written again once.
    assert_eq!(
        header_values(&header_section(&dump), "To"),
        [r#""O\"Brien, Ada" <inline@ok.test>"#]
    );
    assert_eq!(parsed["headers"]["X-Mixed-Case"][0], "kept");

    // Still refused: header injection in any case, control characters, bad addresses.
    for (field, value, path) in [
        ("headers", json!({"bcc": "x@ok.test"}), "headers.bcc"),
        (
            "headers",
            json!({"DKIM-SIGNATURE": "x"}),
            "headers.DKIM-SIGNATURE",
        ),
        ("to", json!(["a\u{202e}b@ok.test"]), "to[0].email"),
        ("to", json!(["ada@bü_cher.test"]), "to[0].email"),
        // UTS 46 would drop an invisible character from a domain: refused instead.
        ("to", json!(["kunde@bü\u{200b}cher.test"]), "to[0].email"),
        ("from", json!("hello\r\n@ok.test"), "from"),
    ] {
        let mut bad = message_to(&p, json!(["x@ok.test"]));
        bad[field] = value.clone();
        let (status, error) = p.send(&bad).await;
        assert_eq!(status, 400, "{value} → {error}");
        assert_eq!(error["error"]["field"], path, "{value} → {error}");
    }
    p.stop().await;
}
