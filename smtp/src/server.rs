//! The server side of an SMTP session (RFC 5321): what flows in are command lines, AUTH
//! continuation lines and DATA; what flows out are replies. The submission listener
//! (RFC 6409) uses it, and the inbound server will: one room for SMTP server I/O, so the
//! protocol rules below are kept once.
//!
//! - Command lines are parsed by `smtp-proto` (Stalwart's parser, a library of the field);
//!   a line is at most [`MAX_LINE`] bytes (RFC 5321 §4.5.3.1.4 allows 512; extensions
//!   such as SIZE and SMTPUTF8 addresses make them longer).
//! - DATA is dot-unstuffed by `smtp-proto`'s receiver and bounded: past the size limit
//!   the rest is read and thrown away, so memory per session stays at the limit.
//! - Replies are queued and written when the session next waits for input, which is
//!   what PIPELINING (RFC 2920) needs: a client's batch is answered in one write.
//! - STARTTLS (RFC 3207) throws away anything the client sent after the command before
//!   the handshake, so that no plaintext command is taken as sent over TLS
//!   (the "STARTTLS command injection" of CVE-2011-0411).

use smtp_proto::{request::receiver::DataReceiver, Request};
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::TlsAcceptor;

/// Longest command or AUTH line taken, CRLF included, in bytes (RFC 4954 §4 asks for
/// 12,288 for AUTH lines).
pub const MAX_LINE: usize = 12_288;

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// Why a session ends without QUIT.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the client closed the connection")]
    Closed,
    #[error("no input for {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why a TLS certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("TLS certificate {path}: {reason}")]
pub struct CertificateError {
    pub path: String,
    pub reason: String,
}

