//! The GPU list, kept in memory and fresh by one etcd watch.
//!
//! Load everything under the registry prefix, then watch from the load's revision + 1. If the
//! watch is cancelled (compaction, a broken stream), load again and watch from the new
//! revision + 1: a re-read never misses a change that a resumed watch would have.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use telemetry::admin::Readiness;
use telemetry::entries::GpuInfo;
use telemetry::keys::Keys;
use telemetry::watch;
use tokio_util::sync::CancellationToken;

/// GPUs keyed by (hostname, gpu_id), in that order, and the aliases a host and index has
/// (other UUIDs it reported, kept by the collectors as identity conflicts).
#[derive(Clone, Default)]
pub struct GpuRegistry {
    gpus: Arc<RwLock<BTreeMap<(String, String), GpuInfo>>>,
    aliases: Arc<RwLock<BTreeMap<(String, String), GpuInfo>>>,
}

impl GpuRegistry {
    pub fn all(&self) -> Vec<GpuInfo> {
        self.gpus.read().unwrap().values().cloned().collect()
    }

    /// GPUs an id names: a UUID names one GPU; an index names that index on every host
    /// (or on `hostname` only).
    pub fn resolve(&self, id: &str, hostname: Option<&str>) -> Vec<GpuInfo> {
        let gpus = self.gpus.read().unwrap();
        let by_host = |g: &&GpuInfo| hostname.is_none_or(|h| g.hostname == h);
        if id.chars().all(|c| c.is_ascii_digit()) {
            gpus.values()
                .filter(|g| g.gpu_id == id)
                .filter(by_host)
                .cloned()
                .collect()
        } else {
            // A UUID names its registry entry and every host and index that also reported it
            // (an identity conflict): both mappings stay queryable, neither hides the other.
            let aliases = self.aliases.read().unwrap();
            let mut found: Vec<GpuInfo> = gpus
                .values()
                .chain(aliases.values())
                .filter(|g| g.uuid == id)
                .filter(by_host)
                .cloned()
                .collect();
            found.sort_by(|a, b| (&a.hostname, &a.gpu_id).cmp(&(&b.hostname, &b.gpu_id)));
            found.dedup_by(|a, b| a.hostname == b.hostname && a.gpu_id == b.gpu_id);
            found
        }
    }

    fn apply_key(&self, keys: &Keys, key: &str, value: Option<&[u8]>) {
        let Some(rest) = key.strip_prefix(&keys.gpus_root()) else {
            return;
        };
        let Some((host, gpu)) = rest.split_once('/') else {
            return;
        };
        let (map, id) = match gpu.split_once('@') {
            Some((index, uuid)) => (&self.aliases, (host.to_string(), format!("{index}@{uuid}"))),
            None => (&self.gpus, (host.to_string(), gpu.to_string())),
        };
        let mut gpus = map.write().unwrap();
        match value.and_then(|v| serde_json::from_slice::<GpuInfo>(v).ok()) {
            Some(info) => {
                gpus.insert(id, info);
            }
            None => {
                gpus.remove(&id);
            }
        }
    }

    /// Loads and follows the registry until `stop` fires. `readiness` is blocked on
    /// "registry" until the first load.
    pub async fn follow(
        self,
        client: Client,
        keys: Keys,
        readiness: Readiness,
        stop: CancellationToken,
    ) {
        let root = keys.gpus_root();
        let follower = Follower {
            cache: self,
            keys,
            readiness,
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
}

/// Loads everything at the first start and after a compaction (a resumed watch would miss
/// deletions), then applies each event.
struct Follower {
    cache: GpuRegistry,
    keys: Keys,
    readiness: Readiness,
}

impl watch::Follower for Follower {
    async fn resume(
        &mut self,
        client: &Client,
        resume: Option<i64>,
        compacted: bool,
    ) -> Result<Option<i64>, etcd_client::Error> {
        if let (Some(rev), false) = (resume, compacted) {
            return Ok(Some(rev));
        }
        let resp = client
            .kv_client()
            .get(self.keys.gpus_root(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        self.cache.gpus.write().unwrap().clear();
        self.cache.aliases.write().unwrap().clear();
        for kv in resp.kvs() {
            self.cache.apply_key(
                &self.keys,
                kv.key_str().unwrap_or_default(),
                Some(kv.value()),
            );
        }
        self.readiness.clear("registry");
        Ok(Some(revision + 1))
    }

    fn handle(&mut self, resp: &etcd_client::WatchResponse) -> watch::Flow {
        for ev in resp.events() {
            if let Some(kv) = ev.kv() {
                let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                self.cache
                    .apply_key(&self.keys, kv.key_str().unwrap_or_default(), value);
            }
        }
        watch::Flow::Continue
    }
}
