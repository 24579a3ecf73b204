//! The store's read API: stored telemetry is read by key range, one GPU at a time, from the
//! raw tier ([`scan`]) and the folded one ([`chunk_rows`]).

use etcd_client::{Client, GetOptions};
use telemetry_proto::TelemetryRecord;

use crate::etcd::{Context, EtcdError};
use crate::keys::key_time;

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
            let rec = super::decode(kv.value())?;
            Some((kv.key_str().ok()?.to_string(), rec))
        })
        .collect();
    Ok((entries, resp.more(), rev))
}

/// Up to `want` samples of one GPU's folded chunks (at `chunk_prefix`) whose raw-key suffix
/// `{time}_{sha256}` lies in `[from, to)`, in that order, read at `revision` (the raw read's,
/// so both tiers are one snapshot: a fold moves samples between them in one Txn).
///
/// A chunk's key is its window's end, so the first chunk that can hold `from` is the first
/// key after `from`'s time. Rows are in raw-key order already; only the rows returned, and
/// those at `from`'s own time (to place a cursor among them), are built and hashed.
pub async fn chunk_rows(
    client: &Client,
    chunk_prefix: &str,
    (from, to): (&str, &str),
    metric: Option<&str>,
    want: usize,
    revision: i64,
) -> Result<Vec<(String, TelemetryRecord)>, EtcdError> {
    let from_t = key_nanos(from).unwrap_or(i64::MIN);
    let to_t = key_nanos(to).unwrap_or(i64::MAX);
    let mut next = match from.get(..KEY_TIME_LEN) {
        Some(time) => format!("{chunk_prefix}{time}\0"),
        None => chunk_prefix.to_string(),
    }
    .into_bytes();
    let end = crate::keys::prefix_end(chunk_prefix);
    let mut out = Vec::new();
    while out.len() < want {
        let mut opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(1)
            .with_serializable();
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = client
            .kv_client()
            .get(next.clone(), Some(opts))
            .await
            .ctx("read chunks")?;
        let Some(kv) = resp.kvs().first() else {
            break;
        };
        next = [kv.key(), b"\0"].concat();
        let chunk = match super::chunk::Decoded::new(kv.value()) {
            Ok(c) => c,
            Err(e) => {
                // Never written by this pipeline; say so rather than fail every read of the GPU.
                tracing::error!(key = %String::from_utf8_lossy(kv.key()), error = %e, "unreadable chunk skipped");
                continue;
            }
        };
        for (i, &t) in chunk.times().iter().enumerate() {
            if t >= to_t {
                return Ok(out);
            }
            if t < from_t || metric.is_some_and(|m| m != chunk.metric(i)) {
                continue;
            }
            let r = chunk.identified(i);
            let suffix = format!("{}_{}", key_time(t), r.idempotency_key);
            if t == from_t && suffix.as_str() < from {
                continue;
            }
            out.push((suffix, r));
            if out.len() >= want {
                break;
            }
        }
    }
    Ok(out)
}

/// Length of a key time, `2025-07-18T20:42:34.000000000Z`.
const KEY_TIME_LEN: usize = 30;

/// The instant a key suffix starts with, if it starts with one.
fn key_nanos(suffix: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(suffix.get(..KEY_TIME_LEN)?)
        .ok()?
        .timestamp_nanos_opt()
}
