//! Keeps the GPU registry fresh for the gateway.
//!
//! Entries are written before the records that mention them are committed, so that every GPU
//! with stored data is listed. Each collector rewrites an entry at most once a minute
//! (`last_seen` is therefore at most a minute stale), under the current retention lease, so a
//! GPU that stops reporting drops out with its data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use telemetry::buckets::BucketLeases;
use telemetry::etcd::{Context, EtcdError};
use telemetry::keys::Keys;
use telemetry::proto::TelemetryRecord;
use telemetry::registry::GpuInfo;
use tokio::time::Instant;

const REFRESH: Duration = Duration::from_secs(60);

pub struct Registry {
    client: Client,
    keys: Keys,
    leases: Arc<BucketLeases>,
    /// When this collector last wrote each GPU's entry, by hostname then GPU index.
    written: Mutex<HashMap<String, HashMap<String, Instant>>>,
}

impl Registry {
    pub fn new(client: Client, keys: Keys, leases: Arc<BucketLeases>) -> Self {
        Self {
            client,
            keys,
            leases,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Writes the entries of GPUs in `records` that this collector has not written lately.
    pub async fn refresh(&self, records: &[TelemetryRecord]) -> Result<(), EtcdError> {
        let now = Instant::now();
        // Borrowed keys: this runs for every record, and almost every GPU is fresh.
        let mut due: HashMap<(&str, &str), &TelemetryRecord> = HashMap::new();
        {
            let written = self.written.lock().unwrap();
            for r in records {
                let id = (r.hostname.as_str(), r.gpu_id.as_str());
                let stale = written
                    .get(id.0)
                    .and_then(|gpus| gpus.get(id.1))
                    .is_none_or(|t| now.duration_since(*t) >= REFRESH);
                let newer = due
                    .get(&id)
                    .is_none_or(|d| d.timestamp_unix_nano < r.timestamp_unix_nano);
                if stale && newer {
                    due.insert(id, r);
                }
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        let lease = self.leases.current().await?;
        let ops: Vec<TxnOp> = due
            .values()
            .map(|r| {
                let json = serde_json::to_vec(&GpuInfo::of(r)).unwrap_or_default();
                TxnOp::put(
                    self.keys.gpu(&r.hostname, &r.gpu_id),
                    json,
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        for chunk in ops.chunks(100) {
            self.client
                .kv_client()
                .txn(Txn::new().and_then(chunk.to_vec()))
                .await
                .ctx("refresh GPU registry")?;
        }
        let mut written = self.written.lock().unwrap();
        for (host, gpu) in due.into_keys() {
            written
                .entry(host.to_string())
                .or_default()
                .insert(gpu.to_string(), now);
        }
        Ok(())
    }
}
