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

/// An address as it is queued: the caller's address in its canonical form.
///
/// - Surrounding white space is dropped (callers paste addresses).
/// - The domain is IDNA2008 / UTS 46 processed (`idna` crate, STD3 rules, DNS lengths):
///   lower-case A-labels (`bücher.example` → `xn--bcher-kva.example`). DNS lookups, RCPT
///   TO, DKIM `d=` and suppressions then see one form, so an address matches in either.
/// - The local part is kept as given, apart from Unicode NFC (RFC 6532 §3.1): its case
///   may matter to the receiver (RFC 5321 §2.4). It is a dot-atom of ASCII `atext` or,
///   RFC 6531, any letter, mark, number, punctuation or symbol beyond ASCII; separators,
///   control and format characters (zero-width and direction marks) are refused, since
///   they make one address look like another.
///
/// Errors: a sentence naming what is wrong (the handler adds the field). Lengths are
/// RFC 5321 §4.5.3.1's, in octets of the canonical form: local part ≤ 64, whole ≤ 254.
pub fn email(address: &str) -> Result<String, &'static str> {
    let address = address.trim();
    // Four octets per character at most: anything longer cannot fit once canonical.
    if address.len() > 4 * 254 {
        return Err("address is longer than 254 characters");
    }
    let (local, domain) = address.rsplit_once('@').ok_or("address has no @")?;
    if local.is_empty() {
        return Err("address has an empty local part");
    }
    let local = local_part(local)?;
    let domain = domain_name(domain)?;
    let canonical = format!("{local}@{domain}");
    if canonical.len() > 254 {
        return Err("address is longer than 254 characters");
    }
    Ok(canonical)
}

/// Whether `address` (canonical, from [`email`]) has a UTF-8 local part, which only a
/// server offering SMTPUTF8 (RFC 6531) can take.
pub fn needs_smtputf8(address: &str) -> bool {
    !address.is_ascii()
}

fn local_part(local: &str) -> Result<String, &'static str> {
    use icu_properties::{props::GeneralCategory as Gc, CodePointMapData};
    let local = if local.is_ascii() {
        local.to_owned()
    } else {
        icu_normalizer::ComposingNormalizerBorrowed::new_nfc()
            .normalize(local)
            .into_owned()
    };
    if local.len() > 64 {
        return Err("local part is longer than 64 characters");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("local part has a misplaced dot");
    }
    let categories = CodePointMapData::<Gc>::new();
    let atext = |c: char| {
        if c.is_ascii() {
            c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-.".contains(c)
        } else {
            !matches!(
                categories.get(c),
                Gc::SpaceSeparator
                    | Gc::LineSeparator
                    | Gc::ParagraphSeparator
                    | Gc::Control
                    | Gc::Format
                    | Gc::Surrogate
                    | Gc::PrivateUse
                    | Gc::Unassigned
            )
        }
    };
    if !local.chars().all(atext) {
        return Err("local part has a character that is not allowed");
    }
    Ok(local)
}

/// A domain as given (U-labels, A-labels or both, any case, a trailing dot) in its
/// canonical form: lower-case A-labels, checked by [`domain`]. IDNA2008 / UTS 46
/// through the `idna` crate (never our own Punycode).
pub fn domain_name(name: &str) -> Result<String, &'static str> {
    let name = name.trim();
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_ascii() {
        let lower = name.to_ascii_lowercase();
        domain(&lower)?;
        // A-labels given as such must be valid Punycode of a valid U-label.
        if lower.split('.').any(|l| l.starts_with("xn--")) {
            idna::domain_to_ascii_strict(&lower)
                .map_err(|_| "domain has an invalid internationalised (xn--) label")?;
        }
        return Ok(lower);
    }
    if name.len() > 1_000 {
        return Err("domain is longer than 253 characters");
    }
    let ascii = idna::domain_to_ascii_strict(name)
        .map_err(|_| "domain is not a valid internationalised domain name (IDNA2008)")?;
    domain(&ascii)?;
    Ok(ascii)
}

