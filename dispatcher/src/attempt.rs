//! One delivery attempt, steps 3–5 of the dispatcher's recipe:
//!
//! 3. **Routing** ([`Dispatcher::route`]): MX lookup, the recipient's provider, the IP
//!    pool, TLS policy.
//! 4. **Shaping** ([`Dispatcher::shape`]): a source IP of the pool that is not paused and
//!    has warm-up quota, by weight, and a token from its (IP or pool, provider) bucket.
//! 5. **SMTP** ([`Dispatcher::attempt`]): MX hosts by preference over a pooled or new
//!    session from that IP (`sendmill-smtp`), the journal written the moment the data is
//!    out; each SMTP error becomes a temporary or permanent [`Outcome`].
//!
//! Each step either hands the next what it needs or ends the attempt with an outcome
//! (a domain that does not exist, every IP paused…).

use crate::config::PoolConfig;
use crate::mta_sts::{self, Mode, Policy};
use crate::{
    mx, outcome,
    outcome::{Delivered, Failure, FailureReason, Outcome},
    pools::Source,
    provider::Provider,
    shaping, Dispatcher, Routed,
};
use sendmill_platform::kafka::HandlerError;
use sendmill_smtp::{Authentication, Endpoint, Session, SmtpError, TlsMode};
use sendmill_tenancy::pauses::Target;
use sendmill_wire::{BounceCategory, ReadyV1, SmtpReply};
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
};

/// Where a message goes: the result of routing.
pub(crate) struct Route<'a> {
    hosts: Vec<mx::MxHost>,
    /// Every address of every MX host, for the connection cap's eviction.
    addrs: Vec<SocketAddr>,
    provider: Provider,
    pool: &'a PoolConfig,
    tls: TlsMode,
    /// The recipient domain's MTA-STS policy (`enforce` or `testing`), if it has one.
    sts: Option<std::sync::Arc<Policy>>,
    domain: String,
    /// The provider's shaping: open connections per source IP (0: no cap) and messages
    /// per connection (0: no limit).
    max_connections: usize,
    per_connection: u32,
}

impl Route<'_> {
    fn shaping(&self, ip: std::net::IpAddr) -> shaping::Route<'_> {
        shaping::Route {
            pool: &self.pool.name,
            ip,
            provider: &self.provider.name,
        }
    }
}

/// Why an attempt over one MX host failed.
enum HostError {
    Smtp(SmtpError),
    /// The source IP or its pool was paused before a new connection was opened.
    SourcePaused(String),
}

impl HostError {
    fn try_next_host(&self) -> bool {
        match self {
            HostError::Smtp(error) => error.try_next_host(),
            HostError::SourcePaused(_) => false,
        }
    }
}

