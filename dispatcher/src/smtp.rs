//! SMTP sessions to receiving MX hosts, and the pool that reuses them.
//!
//! We speak the protocol ourselves (RFC 5321) rather than through lettre for three
//! reasons: the socket must be bound to the chosen source IP with `TCP_NODELAY`; every
//! step needs its own timeout; and the dedupe journal must be written the moment the
//! message's final dot is handed to the kernel and before its reply is read, which no
//! SMTP library exposes. Commands are pipelined (RFC 2920) when the server offers it.
//!
//! TLS is opportunistic STARTTLS (RFC 3207, RFC 7435): used when offered, certificates not
//! checked, a failed handshake retried once in the clear — unless the provider requires
//! TLS, in which case its absence is a temporary failure.
//!
//! A session is pooled per (source IP, MX address) and reused for later messages with an
//! `RSET` first; each (source IP, provider) has a cap on open connections, and a
//! connection is closed after its provider's messages-per-connection.

use crate::outcome::reply;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sendmill_wire::SmtpReply;
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpSocket,
    sync::{OwnedSemaphorePermit, Semaphore},
};

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub port: u16,
    pub connect_timeout: Duration,
    /// Greeting, EHLO, STARTTLS and each envelope command.
    pub command_timeout: Duration,
    /// The message data and its reply.
    pub data_timeout: Duration,
    pub max_idle_per_host: usize,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SmtpError {
    #[error("connect to {addr} failed: {error}")]
    Connect { addr: SocketAddr, error: String },
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// The server answered a step negatively.
    #[error("{step}: {} {}", reply.code, reply.text)]
    Rejected {
        reply: SmtpReply,
        step: &'static str,
    },
    /// TLS is required and the server does not offer it, or the handshake failed.
    #[error("TLS required: {0}")]
    TlsUnavailable(String),
    /// A limit of the server announced in EHLO that the message cannot meet.
    #[error("{0}")]
    Unsupported(String),
    /// The session broke (connection closed, garbled reply).
    #[error("{0}")]
    Session(String),
    /// The source IP or its pool was paused before a new connection was opened.
    #[error("{0}")]
    SourcePaused(String),
}

impl SmtpError {
    /// Failures of the host rather than of the message: the next MX host may do better.
    pub fn try_next_host(&self) -> bool {
        match self {
            SmtpError::Connect { .. }
            | SmtpError::Timeout(_)
            | SmtpError::Session(_)
            | SmtpError::TlsUnavailable(_) => true,
            // 421: the server is shutting the session down, not judging the message; a
            // refused greeting is the host's state, not the message's.
            SmtpError::Rejected { reply, step } => reply.code == 421 || *step == "greeting",
            SmtpError::Unsupported(_) | SmtpError::SourcePaused(_) => false,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

const MAX_REPLY_LINE: u64 = 4096;
const MAX_REPLY_LINES: usize = 64;

/// What the server announced in its EHLO reply.
#[derive(Debug, Default, Clone)]
struct Capabilities {
    pipelining: bool,
    starttls: bool,
    eight_bit_mime: bool,
    smtputf8: bool,
    /// SIZE limit in bytes; 0: none announced.
    size: u64,
}

impl Capabilities {
    fn parse(lines: &[String]) -> Self {
        let mut caps = Capabilities::default();
        // The first line is the server's greeting name.
        for line in lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "SIZE" => caps.size = words.next().and_then(|n| n.parse().ok()).unwrap_or(0),
                _ => {}
            }
        }
        caps
    }
}

/// Whether to try STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Opportunistic,
    Required,
    Off,
}

/// Where a session goes and as whom.
#[derive(Debug, Clone)]
pub struct Endpoint<'a> {
    /// Bound source address; `None` or unspecified: the system's choice.
    pub source: Option<IpAddr>,
    pub addr: SocketAddr,
    /// The MX host's name, for TLS SNI.
    pub host_name: &'a str,
    pub helo: &'a str,
    pub tls: TlsMode,
}

