//! The producer side of the etcd queue.
//!
//! A message is a protobuf `QueueMessage` holding up to `records_per_message` records, stored at
//! `{prefix}/queue/msg/{partition}/{ulid}`. Messages are spread round-robin over the
//! partitions, and many messages go into one Txn, bounded by etcd's op and byte limits.
//!
//! Publishing is at-least-once: a Txn that timed out may have been applied, and is sent again.
//! Doubles cannot reach the store, because the collector dedupes every record on its key.

use std::sync::atomic::{AtomicU32, Ordering};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use prost::Message as _;
use sha2::{Digest, Sha256};
use telemetry_proto::{QueueMessage, TelemetryRecord};

use crate::config::QueueArgs;
use crate::etcd::{Context, EtcdError};
use crate::keys::Keys;
use crate::record::now_millis;
use crate::service::BadSetting;

/// The topic every message carries.
pub const TOPIC: &str = "gpu-telemetry";
/// The schema version this build writes.
pub const SCHEMA_VERSION: &str = "v1";

/// Space a put costs in a request beyond its key and value (protobuf framing, op header).
const PUT_OVERHEAD: usize = 32;

/// Wraps records in an envelope with a fresh ULID.
///
/// Records travel without their idempotency keys: the collector recomputes each key from the
/// content it is about to store (it must not trust a producer's key), so shipping them would
/// only add 66 bytes per record to every queue write and delete.
pub fn envelope(records: Vec<TelemetryRecord>, schema_version: &str) -> QueueMessage {
    envelope_traced(records, schema_version, Vec::new())
}

/// [`envelope`] for records of the given traces: the message carries the first and links the
/// others; with none it starts a trace of its own (see [`crate::trace`]).
pub fn envelope_traced(
    mut records: Vec<TelemetryRecord>,
    schema_version: &str,
    mut traces: Vec<String>,
) -> QueueMessage {
    let mut hash = Sha256::new();
    for r in &mut records {
        hash.update(r.idempotency_key.as_bytes());
        r.idempotency_key.clear();
    }
    let ulid = ulid::Ulid::new();
    let trace_id = if traces.is_empty() {
        crate::trace::from_ulid(ulid)
    } else {
        traces.remove(0)
    };
    QueueMessage {
        trace_id,
        linked_trace_ids: traces,
        id: ulid.to_string(),
        idempotency_key: crate::record::hex_of(&hash.finalize().into()),
        topic: TOPIC.to_string(),
        created_unix_ms: now_millis(),
        expires_unix_ms: 0,
        schema_version: schema_version.to_string(),
        records,
    }
}

/// Publishes messages into the queue, spreading them over the partitions.
pub struct Publisher {
    client: Client,
    keys: Keys,
    limits: QueueArgs,
    next_partition: AtomicU32,
}

/// One encoded message ready to be put.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The message's key.
    pub key: String,
    /// The encoded message.
    pub value: Vec<u8>,
    /// Records in it.
    pub records: usize,
}

impl Publisher {
    /// A publisher within `limits` (partition count, Txn size).
    pub fn new(client: Client, keys: Keys, limits: QueueArgs) -> Self {
        let start = rand::random::<u32>();
        Self {
            client,
            keys,
            limits,
            next_partition: AtomicU32::new(start),
        }
    }

    /// The queue's shape and etcd's limits, as agreed at start-up.
    pub fn limits(&self) -> &QueueArgs {
        &self.limits
    }

    /// Encodes a message and picks its partition.
    pub fn encode(&self, msg: &QueueMessage) -> Encoded {
        let partition = (self.next_partition.fetch_add(1, Ordering::Relaxed)
            % u32::from(self.limits.partitions())) as u16;
        Encoded {
            key: self.keys.queue_message(partition, &msg.id),
            value: msg.encode_to_vec(),
            records: msg.records.len(),
        }
    }

