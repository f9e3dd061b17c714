//! DKIM signing (RFC 6376), `relaxed/relaxed` only, RSA-SHA256 and Ed25519-SHA256
//! (RFC 8463), on aws-lc. Written here rather than borrowed because the signing time is
//! an input (golden messages are byte-for-byte reproducible for a fixed clock) and
//! because signing is the most expensive step of the pipeline: nothing but
//! canonicalization, two SHA-256 passes and one private-key operation happens per
//! signature.
//!
//! `relaxed/relaxed` always: `simple` header canonicalization breaks at the first relay
//! that refolds a header, and lettre's `simple/relaxed` fails dkimpy and opendkim.

use aws_lc_rs::{
    digest::{digest, Context, SHA256},
    rand::SystemRandom,
    rsa::KeyPair as RsaKeyPair,
    signature::{Ed25519KeyPair, RSA_PKCS1_SHA256},
};
use base64::{engine::general_purpose::STANDARD, Engine};

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("invalid DKIM private key: {0}")]
    Key(String),
    #[error("the message has no header section")]
    NoHeaders,
    #[error("signing failed")]
    Sign,
}

enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A signer for one (domain, selector, key).
pub struct DkimSigner {
    domain: String,
    selector: String,
    key: Key,
    /// Lower-cased names of the header fields to sign, in `h=` order.
    headers: Vec<String>,
}

impl DkimSigner {
    pub fn rsa(
        domain: &str,
        selector: &str,
        pkcs8: &[u8],
        headers: &[&str],
    ) -> Result<Self, DkimError> {
        let key = RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| DkimError::Key(e.to_string()))?;
        Ok(Self::new(domain, selector, Key::Rsa(key), headers))
    }

    pub fn ed25519(
        domain: &str,
        selector: &str,
        pkcs8: &[u8],
        headers: &[&str],
    ) -> Result<Self, DkimError> {
        let key = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| DkimError::Key(e.to_string()))?;
        Ok(Self::new(domain, selector, Key::Ed25519(key), headers))
    }

    fn new(domain: &str, selector: &str, key: Key, headers: &[&str]) -> Self {
        Self {
            domain: domain.to_owned(),
            selector: selector.to_owned(),
            key,
            headers: headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    fn algorithm(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// The `DKIM-Signature` header field (ending in CRLF) to put in front of `message`,
    /// stamped `t=timestamp` (seconds since the Unix epoch).
    pub fn sign(&self, message: &[u8], timestamp: u64) -> Result<String, DkimError> {
        let (header_block, body) = split_message(message).ok_or(DkimError::NoHeaders)?;
        let fields = parse_fields(header_block);
        let mut body_digest = Context::new(&SHA256);
        relaxed_body(body, &mut |chunk| body_digest.update(chunk));
        let body_hash = STANDARD.encode(body_digest.finish());

        // Bottom-up: for each listed name, the lowest field not yet taken. A listed name
        // with no field left is still named in h= (it signs its absence, so the field
        // cannot be added in transit).
        let mut taken = vec![false; fields.len()];
        // The signature input: canonical signed fields, then this signature's own field.
        let mut data = Vec::with_capacity(1024);
        for name in &self.headers {
            if let Some(i) = (0..fields.len())
                .rev()
                .find(|&i| !taken[i] && fields[i].0.eq_ignore_ascii_case(name.as_bytes()))
            {
                taken[i] = true;
                data.extend_from_slice(&relaxed_header(fields[i].0, fields[i].1));
                data.extend_from_slice(b"\r\n");
            }
        }

        let mut header = format!(
            "DKIM-Signature: v=1; a={}; c=relaxed/relaxed; d={}; s={};\r\n\tt={}; h={};\r\n\tbh={};\r\n\tb=",
            self.algorithm(),
            self.domain,
            self.selector,
            timestamp,
            fold_list(&self.headers),
            body_hash,
        );
        let (name, value) = header.split_once(':').expect("the header has a colon");
        data.extend_from_slice(&relaxed_header(name.as_bytes(), value.as_bytes()));

        let signature = match &self.key {
            Key::Rsa(key) => {
                let mut out = vec![0; key.public_modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), &data, &mut out)
                    .map_err(|_| DkimError::Sign)?;
                out
            }
            // RFC 8463: Ed25519 signs the SHA-256 hash of the data.
            Key::Ed25519(key) => {
                let prehash = digest(&SHA256, &data);
                key.sign(prehash.as_ref()).as_ref().to_vec()
            }
        };
        fold_base64(&mut header, &STANDARD.encode(signature));
        header.push_str("\r\n");
        Ok(header)
    }
}

/// Header section (with its final CRLF) and body.
fn split_message(message: &[u8]) -> Option<(&[u8], &[u8])> {
    if message.is_empty() {
        return None;
    }
    match find(message, b"\r\n\r\n") {
        Some(i) => Some((&message[..i + 2], &message[i + 4..])),
        None => Some((message, &[])),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Header fields as (name, value) with the value raw: folding kept, CRLF of the last line
/// removed.
fn parse_fields(block: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < block.len() {
        let line_end = find(&block[i..], b"\r\n").map_or(block.len(), |p| i + p);
        let next = (line_end + 2).min(block.len());
        let continues = next < block.len() && matches!(block[next], b' ' | b'\t');
        if !continues {
            let field = &block[start..line_end];
            if let Some(colon) = field.iter().position(|&b| b == b':') {
                fields.push((&field[..colon], &field[colon + 1..]));
            }
            start = next;
        }
        i = next;
    }
    fields
}

/// RFC 6376 §3.4.2: lower-case name, unfold, runs of WSP to one SP, no WSP at either end
/// of the value, none around the colon.
fn relaxed_header(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 1);
    out.extend(name.trim_ascii().iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let mut pending_space = false;
    let mut at_start = true;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => pending_space = true,
            _ => {
                if pending_space && !at_start {
                    out.push(b' ');
                }
                pending_space = false;
                at_start = false;
                out.push(b);
            }
        }
    }
    out
}

/// RFC 6376 §3.4.4: per line, runs of WSP to one SP and none at the end; no empty lines
/// at the end; a non-empty body ends in CRLF. One pass, no allocation per line: the
/// canonical bytes go to `sink` in chunks.
fn relaxed_body(body: &[u8], sink: &mut impl FnMut(&[u8])) {
    // Built once: `memmem::find` builds a searcher per call, which was 0.4 % of the
    // render process in the pipeline bench (perf), once per line of every body.
    static DOUBLE_SPACE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"  "));
    const FLUSH: usize = 8192;
    let mut buffer = Vec::with_capacity(FLUSH + 1024);
    let mut empty_lines = 0usize;
    let mut rest = body;
    while !rest.is_empty() {
        let (raw, next) = match memchr::memchr(b'\n', rest) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        let followed_by_lf = raw.len() < rest.len();
        rest = next;
        let line = if followed_by_lf {
            raw.strip_suffix(b"\r").unwrap_or(raw)
        } else {
            raw
        };
        // Drop trailing white space; a line left empty may be trailing.
        let end = line
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |p| p + 1);
        if end == 0 {
            empty_lines += 1;
            continue;
        }
        for _ in 0..empty_lines {
            buffer.extend_from_slice(b"\r\n");
        }
        empty_lines = 0;
        let content = &line[..end];
        // Most lines are already canonical: no tab, no run of spaces.
        if memchr::memchr(b'\t', content).is_none() && DOUBLE_SPACE.find(content).is_none() {
            buffer.extend_from_slice(content);
            buffer.extend_from_slice(b"\r\n");
            if buffer.len() >= FLUSH {
                sink(&buffer);
                buffer.clear();
            }
            continue;
        }
        // Copy runs between white space; each run of white space becomes one SP.
        let mut rest = content;
        while let Some(ws) = rest.iter().position(|&b| b == b' ' || b == b'\t') {
            buffer.extend_from_slice(&rest[..ws]);
            buffer.push(b' ');
            let after = rest[ws..]
                .iter()
                .position(|&b| b != b' ' && b != b'\t')
                .expect("the line does not end in white space");
            rest = &rest[ws + after..];
        }
        buffer.extend_from_slice(rest);
        buffer.extend_from_slice(b"\r\n");
        if buffer.len() >= FLUSH {
            sink(&buffer);
            buffer.clear();
        }
    }
    sink(&buffer);
}

