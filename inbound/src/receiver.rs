//! The inbound SMTP server: a return-path domain's MX. What flows in is an SMTP
//! transaction from any MTA on the internet; what flows out is one
//! [`InboundV1`](sendmill_wire::InboundV1) record per message on `sendmill.inbound.v1`,
//! the bytes exactly as received. Nothing is decided here beyond whether to take it:
//!
//! - RCPT: only addresses at a return-path domain of a known sending domain (and a bare
//!   `postmaster`, RFC 5321 §4.5.1); anything else 550 5.7.1 (never an open relay),
//!   counted as a protocol error. One domain per transaction and at most
//!   `max_recipients`: 452 4.5.3 (the client sends the rest again).
//! - Size: SIZE announced (RFC 1870); a MAIL with a larger SIZE, or DATA past the limit,
//!   552 5.3.4 (the excess is read and thrown away, never held).
//! - **250 means in Kafka**: the reply to the final dot waits for the broker's
//!   acknowledgement; if it does not come, 451 4.3.0 and the sending MTA retries.
//! - Connections: capped in total and per client address (421 4.7.0) before any TLS
//!   handshake; command (idle), DATA and whole-session timeouts (421 4.4.2);
//!   `sendmill_smtp::server::MAX_ERRORS` protocol errors close the session.
//!
//! The I/O and command parsing are `sendmill_smtp::server`'s (the submission server's
//! too); commands are parsed by `smtp-proto`.

use crate::{metric, Config};
use sendmill_platform::{kafka::Producer, CancellationToken};
use sendmill_smtp::server::{
    ehlo_lines, refusal, Admission, Admitted, Connection, Input, Received, SessionError, Stream,
};
use sendmill_store::{Store, StoreError};
use sendmill_wire::{AccountId, InboundV1};
use smtp_proto::Request;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Domains remembered at most (a flood of RCPTs to random domains cannot grow it more).
const MAX_CACHED_DOMAINS: usize = 10_000;

/// The accounts owning one domain, and when they were read.
type Owners = (Arc<Vec<AccountId>>, Instant);

/// Which accounts own a return-path domain, cached for `ttl` (absent domains too).
pub struct ReturnPathDomains {
    store: Store,
    ttl: Duration,
    cache: Mutex<HashMap<String, Owners>>,
}

impl ReturnPathDomains {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The accounts whose sending domains use `domain` as their return-path domain;
    /// empty when it is none of ours.
    pub async fn owners(&self, domain: &str) -> Result<Arc<Vec<AccountId>>, StoreError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some((owners, at)) = self.cache.lock().expect("not poisoned").get(&domain) {
            if at.elapsed() < self.ttl {
                return Ok(owners.clone());
            }
        }
        let owners = Arc::new(self.store.return_path_domain_owners(&domain).await?);
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= MAX_CACHED_DOMAINS {
            cache.clear();
        }
        cache.insert(domain, (owners.clone(), Instant::now()));
        Ok(owners)
    }
}

/// What every session shares.
pub struct Shared {
    config: Config,
    tls: Option<TlsAcceptor>,
    domains: Arc<ReturnPathDomains>,
    producer: Producer,
    topic: String,
    admission: Admission,
    /// Cancelled at the end of the drain grace: a Kafka write still waiting is given up
    /// (its transaction answered 451, so the sender keeps the message).
    abort: CancellationToken,
}

impl Shared {
    pub fn new(
        config: Config,
        tls: Option<TlsAcceptor>,
        domains: Arc<ReturnPathDomains>,
        producer: Producer,
        topic: String,
        abort: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            admission: Admission::new(config.max_connections, config.max_connections_per_ip),
            config,
            tls,
            domains,
            producer,
            topic,
            abort,
        })
    }
}

/// Accepts connections until `close`, then waits for the sessions in flight (each ends
/// at its next command with 421, or when the drain grace cuts it).
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, close: CancellationToken) {
    let sessions = tokio_util::task::TaskTracker::new();
    let accepted = |stream, peer, admitted| {
        let (shared, close) = (shared.clone(), close.clone());
        sessions.spawn(async move {
            let session_timeout = shared.config.session_timeout;
            let session = run_session(shared, stream, peer, admitted, close);
            if tokio::time::timeout(session_timeout, session)
                .await
                .is_err()
            {
                tracing::debug!(%peer, "inbound session hit the session timeout");
            }
        });
    };
    shared
        .admission
        .accept_until(&listener, "inbound", close.cancelled(), accepted)
        .await;
    sessions.close();
    sessions.wait().await;
}

#[derive(Default)]
struct Transaction {
    mail_from: Option<String>,
    recipients: Vec<String>,
}

struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    helo: Option<String>,
    errors: u32,
    transaction: Transaction,
    deadline: Instant,
}

