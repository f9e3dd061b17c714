//! The versioned records of the `requested`, `ready`, `retry` and `dlq` topics and their
//! codec. JSON for every record but `ready`: a few microseconds per record (measured:
//! ~108k encode+decode/s for 2 KB) is far from any bottleneck, and it is readable with
//! kcat while debugging.
//!
//! `ready` and `requested` are the exceptions (`sendmill.ready.v2`,
//! `sendmill.requested.v2`). A `ready` record's ~20 KB message is nearly all of the
//! record, and as base64 inside JSON it cost 84 µs per record to encode (render) and
//! decode (dispatcher) on the 2-core machine, a tenth of an RSA-2048 signature
//! (`sendmill bench work --part ready-codec`); a `requested` record carries the request's
//! ~15 KB template and its attachments, JSON-escaped and base64 in every recipient's
//! record. Version 2 of each is a binary frame: the small fields as JSON, then the large
//! parts' bytes as they are (see [`ReadyV1`] and [`RequestedV1`]). `requested` version 3
//! is the head alone, pointing to the request's parts on the blobs topic
//! ([`crate::shared`]). Version 1 records
//! (JSON) are still read, and written during a rolling upgrade.

use crate::{AccountId, BatchId, Lane, MessageId, SmtpReply};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::{borrow::Cow, collections::BTreeMap};
use time::OffsetDateTime;

/// A record type written to one topic family. `SCHEMA` names type and version; it travels
/// in the `sendmill-schema` Kafka header so a consumer can tell versions apart.
pub trait WirePayload: Serialize + DeserializeOwned {
    /// The schema name and version this build writes.
    const SCHEMA: &'static str;

    /// The record's bytes as this build writes them: JSON unless the type says otherwise.
    fn to_bytes(&self) -> Vec<u8> {
        // Our payloads only hold strings, numbers, maps with string keys and JSON
        // values, which serde_json always encodes.
        serde_json::to_vec(self).expect("wire payloads always serialize")
    }

    /// Reads a record of any version this build still decodes.
    ///
    /// Errors: bytes that are none of those versions.
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeFailure> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The schema and version [`WirePayload::to_bytes`] writes this record in: `SCHEMA`,
    /// unless the type writes some records in a newer version (a `requested` record whose
    /// parts are on the blobs topic: `sendmill.requested.v3`).
    fn schema(&self) -> &'static str {
        Self::SCHEMA
    }

    /// The record as the previous version (its schema and bytes), for a type whose
    /// version this build writes is newer than what the release before it reads: written
    /// instead during a rolling upgrade (`kafka.ready_version = 1`). `None`: this type
    /// has no older version still read by a supported release.
    fn previous_version(&self) -> Option<(&'static str, Vec<u8>)> {
        None
    }
}

/// Why bytes are not a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeFailure {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A binary frame that is cut short or malformed.
    #[error("malformed frame: {0}")]
    Frame(&'static str),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot decode {schema}: {source}")]
pub struct DecodeError {
    pub schema: &'static str,
    #[source]
    pub source: DecodeFailure,
}

/// `payload` as this build writes it ([`WirePayload::to_bytes`]).
pub fn encode<T: WirePayload>(payload: &T) -> Vec<u8> {
    payload.to_bytes()
}

/// A record of any version `T` still reads ([`WirePayload::from_bytes`]).
///
/// Errors: [`DecodeError`] naming the schema, when the bytes are none of them.
pub fn decode<T: WirePayload>(bytes: &[u8]) -> Result<T, DecodeError> {
    T::from_bytes(bytes).map_err(|source| DecodeError {
        schema: T::SCHEMA,
        source,
    })
}

/// A mailbox: address plus optional display name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailAddress {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A caller-supplied header, already validated by ingest (no CR/LF, not reserved).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// What every event of a message repeats so that events can be grouped without joins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageContext {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_pool: Option<String>,
    /// A double opt-in confirmation a person asked for (the audiences' subscribe form):
    /// the account's `unsubscribe` suppression does not stop it, so someone who once
    /// unsubscribed from everything can sign up again; a bounce, a complaint, a manual
    /// entry or the global list still do. Only the audiences set it: no API request can.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requested_confirmation: bool,
}

