//! From a `requested` record to an unsigned RFC 5322 message: Handlebars on subject, HTML
//! and text with the recipient's data, a text part derived from the HTML when none was
//! given, then lettre's MIME builder (RFC 2047 headers, quoted-printable or base64 bodies
//! as the content needs). Deterministic for a given clock: boundaries derive from the
//! message id, so the same input gives the same bytes.

use crate::{
    links::Links,
    templates::{Part, Templates},
};
use lettre::{
    message::{
        header::{ContentType, HeaderName, HeaderValue},
        Attachment as LettreAttachment, Body, Mailbox, MultiPart, SinglePart,
    },
    Message,
};
use sendmill_wire::{payload::domain_of, Attachment, EmailAddress, RequestedV1};
use serde_json::Value;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template error in {part}: {reason}")]
    Template { part: &'static str, reason: String },
    #[error("the rendered subject contains a line break or control character")]
    UnsafeSubject,
    #[error("invalid address {0:?}")]
    Address(String),
    #[error("invalid header {0:?}")]
    Header(String),
    #[error("cannot build the message: {0}")]
    Build(String),
    #[error("no DKIM key for sending domain {0}")]
    NoSigningKey(String),
    #[error("DKIM signing failed: {0}")]
    Signing(String),
    /// The request's shared parts (template, attachments) could not be read back.
    #[error("the request's template and attachments cannot be read: {0}")]
    SharedParts(String),
}

/// Header text must be one line. Ingest refuses control characters already; render
/// checks again because a header is where an injection would do its harm.
fn one_line(text: &str) -> bool {
    !text.chars().any(|c| c.is_control() && c != '\t')
}

/// An address header written with our own encoding (lettre's splits long non-ASCII
/// names so that readers decode them with spaces added); lettre still gets the plain
/// form, from which it reads the From header it requires.
fn address_header(name: &'static str, address: &EmailAddress) -> Result<HeaderValue, RenderError> {
    let plain = mailbox(address)?.to_string();
    let encoded = crate::encoding::mailbox(address.name.as_deref(), &address.email);
    Ok(HeaderValue::dangerous_new_pre_encoded(
        header_name(name),
        plain,
        encoded,
    ))
}

/// A header of several mailboxes, one per folded line so no line grows past the limit.
fn address_list_header(
    name: &'static str,
    addresses: &[EmailAddress],
) -> Result<HeaderValue, RenderError> {
    let mut plain = Vec::with_capacity(addresses.len());
    let mut encoded = Vec::with_capacity(addresses.len());
    for address in addresses {
        plain.push(mailbox(address)?.to_string());
        encoded.push(crate::encoding::mailbox(
            address.name.as_deref(),
            &address.email,
        ));
    }
    Ok(HeaderValue::dangerous_new_pre_encoded(
        header_name(name),
        plain.join(", "),
        encoded.join(",\r\n "),
    ))
}

/// lettre's mailbox for `address`. The address is checked by the rules ingest applied
/// (`sendmill_wire::address::email`), not by lettre's parser: that one refuses UTF-8
/// local parts RFC 6531 allows (combining marks, as in Devanagari, and symbols), which
/// ingest has accepted. Its own parse is kept where it agrees.
fn mailbox(address: &EmailAddress) -> Result<Mailbox, RenderError> {
    if address.name.as_deref().is_some_and(|n| !one_line(n)) {
        return Err(RenderError::Header("display name".into()));
    }
    let invalid = || RenderError::Address(address.email.clone());
    sendmill_wire::address::email(&address.email).map_err(|_| invalid())?;
    let email = match address.email.parse::<lettre::Address>() {
        Ok(email) => email,
        Err(_) => {
            let (user, domain) = address.email.rsplit_once('@').ok_or_else(invalid)?;
            lettre::Address::new_dangerous(user, domain)
        }
    };
    Ok(Mailbox::new(address.name.clone(), email))
}

/// What the message gets beyond its content: tracking and unsubscribe links (when a
/// link secret is configured) and the return-path domain the unsubscribe mailto uses.
#[derive(Clone, Copy)]
pub struct Decorations<'a> {
    pub links: Option<&'a Links>,
    pub return_path_domain: &'a str,
}

impl Decorations<'_> {
    /// No links at all (the return path domain is then unused).
    pub const NONE: Decorations<'static> = Decorations {
        links: None,
        return_path_domain: "",
    };
}

