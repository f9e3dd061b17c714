//! What a returned message says, read from its bytes alone: a delivery status
//! notification (RFC 3464, or a non-standard bounce of a known MTA), a feedback report
//! (RFC 5965 ARF, or an older abuse report), an auto-reply (RFC 3834, out of office,
//! challenge-response) or none of these. Which message it is about is decided later
//! ([`crate::process`]); this module only collects the clues: the recipient, the status
//! and diagnostic, and the returned message's `Message-ID`, `Return-Path` and any of our
//! signed return addresses found in it.
//!
//! MIME is parsed by `mailparse` (its recursion limit bounds nesting); the DSN and ARF
//! fields are RFC 822-style header blocks and parsed by it too. Non-standard formats and
//! wordings come from the data table `rules.toml`; a diagnostic's category comes from the
//! reply table the dispatcher classifies SMTP replies with
//! (`sendmill_smtp::classify`), so one bounce lands in one category whichever way it
//! came back.
//!
//! Bounded work: a message with more than [`MAX_BOUNDARY_LINES`] possible boundary lines
//! is not parsed (kept unclassified), at most [`MAX_PARTS`] MIME parts are looked at, and
//! text scans stop after [`MAX_SCAN`] bytes.

use mailparse::{MailHeader, MailHeaderMap, ParsedMail};
use sendmill_smtp::classify::{self, ClassifyRule};
use sendmill_wire::{BounceCategory, SmtpReply};
use serde::Deserialize;

/// MIME parts examined per message.
pub const MAX_PARTS: usize = 64;
/// Bytes of text scanned for addresses, codes and phrases.
pub const MAX_SCAN: usize = 256 * 1024;
/// Lines starting `--` (possible MIME boundaries) above which a message is not parsed,
/// so that the MIME tree mailparse builds stays small.
pub const MAX_BOUNDARY_LINES: usize = 2_000;

/// What kind of return a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Delivery failed for good (DSN action `failed`).
    Failed,
    /// Delivery is late and still being tried (DSN action `delayed`).
    Delayed,
    /// A success report (DSN action `delivered`, `relayed`, `expanded`): nothing to do.
    Delivered,
    /// A spam complaint (ARF `abuse`, `fraud`, `virus`, `other`, or an abuse report).
    Complaint,
    /// An automatic reply.
    AutoReply,
    /// None of the above; kept for a person to look at.
    Unclassified,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failed => "failed",
            Kind::Delayed => "delayed",
            Kind::Delivered => "delivered",
            Kind::Complaint => "complaint",
            Kind::AutoReply => "auto_reply",
            Kind::Unclassified => "unclassified",
        }
    }
}

/// The returned (original) message's headers, when the return carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Original {
    pub message_id: Option<String>,
    pub return_path: Option<String>,
    pub to: Option<String>,
    pub feedback_id: Option<String>,
}

/// Everything read from one returned message.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub kind: Kind,
    /// The format recognised: `rfc3464`, `rfc5965`, `rfc3834`, a non-standard bounce
    /// format of `rules.toml` (`postfix`, `exim`, …), `abuse_report`, `out_of_office`,
    /// `challenge_response`, or `none`.
    pub format: String,
    /// The recipient the report is about (Final-Recipient, Original-Rcpt-To, or the
    /// address a bounce names), lower-cased.
    pub recipient: Option<String>,
    /// The receiving server's reply (from `Diagnostic-Code`, or built from `Status` and
    /// the kind when the report has no SMTP reply).
    pub reply: Option<SmtpReply>,
    /// The bounce category of a failure or delay.
    pub category: Option<BounceCategory>,
    /// The MTA that refused the message (`Remote-MTA`, or the host a bounce names).
    pub remote_mta: Option<String>,
    /// The MTA that wrote the report.
    pub reporting_mta: Option<String>,
    /// ARF `Feedback-Type`.
    pub feedback_type: Option<String>,
    /// The returned message's headers.
    pub original: Original,
    /// Addresses in the message that look like our signed return addresses (to verify).
    pub return_addresses: Vec<String>,
    pub subject: String,
    /// Why the message is [`Kind::Unclassified`].
    pub note: Option<String>,
}

