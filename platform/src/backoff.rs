//! Retrying a call to infrastructure (Kafka, Redis, ClickHouse) that must eventually
//! succeed for a message not to be lost. Waits grow from 50 ms to 10 s; every failure is
//! logged and counted, and shutdown ends the wait.

use std::{fmt::Display, future::Future, time::Duration};
use tokio_util::sync::CancellationToken;

/// The call was abandoned because shutdown fired before it succeeded.
#[derive(Debug, thiserror::Error)]
#[error("shut down before {0} succeeded")]
pub struct ShutDown(pub &'static str);

/// Runs `call` until it succeeds or `shutdown` fires.
pub async fn until_ok<T, E, F, Fut>(
    what: &'static str,
    shutdown: &CancellationToken,
    mut call: F,
) -> Result<T, ShutDown>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = Duration::from_millis(50);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                metrics::counter!(crate::metric::INFRA_RETRIES_TOTAL, "call" => what).increment(1);
                tracing::warn!(call = what, error = %error, retry_in_ms = wait.as_millis() as u64, "retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Err(ShutDown(what)),
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_until_success() {
        let calls = AtomicU32::new(0);
        let token = CancellationToken::new();
        let value = until_ok("test", &token, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err("down")
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait() {
        let token = CancellationToken::new();
        token.cancel();
        let result: Result<(), _> = until_ok("test", &token, || async { Err("down") }).await;
        assert!(result.is_err());
    }
}