/// Renders and assembles the (unsigned) message for `request` as of `now`; a message
/// submitted over SMTP is kept as it came ([`crate::submitted`]).
pub fn build(
    templates: &Templates,
    decorations: Decorations<'_>,
    request: &RequestedV1,
    now: OffsetDateTime,
) -> Result<Vec<u8>, RenderError> {
    if let Some(mime) = &request.mime {
        return crate::submitted::prepare(mime, decorations, request, now);
    }
    let data = Value::Object(request.data.clone());
    let strict = request.options.strict;
    let render = |part: Part, source: &str| {
        templates
            .render(part, source, &data, strict)
            .map_err(|reason| RenderError::Template {
                part: part.name(),
                reason,
            })
    };
    let subject = render(Part::Subject, &request.subject)?;
    if !one_line(&subject) {
        return Err(RenderError::UnsafeSubject);
    }
    let html = request
        .html
        .as_deref()
        .map(|src| render(Part::Html, src))
        .transpose()?;
    let text = match (&request.text, &html) {
        (Some(src), _) => Some(render(Part::Text, src)?),
        (None, Some(html)) => Some(crate::text::from_html(html)),
        (None, None) => None,
    };
    let options = &request.options;
    let html = match (html, decorations.links) {
        (Some(html), Some(links)) if options.track_clicks || options.track_opens => {
            Some(links.decorate_html(&html, request, options.track_clicks, options.track_opens))
        }
        (html, _) => html,
    };

    let domain = domain_of(&request.from.email);
    let encoded_subject = crate::encoding::unstructured("Subject", &subject);
    // Given, so that lettre does not derive it by parsing our headers with its stricter
    // address rules; only the formatted message is used.
    let envelope = lettre::address::Envelope::new(
        Some(mailbox(&request.from)?.email),
        vec![mailbox(&request.to)?.email],
    )
    .map_err(|e| RenderError::Build(e.to_string()))?;
    let mut builder = Message::builder()
        .envelope(envelope)
        .raw_header(address_header("From", &request.from)?)
        .raw_header(if request.to_list.is_empty() {
            address_header("To", &request.to)?
        } else {
            address_list_header("To", &request.to_list)?
        })
        .raw_header(HeaderValue::dangerous_new_pre_encoded(
            header_name("Subject"),
            subject,
            encoded_subject,
        ))
        .date(now.into())
        .message_id(Some(format!("<{}@{}>", request.message_id, domain)));
    if !request.cc.is_empty() {
        builder = builder.raw_header(address_list_header("Cc", &request.cc)?);
    }
    if let Some(reply_to) = &request.reply_to {
        builder = builder.raw_header(address_header("Reply-To", reply_to)?);
    }
    if let (true, Some(links)) = (options.list_unsubscribe, decorations.links) {
        let value = links.list_unsubscribe(request, decorations.return_path_domain);
        builder = builder
            .raw_header(HeaderValue::new(header_name("List-Unsubscribe"), value))
            .raw_header(HeaderValue::new(
                header_name("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".into(),
            ));
    }
    for header in &request.headers {
        // Folding happens only at white space; an unbroken run this long would make a
        // line over RFC 5322's 998 characters (ingest refuses it too).
        let foldable = header.value.split([' ', '\t']).all(|run| run.len() <= 900);
        if !one_line(&header.value) || !foldable {
            return Err(RenderError::Header(header.name.clone()));
        }
        let name = HeaderName::new_from_ascii(header.name.clone())
            .map_err(|_| RenderError::Header(header.name.clone()))?;
        builder = builder.raw_header(HeaderValue::new(name, header.value.clone()));
    }
    let message = match mime_tree(request, html, text)? {
        Node::Single(part) => builder.singlepart(part),
        Node::Multi(multi) => builder.multipart(multi),
    }
    .map_err(|e| RenderError::Build(e.to_string()))?;
    Ok(message.formatted())
}

enum Node {
    Single(SinglePart),
    Multi(MultiPart),
}

impl Node {
    fn into_parent(self, parent: MultiPart) -> MultiPart {
        match self {
            Node::Single(part) => parent.singlepart(part),
            Node::Multi(multi) => parent.multipart(multi),
        }
    }
}

/// The body's MIME structure, as mail clients build it:
///
/// ```text
/// multipart/mixed                  (only with attachments)
///   multipart/alternative          (only with both text and HTML)
///     text/plain
///     multipart/related            (only with inline images)
///       text/html
///       image/…  Content-ID
///   application/…  attachment
/// ```
fn mime_tree(
    request: &RequestedV1,
    html: Option<String>,
    text: Option<String>,
) -> Result<Node, RenderError> {
    // Boundaries derive from the message id: the same input gives the same bytes, and
    // `=_` cannot occur in quoted-printable or base64 content.
    let boundary = |kind: &str| format!("=_sm_{}_{kind}", request.message_id.0.simple());
    let (inline, attached): (Vec<&Attachment>, Vec<&Attachment>) = request
        .attachments
        .iter()
        .partition(|a| a.content_id.is_some());
    let html = html.map(|html| {
        let part = part(ContentType::TEXT_HTML, &html);
        if inline.is_empty() {
            Ok(Node::Single(part))
        } else {
            let mut related = MultiPart::related()
                .boundary(boundary("rel"))
                .singlepart(part);
            for a in &inline {
                let cid = a.content_id.clone().expect("partitioned on content_id");
                related = related.singlepart(
                    LettreAttachment::new_inline(cid)
                        .body(a.content.to_vec(), content_type(&a.content_type)?),
                );
            }
            Ok(Node::Multi(related))
        }
    });
    let html = html.transpose()?;
    let body = match (html, text) {
        (Some(html), Some(text)) => Node::Multi(
            html.into_parent(
                MultiPart::alternative()
                    .boundary(boundary("alt"))
                    .singlepart(part(ContentType::TEXT_PLAIN, &text)),
            ),
        ),
        (Some(html), None) => html,
        (None, Some(text)) => Node::Single(part(ContentType::TEXT_PLAIN, &text)),
        (None, None) => return Err(RenderError::Build("no body".into())),
    };
    if attached.is_empty() {
        return Ok(body);
    }
    let mut mixed = body.into_parent(MultiPart::mixed().boundary(boundary("mix")).build());
    for a in attached {
        mixed = mixed.singlepart(
            LettreAttachment::new(a.filename.clone())
                .body(a.content.to_vec(), content_type(&a.content_type)?),
        );
    }
    Ok(Node::Multi(mixed))
}

fn content_type(value: &str) -> Result<ContentType, RenderError> {
    ContentType::parse(value)
        .map_err(|_| RenderError::Build(format!("invalid content type {value:?}")))
}

fn header_name(name: &'static str) -> HeaderName {
    HeaderName::new_from_ascii_str(name)
}

/// A text part, transfer-encoded in one pass.
fn part(content_type: ContentType, text: &str) -> SinglePart {
    let (bytes, encoding) = crate::encoding::encode(text);
    SinglePart::builder()
        .header(content_type)
        .body(Body::dangerous_pre_encoded(bytes, encoding))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sendmill_wire::{
        AccountId, BatchId, Header, Lane, MessageContext, MessageId, RenderOptions,
    };

    fn request() -> RequestedV1 {
        RequestedV1 {
            message_id: MessageId::generate(),
            account_id: AccountId::generate(),
            batch_id: BatchId::generate(),
            lane: Lane::Transactional,
            accepted_at: OffsetDateTime::now_utc(),
            from: EmailAddress {
                email: "news@example.test".into(),
                name: Some("Example News".into()),
            },
            to: EmailAddress {
                email: "ada@ok.test".into(),
                name: None,
            },
            to_list: Vec::new(),
            cc: Vec::new(),
            envelope_to: None,
            reply_to: None,
            subject: "Hello {{name}}".into(),
            html: Some("<p>Hi {{name}}</p>".into()),
            text: Some("Hi {{name}}".into()),
            headers: vec![Header {
                name: "X-Campaign".into(),
                value: "welcome".into(),
            }],
            data: serde_json::json!({"name": "Ada & <Co>"})
                .as_object()
                .unwrap()
                .clone(),
            context: MessageContext::default(),
            options: RenderOptions::default(),
            attachments: vec![],
            mime: None,
            shared: None,
        }
    }

    fn build_now(r: &RequestedV1) -> Result<Vec<u8>, RenderError> {
        build(
            &Templates::new(),
            Decorations::NONE,
            r,
            OffsetDateTime::now_utc(),
        )
    }

    fn text_of(r: &RequestedV1) -> String {
        let m = build(
            &Templates::new(),
            Decorations::NONE,
            r,
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        String::from_utf8(m).unwrap()
    }

    #[test]
    fn renders_personalized_multipart_with_escaping_only_in_html() {
        let r = request();
        let text = text_of(&r);
        assert!(text.contains("Subject: Hello Ada & <Co>\r\n"), "{text}");
        assert!(text.contains("Hi Ada & <Co>"), "{text}");
        assert!(text.contains("<p>Hi Ada &amp; &lt;Co&gt;</p>"), "{text}");
        assert!(text.contains("multipart/alternative"));
        assert!(text.contains(&format!(
            "boundary=\"=_sm_{}_alt\"",
            r.message_id.0.simple()
        )));
        assert!(text.contains(&format!("Message-ID: <{}@example.test>", r.message_id)));
        assert!(text.contains("X-Campaign: welcome\r\n"));
    }

    #[test]
    fn a_to_list_is_shown_whole_on_every_copy() {
        let mut r = request();
        assert!(text_of(&r).contains("To: ada@ok.test\r\n"));
        r.to_list = vec![
            EmailAddress {
                email: "ada@ok.test".into(),
                name: None,
            },
            EmailAddress {
                email: "bob@ok.test".into(),
                name: Some("Bob".into()),
            },
        ];
        let text = text_of(&r);
        assert!(
            text.contains("To: ada@ok.test,\r\n \"Bob\" <bob@ok.test>\r\n"),
            "{text}"
        );
    }

    #[test]
    fn the_same_input_and_clock_give_the_same_bytes() {
        let r = request();
        let at = OffsetDateTime::now_utc();
        let templates = Templates::new();
        assert_eq!(
            build(&templates, Decorations::NONE, &r, at).unwrap(),
            build(&templates, Decorations::NONE, &r, at).unwrap()
        );
    }

    #[test]
    fn every_line_stays_within_rfc_5322_limits() {
        let mut r = request();
        r.headers[0].value = "word ".repeat(400).trim_end().to_owned();
        r.subject = format!("{} {{{{name}}}}", "Grüße ".repeat(50));
        r.html = Some(format!("<p>{}</p>", "y".repeat(5000)));
        r.text = Some(format!("Subject-like {}", "z".repeat(3000)));
        let text = text_of(&r);
        for line in text.split("\r\n") {
            assert!(
                line.len() <= 998,
                "a {}-byte line: {}",
                line.len(),
                &line[..80]
            );
        }
        // A subject without spaces cannot be folded as text; it goes as encoded-words.
        r.subject = "s".repeat(1500);
        assert!(text_of(&r).split("\r\n").all(|l| l.len() <= 998));
        // A custom header that cannot be folded is refused.
        r.headers.push(Header {
            name: "X-Unbroken".into(),
            value: "x".repeat(2000),
        });
        let e = build_now(&r);
        assert!(matches!(e, Err(RenderError::Header(_))));
    }

    #[test]
    fn html_only_gets_a_generated_text_part() {
        let mut r = request();
        r.text = None;
        r.html =
            Some("<h1>Hi {{name}}</h1><p>See <a href=\"https://x.test/a\">this</a></p>".into());
        let text = text_of(&r);
        assert!(text.contains("text/plain"), "{text}");
        assert!(text.contains("See this (https://x.test/a)"), "{text}");
    }

    #[test]
    fn a_subject_that_renders_a_line_break_is_refused() {
        let mut r = request();
        r.data
            .insert("name".into(), "x\r\nBcc: victim@ok.test".into());
        assert!(matches!(build_now(&r), Err(RenderError::UnsafeSubject)));
    }

    #[test]
    fn a_broken_template_names_its_part() {
        let mut r = request();
        r.html = Some("{{#if}}".into());
        let e = build_now(&r).err().unwrap();
        assert!(
            matches!(e, RenderError::Template { part: "html", .. }),
            "{e}"
        );
    }

    #[test]
    fn strict_messages_fail_on_missing_variables() {
        let mut r = request();
        r.subject = "Hello {{missing}}".into();
        assert!(build_now(&r).is_ok());
        r.options.strict = true;
        let e = build_now(&r).err().unwrap();
        assert!(
            matches!(
                e,
                RenderError::Template {
                    part: "subject",
                    ..
                }
            ),
            "{e}"
        );
    }
}
