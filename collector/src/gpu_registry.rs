//! Keeps the GPU registry fresh for the gateway.
//!
//! Entries are written before the records that mention them are committed, so that every GPU
//! with stored data is listed. A GPU that stops reporting drops out once retention has deleted
//! its data (the storage maintainer deletes its entry then, `storage::retention`). `last_seen`
//! is the newest reading this collector has stored for the GPU, and never goes back. Writes are rationed, since every record names its
//! GPU:
//! - live data (readings from the last [`REFRESH`]): an entry is rewritten at most once per
//!   [`REFRESH`] of the wall clock, so `last_seen` trails by at most that;
//! - historical data (a file replayed in a burst, where an hour of readings arrives in a
//!   second): also whenever the readings advance by [`REFRESH`], and once more by
//!   [`Registry::flush_historical`] a few seconds after the burst, so that `last_seen` ends
//!   exactly at the newest reading.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, Txn, TxnOp};
use telemetry::entries::GpuInfo;
use telemetry::etcd::{Context, EtcdError};
use telemetry::keys::Keys;
use telemetry::proto::TelemetryRecord;
use telemetry::record::now_nanos;
use tokio::time::Instant;

use crate::identity;

/// How stale an entry may get, in wall-clock time and in reading time.
pub const REFRESH: Duration = Duration::from_secs(60);

/// What this collector knows of one GPU: its identity, what it last wrote, and the newest
/// reading it has not written.
struct Entry {
    /// The UUID of the registry entry: the first one reported (see `identity`).
    uuid: String,
    /// Other UUIDs reported for this host and index, already kept as aliases.
    aliases: HashSet<String>,
    written_at: Option<Instant>,
    written_ts: i64,
    newest: Option<TelemetryRecord>,
}

pub struct GpuRegistry {
    client: Client,
    keys: Keys,
    /// By hostname, then GPU index.
    entries: Mutex<HashMap<String, HashMap<String, Entry>>>,
    /// One write at a time, so that a write of an older reading can never land after a
    /// newer one (partition workers refresh concurrently).
    writing: tokio::sync::Mutex<()>,
}

