//! What a receiving server says, as bytes off the wire: every line through the reply
//! parser, every reply through the enhanced-code split and the bounce classifier with
//! the built-in rules. A hostile or broken server must not be able to panic a
//! dispatcher, and the verdict must agree with the reply code class where no rule says
//! otherwise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendmill_dispatcher::outcome::{classify, default_rules, ClassifyRule};
use sendmill_smtp::{Reply, ReplyLine};
use sendmill_wire::SmtpReply;
use std::sync::OnceLock;

fn rules() -> &'static [ClassifyRule] {
    static RULES: OnceLock<Vec<ClassifyRule>> = OnceLock::new();
    RULES.get_or_init(default_rules)
}

fuzz_target!(|wire: &[u8]| {
    let mut code = None;
    let mut text = Vec::new();
    for line in wire.split_inclusive(|&b| b == b'\n') {
        let Some(parsed) = ReplyLine::parse(line) else {
            return;
        };
        assert!(parsed.code <= 999);
        code = Some(parsed.code);
        text.push(parsed.text);
        if !parsed.more {
            break;
        }
    }
    let Some(code) = code else { return };
    let joined = text.join(" ");
    let split: SmtpReply = Reply::new(code, &joined).into();
    // Splitting off the enhanced code loses no word of the reply and adds none.
    let words: Vec<&str> = split
        .enhanced
        .as_deref()
        .into_iter()
        .chain(split.text.split_whitespace())
        .collect();
    assert_eq!(
        words,
        joined.split_whitespace().collect::<Vec<_>>(),
        "{joined:?} became {split:?}"
    );
    let verdict = classify(rules(), &split);
    if verdict.suppress {
        assert!(
            verdict.permanent,
            "{split:?} suppresses without being permanent"
        );
    }
});
