//! `POST /v1/messages` bodies: any bytes go through the JSON parser and the pure
//! validation that turns a request into per-recipient records. Neither may panic, and
//! whatever they accept must be safe to put into a message: no line breaks or other
//! control characters in anything that becomes a header, only deliverable addresses.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use common::principal;
use libfuzzer_sys::fuzz_target;
use sendmill_ingest::{request::SendRequest, send::plan, validate, Config};
use sendmill_wire::{BatchId, EmailAddress};
use std::sync::OnceLock;
use time::OffsetDateTime;

fn assert_header_safe(what: &str, text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\t'),
        "{what} holds a control character: {text:?}"
    );
}

fn assert_mailbox_safe(what: &str, mailbox: &EmailAddress) {
    assert!(
        validate::email(&mailbox.email).is_ok(),
        "{what} is not deliverable: {:?}",
        mailbox.email
    );
    if let Some(name) = &mailbox.name {
        assert_header_safe(what, name);
    }
}

fuzz_target!(|body: &[u8]| {
    let Ok(request) = SendRequest::parse(body) else {
        return;
    };
    static CONFIG: OnceLock<Config> = OnceLock::new();
    let Ok(planned) = plan(
        principal(),
        request,
        CONFIG.get_or_init(Config::default),
        OffsetDateTime::UNIX_EPOCH,
        BatchId::generate(),
    ) else {
        return;
    };
    for record in planned.records() {
        assert_mailbox_safe("from", &record.from);
        assert_mailbox_safe("to", &record.to);
        for cc in &record.cc {
            assert_mailbox_safe("cc", cc);
        }
        if let Some(reply_to) = &record.reply_to {
            assert_mailbox_safe("reply_to", reply_to);
        }
        assert!(validate::email(record.recipient()).is_ok());
        assert_header_safe("subject", &record.subject);
        for header in &record.headers {
            assert!(validate::header_name(&header.name).is_ok(), "{header:?}");
            assert_header_safe("header value", &header.value);
        }
    }
});
