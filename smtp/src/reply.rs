//! What an SMTP server answers (RFC 5321 §4.2): reply lines, whole replies, and the
//! enhanced status code (RFC 3463) at the start of a reply's text. Shared by the client
//! (the dispatcher reads replies) and any server (which writes them).

use std::fmt;

/// One line of a server's reply: `250-text` or `250 text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyLine {
    pub code: u16,
    /// A hyphen after the code: more lines of the same reply follow.
    pub more: bool,
    pub text: String,
}

impl ReplyLine {
    /// Reads one line, its CRLF included or not; `None` when it does not start with a
    /// three-digit code. Text that is not UTF-8 is kept with replacement characters.
    pub fn parse(line: &[u8]) -> Option<Self> {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        let code = text
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))?
            .parse()
            .ok()?;
        Some(Self {
            code,
            more: text.as_bytes().get(3) == Some(&b'-'),
            text: text.get(4..).unwrap_or("").to_owned(),
        })
    }
}

/// An RFC 3463 enhanced status code: `class.subject.detail`, e.g. `5.1.1` (bad
/// destination mailbox address). Class 2 is success, 4 a persistent transient failure,
/// 5 a permanent one; subject and detail are 1 to 3 digits, written without leading
/// zeros (a word like `5.01.1` is not taken for one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatusCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedStatusCode {
    /// Parses one word; `None` unless it is a code as above.
    pub fn parse(word: &str) -> Option<Self> {
        let mut parts = word.split('.');
        let class = match parts.next()? {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        let number = |part: &str| -> Option<u16> {
            let canonical = (1..=3).contains(&part.len())
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'));
            canonical.then(|| part.parse().ok()).flatten()
        };
        let subject = number(parts.next()?)?;
        let detail = number(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            class,
            subject,
            detail,
        })
    }

    /// Class 5: the failure is permanent.
    pub fn is_permanent(self) -> bool {
        self.class == 5
    }
}

impl fmt::Display for EnhancedStatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A whole reply: its code, the enhanced status code its text starts with (if any) and
/// the rest of the text, its lines joined with spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<EnhancedStatusCode>,
    pub text: String,
}

impl Reply {
    /// Splits `text` (the lines' texts joined) into enhanced code and the rest.
    pub fn new(code: u16, text: &str) -> Self {
        // Trimmed first: the code is the first word, and servers that put two spaces (or
        // other white space) before it would otherwise have its length cut from the
        // wrong place, mangling the text or, on a multi-byte space, splitting a character.
        let text = text.trim();
        let first = text.split_whitespace().next().unwrap_or("");
        match EnhancedStatusCode::parse(first) {
            Some(enhanced) => Self {
                code,
                enhanced: Some(enhanced),
                text: text[first.len()..].trim().to_owned(),
            },
            None => Self {
                code,
                enhanced: None,
                text: text.to_owned(),
            },
        }
    }

    /// The reply made of `lines` (each line's text, as [`ReplyLine::text`], the basic
    /// code already cut off). Servers repeat the enhanced code on every line of a
    /// multi-line reply (Gmail's `421-4.7.28 …` over five lines, Microsoft's, Postfix's);
    /// RFC 3463 §3 gives it once per reply, so the continuation lines' copies are
    /// removed, and the lines are trimmed and joined with one space: the text users
    /// read in timelines, webhooks and dashboards is the sentence the server wrote.
    pub fn from_lines(code: u16, lines: &[String]) -> Self {
        let mut joined = String::new();
        for line in lines {
            let mut line = line.trim();
            // The first line with text keeps its code: it is the reply's.
            if !joined.is_empty() {
                let first = line.split_whitespace().next().unwrap_or("");
                if EnhancedStatusCode::parse(first).is_some() {
                    line = line[first.len()..].trim_start();
                }
            }
            if line.is_empty() {
                continue;
            }
            if !joined.is_empty() {
                joined.push(' ');
            }
            joined.push_str(line);
        }
        Self::new(code, &joined)
    }

    /// 2xx: the command succeeded.
    pub fn is_positive(&self) -> bool {
        self.code / 100 == 2
    }
}

