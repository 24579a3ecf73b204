//! Expiring the oldest samples, to bring the store back under its budget.
//!
//! Samples are keyed by GPU, then time, so "the oldest first" is one `DeleteRange` per GPU
//! and tier below a cutoff time: raw samples before it, and the chunks of the windows that end
//! by it. etcd counts the raw keys each one deleted and returns the chunks, which say how many
//! samples they held: the count is exact. The
//! cutoff is the oldest sample's time plus a share of the stored time span, the share of the
//! space to free; a round that frees too little is followed by another one, a round later.

use chrono::{DateTime, Utc};
use etcd_client::{
    Client, Compare, DeleteOptions, GetOptions, KeyValue, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use telemetry::etcd::{Context, EtcdError};
use telemetry::keys::{key_time_of, Keys};
use telemetry::store::{time_of, write::expire_before};

/// etcd's default limit of operations per Txn, less the fence.
pub(super) const OPS_PER_TXN: usize = 127;

/// What one expiry did.
#[derive(Debug, Default)]
pub(super) struct Expired {
    pub(super) samples: u64,
    pub(super) from: Option<DateTime<Utc>>,
    pub(super) before: Option<DateTime<Utc>>,
}

/// The key prefix of every GPU with stored samples (the registry's entries, not its aliases).
pub(super) async fn gpu_prefixes(client: &Client, keys: &Keys) -> Result<Vec<String>, EtcdError> {
    let root = keys.gpus_root();
    let resp = client
        .kv_client()
        .get(
            root.as_str(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .ctx("list GPUs")?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok()?.strip_prefix(root.as_str()))
        .filter(|rest| !rest.contains('@'))
        .filter_map(|rest| rest.split_once('/'))
        .map(|(host, gpu)| keys.data_gpu(host, gpu))
        .collect())
}

/// The first and the last key (keys only, with their revisions) under each prefix: one Txn of
/// two range reads per prefix, 63 prefixes a Txn.
pub(super) async fn first_and_last<P: AsRef<str>>(
    client: &Client,
    prefixes: &[P],
) -> Result<Vec<(Option<KeyValue>, Option<KeyValue>)>, EtcdError> {
    let mut out = Vec::with_capacity(prefixes.len());
    for batch in prefixes.chunks(OPS_PER_TXN / 2) {
        let ops: Vec<TxnOp> = batch
            .iter()
            .flat_map(|p| {
                [SortOrder::Ascend, SortOrder::Descend].map(|order| {
                    let opts = GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(1)
                        .with_sort(SortTarget::Key, order);
                    TxnOp::get(p.as_ref(), Some(opts))
                })
            })
            .collect();
        let resp = client
            .kv_client()
            .txn(Txn::new().and_then(ops))
            .await
            .ctx("read first and last keys")?;
        let mut kvs = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        for _ in batch {
            out.push((kvs.next().flatten(), kvs.next().flatten()));
        }
    }
    Ok(out)
}

/// Each GPU's oldest and newest sample times, raw or folded (a chunk counts at its window's
/// end); `None` for a GPU with nothing stored.
pub(super) async fn extents(
    client: &Client,
    keys: &Keys,
    gpus: &[String],
) -> Result<Vec<Option<Span>>, EtcdError> {
    // Each GPU's raw prefix, then its chunks' prefix, with the GPU's index.
    let tiers: Vec<(usize, String)> = gpus
        .iter()
        .enumerate()
        .flat_map(|(i, g)| {
            let chunks = keys.chunks_of_data_gpu(g).map(|c| (i, c));
            std::iter::once((i, g.clone())).chain(chunks)
        })
        .collect();
    let prefixes: Vec<&str> = tiers.iter().map(|(_, p)| p.as_str()).collect();
    let ends = first_and_last(client, &prefixes).await?;
    let mut out: Vec<Option<Span>> = vec![None; gpus.len()];
    for ((i, prefix), pair) in tiers.iter().zip(ends) {
        for kv in [pair.0, pair.1].into_iter().flatten() {
            let Some(t) = time_of(kv.key(), prefix).or_else(|| chunk_end_of(kv.key(), prefix))
            else {
                continue;
            };
            let slot = &mut out[*i];
            *slot = Some(slot.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))));
        }
    }
    Ok(out)
}

