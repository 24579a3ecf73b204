//! GPU identity: which UUID a host and index is, and which host and index a UUID is on.
//!
//! The first report wins and is written once (put-if-absent; the storage maintainer deletes it
//! with the registry entry once the GPU has nothing stored, `storage::retention`). A
//! later report that disagrees is a conflict: it is counted (`gpu_identity_conflicts`),
//! logged, and kept as an alias entry beside the registry entry, so both mappings stay
//! queryable and a pushed record can never re-map (and so hide) another GPU's data. Stored
//! data is keyed by host and index and is never touched here.

use std::collections::HashMap;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use telemetry::etcd::{Context, EtcdError};
use telemetry::keys::Keys;

/// What the registry should write for one report of (host, index, uuid).
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The UUID of the host and index's registry entry (the first one reported).
    pub canonical_uuid: String,
    /// True when this report disagrees with an earlier one, either way round.
    pub conflict: bool,
}

/// Puts `value` at `key` unless the key exists; returns the value the key holds afterwards.
async fn first_writer(client: &Client, key: &str, value: &str) -> Result<String, EtcdError> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, None)])
        .or_else([TxnOp::get(key, None)]);
    let resp = client
        .kv_client()
        .txn(txn)
        .await
        .ctx("record GPU identity")?;
    if resp.succeeded() {
        return Ok(value.to_string());
    }
    Ok(resp
        .op_responses()
        .into_iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| kv.value_str().unwrap_or("").to_string()),
            _ => None,
        })
        .unwrap_or_else(|| value.to_string()))
}

/// One report of a GPU: its host, index and UUID.
pub type Report<'a> = (&'a str, &'a str, &'a str);

/// Records each report's identity where it is the first, and judges it against earlier ones.
/// A handful of Txns for the whole batch, whatever its size: one read of every identity key
/// involved, one put-if-absent of the missing ones (per key only if another collector raced us).
pub async fn check(
    client: &Client,
    keys: &Keys,
    reports: &[Report<'_>],
) -> Result<Vec<Verdict>, EtcdError> {
    // (key, the value this batch would write there)
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (host, gpu, uuid) in reports.iter().filter(|r| !r.2.is_empty()) {
        wanted.push((keys.identity_of_gpu(host, gpu), uuid.to_string()));
        wanted.push((keys.identity_of_uuid(uuid), format!("{host}/{gpu}")));
    }
    let mut held: HashMap<String, String> = HashMap::new();
    for chunk in wanted.chunks(MAX_OPS) {
        let txn = Txn::new().and_then(
            chunk
                .iter()
                .map(|(k, _)| TxnOp::get(k.as_str(), None))
                .collect::<Vec<_>>(),
        );
        let resp = client
            .kv_client()
            .txn(txn)
            .await
            .ctx("read GPU identities")?;
        for r in resp.op_responses() {
            if let TxnOpResponse::Get(g) = r {
                for kv in g.kvs() {
                    held.insert(
                        kv.key_str().unwrap_or("").to_string(),
                        kv.value_str().unwrap_or("").to_string(),
                    );
                }
            }
        }
    }
    let mut missing: Vec<&(String, String)> = Vec::new();
    for w in &wanted {
        if !held.contains_key(&w.0) && !missing.iter().any(|m| m.0 == w.0) {
            missing.push(w);
        }
    }
    for chunk in missing.chunks(MAX_OPS / 2) {
        let txn = Txn::new()
            .when(
                chunk
                    .iter()
                    .map(|(k, _)| Compare::create_revision(k.as_str(), CompareOp::Equal, 0))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                chunk
                    .iter()
                    .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                    .collect::<Vec<_>>(),
            );
        let won = client
            .kv_client()
            .txn(txn)
            .await
            .ctx("record GPU identities")?
            .succeeded();
        for (k, v) in chunk {
            let value = if won {
                v.clone()
            } else {
                first_writer(client, k, v).await?
            };
            held.insert(k.clone(), value);
        }
    }
    Ok(reports
        .iter()
        .map(|(host, gpu, uuid)| {
            if uuid.is_empty() {
                // Nothing to claim or to contradict.
                return Verdict { canonical_uuid: String::new(), conflict: false };
            }
            let place = format!("{host}/{gpu}");
            let canonical = held.get(&keys.identity_of_gpu(host, gpu)).cloned().unwrap_or_else(|| uuid.to_string());
            let owner = held.get(&keys.identity_of_uuid(uuid)).cloned().unwrap_or_else(|| place.clone());
            let conflict = canonical != *uuid || owner != place;
            if conflict {
                metrics::counter!("gpu_identity_conflicts").increment(1);
                tracing::warn!(
                    hostname = host,
                    gpu_id = gpu,
                    uuid,
                    registered_uuid = %canonical,
                    uuid_registered_on = %owner,
                    "GPU identity conflict: kept as an alias; neither mapping hides the other's data"
                );
            }
            Verdict { canonical_uuid: canonical, conflict }
        })
        .collect())
}

/// Operations per Txn (etcd's default limit).
const MAX_OPS: usize = 128;
