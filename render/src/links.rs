//! Tracking and unsubscribe links. Click tracking points every http(s) link of the HTML
//! part at the analytics click endpoint with a signed token holding the original target;
//! open tracking adds a 1×1 pixel before `</body>`; list-unsubscribe adds the RFC 8058
//! one-click headers. Tokens come from `platform::tracking`, so analytics can trust them.

use sendmill_platform::{
    return_path::ReturnPaths,
    tracking::{Claims, LinkKind, LinkSigner},
};
use sendmill_wire::RequestedV1;

pub struct Links {
    signer: LinkSigner,
    return_paths: ReturnPaths,
    base_url: String,
}

impl Links {
    /// The links `[tracking]` configures: `None` (with a warning) when `secret` is empty,
    /// as tokens could not be verified.
    pub fn from_config(tracking: &sendmill_platform::config::TrackingConfig) -> Option<Self> {
        if tracking.secret.is_empty() {
            tracing::warn!(
                "tracking.secret is not set: no open/click tracking or unsubscribe links"
            );
            return None;
        }
        Some(Self::new(&tracking.secret, &tracking.base_url))
    }

    pub fn new(secret: &str, base_url: &str) -> Self {
        Self {
            signer: LinkSigner::new(secret),
            return_paths: ReturnPaths::new(secret),
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    fn claims(request: &RequestedV1, kind: LinkKind) -> Claims {
        Claims {
            kind,
            message_id: request.message_id,
            account_id: request.account_id,
            recipient: request.recipient().to_owned(),
            campaign_id: request.context.campaign_id.clone(),
            variant: request.context.metadata.get("variant").cloned(),
            link_index: None,
            url: None,
        }
    }

    pub fn unsubscribe_url(&self, request: &RequestedV1) -> String {
        let token = self
            .signer
            .token(&Self::claims(request, LinkKind::Unsubscribe));
        format!("{}/u/{token}", self.base_url)
    }

    /// The signed return addresses (VERP envelope sender, mailto unsubscribe) under the
    /// same secret.
    pub fn return_paths(&self) -> &ReturnPaths {
        &self.return_paths
    }

    /// `List-Unsubscribe` value: the one-click https URL, and a mailto on the return-path
    /// domain whose local part is the message's signed token (`platform::return_path`).
    pub fn list_unsubscribe(&self, request: &RequestedV1, return_path_domain: &str) -> String {
        format!(
            "<{}>, <mailto:{}?subject=unsubscribe>",
            self.unsubscribe_url(request),
            self.return_paths
                .unsubscribe(request.message_id, return_path_domain)
        )
    }

    /// The HTML with tracked links and/or the open pixel.
    pub fn decorate_html(
        &self,
        html: &str,
        request: &RequestedV1,
        clicks: bool,
        opens: bool,
    ) -> String {
        let mut out = if clicks {
            self.rewrite_links(html, request)
        } else {
            html.to_owned()
        };
        if opens {
            let token = self.signer.token(&Self::claims(request, LinkKind::Open));
            let pixel = format!(
                "<img src=\"{}/t/o/{token}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">",
                self.base_url
            );
            match rfind_ascii_ci(&out, "</body>") {
                Some(at) => out.insert_str(at, &pixel),
                None => out.push_str(&pixel),
            }
        }
        out
    }

    fn rewrite_links(&self, html: &str, request: &RequestedV1) -> String {
        let mut out = String::with_capacity(html.len() + 512);
        let mut rest = html;
        let mut index: u16 = 0;
        while let Some((value_start, value_end)) = next_href(rest) {
            let raw = &rest[value_start..value_end];
            let target = crate::text::decode_entities(raw.trim());
            let lower = target.to_ascii_lowercase();
            out.push_str(&rest[..value_start]);
            if lower.starts_with("http://") || lower.starts_with("https://") {
                let mut claims = Self::claims(request, LinkKind::Click);
                claims.link_index = Some(index);
                claims.url = Some(target);
                index = index.saturating_add(1);
                out.push_str(&format!(
                    "{}/t/c/{}",
                    self.base_url,
                    self.signer.token(&claims)
                ));
            } else {
                out.push_str(raw);
            }
            rest = &rest[value_end..];
        }
        out.push_str(rest);
        out
    }
}

/// The byte range of the next `<a … href="…">` value in `html`.
fn next_href(html: &str) -> Option<(usize, usize)> {
    let bytes = html.as_bytes();
    let mut from = 0;
    loop {
        let open = from + html[from..].find('<')?;
        let is_anchor = bytes
            .get(open + 1)
            .is_some_and(|b| b.eq_ignore_ascii_case(&b'a'))
            && bytes.get(open + 2).is_some_and(|b| b.is_ascii_whitespace());
        let close = open + html[open..].find('>')?;
        if is_anchor {
            let tag = &html[open..close];
            let lower = tag.to_ascii_lowercase();
            let mut search = 0;
            while let Some(at) = lower[search..].find("href") {
                let at = search + at;
                let after = lower[at + 4..].trim_start();
                let preceded = lower.as_bytes()[at - 1].is_ascii_whitespace();
                if preceded && after.starts_with('=') {
                    let eq = lower.len() - after.len();
                    let value = lower[eq + 1..].trim_start();
                    let start = lower.len() - value.len();
                    let (start, end) = match value.as_bytes().first() {
                        Some(q @ (b'"' | b'\'')) => {
                            let end = tag[start + 1..].find(*q as char)? + start + 1;
                            (start + 1, end)
                        }
                        Some(_) => {
                            let end = tag[start..]
                                .find(|c: char| c.is_ascii_whitespace())
                                .map_or(tag.len(), |e| start + e);
                            (start, end)
                        }
                        None => break,
                    };
                    return Some((open + start, open + end));
                }
                search = at + 4;
            }
        }
        from = close + 1;
    }
}

fn rfind_ascii_ci(haystack: &str, needle: &str) -> Option<usize> {
    let h = haystack.as_bytes();
    let n = needle.as_bytes();
    (0..=h.len().checked_sub(n.len())?)
        .rev()
        .find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sendmill_platform::tracking::LinkKind;

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes";

    fn request() -> RequestedV1 {
        sendmill_wire::decode(include_bytes!("../tests/golden/alternative_dual.json")).unwrap()
    }

    fn tokens(html: &str, path: &str) -> Vec<String> {
        html.match_indices(path)
            .map(|(i, _)| {
                html[i + path.len()..]
                    .split(['"', '\''])
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn http_links_are_tracked_and_others_kept() {
        let links = Links::new(SECRET, "https://t.example.test/");
        let html = r##"<p><a href="https://shop.test/a?x=1&amp;y=2">A</a> <A class=b HREF='http://shop.test/b'>B</A>
            <a href="mailto:x@y.test">M</a> <a name="top">T</a> <a href="#top">#</a> <abbr href="https://no.test">n</abbr></p>"##;
        let out = links.decorate_html(html, &request(), true, false);
        let clicks = tokens(&out, "https://t.example.test/t/c/");
        assert_eq!(clicks.len(), 2, "{out}");
        let signer = LinkSigner::new(SECRET);
        let first = signer.verify(&clicks[0], LinkKind::Click).unwrap();
        assert_eq!(first.url.as_deref(), Some("https://shop.test/a?x=1&y=2"));
        assert_eq!(first.link_index, Some(0));
        assert_eq!(first.recipient, "ada@ok.test");
        assert_eq!(
            signer
                .verify(&clicks[1], LinkKind::Click)
                .unwrap()
                .url
                .as_deref(),
            Some("http://shop.test/b")
        );
        assert!(out.contains(r#"href="mailto:x@y.test""#));
        assert!(out.contains(r##"href="#top""##));
        assert!(out.contains(r#"<abbr href="https://no.test">"#));
    }

    #[test]
    fn the_pixel_goes_before_the_body_end() {
        let links = Links::new(SECRET, "https://t.example.test");
        let out = links.decorate_html(
            "<html><BODY><p>x</p></Body></html>",
            &request(),
            false,
            true,
        );
        let at = out.find("/t/o/").unwrap();
        assert!(at < out.find("</Body>").unwrap());
        let token = tokens(&out, "https://t.example.test/t/o/").remove(0);
        assert!(LinkSigner::new(SECRET)
            .verify(&token, LinkKind::Open)
            .is_ok());
        let bare = links.decorate_html("<p>no body tag</p>", &request(), false, true);
        assert!(bare.ends_with("px\">"), "{bare}");
    }

    #[test]
    fn list_unsubscribe_has_https_and_mailto() {
        let links = Links::new(SECRET, "https://t.example.test");
        let value = links.list_unsubscribe(&request(), "bounces.example.test");
        assert!(value.starts_with("<https://t.example.test/u/"), "{value}");
        let mailto = value
            .split("<mailto:")
            .nth(1)
            .and_then(|m| m.strip_suffix("?subject=unsubscribe>"))
            .unwrap_or_else(|| panic!("{value}"));
        assert!(mailto.starts_with("unsubscribe+01933b6e8f7a7c3e9d2a0a1b2c3d4e5f-"));
        let verified = links.return_paths().verify(mailto).unwrap();
        assert_eq!(verified.message_id, request().message_id);
        assert_eq!(verified.domain, "bounces.example.test");
    }
}
