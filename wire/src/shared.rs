//! `sendmill.blobs.v1`: a request's large parts, written once and pointed to by each of
//! its recipients' `requested` records.
//!
//! A request's HTML, text, submitted MIME and attachments are the same for every
//! recipient; copied into every recipient's record, a 1,000-recipient request with a
//! 2 MiB attachment wrote 2 GiB to Kafka, and the broker's CPU grows with the bytes
//! (`sendmill bench pipeline`: ~1 ms of broker CPU per message, the second cost after
//! render). Ingest writes them once as a [`SharedParts`] record to the blobs topic, and each
//! recipient's record carries a [`SharedRef`] to it: the partition and offset the broker
//! acknowledged, and the SHA-256 and length of the bytes, which the reader checks. Render
//! reads the record by offset (`sendmill_platform::kafka::blobs`) and fills the parts in
//! ([`SharedParts::fill`]).
//!
//! The blobs topic keeps records `kafka.blobs_retention_hours`, longer than the queues
//! plus the furthest `send_at`, so a held or backlogged message still finds its parts; a
//! reference whose record is gone ends its message with `render_failed`.

use crate::payload::{read_sections, sections_len, write_sections};
use crate::{DecodeFailure, RequestedV1};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first bytes of a blob record.
const BLOB_MAGIC: &[u8; 4] = b"SMB1";

/// The schema name of a blob record (its `sendmill-schema` header).
pub const BLOB_SCHEMA: &str = "sendmill.blobs.v1";

/// Where a record's large parts are: one record of the blobs topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SharedRef {
    /// The blobs topic's partition the record is in.
    pub partition: i32,
    /// Its offset in that partition, as the broker acknowledged it.
    pub offset: i64,
    /// SHA-256 of the record's bytes, lower-case hex: the reader checks it, so a wrong
    /// offset (a topic deleted and created again) is an error, never another message.
    pub sha256: String,
    /// The record's length in bytes.
    pub len: u64,
}

/// A request's large parts, as one blob record holds them: the sections of a
/// `requested` version 2 frame without its head.
///
/// ```text
/// "SMB1" | section count: u32 BE | one length per section: u64 BE (u64::MAX: absent)
///        | html | text | mime | each attachment's content
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedParts {
    pub html: Option<String>,
    pub text: Option<String>,
    pub mime: Option<bytes::Bytes>,
    /// Each attachment's content, in the order of the records' `attachments`.
    pub attachments: Vec<bytes::Bytes>,
}

impl SharedParts {
    /// Moves `record`'s large parts out (its attachments keep their names and types,
    /// with empty contents).
    pub fn take_from(record: &mut RequestedV1) -> SharedParts {
        SharedParts {
            html: record.html.take(),
            text: record.text.take(),
            mime: record.mime.take(),
            attachments: record
                .attachments
                .iter_mut()
                .map(|a| std::mem::take(&mut a.content))
                .collect(),
        }
    }

    /// The parts' size in bytes, about what a record carrying them grows by.
    pub fn len(&self) -> usize {
        self.html.as_ref().map_or(0, String::len)
            + self.text.as_ref().map_or(0, String::len)
            + self.mime.as_ref().map_or(0, bytes::Bytes::len)
            + self
                .attachments
                .iter()
                .map(bytes::Bytes::len)
                .sum::<usize>()
    }

