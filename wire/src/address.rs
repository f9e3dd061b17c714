//! Email addresses and domains in the one form every stage uses (the canonical form):
//! ingest turns what callers write into it, and every record, suppression, DNS lookup,
//! RCPT TO, DKIM `d=` and stored event carries it, so an address matches itself
//! whichever way it was written. RFC 5321 §4.1.2 and §4.5.3.1 (syntax, lengths),
//! RFC 6531/6532 (UTF-8 local parts), RFC 5890-5893 and UTS 46 (internationalised
//! domains, through the `idna` crate: never our own Punycode).

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
    // Invisible characters outside the format category (combining grapheme joiner,
    // variation selectors, Hangul fillers) would make a look-alike of another address.
    // (No ASCII character is one: the common case skips the lookup.)
    use icu_properties::{props::DefaultIgnorableCodePoint, CodePointSetData};
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    if !local.is_ascii() && local.chars().any(|c| ignorable.contains(c)) {
        return Err("local part contains an invisible (default-ignorable) character");
    }
    Ok(local)
}

/// A domain as given (U-labels, A-labels or both, any case, a trailing dot) in its
/// canonical form: lower-case A-labels, checked by [`domain`]. UTS 46 processing
/// (nontransitional, STD3 rules, DNS lengths) through the `idna` crate, never our own
/// Punycode; like browsers and registries it accepts some labels IDNA2008 alone refuses
/// (emoji). Default-ignorable characters are refused rather than dropped.
pub fn domain_name(name: &str) -> Result<String, &'static str> {
    let name = name.trim();
    // The root's dot, in any of the forms UTS 46 maps to a full stop.
    let name = name
        .strip_suffix(['.', '\u{3002}', '\u{ff0e}', '\u{ff61}'])
        .unwrap_or(name);
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
    // UTS 46 maps default-ignorable characters (zero-width space, soft hyphen, joiners,
    // variation selectors) to nothing: a domain written with one would silently become
    // another, which is how look-alike domains are made. Refused instead.
    use icu_properties::{props::DefaultIgnorableCodePoint, CodePointSetData};
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    if name.chars().any(|c| ignorable.contains(c)) {
        return Err("domain contains an invisible (default-ignorable) character");
    }
    let ascii = idna::domain_to_ascii_strict(name)
        .map_err(|_| "domain is not a valid internationalised domain name (IDNA, UTS 46)")?;
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
        assert_eq!(
            domain_name("bücher.example\u{3002}"),
            Ok("xn--bcher-kva.example".into())
        );
        assert_eq!(domain_name("ok.test\u{3002}"), Ok("ok.test".into()));
        for invisible in [
            "\u{200b}", "\u{ad}", "\u{2060}", "\u{feff}", "\u{34f}", "\u{fe0f}",
        ] {
            assert!(
                domain_name(&format!("bü{invisible}cher.example")).is_err(),
                "{invisible:?}"
            );
        }
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
            "ad\u{34f}a@ok.test",
            "a\u{fe0f}@ok.test",
            "a\u{3164}@ok.test",
            "ada@bü_cher.test",
            "ada@xn--zz.test",
            "ada@xn--bcher-kva.xn--",
        ] {
            assert!(email(a).is_err(), "{a:?} was accepted");
        }
        assert!(email(&format!("{}@ok.test", "a".repeat(65))).is_err());
        assert!(email(&format!("a@{}.test", "b".repeat(64))).is_err());
    }
}
