//! Storage pressure: how close etcd is to its quota, as every process sees it.
//!
//! etcd refuses every write once its database file reaches the quota (the NOSPACE alarm), and
//! the queue lives in the same database as the stored telemetry. So every process that writes
//! must know how much room is left, and must learn it within one check interval of a burst,
//! not one maintenance round later. The storage maintainer (one elected collector) publishes
//! its budget and figures at `{prefix}/storage/status`; each process combines them with its own
//! fresh reading of the member it talks to and of etcd's alarms ([`Reading`]).
//!
//! The thresholds are fractions of the budget, in one place so that the maintainer and the
//! streamer agree (docs/storage.md draws them):
//! - [`COMPACT_NOW`]: the maintainer compacts to the current revision instead of keeping
//!   `STORAGE_HISTORY`;
//! - [`EXPIRE_AT`] / [`EXPIRE_TO`]: it expires the oldest samples down to the lower mark;
//! - [`SLOW_AT`]: streamers keep a quarter of their rate ([`Pressure::High`]);
//! - the budget itself, a database file at [`FILE_LIMIT`] of the quota, or any NOSPACE alarm:
//!   streamers pause and device sources skip their scrapes ([`Pressure::Full`]).

mod track;

use etcd_client::{AlarmAction, AlarmType, Client};
use serde::{Deserialize, Serialize};

use crate::etcd::{Context, EtcdError};
use crate::keys::Keys;

pub use track::{track, BlockOn, Room, Tracked};

/// etcd's own default quota (`--quota-backend-bytes`), and `ETCD_QUOTA_BYTES`'s default.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;
/// The default budget, as a fraction of the quota (`STORAGE_BUDGET=80%`).
pub const DEFAULT_BUDGET_FRACTION: f64 = 0.8;
/// In use at this fraction of the budget, history is compacted at once.
pub const COMPACT_NOW: f64 = 0.75;
/// In use at this fraction of the budget after compaction, the oldest samples expire...
pub const EXPIRE_AT: f64 = 0.9;
/// ...down to this fraction.
pub const EXPIRE_TO: f64 = 0.8;
/// In use at this fraction of the budget, streamers slow down.
pub const SLOW_AT: f64 = 0.95;
/// A database file at this fraction of the quota counts as full, whatever is in use: etcd
/// checks the quota against the file, which only a defragmentation shrinks.
pub const FILE_LIMIT: f64 = 0.95;

/// What the storage maintainer publishes after each round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageStatus {
    /// The maintainer's collector id.
    pub maintainer: String,
    /// `ETCD_QUOTA_BYTES`, or the quota the members report when it is smaller.
    pub quota_bytes: i64,
    /// `STORAGE_BUDGET` in bytes.
    pub budget_bytes: i64,
    /// The largest member's database file.
    pub db_size_bytes: i64,
    /// The largest member's space in use.
    pub db_size_in_use_bytes: i64,
    /// History before this revision is gone: a resume from an older one cannot be exact.
    pub compacted_revision: i64,
    /// Samples expired to keep under the budget, since this maintainer was elected.
    pub samples_expired_budget: u64,
    /// Samples deleted for being older than `TELEMETRY_RETENTION`, since this maintainer was
    /// elected.
    #[serde(default)]
    pub samples_expired_retention: u64,
    /// Samples older than this (Unix ns) are deleted, and refused by every collector (0: none
    /// yet). `TELEMETRY_RETENTION` before the newest stored sample, or before now if that is
    /// earlier (docs/storage.md).
    #[serde(default)]
    pub retention_cutoff_unix_nano: i64,
    /// Raw samples folded into chunks, since this maintainer was elected.
    #[serde(default)]
    pub samples_folded: u64,
    /// Chunks written (a window folded again to merge late samples counts again).
    #[serde(default)]
    pub chunks_written: u64,
    /// Compactions and defragmentations done by this maintainer.
    pub compactions: u64,
    /// Defragmentations done by this maintainer.
    pub defrags: u64,
    /// When this was written (Unix milliseconds).
    pub updated_unix_ms: i64,
}

/// How much room is left, from a writer's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pressure {
    /// Room to spare.
    Ok,
    /// Close to the budget: the maintainer is behind; writers slow down.
    High,
    /// At the budget, the file near the quota, or the NOSPACE alarm raised: writers wait.
    Full,
}

