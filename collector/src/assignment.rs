//! Which partitions this collector works on.
//!
//! Every live collector registers `{prefix}/collectors/{id}` under its lease. Each one aims
//! for a fair share, `ceil(partitions / collectors)`, claiming free partitions (starting
//! at an offset derived from its id, so collectors rarely race for the same one) and giving
//! back any above its share. A dead collector's claims vanish with its lease and the others
//! pick its partitions up on their next round. Collectors therefore never contend for the
//! same message: exactly one owns each partition.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::claim::{Claims, Fence};
use etcd_client::{GetOptions, PutOptions};
use sha2::{Digest, Sha256};
use telemetry::etcd::{Context, EtcdError};
use telemetry::lease::KeptLease;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::partition::{self, Exit};
use crate::Shared;

const ROUND: Duration = Duration::from_millis(500);

struct Owned {
    fence: Fence,
    stop: CancellationToken,
    task: JoinHandle<Exit>,
}

/// Runs the assignment loop for one lease; returns when `shutdown` fires (after releasing
/// everything) or when the lease is lost (after stopping every worker).
pub async fn run(
    shared: Arc<Shared>,
    lease: KeptLease,
    shutdown: CancellationToken,
) -> Result<(), EtcdError> {
    let claims = Claims::new(
        shared.client.clone(),
        shared.keys.clone(),
        shared.cfg.id.clone(),
        lease.id,
    );
    let member = shared.keys.collector(&shared.cfg.id);
    shared
        .client
        .kv_client()
        .put(
            member.as_str(),
            shared.cfg.id.as_str(),
            Some(PutOptions::new().with_lease(lease.id)),
        )
        .await
        .ctx("register collector")?;
    tracing::info!(id = %shared.cfg.id, lease = lease.id, "collector registered");

    let partitions = shared.cfg.process.queue.partitions();
    let offset = {
        let h = Sha256::digest(shared.cfg.id.as_bytes());
        u16::from_be_bytes([h[0], h[1]]) % partitions
    };
    let mut owned: HashMap<u16, Owned> = HashMap::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = lease.lost().cancelled() => break Ok(()),
            _ = tokio::time::sleep(ROUND) => {}
        }
        // Workers that ended on their own (fenced) give their claim back if it is still ours.
        let finished: Vec<u16> = owned
            .iter()
            .filter(|(_, o)| o.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in finished {
            if let Some(o) = owned.remove(&p) {
                let _ = claims.release(o.fence).await;
            }
        }
        if let Err(e) = rebalance(&shared, &claims, partitions, offset, &mut owned).await {
            shared.counters.database_error();
            tracing::warn!(error = %e, "rebalance round failed; trying again");
        }
        let mut held: Vec<u16> = owned.keys().copied().collect();
        held.sort_unstable();
        *shared.held.lock().unwrap_or_else(|e| e.into_inner()) = held;
    };
    shared
        .held
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    // Drain: stop every worker, wait for the message in flight, then give the claims back.
    for o in owned.values() {
        o.stop.cancel();
    }
    for (_, o) in owned.drain() {
        let _ = o.task.await;
        if !lease.is_lost() {
            let _ = claims.release(o.fence).await;
        }
    }
    result
}

async fn rebalance(
    shared: &Arc<Shared>,
    claims: &Claims,
    partitions: u16,
    offset: u16,
    owned: &mut HashMap<u16, Owned>,
) -> Result<(), EtcdError> {
    let members = shared
        .client
        .kv_client()
        .get(
            shared.keys.collectors_root(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .ctx("count collectors")?
        .count()
        .max(1) as usize;
    let share = usize::from(partitions).div_ceil(members);
    metrics::gauge!("partitions_owned").set(owned.len() as f64);

    if owned.len() > share {
        let extra: Vec<u16> = owned.keys().copied().take(owned.len() - share).collect();
        for p in extra {
            if let Some(o) = owned.remove(&p) {
                o.stop.cancel();
                let _ = o.task.await;
                claims.release(o.fence).await?;
                tracing::info!(partition = p, "partition released to rebalance");
            }
        }
        return Ok(());
    }
    if owned.len() == share {
        return Ok(());
    }
    let taken: HashMap<u16, String> = claims.owners().await?.into_iter().collect();
    for i in 0..partitions {
        if owned.len() >= share {
            break;
        }
        let p = (offset + i) % partitions;
        if taken.contains_key(&p) || owned.contains_key(&p) {
            continue;
        }
        if let Some(fence) = claims.try_claim(p).await? {
            tracing::info!(partition = p, fence = fence.revision, "partition claimed");
            let stop = CancellationToken::new();
            let task = tokio::spawn(partition::run(shared.clone(), fence, stop.clone()));
            owned.insert(p, Owned { fence, stop, task });
        }
    }
    Ok(())
}
