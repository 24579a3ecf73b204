//! Every writer's view of etcd's room, kept current in the background: [`track`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::{
    published, read, Pressure, Reading, StorageStatus, DEFAULT_BUDGET_FRACTION,
    DEFAULT_QUOTA_BYTES, SLOW_AT,
};
use crate::admin::Readiness;
use crate::keys::Keys;

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
    allowance: AtomicI64,
    read: Notify,
    want_reading: Notify,
}

/// etcd's database grows by about this many bytes per byte of queued message: the message
/// itself, its tombstone when it is committed, and the stored records the commit writes.
const GROWTH_PER_QUEUED_BYTE: i64 = 3;
/// What a message still in the queue will add once committed: a full message of records at
/// about 600 bytes each as stored (docs/storage.md measures it). Readings subtract it for
/// every queued message, so a deep queue leaves no room for more.
const QUEUED_MESSAGE_COST: i64 = 126 * 600;

impl Room {
    /// Waits until there is room left, and spends `bytes` of queued messages from it. While
    /// there is none, each wait asks for a fresh reading of etcd.
    ///
    /// Any room at all admits a write, even one larger than the room: on a small quota one
    /// group of messages can cost more than all the room between the maintainer's marks, and
    /// waiting for that much would wait forever. The overdraw is one group per publisher, and
    /// the pause at the budget ([`Pressure::Full`]) still holds.
    pub async fn take(&self, bytes: usize) {
        let cost = bytes as i64 * GROWTH_PER_QUEUED_BYTE;
        loop {
            let read = self.read.notified();
            let left = self.allowance.fetch_sub(cost, Ordering::AcqRel);
            if left > 0 {
                return;
            }
            self.allowance.fetch_add(cost, Ordering::AcqRel);
            self.want_reading.notify_one();
            read.await;
        }
    }

    fn reset(&self, allowance: i64) {
        self.allowance.store(allowance, Ordering::Release);
        self.read.notify_waiters();
    }
}

/// What [`track`] keeps current.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// The pressure now.
    pub pressure: watch::Receiver<Pressure>,
    /// The room left for queued messages.
    pub room: Arc<Room>,
    /// What the maintainer last published (`None` until it has).
    pub status: watch::Receiver<Option<StorageStatus>>,
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
    let room = Arc::new(Room::default());
    room.reset(i64::MAX / 4);
    let (status_tx, status_rx) = watch::channel(None);
    let tracked = Tracked {
        pressure: rx,
        room: room.clone(),
        status: status_rx,
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
            if status.is_some() {
                status_tx.send_if_modified(|old| std::mem::replace(old, status.clone()) != status);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn room_admits_while_any_is_left_and_waits_for_a_reading_when_none_is() {
        let room = Arc::new(Room::default());
        room.reset(10);
        // More than the room, but some room is left: admitted (and the room is overdrawn).
        tokio::time::timeout(Duration::from_secs(1), room.take(100))
            .await
            .expect("admitted");
        let waiting = tokio::spawn({
            let room = room.clone();
            async move { room.take(1).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "no room: it waits");
        room.reset(1_000);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("a reading with room lets it through")
            .unwrap();
    }
}
