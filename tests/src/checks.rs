//! Exactly-once checks: what was stored, compared with what was sent.

use std::collections::HashMap;
use std::path::Path;

use etcd_client::{Client, GetOptions};
use prost::Message as _;
use sha2::{Digest, Sha256};
use streamer::dcgm_csv::DcgmCsvReader;
use telemetry::proto::TelemetryRecord;
use telemetry::record::idempotency_key;
use telemetry::store::chunk::Decoded;

/// Every stored record under `{prefix}`, raw and folded, read page by page at one revision
/// (a fold moves samples between the tiers in one Txn, so one snapshot counts each once).
pub async fn stored_records(client: &Client, prefix: &str) -> Vec<TelemetryRecord> {
    let mut out = Vec::new();
    let revision = each_kv(client, &format!("{prefix}/telemetry/data/"), 0, |v| {
        out.push(TelemetryRecord::decode(v).expect("stored value decodes"))
    })
    .await
    .expect("read stored data");
    each_kv(
        client,
        &format!("{prefix}/telemetry/chunks/"),
        revision,
        |v| {
            let chunk = Decoded::new(v).expect("stored chunk decodes");
            out.extend((0..chunk.len()).map(|i| chunk.identified(i)));
        },
    )
    .await
    .expect("read stored chunks");
    out
}

/// How many samples are stored under a data root (`…/telemetry/data/`): its raw keys plus
/// the samples of the chunks beside it (`…/telemetry/chunks/`), at one revision; -1 when etcd
/// cannot answer (like `services::count`, for polling through an outage).
pub async fn stored(client: &Client, data_root: &str) -> i64 {
    let chunks_root = data_root.replace("/telemetry/data/", "/telemetry/chunks/");
    let Ok(raw) = client
        .clone()
        .get(
            data_root,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
    else {
        return -1;
    };
    let revision = raw.header().map_or(0, |h| h.revision());
    let mut folded = 0;
    let read = each_kv(client, &chunks_root, revision, |v| {
        folded += telemetry::store::chunk::count(v).expect("stored chunk decodes") as i64
    })
    .await;
    match read {
        Ok(_) => raw.count() + folded,
        Err(_) => -1,
    }
}

/// Calls `f` with every value under `root` at `revision` (0: the latest); returns the revision.
async fn each_kv(
    client: &Client,
    root: &str,
    revision: i64,
    mut f: impl FnMut(&[u8]),
) -> Result<i64, etcd_client::Error> {
    let end = telemetry::keys::prefix_end(root);
    let mut from = root.as_bytes().to_vec();
    let mut revision = revision;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(500);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = client.clone().get(from.clone(), Some(opts)).await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            f(kv.value());
        }
        match resp.kvs().last() {
            Some(kv) if resp.more() => {
                from = kv.key().to_vec();
                from.push(0);
            }
            _ => return Ok(revision),
        }
    }
}

/// Content checksum: SHA-256 over the sorted idempotency keys (each recomputed from content).
pub fn checksum<'a>(records: impl IntoIterator<Item = &'a TelemetryRecord>) -> (usize, String) {
    let mut keys: Vec<String> = records.into_iter().map(idempotency_key).collect();
    keys.sort();
    let mut h = Sha256::new();
    for k in &keys {
        h.update(k.as_bytes());
    }
    (keys.len(), hex::encode(h.finalize()))
}

/// The valid records of a CSV file.
pub fn csv_records(path: &Path) -> Vec<TelemetryRecord> {
    let file = std::fs::File::open(path).expect("open csv");
    DcgmCsvReader::new(std::io::BufReader::new(file))
        .expect("csv header")
        .filter_map(Result::ok)
        .collect()
}

/// Keys stored more than once (should be empty).
pub fn doubles(records: &[TelemetryRecord]) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in records {
        *seen.entry(idempotency_key(r)).or_default() += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect()
}
