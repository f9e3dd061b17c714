//! The address and header validators the send API relies on against header injection:
//! whatever they pass must be safe to write into a header or an SMTP command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendmill_ingest::{request::split_address, validate};

fuzz_target!(|text: &str| {
    if let Ok(address) = validate::email(text) {
        // The canonical form is what goes into MAIL FROM / RCPT TO and headers.
        assert!(address.len() <= 254, "{address:?}");
        assert!(
            !address.chars().any(|c| c.is_control()
                || c.is_whitespace()
                || matches!(c, '<' | '>' | '"' | ',' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}')),
            "{address:?} cannot be put in MAIL FROM/RCPT TO as it is"
        );
        let (local, domain) = address.rsplit_once('@').expect("an address has an @");
        assert!(!local.is_empty() && local.len() <= 64, "{address:?}");
        // The domain is A-labels only: DNS, DKIM d= and RCPT see ASCII.
        assert!(domain.is_ascii(), "{address:?}");
        assert!(validate::domain(domain).is_ok(), "{address:?}");
        assert_eq!(validate::domain_name(domain).as_deref(), Ok(domain));
        // Canonical means a fixed point: suppressions match in either form.
        assert_eq!(validate::email(&address).as_deref(), Ok(address.as_str()));
        assert_eq!(validate::needs_smtputf8(&address), !local.is_ascii());
        let _ = validate::domain_unicode(domain);
    }
    if let Ok(domain) = validate::domain_name(text) {
        assert!(domain.is_ascii() && domain.len() <= 253, "{domain:?}");
        assert_eq!(validate::domain_name(&domain).as_deref(), Ok(domain.as_str()));
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
    if let Ok(cid) = validate::content_id(text) {
        assert!(!cid.contains(['<', '>', ' ', '\r', '\n']), "{cid:?}");
    }
});
