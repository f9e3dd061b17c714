//! SMTP submission (RFC 6409): applications that speak SMTP, not JSON, send through the
//! same front door as the API. What flows in is an authenticated SMTP transaction; what
//! flows out is one `requested` record per envelope recipient (the raw message kept in
//! [`RequestedV1::mime`]) and its `accepted` event, exactly like `POST /v1/messages`:
//! same sending-domain check, suppression lists, account rate limit and daily quota,
//! Kafka write and events (their stage says `submission`).
//!
//! - Port 587 with STARTTLS (RFC 3207) and port 465 with implicit TLS (RFC 8314), either
//!   or both. `AUTH PLAIN` and `AUTH LOGIN` (RFC 4954) only in TLS unless
//!   `allow_plaintext_auth`; the user name is [`Config::username`] (`apikey`, as SendGrid
//!   and Postmark ask) or the account id, the password an API key with the `send` scope.
//! - **250 means queued**: the reply to the final dot comes after Kafka acknowledged
//!   every recipient's record; otherwise 451 4.3.0 and, as with the API, records already
//!   written keep their ids: the message's `Message-ID` is claimed like an
//!   `Idempotency-Key`, so a client that resends after a timeout (same Message-ID, same
//!   envelope and bytes, within `ingest.idempotency_retention`) gets 250 again and no
//!   second copy. A resent Message-ID with other content is queued as a new message.
//! - Recipients on a suppression list are refused at RCPT (550 5.7.1), the others go on.
//!
//! Replies (RFC 5321 codes, RFC 3463 enhanced codes): 530 5.7.0 for AUTH before TLS and
//! MAIL before AUTH; 535 5.7.8 for a wrong key; 454 4.7.0 when authentication cannot be
//! checked or the account has too many connections; 552 5.3.4 over the size limit; 452
//! 4.5.3 over the recipient limit; 550 5.7.1 for a `From` that is not one of the account's
//! sending domains; 554 5.6.0 for a malformed message ([`message`]); 451 4.7.1 over the
//! rate limit and 452 4.7.1 over the daily quota (both temporary: the client's queue
//! retries); 421 when a session times out or the process drains, and 421 4.7.0 to a
//! client address over `max_connections_per_ip` or a connection that has not
//! authenticated within `auth_timeout`.

pub mod message;
mod session;

pub(crate) use session::planned;

