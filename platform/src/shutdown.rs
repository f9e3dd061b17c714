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
