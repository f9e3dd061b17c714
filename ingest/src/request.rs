//! The JSON body of `POST /v1/messages`. Unknown fields are rejected (a misspelt option
//! must not be silently ignored). Addresses are either `"Name <a@b.c>"` / `"a@b.c"`
//! strings or `{"email", "name"}` objects.

use serde::{
    de::{self, MapAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::{Map, Value};
use std::{collections::BTreeMap, fmt, marker::PhantomData};
use time::OffsetDateTime;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub from: Mailbox,
    pub to: Vec<Recipient>,
    #[serde(default)]
    pub reply_to: Option<Mailbox>,
    /// Required unless `template` is given.
    #[serde(default)]
    pub subject: Option<String>,
    /// A stored template instead of inline subject, html and text.
    #[serde(default)]
    pub template: Option<TemplateRef>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    /// Extra headers, name → value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Template data shared by every recipient; each recipient's `data` is merged over it.
    #[serde(default)]
    pub data: Map<String, Value>,
    #[serde(default)]
    pub campaign_id: Option<String>,
    #[serde(default)]
    pub ip_pool: Option<String>,
    /// A template variable missing from the data fails the message instead of rendering
    /// empty.
    #[serde(default)]
    pub strict_templates: bool,
    /// Open tracking for this message; unset: the account's default.
    #[serde(default)]
    pub track_opens: Option<bool>,
    /// Click tracking for this message; unset: the account's default.
    #[serde(default)]
    pub track_clicks: Option<bool>,
    /// One-click unsubscribe headers; unset: on for campaigns, off otherwise.
    #[serde(default)]
    pub list_unsubscribe: Option<bool>,
    #[serde(default)]
    pub attachments: Vec<AttachmentInput>,
    /// Hold the messages until this instant (RFC 3339, at most 72 h ahead).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub send_at: Option<OffsetDateTime>,
    /// Validate and render, answer as if accepted, but queue and send nothing.
    #[serde(default)]
    pub sandbox: bool,
    /// The SendGrid batch id the held copies are cancelled by (the SendGrid drop-in's
    /// `batch_id`, [`crate::compat::sendgrid`]); not part of the native body.
    #[serde(skip)]
    pub sendgrid_batch: Option<String>,
    /// Refuse the whole request when one recipient is invalid (the drop-ins: SendGrid and
    /// SES accept a request whole or not at all); not part of the native body.
    #[serde(skip)]
    pub all_or_nothing: bool,
}

/// A stored template by id, at a version or the latest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRef {
    pub id: uuid::Uuid,
    #[serde(default)]
    pub version: Option<i32>,
}

/// A file: `content` is base64; `content_id` makes it inline (`<img src="cid:…">`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInput {
    pub filename: String,
    pub content_type: String,
    pub content: String,
    #[serde(default)]
    pub content_id: Option<String>,
}

/// A sender or reply-to mailbox.
#[derive(Clone, Debug)]
pub struct Mailbox {
    pub email: String,
    pub name: Option<String>,
}

/// One recipient with its own template data and metadata.
#[derive(Debug)]
pub struct Recipient {
    pub email: String,
    pub name: Option<String>,
    /// This recipient's template data.
    pub data: Map<String, Value>,
    /// Merged over the request's metadata for this recipient's events.
    pub metadata: BTreeMap<String, String>,
    /// Shown in `Cc`; each gets a copy with its own message id.
    pub cc: Vec<Mailbox>,
    /// Not shown; each gets a copy with its own message id.
    pub bcc: Vec<Mailbox>,
    /// Merged over the request's headers for this recipient's copies.
    pub headers: BTreeMap<String, String>,
    /// This recipient's subject (Handlebars) instead of the request's.
    pub subject: Option<String>,
    /// This recipient's `send_at` instead of the request's.
    pub send_at: Option<OffsetDateTime>,
    /// Every address the `To` field shows when it is more than this recipient (the
    /// drop-ins' `to` lists, [`crate::compat`]); not part of the native body, where each
    /// recipient's `To` shows itself.
    pub to_list: Vec<Mailbox>,
}

/// The object form of [`Mailbox`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxFields {
    email: String,
    #[serde(default)]
    name: Option<String>,
}

/// The object form of [`Recipient`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientFields {
    email: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    data: Map<String, Value>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    cc: Vec<Mailbox>,
    #[serde(default)]
    bcc: Vec<Mailbox>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    send_at: Option<OffsetDateTime>,
}

impl From<MailboxFields> for Mailbox {
    fn from(f: MailboxFields) -> Self {
        Mailbox {
            email: f.email,
            name: f.name,
        }
    }
}

impl From<RecipientFields> for Recipient {
    fn from(f: RecipientFields) -> Self {
        Recipient {
            email: f.email,
            name: f.name,
            data: f.data,
            metadata: f.metadata,
            cc: f.cc,
            bcc: f.bcc,
            headers: f.headers,
            subject: f.subject,
            send_at: f.send_at,
            to_list: Vec::new(),
        }
    }
}

