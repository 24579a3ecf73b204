//! Partition ownership: the claim and the fence.
//!
//! A collector owns a queue partition while `{prefix}/queue/owner/{partition}` exists with its
//! id, under its lease. The key is created by a put-if-absent Txn, and the revision of that Txn
//! (the key's create revision) is the collector's **fence**. Every commit compares the owner
//! key's create revision with the fence, so a collector whose lease has expired (key deleted,
//! create revision 0) or whose partition was claimed again (new create revision) cannot commit:
//! a lease is not a lock, the compare is. The messages themselves are never moved or put under
//! the lease, so a crash loses nothing: they stay in the queue until a fenced commit deletes them.

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use telemetry::etcd::{Context, EtcdError};
use telemetry::keys::Keys;

/// Proof of ownership of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub partition: u16,
    /// Create revision of the owner key when we made it.
    pub revision: i64,
}

#[derive(Clone)]
pub struct Claims {
    client: Client,
    keys: Keys,
    owner_id: String,
    lease: i64,
}

impl Claims {
    pub fn new(client: Client, keys: Keys, owner_id: String, lease: i64) -> Self {
        Self {
            client,
            keys,
            owner_id,
            lease,
        }
    }

    pub fn owner_id(&self) -> &str {
        &self.owner_id
    }

    /// Claims a partition if nobody owns it. `None` when it is taken.
    pub async fn try_claim(&self, partition: u16) -> Result<Option<Fence>, EtcdError> {
        let key = self.keys.owner(partition);
        let txn = Txn::new()
            // Only an absent key may be claimed: never take a live owner's partition.
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                self.owner_id.as_str(),
                Some(PutOptions::new().with_lease(self.lease)),
            )]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .ctx("claim partition")?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok(Some(Fence {
            partition,
            revision,
        }))
    }

    /// Gives a partition back, if it is still ours.
    pub async fn release(&self, fence: Fence) -> Result<(), EtcdError> {
        let key = self.keys.owner(fence.partition);
        let txn = Txn::new()
            // Never delete a claim someone else made after ours expired.
            .when([Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                fence.revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        self.client
            .kv_client()
            .txn(txn)
            .await
            .ctx("release partition")?;
        Ok(())
    }

    /// The compare that every commit under this fence carries.
    pub fn fence_compare(&self, fence: Fence) -> Compare {
        fence_compare(&self.keys, fence)
    }

    /// Who owns which partition right now.
    pub async fn owners(&self) -> Result<Vec<(u16, String)>, EtcdError> {
        let root = self.keys.owners_root();
        let resp = self
            .client
            .kv_client()
            .get(root.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .ctx("list owners")?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let p = kv
                    .key_str()
                    .ok()?
                    .strip_prefix(root.as_str())?
                    .parse()
                    .ok()?;
                Some((p, kv.value_str().ok()?.to_string()))
            })
            .collect())
    }
}

pub fn fence_compare(keys: &Keys, fence: Fence) -> Compare {
    Compare::create_revision(
        keys.owner(fence.partition),
        CompareOp::Equal,
        fence.revision,
    )
}
