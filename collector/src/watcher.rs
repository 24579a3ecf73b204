//! Wakes a partition worker as soon as a message lands in its partition.
//!
//! Each owned partition has its own watch, started and stopped with its worker. A collector
//! therefore receives only its own partitions' messages: a watch over the whole queue would
//! deliver every message's full value to every collector, so four collectors would make etcd
//! send four times the queue's bytes. When etcd cancels the watch (compaction, a leader change,
//! a broken stream) or a new one starts, the worker is woken and re-reads its partition from
//! etcd, so nothing is missed; the worker's periodic rescan covers the time a watch is down.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use telemetry::backoff::Backoff;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Watches `partition` and rings `wake` until `stop` fires.
pub async fn run(shared: Arc<Shared>, partition: u16, wake: Arc<Notify>, stop: CancellationToken) {
    let prefix = shared.keys.queue_partition(partition);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !stop.is_cancelled() {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_filters([etcd_client::WatchFilterType::NoDelete]);
        let mut client = shared.client.watch_client();
        let watch = client.watch(prefix.as_str(), Some(opts));
        let mut stream = tokio::select! {
            _ = stop.cancelled() => return,
            w = watch => match w {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(partition, error = %e, "partition watch failed to start");
                    telemetry::shutdown::or_cancel(&stop, tokio::time::sleep(backoff.next_delay()))
                        .await;
                    continue;
                }
            },
        };
        backoff.reset();
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = stream.message() => m,
            };
            match msg {
                Ok(Some(resp)) if resp.canceled() => {
                    tracing::info!(
                        partition,
                        compact_revision = resp.compact_revision(),
                        reason = resp.cancel_reason(),
                        "partition watch cancelled; re-reading"
                    );
                    break;
                }
                Ok(Some(resp)) => {
                    // `created`: the watch now sees every later put; anything put before it
                    // is found by the re-read this wake-up causes.
                    if resp.created()
                        || resp
                            .events()
                            .iter()
                            .any(|e| e.event_type() == EventType::Put)
                    {
                        wake.notify_one();
                    }
                }
                _ => break,
            }
        }
    }
}