impl Dispatcher {
    /// Step 3: the route to the recipient's MX hosts, or the outcome that ends the
    /// attempt (an invalid envelope, a domain without mail, DNS failing).
    pub(crate) async fn route(
        &self,
        ready: &ReadyV1,
        routed: &mut Routed,
    ) -> Result<Route<'_>, Outcome> {
        if !envelope_ok(&ready.envelope_from) || !envelope_ok(&ready.recipient) {
            let reason = FailureReason::Protocol("invalid envelope address".into());
            return Err(Outcome::Permanent(Failure::new(
                reason,
                BounceCategory::BadMailbox,
            )));
        }
        let domain = ready.recipient_domain();
        let hosts = self.resolver.route(&domain).await.map_err(route_failure)?;
        let sts = self
            .mta_sts
            .policy(&domain)
            .await
            .filter(|p| p.mode != Mode::None);
        let hosts = mta_sts::allowed_hosts(sts.as_deref(), hosts);
        if hosts.is_empty() {
            // RFC 8461 §5.1: no MX host the policy names, no delivery (a temporary
            // failure: the policy or the MX records may change).
            metrics::counter!(crate::metric::TLS_RPT_SESSIONS_TOTAL, "domain" => self.mta_sts.label(&domain), "result" => "validation-failure", "mode" => "enforce").increment(1);
            return Err(Outcome::Temporary(Failure::new(
                FailureReason::Tls(format!(
                    "the MTA-STS policy of {domain} (enforce) names none of its MX hosts"
                )),
                BounceCategory::TlsRequired,
            )));
        }
        let provider = self.providers.classify(&domain, &hosts);
        let pool = self.pools.choose(
            ready.account_id,
            ready.lane,
            ready.context.ip_pool.as_deref(),
        );
        routed.provider = Some(provider.name.clone());
        routed.pool = Some(pool.name.clone());
        let (max_connections, per_connection) = self
            .shaper
            .rule(&provider.name)
            .map_or((0, 0), |r| (r.max_connections, r.messages_per_connection));
        let tls = if provider.require_tls {
            TlsMode::Required
        } else {
            TlsMode::Opportunistic
        };
        let addrs = hosts
            .iter()
            .flat_map(|h| h.addrs.iter())
            .map(|&a| SocketAddr::new(a, self.config.smtp_port))
            .collect();
        Ok(Route {
            hosts,
            addrs,
            provider,
            pool,
            tls,
            sts,
            domain,
            max_connections,
            per_connection,
        })
    }

    /// Step 4: a source IP that is not paused and has quota, and a token for it; or the
    /// temporary outcome when the account, the pool or every IP is paused or capped.
    pub(crate) async fn shape(
        &self,
        ready: &ReadyV1,
        route: &Route<'_>,
    ) -> Result<Result<Source, Outcome>, HandlerError> {
        let (pool, provider) = (route.pool, &route.provider.name);
        loop {
            let paused = self.pause_watch.snapshot(&self.shutdown).await?;
            let no_source = |reason: String| {
                metrics::counter!(crate::metric::DISPATCH_NO_SOURCE_TOTAL).increment(1);
                let failure =
                    Failure::new(FailureReason::NoSource(reason), BounceCategory::Routing);
                Ok(Err(Outcome::Temporary(failure)))
            };
            if paused.contains(&Target::Account(ready.account_id).member()) {
                return no_source(format!("sending of account {} is paused", ready.account_id));
            }
            let pool_paused = paused.contains(&Target::Pool(pool.name.clone()).member());
            let picked = (!pool_paused)
                .then(|| {
                    self.pools.pick(pool, |ip| {
                        paused.contains(&Target::Ip(ip).member())
                            || self.shaper.is_exhausted(ip, provider)
                    })
                })
                .flatten();
            let Some(source) = picked else {
                let every_ip_paused = pool
                    .ips
                    .iter()
                    .all(|ip| paused.contains(&Target::Ip(ip.ip).member()));
                return no_source(if pool_paused || every_ip_paused {
                    format!("every IP of pool {} is paused", pool.name)
                } else {
                    format!(
                        "every IP of pool {} reached its warm-up cap for {provider} today",
                        pool.name
                    )
                });
            };
            match self.shaper.acquire(&route.shaping(source.ip)).await? {
                shaping::Token::Granted => return Ok(Ok(source)),
                shaping::Token::WarmupExhausted => self.shaper.exhaust(source.ip, provider),
            }
        }
    }

    /// Step 5: the message over SMTP from `source`, MX hosts by preference, until one
    /// judges it or none is left.
    pub(crate) async fn attempt(
        &self,
        ready: &ReadyV1,
        route: &Route<'_>,
        source: &Source,
        routed: &mut Routed,
    ) -> Result<Outcome, HandlerError> {
        let shaping = route.shaping(source.ip);
        let source_ip = (!source.ip.is_unspecified()).then(|| source.ip.to_string());
        let bind = (!source.ip.is_unspecified()).then_some(source.ip);
        if ready.lane == sendmill_wire::Lane::Bulk {
            routed.bulk_sending = Some(
                self.bulk_sending
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed"),
            );
        }
        routed.sending = Some(
            self.sending
                .clone()
                .acquire_owned()
                .await
                .expect("never closed"),
        );
        let mut last: Option<(String, HostError)> = None;
        for host in &route.hosts {
            for &addr in &host.addrs {
                let endpoint = Endpoint {
                    source: bind,
                    addr: SocketAddr::new(addr, self.config.smtp_port),
                    host_name: &host.name,
                    helo: &source.helo,
                    tls: route.tls,
                    authentication: match (route.sts.as_deref().map(|p| p.mode), &self.verifier) {
                        (Some(Mode::Enforce), Some(v)) => Authentication::Require(v),
                        (Some(Mode::Testing), Some(v)) => Authentication::Report(v),
                        _ => Authentication::None,
                    },
                };
                let started = std::time::Instant::now();
                let result = self.send_via(ready, &endpoint, route, &shaping).await?;
                metrics::histogram!(crate::metric::SMTP_SEND_SECONDS, "provider" => route.provider.name.clone())
                    .record(started.elapsed().as_secs_f64());
                let error = match result {
                    Ok(reply) => {
                        return Ok(Outcome::Delivered(Delivered {
                            mx_host: host.name.clone(),
                            source_ip,
                            reply,
                        }))
                    }
                    Err(error) => error,
                };
                if let HostError::Smtp(SmtpError::Rejected { reply, .. }) = &error {
                    let verdict = outcome::classify(&self.config.classify, &reply.clone().into());
                    if verdict.category == BounceCategory::RateLimited {
                        self.shaper.rate_limited(&shaping).await?;
                    }
                }
                if !error.try_next_host() {
                    return Ok(self.failure(Some(host.name.clone()), source_ip, error, routed));
                }
                last = Some((host.name.clone(), error));
            }
        }
        Ok(match last {
            Some((host, error)) => self.failure(Some(host), source_ip, error, routed),
            None => Outcome::Temporary(Failure::new(
                FailureReason::Connect("no MX host has an address".into()),
                BounceCategory::Routing,
            )),
        })
    }

    /// One message over a pooled or new session to `endpoint`. A pooled session that
    /// turns out dead before the data went out is replaced by a new one, once.
    async fn send_via(
        &self,
        ready: &ReadyV1,
        endpoint: &Endpoint<'_>,
        route: &Route<'_>,
        shaping: &shaping::Route<'_>,
    ) -> Result<Result<SmtpReply, HostError>, HandlerError> {
        let data_sent = AtomicBool::new(false);
        let pooled = self
            .connections
            .take_idle(endpoint.source, endpoint.addr)
            .and_then(|session| {
                // Authenticated TLS required: only a session verified for this MX host.
                let acceptable = !matches!(endpoint.authentication, Authentication::Require(_))
                    || session.authenticated_as.as_deref() == Some(endpoint.host_name);
                if acceptable {
                    return Some(session);
                }
                self.connections.put_back(
                    endpoint.source,
                    endpoint.addr,
                    session,
                    route.per_connection,
                );
                None
            });
        if let Some(session) = pooled {
            let result = self
                .send_on(session, endpoint, ready, route.per_connection, &data_sent)
                .await;
            let stale = result.as_ref().is_err_and(SmtpError::broke_session);
            if !stale || data_sent.load(Ordering::Relaxed) {
                return Ok(result.map(Into::into).map_err(HostError::Smtp));
            }
        }
        // A new connection: the pause flags are read now, not from the cache.
        let targets = [
            Target::Ip(shaping.ip),
            Target::Pool(shaping.pool.to_owned()),
        ];
        if self
            .pause_watch
            .any_paused_now(&targets, &self.shutdown)
            .await?
        {
            return Ok(Err(HostError::SourcePaused(format!(
                "source {} (pool {}) was paused",
                shaping.ip, shaping.pool
            ))));
        }
        let opened = async {
            let slot = self
                .connections
                .slot(
                    endpoint.source,
                    shaping.provider,
                    route.max_connections,
                    &route.addrs,
                )
                .await?;
            Session::open(endpoint, self.connections.timeouts(), slot).await
        };
        let opened = opened.await;
        if let Some(policy) = &route.sts {
            tls_report(&self.mta_sts.label(&route.domain), policy.mode, &opened);
        }
        let session = match opened {
            Ok(session) => session,
            Err(error) => return Ok(Err(HostError::Smtp(error))),
        };
        metrics::counter!(crate::metric::SMTP_CONNECTIONS_TOTAL, "provider" => shaping.provider.to_owned(), "tls" => if session.tls { "yes" } else { "no" }).increment(1);
        let result = self
            .send_on(session, endpoint, ready, route.per_connection, &data_sent)
            .await;
        Ok(result.map(Into::into).map_err(HostError::Smtp))
    }

    /// One transaction on `session`, journaling the message the moment its data is out;
    /// the session goes back to the pool (or is closed) after.
    async fn send_on(
        &self,
        mut session: Session,
        endpoint: &Endpoint<'_>,
        ready: &ReadyV1,
        per_connection: u32,
        data_sent: &AtomicBool,
    ) -> Result<sendmill_smtp::Reply, SmtpError> {
        let journal_entry = || {
            data_sent.store(true, Ordering::Relaxed);
            if let Err(error) = self.journal.record(ready.message_id) {
                metrics::counter!(crate::metric::DISPATCH_JOURNAL_ERRORS_TOTAL).increment(1);
                tracing::error!(message_id = %ready.message_id, %error, "dedupe journal write failed");
            }
        };
        let result = session
            .send(
                &ready.envelope_from,
                &ready.recipient,
                &ready.message,
                self.connections.timeouts(),
                journal_entry,
            )
            .await;
        self.connections
            .put_back(endpoint.source, endpoint.addr, session, per_connection);
        result
    }

    /// What a failed attempt comes to: the reply classified by the rule table (which
    /// may also ask for a suppression), or the session error's fixed verdict.
    fn failure(
        &self,
        mx_host: Option<String>,
        source_ip: Option<String>,
        error: HostError,
        routed: &mut Routed,
    ) -> Outcome {
        let error = match error {
            HostError::Smtp(error) => error,
            HostError::SourcePaused(e) => {
                let mut failure = Failure::new(FailureReason::NoSource(e), BounceCategory::Routing);
                failure.mx_host = mx_host;
                failure.source_ip = source_ip;
                return Outcome::Temporary(failure);
            }
        };
        let (reason, reply, permanent, category) = match error {
            SmtpError::Rejected { reply, step } => {
                let reply: SmtpReply = reply.into();
                let verdict = outcome::classify(&self.config.classify, &reply);
                routed.suppress = verdict.suppress;
                let reason = FailureReason::Rejected {
                    step,
                    code: reply.code,
                    text: reply.text.clone(),
                };
                (reason, Some(reply), verdict.permanent, verdict.category)
            }
            SmtpError::Timeout(step) => (
                FailureReason::Timeout(step),
                None,
                false,
                BounceCategory::Routing,
            ),
            SmtpError::Connect { .. } => (
                FailureReason::Connect(error.to_string()),
                None,
                false,
                BounceCategory::Routing,
            ),
            SmtpError::TlsUnavailable(e) => (
                FailureReason::Tls(e),
                None,
                false,
                BounceCategory::TlsRequired,
            ),
            SmtpError::Authentication(e) => (
                FailureReason::Tls(format!(
                    "the recipient domain's MTA-STS policy (enforce) requires authenticated \
                     TLS: {e}"
                )),
                None,
                false,
                BounceCategory::TlsRequired,
            ),
            SmtpError::Unsupported(e) => (
                FailureReason::Protocol(e),
                None,
                true,
                BounceCategory::Protocol,
            ),
            SmtpError::Session(e) => (
                FailureReason::Protocol(e),
                None,
                false,
                BounceCategory::Protocol,
            ),
        };
        let failure = Failure {
            reason,
            mx_host,
            source_ip,
            reply,
            category,
        };
        if permanent {
            Outcome::Permanent(failure)
        } else {
            Outcome::Temporary(failure)
        }
    }
}

