//! # sendmill-tenancy
//!
//! Tenant policy: what a tenant may do and what it has asked, kept apart from the
//! infrastructure in `sendmill-platform`.
//!
//! ## Layout
//! - [`auth`]: bearer API keys resolved to principals (cached), the [`auth::Caller`]
//!   extractor and its scope checks.
//! - [`suppressions`]: the Redis copy of the suppression lists the send path checks,
//!   written through by every writer.
//! - [`ratelimit`]: per-account send rate and daily quota in Redis.
//! - [`pauses`]: pause flags for source IPs, pools and accounts, set by ops and the
//!   reputation monitor, obeyed by every dispatcher.

pub mod auth;
pub mod pauses;
pub mod ratelimit;
pub mod suppressions;