async fn run_session(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: Option<Admitted>,
    close: CancellationToken,
) {
    let mut connection = Connection::new(Stream::Plain(tcp), peer);
    let Some(_admitted) = admitted else {
        connection.reply(421, "4.7.0", "too many connections, try again later");
        connection.close().await;
        return;
    };
    connection.reply_plain(220, &[format!("{} ESMTP Sendmill", shared.config.hostname)]);
    let mut session = Session {
        deadline: Instant::now() + shared.config.session_timeout,
        shared,
        peer,
        helo: None,
        errors: 0,
        transaction: Transaction::default(),
    };
    // A session still under way when the drain grace ends (a slow DATA) is cut: its
    // transaction was not answered 250, so the sending MTA keeps the message.
    let abort = session.shared.abort.clone();
    let served = tokio::select! {
        served = session.serve(connection, &close) => served,
        _ = abort.cancelled() => Ok(()),
    };
    match served {
        Ok(()) | Err(SessionError::Closed) => {}
        Err(error) => tracing::debug!(%peer, %error, "inbound session ended"),
    }
}

impl Session {
    async fn serve(
        &mut self,
        mut c: Connection,
        close: &CancellationToken,
    ) -> Result<(), SessionError> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let timeout = self.shared.config.command_timeout.min(left);
            let input = tokio::select! {
                _ = close.cancelled() => {
                    c.reply(421, "4.3.2", "shutting down, try again later");
                    c.close().await;
                    return Ok(());
                }
                input = c.read_command(timeout) => input,
            };
            let request = match input {
                Ok(Input::Command(request)) => request,
                Ok(Input::Invalid(error)) => {
                    let (code, enhanced, text) = refusal(&error);
                    c.reply(code, enhanced, &text);
                    if c.too_many_errors(&mut self.errors).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(SessionError::Timeout(_)) => {
                    c.reply(421, "4.4.2", "timeout, closing");
                    c.close().await;
                    return Ok(());
                }
                Err(error) => return Err(error),
            };
            match request {
                Request::Ehlo { host } => {
                    self.reset(Some(host));
                    let lines = self.extensions(&c);
                    c.reply_plain(250, &lines);
                }
                Request::Helo { host } => {
                    self.reset(Some(host));
                    c.reply_plain(250, std::slice::from_ref(&self.shared.config.hostname));
                }
                Request::StartTls => {
                    let Some(acceptor) = self.shared.tls.clone().filter(|_| !c.is_tls()) else {
                        c.reply(502, "5.5.1", "STARTTLS not offered");
                        continue;
                    };
                    c.reply(220, "2.0.0", "ready to start TLS");
                    c = c
                        .start_tls(&acceptor, self.shared.config.tls_handshake_timeout)
                        .await?;
                    // RFC 3207 §4.2: everything known before TLS is forgotten.
                    self.reset(None);
                }
                Request::Mail { from } => {
                    let (code, enhanced, text) = if self.helo.is_none() {
                        (503, "5.5.1", "EHLO first".to_owned())
                    } else if self.transaction.mail_from.is_some() {
                        (503, "5.5.1", "nested MAIL command".to_owned())
                    } else if from.size > self.shared.config.max_message_bytes {
                        (
                            552,
                            "5.3.4",
                            format!(
                                "message exceeds the limit of {} bytes",
                                self.shared.config.max_message_bytes
                            ),
                        )
                    } else {
                        self.transaction.mail_from = Some(from.address.to_lowercase());
                        (250, "2.1.0", "sender ok".to_owned())
                    };
                    c.reply(code, enhanced, &text);
                    if code == 503 && c.too_many_errors(&mut self.errors).await {
                        return Ok(());
                    }
                }
                Request::Rcpt { to } => {
                    let (code, enhanced, text) = self.rcpt(&to.address).await;
                    c.reply(code, enhanced, &text);
                    // A refused recipient counts as an error: a session cannot probe
                    // domain after domain (each a lookup).
                    if matches!(code, 503 | 550) && c.too_many_errors(&mut self.errors).await {
                        return Ok(());
                    }
                }
                Request::Data => {
                    if self.transaction.mail_from.is_none() {
                        c.reply(503, "5.5.1", "MAIL first");
                        continue;
                    }
                    if self.transaction.recipients.is_empty() {
                        c.reply(554, "5.5.1", "no valid recipients");
                        continue;
                    }
                    let config = &self.shared.config;
                    let received = c
                        .receive_data(config.max_message_bytes, config.data_timeout)
                        .await?;
                    let (code, enhanced, text) = match received {
                        Received::TimedOut => {
                            c.close().await;
                            return Ok(());
                        }
                        Received::TooBig(code, enhanced, text) => (code, enhanced, text),
                        Received::Message(message) => self.queue(message, c.is_tls()).await,
                    };
                    let result = if code == 250 {
                        "queued".to_owned()
                    } else {
                        code.to_string()
                    };
                    metrics::counter!(metric::INBOUND_RECEIVED_TOTAL, "result" => result)
                        .increment(1);
                    c.reply(code, enhanced, &text);
                    self.transaction = Transaction::default();
                }
                Request::Rset => {
                    self.transaction = Transaction::default();
                    c.reply(250, "2.0.0", "ok");
                }
                Request::Noop { .. } => c.reply(250, "2.0.0", "ok"),
                Request::Vrfy { .. } => c.reply(252, "2.5.0", "not verified"),
                Request::Help { .. } => {
                    c.reply(214, "2.0.0", "return-path mail only (RFC 3464, RFC 5965)")
                }
                Request::Quit => {
                    c.reply(221, "2.0.0", "bye");
                    c.close().await;
                    return Ok(());
                }
                Request::Auth { .. } => c.reply(502, "5.5.1", "no authentication here"),
                Request::Lhlo { .. } => c.reply(502, "5.5.1", "this is not an LMTP server"),
                Request::Bdat { .. } => c.reply(502, "5.5.1", "CHUNKING not offered"),
                Request::Expn { .. }
                | Request::Etrn { .. }
                | Request::Atrn { .. }
                | Request::Burl { .. } => c.reply(502, "5.5.1", "command not implemented"),
            }
        }
    }

    fn reset(&mut self, helo: Option<String>) {
        self.helo = helo;
        self.transaction = Transaction::default();
    }

    fn extensions(&self, c: &Connection) -> Vec<String> {
        let config = &self.shared.config;
        let starttls = self.shared.tls.is_some() && !c.is_tls();
        ehlo_lines(&config.hostname, config.max_message_bytes, starttls)
    }

    async fn rcpt(&mut self, address: &str) -> (u16, &'static str, String) {
        if self.transaction.mail_from.is_none() {
            return (503, "5.5.1", "MAIL first".into());
        }
        if self.transaction.recipients.len() >= self.shared.config.max_recipients {
            return (452, "4.5.3", "too many recipients".into());
        }
        let Some((_, domain)) = address.rsplit_once('@') else {
            // RFC 5321 §4.5.1: `postmaster` without a domain must be taken.
            if address.eq_ignore_ascii_case("postmaster") {
                self.transaction.recipients.push("postmaster".into());
                return (250, "2.1.5", "recipient ok".into());
            }
            return (550, "5.1.1", "mailbox unavailable".into());
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        // The processor reads a message for the accounts of one domain: a second domain
        // waits for its own transaction (the client sends it again).
        if let Some(first) = self.transaction.recipients.first() {
            let first_domain = first.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
            if first_domain.trim_end_matches('.') != domain {
                return (
                    452,
                    "4.5.3",
                    "one domain per transaction, send the rest again".into(),
                );
            }
        }
        match self.shared.domains.owners(&domain).await {
            Ok(owners) if !owners.is_empty() => {
                self.transaction.recipients.push(address.to_lowercase());
                (250, "2.1.5", "recipient ok".into())
            }
            Ok(_) => {
                metrics::counter!(metric::INBOUND_RELAY_REFUSED_TOTAL).increment(1);
                tracing::debug!(peer = %self.peer, domain, "inbound relay refused");
                (
                    550,
                    "5.7.1",
                    "relaying denied: not a domain of this server".into(),
                )
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the return-path domains");
                (451, "4.3.0", "temporary failure, try again later".into())
            }
        }
    }

    /// Writes the message to the inbound topic, with our `Received:` trace field in
    /// front (RFC 5321 §4.4); 250 once Kafka acknowledged it.
    async fn queue(&mut self, message: Vec<u8>, tls: bool) -> (u16, &'static str, String) {
        let transaction = std::mem::take(&mut self.transaction);
        let inbound_id = uuid::Uuid::now_v7();
        let received_at = OffsetDateTime::now_utc();
        let helo: String = self
            .helo
            .as_deref()
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        let date = received_at
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        let trace = format!(
            "Received: from {helo} ([{}])\r\n\tby {} with {} id {inbound_id};\r\n\t{date}\r\n",
            self.peer.ip(),
            self.shared.config.hostname,
            if tls { "ESMTPS" } else { "ESMTP" },
        );
        let mut message = message;
        message.splice(0..0, trace.into_bytes());
        let record = InboundV1 {
            inbound_id,
            received_at,
            mail_from: transaction.mail_from.unwrap_or_default(),
            recipients: transaction.recipients,
            peer_ip: self.peer.ip().to_string(),
            helo: self.helo.clone().unwrap_or_default(),
            tls,
            message,
        };
        let key = record.inbound_id.to_string();
        let sent = tokio::select! {
            sent = self.shared.producer.send(&self.shared.topic, &key, &record) => sent,
            _ = self.shared.abort.cancelled() => {
                return (451, "4.3.0", "shutting down, try again later".into());
            }
        };
        match sent {
            Ok(()) => (250, "2.0.0", format!("queued as {key}")),
            Err(error) => {
                tracing::warn!(%error, "inbound message not queued");
                (451, "4.3.0", "temporary failure, try again later".into())
            }
        }
    }
}
