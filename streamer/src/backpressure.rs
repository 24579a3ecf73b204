//! Watches the queue depth and tells the pipeline how much of its rate to keep.
//!
//! Depth comes from a count-only range request every `THROTTLE_CHECK_INTERVAL`: etcd counts
//! the keys without sending them, so the check stays cheap however deep the queue is.

use std::sync::Arc;

use telemetry::queue::Publisher;
use telemetry::storage::Pressure;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Fraction of the configured rate to keep: 1.0 normally, `THROTTLE_RATE` while the queue
/// is deeper than `THROTTLE_MAX_QUEUE_DEPTH`.
pub fn factor(cfg: &Config, depth: i64) -> f64 {
    if cfg.throttle_enabled && depth > cfg.throttle_max_queue_depth {
        cfg.throttle_rate
    } else {
        1.0
    }
}

/// Fraction of the rate to keep for etcd's room: storage pressure applies whatever
/// `THROTTLE_ENABLED` says, since the queue shares etcd's quota with the store.
pub fn storage_factor(p: Pressure) -> f64 {
    match p {
        Pressure::Ok => 1.0,
        Pressure::High => 0.25,
        Pressure::Full => 0.0,
    }
}

pub async fn run(
    cfg: Config,
    publisher: Arc<Publisher>,
    mut storage: watch::Receiver<Pressure>,
    tx: watch::Sender<f64>,
    stop: CancellationToken,
) {
    metrics::gauge!("throttle_rate").set(1.0);
    let mut tick = tokio::time::interval(cfg.throttle_check_interval);
    let mut depth = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                match publisher.depth().await {
                    Ok(d) => depth = d,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read the queue depth");
                        continue;
                    }
                }
                metrics::gauge!("queue_depth").set(depth as f64);
            }
            // A change of storage pressure applies at once, not at the next tick.
            Ok(()) = storage.changed() => {}
        }
        let pressure = *storage.borrow_and_update();
        let f = factor(&cfg, depth).min(storage_factor(pressure));
        if *tx.borrow() != f {
            match (f, pressure) {
                (0.0, Pressure::Full) => {
                    tracing::warn!(
                        "etcd is at its storage budget; holding input until there is room"
                    )
                }
                (f, Pressure::High) if f < 1.0 => {
                    tracing::info!(
                        keep = f,
                        "etcd is close to its storage budget; slowing down"
                    )
                }
                (f, _) if f < 1.0 => tracing::info!(depth, keep = f, "queue is deep; throttling"),
                _ => tracing::info!(depth, "full rate again"),
            }
            metrics::gauge!("throttle_rate").set(f);
            let _ = tx.send(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn engages_only_above_the_depth_and_when_enabled() {
        let mut cfg = Config::parse_from([
            "streamer",
            "--csv",
            "x",
            "--throttle-enabled",
            "true",
            "--throttle-max-queue-depth",
            "10",
            "--throttle-rate",
            "0.25",
        ]);
        assert_eq!(factor(&cfg, 10), 1.0);
        assert_eq!(factor(&cfg, 11), 0.25);
        cfg.throttle_enabled = false;
        assert_eq!(factor(&cfg, 1_000), 1.0);
    }
}