    /// Whether there are no parts at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.html.is_none() && self.text.is_none() && self.mime.is_none()
    }

    fn sections(&self) -> Vec<Option<&[u8]>> {
        let mut sections = vec![
            self.html.as_deref().map(str::as_bytes),
            self.text.as_deref().map(str::as_bytes),
            self.mime.as_deref(),
        ];
        sections.extend(self.attachments.iter().map(|a| Some(&a[..])));
        sections
    }

    /// The blob record's bytes, and the reference to them once the broker has put them
    /// at `partition` and `offset` ([`SharedParts::reference`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let sections = self.sections();
        let mut out = Vec::with_capacity(4 + sections_len(&sections));
        out.extend_from_slice(BLOB_MAGIC);
        write_sections(&mut out, &sections);
        out
    }

    /// The reference to blob record `bytes` ([`SharedParts::to_bytes`]) stored at
    /// `partition` and `offset`.
    pub fn reference(bytes: &[u8], partition: i32, offset: i64) -> SharedRef {
        SharedRef {
            partition,
            offset,
            sha256: hex(&Sha256::digest(bytes)),
            len: bytes.len() as u64,
        }
    }

    /// The parts in blob record `bytes`, which must be the ones `reference` names.
    ///
    /// Errors: [`DecodeFailure::Frame`] when the length or SHA-256 differ from the
    /// reference's, or the bytes are not a blob record.
    pub fn from_bytes(bytes: &[u8], reference: &SharedRef) -> Result<SharedParts, DecodeFailure> {
        if bytes.len() as u64 != reference.len || hex(&Sha256::digest(bytes)) != reference.sha256 {
            return Err(DecodeFailure::Frame(
                "the blob's length or SHA-256 differs from the reference",
            ));
        }
        Self::read(bytes)
    }

    /// The parts in blob record `bytes`, unchecked against any reference (the caller
    /// compares [`SharedParts::reference`] of the bytes with the one it holds).
    ///
    /// Errors: [`DecodeFailure::Frame`] when the bytes are not a blob record.
    pub fn read(bytes: &[u8]) -> Result<SharedParts, DecodeFailure> {
        let frame = bytes
            .strip_prefix(BLOB_MAGIC)
            .ok_or(DecodeFailure::Frame("not a blob record"))?;
        let count = frame
            .first_chunk::<4>()
            .map(|c| u32::from_be_bytes(*c) as usize)
            .ok_or(DecodeFailure::Frame("no section count"))?;
        if count < 3 {
            return Err(DecodeFailure::Frame("fewer than three sections"));
        }
        Self::from_sections(&read_sections(frame, count)?)
    }

    /// The parts in `sections` (`html`, `text`, `mime`, then each attachment's content;
    /// at least three).
    ///
    /// Errors: a text section that is not UTF-8, an absent attachment.
    pub(crate) fn from_sections(sections: &[Option<&[u8]>]) -> Result<SharedParts, DecodeFailure> {
        let text = |bytes: Option<&[u8]>| {
            bytes
                .map(|b| String::from_utf8(b.to_vec()))
                .transpose()
                .map_err(|_| DecodeFailure::Frame("a text section is not UTF-8"))
        };
        Ok(SharedParts {
            html: text(sections[0])?,
            text: text(sections[1])?,
            mime: sections[2].map(bytes::Bytes::copy_from_slice),
            attachments: sections[3..]
                .iter()
                .map(|s| {
                    s.map(bytes::Bytes::copy_from_slice)
                        .ok_or(DecodeFailure::Frame("an attachment without content"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// Moves the parts into `record`, whose attachments are as many (the caller checked).
    pub(crate) fn move_into(self, record: &mut RequestedV1) {
        record.html = self.html;
        record.text = self.text;
        record.mime = self.mime;
        for (attachment, content) in record.attachments.iter_mut().zip(self.attachments) {
            attachment.content = content;
        }
    }

    /// Puts the parts into `record` (the text copied, the bytes shared) and clears its
    /// `shared`.
    ///
    /// Errors: [`DecodeFailure::Frame`] when the record lists another number of
    /// attachments than the blob holds.
    pub fn fill(&self, record: &mut RequestedV1) -> Result<(), DecodeFailure> {
        if record.attachments.len() != self.attachments.len() {
            return Err(DecodeFailure::Frame(
                "the record lists another number of attachments than its blob holds",
            ));
        }
        record.html.clone_from(&self.html);
        record.text.clone_from(&self.text);
        record.mime.clone_from(&self.mime);
        for (attachment, content) in record.attachments.iter_mut().zip(&self.attachments) {
            attachment.content.clone_from(content);
        }
        record.shared = None;
        Ok(())
    }
}

fn hex(digest: &[u8]) -> String {
    use std::fmt::Write;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
