//! Watches the queue depth and tells the pipeline how much of its rate to keep.
//!
//! Depth comes from a count-only range request every `THROTTLE_CHECK_INTERVAL`: etcd counts
//! the keys without sending them, so the check stays cheap however deep the queue is.

use std::sync::Arc;

use telemetry::queue::Publisher;
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

pub async fn run(
    cfg: Config,
    publisher: Arc<Publisher>,
    tx: watch::Sender<f64>,
    stop: CancellationToken,
) {
    metrics::gauge!("throttle_rate").set(1.0);
    let mut tick = tokio::time::interval(cfg.throttle_check_interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let depth = match publisher.depth().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the queue depth");
                continue;
            }
        };
        metrics::gauge!("queue_depth").set(depth as f64);
        let f = factor(&cfg, depth);
        if *tx.borrow() != f {
            if f < 1.0 {
                tracing::info!(depth, keep = f, "queue is deep; throttling");
            } else {
                tracing::info!(depth, "queue drained; full rate again");
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
