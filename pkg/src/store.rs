//! The commit: one fenced Txn stores a message's records and removes it from the queue.
//!
//! Compares, each for a reason (docs/protocol.md):
//! 1. the owner key's create revision equals our fence: only the current owner commits;
//! 2. the message key's mod revision equals what we read: the message is still queued and
//!    unchanged, so no commit applies twice;
//! 3. for each record, its dedupe key does not exist: the record has not been stored before.
//!
//! On success it puts each record (under a retention bucket lease) and its dedupe marker
//! (under a dedupe bucket lease), puts invalid records with their reasons, and deletes the
//! message and its attempt counter. On failure the same Txn reads back the owner key, the
//! message key and the dedupe keys, so one round trip tells which compare failed: duplicates
//! are dropped and the Txn retried; a lost fence or a gone message ends the commit.

use std::collections::HashSet;
use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use prost::Message as _;
use telemetry_proto::TelemetryRecord;

use crate::buckets::BucketLeases;
use crate::claim::{fence_compare, Fence};
use crate::etcd::{Context, EtcdError};
use crate::keys::Keys;
use crate::registry::InvalidEntry;

/// A queued message as read by its owner.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub key: String,
    pub mod_revision: i64,
    pub message_id: String,
    pub schema_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed {
        stored: usize,
        duplicates: usize,
        invalid: usize,
    },
    /// Our claim is gone: nothing was written.
    Fenced,
    /// The message was already committed (by us earlier, or a previous owner).
    AlreadyDone,
}

pub struct Committer {
    client: Client,
    keys: Keys,
    dedupe: Arc<BucketLeases>,
    retention: Arc<BucketLeases>,
}

impl Committer {
    pub fn new(
        client: Client,
        keys: Keys,
        dedupe: Arc<BucketLeases>,
        retention: Arc<BucketLeases>,
    ) -> Self {
        Self {
            client,
            keys,
            dedupe,
            retention,
        }
    }

    /// The retention leases, shared with other writers of stored data (the GPU registry).
    pub fn retention(&self) -> &Arc<BucketLeases> {
        &self.retention
    }

    /// Commits `valid` and `invalid` records of `msg` under `fence`.
    pub async fn commit(
        &self,
        fence: Fence,
        msg: &Claimed,
        valid: Vec<TelemetryRecord>,
        invalid: Vec<(TelemetryRecord, String)>,
    ) -> Result<Outcome, EtcdError> {
        let (mut valid, mut duplicates) = unique_by_key(valid);
        loop {
            let dedupe_lease = self.dedupe.current().await?;
            let retention_lease = self.retention.current().await?;
            let txn = self.build(fence, msg, &valid, &invalid, dedupe_lease, retention_lease);
            let resp = match self.client.kv_client().txn(txn).await {
                Ok(r) => r,
                Err(e) if is_lease_not_found(&e) => {
                    // A bucket lease expired under us (clock jump, long pause): get fresh ones.
                    self.dedupe.invalidate();
                    self.retention.invalidate();
                    continue;
                }
                Err(e) => return Err(EtcdError::new("commit", e)),
            };
            if resp.succeeded() {
                return Ok(Outcome::Committed {
                    stored: valid.len(),
                    duplicates,
                    invalid: invalid.len(),
                });
            }
            let reads: Vec<Option<etcd_client::KeyValue>> = resp
                .op_responses()
                .into_iter()
                .map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                    _ => None,
                })
                .collect();
            match reads.first() {
                Some(Some(owner)) if owner.create_revision() == fence.revision => {}
                _ => return Ok(Outcome::Fenced),
            }
            match reads.get(1) {
                Some(Some(m)) if m.mod_revision() == msg.mod_revision => {}
                _ => return Ok(Outcome::AlreadyDone),
            }
            let seen: HashSet<&[u8]> = reads[2..].iter().flatten().map(|kv| kv.key()).collect();
            let before = valid.len();
            valid.retain(|r| !seen.contains(self.keys.dedupe(&r.idempotency_key).as_bytes()));
            duplicates += before - valid.len();
            if before == valid.len() {
                // Nothing explains the failure; let the caller retry the message from scratch.
                return Err(EtcdError::new(
                    "commit",
                    etcd_client::Error::InvalidArgs("commit failed without a cause".into()),
                ));
            }
        }
    }

    fn build(
        &self,
        fence: Fence,
        msg: &Claimed,
        valid: &[TelemetryRecord],
        invalid: &[(TelemetryRecord, String)],
        dedupe_lease: i64,
        retention_lease: i64,
    ) -> Txn {
        let k = &self.keys;
        let mut compares = Vec::with_capacity(valid.len() + 2);
        compares.push(fence_compare(k, fence));
        compares.push(Compare::mod_revision(
            msg.key.as_str(),
            CompareOp::Equal,
            msg.mod_revision,
        ));
        let mut success = Vec::with_capacity(valid.len() * 2 + invalid.len() + 2);
        let mut failure = Vec::with_capacity(valid.len() + 2);
        failure.push(TxnOp::get(k.owner(fence.partition), None));
        failure.push(TxnOp::get(
            msg.key.as_str(),
            Some(GetOptions::new().with_keys_only()),
        ));
        let retention = Some(PutOptions::new().with_lease(retention_lease));
        let dedupe = Some(PutOptions::new().with_lease(dedupe_lease));
        for r in valid {
            let dkey = k.dedupe(&r.idempotency_key);
            let data_key = k.data(&r.hostname, &r.gpu_id, r.timestamp_unix_nano, &r.id);
            compares.push(Compare::create_revision(dkey.as_str(), CompareOp::Equal, 0));
            failure.push(TxnOp::get(
                dkey.as_str(),
                Some(GetOptions::new().with_keys_only()),
            ));
            // The marker's presence is the fact; an empty value keeps etcd's apply loop (the
            // pipeline's bottleneck) and its database as light as possible.
            success.push(TxnOp::put(dkey, Vec::new(), dedupe.clone()));
            success.push(TxnOp::put(data_key, stored_bytes(r), retention.clone()));
        }
        for (r, reason) in invalid {
            let entry = InvalidEntry {
                id: r.id.clone(),
                message_id: msg.message_id.clone(),
                schema_version: msg.schema_version.clone(),
                reason: reason.clone(),
                hostname: r.hostname.clone(),
                gpu_id: r.gpu_id.clone(),
                metric: r.metric.clone(),
                detected_at: chrono::Utc::now().to_rfc3339(),
            };
            let json = serde_json::to_vec(&entry).unwrap_or_default();
            success.push(TxnOp::put(k.invalid(&r.id), json, retention.clone()));
        }
        success.push(TxnOp::delete(msg.key.as_str(), None));
        success.push(TxnOp::delete(k.attempts(&msg.message_id), None));
        Txn::new().when(compares).and_then(success).or_else(failure)
    }
}