/// `sendmill.requested.{lane}.v1`: one accepted recipient, ready to be rendered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestedV1 {
    pub message_id: MessageId,
    pub account_id: AccountId,
    pub batch_id: BatchId,
    pub lane: Lane,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    pub from: EmailAddress,
    /// The `To` of the message: this copy's recipient (unless `envelope_to` says another).
    pub to: EmailAddress,
    /// Every address the `To` field shows, when it shows more than `to` (a SendGrid
    /// personalization's or an SES destination's `to` list, `to` among them); each of
    /// them gets a copy of its own. Empty: the field shows `to` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_list: Vec<EmailAddress>,
    /// The `Cc` of the message (every one of them gets a copy with its own id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<EmailAddress>,
    /// The address this copy is delivered to when it is not `to` (a cc or bcc copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<EmailAddress>,
    /// Handlebars template of the subject.
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Header>,
    /// The recipient's personalization data, merged over the request's shared data.
    #[serde(default)]
    pub data: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub context: MessageContext,
    #[serde(default)]
    pub options: RenderOptions,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// A message submitted over SMTP (RFC 6409): its complete RFC 5322 bytes with CRLF
    /// line ends, `X-Sendmill-*` and `Bcc` fields already removed. Render keeps it as it
    /// is (no template, no re-encoding) and only adds what every message gets; `subject`,
    /// `html`, `text`, `headers`, `attachments` and `data` are then empty. Shared, not
    /// copied, by the records of one message's recipients.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_bytes_option"
    )]
    pub mime: Option<bytes::Bytes>,
    /// Where the large parts (`html`, `text`, `mime`, every attachment's `content`) are
    /// when this record does not carry them: the request's one [`SharedParts`] record on
    /// the blobs topic, which all its recipients' records point to. Render reads it
    /// there and fills them in before anything else looks at the record
    /// ([`SharedParts::fill`]). Written only as a version 3 frame, which a release that
    /// does not know this field refuses (to its DLQ) instead of sending an empty message.
    ///
    /// [`SharedParts`]: crate::SharedParts
    /// [`SharedParts::fill`]: crate::SharedParts::fill
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<crate::SharedRef>,
}

/// A file sent with the message: attached, or inline (an image the HTML shows through
/// `cid:<content_id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    /// Shared, not copied, by the records of one request's copies (a 2 MiB attachment
    /// sent to 1,000 recipients is 2 MiB in memory, not 2 GiB).
    #[serde(with = "base64_bytes")]
    pub content: bytes::Bytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
}

/// How a message is rendered; every field defaults to off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderOptions {
    /// A variable missing from the data is an error (`render_failed`) instead of empty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Add an open-tracking pixel to the HTML part.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub track_opens: bool,
    /// Route the HTML part's links through the click-tracking endpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub track_clicks: bool,
    /// Add `List-Unsubscribe` (https and mailto) and one-click `List-Unsubscribe-Post`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub list_unsubscribe: bool,
}

/// The first bytes of a `sendmill.requested.v2` frame (a version 1 record is JSON and
/// starts with `{`).
const REQUESTED_V2_MAGIC: &[u8; 4] = b"SMQ2";

/// The first bytes of a `sendmill.requested.v3` frame: a record whose large parts are on
/// the blobs topic ([`RequestedV1::shared`]).
const REQUESTED_V3_MAGIC: &[u8; 4] = b"SMQ3";

/// A frame section's length when the section is absent (`html`, `text` or `mime` of
/// `None`).
const ABSENT: u64 = u64::MAX;

