//! Ctrl-C and SIGTERM both lead to the same graceful shutdown: a cancelled token.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A token that is cancelled on SIGINT or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutdown requested; draining work in flight");
        t.cancel();
    });
    token
}

/// Waits for tracked tasks to finish, at most `grace`. Returns false if the grace ran out.
pub async fn drain(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    let ok = tokio::time::timeout(grace, tracker.wait()).await.is_ok();
    if !ok {
        tracing::warn!(
            ?grace,
            "grace period ran out; exiting with work still in flight"
        );
    }
    ok
}

/// Runs `fut` until it completes or `cancel` fires.
pub async fn or_cancel<F: Future>(cancel: &CancellationToken, fut: F) -> Option<F::Output> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        out = fut => Some(out),
    }
}