/// One non-standard bounce format.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Format {
    /// The format's name, reported as [`Report::format`] (`postfix`, `exim`, …).
    pub name: String,
    /// What a message of this format reports: `failed` or `delayed`.
    pub kind: Kind,
    /// Lower-case phrases of its Subject.
    #[serde(default)]
    pub subject: Vec<String>,
    /// Lower-case phrases of its notice text (before the returned copy).
    #[serde(default)]
    pub body: Vec<String>,
}

/// Phrases that put a diagnostic in a category.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryPhrases {
    /// The category the phrases mean.
    pub category: BounceCategory,
    /// Lower-case phrases of a diagnostic.
    pub text: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoReplyRules {
    /// Header fields (lower-case names) whose presence marks an auto-reply.
    pub headers: Vec<String>,
    /// `Precedence` values of auto-replies.
    pub precedence: Vec<String>,
    /// Subject phrases of out-of-office replies.
    pub out_of_office: Vec<String>,
    /// Phrases of challenge-response systems.
    pub challenge: Vec<String>,
    /// Header fields (lower-case names) of challenge-response systems.
    pub challenge_headers: Vec<String>,
}

/// The recognition table (`rules.toml`) and the shared reply table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Non-standard bounce formats, tried in order.
    pub format: Vec<Format>,
    /// Lines that start the returned copy in a bounce's text.
    pub copy_markers: Vec<String>,
    /// Wordings of diagnostics and their categories, in order.
    pub category: Vec<CategoryPhrases>,
    /// Subject phrases of abuse reports that are not ARF.
    pub complaint_subjects: Vec<String>,
    /// How auto-replies are recognised.
    pub auto_reply: AutoReplyRules,
    /// The dispatcher's reply table.
    #[serde(skip)]
    pub replies: Vec<ClassifyRule>,
}

impl Rules {
    /// The built-in tables.
    pub fn builtin() -> Self {
        let mut rules: Rules =
            toml::from_str(include_str!("rules.toml")).expect("the built-in rules parse");
        rules.replies = classify::default_rules();
        rules
    }

    /// The category of a failure or delay of `kind` with `reply`: [`Rules::categorize`],
    /// except that a failure with X.4.7 (delivery time expired), or with a temporary
    /// status the diagnostic says nothing more about, is `expired`: the MTA gave up
    /// retrying.
    pub fn failure_category(
        &self,
        reply: &SmtpReply,
        with_code: bool,
        kind: Kind,
    ) -> BounceCategory {
        let category = self.categorize(reply, with_code);
        let status = reply.enhanced.as_deref().unwrap_or_default();
        let gave_up = kind == Kind::Failed
            && (status.ends_with(".4.7")
                || (status.starts_with('4')
                    && matches!(category, BounceCategory::Other | BounceCategory::Routing)));
        if gave_up {
            BounceCategory::Expired
        } else {
            category
        }
    }

    /// The category of a diagnostic, in this order: a rule of the reply table the
    /// dispatcher uses that is specific (phrases, or an exact enhanced code); the bounce
    /// wordings of `rules.toml`; the reply table's rule for the class of the code. A
    /// diagnostic without a code of the receiver's (`with_code` false, no enhanced code)
    /// is read by its wording alone: the code was made up from the kind.
    pub fn categorize(&self, reply: &SmtpReply, with_code: bool) -> BounceCategory {
        let text = reply.text.to_lowercase();
        let by_wording = self
            .category
            .iter()
            .find(|c| c.text.iter().any(|p| text.contains(p.as_str())))
            .map(|c| c.category);
        if !with_code && reply.enhanced.is_none() {
            return by_wording.unwrap_or(BounceCategory::Other);
        }
        match classify::first_match(&self.replies, reply).map(|i| &self.replies[i]) {
            Some(rule) if rule.is_specific() => rule.category,
            Some(rule) => by_wording.unwrap_or(rule.category),
            None => by_wording.unwrap_or(BounceCategory::Other),
        }
    }
}