/// Version 2 (written): a binary frame,
///
/// ```text
/// "SMQ2" | head length: u32 BE | head: JSON
///        | section count: u32 BE | one length per section: u64 BE (u64::MAX: absent)
///        | the sections' bytes, in order
/// ```
///
/// The head is the version 1 JSON of the record with the large parts left out (`html`,
/// `text` and `mime` absent, every attachment's `content` empty); the sections are
/// `html`, `text`, `mime`, then each attachment's content, as they are. A 15 KB HTML
/// template is then copied rather than JSON-escaped by ingest and unescaped by render, and
/// an attachment is not base64 (a third larger) inside JSON. Version 1 (read, and written
/// during a rolling upgrade: `kafka.requested_version = 1`): the whole record as JSON.
///
/// Version 3 (written for a record with [`RequestedV1::shared`]): `"SMQ3" | head length:
/// u32 BE | head: JSON`, the head alone (with `shared`); the large parts are in the
/// request's one [`SharedParts`](crate::SharedParts) record. A release before version 3
/// refuses the magic, so it never renders such a record without its parts.
impl WirePayload for RequestedV1 {
    const SCHEMA: &'static str = "sendmill.requested.v2";

    fn schema(&self) -> &'static str {
        match self.shared {
            Some(_) => "sendmill.requested.v3",
            None => Self::SCHEMA,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        if self.shared.is_some() {
            // Version 3: the head alone; the large parts are on the blobs topic.
            return start_frame(REQUESTED_V3_MAGIC, &self.head(), 0);
        }
        let sections = self.sections();
        let mut out = start_frame(REQUESTED_V2_MAGIC, &self.head(), sections_len(&sections));
        write_sections(&mut out, &sections);
        out
    }

