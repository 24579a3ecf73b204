//! The dead-letter queue: messages that failed `MQ_MAX_RETRIES` times, kept with their reason,
//! attempt count and original bytes, and the `collector dlq list|requeue` commands.

use crate::claim::{fence_compare, Fence};
use crate::commit::Claimed;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use telemetry::entries::DeadLetter;
use telemetry::etcd::{Context, EtcdError};
use telemetry::keys::Keys;

/// A dead letter for `msg`, keeping its original bytes so it can be requeued unchanged.
pub fn letter(
    fence: Fence,
    msg: &Claimed,
    payload: &[u8],
    reason: &str,
    attempts: u32,
    records: usize,
) -> DeadLetter {
    DeadLetter {
        message_id: msg.message_id.clone(),
        partition: fence.partition,
        reason: reason.to_string(),
        attempts,
        records,
        dead_at: chrono::Utc::now().to_rfc3339(),
        payload_hex: hex::encode(payload),
    }
}

/// Moves a message to the dead-letter area, fenced like a commit. False if the fence or the
/// message changed meanwhile (then nothing was written).
pub async fn bury(
    client: &Client,
    keys: &Keys,
    fence: Fence,
    msg: &Claimed,
    letter: &DeadLetter,
    state: Option<TxnOp>,
) -> Result<bool, EtcdError> {
    let mut ops = vec![
        TxnOp::put(
            keys.dead_letter(&msg.message_id),
            serde_json::to_vec(letter).unwrap_or_default(),
            None,
        ),
        TxnOp::delete(msg.key.as_str(), None),
        TxnOp::delete(keys.attempts(&msg.message_id), None),
    ];
    ops.extend(state);
    let txn = Txn::new()
        .when([
            fence_compare(keys, fence),
            Compare::mod_revision(msg.key.as_str(), CompareOp::Equal, msg.mod_revision),
        ])
        .and_then(ops);
    Ok(client
        .kv_client()
        .txn(txn)
        .await
        .ctx("dead-letter")?
        .succeeded())
}

/// Counts one more failed attempt at a message, fenced. Returns the new count.
pub async fn record_attempt(
    client: &Client,
    keys: &Keys,
    fence: Fence,
    msg: &Claimed,
) -> Result<u32, EtcdError> {
    let key = keys.attempts(&msg.message_id);
    let mut c = client.clone();
    let current = c.get(key.as_str(), None).await.ctx("read attempts")?;
    let n = current
        .kvs()
        .first()
        .and_then(|kv| kv.value_str().ok()?.parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    let txn = Txn::new()
        .when([fence_compare(keys, fence)])
        .and_then([TxnOp::put(key, n.to_string(), None)]);
    c.txn(txn).await.ctx("record attempt")?;
    Ok(n)
}

pub async fn list(client: &Client, keys: &Keys) -> Result<Vec<DeadLetter>, EtcdError> {
    let resp = client
        .kv_client()
        .get(
            keys.dead_letters_root(),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .ctx("list dead letters")?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect())
}

/// Dead-letters messages queued in a partition the queue does not have (at or above
/// `partitions`): no collector would ever claim them. Each move is one Txn that compares the
/// message's revision, so collectors sweeping at the same time move it once. Returns how many
/// it moved.
pub async fn sweep_stray_partitions(
    client: &Client,
    keys: &Keys,
    partitions: u16,
) -> Result<usize, EtcdError> {
    let from = keys.queue_partition(partitions);
    let opts = GetOptions::new()
        .with_range(telemetry::keys::prefix_end(&keys.queue_root()))
        .with_limit(64);
    let resp = client
        .kv_client()
        .get(from, Some(opts))
        .await
        .ctx("read stray partitions")?;
    let mut moved = 0;
    for kv in resp.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        let rest = key.strip_prefix(&keys.queue_root()).unwrap_or(key);
        let (partition, message_id) = rest.split_once('/').unwrap_or((rest, rest));
        let letter = DeadLetter {
            message_id: message_id.to_string(),
            partition: partition.parse().unwrap_or(u16::MAX),
            reason: format!(
                "queued in partition {partition:?}, but the queue has {partitions} partitions (0..{}): no collector claims it",
                partitions - 1
            ),
            attempts: 0,
            records: 0,
            dead_at: chrono::Utc::now().to_rfc3339(),
            payload_hex: hex::encode(kv.value()),
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([
                TxnOp::put(
                    keys.dead_letter(message_id),
                    serde_json::to_vec(&letter).unwrap_or_default(),
                    None,
                ),
                TxnOp::delete(key, None),
            ]);
        if client
            .kv_client()
            .txn(txn)
            .await
            .ctx("dead-letter a stray")?
            .succeeded()
        {
            tracing::warn!(%key, reason = %letter.reason, "dead-lettered a message no collector would claim");
            moved += 1;
        }
    }
    Ok(moved)
}

/// Puts dead letters back on the queue and removes them from the dead-letter area, in one Txn
/// each: into their own partition, or, for one the queue does not have, into a partition it
/// has. Returns the ids requeued.
pub async fn requeue(
    client: &Client,
    keys: &Keys,
    partitions: u16,
    ids: &[String],
) -> Result<Vec<String>, EtcdError> {
    let mut done = Vec::new();
    for letter in list(client, keys).await? {
        if !ids.is_empty() && !ids.contains(&letter.message_id) {
            continue;
        }
        let Ok(payload) = hex::decode(&letter.payload_hex) else {
            tracing::warn!(id = %letter.message_id, "dead letter has a corrupt payload; left in place");
            continue;
        };
        let dead_key = keys.dead_letter(&letter.message_id);
        let txn = Txn::new()
            .when([Compare::version(dead_key.as_str(), CompareOp::Greater, 0)])
            .and_then([
                TxnOp::put(
                    keys.queue_message(letter.partition % partitions, &letter.message_id),
                    payload,
                    None,
                ),
                TxnOp::delete(dead_key, None),
            ]);
        if client
            .kv_client()
            .txn(txn)
            .await
            .ctx("requeue")?
            .succeeded()
        {
            done.push(letter.message_id);
        }
    }
    Ok(done)
}