impl From<Reply> for sendmill_wire::SmtpReply {
    fn from(reply: Reply) -> Self {
        sendmill_wire::SmtpReply {
            code: reply.code,
            enhanced: reply.enhanced.map(|e| e.to_string()),
            text: reply.text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn white_space_before_the_enhanced_code_is_not_part_of_it() {
        for text in [
            "  4.7.0 try later",
            "\u{2003}\u{2003}4.7.0 try later",
            "4.7.0  try later ",
        ] {
            let split = Reply::new(421, text);
            assert_eq!(
                split.enhanced.map(|e| e.to_string()).as_deref(),
                Some("4.7.0"),
                "{text:?}"
            );
            assert_eq!(split.text, "try later", "{text:?}");
        }
    }

    #[test]
    fn splits_enhanced_codes_from_text() {
        let r = Reply::new(
            550,
            "5.1.1 <a@b.test>: Recipient address rejected: User unknown",
        );
        assert_eq!(
            r.enhanced,
            Some(EnhancedStatusCode {
                class: 5,
                subject: 1,
                detail: 1
            })
        );
        assert!(r.text.starts_with("<a@b.test>"));
        assert_eq!(Reply::new(250, "Ok: queued as 1234").enhanced, None);
        for not_one in [
            "5.1", "6.1.1", "5.1.1.1", "5.01.1", "5.1.1000", "5..1", "x.1.1",
        ] {
            assert_eq!(EnhancedStatusCode::parse(not_one), None, "{not_one}");
        }
        assert_eq!(
            EnhancedStatusCode::parse("4.7.0").unwrap().to_string(),
            "4.7.0"
        );
        assert_eq!(
            EnhancedStatusCode::parse("5.7.26").unwrap().to_string(),
            "5.7.26"
        );
    }

    #[test]
    fn multi_line_replies_are_joined_without_the_repeated_codes() {
        // Gmail's rate-limit reply, as sent (its lines' texts after `421-` / `421 `).
        let lines: Vec<String> = [
            "4.7.28 [192.0.2.1      15] Our system has detected an unusual rate of",
            "4.7.28 unsolicited mail originating from your IP address. To protect our",
            "4.7.28 users from spam, mail sent from your IP address has been temporarily",
            "4.7.28 rate limited. For more information, go to",
            "4.7.28  https://support.google.com/mail/?p=UnsolicitedRateLimitError to",
            "4.7.28 review our Bulk Email Senders Guidelines. a1si123 - gsmtp",
        ]
        .map(String::from)
        .into();
        let reply = Reply::from_lines(421, &lines);
        assert_eq!(
            reply.enhanced.map(|e| e.to_string()).as_deref(),
            Some("4.7.28")
        );
        assert_eq!(
            reply.text,
            "[192.0.2.1      15] Our system has detected an unusual rate of unsolicited mail \
             originating from your IP address. To protect our users from spam, mail sent \
             from your IP address has been temporarily rate limited. For more information, \
             go to https://support.google.com/mail/?p=UnsolicitedRateLimitError to review \
             our Bulk Email Senders Guidelines. a1si123 - gsmtp"
        );
        // Lines without codes, an empty line, and a code word later in a line (kept).
        let leading_empty: Vec<String> = ["", "5.1.1 user unknown", "5.1.1 here"]
            .map(String::from)
            .into();
        let reply = Reply::from_lines(550, &leading_empty);
        assert_eq!(
            reply.enhanced.map(|e| e.to_string()).as_deref(),
            Some("5.1.1")
        );
        assert_eq!(reply.text, "user unknown here");
        let plain: Vec<String> = ["mx.test rejects", "", "  see 5.7.1 above  "]
            .map(String::from)
            .into();
        assert_eq!(
            Reply::from_lines(554, &plain).text,
            "mx.test rejects see 5.7.1 above"
        );
    }

    #[test]
    fn reads_reply_lines() {
        let line = ReplyLine::parse(b"250-mx.test greets you\r\n").unwrap();
        assert_eq!(
            (line.code, line.more, line.text.as_str()),
            (250, true, "mx.test greets you")
        );
        let last = ReplyLine::parse(b"250 SIZE 1000").unwrap();
        assert!(!last.more);
        assert_eq!(ReplyLine::parse(b"25 x"), None);
        assert_eq!(ReplyLine::parse(b"abc x"), None);
    }
}