/// The TLS acceptor for a PEM certificate chain and private key (PKCS#8, PKCS#1 or SEC1),
/// on aws-lc-rs like every other TLS in Sendmill; TLS 1.2 and 1.3.
pub fn tls_acceptor(
    certificate: &Path,
    private_key: &Path,
) -> Result<TlsAcceptor, CertificateError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let error = |path: &Path, reason: String| CertificateError {
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| error(certificate, e.to_string()))?;
    if chain.is_empty() {
        return Err(error(certificate, "no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(private_key).map_err(|e| error(private_key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| error(certificate, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| error(certificate, e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TCP connection, in the clear or in TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What the client sent when a command was expected.
#[derive(Debug)]
pub enum Input {
    Command(Request<String>),
    /// A line `smtp-proto` refused; answer with [`refusal`].
    Invalid(smtp_proto::Error),
}

/// The DATA of one transaction.
#[derive(Debug)]
pub enum Data {
    /// The message, dot-unstuffed, with the CRLF before the final dot.
    Message(Vec<u8>),
    /// Longer than the limit: this many bytes were read and thrown away.
    TooBig(usize),
}

/// What [`Connection::receive_data`] came to.
#[derive(Debug)]
pub enum Received {
    /// The message, dot-unstuffed.
    Message(Vec<u8>),
    /// Over the size limit: the reply to send, `(code, enhanced code, text)`.
    TooBig(u16, &'static str, String),
    /// No data within the timeout: 421 is queued, the session ends.
    TimedOut,
}

/// One client connection: buffered input, queued replies.
pub struct Connection {
    stream: Stream,
    input: Vec<u8>,
    output: Vec<u8>,
    pub peer: SocketAddr,
}

impl Connection {
    pub fn new(stream: Stream, peer: SocketAddr) -> Self {
        Connection {
            stream,
            input: Vec::with_capacity(READ_CHUNK),
            output: Vec::with_capacity(512),
            peer,
        }
    }

    /// Whether the session runs in TLS (implicit, or after STARTTLS).
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Queues a reply: `code`, the RFC 3463 `enhanced` code (`"2.0.0"`), and `text`, one
    /// line per `\n` (a multi-line reply for more than one).
    pub fn reply(&mut self, code: u16, enhanced: &str, text: &str) {
        let mut lines = text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let separator = if lines.peek().is_some() { '-' } else { ' ' };
            let line = format!("{code}{separator}{enhanced} {line}\r\n");
            self.output.extend_from_slice(line.as_bytes());
        }
    }

    /// Queues a reply of `lines` with no enhanced code (the greeting, EHLO).
    pub fn reply_plain(&mut self, code: u16, lines: &[String]) {
        for (i, line) in lines.iter().enumerate() {
            let separator = if i + 1 < lines.len() { '-' } else { ' ' };
            self.output
                .extend_from_slice(format!("{code}{separator}{line}\r\n").as_bytes());
        }
    }

    /// Writes the queued replies.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await?;
            self.output.clear();
        }
        Ok(())
    }

    /// Flushes, then reads more input within `timeout`.
    async fn fill(&mut self, timeout: Duration) -> Result<(), SessionError> {
        self.flush().await?;
        let start = self.input.len();
        self.input.resize(start + READ_CHUNK, 0);
        let read = tokio::time::timeout(timeout, self.stream.read(&mut self.input[start..])).await;
        let n = match read {
            Err(_) => {
                self.input.truncate(start);
                return Err(SessionError::Timeout(timeout));
            }
            Ok(Err(e)) => {
                self.input.truncate(start);
                return Err(e.into());
            }
            Ok(Ok(n)) => n,
        };
        self.input.truncate(start + n);
        if n == 0 {
            return Err(SessionError::Closed);
        }
        Ok(())
    }

    /// The next line, CRLF (or a bare LF) included; `None` when it is longer than
    /// [`MAX_LINE`] (the line is then read to its end and thrown away).
    pub async fn read_line(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, SessionError> {
        let mut too_long = false;
        loop {
            if let Some(end) = memchr::memchr(b'\n', &self.input) {
                let line: Vec<u8> = self.input.drain(..=end).collect();
                return Ok((!too_long && line.len() <= MAX_LINE).then_some(line));
            }
            if self.input.len() > MAX_LINE {
                too_long = true;
                self.input.clear();
            }
            self.fill(timeout).await?;
        }
    }

    /// The next command, parsed.
    pub async fn read_command(&mut self, timeout: Duration) -> Result<Input, SessionError> {
        let Some(line) = self.read_line(timeout).await? else {
            return Ok(Input::Invalid(smtp_proto::Error::ResponseTooLong));
        };
        Ok(match Request::parse(&mut line.iter()) {
            Ok(request) => Input::Command(request.into_owned()),
            Err(error) => Input::Invalid(error),
        })
    }

    /// The message after a 354: dot-unstuffed, at most `max_bytes` kept; every read
    /// must come within `timeout` (RFC 5321 §4.5.3.2.6 suggests 3 minutes per block).
    pub async fn read_data(
        &mut self,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Data, SessionError> {
        let mut receiver = DataReceiver::new();
        let mut message = Vec::new();
        // The receiver recognises the final dot and stuffed dots at the start of a line;
        // the DATA command's own CRLF starts the first line.
        receiver.ingest(&mut b"\r\n".iter(), &mut message);
        message.clear();
        let mut discarded = 0usize;
        loop {
            let mut bytes = self.input.iter();
            let done = receiver.ingest(&mut bytes, &mut message);
            let consumed = self.input.len() - bytes.len();
            self.input.drain(..consumed);
            if message.len() > max_bytes {
                discarded += message.len();
                message.clear();
            }
            if done {
                return Ok(if discarded > 0 {
                    Data::TooBig(discarded + message.len())
                } else {
                    Data::Message(message)
                });
            }
            self.fill(timeout).await?;
        }
    }

    /// A DATA command the session has checked: queues 354, then reads the message
    /// ([`Connection::read_data`]). Over `max_bytes`, the 552 5.3.4 the server owes is
    /// returned (not yet queued: the caller counts and sends it); on a timeout 421 4.4.2
    /// is queued and the caller closes the session.
    pub async fn receive_data(
        &mut self,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Received, SessionError> {
        self.reply(354, "2.0.0", "end data with <CR><LF>.<CR><LF>");
        Ok(match self.read_data(max_bytes, timeout).await {
            Err(SessionError::Timeout(_)) => {
                self.reply(421, "4.4.2", "timeout in DATA, closing");
                Received::TimedOut
            }
            Err(error) => return Err(error),
            Ok(Data::TooBig(_)) => Received::TooBig(
                552,
                "5.3.4",
                format!("message exceeds the limit of {max_bytes} bytes"),
            ),
            Ok(Data::Message(message)) => Received::Message(message),
        })
    }

    /// STARTTLS after its 220 was queued: writes it, throws away input the client sent
    /// too early, and runs the handshake within `timeout`.
    pub async fn start_tls(
        mut self,
        acceptor: &TlsAcceptor,
        timeout: Duration,
    ) -> Result<Self, SessionError> {
        self.flush().await?;
        self.input.clear();
        let Stream::Plain(tcp) = self.stream else {
            return Ok(self);
        };
        let tls = tokio::time::timeout(timeout, acceptor.accept(tcp))
            .await
            .map_err(|_| SessionError::Timeout(timeout))?
            .map_err(SessionError::Tls)?;
        Ok(Connection {
            stream: Stream::Tls(Box::new(tls)),
            input: self.input,
            output: self.output,
            peer: self.peer,
        })
    }

    /// Flushes what is queued and closes the connection.
    pub async fn close(mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// The reply to a line `smtp-proto` refused: `(code, enhanced code, text)`.
pub fn refusal(error: &smtp_proto::Error) -> (u16, &'static str, String) {
    use smtp_proto::Error;
    match error {
        Error::UnknownCommand => (500, "5.5.1", "command not recognised".into()),
        Error::InvalidSenderAddress => (501, "5.1.7", "bad sender address syntax".into()),
        Error::InvalidRecipientAddress => (501, "5.1.3", "bad recipient address syntax".into()),
        Error::SyntaxError { syntax } => (501, "5.5.4", format!("syntax: {syntax}")),
        Error::InvalidParameter { param } => (501, "5.5.4", format!("invalid parameter {param}")),
        Error::UnsupportedParameter { param } => {
            (555, "5.5.4", format!("unsupported parameter {param}"))
        }
        Error::ResponseTooLong => (500, "5.5.6", "line too long".into()),
        Error::NeedsMoreData { .. } | Error::InvalidResponse { .. } => {
            (500, "5.5.2", "syntax error".into())
        }
    }
}

/// Connections open per key (an account, a client address), each capped.
pub struct Counted<K>(Mutex<HashMap<K, usize>>);

impl<K> Default for Counted<K> {
    fn default() -> Self {
        Counted(Mutex::new(HashMap::new()))
    }
}

/// One counted connection of a key, given back when dropped.
pub struct Slot<K: std::hash::Hash + Eq + Copy> {
    counts: Arc<Counted<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Copy> Counted<K> {
    /// A slot for `key`, or `None` when it has `max` already.
    pub fn take(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut open = self.0.lock().expect("not poisoned");
        let count = open.entry(key).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot {
            counts: self.clone(),
            key,
        })
    }
}

impl<K: std::hash::Hash + Eq + Copy> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self.counts.0.lock().expect("not poisoned");
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Protocol errors after which a server closes a session (a client that is not
/// speaking SMTP).
pub const MAX_ERRORS: u32 = 10;

/// The EHLO reply lines of Sendmill's servers: `hostname`, then PIPELINING, SIZE
/// (`max_message_bytes`, RFC 1870), 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, and STARTTLS
/// when `starttls` (a certificate is configured and the session is not in TLS yet).
pub fn ehlo_lines(hostname: &str, max_message_bytes: usize, starttls: bool) -> Vec<String> {
    let mut lines = vec![
        hostname.to_owned(),
        "PIPELINING".into(),
        format!("SIZE {max_message_bytes}"),
        "8BITMIME".into(),
        "SMTPUTF8".into(),
        "ENHANCEDSTATUSCODES".into(),
    ];
    if starttls {
        lines.push("STARTTLS".into());
    }
    lines
}

impl Connection {
    /// Counts one protocol error of the session in `errors`; at [`MAX_ERRORS`] answers
    /// 421 4.7.0 and returns `true`: the caller ends the session.
    pub async fn too_many_errors(&mut self, errors: &mut u32) -> bool {
        *errors += 1;
        if *errors < MAX_ERRORS {
            return false;
        }
        self.reply(421, "4.7.0", "too many errors, closing");
        self.flush().await.ok();
        true
    }
}

/// A connection's place under a server's caps: one of `max_connections`, and one of its
/// client address's `max_connections_per_ip`. Given back when dropped.
pub type Admitted = (tokio::sync::OwnedSemaphorePermit, Slot<std::net::IpAddr>);

/// The caps an SMTP server applies to a connection before anything else, a TLS
/// handshake included, so that a flood costs no more than the caps.
pub struct Admission {
    connections: Arc<tokio::sync::Semaphore>,
    peers: Arc<Counted<std::net::IpAddr>>,
    per_ip: usize,
}

impl Admission {
    pub fn new(max_connections: usize, max_connections_per_ip: usize) -> Self {
        Self {
            connections: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            peers: Arc::default(),
            per_ip: max_connections_per_ip,
        }
    }

    /// Accepts connections on `listener` until `closed` completes, handing each to
    /// `session` with its place under the caps, or `None` when it is over one (the
    /// session then refuses it). Accept errors (out of file descriptors and the like)
    /// pause for 100 ms rather than spin; `server` names them in the log.
    pub async fn accept_until(
        &self,
        listener: &tokio::net::TcpListener,
        server: &'static str,
        closed: impl std::future::Future<Output = ()>,
        mut session: impl FnMut(TcpStream, SocketAddr, Option<Admitted>),
    ) {
        tokio::pin!(closed);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut closed => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, server, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let admitted = self
                .connections
                .clone()
                .try_acquire_owned()
                .ok()
                .zip(self.peers.take(peer.ip(), self.per_ip));
            session(stream, peer, admitted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connection whose client side wrote `sent` and then closed.
    async fn connection(sent: &'static [u8]) -> Connection {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(sent).await.unwrap();
            s
        });
        let (server, peer) = listener.accept().await.unwrap();
        drop(client.await.unwrap());
        Connection::new(Stream::Plain(server), peer)
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn data_is_unstuffed_up_to_the_final_dot_and_the_next_command_stays() {
        let mut c = connection(b"..first\r\nline\r\n..\r\n.\r\nQUIT\r\n").await;
        match c.read_data(1000, SECOND).await.unwrap() {
            Data::Message(m) => assert_eq!(m, b".first\r\nline\r\n.\r\n"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.read_command(SECOND).await.unwrap(),
            Input::Command(Request::Quit)
        ));
    }

    #[tokio::test]
    async fn data_past_the_limit_is_read_and_thrown_away() {
        let mut c = connection(b"0123456789\r\n0123456789\r\n.\r\nNOOP\r\n").await;
        match c.read_data(15, SECOND).await.unwrap() {
            Data::TooBig(n) => assert_eq!(n, 24),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.read_command(SECOND).await.unwrap(),
            Input::Command(Request::Noop { .. })
        ));
    }

    #[tokio::test]
    async fn an_overlong_line_is_refused_and_the_session_goes_on() {
        let mut sent = vec![b'A'; MAX_LINE + 10];
        sent.extend_from_slice(b"\r\nRSET\r\n");
        let sent: &'static [u8] = Box::leak(sent.into_boxed_slice());
        let mut c = connection(sent).await;
        assert!(matches!(
            c.read_command(SECOND).await.unwrap(),
            Input::Invalid(smtp_proto::Error::ResponseTooLong)
        ));
        assert!(matches!(
            c.read_command(SECOND).await.unwrap(),
            Input::Command(Request::Rset)
        ));
        assert!(matches!(
            c.read_command(SECOND).await,
            Err(SessionError::Closed)
        ));
    }
}
