//! GPU identity: which UUID a host and index is, and which host and index a UUID is on.
//!
//! The first report wins and is written once (put-if-absent under the retention lease). A
//! later report that disagrees is a conflict: it is counted (`gpu_identity_conflicts`),
//! logged, and kept as an alias entry beside the registry entry, so both mappings stay
//! queryable and a pushed record can never re-map (and so hide) another GPU's data. Stored
//! data is keyed by host and index and is never touched here.

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
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
async fn first_writer(
    client: &Client,
    key: &str,
    value: &str,
    lease: i64,
) -> Result<String, EtcdError> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )])
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

/// Records the report's identity where it is the first, and judges it against earlier ones.
pub async fn check(
    client: &Client,
    keys: &Keys,
    hostname: &str,
    gpu_id: &str,
    uuid: &str,
    lease: i64,
) -> Result<Verdict, EtcdError> {
    if uuid.is_empty() {
        // Nothing to claim or to contradict.
        return Ok(Verdict {
            canonical_uuid: String::new(),
            conflict: false,
        });
    }
    let place = format!("{hostname}/{gpu_id}");
    let canonical =
        first_writer(client, &keys.identity_of_gpu(hostname, gpu_id), uuid, lease).await?;
    let owner = first_writer(client, &keys.identity_of_uuid(uuid), &place, lease).await?;
    let conflict = canonical != uuid || owner != place;
    if conflict {
        metrics::counter!("gpu_identity_conflicts").increment(1);
        tracing::warn!(
            hostname,
            gpu_id,
            uuid,
            registered_uuid = %canonical,
            uuid_registered_on = %owner,
            "GPU identity conflict: kept as an alias; neither mapping hides the other's data"
        );
    }
    Ok(Verdict {
        canonical_uuid: canonical,
        conflict,
    })
}