/// Reads `raw`, received from `mail_from` (empty: the null sender).
pub fn analyze(raw: &[u8], mail_from: &str, rules: &Rules) -> Report {
    let mut report = Report {
        kind: Kind::Unclassified,
        format: "none".into(),
        recipient: None,
        reply: None,
        category: None,
        remote_mta: None,
        reporting_mta: None,
        feedback_type: None,
        original: Original::default(),
        return_addresses: return_addresses(&raw[..raw.len().min(MAX_SCAN * 4)]),
        subject: String::new(),
        note: None,
    };
    // mailparse builds the whole MIME tree before anything can be skipped: a body of
    // nothing but boundary lines would be millions of parts. Real returns have a few.
    let boundary_lines = memchr::memmem::find_iter(raw, b"\n--").count();
    if boundary_lines > MAX_BOUNDARY_LINES {
        report.note = Some(format!(
            "more than {MAX_BOUNDARY_LINES} lines that could be MIME boundaries: not parsed"
        ));
        return report;
    }
    let mail = match mailparse::parse_mail(raw) {
        Ok(mail) => mail,
        Err(error) => {
            report.note = Some(format!("malformed MIME: {error}"));
            return report;
        }
    };
    report.subject = mail.headers.get_first_value("Subject").unwrap_or_default();
    let parts: Vec<&ParsedMail> = mail.parts().take(MAX_PARTS).collect();
    let part = |types: &[&str]| {
        parts
            .iter()
            .find(|p| types.contains(&p.ctype.mimetype.as_str()))
            .copied()
    };
    if let Some(returned) = part(&[
        "message/rfc822",
        "message/global",
        "text/rfc822-headers",
        "message/rfc822-headers",
        "message/global-headers",
    ]) {
        report.original = original_headers(&returned.get_body_raw().unwrap_or_default());
    }

    if let Some(feedback) = part(&["message/feedback-report"]) {
        feedback_report(&mut report, feedback);
        return report;
    }
    if let Some(status) = part(&["message/delivery-status", "message/global-delivery-status"]) {
        // A report whose machine-readable part is unusable is kept for a person, not
        // guessed at from its wording.
        delivery_status(&mut report, status, rules);
        return report;
    }
    let text = notice_text(&parts);
    let (notice, copy) = split_at_marker(&text, &rules.copy_markers);
    if report.original == Original::default() {
        report.original = original_headers(copy.trim_start().as_bytes());
    }
    let subject = report.subject.to_lowercase();
    let from = mail
        .headers
        .get_first_value("From")
        .unwrap_or_default()
        .to_lowercase();
    let daemon = mail_from.is_empty()
        || [
            "mailer-daemon",
            "postmaster",
            "mail delivery",
            "maildelivery",
        ]
        .iter()
        .any(|d| from.contains(d));
    let lowered_notice = notice.to_lowercase();
    if daemon {
        if let Some(format) = rules.format.iter().find(|f| {
            f.subject.iter().any(|p| subject.contains(p.as_str()))
                || f.body.iter().any(|p| lowered_notice.contains(p.as_str()))
        }) {
            non_standard_bounce(&mut report, format, notice, rules);
            return report;
        }
    }
    let returned_attached = part(&["message/rfc822", "text/rfc822-headers"]).is_some();
    if returned_attached
        && rules
            .complaint_subjects
            .iter()
            .any(|p| subject.contains(p.as_str()))
    {
        report.kind = Kind::Complaint;
        report.format = "abuse_report".into();
        report.feedback_type = Some("abuse".into());
        report.recipient = report.original.to.clone();
        return report;
    }
    if let Some(format) = auto_reply(&mail.headers, &subject, &lowered_notice, rules) {
        report.kind = Kind::AutoReply;
        report.format = format.into();
        return report;
    }
    report.note = Some(if daemon {
        "from a mailer daemon, but no bounce format matched".into()
    } else {
        "no delivery report, feedback report or auto-reply found".into()
    });
    report
}