/// A record as stored: without its idempotency key, which is derived from the content (and is
/// the dedupe marker's key), so storing it would only cost bytes on every write.
fn stored_bytes(r: &TelemetryRecord) -> Vec<u8> {
    let mut r = r.clone();
    r.idempotency_key.clear();
    r.encode_to_vec()
}

/// Drops records whose idempotency key repeats within the batch (a Txn may not put one key
/// twice) and records that share a ULID (they would share a data key).
fn unique_by_key(records: Vec<TelemetryRecord>) -> (Vec<TelemetryRecord>, usize) {
    let mut keys = HashSet::new();
    let mut ids = HashSet::new();
    let before = records.len();
    let mut out = Vec::with_capacity(before);
    for mut r in records {
        if !keys.insert(r.idempotency_key.clone()) {
            continue;
        }
        if !ids.insert(r.id.clone()) {
            r.id = ulid::Ulid::new().to_string();
            ids.insert(r.id.clone());
        }
        out.push(r);
    }
    let dups = before - out.len();
    (out, dups)
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("lease not found"))
}

/// Reads stored telemetry of one GPU in `[start_key, end_key)`, oldest first.
pub async fn scan(
    client: &Client,
    start_key: &str,
    end_key: &str,
    limit: i64,
    revision: i64,
) -> Result<(Vec<(String, TelemetryRecord)>, bool, i64), EtcdError> {
    // Serializable: served by the member we talk to without a read-index round trip. A page
    // pinned to a revision is consistent either way; a first page may trail the leader by a
    // heartbeat on a follower, which is fine for telemetry.
    let mut opts = GetOptions::new()
        .with_range(end_key)
        .with_limit(limit)
        .with_serializable();
    if revision > 0 {
        opts = opts.with_revision(revision);
    }
    let resp = client
        .kv_client()
        .get(start_key, Some(opts))
        .await
        .ctx("read telemetry")?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(revision);
    let entries = resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let rec = TelemetryRecord::decode(kv.value()).ok()?;
            Some((kv.key_str().ok()?.to_string(), rec))
        })
        .collect();
    Ok((entries, resp.more(), rev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_a_batch_are_duplicates() {
        let r = |k: &str, id: &str| TelemetryRecord {
            idempotency_key: k.into(),
            id: id.into(),
            ..Default::default()
        };
        let (out, dups) = unique_by_key(vec![r("a", "1"), r("a", "2"), r("b", "1")]);
        assert_eq!(dups, 1);
        assert_eq!(out.len(), 2);
        assert_ne!(
            out[0].id, out[1].id,
            "a shared ULID is replaced so data keys stay distinct"
        );
    }
}
