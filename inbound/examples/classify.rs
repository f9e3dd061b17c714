//! Classifies returned messages as the inbound stage would, one JSON line per file:
//! `cargo run -p sendmill-inbound --example classify -- FILE...`. For checking the rules
//! against a corpus of real bounces (see the README's inbound section).

use sendmill_inbound::report::{analyze, Rules};

fn main() {
    let rules = Rules::builtin();
    for path in std::env::args().skip(1) {
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(error) => {
                eprintln!("{path}: {error}");
                continue;
            }
        };
        let report = analyze(&raw, "", &rules);
        let line = serde_json::json!({
            "file": path,
            "kind": report.kind.as_str(),
            "format": report.format,
            "recipient": report.recipient,
            "status": report.reply.as_ref().and_then(|r| r.enhanced.clone()),
            "code": report.reply.as_ref().map(|r| r.code),
            "diagnostic": report.reply.as_ref().map(|r| r.text.clone()),
            "category": report.category.map(|c| c.as_str()),
            "feedback_type": report.feedback_type,
            "note": report.note,
        });
        #[allow(clippy::print_stdout)]
        {
            println!("{line}");
        }
    }
}
