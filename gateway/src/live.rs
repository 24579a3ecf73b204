//! The gateway's single etcd watch on stored telemetry.
//!
//! It feeds the WebSocket hub (every newly stored record), the latest-value index, and the
//! query cache (every put and delete, so cached pages go stale exactly when their GPU changes). One watch per gateway,
//! never one per client. When etcd cancels it for compaction, what changed since the last
//! revision seen is re-read and the watch resumes from the read's revision + 1, so no record
//! is missed; the query cache is emptied, since a re-read cannot show deletions.

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use telemetry::keys::{prefix_end, Keys};
use telemetry::watch;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::latest::Latest;
use crate::query_cache::QueryCache;

/// Watches stored telemetry until `stop` fires.
pub async fn follow(
    hub: Hub,
    cache: QueryCache,
    latest: Latest,
    client: Client,
    keys: Keys,
    stop: CancellationToken,
) {
    let root = keys.data_root();
    let follower = Live {
        hub,
        cache,
        latest,
        keys,
        root: root.clone(),
    };
    watch::follow(
        client,
        root,
        WatchOptions::new().with_prefix(),
        follower,
        stop,
    )
    .await;
}

struct Live {
    hub: Hub,
    cache: QueryCache,
    latest: Latest,
    keys: Keys,
    root: String,
}

impl watch::Follower for Live {
    async fn resume(
        &mut self,
        client: &Client,
        resume: Option<i64>,
        compacted: bool,
    ) -> Result<Option<i64>, etcd_client::Error> {
        match (resume, compacted) {
            (None, _) => {
                // Only the header's revision is wanted: a point read of one key, not a count
                // of the whole data prefix (which costs etcd a walk over every stored record).
                let r = client.kv_client().get(self.root.as_str(), None).await?;
                Ok(Some(r.header().map_or(0, |h| h.revision()) + 1))
            }
            (Some(since), true) => {
                tracing::info!(since, "live watch compacted; re-reading what it missed");
                self.cache.watch_lost(true);
                let (hub, latest) = (&self.hub, &self.latest);
                let read = replay(client, &self.root, since, |rev, v| {
                    hub.publish(rev, v);
                    if let Some(r) = telemetry::store::decode(v) {
                        latest.observe(&r);
                    }
                })
                .await?;
                Ok(Some(read + 1))
            }
            (Some(rev), false) => Ok(Some(rev)),
        }
    }

    fn handle(&mut self, resp: &etcd_client::WatchResponse) -> watch::Flow {
        if resp.created() {
            // The watch starts right after the last event handled: nothing is missed.
            self.cache.watch_live();
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let rev = kv.mod_revision();
            if let Some(gpu) = kv.key_str().ok().and_then(|k| self.keys.data_gpu_of(k)) {
                self.cache.saw_write(gpu, rev);
            }
            if ev.event_type() == EventType::Put {
                self.hub.publish(rev, kv.value());
                if let Some(r) = telemetry::store::decode(kv.value()) {
                    self.latest.observe(&r);
                }
            }
        }
        watch::Flow::Continue
    }

    fn ended(&mut self) {
        self.cache.watch_lost(false);
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
