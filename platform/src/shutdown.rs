//! One token per process, fired by SIGTERM or ctrl-c. Stages stop taking new work when it
//! fires, finish what is in flight, store its offsets and return.

use tokio_util::sync::CancellationToken;

/// A token that is cancelled on SIGTERM or ctrl-c.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler installs");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        fire.cancel();
    });
    token
}

/// The token in-flight work watches while a stage drains: cancelled `grace` after `stop`
/// is (or at once when `grace` is zero). A stage stops taking new work on `stop`;
/// what it already holds (a record waiting for rate-limit tokens, a produce being
/// retried, an API request waiting for Kafka's acknowledgement) goes on for up to
/// `grace`, and only then gives up and is left for redelivery.
pub fn after_grace(stop: &CancellationToken, grace: std::time::Duration) -> CancellationToken {
    let abort = CancellationToken::new();
    let (stop, fire) = (stop.clone(), abort.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            // Nobody watches any more: the work it would interrupt is gone.
            _ = fire.cancelled() => return,
        }
        tokio::time::sleep(grace).await;
        fire.cancel();
    });
    abort
}
