//! # sendmill-wire
//!
//! The contracts between Sendmill's stages. Stages never call each other: `ingest` writes
//! [`RequestedV1`] records, `render` turns them into [`ReadyV1`], `dispatcher` consumes
//! those (and [`RetryV1`] from the delay topics), and every stage writes [`EventV1`] to
//! the events topic; a record nobody can process becomes a [`DeadLetterV1`]. Mail that
//! comes back (bounces, complaints) enters as [`InboundV1`].
//!
//! ## Layout
//! - [`address`]: the canonical form of email addresses and domains (IDNA, SMTPUTF8).
//! - [`ids`]: message, account, event and batch ids (UUIDv7, time-ordered).
//! - [`topics`]: topic names per lane, retry tier and prefix.
//! - [`payload`]: the versioned record types and their codec (JSON; binary frames for
//!   `ready` and `requested`).
//! - [`shared`]: a request's large parts, written once to the blobs topic and referenced
//!   by each recipient's `requested` record.
//! - [`event`]: the event record every stage emits.
//! - [`alert`]: alerts for ops (the reputation monitor pausing an IP or account).
//! - [`verp`]: return paths that name their message, for matching bounces.
//!
//! ## Evolution
//! Within a version changes are additive only (new optional fields with
//! `#[serde(default)]`); decoders ignore unknown fields so an old consumer reads a newer
//! producer's records. A breaking change is a new `V2` type on a new `.v2` topic. The
//! golden fixtures under `tests/fixtures/` are decoded by the tests forever.

pub mod address;
pub mod alert;
pub mod event;
pub mod ids;
pub mod payload;
pub mod shared;
pub mod topics;
pub mod verp;

pub use alert::AlertV1;
pub use event::{BounceCategory, EventType, EventV1, SmtpReply, ACCEPTED_SCHEDULED};
pub use ids::{AccountId, BatchId, EventId, MessageId};
pub use payload::{
    decode, encode, Attachment, DeadLetterV1, DecodeError, DecodeFailure, EmailAddress, Header,
    InboundV1, MessageContext, ReadyV1, RenderOptions, RequestedV1, RetryV1, WirePayload,
};
pub use shared::{SharedParts, SharedRef, BLOB_SCHEMA};
pub use topics::{Lane, RetryTier, Topics};
