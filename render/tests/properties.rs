//! Property tests: for arbitrary header values, display names, unicode subjects and
//! template data (control characters and line breaks included), the renderer either
//! refuses the input with a header/subject error — only when the input holds a control
//! character — or produces a message that Python's `email` parses strictly, that carries
//! exactly the header fields it should (nothing injected), whose subject is the rendered
//! one, and whose DKIM signatures verify with dkimpy.
//!
//! Cases come from proptest's deterministic runner and are checked by one Python run
//! (a process per case would take minutes).

use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestRunner},
};
use sendmill_render::{
    message::{self, Decorations, RenderError},
    signing::SendingIdentity,
    templates::Templates,
};
use sendmill_store::{Ed25519DkimKey, SendingDomain};
use sendmill_wire::{
    AccountId, BatchId, EmailAddress, Header, Lane, MessageContext, MessageId, RenderOptions,
    RequestedV1,
};
use serde_json::Value;
use std::{collections::BTreeSet, path::PathBuf, process::Command};
use time::OffsetDateTime;

const CASES: usize = 256;

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn domain() -> SendingDomain {
    let read = |f: &str| std::fs::read(keys_dir().join(f)).unwrap();
    let text = |f: &str| String::from_utf8(read(f)).unwrap().trim().to_owned();
    SendingDomain {
        id: uuid::Uuid::nil(),
        account_id: AccountId(uuid::Uuid::nil()),
        domain: "example.test".into(),
        dkim_selector: "s1".into(),
        dkim_private_key_pkcs8: read("rsa.pk8.der"),
        dkim_public_key: text("rsa.pub.b64"),
        ed25519: Some(Ed25519DkimKey {
            selector: "s1e".into(),
            private_pkcs8: read("ed25519.pk8.der"),
            public_key: text("ed25519.pub.b64"),
        }),
        dual_sign: true,
        next_dkim: None,
        return_path_domain: "bounces.example.test".into(),
        verified_at: None,
        verification: None,
    }
}

#[derive(Debug, Clone)]
struct Case {
    subject: String,
    name: String,
    header_name: String,
    header_value: String,
    data: String,
}

fn case() -> impl Strategy<Value = Case> {
    // Mostly printable unicode, sometimes anything (line breaks and control characters
    // included). No braces in the subject template itself: that is a template syntax
    // error, tested elsewhere.
    let text = || prop_oneof![6 => "\\PC{0,60}", 1 => "(?s).{0,60}"];
    let subject = prop_oneof![6 => "[^{}\\p{C}]{0,60}", 1 => "(?s)[^{}]{0,60}"];
    (subject, text(), "X-[A-Za-z0-9-]{1,20}", text(), text()).prop_map(
        |(subject, name, header_name, header_value, data)| Case {
            subject,
            name,
            header_name,
            header_value,
            data,
        },
    )
}

fn has_control(text: &str) -> bool {
    text.chars().any(|c| c.is_control() && c != '\t')
}

fn request(case: &Case) -> RequestedV1 {
    let mut data = serde_json::Map::new();
    data.insert("v".into(), Value::String(case.data.clone()));
    RequestedV1 {
        message_id: MessageId::generate(),
        account_id: AccountId(uuid::Uuid::nil()),
        batch_id: BatchId::generate(),
        lane: Lane::Transactional,
        accepted_at: OffsetDateTime::now_utc(),
        from: EmailAddress {
            email: "news@example.test".into(),
            name: Some(case.name.clone()),
        },
        to: EmailAddress {
            email: "ada@ok.test".into(),
            name: Some(case.name.clone()),
        },
        to_list: Vec::new(),
        cc: Vec::new(),
        envelope_to: None,
        reply_to: None,
        subject: format!("{} {{{{v}}}}", case.subject),
        html: Some("<p>{{v}}</p>".into()),
        text: Some("Text: {{v}}\n".into()),
        headers: vec![Header {
            name: case.header_name.clone(),
            value: case.header_value.clone(),
        }],
        data,
        context: MessageContext::default(),
        options: RenderOptions::default(),
        attachments: vec![],
        mime: None,
        shared: None,
    }
}

fn normalize(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn arbitrary_input_renders_to_messages_that_parse_verify_and_carry_no_injected_header() {
    let identity = SendingIdentity::new(&domain()).unwrap();
    let templates = Templates::new();
    let dir = std::env::temp_dir().join(format!("sendmill-props-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let mut runner = TestRunner::new(Config {
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..Config::default()
    });
    let strategy = case();
    let mut expected = Vec::new();
    let (mut rendered, mut refused) = (0, 0);
    for index in 0..CASES {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let request = request(&case);
        let at = OffsetDateTime::now_utc();
        let result = message::build(&templates, Decorations::NONE, &request, at)
            .and_then(|unsigned| identity.seal(&unsigned, &request, at, None));
        let unsafe_input = has_control(&case.name)
            || has_control(&case.header_value)
            || has_control(&case.subject)
            || has_control(&case.data);
        match result {
            Ok(ready) => {
                assert!(!unsafe_input, "rendered unsafe input {case:?}");
                let file = format!("{index:04}.eml");
                std::fs::write(dir.join(&file), &ready.message).unwrap();
                expected.push((file, case));
                rendered += 1;
            }
            Err(RenderError::Header(_) | RenderError::UnsafeSubject) => {
                assert!(unsafe_input, "refused safe input {case:?}");
                refused += 1;
            }
            Err(other) => panic!("unexpected error {other} for {case:?}"),
        }
    }
    assert!(
        rendered > CASES / 4 && refused > 0,
        "rendered {rendered}, refused {refused}"
    );

    let d = domain();
    let mut command = Command::new("/usr/bin/python3");
    command
        .arg(keys_dir().join("../../../deploy/local/check-messages.py"))
        .arg(&dir);
    for (name, value) in d.dkim_records() {
        command.arg("--txt").arg(format!("{name}={value}"));
    }
    let output = command.output().expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), expected.len());
    for (result, (file, case)) in results.iter().zip(&expected) {
        assert_eq!(result["file"], file.as_str());
        assert!(result.get("error").is_none(), "{case:?}: {result}");
        let names: BTreeSet<String> = result["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_ascii_lowercase())
            .collect();
        let mut allowed: BTreeSet<String> = [
            "dkim-signature",
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "mime-version",
            "content-type",
            "content-transfer-encoding",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        allowed.insert(case.header_name.to_ascii_lowercase());
        assert!(names.is_subset(&allowed), "{case:?}: headers {names:?}");
        assert_eq!(
            result["headers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h.as_str().unwrap().eq_ignore_ascii_case("dkim-signature"))
                .count(),
            2
        );
        assert_eq!(
            result["dkim"],
            serde_json::json!([true, true]),
            "{case:?}: {result}"
        );
        // Display names are compared without white space: a long non-ASCII name spans
        // several encoded-words, and Python (unlike RFC 2047 §6.2 and mail clients) puts
        // a space between the words of a display name when it decodes them.
        let squeeze = |t: &str| t.split_whitespace().collect::<String>();
        assert_eq!(
            squeeze(result["from_name"].as_str().unwrap()),
            squeeze(&case.name),
            "{case:?}"
        );
        let subject = format!("{} {}", case.subject, case.data);
        assert_eq!(
            normalize(result["subject"].as_str().unwrap()),
            normalize(&subject),
            "{case:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
