//! The drop-ins' request bodies and signatures: any bytes go through the SendGrid v3 and
//! SES v2 parsers and translators, then the native planner, and through the SigV4
//! `Authorization` reader. None may panic, and whatever is planned must be safe to put
//! into a message: no control characters in anything that becomes a header, only
//! deliverable addresses (the `To` list included).
#![no_main]

#[path = "common/mod.rs"]
mod common;

use common::principal;
use libfuzzer_sys::fuzz_target;
use sendmill_ingest::{
    compat::{sendgrid, ses, sigv4},
    request::{parse, SendRequest},
    send::plan,
    validate, Config,
};
use sendmill_wire::BatchId;
use time::OffsetDateTime;

fn check_planned(request: SendRequest) {
    let now = OffsetDateTime::now_utc();
    let Ok(planned) = plan(principal(), request, &Config::default(), now, BatchId::generate())
    else {
        return;
    };
    for record in planned.records() {
        for mailbox in std::iter::once(&record.to).chain(&record.to_list).chain(&record.cc) {
            assert!(validate::email(&mailbox.email).is_ok(), "{mailbox:?}");
            if let Some(name) = &mailbox.name {
                assert!(!name.chars().any(char::is_control), "{name:?}");
            }
        }
        assert!(!record.subject.chars().any(|c| c.is_control() && c != '\t'));
        for header in &record.headers {
            assert!(!header.value.chars().any(|c| c.is_control() && c != '\t'));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let now = OffsetDateTime::now_utc();
    if let Ok(mail) = parse::<sendgrid::Mail>(data) {
        if let Ok((request, origins)) = sendgrid::translate(mail) {
            assert_eq!(origins.len(), request.to.len());
            check_planned(request);
        }
    }
    if let Ok(email) = parse::<ses::SendEmail>(data) {
        if let Ok(ses::Translated::Request { request, .. }) = ses::translate(email) {
            check_planned(*request);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let (authorization, rest) = text.split_once('\n').unwrap_or((text, ""));
        let mut headers = axum_headers(authorization);
        if let Ok(value) = rest.parse() {
            headers.insert("x-amz-date", value);
        }
        if let Ok(signed) = sigv4::Signed::parse("POST", "/", rest, &headers, data) {
            let _ = signed.verify("sm_secret", now);
        }
    }
});

fn axum_headers(authorization: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = authorization.parse() {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    headers
}
