//! What a delivery attempt comes to, as a type (after Stalwart's `Status`): delivered,
//! a temporary failure (retry later) or a permanent one (bounce), each with the MX host,
//! the server's reply and a bounce category the rest of the pipeline acts on.

use sendmill_smtp::Step;
use sendmill_wire::{BounceCategory, SmtpReply};

#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered(Delivered),
    Temporary(Failure),
    Permanent(Failure),
}

#[derive(Debug, Clone)]
pub struct Delivered {
    pub mx_host: String,
    pub source_ip: Option<String>,
    pub reply: SmtpReply,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct Failure {
    pub reason: FailureReason,
    pub mx_host: Option<String>,
    pub source_ip: Option<String>,
    pub reply: Option<SmtpReply>,
    pub category: BounceCategory,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FailureReason {
    #[error("the recipient domain does not exist")]
    NoSuchDomain,
    #[error("the recipient domain accepts no mail (null MX)")]
    NullMx,
    #[error("DNS lookup failed: {0}")]
    Dns(String),
    #[error("cannot connect to any MX host: {0}")]
    Connect(String),
    #[error("timed out during {0}")]
    Timeout(Step),
    #[error("rejected at {step}: {code} {text}")]
    Rejected { step: Step, code: u16, text: String },
    #[error("TLS required but unavailable: {0}")]
    Tls(String),
    #[error("no source IP may send: {0}")]
    NoSource(String),
    #[error("SMTP session failed: {0}")]
    Protocol(String),
}

impl Failure {
    pub fn new(reason: FailureReason, category: BounceCategory) -> Self {
        Self {
            reason,
            mx_host: None,
            source_ip: None,
            reply: None,
            category,
        }
    }
}

/// Whether a failure is retried.
pub use sendmill_smtp::classify::{
    classify, default_rules, first_match, ClassifyRule, Permanence, Verdict,
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A reply as the SMTP client hands it over.
    fn reply(code: u16, text: &str) -> SmtpReply {
        sendmill_smtp::Reply::new(code, text).into()
    }

    /// One reply from `tests/replies.toml`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        provider: String,
        reply: String,
        category: BounceCategory,
        permanent: bool,
        suppress: bool,
        rule: usize,
    }

    /// Reads a reply as the client does: line by line, then joined.
    fn wire_reply(raw: &str) -> SmtpReply {
        let lines: Vec<sendmill_smtp::ReplyLine> = raw
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| sendmill_smtp::ReplyLine::parse(l.as_bytes()).expect("a reply line"))
            .collect();
        let texts: Vec<String> = lines.iter().map(|l| l.text.clone()).collect();
        sendmill_smtp::Reply::from_lines(lines[0].code, &texts).into()
    }

    #[test]
    fn provider_replies_are_classified_as_written_and_every_rule_has_a_case() {
        #[derive(Deserialize)]
        struct Cases {
            case: Vec<Case>,
        }
        let cases: Cases = toml::from_str(include_str!("../tests/replies.toml")).unwrap();
        let rules = default_rules();
        let mut wrong = Vec::new();
        let mut used = vec![false; rules.len()];
        for case in &cases.case {
            let reply = wire_reply(&case.reply);
            let rule = first_match(&rules, &reply);
            let verdict = classify(&rules, &reply);
            if let Some(i) = rule {
                used[i] = true;
            }
            let got = (verdict.category, verdict.permanent, verdict.suppress, rule);
            let want = (
                case.category,
                case.permanent,
                case.suppress,
                Some(case.rule),
            );
            if got != want {
                wrong.push(format!(
                    "{}: {} {:?} {:?}: got {got:?}, want {want:?}",
                    case.provider, reply.code, reply.enhanced, reply.text
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        let untested: Vec<usize> = (0..rules.len()).filter(|i| !used[*i]).collect();
        assert!(untested.is_empty(), "rules without a case: {untested:?}");
        assert!(cases.case.len() >= 40, "{}", cases.case.len());
    }

    #[test]
    fn categorizes_common_replies() {
        let cases = [
            (550, "5.1.1 User unknown", BounceCategory::BadMailbox),
            (550, "5.1.2 Host unknown", BounceCategory::BadDomain),
            (552, "5.2.2 Mailbox full", BounceCategory::MailboxFull),
            (452, "4.2.2 Over quota", BounceCategory::MailboxFull),
            (
                554,
                "5.7.1 Message rejected as spam",
                BounceCategory::Policy,
            ),
            (
                451,
                "4.7.1 Greylisted, please try again later",
                BounceCategory::Policy,
            ),
            (
                421,
                "4.7.0 Too many connections",
                BounceCategory::RateLimited,
            ),
            (530, "5.7.10 Encryption needed", BounceCategory::TlsRequired),
            (550, "No such user here", BounceCategory::BadMailbox),
            (554, "Transaction failed", BounceCategory::Policy),
            (
                552,
                "Message size exceeds limit",
                BounceCategory::MailboxFull,
            ),
            (451, "Local error", BounceCategory::Other),
        ];
        let rules = default_rules();
        for rule in &rules {
            rule.validate().unwrap();
        }
        for (code, text, expected) in cases {
            assert_eq!(
                classify(&rules, &reply(code, text)).category,
                expected,
                "{code} {text}"
            );
        }
        let unknown = classify(&rules, &reply(550, "5.1.1 User unknown"));
        assert!(unknown.permanent && unknown.suppress);
        let full = classify(&rules, &reply(452, "4.2.2 Over quota"));
        assert!(!full.permanent && !full.suppress);
        let greylisted = classify(&rules, &reply(451, "4.7.1 Greylisted"));
        assert!(!greylisted.permanent);
        let other = classify(&rules, &reply(599, "whatever"));
        assert_eq!(
            (other.category, other.permanent),
            (BounceCategory::Other, true)
        );
    }
}
