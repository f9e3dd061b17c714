//! From a `requested` record to an unsigned RFC 5322 message: Handlebars on subject, HTML
//! and text with the recipient's data, then lettre's MIME builder. Deterministic for a
//! given clock, so the output can be compared byte for byte.

use handlebars::Handlebars;
use lettre::{
    message::{
        header::{ContentType, HeaderName, HeaderValue},
        Mailbox, MultiPart, SinglePart,
    },
    Message,
};
use sendmill_wire::{payload::domain_of, EmailAddress, RequestedV1};
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
}

/// A message ready to be signed, with its envelope.
pub struct Unsigned {
    pub request: RequestedV1,
    pub envelope_from: String,
    pub bytes: Vec<u8>,
}

/// The template engines: one escaping HTML for the HTML part, one leaving text as is for
/// the subject and the text part.
pub struct Templates {
    html: Handlebars<'static>,
    plain: Handlebars<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        let html = Handlebars::new();
        let mut plain = Handlebars::new();
        plain.register_escape_fn(handlebars::no_escape);
        Self { html, plain }
    }

    fn render(
        engine: &Handlebars<'static>,
        part: &'static str,
        source: &str,
        data: &Value,
    ) -> Result<String, RenderError> {
        engine
            .render_template(source, data)
            .map_err(|e| RenderError::Template {
                part,
                reason: e.to_string(),
            })
    }
}

fn mailbox(address: &EmailAddress) -> Result<Mailbox, RenderError> {
    let email = address
        .email
        .parse()
        .map_err(|_| RenderError::Address(address.email.clone()))?;
    Ok(Mailbox::new(address.name.clone(), email))
}

/// Renders and assembles the message for `request` as of `now`.
pub fn build(
    templates: &Templates,
    request: &RequestedV1,
    now: OffsetDateTime,
) -> Result<Unsigned, RenderError> {
    let data = Value::Object(request.data.clone());
    let subject = Templates::render(&templates.plain, "subject", &request.subject, &data)?;
    if subject.chars().any(char::is_control) {
        return Err(RenderError::UnsafeSubject);
    }
    let html = request
        .html
        .as_deref()
        .map(|src| Templates::render(&templates.html, "html", src, &data))
        .transpose()?;
    let text = request
        .text
        .as_deref()
        .map(|src| Templates::render(&templates.plain, "text", src, &data))
        .transpose()?;

    let domain = domain_of(&request.from.email);
    let mut builder = Message::builder()
        .from(mailbox(&request.from)?)
        .to(mailbox(&request.to)?)
        .subject(subject)
        .date(now.into())
        .message_id(Some(format!("<{}@{}>", request.message_id, domain)));
    if let Some(reply_to) = &request.reply_to {
        builder = builder.reply_to(mailbox(reply_to)?);
    }
    for header in &request.headers {
        let name = HeaderName::new_from_ascii(header.name.clone())
            .map_err(|_| RenderError::Header(header.name.clone()))?;
        builder = builder.raw_header(HeaderValue::new(name, header.value.clone()));
    }
    let message = match (html, text) {
        (Some(html), Some(text)) => {
            builder.multipart(MultiPart::alternative_plain_html(text, html))
        }
        (Some(html), None) => builder.singlepart(SinglePart::html(html)),
        (None, Some(text)) => builder.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(text),
        ),
        (None, None) => return Err(RenderError::Build("no body".into())),
    }
    .map_err(|e| RenderError::Build(e.to_string()))?;
    Ok(Unsigned {
        request: request.clone(),
        envelope_from: request.from.email.clone(),
        bytes: message.formatted(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sendmill_wire::{AccountId, BatchId, Header, Lane, MessageContext, MessageId};

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
        }
    }

    #[test]
    fn renders_personalized_multipart_with_escaping_only_in_html() {
        let r = request();
        let m = build(&Templates::new(), &r, OffsetDateTime::now_utc()).unwrap();
        let text = String::from_utf8(m.bytes).unwrap();
        assert!(text.contains("Subject: Hello Ada & <Co>\r\n"), "{text}");
        assert!(text.contains("Hi Ada & <Co>"), "{text}");
        assert!(text.contains("<p>Hi Ada &amp; &lt;Co&gt;</p>"), "{text}");
        assert!(text.contains("multipart/alternative"));
        assert!(text.contains(&format!("Message-ID: <{}@example.test>", r.message_id)));
        assert!(text.contains("X-Campaign: welcome\r\n"));
        assert_eq!(m.envelope_from, "news@example.test");
    }

    #[test]
    fn a_subject_that_renders_a_line_break_is_refused() {
        let mut r = request();
        r.data
            .insert("name".into(), "x\r\nBcc: victim@ok.test".into());
        assert!(matches!(
            build(&Templates::new(), &r, OffsetDateTime::now_utc()),
            Err(RenderError::UnsafeSubject)
        ));
    }

    #[test]
    fn a_broken_template_names_its_part() {
        let mut r = request();
        r.html = Some("{{#if}}".into());
        let e = build(&Templates::new(), &r, OffsetDateTime::now_utc())
            .err()
            .unwrap();
        assert!(
            matches!(e, RenderError::Template { part: "html", .. }),
            "{e}"
        );
    }
}
