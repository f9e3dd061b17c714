//! A submitted message's checks and what is read from it, before anything is written.
//!
//! In: the DATA of one transaction (dot-unstuffed). Out: [`Submitted`], the message as it
//! will be queued, with line ends made CRLF, `X-Sendmill-*` fields read and removed, and
//! `Bcc` removed (RFC 6409 §8.1 lets a submission server remove it; the copies go by the
//! envelope). Or a [`Refusal`] with the SMTP reply that says which field is wrong.
//!
//! The header section is parsed by `mailparse`; addresses by `mailparse::addrparse_header`
//! and then checked like the API's ([`crate::validate`]).
//!
//! Sendmill's fields (removed before sending, read like the API's body fields):
//! - `X-Sendmill-Tags: a, b` → `tags`
//! - `X-Sendmill-Metadata: {"key": "value"}` (a JSON object of strings) → `metadata`
//! - `X-Sendmill-Campaign: spring-sale` → `campaign_id` (the bulk lane, with one-click
//!   unsubscribe headers)
//! - `X-Sendmill-Ip-Pool: warm` → `ip_pool`
//! - `X-Sendmill-Track-Opens: yes|no`, `X-Sendmill-Track-Clicks: yes|no` → tracking for
//!   this message (unset: the account's defaults, as in the API); render then rewrites
//!   the HTML part ([`sendmill_render::submitted`])
//!
//! Any other `X-Sendmill-*` field is refused rather than ignored: a misspelt field must
//! not silently send without its tags.

use crate::validate;
use sendmill_wire::{EmailAddress, MessageContext};
use std::collections::BTreeMap;

/// RFC 5322 §2.1.1: a line is at most 998 characters before its CRLF.
const MAX_LINE: usize = 998;
const MAX_TAGS: usize = 10;
const MAX_METADATA: usize = 20;
const MAX_METADATA_VALUE: usize = 500;

/// A message that passed its checks.
#[derive(Debug)]
pub struct Submitted {
    /// The message to queue: CRLF line ends, Sendmill's fields and `Bcc` removed.
    pub mime: Vec<u8>,
    /// The `From` mailbox, address canonical ([`validate::email`]).
    pub from: EmailAddress,
    /// The `Message-ID` field's value, trimmed, when there is one (for deduplication).
    pub message_id: Option<String>,
    pub context: MessageContext,
    /// `X-Sendmill-Track-Opens`, when given.
    pub track_opens: Option<bool>,
    /// `X-Sendmill-Track-Clicks`, when given.
    pub track_clicks: Option<bool>,
}

/// Why a message is refused: a permanent SMTP reply (554 5.6.0 or 550 5.6.x).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: String,
}

fn refuse(text: impl Into<String>) -> Refusal {
    Refusal {
        code: 554,
        enhanced: "5.6.0",
        text: text.into(),
    }
}

