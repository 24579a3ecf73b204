//! `GET /api/v1/cluster`: the members, the queue, the dead letters, the storage maintainer and
//! the configuration, read from etcd in one pass.

use etcd_client::{Client, GetOptions, Txn, TxnOp, TxnOpResponse};
use serde::Serialize;

use super::{Member, REFRESH};
use crate::etcd::{Context, EtcdError};
use crate::keys::Keys;
use crate::record::now_millis;
use crate::settings::{self, Snapshot};
use crate::storage::StorageStatus;

/// A member older than this many refreshes is shown as stale: its lease is still alive (etcd
/// has not expired it yet), but it stopped reporting.
const STALE_AFTER_REFRESHES: u32 = 3;
/// Count requests per Txn, well under etcd's 128 operations.
const COUNTS_PER_TXN: usize = 64;

/// The whole pipeline at one look.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// Every running process, by role then id.
    pub members: Vec<MemberView>,
    /// Messages waiting, per partition and in total.
    pub queue: QueueView,
    /// Messages in the dead-letter queue.
    pub dead_letters: i64,
    /// The collector that maintains storage, if one is elected.
    pub maintainer: Option<String>,
    /// The maintainer's last published storage figures.
    #[schema(value_type = Option<Object>)]
    pub storage: Option<StorageStatus>,
    /// The live configuration's newest revision, and who has applied it.
    pub config: ConfigView,
}

/// One member and how it is doing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    /// What it wrote about itself.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub member: Member,
    /// `healthy`, `not_ready` (it says why in `reasons`) or `stale` (it stopped reporting).
    pub health: &'static str,
    /// Milliseconds since it last reported.
    pub age_ms: i64,
}

/// The queue.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueView {
    /// Messages waiting in every partition.
    pub depth: i64,
    /// Each partition.
    pub partitions: Vec<PartitionView>,
}

/// One queue partition.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PartitionView {
    /// Its number.
    pub partition: u16,
    /// Messages waiting in it.
    pub depth: i64,
    /// The collector that holds it, if any.
    pub owner: Option<String>,
}

/// The live configuration as the members apply it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConfigView {
    /// The newest configuration revision in etcd (0: nothing was ever set).
    pub revision: i64,
    /// Whether every member reports that revision (or a newer one) as applied.
    pub applied_everywhere: bool,
    /// Members that have not applied it yet.
    pub behind: Vec<String>,
    /// The kill switch's effective value.
    pub ingestion_enabled: bool,
}

impl MemberView {
    fn of(member: Member, now_ms: i64) -> Self {
        let age_ms = (now_ms - member.updated_unix_ms).max(0);
        let stale = age_ms > (REFRESH * STALE_AFTER_REFRESHES).as_millis() as i64;
        let health = match (stale, member.ready) {
            (true, _) => "stale",
            (false, true) => "healthy",
            (false, false) => "not_ready",
        };
        Self {
            member,
            health,
            age_ms,
        }
    }
}

/// Reads the view.
pub async fn read(client: &Client, keys: &Keys) -> Result<ClusterView, EtcdError> {
    let kv = client.kv_client();
    let prefix = || Some(GetOptions::new().with_prefix());
    let members = kv
        .clone()
        .get(keys.cluster_root(), prefix())
        .await
        .ctx("read cluster members")?;
    let now_ms = now_millis();
    let mut members: Vec<MemberView> = members
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Member>(kv.value()).ok())
        .map(|m| MemberView::of(m, now_ms))
        .collect();
    members.sort_by(|a, b| (a.member.role, &a.member.id).cmp(&(b.member.role, &b.member.id)));

    let queue = queue(client, keys).await?;
    let dead_letters = kv
        .clone()
        .get(
            keys.dead_letters_root(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .ctx("count dead letters")?
        .count();
    let storage = crate::storage::published(client, keys).await?;
    let (stored, _) = settings::list(client, keys).await?;
    let snapshot = settings::overlay(Snapshot::at_startup(&[]), stored);
    let behind: Vec<String> = members
        .iter()
        .filter(|m| m.member.config_revision < snapshot.revision)
        .map(|m| format!("{}/{}", m.member.role.as_str(), m.member.id))
        .collect();
    Ok(ClusterView {
        maintainer: storage.as_ref().map(|s| s.maintainer.clone()),
        storage,
        config: ConfigView {
            revision: snapshot.revision,
            applied_everywhere: behind.is_empty(),
            behind,
            ingestion_enabled: snapshot.ingestion_enabled(),
        },
        members,
        queue,
        dead_letters,
    })
}

/// Depth per partition (count-only reads, batched into Txns) and each partition's owner.
async fn queue(client: &Client, keys: &Keys) -> Result<QueueView, EtcdError> {
    let mut kv = client.kv_client();
    let partitions = crate::queue::stored_partitions(client, keys)
        .await?
        .unwrap_or(0);
    let owners = kv
        .get(keys.owners_root(), Some(GetOptions::new().with_prefix()))
        .await
        .ctx("read partition owners")?;
    let owner_of = |p: u16| {
        let key = keys.owner(p);
        owners
            .kvs()
            .iter()
            .find(|kv| kv.key() == key.as_bytes())
            .and_then(|kv| kv.value_str().ok().map(str::to_string))
    };
    let all: Vec<u16> = (0..partitions).collect();
    let mut out = Vec::with_capacity(all.len());
    for group in all.chunks(COUNTS_PER_TXN) {
        let ops = group.iter().map(|p| {
            TxnOp::get(
                keys.queue_partition(*p),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
        });
        let resp = kv
            .txn(Txn::new().and_then(ops.collect::<Vec<_>>()))
            .await
            .ctx("count queued messages")?;
        for (p, r) in group.iter().zip(resp.op_responses()) {
            let depth = match r {
                TxnOpResponse::Get(g) => g.count(),
                _ => 0,
            };
            out.push(PartitionView {
                partition: *p,
                depth,
                owner: owner_of(*p),
            });
        }
    }
    Ok(QueueView {
        depth: out.iter().map(|p| p.depth).sum(),
        partitions: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(ready: bool, updated_unix_ms: i64) -> Member {
        Member {
            role: super::super::Role::Collector,
            id: "c1".into(),
            version: "0".into(),
            address: None,
            started_at: String::new(),
            ready,
            reasons: Default::default(),
            config_revision: 0,
            updated_unix_ms,
            status: serde_json::Value::Null,
        }
    }

    #[test]
    fn health_is_ready_and_recent() {
        let now = 1_000_000;
        assert_eq!(
            MemberView::of(member(true, now - 500), now).health,
            "healthy"
        );
        assert_eq!(
            MemberView::of(member(false, now - 500), now).health,
            "not_ready"
        );
        let old = now - (REFRESH * STALE_AFTER_REFRESHES).as_millis() as i64 - 1;
        assert_eq!(MemberView::of(member(true, old), now).health, "stale");
    }
}