/// RFC 5965: the `message/feedback-report` fields.
fn feedback_report(report: &mut Report, part: &ParsedMail) {
    let body = part.get_body_raw().unwrap_or_default();
    let fields = header_blocks(&body);
    let field = |name: &str| {
        fields
            .iter()
            .find_map(|block| block.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v.clone())
    };
    let feedback_type = field("Feedback-Type")
        .unwrap_or_else(|| "abuse".into())
        .trim()
        .to_ascii_lowercase();
    report.format = "rfc5965".into();
    report.reporting_mta = field("Reporting-MTA").map(|v| strip_type(&v));
    report.recipient = field("Original-Rcpt-To")
        .or_else(|| field("Removal-Recipient"))
        .or_else(|| report.original.to.clone())
        .and_then(|a| first_address(&a));
    report.feedback_type = Some(feedback_type.clone());
    match feedback_type.as_str() {
        "abuse" | "fraud" | "virus" | "other" => report.kind = Kind::Complaint,
        other => {
            // `not-spam` undoes a complaint; `auth-failure` is a DMARC failure report
            // (RFC 6591): neither is a person calling our mail spam.
            report.kind = Kind::Unclassified;
            report.note = Some(format!(
                "feedback report of type {other:?}, not a complaint"
            ));
        }
    }
}

/// RFC 3464: the per-message and per-recipient fields of a `message/delivery-status`.
fn delivery_status(report: &mut Report, part: &ParsedMail, rules: &Rules) {
    let body = part.get_body_raw().unwrap_or_default();
    let blocks = header_blocks(&body);
    let per_message = blocks.first().cloned().unwrap_or_default();
    // Recipient fields: every block after the first, and the first too when it holds
    // them (some MTAs leave out the blank line between the two parts).
    let recipient_field = |(name, _): &(String, String)| {
        ["Final-Recipient", "Original-Recipient", "Action", "Status"]
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f))
    };
    let per_recipient: Vec<Vec<(String, String)>> = blocks
        .iter()
        .enumerate()
        .filter(|(i, b)| *i > 0 || b.iter().any(recipient_field))
        .map(|(_, b)| b.clone())
        .collect();
    let get = |block: &[(String, String)], name: &str| {
        block
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    // The recipient that failed, else the one delayed, else the first.
    let action_of = |block: &[(String, String)]| {
        get(block, "Action")
            .map(|a| a.to_ascii_lowercase())
            .or_else(|| {
                get(block, "Status").map(|s| match s.chars().next() {
                    Some('5') => "failed".into(),
                    Some('4') => "delayed".into(),
                    _ => "delivered".into(),
                })
            })
    };
    let chosen = ["failed", "delayed"]
        .iter()
        .find_map(|want| {
            per_recipient
                .iter()
                .find(|b| action_of(b).as_deref() == Some(*want))
        })
        .or(per_recipient.first());
    let Some(block) = chosen else {
        report.note = Some("delivery-status part without recipient fields".into());
        return;
    };
    report.format = "rfc3464".into();
    report.reporting_mta = get(&per_message, "Reporting-MTA").map(|v| strip_type(&v));
    report.remote_mta = get(block, "Remote-MTA").map(|v| strip_type(&v));
    report.recipient = get(block, "Final-Recipient")
        .or_else(|| get(block, "Original-Recipient"))
        .and_then(|v| first_address(&strip_type(&v)));
    let action = action_of(block).unwrap_or_default();
    // RFC 3464 §2.3.3: failed, delayed, delivered, relayed, expanded. Other words
    // (`expired`, `deliverable`) are read with the status: 2.x.x got there, the rest
    // did not.
    let status_class = get(block, "Status").and_then(|s| s.trim().chars().next());
    report.kind = match action.as_str() {
        a if a.starts_with("failed") => Kind::Failed,
        a if a.starts_with("delayed") => Kind::Delayed,
        a if ["delivered", "relayed", "expanded"]
            .iter()
            .any(|d| a.starts_with(d)) =>
        {
            Kind::Delivered
        }
        _ if status_class == Some('2') => Kind::Delivered,
        _ => Kind::Failed,
    };
    let status = get(block, "Status").and_then(|s| enhanced_code(&s));
    let diagnostic = get(block, "Diagnostic-Code").map(|d| strip_type(&d));
    if report.kind != Kind::Delivered {
        let diagnostic = diagnostic.as_deref().unwrap_or("");
        let (reply, with_code) = reply_of(diagnostic, status, report.kind);
        // RFC 3464 `failed` with a 4.x.x status: the MTA gave up on a temporary failure
        // (4.4.7, delivery time expired, mostly).
        let gave_up = report.kind == Kind::Failed
            && reply
                .enhanced
                .as_deref()
                .is_some_and(|e| e.starts_with('4'));
        report.category = Some(if gave_up {
            BounceCategory::Expired
        } else {
            rules.categorize(&reply, with_code)
        });
        report.reply = Some(reply);
    }
}