impl GpuRegistry {
    pub fn new(client: Client, keys: Keys) -> Self {
        Self {
            client,
            keys,
            entries: Mutex::new(HashMap::new()),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Writes the entries of GPUs in `records` that are due (see the module's doc).
    pub async fn refresh(&self, records: &[TelemetryRecord]) -> Result<(), EtcdError> {
        self.learn_identities(records).await?;
        let now = Instant::now();
        let refresh_ns = REFRESH.as_nanos() as i64;
        // Borrowed keys: this runs for every record, and almost every GPU is fresh.
        let mut due: HashMap<(&str, &str), &TelemetryRecord> = HashMap::new();
        {
            let mut entries = self.entries.lock().unwrap();
            for r in records {
                let id = (r.hostname.as_str(), r.gpu_id.as_str());
                let entry = entries.get_mut(id.0).and_then(|gpus| gpus.get_mut(id.1));
                let is_due = entry.as_ref().is_none_or(|e| {
                    e.written_at
                        .is_none_or(|t| now.duration_since(t) >= REFRESH)
                        || r.timestamp_unix_nano.saturating_sub(e.written_ts) >= refresh_ns
                });
                if is_due {
                    let newer = due
                        .get(&id)
                        .is_none_or(|d| d.timestamp_unix_nano < r.timestamp_unix_nano);
                    if newer {
                        due.insert(id, r);
                    }
                } else if let Some(e) = entry {
                    let newest = e
                        .newest
                        .as_ref()
                        .map_or(e.written_ts, |n| n.timestamp_unix_nano);
                    if r.timestamp_unix_nano > newest {
                        e.newest = Some(r.clone());
                    }
                }
            }
        }
        let due: Vec<&TelemetryRecord> = due.into_values().collect();
        self.write(&due, now).await
    }

    /// Judges the identity of every (host, index, UUID) this collector has not seen yet, and
    /// keeps a conflicting one as an alias entry (see `identity`).
    async fn learn_identities(&self, records: &[TelemetryRecord]) -> Result<(), EtcdError> {
        let unknown: Vec<&TelemetryRecord> = {
            let entries = self.entries.lock().unwrap();
            let mut seen = HashSet::new();
            records
                .iter()
                .filter(|r| {
                    let known = entries.get(&r.hostname).and_then(|g| g.get(&r.gpu_id));
                    known.is_none_or(|e| {
                        !r.uuid.is_empty() && r.uuid != e.uuid && !e.aliases.contains(&r.uuid)
                    })
                })
                .filter(|r| seen.insert((&r.hostname, &r.gpu_id, &r.uuid)))
                .collect()
        };
        if unknown.is_empty() {
            return Ok(());
        }
        let reports: Vec<identity::Report> = unknown
            .iter()
            .map(|r| (r.hostname.as_str(), r.gpu_id.as_str(), r.uuid.as_str()))
            .collect();
        let verdicts = identity::check(&self.client, &self.keys, &reports).await?;
        for (r, verdict) in unknown.into_iter().zip(verdicts) {
            if verdict.conflict {
                let alias = serde_json::to_vec(&GpuInfo::of(r)).unwrap_or_default();
                self.client
                    .kv_client()
                    .put(
                        self.keys.gpu_alias(&r.hostname, &r.gpu_id, &r.uuid),
                        alias,
                        None,
                    )
                    .await
                    .ctx("keep a GPU alias")?;
            }
            let mut entries = self.entries.lock().unwrap();
            let e = entries
                .entry(r.hostname.clone())
                .or_default()
                .entry(r.gpu_id.clone())
                .or_insert_with(|| Entry {
                    uuid: verdict.canonical_uuid.clone(),
                    aliases: HashSet::new(),
                    written_at: None,
                    written_ts: i64::MIN,
                    newest: None,
                });
            if e.uuid.is_empty() {
                e.uuid = verdict.canonical_uuid;
            }
            if verdict.conflict && r.uuid != e.uuid {
                e.aliases.insert(r.uuid.clone());
            }
        }
        Ok(())
    }

    /// Writes the newest unwritten reading of every GPU whose readings are historical (older
    /// than [`REFRESH`]), so that a replayed file ends with `last_seen` at its last reading.
    /// Live readings are left to the wall-clock refresh.
    pub async fn flush_historical(&self) -> Result<(), EtcdError> {
        let live_since = now_nanos() - REFRESH.as_nanos() as i64;
        let pending: Vec<TelemetryRecord> = {
            let entries = self.entries.lock().unwrap();
            entries
                .values()
                .flat_map(|gpus| gpus.values())
                .filter_map(|e| e.newest.clone())
                .filter(|r| r.timestamp_unix_nano < live_since)
                .collect()
        };
        let pending: Vec<&TelemetryRecord> = pending.iter().collect();
        self.write(&pending, Instant::now()).await
    }

    async fn write(&self, records: &[&TelemetryRecord], now: Instant) -> Result<(), EtcdError> {
        if records.is_empty() {
            return Ok(());
        }
        let _one_at_a_time = self.writing.lock().await;
        // Never back in time: a wall-clock refresh may carry an older reading than the last
        // one written (records of one GPU arrive in several messages, in any order).
        let infos: Vec<GpuInfo> = {
            let entries = self.entries.lock().unwrap();
            records
                .iter()
                .map(|r| {
                    let known = entries.get(&r.hostname).and_then(|g| g.get(&r.gpu_id));
                    let written = known.map_or(i64::MIN, |e| e.written_ts);
                    let mut info = GpuInfo::of(r);
                    if written > r.timestamp_unix_nano {
                        info.last_seen = telemetry::record::format_timestamp(written);
                    }
                    // The entry keeps its first UUID; other UUIDs are aliases.
                    if let Some(e) = known.filter(|e| !e.uuid.is_empty()) {
                        info.uuid = e.uuid.clone();
                    }
                    info
                })
                .collect()
        };
        let ops: Vec<TxnOp> = infos
            .iter()
            .map(|info| {
                TxnOp::put(
                    self.keys.gpu(&info.hostname, &info.gpu_id),
                    serde_json::to_vec(info).unwrap_or_default(),
                    None,
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
        let mut entries = self.entries.lock().unwrap();
        for r in records {
            let e = entries
                .entry(r.hostname.clone())
                .or_default()
                .entry(r.gpu_id.clone())
                .or_insert_with(|| Entry {
                    uuid: r.uuid.clone(),
                    aliases: HashSet::new(),
                    written_at: None,
                    written_ts: i64::MIN,
                    newest: None,
                });
            e.written_at = Some(now);
            e.written_ts = e.written_ts.max(r.timestamp_unix_nano);
            if e.newest
                .as_ref()
                .is_some_and(|n| n.timestamp_unix_nano <= e.written_ts)
            {
                e.newest = None;
            }
        }
        Ok(())
    }
}
