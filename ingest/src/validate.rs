//! Validation of what callers put into a message: addresses, display names, header names
//! and values, tags and metadata. Each check answers with a sentence for the caller; the
//! handler adds the field path. Nothing here allocates on the success path.

/// Header names the platform writes itself; a caller setting them could forge or break
/// the message.
const RESERVED_HEADERS: &[&str] = &[
    "bcc",
    "cc",
    "content-transfer-encoding",
    "content-type",
    "date",
    "dkim-signature",
    "from",
    "message-id",
    "mime-version",
    "received",
    "reply-to",
    "return-path",
    "sender",
    "subject",
    "to",
];

pub const MAX_HEADER_VALUE: usize = 2_000;
pub const MAX_SUBJECT: usize = 2_000;
pub const MAX_NAME: usize = 256;

pub use sendmill_wire::address::{domain, domain_name, domain_unicode, email, needs_smtputf8};

/// Text that becomes (part of) a header: no line breaks or other control characters,
/// which is what stops header injection.
pub fn header_text(value: &str, max: usize) -> Result<(), &'static str> {
    if value.chars().count() > max {
        return Err("value is too long");
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err("value contains a line break or control character");
    }
    Ok(())
}

/// Header lines may not pass 998 characters (RFC 5322 §2.1.1), and a header is folded
/// only at white space: a value needs a space at least this often.
pub const MAX_UNBROKEN: usize = 900;

/// A custom header value: one line of text that can be folded.
pub fn header_value(value: &str) -> Result<(), &'static str> {
    header_text(value, MAX_HEADER_VALUE)?;
    if value.split([' ', '\t']).any(|run| run.len() > MAX_UNBROKEN) {
        return Err("value has more than 900 characters without a space, so it cannot be folded");
    }
    Ok(())
}

/// A custom header name: RFC 5322 field name, not one the platform writes.
pub fn header_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 76 {
        return Err("header name must be 1 to 76 characters");
    }
    if !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err("header name has a character that is not allowed");
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err("header is set by Sendmill and cannot be overridden");
    }
    Ok(())
}

/// Tags and metadata keys: short, visible, no separators that break exports.
pub fn label(value: &str) -> Result<(), &'static str> {
    sendmill_platform::api::check_label(value)
}

/// File types mail filters quarantine (and malware uses): refused outright.
const BLOCKED_EXTENSIONS: &[&str] = &[
    "exe", "bat", "cmd", "com", "scr", "pif", "vbs", "vbe", "js", "jse", "wsf", "wsh", "msi",
    "msp", "cpl", "jar", "ps1", "hta", "lnk", "reg", "dll",
];

/// An attachment's file name: a plain name, no path, no control characters, not an
/// executable type.
pub fn filename(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.chars().count() > 255 {
        return Err("file name must be 1 to 255 characters");
    }
    if name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        return Err("file name must not contain a path or control characters");
    }
    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    if extension.is_some_and(|e| BLOCKED_EXTENSIONS.contains(&e.as_str())) {
        return Err("this file type is not allowed");
    }
    Ok(())
}

/// A MIME type `type/subtype` of token characters.
pub fn content_type(value: &str) -> Result<(), &'static str> {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match value.split_once('/') {
        Some((kind, sub)) if value.len() <= 127 && token(kind) && token(sub) => Ok(()),
        _ => Err("must be a MIME type such as application/pdf"),
    }
}

/// A Content-ID for inline parts, as the caller may write it: `logo` or `<logo>` (the
/// form several other APIs and libraries use, RFC 2392's msg-id brackets), surrounding
/// white space dropped. Answers the bare id, which `cid:` URLs name; it must then be a
/// short dot-atom of letters, digits and `. _ @ -`.
pub fn content_id(value: &str) -> Result<&str, &'static str> {
    let value = value.trim();
    let value = value
        .strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .unwrap_or(value);
    if value.is_empty()
        || value.len() > 100
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
    {
        return Err("must be 1 to 100 letters, digits or . _ @ - (angle brackets optional)");
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_fields_are_checked() {
        assert!(filename("invoice 2026.pdf").is_ok());
        assert!(filename("Übersicht.xlsx").is_ok());
        for bad in [
            "",
            "../etc/passwd",
            "a\\b.txt",
            "x\r\n.txt",
            "setup.EXE",
            "run.js",
        ] {
            assert!(filename(bad).is_err(), "{bad:?}");
        }
        assert!(content_type("application/pdf").is_ok());
        assert!(content_type("image/svg+xml").is_ok());
        for bad in ["pdf", "a/b/c", "text/plain; charset=utf-8", "text/\r\nX: y"] {
            assert!(content_type(bad).is_err(), "{bad:?}");
        }
        assert_eq!(content_id("logo@example.test"), Ok("logo@example.test"));
        assert_eq!(content_id("<logo>"), Ok("logo"));
        assert_eq!(content_id(" <logo.png> "), Ok("logo.png"));
        for bad in ["<>", "<logo", "<<logo>>", "lo go", "<lo\r\nX: y>"] {
            assert!(content_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_text_rejects_injection() {
        assert!(header_text("Hello", 10).is_ok());
        assert!(header_text("tab\tok", 10).is_ok());
        for bad in ["a\r\nBcc: x@y", "a\nb", "a\rb", "nul\0"] {
            assert!(header_text(bad, 100).is_err(), "{bad:?}");
        }
        assert!(header_text(&"x".repeat(11), 10).is_err());
        assert!(header_value(&"word ".repeat(300)).is_ok());
        assert!(header_value(&"x".repeat(901)).is_err());
    }

    #[test]
    fn reserved_and_malformed_header_names_are_rejected() {
        assert!(header_name("X-Campaign").is_ok());
        assert!(header_name("List-Unsubscribe").is_ok());
        for bad in [
            "From",
            "bcc",
            "DKIM-Signature",
            "Message-ID",
            "X Bad",
            "X:Bad",
            "",
            "Ünï",
        ] {
            assert!(header_name(bad).is_err(), "{bad}");
        }
    }
}
