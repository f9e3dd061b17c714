//! SMTP transactions over sockets we open ourselves: bound to the chosen source IP and
//! with `TCP_NODELAY` (lettre's pooled transport does neither, and waits ~40 ms per
//! message on delayed ACKs). lettre drives the protocol on top. Connections are kept per
//! (source IP, MX address) and reused for the next message to the same host.

use crate::outcome::reply;
use lettre::{
    address::Envelope,
    transport::smtp::{client::AsyncSmtpConnection, extension::ClientId},
};
use sendmill_wire::SmtpReply;
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};
use tokio::net::TcpSocket;

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub port: u16,
    pub helo: String,
    pub connect_timeout: Duration,
    /// Greeting, EHLO and each command.
    pub command_timeout: Duration,
    /// The whole transaction, message data included.
    pub transaction_timeout: Duration,
    pub max_idle_per_host: usize,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SmtpError {
    #[error("connect to {addr} failed: {error}")]
    Connect { addr: SocketAddr, error: String },
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// The server answered a command negatively.
    #[error("{} {}", reply.code, reply.text)]
    Rejected { reply: SmtpReply, permanent: bool },
    /// The session broke (connection closed, garbled reply).
    #[error("{0}")]
    Session(String),
}

impl SmtpError {
    /// Failures of the host rather than of the message: the next MX host may do better.
    pub fn try_next_host(&self) -> bool {
        match self {
            SmtpError::Connect { .. } | SmtpError::Timeout(_) | SmtpError::Session(_) => true,
            // 421: the server is shutting the session down, not judging the message.
            SmtpError::Rejected { reply, .. } => reply.code == 421,
        }
    }
}

type PoolKey = (Option<IpAddr>, SocketAddr);

struct Idle {
    connection: AsyncSmtpConnection,
    since: Instant,
}

pub struct SmtpClient {
    settings: SmtpSettings,
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
}

impl SmtpClient {
    pub fn new(settings: SmtpSettings) -> Self {
        Self {
            settings,
            idle: Mutex::default(),
        }
    }

    /// Sends one message to `host` (an MX address) from `source` (or the system's choice).
    pub async fn send(
        &self,
        source: Option<IpAddr>,
        host: IpAddr,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<SmtpReply, SmtpError> {
        let key = (source, SocketAddr::new(host, self.settings.port));
        if let Some(connection) = self.take_idle(&key) {
            match self.transact(&key, connection, envelope, message).await {
                // A pooled connection the server has since closed: not the message's
                // fault, try once more on a fresh connection.
                Err(SmtpError::Session(_)) | Err(SmtpError::Timeout(_)) => {}
                other => return other,
            }
        }
        let connection = self.connect(&key).await?;
        self.transact(&key, connection, envelope, message).await
    }

    fn take_idle(&self, key: &PoolKey) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().expect("not poisoned");
        let list = idle.get_mut(key)?;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < self.settings.idle_timeout {
                return Some(entry.connection);
            }
        }
        None
    }

    fn put_idle(&self, key: &PoolKey, connection: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().expect("not poisoned");
        let list = idle.entry(*key).or_default();
        if list.len() < self.settings.max_idle_per_host {
            list.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, key: &PoolKey) -> Result<AsyncSmtpConnection, SmtpError> {
        let (source, addr) = *key;
        let connect_error = |error: std::io::Error| SmtpError::Connect {
            addr,
            error: error.to_string(),
        };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(connect_error)?;
        if let Some(source) = source {
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(connect_error)?;
        }
        socket.set_nodelay(true).map_err(connect_error)?;
        let stream = tokio::time::timeout(self.settings.connect_timeout, socket.connect(addr))
            .await
            .map_err(|_| SmtpError::Timeout("connect"))?
            .map_err(connect_error)?;
        let hello = ClientId::Domain(self.settings.helo.clone());
        let started = Instant::now();
        let connection = tokio::time::timeout(
            self.settings.command_timeout * 2,
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello),
        )
        .await
        .map_err(|_| SmtpError::Timeout("greeting"))?
        .map_err(classify_lettre)?;
        metrics::histogram!("sendmill_smtp_connect_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(connection)
    }

    async fn transact(
        &self,
        key: &PoolKey,
        mut connection: AsyncSmtpConnection,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<SmtpReply, SmtpError> {
        let result = tokio::time::timeout(
            self.settings.transaction_timeout,
            connection.send(envelope, message),
        )
        .await
        .map_err(|_| SmtpError::Timeout("transaction"))?;
        match result {
            Ok(response) => {
                if !connection.has_broken() {
                    self.put_idle(key, connection);
                }
                let text: Vec<&str> = response.message().collect();
                Ok(reply(response.code().into(), &text.join(" ")))
            }
            // lettre has already closed the session after a negative reply.
            Err(error) => Err(classify_lettre(error)),
        }
    }
}

fn classify_lettre(error: lettre::transport::smtp::Error) -> SmtpError {
    match error.status() {
        Some(code) => {
            let text = std::error::Error::source(&error)
                .map(|s| s.to_string())
                .unwrap_or_default();
            SmtpError::Rejected {
                reply: reply(code.into(), &text),
                permanent: error.is_permanent(),
            }
        }
        None if error.is_timeout() => SmtpError::Timeout("command"),
        None => SmtpError::Session(error.to_string()),
    }
}