/// A bounce of a known MTA without a delivery-status part: the recipient and the
/// diagnostic are read from the notice text.
fn non_standard_bounce(report: &mut Report, format: &Format, notice: &str, rules: &Rules) {
    report.kind = format.kind;
    report.format = format.name.clone();
    report.recipient = notice_recipient(notice, &report.return_addresses);
    let diagnostic = diagnostic_line(notice, rules).unwrap_or_default();
    report.remote_mta = remote_host(notice);
    // qmail and Exchange put the status beside the text: `(#5.2.2)`, `<host #5.1.1>`.
    let status = enhanced_code(notice);
    let (reply, with_code) = reply_of(&diagnostic, status, format.kind);
    report.category = Some(rules.failure_category(&reply, with_code, format.kind));
    report.reply = Some(reply);
}

/// Which kind of auto-reply, if the message is one.
fn auto_reply(
    headers: &[MailHeader],
    subject: &str,
    body: &str,
    rules: &Rules,
) -> Option<&'static str> {
    let has = |names: &[String]| {
        headers
            .iter()
            .any(|h| names.iter().any(|n| h.get_key().eq_ignore_ascii_case(n)))
    };
    let a = &rules.auto_reply;
    if has(&a.challenge_headers) || a.challenge.iter().any(|p| body.contains(p.as_str())) {
        return Some("challenge_response");
    }
    if a.out_of_office.iter().any(|p| subject.contains(p.as_str())) {
        return Some("out_of_office");
    }
    let auto_submitted = headers
        .get_first_value("Auto-Submitted")
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| !v.is_empty() && v != "no");
    let precedence = headers
        .get_first_value("Precedence")
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| a.precedence.contains(&v));
    if auto_submitted || precedence || has(&a.headers) {
        return Some("rfc3834");
    }
    None
}

/// The reply a report's diagnostic stands for: `550 5.1.1 text` when the diagnostic is
/// an SMTP reply; otherwise a basic code from the status (or the kind) and the text.
/// The flag says whether the code was the receiver's.
fn reply_of(diagnostic: &str, status: Option<String>, kind: Kind) -> (SmtpReply, bool) {
    let diagnostic = diagnostic.trim();
    let (code, rest) = match diagnostic.get(..3).and_then(|c| c.parse::<u16>().ok()) {
        Some(code @ 400..=599)
            if diagnostic
                .as_bytes()
                .get(3)
                .is_none_or(|b| matches!(b, b' ' | b'-')) =>
        {
            (Some(code), diagnostic[3..].trim_start_matches(['-', ' ']))
        }
        _ => (None, diagnostic),
    };
    let enhanced = enhanced_code(rest).or(status);
    let text = match enhanced.as_deref() {
        Some(e) if rest.starts_with(e) => rest[e.len()..].trim_start().to_owned(),
        _ => rest.to_owned(),
    };
    let with_code = code.is_some();
    let code = code.unwrap_or(match (enhanced.as_deref(), kind) {
        (Some(e), _) if e.starts_with('4') => 450,
        (Some(e), _) if e.starts_with('5') => 550,
        (_, Kind::Delayed) => 450,
        _ => 550,
    });
    let reply = SmtpReply {
        code,
        enhanced,
        text: text.chars().take(1000).collect(),
    };
    (reply, with_code)
}

/// The first RFC 3463 enhanced status code (`5.1.1`) in `text`.
fn enhanced_code(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !bytes[i - 1].is_ascii_alphanumeric() && bytes[i - 1] != b'.';
        if boundary && matches!(bytes[i], b'2' | b'4' | b'5') && bytes.get(i + 1) == Some(&b'.') {
            let mut j = i + 2;
            let digits = |j: &mut usize| {
                let start = *j;
                while *j < bytes.len() && bytes[*j].is_ascii_digit() && *j - start < 3 {
                    *j += 1;
                }
                *j > start
            };
            if digits(&mut j) && bytes.get(j) == Some(&b'.') {
                j += 1;
                if digits(&mut j)
                    && bytes
                        .get(j)
                        .is_none_or(|b| !b.is_ascii_digit() && *b != b'.')
                {
                    return Some(text[i..j].to_owned());
                }
            }
        }
        i += 1;
    }
    None
}