/// Checks `data` and reads it (see the module doc).
pub fn read(data: &[u8]) -> Result<Submitted, Refusal> {
    let data = crlf(data);
    let header_end = header_section_end(&data);
    let (headers, _) = mailparse::parse_headers(&data[..header_end])
        .map_err(|e| refuse(format!("the header section cannot be parsed: {e}")))?;
    if headers.is_empty() {
        return Err(refuse("the message has no header section (RFC 5322)"));
    }
    if let Some(long) = data
        .split(|&b| b == b'\n')
        .find(|line| line.len() > MAX_LINE + 1)
    {
        let _ = long;
        return Err(refuse(format!(
            "a line is longer than {MAX_LINE} characters (RFC 5322 2.1.1)"
        )));
    }

    let mut from = None;
    let mut message_id = None;
    let mut context = MessageContext::default();
    let (mut track_opens, mut track_clicks) = (None, None);
    let switch = |header: &mailparse::MailHeader<'_>| match header
        .get_value()
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "yes" | "true" | "on" => Ok(true),
        "no" | "false" | "off" => Ok(false),
        _ => Err(refuse(format!(
            "{} must be yes or no",
            header.get_key_ref()
        ))),
    };
    for header in &headers {
        // RFC 5322 3.6.8: printable ASCII but the colon. The obsolete form with white
        // space before the colon (`From : x`) is refused: readers disagree on it, and a
        // second `From` hidden that way would pass the sender check.
        let raw_name = header.get_key_ref();
        if raw_name.is_empty()
            || !raw_name
                .bytes()
                .all(|b| (33..=126).contains(&b) && b != b':')
        {
            return Err(refuse(format!(
                "malformed field name {:?} (RFC 5322 3.6.8)",
                raw_name.trim()
            )));
        }
        let name = raw_name.to_ascii_lowercase();
        match name.as_str() {
            "from" => {
                if from.is_some() {
                    return Err(refuse("more than one From field (RFC 5322 3.6)"));
                }
                from = Some(mailbox(header)?);
            }
            "message-id" => message_id = Some(header.get_value().trim().to_owned()),
            "x-sendmill-tags" => {
                let value = header.get_value();
                let tags: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect();
                if tags.len() > MAX_TAGS {
                    return Err(refuse(format!("X-Sendmill-Tags: at most {MAX_TAGS} tags")));
                }
                for tag in &tags {
                    validate::label(tag)
                        .map_err(|m| refuse(format!("X-Sendmill-Tags: {tag:?} {m}")))?;
                }
                context.tags.extend(tags);
            }
            "x-sendmill-metadata" => {
                let metadata: BTreeMap<String, String> = serde_json::from_str(&header.get_value())
                    .map_err(|e| {
                        refuse(format!(
                            "X-Sendmill-Metadata must be a JSON object of strings: {e}"
                        ))
                    })?;
                if metadata.len() > MAX_METADATA {
                    return Err(refuse(format!(
                        "X-Sendmill-Metadata: at most {MAX_METADATA} keys"
                    )));
                }
                for (key, value) in &metadata {
                    validate::label(key)
                        .and_then(|()| validate::header_text(value, MAX_METADATA_VALUE))
                        .map_err(|m| refuse(format!("X-Sendmill-Metadata.{key}: {m}")))?;
                }
                context.metadata = metadata;
            }
            "x-sendmill-campaign" => {
                let value = header.get_value().trim().to_owned();
                validate::label(&value).map_err(|m| refuse(format!("X-Sendmill-Campaign: {m}")))?;
                context.campaign_id = Some(value);
            }
            "x-sendmill-ip-pool" => {
                let value = header.get_value().trim().to_owned();
                validate::label(&value).map_err(|m| refuse(format!("X-Sendmill-Ip-Pool: {m}")))?;
                context.ip_pool = Some(value);
            }
            "x-sendmill-track-opens" => track_opens = Some(switch(header)?),
            "x-sendmill-track-clicks" => track_clicks = Some(switch(header)?),
            other if other.starts_with("x-sendmill-") => {
                return Err(refuse(format!(
                    "unknown field {}: Sendmill reads X-Sendmill-Tags, -Metadata, -Campaign, \
                     -Ip-Pool, -Track-Opens and -Track-Clicks",
                    header.get_key_ref()
                )));
            }
            _ => {}
        }
    }
    let from = from.ok_or_else(|| refuse("the message has no From field (RFC 5322 3.6)"))?;
    let mime = without_fields(&data, header_end, |name| {
        name.eq_ignore_ascii_case(b"bcc")
            || name
                .get(..11)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"x-sendmill-"))
    });
    Ok(Submitted {
        mime,
        from,
        message_id: message_id.filter(|m| !m.is_empty()),
        context,
        track_opens,
        track_clicks,
    })
}

/// The one mailbox of a `From` field, address checked and made canonical.
fn mailbox(header: &mailparse::MailHeader<'_>) -> Result<EmailAddress, Refusal> {
    let list = mailparse::addrparse_header(header)
        .map_err(|e| refuse(format!("From cannot be parsed: {e}")))?;
    let single = match list.iter().collect::<Vec<_>>().as_slice() {
        [mailparse::MailAddr::Single(single)] => (*single).clone(),
        _ => return Err(refuse("From must be exactly one mailbox")),
    };
    let email = validate::email(&single.addr).map_err(|m| refuse(format!("From: {m}")))?;
    Ok(EmailAddress {
        email,
        name: single.display_name,
    })
}

