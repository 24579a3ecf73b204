//! Wakes partition workers as soon as a message lands in their partition.
//!
//! One watch per collector over the whole queue. When etcd cancels the watch (compaction, a
//! leader change, a broken stream), the watcher wakes every worker, and each re-reads its
//! partition from etcd, so nothing is missed; then it watches again from the current revision.
//! The workers' periodic rescan covers the time a watch is down.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use telemetry::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use crate::Shared;

pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let root = shared.keys.queue_root();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !stop.is_cancelled() {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_filters([etcd_client::WatchFilterType::NoDelete]);
        let mut stream = match shared.client.clone().watch(root.as_str(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "queue watch failed to start");
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(backoff.next_delay()) => {} }
                continue;
            }
        };
        backoff.reset();
        wake_all(&shared);
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = stream.message() => m,
            };
            match msg {
                Ok(Some(resp)) if resp.canceled() => {
                    tracing::info!(
                        compact_revision = resp.compact_revision(),
                        reason = resp.cancel_reason(),
                        "queue watch cancelled; re-reading"
                    );
                    break;
                }
                Ok(Some(resp)) => {
                    for ev in resp.events() {
                        if ev.event_type() != EventType::Put {
                            continue;
                        }
                        let p = ev
                            .kv()
                            .and_then(|kv| shared.keys.partition_of(kv.key_str().ok()?));
                        if let Some(n) = shared.wakeups.get(p.unwrap_or(u16::MAX) as usize) {
                            n.notify_one();
                        }
                    }
                }
                _ => break,
            }
        }
    }
}

fn wake_all(shared: &Shared) {
    for n in shared.wakeups.iter() {
        n.notify_one();
    }
}
