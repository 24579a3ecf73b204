//! The gateway's single etcd watch on stored telemetry.
//!
//! It feeds the WebSocket hub (every newly stored record) and the query cache (every put and
//! delete, so cached pages go stale exactly when their GPU changes). One watch per gateway,
//! never one per client. When etcd cancels it for compaction, what changed since the last
//! revision seen is re-read and the watch resumes from the read's revision + 1, so no record
//! is missed; the query cache is emptied, since a re-read cannot show deletions.

use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use telemetry::backoff::Backoff;
use telemetry::keys::{prefix_end, Keys};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::query_cache::QueryCache;

/// Watches stored telemetry until `stop` fires.
pub async fn follow(
    hub: Hub,
    cache: QueryCache,
    client: Client,
    keys: Keys,
    stop: CancellationToken,
) {
    let root = keys.data_root();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut next_rev = 0i64;
    while !stop.is_cancelled() {
        if next_rev == 0 {
            // Only the header's revision is wanted: a point read of one key, not a count of
            // the whole data prefix (which costs etcd a walk over every stored record).
            match client.kv_client().get(root.as_str(), None).await {
                Ok(r) => next_rev = r.header().map_or(0, |h| h.revision()) + 1,
                Err(_) => {
                    telemetry::shutdown::or_cancel(&stop, tokio::time::sleep(backoff.next_delay()))
                        .await;
                    continue;
                }
            }
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(next_rev);
        let Ok(mut stream) = client.clone().watch(root.as_str(), Some(opts)).await else {
            telemetry::shutdown::or_cancel(&stop, tokio::time::sleep(backoff.next_delay())).await;
            continue;
        };
        backoff.reset();
        // The watch starts at next_rev, right after the last event handled: nothing is missed.
        cache.watch_live();
        loop {
            let Some(msg) = telemetry::shutdown::or_cancel(&stop, stream.message()).await else {
                return;
            };
            match msg {
                Ok(Some(resp)) if resp.canceled() => {
                    if resp.compact_revision() > 0 {
                        tracing::info!(
                            compact_revision = resp.compact_revision(),
                            "live watch compacted; re-reading"
                        );
                        cache.watch_lost(true);
                        match replay(&client, &root, next_rev, |rev, v| hub.publish(rev, v)).await {
                            Ok(read_rev) => next_rev = read_rev + 1,
                            Err(e) => tracing::warn!(error = %e, "re-read after compaction failed"),
                        }
                    }
                    break;
                }
                Ok(Some(resp)) => {
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let rev = kv.mod_revision();
                        if let Some(gpu) = kv.key_str().ok().and_then(|k| keys.data_gpu_of(k)) {
                            cache.saw_write(gpu, rev);
                        }
                        if ev.event_type() == EventType::Put {
                            hub.publish(rev, kv.value());
                        }
                        next_rev = next_rev.max(rev + 1);
                    }
                }
                _ => break,
            }
        }
        cache.watch_lost(false);
    }
}

/// Sends everything under `root` modified at or after `since`, in revision order, and returns
/// the revision the read saw.
pub(crate) async fn replay(
    client: &Client,
    root: &str,
    since: i64,
    mut send: impl FnMut(i64, &[u8]),
) -> Result<i64, etcd_client::Error> {
    let end = prefix_end(root);
    let mut from = root.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut opts = GetOptions::new()
            .with_range(end.clone())
            .with_min_mod_revision(since)
            .with_limit(1000);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = client.kv_client().get(from.clone(), Some(opts)).await?;
        revision = resp.header().map_or(revision, |h| h.revision());
        let mut kvs: Vec<_> = resp.kvs().to_vec();
        kvs.sort_by_key(|kv| kv.mod_revision());
        for kv in &kvs {
            send(kv.mod_revision(), kv.value());
        }
        match (resp.more(), resp.kvs().iter().map(|kv| kv.key()).max()) {
            (true, Some(last)) => {
                from = last.to_vec();
                from.push(0);
            }
            _ => return Ok(revision),
        }
    }
}