/// `h=` names joined by `:`, folded to keep lines short.
fn fold_list(names: &[String]) -> String {
    let mut out = String::new();
    let mut line = 0;
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(':');
            line += 1;
            if line + name.len() > 64 {
                out.push_str("\r\n\t");
                line = 0;
            }
        }
        out.push_str(name);
        line += name.len();
    }
    out
}

/// Appends the base64 `b=` value in lines of 72 characters.
fn fold_base64(header: &mut String, value: &str) {
    for (i, chunk) in value.as_bytes().chunks(72).enumerate() {
        if i > 0 {
            header.push_str("\r\n\t");
        }
        header.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical_body(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        relaxed_body(body, &mut |chunk| out.extend_from_slice(chunk));
        out
    }

    #[test]
    fn relaxed_body_follows_rfc6376_examples() {
        // RFC 6376 §3.4.6, example body.
        assert_eq!(
            canonical_body(b" C \r\nD \t E\r\n\r\n\r\n"),
            b" C\r\nD E\r\n"
        );
        assert_eq!(canonical_body(b""), b"");
        assert_eq!(canonical_body(b"\r\n\r\n"), b"");
        assert_eq!(canonical_body(b"no newline"), b"no newline\r\n");
        assert_eq!(canonical_body(b"a\r\n\r\nb\r\n"), b"a\r\n\r\nb\r\n");
        assert_eq!(canonical_body(b"a \r\n \t\r\nb"), b"a\r\n\r\nb\r\n");
        // Longer than one flush, and the same whether chunked or not.
        let long = "word  \t word \r\n".repeat(2000);
        let expected = "word word\r\n".repeat(2000);
        assert_eq!(canonical_body(long.as_bytes()), expected.as_bytes());
    }

    #[test]
    fn relaxed_header_follows_rfc6376_examples() {
        // RFC 6376 §3.4.6: "A: X" and "B : Y\r\n\tZ  " become "a:X" and "b:Y Z".
        assert_eq!(relaxed_header(b"A", b" X"), b"a:X");
        assert_eq!(relaxed_header(b"B ", b" Y\r\n\tZ  "), b"b:Y Z");
        // Only the whitespace after the field name's colon goes, not after later ones.
        assert_eq!(relaxed_header(b"Subject", b" Re: hi"), b"subject:Re: hi");
        assert_eq!(relaxed_header(b"X", b" a:\r\n\tb"), b"x:a: b");
    }

    #[test]
    fn fields_keep_their_folding_and_order() {
        let block = b"From: a@b.test\r\nSubject: one\r\n two\r\nTo: c@d.test\r\n";
        let fields = parse_fields(block);
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[1], (&b"Subject"[..], &b" one\r\n two"[..]));
    }
}
