//! Golden messages: for a fixed clock, key and input, the renderer's output equals the
//! checked-in `.eml` byte for byte; each golden message also parses strictly with
//! Python's `email` package (an independent MIME parser) into the expected parts, and
//! every DKIM signature on it verifies with dkimpy.
//!
//! To re-bless after an intended change: `SENDMILL_BLESS=1 cargo test -p sendmill-render
//! --test golden`, then review the `.eml` diff.

use sendmill_render::{message, signing::SendingIdentity, templates::Templates};
use sendmill_store::{Ed25519DkimKey, SendingDomain};
use sendmill_wire::{AccountId, RequestedV1};
use serde_json::Value;
use std::{path::PathBuf, process::Command};
use time::macros::datetime;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(dir().join(path)).unwrap()
}

fn read_text(path: &str) -> String {
    String::from_utf8(read(path)).unwrap().trim().to_owned()
}

fn domain(dual_sign: bool) -> SendingDomain {
    SendingDomain {
        id: uuid::Uuid::nil(),
        account_id: AccountId(uuid::Uuid::nil()),
        domain: "example.test".into(),
        dkim_selector: "s1".into(),
        dkim_private_key_pkcs8: read("keys/rsa.pk8.der"),
        dkim_public_key: read_text("keys/rsa.pub.b64"),
        ed25519: Some(Ed25519DkimKey {
            selector: "s1e".into(),
            private_pkcs8: read("keys/ed25519.pk8.der"),
            public_key: read_text("keys/ed25519.pub.b64"),
        }),
        dual_sign,
        next_dkim: None,
        return_path_domain: "bounces.example.test".into(),
        verified_at: None,
        verification: None,
    }
}

/// Renders `name`.json and compares it with `name`.eml; returns the `.eml` path.
fn golden(name: &str, dual_sign: bool) -> PathBuf {
    let request: RequestedV1 =
        sendmill_wire::decode(&read(&format!("golden/{name}.json"))).unwrap();
    let at = datetime!(2026-11-22 12:00:05 UTC);
    let unsigned =
        message::build(&Templates::new(), message::Decorations::NONE, &request, at).unwrap();
    let ready = SendingIdentity::new(&domain(dual_sign))
        .unwrap()
        .seal(&unsigned, &request, at, None)
        .unwrap();
    assert_eq!(
        ready.envelope_from,
        format!("b+{}@bounces.example.test", request.message_id.0.simple())
    );
    let path = dir().join(format!("golden/{name}.eml"));
    if std::env::var_os("SENDMILL_BLESS").is_some() {
        std::fs::write(&path, &ready.message).unwrap();
    }
    let expected =
        std::fs::read(&path).unwrap_or_else(|_| panic!("{} is missing: bless it", path.display()));
    if expected != ready.message {
        panic!(
            "{name}: output differs from the golden message\n--- expected\n{}\n--- got\n{}",
            String::from_utf8_lossy(&expected),
            String::from_utf8_lossy(&ready.message)
        );
    }
    path
}

fn mime(path: &PathBuf, headers: &[&str]) -> Value {
    let repo = dir().join("../..");
    let output = Command::new("/usr/bin/python3")
        .arg(repo.join("deploy/local/mime-check.py"))
        .arg(path)
        .args(headers)
        .output()
        .expect("python3 runs");
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "mime-check printed no JSON: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        output.status.success(),
        "{path:?} does not parse strictly: {parsed}"
    );
    parsed
}