    /// Puts one group of messages in a single Txn.
    pub async fn put_group(&self, group: &[Encoded]) -> Result<(), EtcdError> {
        let ops: Vec<TxnOp> = group
            .iter()
            .map(|m| TxnOp::put(m.key.as_str(), m.value.clone(), None))
            .collect();
        let first = group.first().map(|m| m.key.as_str());
        let last = group.last().map(|m| m.key.as_str());
        match self
            .client
            .kv_client()
            .txn(Txn::new().and_then(ops))
            .await
            .ctx("publish")
        {
            Ok(_) => Ok(()),
            // The Txn that crosses etcd's quota is applied, then answered with NOSPACE. Its
            // messages are queued then (and stay: no commit is accepted either until space is
            // freed), so counting them unpublished would be wrong.
            Err(e)
                if crate::storage::is_no_space(&e)
                    && crate::storage::landed(&self.client, first, last, 0).await =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Messages waiting in the queue, counted by etcd without sending them.
    pub async fn depth(&self) -> Result<i64, EtcdError> {
        queue_depth(&self.client, &self.keys).await
    }
}

/// The partition count given to this process disagrees with the queue's.
#[derive(Debug, thiserror::Error)]
pub enum PartitionsError {
    /// Another count is already written to etcd, or the stored value is not a count.
    #[error(transparent)]
    Mismatch(BadSetting),
    /// etcd failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// The count stored at `key`, if any (a plain read, which etcd serves even when full).
/// The queue's partition count, once some process has created the queue.
pub async fn stored_partitions(client: &Client, keys: &Keys) -> Result<Option<u16>, EtcdError> {
    match stored_count(client, &keys.queue_partitions()).await {
        Ok(n) => Ok(n),
        Err(PartitionsError::Etcd(e)) => Err(e),
        Err(PartitionsError::Mismatch(_)) => Ok(None),
    }
}

async fn stored_count(client: &Client, key: &str) -> Result<Option<u16>, PartitionsError> {
    let resp = client
        .kv_client()
        .get(key, None)
        .await
        .ctx("read the partition count")?;
    let Some(kv) = resp.kvs().first() else {
        return Ok(None);
    };
    std::str::from_utf8(kv.value())
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok())
        .filter(|n| *n > 0)
        .map(Some)
        .ok_or_else(|| {
            PartitionsError::Mismatch(BadSetting(format!(
                "{key} holds {:?}, not a partition count; remove the key with etcdctl (only while the queue is empty) or fix its value",
                String::from_utf8_lossy(kv.value())
            )))
        })
}

/// Makes the partition count a property of the queue: the first process writes its count
/// (a put-if-absent), and every process adopts the stored one. A process that was given a
/// different count explicitly refuses, naming both: messages in partitions that the
/// collectors do not know would never be claimed. Sets `args.partitions` to the queue's count.
pub async fn agree(
    client: &Client,
    keys: &Keys,
    args: &mut QueueArgs,
) -> Result<u16, PartitionsError> {
    let key = keys.queue_partitions();
    let queue = loop {
        if let Some(n) = stored_count(client, &key).await? {
            break n;
        }
        let mine = args.partitions();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), mine.to_string(), None)]);
        match client
            .kv_client()
            .txn(txn)
            .await
            .ctx("write the partition count")
        {
            Ok(r) if r.succeeded() => break mine,
            Ok(_) => {} // another process wrote it first: read it
            // A new queue in a full etcd: wait for the storage maintainer to make room.
            Err(e) if crate::storage::is_no_space(&e) => {
                tracing::warn!("etcd is full (NOSPACE); waiting to create the queue");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    match args.partitions {
        Some(given) if given != queue => Err(PartitionsError::Mismatch(BadSetting(format!(
            "MQ_PARTITIONS={given} but the queue in etcd has {queue} partitions (fixed when it was created); start every process with MQ_PARTITIONS={queue}, or leave it unset"
        )))),
        _ => {
            args.partitions = Some(queue);
            Ok(queue)
        }
    }
}

/// Splits encoded messages into groups that each fit one Txn (op count and request bytes).
pub fn plan<'a>(limits: &QueueArgs, msgs: &'a [Encoded]) -> Vec<&'a [Encoded]> {
    let max_ops = limits.max_txn_ops as usize;
    let max_bytes = limits.max_request_bytes as usize - 4096;
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in msgs.iter().enumerate() {
        let size = m.key.len() + m.value.len() + PUT_OVERHEAD;
        if i > start && (i - start >= max_ops || bytes + size > max_bytes) {
            groups.push(&msgs[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < msgs.len() {
        groups.push(&msgs[start..]);
    }
    groups
}

/// Messages waiting in the queue (all partitions), by a count-only range request.
pub async fn queue_depth(client: &Client, keys: &Keys) -> Result<i64, EtcdError> {
    let opts = GetOptions::new().with_prefix().with_count_only();
    Ok(client
        .kv_client()
        .get(keys.queue_root(), Some(opts))
        .await
        .ctx("queue depth")?
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(n: usize, size: usize) -> Vec<Encoded> {
        (0..n)
            .map(|i| Encoded {
                key: format!("k{i}"),
                value: vec![0; size],
                records: 1,
            })
            .collect()
    }

    fn plan_of(limits: QueueArgs, msgs: &[Encoded]) -> Vec<usize> {
        plan(&limits, msgs).iter().map(|g| g.len()).collect()
    }

    #[test]
    fn groups_respect_ops_and_bytes() {
        let limits = QueueArgs {
            max_txn_ops: 128,
            max_request_bytes: 1_572_864,
            partitions: Some(4),
        };
        assert_eq!(plan_of(limits.clone(), &enc(300, 10)), vec![128, 128, 44]);
        let big = plan_of(limits, &enc(100, 100_000));
        assert!(big.iter().all(|&n| n * 100_040 < 1_572_864), "{big:?}");
        assert_eq!(big.iter().sum::<usize>(), 100);
    }

    #[test]
    fn envelope_key_covers_record_keys() {
        let r = TelemetryRecord {
            idempotency_key: "ab".into(),
            ..Default::default()
        };
        let a = envelope(vec![r.clone()], SCHEMA_VERSION);
        let b = envelope(vec![r], SCHEMA_VERSION);
        assert_ne!(a.id, b.id);
        assert_eq!(a.idempotency_key, b.idempotency_key);
    }
}
