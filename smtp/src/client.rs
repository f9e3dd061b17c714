//! One SMTP client session to a receiving MX host (RFC 5321): connect from a chosen
//! source IP, greeting, EHLO (HELO for old servers), STARTTLS as asked, then one
//! transaction per message (`RSET` first on a reused session), pipelined (RFC 2920) when
//! the server offers it.
//!
//! We speak the protocol ourselves rather than through lettre for three reasons: the
//! socket must be bound to the chosen source IP with `TCP_NODELAY`; every step needs its
//! own timeout; and the sender's dedupe journal must be written the moment the message's
//! final dot is handed to the kernel and before its reply is read (the `data_sent`
//! callback of [`Session::send`]), which no SMTP library exposes.
//!
//! TLS is opportunistic STARTTLS (RFC 3207, RFC 7435): used when offered, a failed
//! handshake retried once in the clear, unless the caller requires TLS, in which case its
//! absence is an error ([`SmtpError::TlsUnavailable`]).

use crate::{
    command::{Command, MailParameters, Step, Timeouts},
    reply::{Reply, ReplyLine},
    tls::{CertificateVerifier, TlsFailure, TLS_CONFIG},
};
use rustls::pki_types::{CertificateDer, ServerName};
use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpSocket,
    sync::OwnedSemaphorePermit,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum SmtpError {
    #[error("connect to {addr} failed: {error}")]
    Connect { addr: SocketAddr, error: String },
    #[error("timed out during {0}")]
    Timeout(Step),
    /// The server answered a step negatively.
    #[error("{step}: {} {}", reply.code, reply.text)]
    Rejected { reply: Reply, step: Step },
    /// TLS is required and the server does not offer it, or the handshake failed.
    #[error("TLS required: {0}")]
    TlsUnavailable(String),
    /// Authenticated TLS is required (MTA-STS `enforce`) and the server's TLS did not
    /// authenticate it; no mail command was sent.
    #[error("MTA-STS: {0}")]
    Authentication(TlsFailure),
    /// A limit of the server announced in EHLO that the message cannot meet.
    #[error("{0}")]
    Unsupported(String),
    /// The session broke (connection closed, garbled reply).
    #[error("{0}")]
    Session(String),
}

impl SmtpError {
    /// Failures of the host rather than of the message: the next MX host may do better.
    pub fn try_next_host(&self) -> bool {
        match self {
            SmtpError::Connect { .. }
            | SmtpError::Timeout(_)
            | SmtpError::Session(_)
            | SmtpError::TlsUnavailable(_)
            | SmtpError::Authentication(_) => true,
            // 421: the server is shutting the session down, not judging the message; a
            // refused greeting is the host's state, not the message's.
            SmtpError::Rejected { reply, step } => reply.code == 421 || *step == Step::Greeting,
            // A limit of this host (SIZE, no SMTPUTF8): a backup MX may not have it.
            SmtpError::Unsupported(_) => true,
        }
    }

