//! What a delivery attempt comes to, as a type (after Stalwart's `Status`): delivered,
//! a temporary failure (retry later) or a permanent one (bounce), each with the MX host,
//! the server's reply and a bounce category the rest of the pipeline acts on.

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
    Timeout(&'static str),
    #[error("rejected: {code} {text}")]
    Rejected { code: u16, text: String },
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

/// The RFC 3463 enhanced status code at the start of a reply text, e.g. `5.1.1`.
pub fn enhanced_code(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let ok = parts.next().is_none()
        && matches!(class, "2" | "4" | "5")
        && (1..=3).contains(&subject.len())
        && (1..=3).contains(&detail.len())
        && subject
            .bytes()
            .chain(detail.bytes())
            .all(|b| b.is_ascii_digit());
    ok.then(|| first.to_owned())
}

/// A reply split into code, enhanced code and text.
pub fn reply(code: u16, text: &str) -> SmtpReply {
    let enhanced = enhanced_code(text);
    let text = match &enhanced {
        Some(e) => text[e.len()..].trim().to_owned(),
        None => text.trim().to_owned(),
    };
    SmtpReply {
        code,
        enhanced,
        text,
    }
}

/// The bounce category of a negative reply, from the enhanced code when there is one
/// (RFC 3463 subjects: 1 addressing, 2 mailbox, 4 routing, 5 protocol, 7 policy), else
/// from the basic code and text.
pub fn categorize(reply: &SmtpReply) -> BounceCategory {
    let text = reply.text.to_ascii_lowercase();
    if text.contains("rate limit")
        || text.contains("too many")
        || (text.contains("try again later") && reply.code == 421)
    {
        return BounceCategory::RateLimited;
    }
    if let Some(enhanced) = &reply.enhanced {
        let mut parts = enhanced.split('.').skip(1);
        let subject = parts.next().unwrap_or("");
        let detail = parts.next().unwrap_or("");
        return match (subject, detail) {
            ("1", "2") => BounceCategory::BadDomain,
            ("1", _) => BounceCategory::BadMailbox,
            ("2", "2") => BounceCategory::MailboxFull,
            ("2", _) => BounceCategory::BadMailbox,
            ("4", _) => BounceCategory::Routing,
            ("5", _) => BounceCategory::Protocol,
            ("7", "10") | ("7", "11") => BounceCategory::TlsRequired,
            ("7", _) => BounceCategory::Policy,
            _ => BounceCategory::Other,
        };
    }
    match reply.code {
        550 | 551 | 553
            if ["user", "mailbox", "recipient", "address"]
                .iter()
                .any(|w| text.contains(w)) =>
        {
            BounceCategory::BadMailbox
        }
        552 => BounceCategory::MailboxFull,
        554 | 550 => BounceCategory::Policy,
        421 => BounceCategory::RateLimited,
        _ => BounceCategory::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_enhanced_codes_from_text() {
        let r = reply(
            550,
            "5.1.1 <a@b.test>: Recipient address rejected: User unknown",
        );
        assert_eq!(r.enhanced.as_deref(), Some("5.1.1"));
        assert!(r.text.starts_with("<a@b.test>"));
        let r = reply(250, "Ok: queued as 1234");
        assert_eq!(r.enhanced, None);
        assert_eq!(enhanced_code("5.1 x"), None);
        assert_eq!(enhanced_code("6.1.1 x"), None);
        assert_eq!(enhanced_code("5.1.1.1 x"), None);
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
        for (code, text, expected) in cases {
            assert_eq!(categorize(&reply(code, text)), expected, "{code} {text}");
        }
    }
}
