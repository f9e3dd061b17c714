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
//! The DKIM signature goes in front of all of it ([`crate::signing`]). Tracking is not
//! applied: links and the open pixel would mean rewriting the HTML part.
//!
//! The header section is read with `mailparse` (a library of the field); the submission
//! listener has already refused messages without a valid `From` and normalised line ends
//! to CRLF.

use crate::message::{Decorations, RenderError};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::Links;

    fn request(mime: &[u8], list_unsubscribe: bool) -> RequestedV1 {
        let mut r: RequestedV1 =
            sendmill_wire::decode(include_bytes!("../tests/golden/alternative_dual.json")).unwrap();
        r.mime = Some(mime.to_vec());
        r.options.list_unsubscribe = list_unsubscribe;
        r
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
        let links = Links::new("a-secret-of-at-least-thirty-two-bytes", "https://t.test/");
        let decorations = Decorations {
            links: Some(&links),
            return_path_domain: "bounces.b.test",
        };
        let out = prepare(mime, decorations, &r, OffsetDateTime::now_utc()).unwrap();
        assert_eq!(out, mime.to_vec());
    }

    #[test]
    fn bulk_mail_gets_one_click_unsubscribe() {
        let mime = b"Message-ID: <x@y.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: a@b.test\r\n\r\nbody\r\n";
        let r = request(mime, true);
        let links = Links::new("a-secret-of-at-least-thirty-two-bytes", "https://t.test/");
        let decorations = Decorations {
            links: Some(&links),
            return_path_domain: "bounces.b.test",
        };
        let out = prepare(mime, decorations, &r, OffsetDateTime::now_utc()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("List-Unsubscribe: <https://t.test/"),
            "{text}"
        );
        assert!(text.contains(",\r\n <mailto:unsubscribe+"), "{text}");
        assert!(text.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
        assert!(text.ends_with(std::str::from_utf8(mime).unwrap()));
    }
}