/// Object forms that can also be written as an address string.
trait FromAddressString: Sized {
    fn from_address(email: String, name: Option<String>) -> Self;
}

impl FromAddressString for MailboxFields {
    fn from_address(email: String, name: Option<String>) -> Self {
        MailboxFields { email, name }
    }
}

impl FromAddressString for RecipientFields {
    fn from_address(email: String, name: Option<String>) -> Self {
        RecipientFields {
            email,
            name,
            data: Map::new(),
            metadata: BTreeMap::new(),
            cc: Vec::new(),
            bcc: Vec::new(),
            headers: BTreeMap::new(),
            subject: None,
            send_at: None,
        }
    }
}

/// Splits `"Name <a@b.c>"` into address and name; a bare string is the address. A
/// quoted name loses its quotes and its quoted-pairs their backslash (RFC 5322 §3.2.4:
/// `"O\"Brien"` is `O"Brien`), as the object form would give it.
pub fn split_address(text: &str) -> (String, Option<String>) {
    let text = text.trim();
    if let (Some(open), true) = (text.rfind('<'), text.ends_with('>')) {
        let email = text[open + 1..text.len() - 1].trim().to_owned();
        let name = text[..open].trim();
        let name = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            Some(quoted) => unquote(quoted),
            None => name.trim_matches('"').to_owned(),
        };
        let name = name.trim();
        let name = (!name.is_empty()).then(|| name.to_owned());
        (email, name)
    } else {
        (text.to_owned(), None)
    }
}

/// The content of a quoted-string: each `\x` is `x`.
fn unquote(quoted: &str) -> String {
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Deserializes an address string or the object form `T`.
struct StringOrObject<T>(PhantomData<T>);

impl<'de, T> Visitor<'de> for StringOrObject<T>
where
    T: FromAddressString + Deserialize<'de>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address string or an object with `email`")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        let (email, name) = split_address(v);
        Ok(T::from_address(email, name))
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<T, M::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

impl<'de> Deserialize<'de> for Mailbox {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StringOrObject::<MailboxFields>(PhantomData))
            .map(Into::into)
    }
}

impl<'de> Deserialize<'de> for Recipient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StringOrObject::<RecipientFields>(PhantomData))
            .map(Into::into)
    }
}

pub use sendmill_platform::body::{parse, ParseError};

impl SendRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        parse(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_names_are_unquoted() {
        let cases = [
            (r#""O\"Brien" <a@ok.test>"#, Some(r#"O"Brien"#)),
            (r#""a\\b" <a@ok.test>"#, Some(r"a\b")),
            (
                r#""Müller, \"Kunde\" (Chef)" <a@ok.test>"#,
                Some(r#"Müller, "Kunde" (Chef)"#),
            ),
            ("Plain Name <a@ok.test>", Some("Plain Name")),
            (r#"" " <a@ok.test>"#, None),
            (r#"" <a@ok.test>"#, None),
            ("<a@ok.test>", None),
        ];
        for (text, name) in cases {
            let (email, parsed) = split_address(text);
            assert_eq!(email, "a@ok.test", "{text}");
            assert_eq!(parsed.as_deref(), name, "{text}");
        }
    }

    #[test]
    fn addresses_parse_from_strings_and_objects() {
        let r = SendRequest::parse(
            br#"{"from":"Example News <news@example.test>","to":["ada@ok.test",{"email":"bob@ok.test","name":"Bob","data":{"n":1}}],"subject":"s","text":"t"}"#,
        )
        .unwrap();
        assert_eq!(r.from.email, "news@example.test");
        assert_eq!(r.from.name.as_deref(), Some("Example News"));
        assert_eq!(r.to[0].email, "ada@ok.test");
        assert_eq!(r.to[1].name.as_deref(), Some("Bob"));
        assert_eq!(r.to[1].data["n"], 1);
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = SendRequest::parse(br#"{"from":"a@b.test","to":[],"subject":"s","txet":"t"}"#)
            .unwrap_err();
        assert_eq!(e.field, "txet");
        assert!(e.message.contains("unknown field"), "{}", e.message);

        let e = SendRequest::parse(
            br#"{"from":"a@b.test","to":[{"email":"x@y.test","nmae":"X"}],"subject":"s"}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "to[0].nmae");
    }

    #[test]
    fn wrong_types_and_missing_fields_are_named() {
        let e = SendRequest::parse(br#"{"from":"a@b.test","to":"x@y.test","subject":"s"}"#)
            .unwrap_err();
        assert_eq!(e.field, "to");
        let e = SendRequest::parse(br#"{"from":"a@b.test","subject":"s"}"#).unwrap_err();
        assert!(e.message.contains("`to`"), "{}", e.message);
        let e =
            SendRequest::parse(br#"{"from":"a@b.test","to":["x@y.test"],"send_at":"tomorrow"}"#)
                .unwrap_err();
        assert_eq!(e.field, "send_at");
        let e = SendRequest::parse(b"{not json").unwrap_err();
        assert!(!e.message.is_empty());
    }
}