/// `rfc822; a@b.test` → `a@b.test`; `dns; mx.b.test` → `mx.b.test`.
fn strip_type(value: &str) -> String {
    match value.split_once(';') {
        Some((kind, rest)) if !kind.contains(' ') && kind.len() < 20 => rest.trim().to_owned(),
        _ => value.trim().to_owned(),
    }
}

/// Header blocks separated by blank lines (DSN and ARF fields), each as (name, value).
fn header_blocks(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let body = &body[..body.len().min(MAX_SCAN)];
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let block = format!("{}\n\n", block.trim_start_matches('\n'));
            let (headers, _) = mailparse::parse_headers(block.as_bytes()).ok()?;
            let fields: Vec<(String, String)> = headers
                .iter()
                .map(|h| (h.get_key(), h.get_value()))
                .collect();
            (!fields.is_empty()).then_some(fields)
        })
        .collect()
}

/// The headers of a returned message (or of its header section).
fn original_headers(bytes: &[u8]) -> Original {
    let bytes = &bytes[..bytes.len().min(MAX_SCAN)];
    let Ok((headers, _)) = mailparse::parse_headers(bytes) else {
        return Original::default();
    };
    let get = |name: &str| {
        headers
            .get_first_value(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    Original {
        message_id: get("Message-ID"),
        return_path: get("Return-Path").and_then(|v| first_address(&v)),
        to: get("To").and_then(|v| first_address(&v)),
        feedback_id: get("Feedback-ID"),
    }
}

/// The human-readable text of a return: its text/plain parts (else the whole body when
/// it is not multipart), up to [`MAX_SCAN`] bytes.
fn notice_text(parts: &[&ParsedMail]) -> String {
    let mut text = String::new();
    for part in parts {
        let plain = part.ctype.mimetype == "text/plain"
            || (part.subparts.is_empty()
                && !part.ctype.mimetype.starts_with("message/")
                && part.ctype.mimetype.starts_with("text/"));
        if plain && text.len() < MAX_SCAN {
            if let Ok(body) = part.get_body() {
                let room = MAX_SCAN - text.len();
                let end = floor_char_boundary(&body, room);
                text.push_str(&body[..end]);
                text.push('\n');
            }
            if part.ctype.mimetype == "text/plain" {
                // One plain text is the notice; an HTML alternative says the same.
                break;
            }
        }
    }
    text.replace("\r\n", "\n")
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// The notice and the returned copy after the first copy marker.
fn split_at_marker<'a>(text: &'a str, markers: &[String]) -> (&'a str, &'a str) {
    let lower = text.to_lowercase();
    // Lower-casing can change byte lengths outside ASCII; find markers (ASCII) on a copy
    // of the same length only.
    if lower.len() != text.len() {
        return (text, "");
    }
    let at = markers.iter().filter_map(|m| lower.find(m.as_str())).min();
    match at {
        Some(at) => {
            let copy_start = text[at..].find('\n').map_or(text.len(), |n| at + n + 1);
            (&text[..at], &text[copy_start..])
        }
        None => (text, ""),
    }
}

/// The address a bounce notice names: the first one that is not a daemon's or ours.
fn notice_recipient(notice: &str, ours: &[String]) -> Option<String> {
    addresses(notice).into_iter().find(|a| {
        let local = a.split('@').next().unwrap_or_default();
        !ours.contains(a)
            && !["mailer-daemon", "postmaster", "noreply", "no-reply"].contains(&local)
            && !local.starts_with("b+")
            && !local.starts_with("unsubscribe+")
    })
}

/// The line of a notice that says why: the first with an SMTP reply code, else the first
/// with a category phrase, else the first non-empty line after an address.
fn diagnostic_line(notice: &str, rules: &Rules) -> Option<String> {
    let lines: Vec<&str> = notice.lines().map(str::trim).collect();
    let smtp = lines.iter().position(|l| has_reply_code(l));
    if let Some(i) = smtp {
        // A reply wrapped over the next lines (Postfix indents them).
        let mut text = lines[i].to_owned();
        for next in lines.iter().skip(i + 1).take(3) {
            if next.is_empty() || has_reply_code(next) || next.starts_with("--") {
                break;
            }
            text.push(' ');
            text.push_str(next);
        }
        return Some(from_reply_code(&text));
    }
    let phrases = rules.category.iter().flat_map(|c| c.text.iter());
    // Lines with words besides addresses (`<a@quota.test>:` is no diagnostic).
    let lowered: Vec<Option<String>> = lines
        .iter()
        .map(|l| {
            let words = l
                .split_whitespace()
                .filter(|w| !w.contains('@'))
                .flat_map(str::chars)
                .filter(|c| c.is_alphabetic())
                .count();
            (words >= 3).then(|| l.to_lowercase())
        })
        .collect();
    for phrase in phrases {
        let found = lowered
            .iter()
            .position(|l| l.as_deref().is_some_and(|l| l.contains(phrase.as_str())));
        if let Some(i) = found {
            return Some(lines[i].to_owned());
        }
    }
    None
}

/// Whether a line holds an SMTP reply: a 4xx/5xx code followed by a space or a dash, at
/// a word boundary.
fn has_reply_code(line: &str) -> bool {
    reply_code_at(line).is_some()
}

fn reply_code_at(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    (0..b.len().saturating_sub(3)).find(|&i| {
        (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'.' && b[i - 1] != b'[')
            && matches!(b[i], b'4' | b'5')
            && b[i + 1].is_ascii_digit()
            && b[i + 2].is_ascii_digit()
            && matches!(b[i + 3], b' ' | b'-')
            && b.get(i + 4)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'<' || *c == b'#')
    })
}

/// The reply part of a diagnostic line (`... said: 550 5.1.1 text` → `550 5.1.1 text`).
fn from_reply_code(line: &str) -> String {
    match reply_code_at(line) {
        Some(i) => line[i..].to_owned(),
        None => line.to_owned(),
    }
}

/// The host a Postfix/Exim/qmail notice names (`host mx.b.test[192.0.2.1] said:`,
/// `Remote host said:`, `mx.b.test [192.0.2.1]:`).
fn remote_host(notice: &str) -> Option<String> {
    // ASCII case folding keeps byte offsets (full Unicode lower-casing can change them).
    let lower = notice.to_ascii_lowercase();
    let at = lower.find("host ")? + 5;
    let token: String = notice[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .collect();
    (token.contains('.') && !token.ends_with('.')).then(|| token.to_ascii_lowercase())
}

/// The first address in a header value or phrase (`"A" <a@b.test>`, `<a@b.test>`, bare).
fn first_address(value: &str) -> Option<String> {
    addresses(value).into_iter().next()
}

/// Addresses in free text, lower-cased, in order, at most 32.
fn addresses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for token in text.split(|c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '<' | '>' | '"' | '\'' | ',' | ';' | '(' | ')' | '[' | ']'
            )
    }) {
        let token = token.trim_matches(|c: char| matches!(c, ':' | '.' | '!' | '?'));
        let Some((local, domain)) = token.rsplit_once('@') else {
            continue;
        };
        let domain_ok = domain.contains('.')
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
        let local = local.strip_prefix("mailto:").unwrap_or(local);
        let local = local.rsplit(':').next().unwrap_or(local);
        if !local.is_empty() && local.len() <= 64 && domain_ok && !local.contains('@') {
            let address = format!("{local}@{domain}").to_lowercase();
            if !found.contains(&address) {
                found.push(address);
            }
            if found.len() == 32 {
                break;
            }
        }
    }
    found
}