/// The oldest and the newest sample time of a GPU, or of the whole store.
pub(super) type Span = (DateTime<Utc>, DateTime<Utc>);

/// The span of the whole store.
pub(super) fn overall(extents: &[Option<Span>]) -> Option<Span> {
    extents
        .iter()
        .flatten()
        .copied()
        .reduce(|(lo, hi), (l, h)| (lo.min(l), hi.max(h)))
}

/// Deletes, on every GPU, the samples older than the oldest plus `share` of the span
/// (at least one second of it), under `fence`. `None` when the fence no longer holds.
pub(super) async fn oldest(
    client: &Client,
    keys: &Keys,
    fence: &[Compare],
    share: f64,
) -> Result<Option<Expired>, EtcdError> {
    let gpus = gpu_prefixes(client, keys).await?;
    let Some((lo, hi)) = overall(&extents(client, keys, &gpus).await?) else {
        return Ok(Some(Expired::default()));
    };
    let width = ((hi - lo).num_nanoseconds().unwrap_or(i64::MAX) as f64 * share) as i64;
    let cutoff = lo + chrono::Duration::nanoseconds(width.max(1_000_000_000));
    let Some(samples) = before(client, keys, fence, &gpus, cutoff).await? else {
        return Ok(None);
    };
    Ok(Some(Expired {
        samples,
        from: Some(lo),
        before: Some(cutoff),
    }))
}

/// Deletes the samples of `gpus` older than `cutoff` (raw, and the chunks of windows that end
/// by it) under `fence`, and counts them. `None` when the fence no longer holds.
pub(super) async fn before(
    client: &Client,
    keys: &Keys,
    fence: &[Compare],
    gpus: &[String],
    cutoff: DateTime<Utc>,
) -> Result<Option<u64>, EtcdError> {
    let mut samples = 0;
    for batch in gpus.chunks(OPS_PER_TXN / 2) {
        let ops: Vec<TxnOp> = batch
            .iter()
            .flat_map(|p| {
                let chunks = keys.chunks_of_data_gpu(p);
                [
                    Some(expire_before(p, cutoff)),
                    chunks.map(|c| chunks_ending_by(&c, cutoff)),
                ]
            })
            .flatten()
            .collect();
        let txn = Txn::new().when(fence.to_vec()).and_then(ops);
        let resp = client.kv_client().txn(txn).await.ctx("expire samples")?;
        if !resp.succeeded() {
            return Ok(None);
        }
        for r in resp.op_responses() {
            let TxnOpResponse::Delete(d) = r else {
                continue;
            };
            if d.prev_kvs().is_empty() {
                samples += d.deleted().max(0) as u64;
            }
            for kv in d.prev_kvs() {
                samples += telemetry::store::chunk::count(kv.value()).unwrap_or(0);
            }
        }
    }
    Ok(Some(samples))
}

/// The window end a chunk key under `chunk_prefix` names.
fn chunk_end_of(key: &[u8], chunk_prefix: &str) -> Option<DateTime<Utc>> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(chunk_prefix)?;
    DateTime::parse_from_rfc3339(rest)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// One operation deleting the chunks under `chunk_prefix` whose windows end by `cutoff`,
/// returning them so that their samples can be counted.
fn chunks_ending_by(chunk_prefix: &str, cutoff: DateTime<Utc>) -> TxnOp {
    let end = format!("{chunk_prefix}{}\0", key_time_of(cutoff));
    TxnOp::delete(
        chunk_prefix,
        Some(DeleteOptions::new().with_range(end).with_prev_key()),
    )
}
