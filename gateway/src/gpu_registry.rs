//! The GPU list, kept in memory and fresh by one etcd watch.
//!
//! Load everything under the registry prefix, then watch from the load's revision + 1. If the
//! watch is cancelled (compaction, a broken stream), load again and watch from the new
//! revision + 1: a re-read never misses a change that a resumed watch would have.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use telemetry::admin::Readiness;
use telemetry::backoff::Backoff;
use telemetry::entries::GpuInfo;
use telemetry::keys::Keys;
use tokio_util::sync::CancellationToken;

/// GPUs keyed by (hostname, gpu_id), in that order, and the aliases a host and index has
/// (other UUIDs it reported, kept by the collectors as identity conflicts).
#[derive(Clone, Default)]
pub struct GpuRegistry {
    gpus: Arc<RwLock<BTreeMap<(String, String), GpuInfo>>>,
    aliases: Arc<RwLock<BTreeMap<(String, String), GpuInfo>>>,
    loaded: Arc<std::sync::atomic::AtomicBool>,
}

impl GpuRegistry {
    pub fn all(&self) -> Vec<GpuInfo> {
        self.gpus.read().unwrap().values().cloned().collect()
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Relaxed)
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

    /// Loads and follows the registry until `stop` fires.
    /// `readiness` is blocked on "registry" until the first load.
    pub async fn follow(
        self,
        client: Client,
        keys: Keys,
        readiness: Readiness,
        stop: CancellationToken,
    ) {
        let root = keys.gpus_root();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !stop.is_cancelled() {
            let loaded = client
                .kv_client()
                .get(root.as_str(), Some(GetOptions::new().with_prefix()))
                .await;
            let resp = match loaded {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load the GPU registry; retrying");
                    telemetry::shutdown::or_cancel(&stop, tokio::time::sleep(backoff.next_delay()))
                        .await;
                    continue;
                }
            };
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            self.gpus.write().unwrap().clear();
            self.aliases.write().unwrap().clear();
            for kv in resp.kvs() {
                self.apply_key(&keys, kv.key_str().unwrap_or_default(), Some(kv.value()));
            }
            self.loaded
                .store(true, std::sync::atomic::Ordering::Relaxed);
            readiness.clear("registry");
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let mut stream = match client.clone().watch(root.as_str(), Some(opts)).await {
                Ok(s) => s,
                Err(_) => continue,
            };
            backoff.reset();
            loop {
                let Some(msg) = telemetry::shutdown::or_cancel(&stop, stream.message()).await
                else {
                    return;
                };
                match msg {
                    Ok(Some(resp)) if !resp.canceled() => {
                        for ev in resp.events() {
                            if let Some(kv) = ev.kv() {
                                let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                                self.apply_key(&keys, kv.key_str().unwrap_or_default(), value);
                            }
                        }
                    }
                    _ => {
                        tracing::info!("registry watch ended; reloading");
                        break;
                    }
                }
            }
        }
    }
}