    /// Version 1: the serde (JSON) form, which every release reads. `None` for a record
    /// whose parts are on the blobs topic: a release that reads only version 1 would
    /// ignore `shared` and send the message empty, so it is written as version 3, which
    /// such a release refuses.
    fn previous_version(&self) -> Option<(&'static str, Vec<u8>)> {
        if self.shared.is_some() {
            return None;
        }
        let json = serde_json::to_vec(self).expect("wire payloads always serialize");
        Some(("sendmill.requested.v1", json))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeFailure> {
        if let Some(frame) = bytes.strip_prefix(REQUESTED_V3_MAGIC) {
            let (head, rest) = split_counted(frame, "head")?;
            let record: RequestedV1 = serde_json::from_slice(head)?;
            if record.shared.is_none() {
                return Err(DecodeFailure::Frame("a version 3 record without `shared`"));
            }
            if record.html.is_some()
                || record.text.is_some()
                || record.mime.is_some()
                || record.attachments.iter().any(|a| !a.content.is_empty())
            {
                return Err(DecodeFailure::Frame("a version 3 head carrying parts"));
            }
            if !rest.is_empty() {
                return Err(DecodeFailure::Frame("bytes after the head"));
            }
            return Ok(record);
        }
        let Some(frame) = bytes.strip_prefix(REQUESTED_V2_MAGIC) else {
            let record: RequestedV1 = serde_json::from_slice(bytes)?;
            if record.shared.is_some() {
                // Never written: a record with `shared` is a version 3 frame.
                return Err(DecodeFailure::Frame("a version 1 record with `shared`"));
            }
            return Ok(record);
        };
        let (head, rest) = split_counted(frame, "head")?;
        let mut record: RequestedV1 = serde_json::from_slice(head)?;
        if record.shared.is_some() {
            return Err(DecodeFailure::Frame("a version 2 record with `shared`"));
        }
        let sections = read_sections(rest, 3 + record.attachments.len())?;
        crate::SharedParts::from_sections(&sections)?.move_into(&mut record);
        Ok(record)
    }
}

/// Whether `a` and `b` hold the same bytes: at once when they share their storage.
fn same_bytes(a: &bytes::Bytes, b: &bytes::Bytes) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

/// The bytes [`write_sections`] adds for `sections`.
pub(crate) fn sections_len(sections: &[Option<&[u8]>]) -> usize {
    4 + 8 * sections.len()
        + sections
            .iter()
            .map(|s| s.map_or(0, <[u8]>::len))
            .sum::<usize>()
}

/// Appends `section count: u32 BE | one length per section: u64 BE (u64::MAX: absent) |
/// the sections' bytes`, what [`read_sections`] reads back.
pub(crate) fn write_sections(out: &mut Vec<u8>, sections: &[Option<&[u8]>]) {
    let count = u32::try_from(sections.len()).expect("far fewer than 2^32 attachments");
    out.extend_from_slice(&count.to_be_bytes());
    for section in sections {
        let len = section.map_or(ABSENT, |s| s.len() as u64);
        out.extend_from_slice(&len.to_be_bytes());
    }
    for section in sections.iter().flatten() {
        out.extend_from_slice(section);
    }
}

/// The `expected` sections [`write_sections`] wrote at the start of `rest`, which they
/// must fill exactly.
///
/// Errors: another section count, a cut length or section, bytes after the last one.
pub(crate) fn read_sections(
    rest: &[u8],
    expected: usize,
) -> Result<Vec<Option<&[u8]>>, DecodeFailure> {
    let (count, mut rest) = rest
        .split_first_chunk::<4>()
        .ok_or(DecodeFailure::Frame("no section count"))?;
    if u32::from_be_bytes(*count) as usize != expected {
        return Err(DecodeFailure::Frame(
            "section count does not match the head",
        ));
    }
    // Bounded by what the bytes can hold, whatever count they claim.
    let mut lengths = Vec::with_capacity(expected.min(rest.len() / 8));
    for _ in 0..expected {
        let (len, after) = rest
            .split_first_chunk::<8>()
            .ok_or(DecodeFailure::Frame("cut in the section lengths"))?;
        lengths.push(u64::from_be_bytes(*len));
        rest = after;
    }
    let mut sections = Vec::with_capacity(lengths.len());
    for len in lengths {
        if len == ABSENT {
            sections.push(None);
            continue;
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= rest.len())
            .ok_or(DecodeFailure::Frame("section longer than the record"))?;
        let (section, after) = rest.split_at(len);
        rest = after;
        sections.push(Some(section));
    }
    if !rest.is_empty() {
        return Err(DecodeFailure::Frame("bytes after the last section"));
    }
    Ok(sections)
}

/// A binary frame's start, `magic | head length: u32 BE | head as JSON`, in a buffer with
/// room for `rest` more bytes: what [`split_counted`] reads back.
fn start_frame<H: Serialize>(magic: &[u8; 4], head: &H, rest: usize) -> Vec<u8> {
    let head = serde_json::to_vec(head).expect("wire payloads always serialize");
    let head_len = u32::try_from(head.len()).expect("a head is far below 4 GiB");
    let mut out = Vec::with_capacity(8 + head.len() + rest);
    out.extend_from_slice(magic);
    out.extend_from_slice(&head_len.to_be_bytes());
    out.extend_from_slice(&head);
    out
}

/// `frame` split after a u32 BE length and that many bytes: (those bytes, the rest).
fn split_counted<'a>(
    frame: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), DecodeFailure> {
    let (len, rest) = frame
        .split_first_chunk::<4>()
        .ok_or(DecodeFailure::Frame(what))?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(DecodeFailure::Frame(what));
    }
    Ok(rest.split_at(len))
}

impl RequestedV1 {
    /// The record without its large parts, as a version 2 frame's head holds it.
    fn head(&self) -> RequestedV1 {
        // Every field by name, so that a new one cannot be left out of the head.
        let RequestedV1 {
            message_id,
            account_id,
            batch_id,
            lane,
            accepted_at,
            from,
            to,
            to_list,
            cc,
            envelope_to,
            reply_to,
            subject,
            html: _,
            text: _,
            headers,
            data,
            context,
            options,
            attachments,
            mime: _,
            shared,
        } = self;
        RequestedV1 {
            message_id: *message_id,
            account_id: *account_id,
            batch_id: *batch_id,
            lane: *lane,
            accepted_at: *accepted_at,
            from: from.clone(),
            to: to.clone(),
            to_list: to_list.clone(),
            cc: cc.clone(),
            envelope_to: envelope_to.clone(),
            reply_to: reply_to.clone(),
            subject: subject.clone(),
            html: None,
            text: None,
            headers: headers.clone(),
            data: data.clone(),
            context: context.clone(),
            options: options.clone(),
            attachments: attachments
                .iter()
                .map(|a| Attachment {
                    filename: a.filename.clone(),
                    content_type: a.content_type.clone(),
                    content: bytes::Bytes::new(),
                    content_id: a.content_id.clone(),
                })
                .collect(),
            mime: None,
            shared: shared.clone(),
        }
    }