fn route_failure(error: mx::RouteError) -> Outcome {
    match error {
        mx::RouteError::NoSuchDomain => Outcome::Permanent(Failure::new(
            FailureReason::NoSuchDomain,
            BounceCategory::BadDomain,
        )),
        mx::RouteError::NullMx => Outcome::Permanent(Failure::new(
            FailureReason::NullMx,
            BounceCategory::BadDomain,
        )),
        mx::RouteError::Temporary(e) => {
            Outcome::Temporary(Failure::new(FailureReason::Dns(e), BounceCategory::Routing))
        }
    }
}

/// An envelope address we can put in `MAIL FROM:<…>` / `RCPT TO:<…>` as it is. Ingest
/// validated it; this guards the protocol against anything that slipped through.
fn envelope_ok(address: &str) -> bool {
    address.contains('@')
        && address.len() <= 254
        && !address
            .bytes()
            .any(|b| b.is_ascii_control() || matches!(b, b'<' | b'>' | b' '))
}

/// Counts a new session to a domain with an MTA-STS policy in RFC 8460 terms.
fn tls_report(domain: &str, mode: Mode, opened: &Result<Session, SmtpError>) {
    let result = match opened {
        Ok(session) => match &session.tls_report {
            Some(Ok(())) => "success",
            Some(Err(failure)) => failure.result_type(),
            None => return,
        },
        Err(SmtpError::Authentication(failure)) => failure.result_type(),
        Err(SmtpError::TlsUnavailable(_)) => "validation-failure",
        Err(_) => return,
    };
    let mode = if mode == Mode::Enforce {
        "enforce"
    } else {
        "testing"
    };
    metrics::counter!(crate::metric::TLS_RPT_SESSIONS_TOTAL, "domain" => domain.to_owned(), "result" => result, "mode" => mode).increment(1);
}
