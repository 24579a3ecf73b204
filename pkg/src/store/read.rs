//! The store's read API: stored telemetry is read by key range, one GPU at a time, from the
//! raw tier ([`scan`]) and the folded one ([`chunk_rows`]).

use etcd_client::{Client, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use telemetry_proto::TelemetryRecord;

use super::cache::Chunks;
use crate::etcd::{Context, EtcdError};
use crate::keys::data_suffix_at;

/// Reads stored telemetry of one GPU in `[start_key, end_key)`, oldest first.
pub async fn scan(
    client: &Client,
    start_key: &str,
    end_key: &str,
    limit: i64,
    revision: i64,
) -> Result<(Vec<(String, TelemetryRecord)>, bool, i64), EtcdError> {
    let resp = client
        .kv_client()
        .get(start_key, Some(read_opts(end_key, limit, revision)))
        .await
        .ctx("read telemetry")?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(revision);
    Ok((decoded(resp.kvs()), resp.more(), rev))
}

/// How every telemetry read asks: serializable, served by the member we talk to without a
/// read-index round trip (a page pinned to a revision is consistent either way; a first page
/// may trail the leader by a heartbeat on a follower, which is fine for telemetry; a Txn of
/// serializable ranges is serializable too), at `revision` when one is given.
pub(super) fn read_opts(end: impl Into<Vec<u8>>, limit: i64, revision: i64) -> GetOptions {
    let opts = GetOptions::new()
        .with_range(end)
        .with_limit(limit)
        .with_serializable();
    if revision > 0 {
        opts.with_revision(revision)
    } else {
        opts
    }
}

fn decoded(kvs: &[KeyValue]) -> Vec<(String, TelemetryRecord)> {
    kvs.iter()
        .filter_map(|kv| {
            let rec = super::decode(kv.value())?;
            Some((kv.key_str().ok()?.to_string(), rec))
        })
        .collect()
}

/// The first reads of a GPU's listing, both tiers in one serializable Txn: one round trip and
/// one snapshot. Later pages of either tier, when needed, are read at its revision.
#[derive(Debug)]
pub struct FirstReads {
    /// The raw tier's first page, as [`scan`] returns it.
    pub raw: (Vec<(String, TelemetryRecord)>, bool),
    /// The first chunk from [`chunk_rows`]'s starting point, if any.
    pub chunk: Option<KeyValue>,
    /// The revision both were read at.
    pub revision: i64,
}

/// Reads `[start_key, end_key)` of the raw tier (`limit` keys) and the first chunk that can
/// hold `from` under `chunk_prefix`, at `revision` (0: the latest).
pub async fn first_reads(
    client: &Client,
    (start_key, end_key, limit): (&str, &str, i64),
    (chunk_prefix, from): (&str, &str),
    revision: i64,
) -> Result<FirstReads, EtcdError> {
    let ops = [
        TxnOp::get(start_key, Some(read_opts(end_key, limit, revision))),
        TxnOp::get(
            chunk_start(chunk_prefix, from),
            Some(read_opts(
                crate::keys::prefix_end(chunk_prefix),
                1,
                revision,
            )),
        ),
    ];
    let resp = client
        .kv_client()
        .txn(Txn::new().and_then(ops))
        .await
        .ctx("read telemetry")?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(revision);
    let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
        TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    let (raw, chunk) = (gets.next(), gets.next());
    Ok(FirstReads {
        raw: raw.map_or((Vec::new(), false), |g| (decoded(g.kvs()), g.more())),
        chunk: chunk.and_then(|g| g.kvs().first().cloned()),
        revision: if revision > 0 { revision } else { rev },
    })
}

/// Where [`chunk_rows`] starts reading: the first chunk whose window ends after `from`'s time.
pub(super) fn chunk_start(chunk_prefix: &str, from: &str) -> Vec<u8> {
    match from.get(..KEY_TIME_LEN) {
        Some(time) => format!("{chunk_prefix}{time}\0"),
        None => chunk_prefix.to_string(),
    }
    .into_bytes()
}

/// Up to `want` samples of one GPU's folded chunks (at `chunk_prefix`) whose raw-key suffix
/// `{time}_{sha256}` lies in `[from, to)`, in that order, read at `revision` (the raw read's,
/// so both tiers are one snapshot: a fold moves samples between them in one Txn). `first` is
/// the first chunk when [`first_reads`] has read it already (`Some(None)`: there is none).
/// Chunks are decoded through `chunks`, which shares that work between reads of one window.
///
/// A chunk's key is its window's end, so the first chunk that can hold `from` is the first
/// key after `from`'s time. Rows are in raw-key order already; only the rows returned, and
/// those at `from`'s own time (to place a cursor among them), are built and hashed.
pub async fn chunk_rows(
    (client, chunks): (&Client, &Chunks),
    chunk_prefix: &str,
    (from, to): (&str, &str),
    metric: Option<&str>,
    want: usize,
    revision: i64,
    mut first: Option<Option<KeyValue>>,
) -> Result<Vec<(String, TelemetryRecord)>, EtcdError> {
    let from_t = key_nanos(from).unwrap_or(i64::MIN);
    let to_t = key_nanos(to).unwrap_or(i64::MAX);
    let mut next = chunk_start(chunk_prefix, from);
    let end = crate::keys::prefix_end(chunk_prefix);
    let mut out = Vec::with_capacity(want);
    // Rows come ten metrics to an instant: format each instant's key time once.
    let mut key_time = (i64::MIN, String::new());
    while out.len() < want {
        let read = match first.take() {
            Some(kv) => kv,
            None => {
                let resp = client
                    .kv_client()
                    .get(next.clone(), Some(read_opts(end.clone(), 1, revision)))
                    .await
                    .ctx("read chunks")?;
                resp.kvs().first().cloned()
            }
        };
        let Some(kv) = read else {
            break;
        };
        next = [kv.key(), b"\0"].concat();
        let chunk = match chunks.decoded(&kv) {
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
            if key_time.0 != t {
                key_time = (t, crate::keys::key_time(t));
            }
            let suffix = data_suffix_at(&key_time.1, &r.idempotency_key);
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
