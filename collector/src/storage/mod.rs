//! Storage maintenance, done by one elected collector at a time (docs/storage.md).
//!
//! Every collector stands for election with etcd's election API, under a lease of its own
//! (`MQ_PROCESSING_TIMEOUT`), so that when the maintainer dies another takes over within one
//! lease TTL. The winner's leader key is its fence: every write it makes to etcd's keys is a
//! Txn that compares the key's create revision, so a maintainer that lost its lease (a long
//! pause, a partition) cannot delete anything afterwards. Compaction, defragmentation and
//! disarming an alarm are not key writes and cannot be fenced; they are idempotent, and the
//! maintainer checks that it still leads before each.

mod expire;
mod fold;
mod history;
mod maintainer;
mod members;
mod policy;
mod retention;
mod window;

pub use window::Windows;

/// The retention cutoff every worker refuses samples below (Unix ns; `i64::MIN` until the
/// maintainer has published one): what the maintainer deletes must not come back with a
/// replay (`retention`).
#[derive(Debug)]
pub struct Cutoff(std::sync::atomic::AtomicI64);

impl Default for Cutoff {
    fn default() -> Self {
        Self(std::sync::atomic::AtomicI64::new(i64::MIN))
    }
}

impl Cutoff {
    /// Learns a published cutoff (0: none yet).
    pub fn learn(&self, cutoff: i64) {
        if cutoff != 0 {
            self.0.store(cutoff, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The cutoff last learned; `i64::MIN` for none.
    pub fn get(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why a sample at `ts` (Unix ns) is refused, if it is.
    pub fn refuses(&self, ts: i64) -> Option<String> {
        let cutoff = self.get();
        (ts < cutoff).then(|| {
            format!(
                "timestamp {} is older than the retention cutoff {} (TELEMETRY_RETENTION before the newest stored sample)",
                telemetry::record::format_timestamp(ts),
                telemetry::record::format_timestamp(cutoff)
            )
        })
    }
}

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp};
use telemetry::backoff::Backoff;
use telemetry::etcd::{Context, EtcdError};
use telemetry::shutdown::or_cancel;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use telemetry::lease::KeptLease;

/// What entitles this collector to maintain storage.
#[derive(Debug, Clone)]
pub enum Leadership {
    /// It won the election: the leader key it created.
    Elected { key: Vec<u8>, revision: i64 },
    /// etcd refuses writes (NOSPACE) and nobody could be elected, since a campaign is a write
    /// and so is the lease it needs. Then any collector may do what needs no fence (compact,
    /// defragment, disarm: all idempotent) and delete the oldest samples (a `DeleteRange` is
    /// allowed under the alarm, and etcd counts what each one deleted, so two collectors
    /// doing it at once still count exactly).
    Emergency,
}

impl Leadership {
    /// Holds while the leader key is the one we created: no other candidate can have it.
    pub(crate) fn fence(&self) -> Vec<Compare> {
        match self {
            Leadership::Elected { key, revision } => {
                vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    *revision,
                )]
            }
            Leadership::Emergency => Vec::new(),
        }
    }

    /// Whether we still lead (one read): checked before the steps that cannot be fenced.
    async fn holds(&self, shared: &Shared) -> Result<bool, EtcdError> {
        let Leadership::Elected { key, revision } = self else {
            return Ok(true);
        };
        let resp = shared
            .client
            .kv_client()
            .get(key.clone(), None)
            .await
            .ctx("read leader key")?;
        Ok(resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == *revision))
    }
}

/// Stands for election until `stop`; maintains storage whenever elected.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    if !shared.cfg.storage.maintainer {
        tracing::info!("STORAGE_MAINTAINER=false: this collector never maintains storage");
        return;
    }
    let id = shared.cfg.id.clone();
    ::metrics::gauge!("storage_maintainer", "id" => id.clone()).set(0.0);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !stop.is_cancelled() {
        let lease_stop = stop.child_token();
        let _stop_keeping = lease_stop.clone().drop_guard();
        let lease = match KeptLease::grant(
            &shared.client,
            shared.cfg.processing_timeout,
            lease_stop.clone(),
        )
        .await
        {
            Ok(l) => l,
            Err(e) if telemetry::storage::is_no_space(&e) => {
                tracing::warn!("etcd refuses writes (NOSPACE) and grants no lease: recovering without an election");
                maintainer::Maintainer::new(shared.clone(), Leadership::Emergency)
                    .recover(&stop)
                    .await;
                or_cancel(&stop, tokio::time::sleep(backoff.next_delay())).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot get a lease to stand for storage maintainer");
                or_cancel(&stop, tokio::time::sleep(backoff.next_delay())).await;
                continue;
            }
        };
        let mut c = shared.client.clone();
        let election = shared.keys.storage_election();
        let campaign = c.campaign(election.as_str(), id.as_str(), lease.id);
        let won = tokio::select! {
            r = campaign => r,
            _ = lease.lost().cancelled() => continue,
            _ = stop.cancelled() => break,
        };
        let leader = match won.ok().and_then(|mut r| r.take_leader()) {
            Some(l) => Leadership::Elected {
                key: l.key().to_vec(),
                revision: l.rev(),
            },
            None => {
                or_cancel(&stop, tokio::time::sleep(backoff.next_delay())).await;
                continue;
            }
        };
        backoff.reset();
        tracing::info!(id, "elected storage maintainer");
        ::metrics::gauge!("storage_maintainer", "id" => id.clone()).set(1.0);
        // Leading ends when the lease is lost or the collector stops, whichever comes first.
        let leading = lease.lost().child_token();
        let (stop_, leading_) = (stop.clone(), leading.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop_.cancelled() => leading_.cancel(),
                _ = leading_.cancelled() => {}
            }
        });
        // The maintainer also evaluates rules; both stop when it stops leading.
        let maintainer = maintainer::Maintainer::new(shared.clone(), leader.clone());
        let maintain = async {
            maintainer.run(leading.clone()).await;
            leading.cancel();
        };
        tokio::join!(
            maintain,
            crate::rules::run(shared.clone(), leader, leading.clone()),
        );
        leading.cancel();
        ::metrics::gauge!("storage_maintainer", "id" => id.clone()).set(0.0);
        // Hand over at once rather than after a lease TTL.
        let _ = shared.client.clone().lease_revoke(lease.id).await;
        if !stop.is_cancelled() {
            tracing::warn!(
                id,
                "no longer the storage maintainer; standing for election again"
            );
        }
    }
}
