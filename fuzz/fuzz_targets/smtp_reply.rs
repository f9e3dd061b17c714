//! What a receiving server says, as bytes off the wire: every line through the reply
//! parser, every reply through the enhanced-code split, the multi-line join (repeated
//! enhanced codes removed) and the bounce classifier with
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
    // The reply as the client reads it: continuation lines' repeated enhanced codes
    // removed, lines joined with one space. Only such codes go; every other word stays.
    let read: SmtpReply = Reply::from_lines(code, &text).into();
    assert_eq!(read.enhanced, split.enhanced, "{text:?}");
    assert!(!read.text.contains("  ") || joined.contains("  "), "{text:?}");
    assert_eq!(read.text.trim(), read.text, "{text:?}");
    let kept: Vec<&str> = read.text.split_whitespace().collect();
    let all: Vec<&str> = split.text.split_whitespace().collect();
    assert!(kept.len() <= all.len(), "{text:?} became {read:?}");
    let mut rest = all.iter();
    for word in &kept {
        assert!(
            rest.any(|w| w == word),
            "{word:?} of {read:?} is not from {text:?}"
        );
    }
    let verdict = classify(rules(), &read);
    if verdict.suppress {
        assert!(
            verdict.permanent,
            "{split:?} suppresses without being permanent"
        );
    }
});
