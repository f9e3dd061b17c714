//! The classification corpus (`tests/corpus/`, written by `make.py`): DSNs and bounces of
//! the major MTAs and providers, ARF reports, auto-replies and junk. Every message must
//! come out as `expected.toml` says: kind, format, recipient, status, category, and the
//! returned message's Message-ID and VERP address where it carries them.

use sendmill_inbound::report::{analyze, Rules};
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct Expected {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    file: String,
    kind: String,
    format: String,
    recipient: Option<String>,
    status: Option<String>,
    category: Option<String>,
    #[serde(default)]
    mail_from: String,
    message_id: Option<String>,
    verp: Option<String>,
}

#[test]
fn every_message_of_the_corpus_is_classified_as_expected() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let expected: Expected =
        toml::from_str(&std::fs::read_to_string(dir.join("expected.toml")).unwrap()).unwrap();
    let rules = Rules::builtin();
    let mut wrong = Vec::new();
    for case in &expected.case {
        let raw = std::fs::read(dir.join(&case.file)).unwrap();
        let report = analyze(&raw, &case.mail_from, &rules);
        let got = (
            report.kind.as_str().to_owned(),
            report.format.clone(),
            report.recipient.clone(),
            report.reply.as_ref().and_then(|r| r.enhanced.clone()),
            report.category.map(|c| c.as_str().to_owned()),
        );
        let want = (
            case.kind.clone(),
            case.format.clone(),
            case.recipient.clone(),
            case.status.clone(),
            case.category.clone(),
        );
        if got != want {
            wrong.push(format!(
                "{}: got {got:?}, want {want:?} (reply {:?}, note {:?})",
                case.file, report.reply, report.note
            ));
        }
        if let Some(id) = &case.message_id {
            if report.original.message_id.as_ref() != Some(id) {
                wrong.push(format!(
                    "{}: returned Message-ID {:?}, want {id}",
                    case.file, report.original.message_id
                ));
            }
        }
        if let Some(verp) = &case.verp {
            if !report.return_addresses.contains(verp) {
                wrong.push(format!(
                    "{}: return addresses {:?} lack {verp}",
                    case.file, report.return_addresses
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} wrong:\n{}",
        wrong.len(),
        expected.case.len(),
        wrong.join("\n")
    );
    assert!(expected.case.len() >= 60, "{} cases", expected.case.len());
    // Every kind and the major formats are covered.
    for kind in [
        "failed",
        "delayed",
        "delivered",
        "complaint",
        "auto_reply",
        "unclassified",
    ] {
        assert!(
            expected.case.iter().any(|c| c.kind == kind),
            "no {kind} case"
        );
    }
    for format in [
        "rfc3464", "rfc5965", "postfix", "exim", "qmail", "sendmail", "exchange", "gmail", "yahoo",
    ] {
        assert!(
            expected.case.iter().any(|c| c.format == format),
            "no {format} case"
        );
    }
}
