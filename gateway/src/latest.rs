//! The latest-value index behind `GET /api/v1/fleet/latest` and `/fleet/summary`: every GPU's
//! newest value of every metric, in memory.
//!
//! Answering "latest" by scanning history would cost a read per GPU per request; 25,000 GPUs
//! must answer in milliseconds. The gateway already watches every stored record (for the
//! WebSocket), so it keeps the index from that watch, and fills it at start-up from each GPU's
//! newest keys: a descending read of its raw tier and of its newest chunk (a GPU whose data is
//! all folded has no raw key). Both feed [`Latest::observe`], which keeps the newer of two
//! values, so the order in which the start-up read and the watch deliver them does not matter.
//! Until the start-up read is done the gateway is not ready.
//!
//! Expiry is not followed: a GPU whose data all expired keeps its last value until the
//! gateway restarts. Folding moves samples, it never changes the newest value.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use etcd_client::{Client, GetOptions, SortOrder, SortTarget};
use futures::StreamExt;
use telemetry::admin::Readiness;
use telemetry::entries::GpuInfo;
use telemetry::keys::Keys;
use telemetry::proto::TelemetryRecord;
use tokio_util::sync::CancellationToken;

use crate::gpu_registry::GpuRegistry;

/// Raw keys read per GPU at start-up: several scrapes of its ten metrics.
const NEWEST_KEYS: i64 = 64;
/// GPUs read at once at start-up.
const CONCURRENT_READS: usize = 32;

/// One GPU's newest value of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// Unix nanoseconds.
    pub at: i64,
    /// The reading.
    pub value: f64,
}

#[derive(Debug, Default)]
struct Gpu {
    uuid: String,
    metrics: HashMap<String, Value>,
}

/// Every GPU's newest values, shared by the watch, the start-up read and the API.
#[derive(Debug, Clone, Default)]
pub struct Latest(Arc<RwLock<BTreeMap<(String, String), Gpu>>>);

impl Latest {
    /// Takes `r` if it is newer than what the index holds for its GPU and metric (a tie on
    /// time keeps the larger value, so the answer does not depend on arrival order).
    pub fn observe(&self, r: &TelemetryRecord) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let gpu = map
            .entry((r.hostname.clone(), r.gpu_id.clone()))
            .or_default();
        if gpu.uuid.is_empty() {
            gpu.uuid = r.uuid.clone();
        }
        let newer = |v: &Value| {
            (r.timestamp_unix_nano, r.value.total_cmp(&v.value)) > (v.at, std::cmp::Ordering::Equal)
        };
        match gpu.metrics.get_mut(&r.metric) {
            Some(v) if newer(v) => {
                *v = Value {
                    at: r.timestamp_unix_nano,
                    value: r.value,
                }
            }
            Some(_) => {}
            None => {
                gpu.metrics.insert(
                    r.metric.clone(),
                    Value {
                        at: r.timestamp_unix_nano,
                        value: r.value,
                    },
                );
            }
        }
    }

    /// Every GPU's newest `metric` (on `hostname` only, when given), by host then GPU:
    /// `(hostname, gpu_id, uuid, value)`.
    pub fn of_metric(
        &self,
        metric: &str,
        hostname: Option<&str>,
    ) -> Vec<(String, String, String, Value)> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|((h, _), _)| hostname.is_none_or(|want| want == h))
            .filter_map(|((h, g), gpu)| {
                let v = gpu.metrics.get(metric)?;
                Some((h.clone(), g.clone(), gpu.uuid.clone(), v.clone()))
            })
            .collect()
    }

    /// Every metric any GPU has reported.
    pub fn metrics(&self) -> Vec<String> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = map
            .values()
            .flat_map(|g| g.metrics.keys().cloned())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Fills `latest` from etcd once the GPU registry has loaded, then marks the gateway ready for
/// it. Retries until it succeeds or `stop` fires.
pub async fn load(
    latest: Latest,
    registry: GpuRegistry,
    (client, keys): (Client, Keys),
    readiness: Readiness,
    stop: CancellationToken,
) {
    // The registry says which GPUs exist; wait for its first load.
    while readiness
        .check()
        .is_err_and(|why| why.contains_key("registry"))
    {
        if telemetry::shutdown::or_cancel(
            &stop,
            tokio::time::sleep(std::time::Duration::from_millis(100)),
        )
        .await
        .is_none()
        {
            return;
        }
    }
    let mut backoff = telemetry::backoff::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    );
    loop {
        let gpus = registry.all();
        let count = gpus.len();
        let reads = futures::stream::iter(gpus.into_iter().map(|g| {
            let (client, keys) = (client.clone(), keys.clone());
            async move { newest(&client, &keys, &g).await }
        }))
        .buffer_unordered(CONCURRENT_READS)
        .collect::<Vec<_>>()
        .await;
        let mut failed = None;
        for r in reads {
            match r {
                Ok(records) => records.iter().for_each(|r| latest.observe(r)),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            None => {
                tracing::info!(gpus = count, "latest-value index loaded");
                readiness.clear("latest");
                return;
            }
            Some(e) => {
                tracing::warn!(error = %e, "cannot load the latest-value index yet");
                let pause = backoff.next_delay();
                if telemetry::shutdown::or_cancel(&stop, tokio::time::sleep(pause))
                    .await
                    .is_none()
                {
                    return;
                }
            }
        }
    }
}

/// One GPU's newest raw records and its newest chunk's records.
async fn newest(
    client: &Client,
    keys: &Keys,
    g: &GpuInfo,
) -> Result<Vec<TelemetryRecord>, etcd_client::Error> {
    let descending = |limit| {
        GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit)
            .with_serializable()
    };
    let mut kv = client.kv_client();
    let raw = kv
        .get(
            keys.data_gpu(&g.hostname, &g.gpu_id),
            Some(descending(NEWEST_KEYS)),
        )
        .await?;
    let mut out: Vec<TelemetryRecord> = raw
        .kvs()
        .iter()
        .filter_map(|kv| telemetry::store::decode(kv.value()))
        .collect();
    let chunk_prefix = keys.chunks_gpu(&g.hostname, &g.gpu_id);
    let chunk = kv.get(chunk_prefix, Some(descending(1))).await?;
    if let Some(kv) = chunk.kvs().first() {
        match telemetry::store::chunk::unfold(kv.value()) {
            Ok(rows) => out.extend(rows),
            Err(e) => {
                tracing::error!(key = %String::from_utf8_lossy(kv.key()), error = %e, "unreadable chunk skipped")
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: i64, metric: &str, v: f64) -> TelemetryRecord {
        TelemetryRecord {
            timestamp_unix_nano: t,
            metric: metric.into(),
            value: v,
            hostname: "h".into(),
            gpu_id: "0".into(),
            uuid: "GPU-1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_newest_value_wins_whatever_the_order() {
        let a = Latest::default();
        let b = Latest::default();
        let rs = [
            rec(2, "t", 50.0),
            rec(1, "t", 70.0),
            rec(2, "t", 40.0),
            rec(3, "p", 1.0),
        ];
        rs.iter().for_each(|r| a.observe(r));
        rs.iter().rev().for_each(|r| b.observe(r));
        for l in [&a, &b] {
            let got = l.of_metric("t", None);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].3, Value { at: 2, value: 50.0 });
            assert_eq!(l.metrics(), ["p", "t"]);
        }
        assert!(a.of_metric("t", Some("other")).is_empty());
    }
}
