//! Body transfer encoding in one pass (RFC 2045). lettre's own path scans a body several
//! times (choose an encoding, normalize line ends, encode) and was a third of the
//! renderer's non-signing time; this writes the encoded bytes directly and hands them to
//! lettre as pre-encoded.
//!
//! - 7bit: ASCII text whose lines all fit in 76 characters goes as is (CRLF line ends).
//! - base64: text that is mostly non-ASCII (quoted-printable would triple it).
//! - quoted-printable: everything else, lines of at most 76 characters with soft breaks.

use lettre::message::header::ContentTransferEncoding;

const LINE: usize = 76;

/// The encoded body (CRLF line ends) and the encoding used.
pub fn encode(text: &str) -> (Vec<u8>, ContentTransferEncoding) {
    let bytes = text.as_bytes();
    let non_ascii = if bytes.is_ascii() {
        0
    } else {
        count_non_ascii(bytes)
    };
    if non_ascii * 3 > bytes.len() {
        return (base64_lines(bytes), ContentTransferEncoding::Base64);
    }
    if non_ascii == 0 && fits_7bit(text) {
        return (crlf(text), ContentTransferEncoding::SevenBit);
    }
    (
        quoted_printable(bytes),
        ContentTransferEncoding::QuotedPrintable,
    )
}

fn fits_7bit(text: &str) -> bool {
    text.split('\n').all(|line| {
        let line = line.strip_suffix('\r').unwrap_or(line);
        line.len() <= LINE
            && !line.ends_with([' ', '\t'])
            && line.bytes().all(|b| b == b'\t' || (32..127).contains(&b))
    })
}

pub(crate) fn crlf(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(line.strip_suffix('\r').unwrap_or(line).as_bytes());
    }
    out
}

pub(crate) fn base64_lines(bytes: &[u8]) -> Vec<u8> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let encoded = STANDARD.encode(bytes);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / LINE * 2 + 2);
    for chunk in encoded.as_bytes().chunks(LINE) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Quoted-printable with hard line breaks kept (LF or CRLF in, CRLF out). Line by line,
/// copying runs of literal bytes, since almost every byte of an HTML body is one.
pub fn quoted_printable(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 8);
    let mut rest = bytes;
    loop {
        let (raw, broken) = match memchr::memchr(b'\n', rest) {
            Some(at) => (&rest[..at], true),
            None => (rest, false),
        };
        // Only a CR before LF is part of the line break; a lone one is content.
        let line = if broken {
            raw.strip_suffix(b"\r").unwrap_or(raw)
        } else {
            raw
        };
        encode_line(line, &mut out);
        if !broken {
            break;
        }
        out.extend_from_slice(b"\r\n");
        rest = &rest[raw.len() + 1..];
    }
    out
}

/// Whether `b` stands for itself in quoted-printable (RFC 2045 §6.7 rules 2 and 3):
/// printable ASCII other than `=`, plus space and tab (the caller keeps white space off
/// line ends).
/// Branch-free, so that [`literal_run`] compiles to vector code.
#[inline(always)]
fn literal(b: u8) -> bool {
    (b.wrapping_sub(32) < 95) & (b != b'=') | (b == b'\t')
}