    /// This record without its large parts, pointing to them at `reference` instead
    /// (written as a version 3 frame).
    pub fn pointing_to(&self, reference: crate::SharedRef) -> RequestedV1 {
        let mut record = self.head();
        record.shared = Some(reference);
        record
    }

    /// Whether this record's large parts are the same as `other`'s: the copies of one
    /// request share their attachments' bytes, which compare without reading them.
    pub fn same_parts(&self, other: &RequestedV1) -> bool {
        self.html == other.html
            && self.text == other.text
            && match (&self.mime, &other.mime) {
                (Some(a), Some(b)) => same_bytes(a, b),
                (a, b) => a == b,
            }
            && self.attachments.len() == other.attachments.len()
            && self
                .attachments
                .iter()
                .zip(&other.attachments)
                .all(|(a, b)| same_bytes(&a.content, &b.content))
    }

    /// A version 2 frame's sections: `html`, `text`, `mime`, each attachment's content.
    pub(crate) fn sections(&self) -> Vec<Option<&[u8]>> {
        let mut sections = vec![
            self.html.as_deref().map(str::as_bytes),
            self.text.as_deref().map(str::as_bytes),
            self.mime.as_deref(),
        ];
        sections.extend(self.attachments.iter().map(|a| Some(&a.content[..])));
        sections
    }

    /// The address this copy is delivered to: `to`, or the cc/bcc address of a copy.
    pub fn recipient(&self) -> &str {
        self.envelope_to.as_deref().unwrap_or(&self.to.email)
    }
}

/// `sendmill.ready.{lane}.v1`: a rendered, signed message for one recipient.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadyV1 {
    pub message_id: MessageId,
    pub account_id: AccountId,
    pub lane: Lane,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    /// The SMTP envelope sender (return path).
    pub envelope_from: String,
    /// The SMTP envelope recipient.
    pub recipient: String,
    #[serde(default)]
    pub context: MessageContext,
    /// Delivery attempts already made (0 for a fresh message).
    #[serde(default)]
    pub attempts: u32,
    /// The complete RFC 5322 message, DKIM signature included, with CRLF line ends.
    #[serde(with = "base64_bytes")]
    pub message: Vec<u8>,
}

/// The first bytes of a `sendmill.ready.v2` frame. A version 1 record is JSON and starts
/// with `{`, so the two cannot be mistaken for each other.
const READY_V2_MAGIC: &[u8; 4] = b"SMR2";

/// The fields of a `ready` record but its message, as a version 2 frame holds them:
/// borrowed from the record when written, owned when read back (unknown fields of newer
/// writers ignored).
#[derive(Serialize, Deserialize)]
struct ReadyHead<'a> {
    message_id: MessageId,
    account_id: AccountId,
    lane: Lane,
    #[serde(with = "time::serde::rfc3339")]
    accepted_at: OffsetDateTime,
    envelope_from: Cow<'a, str>,
    recipient: Cow<'a, str>,
    #[serde(default)]
    context: Cow<'a, MessageContext>,
    #[serde(default)]
    attempts: u32,
}

/// Version 2 (written): a binary frame,
///
/// ```text
/// "SMR2" | head length: u32, big-endian | head: JSON, every field but `message` | message bytes
/// ```
///
/// so the message goes through as a copy, not base64 inside a JSON string. Version 1
/// (read only): the whole record as JSON, the message in base64.
impl WirePayload for ReadyV1 {
    const SCHEMA: &'static str = "sendmill.ready.v2";