    /// The session cannot be trusted after it: a pooled session that fails this way
    /// before the data went out may just have gone stale.
    pub fn broke_session(&self) -> bool {
        matches!(self, SmtpError::Session(_) | SmtpError::Timeout(_))
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// Bytes of one reply line at most; a longer line breaks the session.
const MAX_REPLY_LINE: u64 = 4096;
/// Lines of one reply at most.
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

/// Whether the server's certificate is judged (MTA-STS, RFC 8461 §4.2), and what for.
#[derive(Debug, Clone, Copy)]
pub enum Authentication<'a> {
    /// Not judged: opportunistic TLS (RFC 7435).
    None,
    /// Judged and reported in [`Session::tls_report`], the session goes on either way
    /// (MTA-STS `testing`).
    Report(&'a CertificateVerifier),
    /// Required (MTA-STS `enforce`): STARTTLS and a certificate valid for the MX host
    /// name, or no session ([`SmtpError::Authentication`]).
    Require(&'a CertificateVerifier),
}

/// Where a session goes and as whom.
#[derive(Debug, Clone)]
pub struct Endpoint<'a> {
    /// Bound source address; `None` or unspecified: the system's choice.
    pub source: Option<IpAddr>,
    pub addr: SocketAddr,
    /// The MX host's name, for TLS SNI and certificate checks.
    pub host_name: &'a str,
    pub helo: &'a str,
    pub tls: TlsMode,
    pub authentication: Authentication<'a>,
}

/// One open SMTP session.
pub struct Session {
    io: BufReader<Box<dyn Io>>,
    caps: Capabilities,
    pub tls: bool,
    /// The MX host name the server's certificate was verified for, if it was: only
    /// such a session may be reused for a domain that requires authenticated TLS.
    pub authenticated_as: Option<String>,
    /// What judging the server's TLS found, when the endpoint asked
    /// ([`Authentication::Report`] or [`Authentication::Require`]): RFC 8460's result.
    pub tls_report: Option<Result<(), TlsFailure>>,
    /// Messages sent over it.
    pub sent: u32,
    /// A transaction was started: the next one begins with RSET.
    dirty: bool,
    /// Unusable after an error mid-transaction.
    broken: bool,
    /// The connection-limit slot it holds.
    _slot: Option<OwnedSemaphorePermit>,
}

/// A reply as read: its code and each line's text.
type RawReply = (u16, Vec<String>);

impl Session {
    /// Connects, reads the greeting, says EHLO and upgrades to TLS as `endpoint.tls` asks.
    /// `slot` (a connection-cap permit) is held until the session is dropped.
    pub async fn open(
        endpoint: &Endpoint<'_>,
        timeouts: &Timeouts,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<Session, SmtpError> {
        let started = Instant::now();
        let tls = match endpoint.authentication {
            Authentication::Require(_) => TlsMode::Required,
            _ => endpoint.tls,
        };
        let mut session = Self::open_once(endpoint, timeouts, tls).await;
        if let Err(SmtpError::TlsUnavailable(error)) = &session {
            if tls == TlsMode::Opportunistic {
                tracing::debug!(addr = %endpoint.addr, %error, "TLS handshake failed; retrying in the clear");
                let failure = TlsFailure::ValidationFailure(format!("handshake failed: {error}"));
                session = Self::open_once(endpoint, timeouts, TlsMode::Off).await;
                if let (Ok(session), Authentication::Report(_)) =
                    (&mut session, endpoint.authentication)
                {
                    session.tls_report = Some(Err(failure));
                }
            }
        }
        let mut session = session?;
        session._slot = slot;
        metrics::histogram!(crate::metric::SMTP_CONNECT_SECONDS)
            .record(started.elapsed().as_secs_f64());
        Ok(session)
    }

    /// Whether the session broke mid-transaction (it is closed, not pooled).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    async fn open_once(
        endpoint: &Endpoint<'_>,
        timeouts: &Timeouts,
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
        let stream = tokio::time::timeout(timeouts.of(Step::Connect), socket.connect(addr))
            .await
            .map_err(|_| SmtpError::Timeout(Step::Connect))?
            .map_err(connect_error)?;
        let mut session = Session {
            io: BufReader::new(Box::new(stream)),
            caps: Capabilities::default(),
            tls: false,
            authenticated_as: None,
            tls_report: None,
            sent: 0,
            dirty: false,
            broken: false,
            _slot: None,
        };
        let (code, lines) = session.read_reply(timeouts, Step::Greeting).await?;
        if !Step::Greeting.accepts(code) {
            return Err(rejected(code, &lines, Step::Greeting));
        }
        session.hello(endpoint.helo, timeouts).await?;
        let verifier = match endpoint.authentication {
            Authentication::None => None,
            Authentication::Report(v) | Authentication::Require(v) => Some(v),
        };
        if session.caps.starttls && tls != TlsMode::Off {
            let chain = session.starttls(endpoint.host_name, timeouts).await?;
            if let Some(verifier) = verifier {
                let verdict = verifier.check(&chain, endpoint.host_name);
                if verdict.is_ok() {
                    session.authenticated_as = Some(endpoint.host_name.to_owned());
                }
                session.tls_report = Some(verdict);
            }
            session.hello(endpoint.helo, timeouts).await?;
        } else if verifier.is_some() && tls != TlsMode::Off {
            session.tls_report = Some(Err(TlsFailure::StarttlsNotSupported));
        }
        if let (Authentication::Require(_), Some(Err(failure))) =
            (endpoint.authentication, &session.tls_report)
        {
            let failure = failure.clone();
            session.quit().await;
            return Err(SmtpError::Authentication(failure));
        }
        if tls == TlsMode::Required && !session.tls {
            session.quit().await;
            return Err(SmtpError::TlsUnavailable(
                "the server does not offer STARTTLS".into(),
            ));
        }
        Ok(session)
    }

    async fn hello(&mut self, helo: &str, timeouts: &Timeouts) -> Result<(), SmtpError> {
        let (code, lines) = self.command(Command::Ehlo(helo), timeouts).await?;
        if Step::Ehlo.accepts(code) {
            self.caps = Capabilities::parse(&lines);
            return Ok(());
        }
        // An old server: HELO, and no extensions.
        let (code, lines) = self.command(Command::Helo(helo), timeouts).await?;
        if !Step::Helo.accepts(code) {
            // The server refuses to talk at all: the host's state, as a refused greeting.
            return Err(rejected(code, &lines, Step::Greeting));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    /// Upgrades the session to TLS; answers the certificate chain the server presented.
    async fn starttls(
        &mut self,
        host_name: &str,
        timeouts: &Timeouts,
    ) -> Result<Vec<CertificateDer<'static>>, SmtpError> {
        let (code, lines) = self.command(Command::StartTls, timeouts).await?;
        if !Step::StartTls.accepts(code) {
            let reply = Reply::from_lines(code, &lines);
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
        let handshake = connector.connect(name, plain.into_inner());
        let tls = tokio::time::timeout(timeouts.of(Step::StartTls), handshake)
            .await
            .map_err(|_| SmtpError::TlsUnavailable("handshake timed out".into()))?
            .map_err(|e| SmtpError::TlsUnavailable(e.to_string()))?;
        let chain = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        self.io = BufReader::new(Box::new(tls));
        self.tls = true;
        Ok(chain)
    }

    /// Sends one message. `data_sent` runs the moment the final dot has been handed to
    /// the kernel, before the reply is read. The session stays usable after a negative
    /// reply (the next transaction starts with RSET), not after a broken one.
    pub async fn send(
        &mut self,
        from: &str,
        to: &str,
        message: &[u8],
        timeouts: &Timeouts,
        data_sent: impl FnOnce(),
    ) -> Result<Reply, SmtpError> {
        let result = self.transact(from, to, message, timeouts, data_sent).await;
        if result.as_ref().is_err_and(SmtpError::broke_session) {
            self.broken = true;
        }
        result
    }

    async fn transact(
        &mut self,
        from: &str,
        to: &str,
        message: &[u8],
        timeouts: &Timeouts,
        data_sent: impl FnOnce(),
    ) -> Result<Reply, SmtpError> {
        if self.caps.size > 0 && message.len() as u64 > self.caps.size {
            return Err(SmtpError::Unsupported(format!(
                "the message ({} bytes) exceeds the server's SIZE limit ({} bytes)",
                message.len(),
                self.caps.size
            )));
        }
        // RFC 6531/6532: a UTF-8 address, in the envelope or in a header (an RFC 6532
        // message), goes only to a server offering SMTPUTF8; never punycoded, never raw
        // to one that did not offer it.
        let internationalised =
            !from.is_ascii() || !to.is_ascii() || !header_section(message).is_ascii();
        if internationalised && !self.caps.smtputf8 {
            return Err(SmtpError::Unsupported(
                "the receiving server does not offer SMTPUTF8 (RFC 6531), which this message \
                 needs for its internationalised (UTF-8) address"
                    .into(),
            ));
        }
        let parameters = MailParameters {
            eight_bit_mime: self.caps.eight_bit_mime && !message.is_ascii(),
            smtputf8: internationalised,
            size: (self.caps.size > 0).then_some(message.len()),
        };
        let mut commands = Vec::with_capacity(4);
        if self.dirty {
            commands.push(Command::Rset);
        }
        commands.push(Command::MailFrom {
            reverse_path: from,
            parameters,
        });
        commands.push(Command::RcptTo(to));
        commands.push(Command::Data);
        self.dirty = true;

        let mut replies: Vec<(Step, RawReply)> = Vec::with_capacity(commands.len());
        if self.caps.pipelining {
            let batch: String = commands.iter().map(Command::line).collect();
            self.write(batch.as_bytes(), timeouts, Step::MailFrom)
                .await?;
            for step in commands.iter().map(Command::step) {
                let reply = match self.read_reply(timeouts, step).await {
                    Ok(reply) => reply,
                    // The server hung up after refusing an earlier command: that refusal
                    // is the answer.
                    Err(_) if replies.iter().any(|(s, (c, _))| !s.accepts(*c)) => {
                        self.broken = true;
                        break;
                    }
                    Err(error) => return Err(error),
                };
                let closing = reply.0 == 421;
                replies.push((step, reply));
                if closing {
                    self.broken = true;
                    break;
                }
            }
        } else {
            for command in &commands {
                let step = command.step();
                let (code, lines) = self.command(*command, timeouts).await?;
                replies.push((step, (code, lines)));
                if !step.accepts(code) {
                    break;
                }
            }
        }
        let failure = replies
            .iter()
            .find(|(step, (code, _))| !step.accepts(*code))
            .map(|(step, (code, lines))| (*step, *code, lines.clone()));
        let data_accepted = replies
            .last()
            .is_some_and(|(step, (code, _))| *step == Step::Data && Step::Data.accepts(*code));
        if let Some((step, code, lines)) = failure {
            if step == Step::Rset {
                return Err(SmtpError::Session(format!("RSET refused: {code}")));
            }
            if data_accepted && !self.broken {
                // A server that accepts DATA without a recipient: end it empty, then drop.
                self.write(b".\r\n", timeouts, Step::Data).await?;
                let _ = self.read_reply(timeouts, Step::Data).await;
                self.broken = true;
            }
            return Err(rejected(code, &lines, step));
        }

        let started = Instant::now();
        let data = dot_stuffed(message);
        self.write(&data, timeouts, Step::MessageData).await?;
        data_sent();
        self.sent += 1;
        let (code, lines) = self.read_reply(timeouts, Step::EndOfData).await?;
        metrics::histogram!(crate::metric::SMTP_DATA_SECONDS)
            .record(started.elapsed().as_secs_f64());
        if Step::EndOfData.accepts(code) {
            Ok(Reply::from_lines(code, &lines))
        } else {
            Err(rejected(code, &lines, Step::EndOfData))
        }
    }

    /// Ends the session politely; errors do not matter any more.
    pub async fn quit(mut self) {
        // QUIT's timeout is fixed (`QUIT_TIMEOUT`): no other setting is read.
        let _ = self.command(Command::Quit, &Timeouts::default()).await;
    }

    /// Writes `command` and reads its reply, within its step's timeout each.
    async fn command(
        &mut self,
        command: Command<'_>,
        timeouts: &Timeouts,
    ) -> Result<RawReply, SmtpError> {
        let step = command.step();
        self.write(command.line().as_bytes(), timeouts, step)
            .await?;
        self.read_reply(timeouts, step).await
    }

    async fn write(
        &mut self,
        bytes: &[u8],
        timeouts: &Timeouts,
        step: Step,
    ) -> Result<(), SmtpError> {
        let io = self.io.get_mut();
        tokio::time::timeout(timeouts.of(step), async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .map_err(|_| SmtpError::Timeout(step))?
        .map_err(|e| SmtpError::Session(format!("{step}: {e}")))
    }

    /// One (possibly multi-line) reply: its code and the text of each line.
    async fn read_reply(&mut self, timeouts: &Timeouts, step: Step) -> Result<RawReply, SmtpError> {
        let garbled = |what: &str| SmtpError::Session(format!("{step}: {what}"));
        tokio::time::timeout(timeouts.of(step), async {
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

fn rejected(code: u16, lines: &[String], step: Step) -> SmtpError {
    SmtpError::Rejected {
        reply: Reply::from_lines(code, lines),
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

/// The header section of a message (RFC 5322 §2.1): everything before the first empty
/// line; the whole message when it has none.
fn header_section(message: &[u8]) -> &[u8] {
    memchr::memmem::find(message, b"\r\n\r\n").map_or(message, |end| &message[..end])
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

    #[test]
    fn the_header_section_ends_at_the_first_empty_line() {
        assert_eq!(
            header_section(b"To: a\r\nX: y\r\n\r\nbody\r\n\r\n"),
            b"To: a\r\nX: y"
        );
        assert_eq!(header_section(b"To: a"), b"To: a");
        assert!(!header_section("To: \u{e4}@x\r\n\r\n".as_bytes()).is_ascii());
        assert!(header_section("To: a@x\r\n\r\n\u{e4}".as_bytes()).is_ascii());
    }
}