/// One fresh look at the member a client talks to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// Its database file, in bytes.
    pub db_size: i64,
    /// The part of it in use.
    pub in_use: i64,
    /// The quota it reports (etcd 3.6 and later; 0 before).
    pub reported_quota: i64,
    /// Some member has raised the NOSPACE alarm.
    pub alarm: bool,
}

impl Pressure {
    /// The pressure of `r` against `budget` and `quota` (bytes).
    pub fn of(r: &Reading, budget: i64, quota: i64) -> Self {
        let (in_use, budget) = (r.in_use as f64, budget as f64);
        if r.alarm || in_use >= budget || r.db_size as f64 >= FILE_LIMIT * quota as f64 {
            Pressure::Full
        } else if in_use >= SLOW_AT * budget {
            Pressure::High
        } else {
            Pressure::Ok
        }
    }
}

/// Reads the member the client talks to and etcd's alarms (two small maintenance calls).
pub async fn read(client: &Client) -> Result<Reading, EtcdError> {
    let mut c = client.clone();
    let s = c.status().await.ctx("storage status")?;
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .ctx("alarm list")?;
    Ok(Reading {
        db_size: s.db_size(),
        in_use: s.raft_used_db_size(),
        reported_quota: s.db_size_quota(),
        alarm: alarms
            .alarms()
            .iter()
            .any(|a| a.alarm() == AlarmType::Nospace),
    })
}

/// The maintainer's last published status, if there is one.
pub async fn published(client: &Client, keys: &Keys) -> Result<Option<StorageStatus>, EtcdError> {
    let resp = client
        .kv_client()
        .get(keys.storage_status(), None)
        .await
        .ctx("read storage status")?;
    Ok(resp
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

/// True when etcd refused a write because its quota is reached (gRPC `ResourceExhausted`,
/// which etcd answers for NOSPACE). Such a write may have been applied: the write that
/// crosses the quota is applied and then answered with this error.
pub fn is_no_space(e: &EtcdError) -> bool {
    matches!(&e.source, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::ResourceExhausted)
}

/// Whether a Txn that etcd answered with NOSPACE was applied anyway: its first and last puts
/// both exist, written by one revision after `after` (a Txn is atomic, and no other write puts
/// both at one revision). A read that fails, or a Txn without puts, counts as not applied.
pub async fn landed(client: &Client, first: Option<&str>, last: Option<&str>, after: i64) -> bool {
    let (Some(first), Some(last)) = (first, last) else {
        return false;
    };
    let mut revisions = Vec::with_capacity(2);
    for key in [first, last] {
        let opts = etcd_client::GetOptions::new().with_keys_only();
        match client.kv_client().get(key, Some(opts)).await {
            Ok(r) => revisions.extend(r.kvs().first().map(|kv| kv.mod_revision())),
            Err(_) => return false,
        }
    }
    matches!(revisions[..], [a, b] if a == b && a > after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: i64 = 1024 * 1024;

    fn reading(in_use: i64, db_size: i64, alarm: bool) -> Reading {
        Reading {
            db_size,
            in_use,
            reported_quota: 0,
            alarm,
        }
    }

    #[test]
    fn pressure_rises_with_use_the_file_and_the_alarm() {
        let (budget, quota) = (80 * MIB, 100 * MIB);
        assert_eq!(
            Pressure::of(&reading(70 * MIB, 90 * MIB, false), budget, quota),
            Pressure::Ok
        );
        assert_eq!(
            Pressure::of(&reading(77 * MIB, 90 * MIB, false), budget, quota),
            Pressure::High
        );
        assert_eq!(
            Pressure::of(&reading(80 * MIB, 90 * MIB, false), budget, quota),
            Pressure::Full
        );
        // A file near the quota is full even when little is in use: only defrag shrinks it.
        assert_eq!(
            Pressure::of(&reading(10 * MIB, 96 * MIB, false), budget, quota),
            Pressure::Full
        );
        assert_eq!(
            Pressure::of(&reading(MIB, MIB, true), budget, quota),
            Pressure::Full
        );
    }

    // Compaction comes first, expiry next, and streamers slow down only when expiry lags.
    const _: () = assert!(COMPACT_NOW < EXPIRE_TO && EXPIRE_TO < EXPIRE_AT && EXPIRE_AT < SLOW_AT);
}