    fn to_bytes(&self) -> Vec<u8> {
        let head = ReadyHead {
            message_id: self.message_id,
            account_id: self.account_id,
            lane: self.lane,
            accepted_at: self.accepted_at,
            envelope_from: Cow::Borrowed(&self.envelope_from),
            recipient: Cow::Borrowed(&self.recipient),
            context: Cow::Borrowed(&self.context),
            attempts: self.attempts,
        };
        let mut out = start_frame(READY_V2_MAGIC, &head, self.message.len());
        out.extend_from_slice(&self.message);
        out
    }

    /// Version 1: the serde (JSON) form, which every release reads.
    fn previous_version(&self) -> Option<(&'static str, Vec<u8>)> {
        let json = serde_json::to_vec(self).expect("wire payloads always serialize");
        Some(("sendmill.ready.v1", json))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeFailure> {
        let Some(frame) = bytes.strip_prefix(READY_V2_MAGIC) else {
            // Version 1: JSON.
            return Ok(serde_json::from_slice(bytes)?);
        };
        let (head, message) = split_counted(frame, "head")?;
        let head: ReadyHead = serde_json::from_slice(head)?;
        Ok(ReadyV1 {
            message_id: head.message_id,
            account_id: head.account_id,
            lane: head.lane,
            accepted_at: head.accepted_at,
            envelope_from: head.envelope_from.into_owned(),
            recipient: head.recipient.into_owned(),
            context: head.context.into_owned(),
            attempts: head.attempts,
            message: message.to_vec(),
        })
    }
}

impl ReadyV1 {
    /// The domain part of the recipient, lower-cased.
    pub fn recipient_domain(&self) -> String {
        domain_of(&self.recipient)
    }
}

/// The lower-cased domain of an address (`""` when it has none).
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// `sendmill.retry.{lane}.{tier}.v1`: a message waiting for its next attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryV1 {
    pub ready: ReadyV1,
    /// Not to be attempted before this instant.
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<SmtpReply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl WirePayload for RetryV1 {
    const SCHEMA: &'static str = "sendmill.retry.v1";
}

/// `sendmill.dlq.v1`: a record a stage could not decode or process, kept with the reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterV1 {
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
    pub stage: String,
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(with = "base64_bytes")]
    pub payload: Vec<u8>,
    pub reason: String,
}

impl WirePayload for DeadLetterV1 {
    const SCHEMA: &'static str = "sendmill.dlq.v1";
}

/// `sendmill.inbound.v1`: one message the inbound SMTP server took (a DSN, a feedback
/// report, a mailto unsubscribe, an auto-reply, or anything else sent to a return-path
/// domain), exactly as received, with its envelope and the facts of the connection. The
/// server answers 250 only after this record is acknowledged; what it means is worked
/// out from here (at least once, idempotently: the id names everything it produces).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundV1 {
    /// Assigned by the receiving server (UUIDv7); events and rows derived from this
    /// message are keyed by it, so processing it twice writes nothing twice.
    pub inbound_id: uuid::Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// RFC 5321 reverse-path as given in MAIL FROM; empty for the null sender `<>` that
    /// DSNs and auto-replies use.
    pub mail_from: String,
    /// RFC 5321 forward-paths given in RCPT TO (each at a return-path domain).
    pub recipients: Vec<String>,
    /// The client's address.
    pub peer_ip: String,
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// Whether the session was in TLS when DATA came.
    #[serde(default)]
    pub tls: bool,
    /// The message as received (after dot-unstuffing), standard base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub message: Vec<u8>,
}

impl WirePayload for InboundV1 {
    const SCHEMA: &'static str = "sendmill.inbound.v1";
}

/// Optional bytes as standard base64 in JSON (absent when `None`).
mod base64_bytes_option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<bytes::Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => super::base64_bytes::serialize(bytes, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bytes::Bytes>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::base64_bytes")] Vec<u8>);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(bytes)| bytes.into()))
    }
}

/// Bytes as standard base64 in JSON.
mod base64_bytes {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, B: AsRef<[u8]>>(bytes: &B, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes.as_ref()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, B: From<Vec<u8>>>(d: D) -> Result<B, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(B::from)
            .map_err(serde::de::Error::custom)
    }
}