fn dkim(path: &PathBuf, records: &[(String, String)]) -> String {
    let repo = dir().join("../..");
    let mut command = Command::new("/usr/bin/python3");
    command
        .arg(repo.join("deploy/local/dkim-verify.py"))
        .arg(path);
    for (name, value) in records {
        command.arg("--txt").arg(format!("{name}={value}"));
    }
    let output = command.output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "dkimpy: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn multipart_alternative_dual_signed() {
    let path = golden("alternative_dual", true);
    let parsed = mime(
        &path,
        &["Subject", "From", "To", "Reply-To", "X-Entity-Ref-ID"],
    );
    let headers = &parsed["headers"];
    assert_eq!(headers["Subject"][0], "Grüße, Ada — your order №1042 ✓");
    assert_eq!(headers["From"][0], "Zoë’s Café <news@example.test>");
    assert_eq!(headers["To"][0], "Ada Lovelace <ada@ok.test>");
    assert_eq!(headers["X-Entity-Ref-ID"][0], "order-1042");
    let parts = parsed["parts"].as_array().unwrap();
    assert_eq!(parts[0]["multipart"], "multipart/alternative");
    assert_eq!(parts[1]["type"], "text/plain");
    // Decoded MIME text keeps its canonical CRLF line ends.
    assert_eq!(
        parts[1]["text"].as_str().unwrap().replace("\r\n", "\n"),
        "Hello Ada\n\nYour order №1042 is on its way.\n"
    );
    assert_eq!(parts[2]["type"], "text/html");
    let html = parts[2]["text"].as_str().unwrap();
    assert!(html.contains("<h1>Hello Ada</h1>"), "{html}");
    assert!(html.contains("<em>The Example team</em>"), "{html}");
    let verdict = dkim(&path, &domain(true).dkim_records());
    assert_eq!(verdict.matches("pass").count(), 2, "{verdict}");
    let eml = std::fs::read_to_string(&path).unwrap();
    assert!(eml.starts_with("DKIM-Signature: v=1; a=rsa-sha256;"));
    assert!(eml.contains("DKIM-Signature: v=1; a=ed25519-sha256;"));
    assert!(
        eml.lines().all(|l| l.len() <= 998),
        "a line exceeds RFC 5322's limit"
    );
}

#[test]
fn text_only_rsa_signed() {
    let path = golden("text_only", false);
    let parsed = mime(&path, &["Subject"]);
    assert_eq!(parsed["headers"]["Subject"][0], "Disk usage at 93%");
    let parts = parsed["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0]["type"], "text/plain");
    assert!(parts[0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Disk usage on db-1 reached 93%."));
    let verdict = dkim(&path, &domain(false).dkim_records());
    assert_eq!(verdict.trim(), "signature 0: pass");
}

#[test]
fn a_changed_body_fails_verification() {
    let path = golden("text_only", false);
    let tampered = std::env::temp_dir().join(format!("tampered-{}.eml", std::process::id()));
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("93%.", "39%.");
    std::fs::write(&tampered, text).unwrap();
    let repo = dir().join("../..");
    let (name, value) = domain(false).dkim_record();
    let status = Command::new("/usr/bin/python3")
        .arg(repo.join("deploy/local/dkim-verify.py"))
        .arg(&tampered)
        .arg("--txt")
        .arg(format!("{name}={value}"))
        .status()
        .unwrap();
    std::fs::remove_file(&tampered).unwrap();
    assert!(!status.success());
}

#[test]
fn mixed_with_inline_image_and_attachment() {
    let path = golden("mixed_related", true);
    let parsed = mime(&path, &["Subject"]);
    assert_eq!(parsed["headers"]["Subject"][0], "Your invoice 2026-0042");
    let parts = parsed["parts"].as_array().unwrap();
    let kinds: Vec<&str> = parts
        .iter()
        .map(|p| p["multipart"].as_str().or(p["type"].as_str()).unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "multipart/mixed",
            "multipart/alternative",
            "text/plain",
            "multipart/related",
            "text/html",
            "image/png",
            "application/pdf"
        ]
    );
    // The text part was generated from the HTML.
    assert!(parts[2]["text"]
        .as_str()
        .unwrap()
        .contains("Invoice 2026-0042 is attached."));
    assert_eq!(parts[5]["content_id"], "<logo@example.test>");
    assert_eq!(parts[5]["disposition"], "inline");
    let input: RequestedV1 = sendmill_wire::decode(&read("golden/mixed_related.json")).unwrap();
    assert_eq!(parts[5]["size"], input.attachments[0].content.len());
    assert_eq!(parts[6]["size"], input.attachments[1].content.len());
    assert_eq!(parts[6]["disposition"], "attachment");
    assert_eq!(parts[6]["filename"], "Rechnung März 2026-0042.pdf");
    let verdict = dkim(&path, &domain(true).dkim_records());
    assert_eq!(verdict.matches("pass").count(), 2, "{verdict}");
}