/// The Unicode form of a canonical domain, for people to read: `xn--bcher-kva.example`
/// → `bücher.example` (the domain itself when it has no A-label).
pub fn domain_unicode(ascii: &str) -> String {
    if !ascii.contains("xn--") {
        return ascii.to_owned();
    }
    idna::domain_to_unicode(ascii).0
}

/// A DNS domain in A-label form with at least two labels: letters, digits and inner
/// hyphens only, a non-numeric top-level label, RFC 1035 lengths.
pub fn domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("domain is empty");
    }
    if domain.len() > 253 {
        return Err("domain is longer than 253 characters");
    }
    let mut labels = 0;
    for label in domain.split('.') {
        labels += 1;
        if label.is_empty() || label.len() > 63 {
            return Err("domain has an empty or over-long label");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("domain label starts or ends with a hyphen");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("domain has a character that is not allowed");
        }
    }
    if labels < 2 {
        return Err("domain must have at least two labels");
    }
    if domain
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("domain must not end in a numeric label");
    }
    Ok(())
}

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
    if value.is_empty() || value.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
    {
        return Err("may contain only letters, digits and - _ . : /");
    }
    Ok(())
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
    fn accepts_ordinary_addresses() {
        for a in [
            "ada@ok.test",
            "a.b+tag@sub.example.com",
            "x_y-z@d1.test",
            "o'neil@example.org",
        ] {
            assert_eq!(email(a).as_deref(), Ok(a), "{a}");
        }
    }

    #[test]
    fn internationalised_addresses_are_canonical() {
        let cases = [
            ("kunde@bücher.example", "kunde@xn--bcher-kva.example"),
            ("Kunde@BÜCHER.Example.", "Kunde@xn--bcher-kva.example"),
            ("kunde@xn--bcher-kva.example", "kunde@xn--bcher-kva.example"),
            ("  ada@ok.test \t", "ada@ok.test"),
            ("ädä@ok.test", "ädä@ok.test"),
            // NFD in, NFC out: one address, one suppression.
            ("a\u{308}da@ok.test", "äda@ok.test"),
            ("用户@例子.广告", "用户@xn--fsqu00a.xn--4rr70v"),
            (
                "δοκιμή@παράδειγμα.δοκιμή",
                "δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp",
            ),
        ];
        for (given, canonical) in cases {
            assert_eq!(email(given).as_deref(), Ok(canonical), "{given:?}");
        }
        assert!(needs_smtputf8("ädä@ok.test"));
        assert!(!needs_smtputf8("kunde@xn--bcher-kva.example"));
        assert_eq!(domain_unicode("xn--bcher-kva.example"), "bücher.example");
        assert_eq!(domain_unicode("ok.test"), "ok.test");
        assert_eq!(
            domain_name("BÜCHER.example"),
            Ok("xn--bcher-kva.example".into())
        );
        // 64 octets is the limit, not 64 characters.
        assert!(email(&format!("{}@ok.test", "ä".repeat(33))).is_err());
        assert!(email(&format!("{}@ok.test", "ä".repeat(32))).is_ok());
    }

    #[test]
    fn rejects_broken_addresses() {
        for a in [
            "",
            "plain",
            "@ok.test",
            "ada@",
            "ada@ok",
            "ada@.ok.test",
            "ada@ok..test",
            "ada@-ok.test",
            "ada@ok.123",
            ".ada@ok.test",
            "a..b@ok.test",
            "a b@ok.test",
            "ada@ok.test\r\nBcc: x@y.test",
            "ada@ok_test.com",
            "\"quoted\"@ok.test",
            "a\u{200b}b@ok.test",
            "a\u{202e}b@ok.test",
            "a\u{a0}b@ok.test",
            "ä\u{e000}@ok.test",
            "ada@bü_cher.test",
            "ada@xn--zz.test",
            "ada@xn--bcher-kva.xn--",
        ] {
            assert!(email(a).is_err(), "{a:?} was accepted");
        }
        assert!(email(&format!("{}@ok.test", "a".repeat(65))).is_err());
        assert!(email(&format!("a@{}.test", "b".repeat(64))).is_err());
    }

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
