//! One submission session: greeting, EHLO, STARTTLS, AUTH, then transactions (MAIL,
//! RCPT, DATA), each queued by [`accept`] before its 250. The I/O and the command parser
//! are `sendmill_smtp::server`'s; what is decided here is who may send what.

use super::{message, AccountSlot, Shared};
use crate::{
    queue,
    send::{self, Planned, RecipientResult, RecipientStatus},
};
use base64::{engine::general_purpose::STANDARD, Engine};
use sendmill_platform::{api::ApiError, CancellationToken};
use sendmill_smtp::server::{
    ehlo_lines, refusal, Admitted, Connection, Input, Received, SessionError, Stream,
};
use sendmill_store::{idempotency::Claim, Principal, Scope};
use sendmill_wire::{BatchId, EmailAddress, Lane, MessageId, RenderOptions, RequestedV1};
use smtp_proto::Request;
use std::{net::SocketAddr, sync::Arc, time::Instant};
use time::OffsetDateTime;
use tokio::net::TcpStream;

/// An SMTP reply: code, enhanced code, text.
struct Reply(u16, &'static str, String);

impl Reply {
    fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Self {
        Reply(code, enhanced, text.into())
    }
}

#[derive(Default)]
struct Transaction {
    mail: bool,
    recipients: Vec<String>,
}

struct Session {
    shared: Arc<Shared>,
    helo: Option<String>,
    principal: Option<Principal>,
    /// The API key the session authenticated with, checked again at each MAIL (a key
    /// revoked meanwhile stops working within `ingest.auth_cache`).
    key: Option<String>,
    _slot: Option<AccountSlot>,
    /// When the session must have authenticated by.
    auth_deadline: Instant,
    auth_failures: u32,
    errors: u32,
    transaction: Transaction,
}

pub(super) async fn run(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    admitted: Option<Admitted>,
    close: CancellationToken,
) {
    let config = &shared.config;
    let mut connection = Connection::new(Stream::Plain(tcp), peer);
    let Some(_admitted) = admitted else {
        // Over a cap. On the TLS port a cleartext reply means nothing: just close.
        if !implicit_tls {
            connection.reply(421, "4.7.0", "too many connections, try again later");
            connection.close().await;
        }
        return;
    };
    if implicit_tls {
        let acceptor = shared.tls.as_ref().expect("implicit TLS has a certificate");
        connection = match connection
            .start_tls(acceptor, config.tls_handshake_timeout)
            .await
        {
            Ok(c) => c,
            Err(error) => {
                tracing::debug!(%peer, %error, "submission TLS handshake failed");
                return;
            }
        };
    }
    connection.reply_plain(220, &[format!("{} ESMTP Sendmill", config.hostname)]);
    let mut session = Session {
        shared: shared.clone(),
        helo: None,
        principal: None,
        key: None,
        _slot: None,
        auth_deadline: Instant::now() + config.auth_timeout,
        auth_failures: 0,
        errors: 0,
        transaction: Transaction::default(),
    };
    // A session still under way when the drain grace ends (a slow DATA) is cut: its
    // transaction was not answered 250, so the client keeps the message.
    let served = tokio::select! {
        served = session.serve(connection, &close) => served,
        _ = shared.state.shutdown.cancelled() => Ok(()),
    };
    match served {
        Ok(()) | Err(SessionError::Closed) => {}
        Err(error) => tracing::debug!(%peer, %error, "submission session ended"),
    }
}

impl Session {
    async fn serve(
        &mut self,
        mut c: Connection,
        close: &CancellationToken,
    ) -> Result<(), SessionError> {
        loop {
            let timeout = match self.principal {
                Some(_) => self.shared.config.command_timeout,
                None => self
                    .auth_deadline
                    .saturating_duration_since(Instant::now())
                    .min(self.shared.config.command_timeout),
            };
            let input = tokio::select! {
                _ = close.cancelled() => {
                    c.reply(421, "4.3.2", "shutting down, try again later");
                    c.close().await;
                    return Ok(());
                }
                input = c.read_command(timeout) => input,
            };
            let input = match input {
                Ok(input) => input,
                Err(SessionError::Timeout(_)) if self.principal.is_none() => {
                    c.reply(421, "4.7.0", "authentication timeout, closing");
                    c.close().await;
                    return Ok(());
                }
                Err(SessionError::Timeout(_)) => {
                    c.reply(421, "4.4.2", "timeout, closing");
                    c.close().await;
                    return Ok(());
                }
                Err(error) => return Err(error),
            };
            let request = match input {
                Input::Command(request) => request,
                Input::Invalid(error) => {
                    let (code, enhanced, text) = refusal(&error);
                    c.reply(code, enhanced, &text);
                    if c.too_many_errors(&mut self.errors).await {
                        return Ok(());
                    }
                    continue;
                }
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
                Request::Lhlo { .. } => c.reply(502, "5.5.1", "this is not an LMTP server"),
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
                    self.principal = None;
                    self.key = None;
                    self._slot = None;
                }
                Request::Auth {
                    mechanism,
                    initial_response,
                } => {
                    let reply = self.auth(&mut c, mechanism, initial_response).await?;
                    let failed = reply.0 == 535;
                    c.reply(reply.0, reply.1, &reply.2);
                    if failed {
                        self.auth_failures += 1;
                        if self.auth_failures >= self.shared.config.max_auth_failures {
                            c.reply(421, "4.7.0", "too many failed authentications, closing");
                            c.close().await;
                            return Ok(());
                        }
                    }
                }
                Request::Mail { from } => {
                    let reply = self.mail(from.size).await;
                    let refused = matches!(reply.0, 503 | 530 | 535);
                    c.reply(reply.0, reply.1, &reply.2);
                    if refused && c.too_many_errors(&mut self.errors).await {
                        return Ok(());
                    }
                }
                Request::Rcpt { to } => {
                    let reply = self.rcpt(to.address).await;
                    let refused = matches!(reply.0, 503 | 530);
                    c.reply(reply.0, reply.1, &reply.2);
                    if refused && c.too_many_errors(&mut self.errors).await {
                        return Ok(());
                    }
                }
                Request::Data => {
                    if !self.transaction.mail {
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
                    let reply = match received {
                        Received::TimedOut => {
                            c.close().await;
                            return Ok(());
                        }
                        Received::TooBig(code, enhanced, text) => Reply(code, enhanced, text),
                        Received::Message(data) => self.accept(&data).await,
                    };
                    if reply.0 != 250 {
                        metrics::counter!(
                            crate::metric::SUBMISSION_REFUSED_TOTAL,
                            "code" => reply.0.to_string()
                        )
                        .increment(1);
                    }
                    c.reply(reply.0, reply.1, &reply.2);
                    self.transaction = Transaction::default();
                }
                Request::Bdat { .. } => c.reply(502, "5.5.1", "CHUNKING not offered"),
                Request::Rset => {
                    self.transaction = Transaction::default();
                    c.reply(250, "2.0.0", "ok");
                }
                Request::Noop { .. } => c.reply(250, "2.0.0", "ok"),
                Request::Vrfy { .. } => c.reply(252, "2.5.0", "not verified; send and see"),
                Request::Help { .. } => {
                    c.reply(214, "2.0.0", "see https://www.rfc-editor.org/rfc/rfc6409")
                }
                Request::Quit => {
                    c.reply(221, "2.0.0", "bye");
                    c.close().await;
                    return Ok(());
                }
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

    fn auth_allowed(&self, c: &Connection) -> bool {
        c.is_tls() || self.shared.config.allow_plaintext_auth
    }

    fn extensions(&self, c: &Connection) -> Vec<String> {
        let config = &self.shared.config;
        let starttls = self.shared.tls.is_some() && !c.is_tls();
        let mut lines = ehlo_lines(&config.hostname, config.max_message_bytes, starttls);
        if self.auth_allowed(c) && self.principal.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines
    }

    async fn auth(
        &mut self,
        c: &mut Connection,
        mechanism: u64,
        initial: String,
    ) -> Result<Reply, SessionError> {
        if self.helo.is_none() {
            return Ok(Reply::new(503, "5.5.1", "EHLO first"));
        }
        if self.principal.is_some() {
            return Ok(Reply::new(503, "5.5.1", "already authenticated"));
        }
        if self.transaction.mail {
            return Ok(Reply::new(503, "5.5.1", "not inside a transaction"));
        }
        if !self.auth_allowed(c) {
            return Ok(Reply::new(
                530,
                "5.7.0",
                "must issue a STARTTLS command first",
            ));
        }
        let timeout = self.shared.config.command_timeout;
        // A continuation line: `None` when the client cancelled ("*", RFC 4954 §4).
        let next =
            async |c: &mut Connection, prompt: &str| -> Result<Option<String>, SessionError> {
                c.reply_plain(334, &[prompt.to_owned()]);
                let line = c.read_line(timeout).await?.unwrap_or_default();
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                Ok((line != "*").then_some(line))
            };
        let decode = |text: &str| STANDARD.decode(text.trim()).ok();
        let credentials = if mechanism == smtp_proto::AUTH_PLAIN {
            let response = if initial.is_empty() {
                match next(c, "").await? {
                    Some(line) => line,
                    None => return Ok(Reply::new(501, "5.0.0", "authentication cancelled")),
                }
            } else {
                initial
            };
            // authzid NUL authcid NUL passwd (RFC 4616).
            decode(&response).and_then(|bytes| {
                let mut parts = bytes.split(|&b| b == 0);
                let (_authz, user, password) = (parts.next()?, parts.next()?, parts.next()?);
                Some((
                    String::from_utf8(user.to_vec()).ok()?,
                    String::from_utf8(password.to_vec()).ok()?,
                ))
            })
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            let user = if initial.is_empty() {
                match next(c, "VXNlcm5hbWU6").await? {
                    Some(line) => line,
                    None => return Ok(Reply::new(501, "5.0.0", "authentication cancelled")),
                }
            } else {
                initial
            };
            let Some(password) = next(c, "UGFzc3dvcmQ6").await? else {
                return Ok(Reply::new(501, "5.0.0", "authentication cancelled"));
            };
            decode(&user)
                .and_then(|u| String::from_utf8(u).ok())
                .zip(decode(&password).and_then(|p| String::from_utf8(p).ok()))
        } else {
            return Ok(Reply::new(
                504,
                "5.5.4",
                "mechanism not supported: use PLAIN or LOGIN",
            ));
        };
        let Some((user, key)) = credentials else {
            return Ok(Reply::new(
                501,
                "5.5.2",
                "cannot decode the response (base64)",
            ));
        };
        let invalid = || Reply::new(535, "5.7.8", "authentication credentials invalid");
        let principal = match self.shared.state.auth.authenticate(&key).await {
            Ok(principal) => principal,
            Err(error) if error.status.is_server_error() => {
                return Ok(Reply::new(454, "4.7.0", "temporary authentication failure"))
            }
            Err(_) => return Ok(invalid()),
        };
        let user_matches = user == self.shared.config.username
            || user.eq_ignore_ascii_case(&principal.account_id.to_string());
        if !user_matches || !principal.has(Scope::Send) {
            return Ok(invalid());
        }
        let Some(slot) = self.shared.accounts.take(
            principal.account_id,
            self.shared.config.max_connections_per_account,
        ) else {
            return Ok(Reply::new(
                454,
                "4.7.0",
                "too many connections for this account, try again later",
            ));
        };
        tracing::debug!(peer = %c.peer, account = %principal.account_id, "submission authenticated");
        self.principal = Some(principal);
        self.key = Some(key);
        self._slot = Some(slot);
        Ok(Reply::new(235, "2.7.0", "authentication succeeded"))
    }

    async fn mail(&mut self, size: usize) -> Reply {
        if self.helo.is_none() {
            return Reply::new(503, "5.5.1", "EHLO first");
        }
        let Some(key) = &self.key else {
            return Reply::new(530, "5.7.0", "authentication required");
        };
        // The key again (cached): revoked, or its scopes or limits changed, since AUTH.
        match self.shared.state.auth.authenticate(key).await {
            Ok(principal) if principal.has(Scope::Send) => self.principal = Some(principal),
            Ok(_) => return Reply::new(535, "5.7.8", "the key no longer has the send scope"),
            Err(error) if error.status.is_server_error() => {
                return Reply::new(454, "4.7.0", "temporary authentication failure")
            }
            Err(_) => return Reply::new(535, "5.7.8", "the key is no longer valid"),
        }
        if self.transaction.mail {
            return Reply::new(503, "5.5.1", "nested MAIL command");
        }
        let max = self.shared.config.max_message_bytes;
        if size > max {
            return Reply::new(
                552,
                "5.3.4",
                format!("message exceeds the limit of {max} bytes"),
            );
        }
        // The envelope sender is Sendmill's VERP return path, whatever the client says.
        self.transaction.mail = true;
        Reply::new(250, "2.1.0", "ok")
    }

    async fn rcpt(&mut self, address: String) -> Reply {
        let Some(principal) = &self.principal else {
            return Reply::new(530, "5.7.0", "authentication required");
        };
        if !self.transaction.mail {
            return Reply::new(503, "5.5.1", "MAIL first");
        }
        if self.transaction.recipients.len() >= self.shared.config.max_recipients {
            return Reply::new(
                452,
                "4.5.3",
                format!(
                    "at most {} recipients per message",
                    self.shared.config.max_recipients
                ),
            );
        }
        let address = match crate::validate::email(&address) {
            Ok(address) => address,
            Err(reason) => return Reply::new(553, "5.1.3", format!("<{address}>: {reason}")),
        };
        if self.transaction.recipients.contains(&address) {
            return Reply::new(250, "2.1.5", "ok (already a recipient)");
        }
        let found = self
            .shared
            .state
            .suppressions
            .check(principal.account_id, std::slice::from_ref(&address))
            .await;
        match found.map(|mut found| found.pop().flatten()) {
            Err(error) => {
                tracing::error!(%error, "suppression check failed");
                Reply::new(
                    451,
                    "4.3.0",
                    "cannot check the suppression list, try again later",
                )
            }
            Ok(Some(suppressed)) => Reply::new(
                550,
                "5.7.1",
                format!(
                    "<{address}> is on a suppression list ({})",
                    suppressed.reason
                ),
            ),
            Ok(None) => {
                self.transaction.recipients.push(address);
                Reply::new(250, "2.1.5", "ok")
            }
        }
    }

    /// Checks the message and queues one record per recipient: the 250 (or why not).
    async fn accept(&mut self, data: &[u8]) -> Reply {
        let principal = self.principal.clone().expect("MAIL needs AUTH");
        let mut submitted = match message::read(data) {
            Ok(submitted) => submitted,
            Err(refusal) => return Reply(refusal.code, refusal.enhanced, refusal.text),
        };
        // Bare line ends made CRLF can grow a message: the limit holds for what is queued.
        let max = self.shared.config.max_message_bytes;
        if submitted.mime.len() > max {
            return Reply::new(
                552,
                "5.3.4",
                format!("message exceeds the limit of {max} bytes (with CRLF line ends)"),
            );
        }
        // One buffer for every recipient's record.
        let mime = bytes::Bytes::from(std::mem::take(&mut submitted.mime));
        let state = &self.shared.state;
        let recipients = std::mem::take(&mut self.transaction.recipients);
        let plan = |batch_id| planned(&principal, &submitted, &mime, &recipients, batch_id);
        if let Err(error) = send::check_sender(state, &principal, &submitted.from.email).await {
            return smtp_reply(&error);
        }
        // Unclaimed: nothing to remember when it fails, whether written or not.
        let unclaimed = async |plan: Planned| match self.queue(&principal, plan).await {
            Ok(reply) | Err((reply, _)) => reply,
        };
        let Some(message_id) = &submitted.message_id else {
            return unclaimed(plan(BatchId::generate())).await;
        };
        // The Message-ID and the recipients are claimed like an Idempotency-Key (see the
        // module doc): a relay that splits one message's recipients over several
        // transactions (postfix: 50 each) claims each part on its own. The content hash is
        // of the DATA as sent, Sendmill's fields included, so a resend that changes them is
        // a new message, not a replay.
        let mut sorted = recipients.clone();
        sorted.sort();
        let key = format!(
            "smtp:{}",
            hex::encode(sendmill_store::keys::hash_bytes(
                format!("{message_id}\n{}", sorted.join("\n")).as_bytes()
            ))
        );
        let hash = sendmill_store::keys::hash_bytes(data);
        let config = &state.config;
        let claim = state
            .store
            .claim_idempotency_key(
                principal.account_id,
                &key,
                &hash,
                config.idempotency_lease,
                config.idempotency_retention,
            )
            .await;
        let batch_id = match claim {
            Err(error) => {
                tracing::error!(%error, "claiming the Message-ID failed");
                return Reply::new(451, "4.3.0", "cannot queue now, try again later");
            }
            Ok(Claim::Owned { batch_id }) => batch_id,
            Ok(Claim::Replay { response, .. }) => {
                let batch = response["batch_id"].as_str().unwrap_or_default().to_owned();
                return Reply::new(250, "2.0.0", format!("already queued as {batch}"));
            }
            Ok(Claim::InProgress) => {
                return Reply::new(
                    451,
                    "4.3.0",
                    "this Message-ID is still being queued, try again shortly",
                )
            }
            // The same Message-ID with other content: a new message, not a resend.
            Ok(Claim::Mismatch) => return unclaimed(plan(BatchId::generate())).await,
        };
        match self.queue(&principal, plan(batch_id)).await {
            Ok(reply) => {
                let answer = serde_json::json!({ "batch_id": batch_id.to_string() });
                if let Err(error) = state
                    .store
                    .complete_idempotency_key(principal.account_id, &key, 250, &answer)
                    .await
                {
                    tracing::error!(%error, "storing the submission's answer failed");
                }
                reply
            }
            Err((reply, wrote_anything)) => {
                if let Err(error) = state
                    .store
                    .abandon_idempotency_key(principal.account_id, &key, !wrote_anything)
                    .await
                {
                    tracing::error!(%error, "releasing the Message-ID failed");
                }
                reply
            }
        }
    }

    /// Admits and writes `planned`: 250, or the reply and whether anything was written.
    async fn queue(&self, principal: &Principal, planned: Planned) -> Result<Reply, (Reply, bool)> {
        let state = &self.shared.state;
        let count = planned.copies.len();
        send::admit(state, principal, count as u32)
            .await
            .map_err(|error| (smtp_reply(&error), false))?;
        queue::write(state, &planned).await.map_err(|refused| {
            (
                Reply::new(
                    451,
                    "4.3.0",
                    "the message could not be queued, try again later",
                ),
                refused.wrote_anything,
            )
        })?;
        metrics::counter!(crate::metric::INGEST_ACCEPTED_TOTAL).increment(count as u64);
        metrics::counter!(crate::metric::SUBMISSION_MESSAGES_TOTAL).increment(1);
        let batch = planned
            .copies
            .first()
            .and_then(|(_, r)| r.as_ref())
            .map(|r| r.batch_id.to_string())
            .unwrap_or_default();
        Ok(Reply::new(
            250,
            "2.0.0",
            format!("queued as {batch} ({count} recipient(s))"),
        ))
    }
}

/// One record per recipient of `submitted`, ids derived from `batch_id`.
pub(crate) fn planned(
    principal: &Principal,
    submitted: &message::Submitted,
    mime: &bytes::Bytes,
    recipients: &[String],
    batch_id: BatchId,
) -> Planned {
    let lane = if submitted.context.campaign_id.is_some() {
        Lane::Bulk
    } else {
        Lane::Transactional
    };
    let now = OffsetDateTime::now_utc();
    let copies = recipients
        .iter()
        .enumerate()
        .map(|(i, to)| {
            let message_id = MessageId::derive(batch_id, i as u32);
            let record = RequestedV1 {
                message_id,
                account_id: principal.account_id,
                batch_id,
                lane,
                accepted_at: now,
                from: submitted.from.clone(),
                to: EmailAddress {
                    email: to.clone(),
                    name: None,
                },
                to_list: vec![],
                cc: vec![],
                envelope_to: None,
                reply_to: None,
                subject: String::new(),
                html: None,
                text: None,
                headers: vec![],
                data: Default::default(),
                context: submitted.context.clone(),
                options: RenderOptions {
                    strict: false,
                    // As in the API: the account's defaults unless the message says.
                    track_opens: submitted
                        .track_opens
                        .unwrap_or(principal.settings.track_opens),
                    track_clicks: submitted
                        .track_clicks
                        .unwrap_or(principal.settings.track_clicks),
                    // Bulk senders must offer one-click unsubscribe (Gmail, Yahoo).
                    list_unsubscribe: lane == Lane::Bulk,
                },
                attachments: vec![],
                mime: Some(mime.clone()),
                shared: None,
            };
            let result = RecipientResult {
                to: to.clone(),
                kind: send::CopyKind::To,
                status: RecipientStatus::Queued,
                message_id: Some(message_id),
                reason: None,
                field: None,
                send_at: None,
            };
            (result, Some(record))
        })
        .collect();
    Planned {
        from: submitted.from.clone(),
        copies,
        source: "submission",
        send_at: None,
        sendgrid_batch: None,
    }
}

/// The SMTP reply for an API refusal of the shared checks (sender, limits).
fn smtp_reply(error: &ApiError) -> Reply {
    match error.code {
        "unknown_sending_domain" | "unverified_sending_domain" => {
            Reply::new(550, "5.7.1", error.message.clone())
        }
        "rate_limited" => Reply::new(451, "4.7.1", error.message.clone()),
        "quota_exceeded" => Reply::new(452, "4.7.1", error.message.clone()),
        _ if error.status.is_server_error() => {
            Reply::new(451, "4.3.0", "temporarily unavailable, try again later")
        }
        _ => Reply::new(554, "5.6.0", error.message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn the_apis_refusals_become_the_smtp_replies_a_client_queue_understands() {
        let reply = |status, code| {
            let Reply(code, enhanced, _) = smtp_reply(&ApiError::new(status, code, "m"));
            (code, enhanced)
        };
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        let limited = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(
            reply(unprocessable, "unknown_sending_domain"),
            (550, "5.7.1")
        );
        assert_eq!(
            reply(unprocessable, "unverified_sending_domain"),
            (550, "5.7.1")
        );
        // Limits pass: temporary, so the client keeps the message and retries.
        assert_eq!(reply(limited, "rate_limited"), (451, "4.7.1"));
        assert_eq!(reply(limited, "quota_exceeded"), (452, "4.7.1"));
        assert_eq!(
            reply(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            (451, "4.3.0")
        );
        assert_eq!(reply(StatusCode::BAD_REQUEST, "invalid"), (554, "5.6.0"));
    }
}