use crate::AppState;
use sendmill_smtp::server::{Admission, Counted, Slot};
use serde::Deserialize;
use std::{path::PathBuf, sync::Arc, time::Duration};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// `[ingest.submission]`: the SMTP submission listeners.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the submission port with STARTTLS (587 in production); empty: off.
    /// Env: `SENDMILL_SUBMISSION_LISTEN`.
    pub listen: String,
    /// Address of the implicit-TLS submission port (465 in production, RFC 8314);
    /// empty: off. Needs `certificate`. Env: `SENDMILL_SUBMISSION_TLS_LISTEN`.
    pub tls_listen: String,
    /// PEM file of the server certificate chain offered in TLS; empty: no STARTTLS.
    pub certificate: PathBuf,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Take AUTH without TLS (the API key then crosses the network in the clear). For
    /// local development only.
    pub allow_plaintext_auth: bool,
    /// The user name clients authenticate with besides the account id.
    pub username: String,
    /// Largest message taken, in bytes (announced as SIZE, RFC 1870). Each recipient's
    /// record carries its own copy, so keep it well below the Kafka message size limit.
    pub max_message_bytes: usize,
    /// Most envelope recipients in one transaction (RFC 5321 §4.5.3.1.8 asks for 100 at
    /// least); more get 452 4.5.3.
    pub max_recipients: usize,
    /// Most connections at once, all clients together; more are answered 421 4.7.0.
    pub max_connections: usize,
    /// Most authenticated connections of one account at once; more get 454 4.7.0 to AUTH.
    pub max_connections_per_account: usize,
    /// Most connections from one client address at once; more are answered 421 4.7.0.
    pub max_connections_per_ip: usize,
    /// How long a connection may take to authenticate; then 421 4.7.0 and closed, so
    /// that idle unauthenticated connections cannot hold the connection slots.
    #[serde(with = "sendmill_platform::config::duration")]
    pub auth_timeout: Duration,
    /// Failed AUTH attempts after which a connection is closed.
    pub max_auth_failures: u32,
    /// How long a command may take to arrive (RFC 5321 §4.5.3.2.7 suggests 5 minutes).
    #[serde(with = "sendmill_platform::config::duration")]
    pub command_timeout: Duration,
    /// How long each block of DATA may take to arrive (RFC 5321 §4.5.3.2.6: 3 minutes).
    #[serde(with = "sendmill_platform::config::duration")]
    pub data_timeout: Duration,
    /// How long a TLS handshake may take.
    #[serde(with = "sendmill_platform::config::duration")]
    pub tls_handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: String::new(),
            tls_listen: String::new(),
            certificate: PathBuf::new(),
            private_key: PathBuf::new(),
            hostname: "localhost".into(),
            allow_plaintext_auth: false,
            username: "apikey".into(),
            max_message_bytes: 10 * 1024 * 1024,
            max_recipients: 500,
            max_connections: 1000,
            max_connections_per_account: 50,
            max_connections_per_ip: 50,
            auth_timeout: Duration::from_secs(60),
            max_auth_failures: 3,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    pub fn apply_env(&mut self) {
        sendmill_platform::config::override_string(&mut self.listen, "SUBMISSION_LISTEN");
        sendmill_platform::config::override_string(&mut self.tls_listen, "SUBMISSION_TLS_LISTEN");
    }

    /// Whether a listener is configured.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || !self.tls_listen.is_empty()
    }

    /// The rules that need no file: addresses are `ip:port`, and the settings take
    /// someone (implicit TLS needs a certificate; without TLS, only plaintext AUTH could
    /// authenticate).
    pub fn check(&self) -> Result<(), String> {
        for (name, addr) in [("listen", &self.listen), ("tls_listen", &self.tls_listen)] {
            if !addr.is_empty() && addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(format!("ingest.submission.{name}: {addr:?} is not ip:port"));
            }
        }
        if self.certificate.as_os_str().is_empty() {
            if !self.tls_listen.is_empty() {
                return Err("ingest.submission.tls_listen needs a certificate".into());
            }
            if !self.listen.is_empty() && !self.allow_plaintext_auth {
                return Err(
                    "ingest.submission.listen without a certificate takes no AUTH (set \
                     certificate, or allow_plaintext_auth for development)"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// The TLS acceptor, or `None` without a certificate. Fails when [`Config::check`]
    /// does or the certificate cannot be loaded.
    pub fn tls(&self) -> Result<Option<TlsAcceptor>, String> {
        self.check()?;
        if self.certificate.as_os_str().is_empty() {
            return Ok(None);
        }
        sendmill_smtp::server::tls_acceptor(&self.certificate, &self.private_key)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// The listeners, bound by the caller (so it knows the addresses first).
#[derive(Default)]
pub struct Listeners {
    /// STARTTLS submission (`listen`).
    pub starttls: Option<TcpListener>,
    /// Implicit-TLS submission (`tls_listen`).
    pub implicit_tls: Option<TcpListener>,
}

type AccountSlot = Slot<sendmill_wire::AccountId>;

/// What every session shares.
struct Shared {
    state: AppState,
    config: Config,
    tls: Option<TlsAcceptor>,
    accounts: Arc<Counted<sendmill_wire::AccountId>>,
    admission: Admission,
}

/// Serves the listeners until `close`; sessions in flight finish their transaction and
/// are told 421 at their next command (the Kafka writes they wait for watch
/// `state.shutdown`, the drain grace). Returns when every session has ended.
pub(crate) async fn serve(
    state: AppState,
    config: Config,
    tls: Option<TlsAcceptor>,
    listeners: Listeners,
    close: sendmill_platform::CancellationToken,
) {
    let shared = Arc::new(Shared {
        admission: Admission::new(config.max_connections, config.max_connections_per_ip),
        state,
        config,
        tls,
        accounts: Arc::default(),
    });
    let sessions = tokio_util::task::TaskTracker::new();
    let mut accepting = tokio::task::JoinSet::new();
    for (listener, implicit) in [(listeners.starttls, false), (listeners.implicit_tls, true)] {
        let Some(listener) = listener else { continue };
        let (shared, close, sessions) = (shared.clone(), close.clone(), sessions.clone());
        accepting.spawn(async move {
            let closed = close.clone().cancelled_owned();
            let accepted = |stream, peer, admitted| {
                let (shared, close) = (shared.clone(), close.clone());
                sessions.spawn(async move {
                    session::run(shared, stream, peer, implicit, admitted, close).await;
                });
            };
            shared
                .admission
                .accept_until(&listener, "submission", closed, accepted)
                .await;
        });
    }
    while accepting.join_next().await.is_some() {}
    sessions.close();
    sessions.wait().await;
}
