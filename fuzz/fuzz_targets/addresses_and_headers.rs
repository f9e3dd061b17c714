//! The address and header validators the send API relies on against header injection:
//! whatever they pass must be safe to write into a header or an SMTP command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendmill_ingest::{request::split_address, validate};

fuzz_target!(|text: &str| {
    if validate::email(text).is_ok() {
        assert!(text.is_ascii() && text.len() <= 254, "{text:?}");
        assert!(
            !text
                .bytes()
                .any(|b| b.is_ascii_control() || matches!(b, b' ' | b'<' | b'>' | b'"' | b',')),
            "{text:?} cannot be put in MAIL FROM/RCPT TO as it is"
        );
        let (_, domain) = text.rsplit_once('@').expect("an address has an @");
        assert!(validate::domain(domain).is_ok());
    }
    if validate::header_value(text).is_ok() {
        assert!(!text.contains(['\r', '\n', '\0']), "{text:?}");
        assert!(text
            .split([' ', '\t'])
            .all(|run| run.len() <= validate::MAX_UNBROKEN));
    }
    if validate::header_name(text).is_ok() {
        assert!(!text.contains([':', ' ', '\r', '\n']), "{text:?}");
    }
    for max in [0, 1, validate::MAX_NAME] {
        if validate::header_text(text, max).is_ok() {
            assert!(!text.contains(['\r', '\n', '\0']), "{text:?}");
        }
    }
    let (email, name) = split_address(text);
    assert!(email.len() <= text.len());
    if let Some(name) = name {
        assert!(!name.is_empty());
    }
    let _ = validate::label(text);
    let _ = validate::filename(text);
    let _ = validate::content_type(text);
    let _ = validate::content_id(text);
});
