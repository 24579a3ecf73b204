//! The store's read API: stored telemetry is read by key range, one GPU at a time.

use etcd_client::{Client, GetOptions};
use telemetry_proto::TelemetryRecord;

use crate::etcd::{Context, EtcdError};

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
