//! What a remote MTA sends to the inbound server after DATA, as bytes: the inbound
//! stage's reading of it (`sendmill_inbound::report::analyze`, MIME by mailparse, DSN and
//! ARF fields, the recognition table). Anyone on the internet can send these, so they
//! must never panic it, and what it reports must stay within its promises: a status is
//! an RFC 3463 code, an SMTP reply code is 4xx/5xx, a failure or delay has a category,
//! and at most 8 candidate return addresses (each of our shape) come out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendmill_inbound::report::{analyze, Kind, Rules};
use std::sync::OnceLock;

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(Rules::builtin)
}

fuzz_target!(|data: &[u8]| {
    for mail_from in ["", "someone@example.test"] {
        let report = analyze(data, mail_from, rules());
        if let Some(reply) = &report.reply {
            assert!((400..600).contains(&reply.code), "{reply:?}");
            if let Some(status) = &reply.enhanced {
                let parts: Vec<&str> = status.split('.').collect();
                assert_eq!(parts.len(), 3, "{status}");
                assert!(parts.iter().all(|p| !p.is_empty() && p.len() <= 3));
            }
        }
        if matches!(report.kind, Kind::Failed | Kind::Delayed) {
            assert!(report.category.is_some() && report.reply.is_some());
        }
        assert!(report.return_addresses.len() <= 8);
        for address in &report.return_addresses {
            assert!(address.starts_with("b+") || address.starts_with("unsubscribe+"));
        }
    }
});
