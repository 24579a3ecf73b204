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

use std::time::Duration;

use etcd_client::{AlarmAction, AlarmType, Client};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::etcd::{Context, EtcdError};
use crate::keys::Keys;

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

/// When the readiness of a process depends on storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOn {
    /// It cannot work at [`Pressure::Full`] (a streamer: it holds its input).
    Full,
    /// It cannot work only while etcd refuses writes (a collector: it commits until then).
    Alarm,
}

/// Room left for writes before the streamers must slow down: an allowance of bytes, reset
/// from every reading of etcd and spent by each write before it is sent. A burst faster than
/// the readings therefore stops at the allowance instead of running into the quota.
#[derive(Debug, Default)]
pub struct Room {
    allowance: std::sync::atomic::AtomicI64,
    read: tokio::sync::Notify,
    want_reading: tokio::sync::Notify,
}

/// etcd's database grows by about this many bytes per byte of queued message: the message
/// itself, its tombstone when it is committed, and the stored records the commit writes.
pub const GROWTH_PER_QUEUED_BYTE: i64 = 3;
/// What a message still in the queue will add once committed: a full message of records at
/// about 600 bytes each as stored (docs/storage.md measures it). Readings subtract it for
/// every queued message, so a deep queue leaves no room for more.
pub const QUEUED_MESSAGE_COST: i64 = 126 * 600;

impl Room {
    /// Waits until `bytes` of queued messages fit in the room left, and spends them. While
    /// they do not, each wait asks for a fresh reading of etcd.
    pub async fn take(&self, bytes: usize) {
        use std::sync::atomic::Ordering::AcqRel;
        let cost = bytes as i64 * GROWTH_PER_QUEUED_BYTE;
        loop {
            let read = self.read.notified();
            let left = self.allowance.fetch_sub(cost, AcqRel);
            if left >= cost {
                return;
            }
            self.allowance.fetch_add(cost, AcqRel);
            self.want_reading.notify_one();
            read.await;
        }
    }

    fn reset(&self, allowance: i64) {
        self.allowance
            .store(allowance, std::sync::atomic::Ordering::Release);
        self.read.notify_waiters();
    }
}

/// What [`track`] keeps current.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// The pressure now.
    pub pressure: watch::Receiver<Pressure>,
    /// The room left for queued messages.
    pub room: std::sync::Arc<Room>,
}

/// Keeps a [`Pressure`] and a [`Room`] current every `interval` (sooner when a writer runs
/// out of room) until `stop`, and the "storage" condition of `readiness` with them. Until the
/// maintainer has published a budget, the default budget of the quota the member reports (or
/// etcd's default quota) is assumed.
pub fn track(
    client: Client,
    keys: Keys,
    interval: Duration,
    readiness: Readiness,
    block_on: BlockOn,
    stop: CancellationToken,
) -> Tracked {
    let (tx, rx) = watch::channel(Pressure::Ok);
    let room = std::sync::Arc::new(Room::default());
    room.reset(i64::MAX / 4);
    let tracked = Tracked {
        pressure: rx,
        room: room.clone(),
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = room.want_reading.notified() => {
                    // At most twenty readings a second however many writers wait.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let Ok(r) = read(&client).await else { continue };
            let status = published(&client, &keys).await.ok().flatten();
            let (budget, quota) = match status {
                Some(s) if s.budget_bytes > 0 => (s.budget_bytes, s.quota_bytes),
                _ => {
                    let quota = if r.reported_quota > 0 {
                        r.reported_quota
                    } else {
                        DEFAULT_QUOTA_BYTES
                    };
                    ((quota as f64 * DEFAULT_BUDGET_FRACTION) as i64, quota)
                }
            };
            let p = Pressure::of(&r, budget, quota);
            let queued = crate::queue::queue_depth(&client, &keys).await.unwrap_or(0);
            let allowance = if p == Pressure::Full {
                0
            } else {
                (SLOW_AT * budget as f64) as i64 - r.in_use - queued * QUEUED_MESSAGE_COST
            };
            room.reset(allowance.max(0));
            let blocked = match block_on {
                BlockOn::Full => p == Pressure::Full,
                BlockOn::Alarm => r.alarm,
            };
            if blocked {
                readiness.block("storage", describe(&r, budget, quota));
            } else {
                readiness.clear("storage");
            }
            tx.send_if_modified(|old| std::mem::replace(old, p) != p);
        }
    });
    tracked
}

/// A reason a person can act on.
fn describe(r: &Reading, budget: i64, quota: i64) -> String {
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    let alarm = if r.alarm {
        "etcd raised its NOSPACE alarm and refuses writes; the storage maintainer is recovering. "
    } else {
        ""
    };
    format!(
        "{alarm}storage full: {:.1} MiB in use of a {:.1} MiB budget, database file {:.1} MiB of a {:.1} MiB quota",
        mib(r.in_use),
        mib(budget),
        mib(r.db_size),
        mib(quota)
    )
}

/// True when etcd refused a write because its quota is reached (gRPC `ResourceExhausted`,
/// which etcd answers for NOSPACE). Such a write may have been applied: the write that
/// crosses the quota is applied and then answered with this error.
pub fn is_no_space(e: &EtcdError) -> bool {
    matches!(&e.source, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::ResourceExhausted)
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
