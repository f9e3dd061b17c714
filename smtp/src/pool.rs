//! Reusing sessions: idle sessions kept per (source IP, MX address) and reused with an
//! `RSET` first, a cap on open connections per (source IP, provider), and a session
//! closed after its provider's messages-per-connection.

use crate::{
    client::{Session, SmtpError},
    command::{Step, Timeouts},
};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How sessions are opened and kept.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Per-step timeouts of every session.
    pub timeouts: Timeouts,
    /// Idle sessions kept per (source IP, MX address) at most.
    pub max_idle_per_host: usize,
    /// An idle session older than this is closed instead of reused.
    pub idle_timeout: Duration,
}

/// (source IP, MX address).
type HostKey = (Option<IpAddr>, SocketAddr);
/// (source IP, provider).
type ProviderKey = (Option<IpAddr>, String);

/// Idle sessions per (source IP, MX address), and the connection caps per
/// (source IP, provider).
pub struct ConnectionPool {
    settings: PoolSettings,
    idle: Mutex<HashMap<HostKey, Vec<(Session, Instant)>>>,
    caps: Mutex<HashMap<ProviderKey, Arc<Semaphore>>>,
}

impl ConnectionPool {
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            settings,
            idle: Mutex::default(),
            caps: Mutex::default(),
        }
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// The timeouts sessions of this pool use.
    pub fn timeouts(&self) -> &Timeouts {
        &self.settings.timeouts
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
        let wait = self.settings.timeouts.of(Step::ConnectionSlot);
        match tokio::time::timeout(wait, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => Err(SmtpError::Timeout(Step::ConnectionSlot)),
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
        if session.is_broken() {
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