/// One open SMTP session.
pub struct Session {
    io: BufReader<Box<dyn Io>>,
    caps: Capabilities,
    pub tls: bool,
    /// Messages sent over it.
    pub sent: u32,
    /// A transaction was started: the next one begins with RSET.
    dirty: bool,
    /// Unusable after an error mid-transaction.
    broken: bool,
    /// The connection-limit slot it holds.
    _slot: Option<OwnedSemaphorePermit>,
}

impl Session {
    /// Connects, reads the greeting, says EHLO and upgrades to TLS as `endpoint.tls` asks.
    pub async fn open(
        endpoint: &Endpoint<'_>,
        settings: &SmtpSettings,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<Session, SmtpError> {
        let started = Instant::now();
        let mut session = Self::open_once(endpoint, settings, endpoint.tls).await;
        if let Err(SmtpError::TlsUnavailable(error)) = &session {
            if endpoint.tls == TlsMode::Opportunistic {
                tracing::debug!(addr = %endpoint.addr, %error, "TLS handshake failed; retrying in the clear");
                session = Self::open_once(endpoint, settings, TlsMode::Off).await;
            }
        }
        let mut session = session?;
        session._slot = slot;
        metrics::histogram!("sendmill_smtp_connect_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(session)
    }

    async fn open_once(
        endpoint: &Endpoint<'_>,
        settings: &SmtpSettings,
        tls: TlsMode,
    ) -> Result<Session, SmtpError> {
        let addr = endpoint.addr;
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
        if let Some(source) = endpoint.source.filter(|s| !s.is_unspecified()) {
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(connect_error)?;
        }
        socket.set_nodelay(true).map_err(connect_error)?;
        let stream = tokio::time::timeout(settings.connect_timeout, socket.connect(addr))
            .await
            .map_err(|_| SmtpError::Timeout("connect"))?
            .map_err(connect_error)?;
        let mut session = Session {
            io: BufReader::new(Box::new(stream)),
            caps: Capabilities::default(),
            tls: false,
            sent: 0,
            dirty: false,
            broken: false,
            _slot: None,
        };
        let t = settings.command_timeout;
        let (code, lines) = session.read_reply(t, "greeting").await?;
        if code != 220 {
            return Err(rejected(code, &lines, "greeting"));
        }
        session.hello(endpoint.helo, t).await?;
        if session.caps.starttls && tls != TlsMode::Off {
            session.starttls(endpoint.host_name, t).await?;
            session.hello(endpoint.helo, t).await?;
        }
        if tls == TlsMode::Required && !session.tls {
            session.quit().await;
            return Err(SmtpError::TlsUnavailable(
                "the server does not offer STARTTLS".into(),
            ));
        }
        Ok(session)
    }

    async fn hello(&mut self, helo: &str, t: Duration) -> Result<(), SmtpError> {
        self.write(format!("EHLO {helo}\r\n").as_bytes(), t, "EHLO")
            .await?;
        let (code, lines) = self.read_reply(t, "EHLO").await?;
        if code == 250 {
            self.caps = Capabilities::parse(&lines);
            return Ok(());
        }
        // An old server: HELO, and no extensions.
        self.write(format!("HELO {helo}\r\n").as_bytes(), t, "HELO")
            .await?;
        let (code, lines) = self.read_reply(t, "HELO").await?;
        if code != 250 {
            return Err(rejected(code, &lines, "greeting"));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn starttls(&mut self, host_name: &str, t: Duration) -> Result<(), SmtpError> {
        self.write(b"STARTTLS\r\n", t, "STARTTLS").await?;
        let (code, lines) = self.read_reply(t, "STARTTLS").await?;
        if code != 220 {
            let reply = reply(code, &lines.join(" "));
            return Err(SmtpError::TlsUnavailable(format!(
                "STARTTLS refused: {} {}",
                reply.code, reply.text
            )));
        }
        if !self.io.buffer().is_empty() {
            // Anything sent before the handshake would be read as if it were protected
            // (the STARTTLS command-injection attack).
            return Err(SmtpError::Session("data after the STARTTLS reply".into()));
        }
        let name = ServerName::try_from(host_name.to_owned())
            .map_err(|_| SmtpError::TlsUnavailable(format!("bad TLS name {host_name:?}")))?;
        let plain = std::mem::replace(
            &mut self.io,
            BufReader::new(Box::new(tokio::io::duplex(1).0)),
        );
        let connector = tokio_rustls::TlsConnector::from(TLS_CONFIG.clone());
        let tls = tokio::time::timeout(t, connector.connect(name, plain.into_inner()))
            .await
            .map_err(|_| SmtpError::TlsUnavailable("handshake timed out".into()))?
            .map_err(|e| SmtpError::TlsUnavailable(e.to_string()))?;
        self.io = BufReader::new(Box::new(tls));
        self.tls = true;
        Ok(())
    }

    /// Sends one message. `data_sent` runs the moment the final dot has been handed to
    /// the kernel, before the reply is read. The session stays usable after a negative
    /// reply (the next transaction starts with RSET), not after a broken one.
    pub async fn send(
        &mut self,
        from: &str,
        to: &str,
        message: &[u8],
        settings: &SmtpSettings,
        data_sent: impl FnOnce(),
    ) -> Result<SmtpReply, SmtpError> {
        let result = self.transact(from, to, message, settings, data_sent).await;
        if matches!(
            result,
            Err(SmtpError::Session(_)) | Err(SmtpError::Timeout(_))
        ) {
            self.broken = true;
        }
        result
    }

    async fn transact(
        &mut self,
        from: &str,
        to: &str,
        message: &[u8],
        settings: &SmtpSettings,
        data_sent: impl FnOnce(),
    ) -> Result<SmtpReply, SmtpError> {
        let t = settings.command_timeout;
        if self.caps.size > 0 && message.len() as u64 > self.caps.size {
            return Err(SmtpError::Unsupported(format!(
                "the message ({} bytes) exceeds the server's SIZE limit ({} bytes)",
                message.len(),
                self.caps.size
            )));
        }
        let utf8_addresses = !from.is_ascii() || !to.is_ascii();
        if utf8_addresses && !self.caps.smtputf8 {
            return Err(SmtpError::Unsupported(
                "the server does not accept internationalized addresses (no SMTPUTF8)".into(),
            ));
        }
        let mut mail = format!("MAIL FROM:<{from}>");
        if self.caps.eight_bit_mime && !message.is_ascii() {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8_addresses {
            mail.push_str(" SMTPUTF8");
        }
        if self.caps.size > 0 {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        let mut steps: Vec<(&'static str, String)> = Vec::with_capacity(4);
        if self.dirty {
            steps.push(("RSET", "RSET\r\n".into()));
        }
        steps.push(("MAIL FROM", format!("{mail}\r\n")));
        steps.push(("RCPT TO", format!("RCPT TO:<{to}>\r\n")));
        steps.push(("DATA", "DATA\r\n".into()));
        self.dirty = true;

        let mut replies: Vec<(&'static str, (u16, Vec<String>))> = Vec::with_capacity(steps.len());
        if self.caps.pipelining {
            let batch: String = steps.iter().map(|(_, c)| c.as_str()).collect();
            self.write(batch.as_bytes(), t, "MAIL FROM").await?;
            for (step, _) in &steps {
                let reply = match self.read_reply(t, step).await {
                    Ok(reply) => reply,
                    // The server hung up after refusing an earlier command: that refusal
                    // is the answer.
                    Err(_) if replies.iter().any(|(s, (c, _))| !expected(s, *c)) => {
                        self.broken = true;
                        break;
                    }
                    Err(error) => return Err(error),
                };
                let closing = reply.0 == 421;
                replies.push((*step, reply));
                if closing {
                    self.broken = true;
                    break;
                }
            }
        } else {
            for (step, command) in &steps {
                self.write(command.as_bytes(), t, step).await?;
                let (code, lines) = self.read_reply(t, step).await?;
                let failed = !expected(step, code);
                replies.push((*step, (code, lines)));
                if failed {
                    break;
                }
            }
        }
        let failure = replies
            .iter()
            .find(|(step, (code, _))| !expected(step, *code))
            .map(|(step, (code, lines))| (*step, *code, lines.clone()));
        let data_accepted = replies
            .last()
            .is_some_and(|(step, (code, _))| *step == "DATA" && *code == 354);
        if let Some((step, code, lines)) = failure {
            if step == "RSET" {
                return Err(SmtpError::Session(format!("RSET refused: {code}")));
            }
            if data_accepted && !self.broken {
                // A server that accepts DATA without a recipient: end it empty, then drop.
                self.write(b".\r\n", t, "DATA").await?;
                let _ = self.read_reply(t, "DATA").await;
                self.broken = true;
            }
            return Err(rejected(code, &lines, step));
        }

        let started = Instant::now();
        let data = dot_stuffed(message);
        self.write(&data, settings.data_timeout, "message data")
            .await?;
        data_sent();
        self.sent += 1;
        let (code, lines) = self
            .read_reply(settings.data_timeout, "end of data")
            .await?;
        metrics::histogram!("sendmill_smtp_data_seconds").record(started.elapsed().as_secs_f64());
        if code / 100 == 2 {
            Ok(reply(code, &lines.join(" ")))
        } else {
            Err(rejected(code, &lines, "end of data"))
        }
    }

    /// Ends the session politely; errors do not matter any more.
    pub async fn quit(mut self) {
        let t = Duration::from_secs(2);
        if self.write(b"QUIT\r\n", t, "QUIT").await.is_ok() {
            let _ = self.read_reply(t, "QUIT").await;
        }
    }

    async fn write(
        &mut self,
        bytes: &[u8],
        t: Duration,
        step: &'static str,
    ) -> Result<(), SmtpError> {
        let io = self.io.get_mut();
        tokio::time::timeout(t, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .map_err(|_| SmtpError::Timeout(step))?
        .map_err(|e| SmtpError::Session(format!("{step}: {e}")))
    }

    /// One (possibly multi-line) reply: its code and the text of each line.
    async fn read_reply(
        &mut self,
        t: Duration,
        step: &'static str,
    ) -> Result<(u16, Vec<String>), SmtpError> {
        let garbled = |what: &str| SmtpError::Session(format!("{step}: {what}"));
        tokio::time::timeout(t, async {
            let mut lines = Vec::new();
            let mut line = Vec::with_capacity(128);
            loop {
                line.clear();
                let n = (&mut self.io)
                    .take(MAX_REPLY_LINE)
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(|e| garbled(&e.to_string()))?;
                if n == 0 {
                    return Err(garbled("connection closed"));
                }
                if !line.ends_with(b"\n") {
                    return Err(garbled("reply line too long"));
                }
                let ReplyLine { code, more, text } =
                    ReplyLine::parse(&line).ok_or_else(|| garbled("garbled reply"))?;
                lines.push(text);
                if !more {
                    return Ok((code, lines));
                }
                if lines.len() > MAX_REPLY_LINES {
                    return Err(garbled("reply too long"));
                }
            }
        })
        .await
        .map_err(|_| SmtpError::Timeout(step))?
    }
}

/// One line of a server's reply (RFC 5321 §4.2): `250-text` or `250 text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyLine {
    pub code: u16,
    /// A hyphen after the code: more lines of the same reply follow.
    pub more: bool,
    pub text: String,
}

impl ReplyLine {
    /// Reads one line, its CRLF included or not; `None` when it does not start with a
    /// three-digit code. Text that is not UTF-8 is kept with replacement characters.
    pub fn parse(line: &[u8]) -> Option<Self> {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        let code = text
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))?
            .parse()
            .ok()?;
        Some(Self {
            code,
            more: text.as_bytes().get(3) == Some(&b'-'),
            text: text.get(4..).unwrap_or("").to_owned(),
        })
    }
}

fn expected(step: &str, code: u16) -> bool {
    match step {
        "DATA" => code == 354,
        _ => code / 100 == 2,
    }
}

fn rejected(code: u16, lines: &[String], step: &'static str) -> SmtpError {
    SmtpError::Rejected {
        reply: reply(code, &lines.join(" ")),
        step,
    }
}

/// The message as DATA sends it: lines starting with a dot get another (RFC 5321
/// §4.5.2), a final CRLF if missing, then the terminating dot.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut rest = message;
    if rest.first() == Some(&b'.') {
        out.push(b'.');
    }
    while let Some(at) = memchr::memmem::find(rest, b"\n.") {
        out.extend_from_slice(&rest[..=at]);
        out.push(b'.');
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Opportunistic TLS authenticates nobody (RFC 7435): any certificate is accepted, the
/// handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

static TLS_CONFIG: LazyLock<Arc<rustls::ClientConfig>> = LazyLock::new(|| {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
});

/// (source IP, MX address).
type HostKey = (Option<IpAddr>, SocketAddr);
/// (source IP, provider).
type ProviderKey = (Option<IpAddr>, String);

/// Idle sessions per (source IP, MX address), and the connection caps per
/// (source IP, provider).
pub struct ConnectionPool {
    settings: SmtpSettings,
    idle: Mutex<HashMap<HostKey, Vec<(Session, Instant)>>>,
    caps: Mutex<HashMap<ProviderKey, Arc<Semaphore>>>,
}

impl ConnectionPool {
    pub fn new(settings: SmtpSettings) -> Self {
        Self {
            settings,
            idle: Mutex::default(),
            caps: Mutex::default(),
        }
    }

    pub fn settings(&self) -> &SmtpSettings {
        &self.settings
    }

    /// A pooled session to `addr` from `source` that has not idled too long.
    pub fn take_idle(&self, source: Option<IpAddr>, addr: SocketAddr) -> Option<Session> {
        let mut idle = self.idle.lock().expect("not poisoned");
        let list = idle.get_mut(&(source, addr))?;
        while let Some((session, since)) = list.pop() {
            if since.elapsed() < self.settings.idle_timeout {
                return Some(session);
            }
            close_in_background(session);
        }
        None
    }

    /// A slot under the (source IP, provider) connection cap (`None` when uncapped).
    /// When every slot is taken, an idle session of that source and provider is closed
    /// to free one; else it waits up to the connect timeout.
    pub async fn slot(
        &self,
        source: Option<IpAddr>,
        provider: &str,
        cap: usize,
        provider_addrs: &[SocketAddr],
    ) -> Result<Option<OwnedSemaphorePermit>, SmtpError> {
        if cap == 0 {
            return Ok(None);
        }
        let semaphore = self
            .caps
            .lock()
            .expect("not poisoned")
            .entry((source, provider.to_owned()))
            .or_insert_with(|| Arc::new(Semaphore::new(cap)))
            .clone();
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Ok(Some(permit));
        }
        let evicted = {
            let mut idle = self.idle.lock().expect("not poisoned");
            provider_addrs
                .iter()
                .find_map(|addr| idle.get_mut(&(source, *addr)).and_then(Vec::pop))
        };
        if let Some((session, _)) = evicted {
            close_in_background(session);
        }
        match tokio::time::timeout(self.settings.connect_timeout, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => Err(SmtpError::Timeout("waiting for a connection slot")),
        }
    }

    /// Returns a session after use: pooled, or closed when broken, worn out
    /// (`max_messages`, 0: no limit) or the pool is full.
    pub fn put_back(
        &self,
        source: Option<IpAddr>,
        addr: SocketAddr,
        session: Session,
        max_messages: u32,
    ) {
        if session.broken {
            return;
        }
        if max_messages > 0 && session.sent >= max_messages {
            close_in_background(session);
            return;
        }
        let mut idle = self.idle.lock().expect("not poisoned");
        let list = idle.entry((source, addr)).or_default();
        if list.len() < self.settings.max_idle_per_host {
            list.push((session, Instant::now()));
        } else {
            drop(idle);
            close_in_background(session);
        }
    }
}

fn close_in_background(session: Session) {
    tokio::spawn(session.quit());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffs_lines_and_terminates() {
        assert_eq!(dot_stuffed(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuffed(b".x"), b"..x\r\n.\r\n");
        assert_eq!(dot_stuffed(b"a\r\n.\r\nb\r\n"), b"a\r\n..\r\nb\r\n.\r\n");
    }

    #[test]
    fn reads_ehlo_capabilities() {
        let lines: Vec<String> = ["mx.test", "PIPELINING", "SIZE 1000", "starttls", "8BITMIME"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let caps = Capabilities::parse(&lines);
        assert!(caps.pipelining && caps.starttls && caps.eight_bit_mime && !caps.smtputf8);
        assert_eq!(caps.size, 1000);
    }
}
