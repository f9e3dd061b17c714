//! What a delivery attempt comes to, as a type (after Stalwart's `Status`): delivered,
//! a temporary failure (retry later) or a permanent one (bounce), each with the MX host,
//! the server's reply and a bounce category the rest of the pipeline acts on.

use sendmill_smtp::Step;
use sendmill_wire::{BounceCategory, SmtpReply};
use serde::Deserialize;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permanence {
    Temporary,
    Permanent,
}

/// `[[dispatcher.classify]]`: one row of the reply-classification table. Every given
/// condition must hold; an empty one holds for any reply.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRule {
    /// Basic reply codes: exact (`550`) or with `x` for any digit (`55x`, `4xx`).
    #[serde(default)]
    pub codes: Vec<String>,
    /// Enhanced status codes (RFC 3463): exact (`5.1.1`) or a prefix ending in a dot
    /// (`5.7.`).
    #[serde(default)]
    pub enhanced: Vec<String>,
    /// Case-insensitive phrases, any of which in the reply text matches.
    #[serde(default)]
    pub text: Vec<String>,
    /// The bounce category of a matching reply.
    pub category: BounceCategory,
    /// Overrides the reply's code class (4xx temporary, 5xx permanent).
    #[serde(default)]
    pub outcome: Option<Permanence>,
    /// Whether a permanent failure adds the recipient to the account's suppression list.
    #[serde(default)]
    pub suppress: bool,
}

impl ClassifyRule {
    pub fn validate(&self) -> Result<(), String> {
        for code in &self.codes {
            let ok = code.len() == 3
                && code.bytes().enumerate().all(|(i, b)| {
                    b == b'x' || (b.is_ascii_digit() && (i > 0 || matches!(b, b'2'..=b'5')))
                });
            if !ok {
                return Err(format!(
                    "classify: code pattern {code:?} is not like 550 or 5xx"
                ));
            }
        }
        for enhanced in &self.enhanced {
            if !enhanced.starts_with(['4', '5'])
                || enhanced.contains(|c: char| !c.is_ascii_digit() && c != '.')
            {
                return Err(format!(
                    "classify: enhanced code {enhanced:?} is not like 5.1.1 or 5.7."
                ));
            }
        }
        if self.codes.is_empty() && self.enhanced.is_empty() && self.text.is_empty() {
            return Err(format!(
                "classify: a rule for {:?} matches every reply",
                self.category
            ));
        }
        Ok(())
    }

    fn matches(&self, reply: &SmtpReply, lowered_text: &str) -> bool {
        let code = reply.code.to_string();
        let code_ok = self.codes.is_empty()
            || self.codes.iter().any(|pattern| {
                pattern
                    .bytes()
                    .zip(code.bytes())
                    .all(|(p, c)| p == b'x' || p == c)
            });
        let enhanced_ok = self.enhanced.is_empty()
            || reply.enhanced.as_deref().is_some_and(|e| {
                self.enhanced.iter().any(|pattern| {
                    if pattern.ends_with('.') {
                        e.starts_with(pattern.as_str())
                    } else {
                        e == pattern
                    }
                })
            });
        let text_ok = self.text.is_empty()
            || self
                .text
                .iter()
                .any(|phrase| lowered_text.contains(&phrase.to_ascii_lowercase()));
        code_ok && enhanced_ok && text_ok
    }
}

/// What the table makes of a negative reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub category: BounceCategory,
    pub permanent: bool,
    pub suppress: bool,
}

/// The index of the first rule in `rules` that matches `reply`, if any.
pub fn first_match(rules: &[ClassifyRule], reply: &SmtpReply) -> Option<usize> {
    let text = reply.text.to_ascii_lowercase();
    rules.iter().position(|r| r.matches(reply, &text))
}

/// Classifies a negative reply by the first matching rule; without one, by code class.
pub fn classify(rules: &[ClassifyRule], reply: &SmtpReply) -> Verdict {
    let by_code = reply.code >= 500;
    match first_match(rules, reply).map(|i| &rules[i]) {
        Some(rule) => {
            let permanent = match rule.outcome {
                Some(p) => p == Permanence::Permanent,
                None => by_code,
            };
            Verdict {
                category: rule.category,
                permanent,
                suppress: permanent && rule.suppress,
            }
        }
        None => Verdict {
            category: BounceCategory::Other,
            permanent: by_code,
            suppress: false,
        },
    }
}

/// The built-in table (`default_classify.toml`), used when the config gives none.
pub fn default_rules() -> Vec<ClassifyRule> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Table {
        classify: Vec<ClassifyRule>,
    }
    let table: Table =
        toml::from_str(include_str!("default_classify.toml")).expect("the built-in table parses");
    table.classify
}

#[cfg(test)]
mod tests {
    use super::*;

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
