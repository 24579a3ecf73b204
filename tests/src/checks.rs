//! Exactly-once checks: what was stored, compared with what was sent.

use std::collections::HashMap;
use std::path::Path;

use etcd_client::{Client, GetOptions};
use prost::Message as _;
use sha2::{Digest, Sha256};
use streamer::dcgm_csv::DcgmCsvReader;
use telemetry::proto::TelemetryRecord;
use telemetry::record::idempotency_key;

/// Every stored record under `{prefix}/telemetry/data/`, read page by page.
pub async fn stored_records(client: &Client, prefix: &str) -> Vec<TelemetryRecord> {
    let root = format!("{prefix}/telemetry/data/");
    let end = telemetry::keys::prefix_end(&root);
    let mut from = root.as_bytes().to_vec();
    let mut out = Vec::new();
    loop {
        let resp = client
            .clone()
            .get(
                from.clone(),
                Some(GetOptions::new().with_range(end.clone()).with_limit(5000)),
            )
            .await
            .expect("read stored data");
        for kv in resp.kvs() {
            out.push(TelemetryRecord::decode(kv.value()).expect("stored value decodes"));
        }
        match resp.kvs().last() {
            Some(kv) if resp.more() => {
                from = kv.key().to_vec();
                from.push(0);
            }
            _ => return out,
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