/// `data` with every line ending in CRLF (a bare LF or CR becomes CRLF; RFC 5321 §2.3.8
/// forbids them, but clients send them and receivers would see a broken message).
fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Where the header section ends: after the CRLF of its last field (the empty line
/// follows), or the whole message when it has no body.
fn header_section_end(data: &[u8]) -> usize {
    if data.starts_with(b"\r\n") {
        return 0;
    }
    memchr::memmem::find(data, b"\r\n\r\n").map_or(data.len(), |at| at + 2)
}

/// `data` without the header fields (with their folded lines) whose name `drop` selects;
/// the body is not touched.
fn without_fields(data: &[u8], header_end: usize, drop: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut dropping = false;
    for line in data[..header_end].split_inclusive(|&b| b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            dropping = drop(name.trim_ascii());
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&data[header_end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendmill_fields_are_read_and_removed_and_the_body_is_untouched() {
        let data = b"From: \"Ada L.\" <Ada@Example.TEST>\r\nTo: b@c.test\r\nBcc: secret@c.test,\r\n  other@c.test\r\nX-Sendmill-Tags: welcome, onboarding\r\nX-Sendmill-Metadata: {\"user\": \"42\"}\r\nX-SENDMILL-Campaign: spring\r\nX-Sendmill-Ip-Pool: warm\r\nSubject: hi\r\nMessage-ID: <abc@example.test>\r\n\r\nBcc: in the body stays\r\nX-Sendmill-Tags: so does this\r\n";
        let s = read(data).unwrap();
        assert_eq!(
            String::from_utf8(s.mime).unwrap(),
            "From: \"Ada L.\" <Ada@Example.TEST>\r\nTo: b@c.test\r\nSubject: hi\r\nMessage-ID: <abc@example.test>\r\n\r\nBcc: in the body stays\r\nX-Sendmill-Tags: so does this\r\n"
        );
        assert_eq!(s.from.email, "Ada@example.test");
        assert_eq!(s.from.name.as_deref(), Some("Ada L."));
        assert_eq!(s.message_id.as_deref(), Some("<abc@example.test>"));
        assert_eq!(s.context.tags, ["welcome", "onboarding"]);
        assert_eq!(s.context.metadata["user"], "42");
        assert_eq!(s.context.campaign_id.as_deref(), Some("spring"));
        assert_eq!(s.context.ip_pool.as_deref(), Some("warm"));
        assert_eq!((s.track_opens, s.track_clicks), (None, None));
        let s = read(
            b"From: a@b.test\r\nX-Sendmill-Track-Opens: yes\r\nX-Sendmill-Track-Clicks: No\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s.track_opens, s.track_clicks), (Some(true), Some(false)));
        assert_eq!(s.mime, b"From: a@b.test\r\n\r\n");
    }

    #[test]
    fn bare_line_feeds_become_crlf() {
        let s = read(b"From: a@b.test\nSubject: x\n\nline\n").unwrap();
        assert_eq!(s.mime, b"From: a@b.test\r\nSubject: x\r\n\r\nline\r\n");
    }

    #[test]
    fn what_is_refused_names_the_field() {
        let refused = |data: &[u8]| read(data).unwrap_err().text;
        assert!(refused(b"Subject: x\r\n\r\nbody\r\n").contains("no From"));
        assert!(refused(b"From: a@b.test, c@d.test\r\n\r\n").contains("exactly one mailbox"));
        assert!(refused(b"From: a@b.test\r\nFrom: c@d.test\r\n\r\n").contains("more than one From"));
        assert!(refused(b"From: not an address\r\n\r\n").starts_with("From"));
        assert!(refused(b"From: a@b.test\r\nX-Sendmill-Tag: x\r\n\r\n").contains("X-Sendmill-Tag"));
        assert!(
            refused(b"From: a@b.test\r\nX-Sendmill-Metadata: [1]\r\n\r\n")
                .contains("X-Sendmill-Metadata")
        );
        assert!(refused(b"From: a@b.test\r\nX-Sendmill-Tags: a b\r\n\r\n").contains("\"a b\""));
        assert!(
            refused(b"From: a@b.test\r\nX-Sendmill-Track-Opens: maybe\r\n\r\n")
                .contains("X-Sendmill-Track-Opens must be yes or no")
        );
        let mut long = b"From: a@b.test\r\n\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 1000));
        assert!(refused(&long).contains("998"));
        assert_eq!(read(b"\r\nbody only\r\n").unwrap_err().code, 554);
        // A second From hidden by the obsolete space before the colon, or a line that
        // is no field at all.
        assert!(refused(b"From: a@b.test\r\nFrom : ceo@victim.test\r\n\r\n")
            .contains("malformed field name \"From\""));
        assert!(refused(b"From: a@b.test\r\nnot a field\r\n\r\n").contains("malformed field name"));
    }
}
