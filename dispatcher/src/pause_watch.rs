//! The pause flags (ops' and the reputation monitor's pauses of IPs, pools and
//! accounts) as the dispatcher sees them: read from Redis at most every `refresh`
//! (`dispatcher.pause_refresh`) for routing, while a new connection reads them itself
//! (and drops this cache), so a pause stops new connections at once.

use redis::aio::ConnectionManager;
use sendmill_platform::{backoff, CancellationToken};
use sendmill_tenancy::pauses;
use std::{collections::HashSet, sync::Arc, time::Duration};
use tokio::time::Instant;

pub(crate) struct PauseWatch {
    redis: ConnectionManager,
    prefix: String,
    refresh: Duration,
    cached: tokio::sync::Mutex<(Arc<HashSet<String>>, Option<Instant>)>,
}

impl PauseWatch {
    pub(crate) fn new(redis: ConnectionManager, prefix: &str, refresh: Duration) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            refresh,
            cached: tokio::sync::Mutex::new((Arc::default(), None)),
        }
    }

    /// The paused targets' members ([`pauses::Target::member`]), at most `refresh` old.
    pub(crate) async fn snapshot(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Arc<HashSet<String>>, backoff::ShutDown> {
        let mut cached = self.cached.lock().await;
        if cached.1.is_some_and(|at| at.elapsed() < self.refresh) {
            return Ok(cached.0.clone());
        }
        let flags = backoff::until_ok("read pause flags", shutdown, || {
            let mut redis = self.redis.clone();
            async move { pauses::paused(&mut redis, &self.prefix).await }
        })
        .await?;
        *cached = (Arc::new(flags), Some(Instant::now()));
        Ok(cached.0.clone())
    }

    /// Whether any of `targets` is paused now, read from Redis (not the cache); a pause
    /// found drops the cache so routing sees it too.
    pub(crate) async fn any_paused_now(
        &self,
        targets: &[pauses::Target],
        shutdown: &CancellationToken,
    ) -> Result<bool, backoff::ShutDown> {
        let paused = backoff::until_ok("read pause flags", shutdown, || {
            let mut redis = self.redis.clone();
            async move { pauses::any_paused(&mut redis, &self.prefix, targets).await }
        })
        .await?;
        if paused {
            self.cached.lock().await.1 = None;
        }
        Ok(paused)
    }
}
