//! Messages submitted over SMTP (RFC 6409): the client's RFC 5322 bytes, kept exactly as
//! they came. No template runs and no body is re-encoded, so what the client signed or
//! hashed stays intact; only header fields are added in front of the client's own:
//!
//! - `Message-ID` (`<message id@sending domain>`) when the client gave none (RFC 6409
//!   §8.3), so that replies and feedback reports can be matched;
//! - `Date` when the client gave none (RFC 6409 §8.2);
//! - `List-Unsubscribe` and `List-Unsubscribe-Post` (RFC 8058) when the record asks for
//!   them (bulk mail) and the client did not write its own.
//!
//! The DKIM signature goes in front of all of it ([`crate::signing`]).
//!
//! **Tracking** (when the record asks for it: the account's defaults, or the message's
//! `X-Sendmill-Track-*` fields) is the one change inside the body: each `text/html` part
//! (not an attachment) in UTF-8 or US-ASCII has its links routed through the click
//! endpoint and/or the open pixel added, and is written back in its own transfer
//! encoding (quoted-printable, base64, or 7bit/8bit when its lines still fit 998
//! characters; otherwise it stays untracked). Every other byte is kept.
//!
//! The header section is read with `mailparse` (a library of the field); the submission
//! listener has already refused messages without a valid `From` and normalised line ends
//! to CRLF.

use crate::{
    links::Links,
    message::{Decorations, RenderError},
};
use sendmill_wire::{payload::domain_of, RequestedV1};
use time::{format_description::well_known::Rfc2822, OffsetDateTime};

