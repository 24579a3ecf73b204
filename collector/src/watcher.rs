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

use etcd_client::{EventType, KeyValue, WatchOptions};
use telemetry::watch;
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
    let opts = WatchOptions::new()
        .with_prefix()
        .with_filters([etcd_client::WatchFilterType::NoDelete]);
    let follower = Partition { deliver, reread };
    watch::follow(shared.client.clone(), prefix, opts, follower, stop).await;
}

struct Partition {
    deliver: mpsc::Sender<KeyValue>,
    reread: Arc<Notify>,
}

impl watch::Follower for Partition {
    /// Always from now: whatever was put before the watch is found by the worker's read,
    /// which the `created` notice triggers.
    async fn resume(
        &mut self,
        _: &etcd_client::Client,
        _: Option<i64>,
        _: bool,
    ) -> Result<Option<i64>, etcd_client::Error> {
        Ok(None)
    }

    fn handle(&mut self, resp: &etcd_client::WatchResponse) -> watch::Flow {
        if resp.created() {
            self.reread.notify_one();
        }
        let puts = resp
            .events()
            .iter()
            .filter(|e| e.event_type() == EventType::Put);
        for kv in puts.filter_map(|e| e.kv()) {
            match self.deliver.try_send(kv.clone()) {
                Ok(()) => {}
                // The worker is behind: it reads the partition next, which finds this.
                Err(TrySendError::Full(_)) => self.reread.notify_one(),
                Err(TrySendError::Closed(_)) => return watch::Flow::Stop,
            }
        }
        watch::Flow::Continue
    }
}
