//! Drop-ins for the hosted APIs: SendGrid v3 Mail Send ([`sendgrid`]) and Amazon SES v2
//! `SendEmail` ([`ses`], authenticated with AWS Signature V4, [`sigv4`]), so a team's
//! official client library sends through Sendmill with only its host and key changed.
//!
//! In: a request in the hosted API's shape. Out: a native [`SendRequest`] (or, for SES
//! raw MIME, the submission path's records) accepted by the same sequence as `POST
//! /v1/messages` ([`crate::send::send_once`]): the same validation, suppressions, limits,
//! idempotency, records and events. Nothing here is a second pipeline; each module only
//! translates, and answers in its API's shapes (status codes and error bodies).
//!
//! What a drop-in cannot honour is refused with an error naming the field, never
//! ignored. Where the models differ, the module doc says how.
//!
//! [`SendRequest`]: crate::request::SendRequest

pub mod sendgrid;
pub mod ses;
pub mod sigv4;

/// Why a piece of literal content cannot be made a template: the only text Handlebars
/// cannot keep literally is a backslash right before `{{`.
pub const BACKSLASH_BRACES: &str =
    "a backslash right before {{ cannot be sent literally (Sendmill renders content with Handlebars)";

/// Why a substitution cannot be placed: right after `{` or `\\` its expression would read
/// as another Handlebars construct.
pub const TAG_AFTER_BRACE: &str =
    "a substitution tag right after { or a backslash cannot be placed (Sendmill renders content with Handlebars)";

/// Content the hosted API sends as it is (not a template) made a Handlebars template
/// that renders to exactly `text`, with each of `placeholders` (text to find, the
/// template expression to put there) replaced; the longest match wins where several
/// start at one place. Errors: [`BACKSLASH_BRACES`] when `text` has `\{{`,
/// [`TAG_AFTER_BRACE`] when a placeholder follows `{` or `\`.
pub fn literal_template(
    text: &str,
    placeholders: &[(String, String)],
) -> Result<String, &'static str> {
    if text.contains("\\{{") {
        return Err(BACKSLASH_BRACES);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while !rest.is_empty() {
        let found = placeholders
            .iter()
            .filter(|(find, _)| !find.is_empty() && rest.starts_with(find.as_str()))
            .max_by_key(|(find, _)| find.len());
        if let Some((find, expression)) = found {
            if out.ends_with(['{', '\\']) {
                return Err(TAG_AFTER_BRACE);
            }
            out.push_str(expression);
            rest = &rest[find.len()..];
            continue;
        }
        if rest.starts_with("{{") {
            out.push_str("\\{{");
            rest = &rest[2..];
            continue;
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sendmill_render::templates::{Part, Templates};

    #[test]
    fn literal_content_renders_as_it_was() {
        let set = Templates::new();
        let data = serde_json::json!({"x": "X", "s0": "Ada <3"});
        for text in [
            "plain",
            "{{x}} stays",
            "{{{x}}} and {{#if x}}y{{/if}} and {{{{raw}}}}",
            "a\\b \\ {x} }} {",
            "ünïcødé {{",
        ] {
            let source = literal_template(text, &[]).unwrap();
            for part in [Part::Html, Part::Text, Part::Subject] {
                assert_eq!(
                    set.render(part, &source, &data, true).unwrap(),
                    text,
                    "{part:?}"
                );
            }
        }
        assert_eq!(literal_template("a\\{{x}}", &[]), Err(BACKSLASH_BRACES));
    }

    #[test]
    fn placeholders_replace_their_text_longest_first() {
        let set = Templates::new();
        let data = serde_json::json!({"s0": "Ada <3", "s1": "LONG"});
        let subs = [
            ("-name-".to_owned(), "{{{s0}}}".to_owned()),
            ("-name-long-".to_owned(), "{{{s1}}}".to_owned()),
        ];
        let source = literal_template("Hi -name-, -name-long- {{x}} -name-}}", &subs).unwrap();
        assert_eq!(
            set.render(Part::Html, &source, &data, false).unwrap(),
            "Hi Ada <3, LONG {{x}} Ada <3}}"
        );
        // A tag that starts with braces is still a tag.
        let braces = [("{{name}}".to_owned(), "{{{s0}}}".to_owned())];
        let source = literal_template("Hi {{name}} {{other}}", &braces).unwrap();
        assert_eq!(
            set.render(Part::Text, &source, &data, false).unwrap(),
            "Hi Ada <3 {{other}}"
        );
        assert_eq!(literal_template("{-name-", &subs), Err(TAG_AFTER_BRACE));
        assert_eq!(literal_template("C:\\-name-", &subs), Err(TAG_AFTER_BRACE));
    }
}
