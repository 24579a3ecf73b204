//! The store's write API: what the collector's commit puts, and what the maintainer deletes.

use etcd_client::{DeleteOptions, TxnOp};
use prost::Message as _;
use telemetry_proto::TelemetryRecord;

use crate::keys::{key_time_of, Keys};

/// `/telemetry/data/{host}/{gpu}/{time}_{sha256}`: every part is content, so equal content
/// means an equal key.
pub fn data_key(k: &Keys, r: &TelemetryRecord) -> String {
    k.data(
        &r.hostname,
        &r.gpu_id,
        r.timestamp_unix_nano,
        &r.idempotency_key,
    )
}

/// A record as stored: without its idempotency key, which is derived from the content (and is
/// the last part of its key), so storing it would only cost bytes on every write.
pub fn stored_bytes(r: &TelemetryRecord) -> Vec<u8> {
    let mut r = r.clone();
    r.idempotency_key.clear();
    r.encode_to_vec()
}

/// One operation deleting every sample of the GPU at `gpu_prefix` older than `cutoff`; etcd
/// answers how many it deleted.
pub fn expire_before(gpu_prefix: &str, cutoff: chrono::DateTime<chrono::Utc>) -> TxnOp {
    let end = format!("{gpu_prefix}{}", key_time_of(cutoff));
    TxnOp::delete(gpu_prefix, Some(DeleteOptions::new().with_range(end)))
}
