//! # sendmill-smtp
//!
//! SMTP as Sendmill speaks it (RFC 5321), apart from what Sendmill does with it: the
//! dispatcher delivers through it, and an inbound server can share its reply and command
//! types.
//!
//! ## Layout
//! - [`reply`]: reply lines, whole replies and the RFC 3463 [`EnhancedStatusCode`] parsed
//!   with them.
//! - [`command`]: the client's typed [`Command`]s, the [`Step`]s of a session, and
//!   per-step [`Timeouts`].
//! - [`client`]: one session to an MX host: connect from a source IP, EHLO, STARTTLS,
//!   pipelined transactions, and the errors a session ends in.
//! - [`pool`]: idle sessions reused per (source IP, MX address), connection caps per
//!   (source IP, provider).
//! - [`server`]: the server side of a session (submission, inbound): command lines
//!   parsed by `smtp-proto`, bounded DATA, pipelined replies, STARTTLS.
//! - [`tls`]: the opportunistic-TLS client configuration, and the [`CertificateVerifier`]
//!   that authenticates MX hosts for MTA-STS (RFC 8461), failures named as in RFC 8460.
//! - [`metric`]: the names of the metrics it records, each with what it counts.

pub mod classify;
pub mod client;
pub mod command;
pub mod metric;
pub mod pool;
pub mod reply;
pub mod server;
pub mod tls;

pub use client::{Authentication, Endpoint, Session, SmtpError, TlsMode};
pub use command::{Command, MailParameters, Step, Timeouts};
pub use pool::{ConnectionPool, PoolSettings};
pub use reply::{EnhancedStatusCode, Reply, ReplyLine};
pub use tls::{CertificateVerifier, RootsError, TlsFailure};