/// Addresses in the message shaped like our signed return addresses
/// (`b+<32 hex>-<16 hex>@…`, `unsubscribe+…`), lower-cased, at most 8: the candidates
/// for matching when the envelope does not name the message.
fn return_addresses(raw: &[u8]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let lower = raw.to_ascii_lowercase();
    for prefix in [b"b+".as_slice(), b"unsubscribe+".as_slice()] {
        for at in memchr::memmem::find_iter(&lower, prefix) {
            if at > 0 && (lower[at - 1].is_ascii_alphanumeric() || lower[at - 1] == b'+') {
                continue;
            }
            let start = at + prefix.len();
            let token = &lower[start..lower.len().min(start + 33 + 16 + 256)];
            let hex = |s: &[u8]| s.iter().all(u8::is_ascii_hexdigit);
            if token.len() < 50
                || !hex(&token[..32])
                || token[32] != b'-'
                || !hex(&token[33..49])
                || token[49] != b'@'
            {
                continue;
            }
            let domain: Vec<u8> = token[50..]
                .iter()
                .copied()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'-')
                .collect();
            let address = format!(
                "{}{}@{}",
                String::from_utf8_lossy(prefix),
                String::from_utf8_lossy(&token[..49]),
                String::from_utf8_lossy(&domain).trim_end_matches('.')
            );
            if !domain.is_empty() && !found.contains(&address) {
                found.push(address);
            }
            if found.len() == 8 {
                return found;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_are_found_at_word_boundaries() {
        assert_eq!(enhanced_code("550 5.1.1 <a@b> no"), Some("5.1.1".into()));
        assert_eq!(enhanced_code("#4.4.7 timeout"), Some("4.4.7".into()));
        assert_eq!(enhanced_code("version 10.5.1.2"), None);
        assert_eq!(enhanced_code("1.5.1.1"), None);
        assert_eq!(enhanced_code("nothing"), None);
    }

    #[test]
    fn diagnostics_become_replies() {
        let (r, given) = reply_of("550 5.1.1 <a@b.test>: user unknown", None, Kind::Failed);
        assert_eq!(
            (r.code, r.enhanced.as_deref(), given),
            (550, Some("5.1.1"), true)
        );
        assert_eq!(r.text, "<a@b.test>: user unknown");
        let (r, given) = reply_of("mailbox full", Some("4.2.2".into()), Kind::Delayed);
        assert_eq!(
            (r.code, r.enhanced.as_deref(), given),
            (450, Some("4.2.2"), false)
        );
        let (r, _) = reply_of("550-5.7.1 blocked", None, Kind::Failed);
        assert_eq!((r.code, r.enhanced.as_deref()), (550, Some("5.7.1")));
        let (r, given) = reply_of("", None, Kind::Delayed);
        assert_eq!((r.code, r.enhanced, given), (450, None, false));
    }

    #[test]
    fn addresses_are_read_from_free_text() {
        assert_eq!(
            addresses("<Ada@Example.test>: host mx[1.2.3.4] said: to \"b@c.test\"."),
            vec!["ada@example.test", "b@c.test"]
        );
        assert_eq!(first_address("rfc822; x@y.test"), Some("x@y.test".into()));
        assert_eq!(first_address("no address here @ all"), None);
    }

    #[test]
    fn return_addresses_are_found_anywhere() {
        let hex = "0193a1b2c3d4e5f60718293a4b5c6d7e";
        let raw = format!("Return-Path: <B+{hex}-0011223344556677@Bounces.A.test>\r\nx: unsubscribe+{hex}-8899aabbccddeeff@bounces.a.test?subject=x");
        assert_eq!(
            return_addresses(raw.as_bytes()),
            vec![
                format!("b+{hex}-0011223344556677@bounces.a.test"),
                format!("unsubscribe+{hex}-8899aabbccddeeff@bounces.a.test")
            ]
        );
        assert!(return_addresses(b"b+short@x.test jb+nothing").is_empty());
    }

    #[test]
    fn the_builtin_rules_load_and_every_phrase_is_lower_case() {
        let rules = Rules::builtin();
        let phrases = rules
            .format
            .iter()
            .flat_map(|f| f.subject.iter().chain(&f.body))
            .chain(rules.category.iter().flat_map(|c| &c.text))
            .chain(&rules.copy_markers)
            .chain(&rules.complaint_subjects)
            .chain(&rules.auto_reply.out_of_office)
            .chain(&rules.auto_reply.challenge);
        for phrase in phrases {
            assert_eq!(phrase, &phrase.to_lowercase(), "{phrase}");
        }
    }
}
