//! Watches the queue depth and tells the pipeline how much of its rate to keep.
//!
//! Depth comes from a count-only range request every `THROTTLE_CHECK_INTERVAL`: etcd counts
//! the keys without sending them, so the check stays cheap however deep the queue is.

use std::sync::Arc;
use std::time::Duration;

use telemetry::queue::Publisher;
use telemetry::settings::{catalog, Settings, Snapshot};
use telemetry::storage::Pressure;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Fraction of the configured rate to keep: 1.0 normally, `throttle.rate` while the queue
/// is deeper than `throttle.max_queue_depth` (flags or live settings).
pub fn factor(s: &Snapshot, depth: i64) -> f64 {
    let max_depth = s
        .value(catalog::THROTTLE_MAX_QUEUE_DEPTH)
        .as_i64()
        .unwrap_or(i64::MAX);
    if s.bool(catalog::THROTTLE_ENABLED) && depth > max_depth {
        s.f64(catalog::THROTTLE_RATE)
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
    check_interval: Duration,
    settings: Settings,
    publisher: Arc<Publisher>,
    mut storage: watch::Receiver<Pressure>,
    tx: watch::Sender<f64>,
    stop: CancellationToken,
) {
    metrics::gauge!("throttle_rate").set(1.0);
    let mut live = settings.subscribe();
    let mut tick = tokio::time::interval(check_interval);
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
            // A change of storage pressure or of the settings applies at once.
            Ok(()) = storage.changed() => {}
            Ok(()) = live.changed() => {}
        }
        let pressure = *storage.borrow_and_update();
        let f = factor(&live.borrow_and_update(), depth).min(storage_factor(pressure));
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
    use crate::config::Config;
    use clap::Parser;

    #[test]
    fn engages_only_above_the_depth_and_when_enabled() {
        let cfg = Config::parse_from([
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
        let mut s = Snapshot::at_startup(&cfg.startup_settings());
        assert_eq!(factor(&s, 10), 1.0);
        assert_eq!(factor(&s, 11), 0.25);
        // A live setting replaces the flag.
        s.values.get_mut(catalog::THROTTLE_ENABLED).unwrap().value = false.into();
        assert_eq!(factor(&s, 1_000), 1.0);
    }
}
