//! Delivers each message put in a partition to the partition's worker as soon as it lands.
//!
//! Each owned partition has its own watch, started and stopped with its worker. A collector
//! therefore receives only its own partitions' messages: a watch over the whole queue would
//! deliver every message's full value to every collector, so four collectors would make etcd
//! send four times the queue's bytes. Whenever deliveries alone could miss a message, the worker
//! is told to read its partition from etcd instead (`reread`): when a watch starts (anything put
//! before it is only found by a read), and when the worker's channel is full. When etcd cancels
//! the watch (compaction, a leader change, a broken stream) a new one starts, so history is
//! never needed; the worker's periodic rescan covers the time a watch is down.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, KeyValue, WatchOptions};
use telemetry::backoff::Backoff;
use telemetry::shutdown::or_cancel;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Watches `partition`, delivering its new messages to `deliver`, until `stop` fires.
pub async fn run(
    shared: Arc<Shared>,
    partition: u16,
    deliver: mpsc::Sender<KeyValue>,
    reread: Arc<Notify>,
    stop: CancellationToken,
) {
    let prefix = shared.keys.queue_partition(partition);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !stop.is_cancelled() {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_filters([etcd_client::WatchFilterType::NoDelete]);
        let mut client = shared.client.watch_client();
        let watch = client.watch(prefix.as_str(), Some(opts));
        let mut stream = match or_cancel(&stop, watch).await {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                tracing::debug!(partition, error = %e, "partition watch failed to start");
                or_cancel(&stop, tokio::time::sleep(backoff.next_delay())).await;
                continue;
            }
        };
        backoff.reset();
        loop {
            let Some(msg) = or_cancel(&stop, stream.message()).await else {
                return;
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
                    if resp.created() {
                        reread.notify_one();
                    }
                    let puts = resp
                        .events()
                        .iter()
                        .filter(|e| e.event_type() == EventType::Put);
                    for kv in puts.filter_map(|e| e.kv()) {
                        match deliver.try_send(kv.clone()) {
                            Ok(()) => {}
                            // The worker is behind: it reads the partition next, which finds this.
                            Err(TrySendError::Full(_)) => reread.notify_one(),
                            Err(TrySendError::Closed(_)) => return,
                        }
                    }
                }
                _ => break,
            }
        }
    }
}
