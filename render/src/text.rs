//! A text part from an HTML part, for messages sent with HTML only: a text alternative
//! helps deliverability and is what text-only clients show. Block elements become line
//! breaks, list items dashes, links "text (url)"; scripts, styles and the head vanish;
//! entities are decoded.

/// Plain text for `html`.
pub fn from_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    let mut link: Option<(String, usize)> = None;
    while let Some(open) = rest.find('<') {
        push_text(&mut out, &rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('>') else {
            push_text(&mut out, &rest[open..]);
            rest = "";
            break;
        };
        let tag = &after[..close];
        rest = &after[close + 1..];
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        let closing = tag.starts_with('/');
        match (name.as_str(), closing) {
            ("head" | "style" | "script" | "title", false) => {
                // Skip to the matching end tag.
                let end = format!("</{name}");
                let lower = rest.to_ascii_lowercase();
                rest = match lower.find(&end) {
                    Some(i) => rest[i..].find('>').map_or("", |j| &rest[i + j + 1..]),
                    None => "",
                };
            }
            ("br", _) => out.push('\n'),
            (
                "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "table" | "ul" | "ol"
                | "blockquote",
                _,
            ) => paragraph(&mut out),
            ("tr", true) => out.push('\n'),
            ("td" | "th", true) => out.push(' '),
            ("li", false) => {
                line(&mut out);
                out.push_str("- ");
            }
            ("li", true) => line(&mut out),
            ("a", false) => link = href(tag).map(|h| (h, out.len())),
            ("a", true) => {
                if let Some((target, start)) = link.take() {
                    let label = out[start..].trim().to_owned();
                    if !target.is_empty() && label != target && !target.starts_with("mailto:") {
                        out.push_str(&format!(" ({target})"));
                    }
                }
            }
            _ => {}
        }
    }
    push_text(&mut out, rest);
    tidy(&out)
}

fn href(tag: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let at = lower.find("href=")?;
    let value = &tag[at + 5..];
    let (quote, value) = match value.chars().next()? {
        q @ ('"' | '\'') => (Some(q), &value[1..]),
        _ => (None, value),
    };
    let end = match quote {
        Some(q) => value.find(q)?,
        None => value
            .find(|c: char| c.is_whitespace())
            .unwrap_or(value.len()),
    };
    Some(decode_entities(&value[..end]))
}

fn push_text(out: &mut String, text: &str) {
    let decoded = decode_entities(text);
    let mut space = false;
    for c in decoded.chars() {
        if c.is_whitespace() && c != '\u{a0}' {
            space = true;
        } else {
            if space && !out.is_empty() && !out.ends_with(['\n', ' ']) {
                out.push(' ');
            }
            space = false;
            out.push(if c == '\u{a0}' { ' ' } else { c });
        }
    }
    if space && !out.is_empty() && !out.ends_with(['\n', ' ']) {
        out.push(' ');
    }
}

fn line(out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

fn paragraph(out: &mut String) {
    line(out);
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
}

/// Trailing spaces off every line, at most one empty line in a row, no blank edges.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for l in text.lines() {
        let l = l.trim();
        if l.is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(l);
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

pub(crate) fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after.find(';').filter(|&e| e <= 10);
        let decoded = end.and_then(|e| {
            let entity = &after[..e];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                "mdash" => Some('—'),
                "ndash" => Some('–'),
                "hellip" => Some('…'),
                "copy" => Some('©'),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &after[e + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_a_typical_email_into_readable_text() {
        let html = r#"<html><head><title>x</title><style>p{color:red}</style></head><body>
            <h1>Welcome,&nbsp;Ada</h1>
            <p>Your   order &amp; invoice are <b>ready</b>.<br>Thanks!</p>
            <ul><li>One</li><li>Two</li></ul>
            <p><a href="https://example.test/orders/1?a=1&amp;b=2">View order</a>
               or <a href="https://example.test/">https://example.test/</a></p>
            <script>alert(1)</script></body></html>"#;
        assert_eq!(
            from_html(html),
            "Welcome, Ada\n\nYour order & invoice are ready.\nThanks!\n\n- One\n- Two\n\nView order (https://example.test/orders/1?a=1&b=2) or https://example.test/\n"
        );
    }

    #[test]
    fn entities_and_broken_markup_do_not_panic() {
        assert_eq!(
            from_html("a &#169; &#x263A; &bogus; & b"),
            "a © ☺ &bogus; & b\n"
        );
        assert_eq!(from_html("unclosed <b"), "unclosed <b\n");
        assert_eq!(from_html(""), "");
    }
}