/// Every byte of a `u64` 0x01, and 0x80: the SWAR masks of [`candidates`] and
/// [`count_non_ascii`].
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Each byte of `x` (8 bytes, little-endian) that may not stand for itself gets its high
/// bit set in the result: `>= 0x80`, `< 0x20` (tab included, which [`literal_run`] checks
/// again), `=` and DEL. The lowest set bit is always exact; bits above it may not be
/// (borrows), and are never used.
#[inline(always)]
fn candidates(x: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    (x & HIGH)
        | (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
        | zero(x ^ (ONES * u64::from(b'=')))
        | zero(x ^ (ONES * 0x7F))
}

/// The length of the run of [`literal`] bytes `bytes` starts with, eight bytes at a time
/// in a `u64` ([`candidates`]). An HTML body is runs of literal bytes broken every few
/// dozen bytes by an `=` or a non-ASCII byte; a byte-at-a-time search, then an
/// all-or-nothing check of 32 bytes, then a 16-bit mask the compiler left scalar were
/// each more instructions (callgrind, `deploy/local/callgrind.sh`, part `build`).
fn literal_run(bytes: &[u8]) -> usize {
    let mut n = 0;
    while let Some(chunk) = bytes.get(n..n + 8) {
        let found = candidates(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        if found == 0 {
            n += 8;
            continue;
        }
        n += (found.trailing_zeros() / 8) as usize;
        if !literal(bytes[n]) {
            return n;
        }
        // A tab: literal after all.
        n += 1;
    }
    n + bytes[n..]
        .iter()
        .position(|&b| !literal(b))
        .unwrap_or(bytes.len() - n)
}

/// Bytes of `bytes` at or above 0x80, eight at a time.
fn count_non_ascii(bytes: &[u8]) -> usize {
    let chunks = bytes.chunks_exact(8);
    let tail = chunks.remainder().iter().filter(|b| !b.is_ascii()).count();
    chunks.fold(tail, |n, chunk| {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        n + (x & HIGH).count_ones() as usize
    })
}

/// Encodes one line (no line break in it), soft-breaking at 76 columns: a line that
/// continues ends in `=` after at most 75 characters; the line's last piece may use 76.
fn encode_line(line: &[u8], out: &mut Vec<u8>) {
    let mut column = 0;
    let mut i = 0;
    while i < line.len() {
        // Bytes that stand for themselves; white space only if it does not end the line.
        let mut run_end = i + literal_run(&line[i..]);
        if run_end == line.len() && run_end > i && matches!(line[run_end - 1], b' ' | b'\t') {
            run_end -= 1;
        }
        while i < run_end {
            let remaining = run_end - i;
            if run_end == line.len() && column + remaining <= LINE {
                out.extend_from_slice(&line[i..run_end]);
                column += remaining;
                i = run_end;
                break;
            }
            let space = (LINE - 1).saturating_sub(column);
            if space == 0 {
                out.extend_from_slice(b"=\r\n");
                column = 0;
                continue;
            }
            let take = remaining.min(space);
            out.extend_from_slice(&line[i..i + take]);
            column += take;
            i += take;
        }
        if i < line.len() {
            let b = line[i];
            let limit = if i + 1 == line.len() { LINE } else { LINE - 1 };
            if column + 3 > limit {
                out.extend_from_slice(b"=\r\n");
                column = 0;
            }
            out.extend_from_slice(&[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            column += 3;
            i += 1;
        }
    }
}

/// An unstructured header value (RFC 5322 §3.2.5) ready to write after `Name: `:
/// printable ASCII as is, folded at spaces; anything else as RFC 2047 base64
/// encoded-words. The words carry the text's own white space inside them, because
/// decoders drop white space *between* adjacent encoded-words (lettre's encoder put it
/// there, and `Grüße  Müller` arrived as `GrüßeMüller`).
pub fn unstructured(name: &str, text: &str) -> String {
    let plain = text.bytes().all(|b| b == b'\t' || (32..127).contains(&b))
        && !text.contains("=?")
        && !text.starts_with([' ', '\t'])
        // Foldable within 78 columns at its spaces (else encoded-words, which fold).
        && text.split([' ', '\t']).all(|run| run.len() <= 70);
    if plain {
        return fold_plain(name.len() + 2, text);
    }
    encoded_words(text)
}

/// `text` as RFC 2047 base64 encoded-words on folded lines. Each word holds at most 39
/// bytes (a 64-character word), so a line with a header name before it stays within
/// RFC 2047's 76 characters; white space travels inside the words.
pub fn encoded_words(text: &str) -> String {
    use base64::{engine::general_purpose::STANDARD, Engine};
    const CHUNK: usize = 39;
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + CHUNK).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        // Prefer to end a word before a space, which then starts the next word: readers
        // that (against RFC 2047 §6.2) keep white space between words in a display name,
        // such as Python's, then show one space more rather than a word split in two.
        if end < text.len() {
            if let Some(space) = text[start..end].rfind(' ').filter(|&s| s > 0) {
                end = start + space;
            }
        }
        words.push(format!(
            "=?utf-8?b?{}?=",
            STANDARD.encode(&text.as_bytes()[start..end])
        ));
        start = end;
    }
    words.join("\r\n ")
}

/// A mailbox for From, To or Reply-To: a quoted display name when it is printable
/// ASCII, encoded-words otherwise, then the address.
pub fn mailbox(name: Option<&str>, email: &str) -> String {
    let ascii =
        |n: &str| n.bytes().all(|b| b == b'\t' || (32..127).contains(&b)) && !n.contains("=?");
    match name.filter(|n| !n.trim().is_empty()) {
        None => email.to_owned(),
        Some(name) if ascii(name) => {
            let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{escaped}\" <{email}>")
        }
        Some(name) => format!("{} <{email}>", encoded_words(name)),
    }
}

/// Folds before white space so lines stay within 78 characters where the text allows;
/// unfolding gives back exactly `text`.
fn fold_plain(mut column: usize, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    while column + rest.len() > 78 {
        let room = 78 - column.min(78);
        // The last space within the room (folding happens before it), not at position 0.
        let Some(at) = rest[..room.min(rest.len())]
            .rfind([' ', '\t'])
            .filter(|&a| a > 0)
        else {
            break;
        };
        out.push_str(&rest[..at]);
        out.push_str("\r\n");
        rest = &rest[at..];
        column = 0;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_qp(encoded: &[u8]) -> Vec<u8> {
        let text = String::from_utf8(encoded.to_vec())
            .unwrap()
            .replace("=\r\n", "");
        let mut out = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'=' {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn short_ascii_stays_7bit_with_crlf() {
        let (body, cte) = encode("Hello\nworld\r\n");
        assert_eq!(cte, ContentTransferEncoding::SevenBit);
        assert_eq!(body, b"Hello\r\nworld\r\n");
    }

    #[test]
    fn long_lines_and_utf8_are_quoted_printable_within_76_columns() {
        let text = format!(
            "{} Grüße = über {}\n  trailing \nend",
            "x".repeat(120),
            "y ".repeat(60)
        );
        let (body, cte) = encode(&text);
        assert_eq!(cte, ContentTransferEncoding::QuotedPrintable);
        for line in body.split(|&b| b == b'\n') {
            assert!(line.len() <= 77, "{:?}", String::from_utf8_lossy(line));
        }
        assert!(
            !String::from_utf8_lossy(&body).contains(" \r\n"),
            "trailing space kept literal"
        );
        assert_eq!(decode_qp(&body), text.replace('\n', "\r\n").into_bytes());
    }

    #[test]
    fn generated_text_round_trips_within_76_columns() {
        let alphabet: Vec<char> = "ab =\t.é€\n\r<>\"x".chars().collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 300) as usize;
            let text: String = (0..len)
                .map(|k| alphabet[((seed >> (k % 50)) as usize + k * 7) % alphabet.len()])
                .collect();
            let encoded = quoted_printable(text.as_bytes());
            for line in encoded.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                assert!(
                    line.len() <= 76,
                    "{:?} → {:?}",
                    text,
                    String::from_utf8_lossy(line)
                );
                assert!(!line.ends_with(b" ") && !line.ends_with(b"\t"), "{text:?}");
            }
            let normalized = text.replace("\r\n", "\n").replace('\n', "\r\n");
            assert_eq!(decode_qp(&encoded), normalized.as_bytes(), "{text:?}");
        }
    }

    #[test]
    fn literal_runs_match_the_byte_at_a_time_definition() {
        let by_rule = |b: u8| matches!(b, 33..=60 | 62..=126 | b' ' | b'\t');
        for b in 0..=255u8 {
            assert_eq!(literal(b), by_rule(b), "byte {b}");
        }
        // Runs shorter and longer than the 8-byte step, ended at every offset by every
        // kind of byte, and a second non-literal byte after the first.
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 64, 95, 200] {
            for stop in [
                b'=', b'\r', 0xC3, 0x7F, 0x00, b'~', b'\t', 0x1F, b' ', 0x80, 0xFF,
            ] {
                for at in 0..=len {
                    let mut bytes = vec![b'a'; len];
                    if at < len {
                        bytes[at] = stop;
                    }
                    if at + 3 < len {
                        bytes[at + 3] = b'=';
                    }
                    let expected = bytes.iter().position(|&b| !by_rule(b)).unwrap_or(len);
                    assert_eq!(literal_run(&bytes), expected, "len {len}, {stop} at {at}");
                }
            }
        }
    }

    #[test]
    fn non_ascii_counts_match_the_byte_at_a_time_count() {
        for len in [0, 1, 7, 8, 9, 16, 63, 200] {
            for at in 0..len {
                let mut bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 128) as u8).collect();
                bytes[at] = 0x80 + (at % 128) as u8;
                if at + 5 < len {
                    bytes[at + 5] = 0xFF;
                }
                let expected = bytes.iter().filter(|b| !b.is_ascii()).count();
                assert_eq!(count_non_ascii(&bytes), expected, "len {len}, at {at}");
            }
        }
    }

    #[test]
    fn unstructured_keeps_every_space() {
        assert_eq!(unstructured("Subject", "Hello  there"), "Hello  there");
        let encoded = unstructured(
            "Subject",
            "Grüße  Müller für Sie, with a long tail to split it into words",
        );
        assert!(encoded
            .split("\r\n ")
            .all(|w| w.starts_with("=?utf-8?b?") && w.len() <= 75));
        let decoded: String = encoded
            .split("\r\n ")
            .map(|w| {
                use base64::{engine::general_purpose::STANDARD, Engine};
                let b64 = w.trim_start_matches("=?utf-8?b?").trim_end_matches("?=");
                String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap()
            })
            .collect();
        assert_eq!(
            decoded,
            "Grüße  Müller für Sie, with a long tail to split it into words"
        );
        // =? must not be mistaken for an encoded word by the reader.
        assert!(unstructured("Subject", "a =?x?q?y?= b").starts_with("=?utf-8?b?"));
        let long = "word ".repeat(40);
        let folded = unstructured("Subject", long.trim_end());
        assert!(folded.split("\r\n").all(|l| l.len() <= 78));
        assert_eq!(folded.replace("\r\n", ""), long.trim_end());
    }

    #[test]
    fn mailboxes_quote_or_encode_names() {
        assert_eq!(mailbox(None, "a@b.test"), "a@b.test");
        assert_eq!(
            mailbox(Some("Ada \"Countess\" L."), "a@b.test"),
            "\"Ada \\\"Countess\\\" L.\" <a@b.test>"
        );
        assert!(mailbox(Some("Zoë"), "a@b.test").starts_with("=?utf-8?b?"));
    }

    #[test]
    fn mostly_non_ascii_is_base64() {
        let (body, cte) = encode("こんにちは、世界。ようこそ。");
        assert_eq!(cte, ContentTransferEncoding::Base64);
        assert!(body.ends_with(b"\r\n"));
    }
}