/// The message to sign for `mime` (a submitted message of `request`) as of `now`: the
/// fields to add, then `mime` unchanged. Fails (`Build`) when the header section cannot
/// be parsed.
pub fn prepare(
    mime: &[u8],
    decorations: Decorations<'_>,
    request: &RequestedV1,
    now: OffsetDateTime,
) -> Result<Vec<u8>, RenderError> {
    let options = &request.options;
    let tracked = match decorations.links {
        Some(links) if options.track_opens || options.track_clicks => track(mime, links, request),
        _ => None,
    };
    let mime = tracked.as_deref().unwrap_or(mime);
    let (headers, _body_at) = mailparse::parse_headers(mime)
        .map_err(|e| RenderError::Build(format!("submitted header section: {e}")))?;
    let has = |name: &str| {
        headers
            .iter()
            .any(|h| h.get_key_ref().eq_ignore_ascii_case(name))
    };
    let mut added = String::new();
    if !has("Message-ID") {
        let domain = domain_of(&request.from.email);
        added.push_str(&format!(
            "Message-ID: <{}@{domain}>\r\n",
            request.message_id
        ));
    }
    if !has("Date") {
        let date = now
            .format(&Rfc2822)
            .map_err(|e| RenderError::Build(format!("Date: {e}")))?;
        added.push_str(&format!("Date: {date}\r\n"));
    }
    if let (true, Some(links), false) = (
        request.options.list_unsubscribe,
        decorations.links,
        has("List-Unsubscribe"),
    ) {
        let value = links.list_unsubscribe(request, decorations.return_path_domain);
        // Folded after the comma: each URI on its own line keeps lines short.
        let value = value.replacen(", <", ",\r\n <", 1);
        added.push_str(&format!(
            "List-Unsubscribe: {value}\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        ));
    }
    let mut message = Vec::with_capacity(added.len() + mime.len());
    message.extend_from_slice(added.as_bytes());
    message.extend_from_slice(mime);
    Ok(message)
}

/// `mime` with its HTML parts tracked (see the module doc); `None` when no part was.
/// The submission checks read the top-level header section only: a body mailparse
/// cannot take apart is sent as it came, untracked, never failed after its 250.
fn track(mime: &[u8], links: &Links, request: &RequestedV1) -> Option<Vec<u8>> {
    let parsed = mailparse::parse_mail(mime).ok()?;
    let mut edits = Vec::new();
    tracked_parts(&parsed, mime, links, request, &mut edits);
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|(range, _)| range.start);
    let mut out = Vec::with_capacity(mime.len() + mime.len() / 4);
    let mut at = 0;
    for (range, replacement) in edits {
        out.extend_from_slice(&mime[at..range.start]);
        out.extend_from_slice(&replacement);
        at = range.end;
    }
    out.extend_from_slice(&mime[at..]);
    Some(out)
}

/// The replacements (byte range of a part's encoded body in `whole`, new encoded body)
/// of the trackable HTML parts under `part`.
fn tracked_parts(
    part: &mailparse::ParsedMail<'_>,
    whole: &[u8],
    links: &Links,
    request: &RequestedV1,
    edits: &mut Vec<(std::ops::Range<usize>, Vec<u8>)>,
) {
    use mailparse::{body::Body, DispositionType};
    if !part.subparts.is_empty() {
        for sub in &part.subparts {
            tracked_parts(sub, whole, links, request, edits);
        }
        return;
    }
    let charset = part.ctype.charset.to_ascii_lowercase();
    if part.ctype.mimetype != "text/html"
        || part.get_content_disposition().disposition == DispositionType::Attachment
        || !matches!(charset.as_str(), "utf-8" | "utf8" | "us-ascii")
    {
        return;
    }
    // Only the encodings written back below; an unknown one (x-uuencode, a typo) would
    // be read as 7bit and the pixel written into its encoded text.
    let encoding = part
        .headers
        .iter()
        .find(|h| {
            h.get_key_ref()
                .eq_ignore_ascii_case("Content-Transfer-Encoding")
        })
        .map(|h| h.get_value().trim().to_ascii_lowercase());
    if !matches!(
        encoding.as_deref(),
        None | Some("7bit" | "8bit" | "quoted-printable" | "base64")
    ) {
        return;
    }
    let Ok(html) = part.get_body() else { return };
    // US-ASCII is read leniently (as windows-1252); 8-bit text in a part labelled so
    // could not be written back under its label.
    if charset == "us-ascii" && !html.is_ascii() {
        return;
    }
    let options = &request.options;
    let html = links.decorate_html(&html, request, options.track_clicks, options.track_opens);
    let (raw, mut encoded) = match part.get_body_encoded() {
        Body::QuotedPrintable(b) => (
            b.get_raw(),
            crate::encoding::quoted_printable(html.as_bytes()),
        ),
        Body::Base64(b) => (b.get_raw(), crate::encoding::base64_lines(html.as_bytes())),
        Body::SevenBit(b) | Body::EightBit(b) => {
            if html.split('\n').any(|line| line.len() > 998) {
                return;
            }
            (b.get_raw(), crate::encoding::crlf(&html))
        }
        Body::Binary(_) => return,
    };
    // The CRLF before the next boundary belongs to the boundary (RFC 2046 5.1.1).
    if raw.ends_with(b"\r\n") && !encoded.ends_with(b"\r\n") {
        encoded.extend_from_slice(b"\r\n");
    }
    let start = raw.as_ptr() as usize - whole.as_ptr() as usize;
    edits.push((start..start + raw.len(), encoded));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::Links;

    fn request(mime: &[u8], list_unsubscribe: bool) -> RequestedV1 {
        let mut r: RequestedV1 =
            sendmill_wire::decode(include_bytes!("../tests/golden/alternative_dual.json")).unwrap();
        r.mime = Some(bytes::Bytes::copy_from_slice(mime));
        r.options.list_unsubscribe = list_unsubscribe;
        r
    }

    /// `prepare` with tracking and unsubscribe links configured.
    fn with_links(mime: &[u8], r: &RequestedV1) -> Vec<u8> {
        let links = Links::new("a-secret-of-at-least-thirty-two-bytes", "https://t.test/");
        let decorations = Decorations {
            links: Some(&links),
            return_path_domain: "bounces.b.test",
        };
        prepare(mime, decorations, r, OffsetDateTime::now_utc()).unwrap()
    }

    const BODY: &[u8] = b"Hello,\r\n..dots stay as they came\r\n\xc3\xa9 8-bit too\r\n";

    #[test]
    fn the_submitted_bytes_follow_the_added_fields_unchanged() {
        let mut mime = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: hi\r\n\r\n".to_vec();
        mime.extend_from_slice(BODY);
        let r = request(&mime, false);
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let out = prepare(&mime, Decorations::NONE, &r, now).unwrap();
        assert!(
            out.ends_with(&mime),
            "the client's bytes come last, unchanged"
        );
        let added = std::str::from_utf8(&out[..out.len() - mime.len()]).unwrap();
        assert_eq!(
            added,
            format!(
                "Message-ID: <{}@{}>\r\nDate: Fri, 15 Jan 2027 08:00:00 +0000\r\n",
                r.message_id,
                domain_of(&r.from.email)
            )
        );
    }

    #[test]
    fn the_clients_own_fields_are_kept_and_not_added_twice() {
        let mime = b"Message-ID: <x@y.test>\r\nDATE: Mon, 1 Jan 2024 00:00:00 +0000\r\nlist-unsubscribe: <mailto:u@y.test>\r\nFrom: a@b.test\r\n\r\nbody\r\n";
        let r = request(mime, true);
        let out = with_links(mime, &r);
        assert_eq!(out, mime.to_vec());
    }

    #[test]
    fn bulk_mail_gets_one_click_unsubscribe() {
        let mime = b"Message-ID: <x@y.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: a@b.test\r\n\r\nbody\r\n";
        let r = request(mime, true);
        let out = with_links(mime, &r);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("List-Unsubscribe: <https://t.test/"),
            "{text}"
        );
        assert!(text.contains(",\r\n <mailto:unsubscribe+"), "{text}");
        assert!(text.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
        assert!(text.ends_with(std::str::from_utf8(mime).unwrap()));
    }

    fn tracked(mime: &[u8]) -> Vec<u8> {
        let mut r = request(mime, false);
        r.options.track_clicks = true;
        r.options.track_opens = true;
        with_links(mime, &r)
    }

    fn html_of(message: &[u8]) -> String {
        let parsed = mailparse::parse_mail(message).unwrap();
        let mut found = None;
        let mut parts = vec![&parsed];
        while let Some(p) = parts.pop() {
            if p.ctype.mimetype == "text/html" {
                found = Some(p.get_body().unwrap());
            }
            parts.extend(p.subparts.iter());
        }
        found.expect("an html part")
    }

    #[test]
    fn tracking_rewrites_only_the_html_part_in_its_own_encoding() {
        let text_part = "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSee https://shop.test/a caf=C3=A9\r\n";
        for (encoding, body) in [
            (
                "quoted-printable",
                "<p>caf=C3=A9 <a href=3D\"https://shop.test/a\">a</a></p>\r\n".to_owned(),
            ),
            ("base64", {
                use base64::{engine::general_purpose::STANDARD, Engine};
                format!(
                    "{}\r\n",
                    STANDARD.encode("<p>caf\u{e9} <a href=\"https://shop.test/a\">a</a></p>\r\n")
                )
            }),
            (
                "8bit",
                "<p>caf\u{e9} <a href=\"https://shop.test/a\">a</a></p>\r\n".to_owned(),
            ),
        ] {
            let mime = format!(
                "From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
                 {text_part}--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n{body}--b--\r\n"
            );
            let out = tracked(mime.as_bytes());
            let text = String::from_utf8(out.clone()).unwrap();
            assert!(
                text.contains(text_part),
                "the text part is kept byte for byte: {text}"
            );
            assert!(text.ends_with("--b--\r\n"), "{text}");
            let html = html_of(&out);
            assert!(
                html.contains("caf\u{e9} <a href=\"https://t.test/t/c/"),
                "{encoding}: {html}"
            );
            assert!(
                html.contains("https://t.test/t/o/"),
                "{encoding}: the open pixel: {html}"
            );
            assert!(!html.contains("https://shop.test/a"), "{encoding}: {html}");
        }
    }

    #[test]
    fn html_in_another_charset_or_attached_is_left_alone() {
        for part_headers in [
            "Content-Type: text/html; charset=iso-8859-1",
            "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: x-uuencode",
            "Content-Type: text/html; charset=us-ascii\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\u{e9}",
            // A part header mailparse refuses (a continuation line first): untracked.
            " X: y\r\nContent-Type: text/html; charset=utf-8",
            "Content-Type: text/html; charset=utf-8\r\nContent-Disposition: attachment; filename=page.html",
        ] {
            let mime = format!(
                "From: a@b.test\r\nMessage-ID: <x@y.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
                 --b\r\n{part_headers}\r\n\r\n<a href=\"https://shop.test/\">x</a>\r\n--b--\r\n"
            );
            assert_eq!(tracked(mime.as_bytes()), mime.as_bytes());
        }
    }
}
