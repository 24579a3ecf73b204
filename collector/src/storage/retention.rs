//! Retention by deletion: what is older than `TELEMETRY_RETENTION` (samples, registry entries
//! of GPUs with nothing left, refused records) or `MESSAGE_STATE_TTL` (message states) is
//! deleted by the maintainer, with one fenced `DeleteRange` per GPU and area.
//!
//! Why not leases: etcd checks every key already on a lease at each put with that lease, for
//! any user without its root role (docs/security.md), so a shared retention lease makes each
//! commit cost as much as the store holds. Deletion needs no lease and no root role, is
//! counted (`samples_expired{reason="retention"}`), and keys by sample time make it one
//! operation per GPU.
//!
//! Samples expire by their own time, as in Prometheus: older than the retention before the
//! newest stored sample, or before now if that is earlier (so a replayed file is kept, and a
//! clock in the future cannot expire the fleet). Every collector refuses samples older than the
//! published cutoff, so a sample deleted here cannot be stored again by a replay.

use std::time::Duration;

use chrono::{DateTime, Utc};
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use telemetry::entries::GpuInfo;
use telemetry::etcd::{Context, EtcdError};
use telemetry::keys::{prefix_end, Keys};

use super::expire::{self, Span};

/// What one sweep did.
#[derive(Debug, Default)]
pub(super) struct Swept {
    /// Samples are refused and deleted before this (Unix ns); 0 with nothing stored.
    pub(super) cutoff: i64,
    pub(super) samples: u64,
    pub(super) gpus_forgotten: u64,
    pub(super) invalid: u64,
    pub(super) states: u64,
}

/// How often a sweep runs: a twenty-fourth of the retention (as the old time-bucket leases'
/// width), between one second and a minute.
pub(super) fn every(retention: Duration) -> Duration {
    (retention / 24).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The sample cutoff for a store whose newest sample is `newest`.
pub(super) fn cutoff(newest: DateTime<Utc>, now: DateTime<Utc>, retention: Duration) -> i64 {
    let keep = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    newest
        .min(now)
        .checked_sub_signed(keep)
        .and_then(|t| t.timestamp_nanos_opt())
        .unwrap_or(i64::MIN)
}

/// One sweep under `fence`; `None` when the fence no longer holds. Samples are deleted only
/// below `published`, the cutoff of the previous sweep, which every collector has had a sweep's
/// time to learn and refuse below (`i64::MIN`: none yet, so nothing is deleted); the new cutoff
/// is returned for publishing.
pub(super) async fn sweep(
    client: &Client,
    keys: &Keys,
    fence: &[Compare],
    (retention, states_kept): (Duration, Duration),
    published: i64,
) -> Result<Option<Swept>, EtcdError> {
    let mut swept = Swept::default();
    let gpus = expire::gpu_prefixes(client, keys).await?;
    let extents = expire::extents(client, keys, &gpus).await?;
    let now = Utc::now();
    if let Some((oldest, newest)) = expire::overall(&extents) {
        swept.cutoff = cutoff(newest, now, retention);
        let below = published.min(swept.cutoff);
        let before = DateTime::from_timestamp_nanos(below);
        if oldest < before {
            let old: Vec<String> = gpus
                .iter()
                .zip(&extents)
                .filter(|(_, e)| e.is_some_and(|(lo, _)| lo < before))
                .map(|(g, _)| g.clone())
                .collect();
            let Some(n) = expire::before(client, keys, fence, &old, before).await? else {
                return Ok(None);
            };
            swept.samples = n;
            // The fold markers of the windows whose chunks went.
            let folded = keys.folded_root();
            let until = telemetry::keys::key_time_of(before);
            if delete_counted(client, fence, &folded, &until)
                .await?
                .is_none()
            {
                return Ok(None);
            }
        }
        for (gpu, extent) in gpus.iter().zip(&extents) {
            if below == i64::MIN || !gone_by(extent, before) {
                continue;
            }
            match forget(client, keys, fence, gpu, below).await? {
                Some(true) => swept.gpus_forgotten += 1,
                Some(false) => {}
                None => return Ok(None),
            }
        }
    }
    let Some(n) = delete_ids_before(client, fence, &keys.invalid_root(), now, retention).await?
    else {
        return Ok(None);
    };
    swept.invalid = n;
    if !states_kept.is_zero() {
        let root = keys.message_state("");
        let Some(n) = delete_ids_before(client, fence, &root, now, states_kept).await? else {
            return Ok(None);
        };
        swept.states = n;
    }
    Ok(Some(swept))
}

/// Whether a GPU's every sample is older than `cutoff` (so the sweep left it nothing).
fn gone_by(extent: &Option<Span>, cutoff: DateTime<Utc>) -> bool {
    match extent {
        Some((_, newest)) => *newest <= cutoff,
        None => true,
    }
}

/// Deletes the keys under `root` that sort before `root` + `below`, under `fence`; `None`
/// when the fence no longer holds, else how many.
async fn delete_counted(
    client: &Client,
    fence: &[Compare],
    root: &str,
    below: &str,
) -> Result<Option<u64>, EtcdError> {
    let op = TxnOp::delete(
        root,
        Some(DeleteOptions::new().with_range(format!("{root}{below}"))),
    );
    let resp = client
        .kv_client()
        .txn(Txn::new().when(fence.to_vec()).and_then([op]))
        .await
        .ctx("delete expired keys")?;
    if !resp.succeeded() {
        return Ok(None);
    }
    Ok(Some(
        resp.op_responses()
            .into_iter()
            .map(|r| match r {
                etcd_client::TxnOpResponse::Delete(d) => d.deleted().max(0) as u64,
                _ => 0,
            })
            .sum(),
    ))
}

/// Deletes the entries under `root`, keyed by ULID, made more than `kept` before `now`.
async fn delete_ids_before(
    client: &Client,
    fence: &[Compare],
    root: &str,
    now: DateTime<Utc>,
    kept: Duration,
) -> Result<Option<u64>, EtcdError> {
    let ms = (now.timestamp_millis() as u64).saturating_sub(kept.as_millis() as u64);
    let below = ulid::Ulid::from_parts(ms, 0).to_string();
    delete_counted(client, fence, root, &below).await
}

/// Forgets a GPU with no samples left: its registry entry, its aliases, and the identities
/// that name it, in one fenced Txn that holds only while the GPU still has nothing stored (a
/// GPU that reports again meanwhile keeps them). An entry whose last reading is not older
/// than `cutoff` is kept: a new GPU's entry is written just before its first samples.
/// `Some(false)` when the GPU was kept.
async fn forget(
    client: &Client,
    keys: &Keys,
    fence: &[Compare],
    data_gpu: &str,
    cutoff: i64,
) -> Result<Option<bool>, EtcdError> {
    let Some(chunks) = keys.chunks_of_data_gpu(data_gpu) else {
        return Ok(Some(false));
    };
    let Some((host, gpu)) = keys.place_of_data_gpu(data_gpu) else {
        return Ok(Some(false));
    };
    let entry = keys.gpu(host, gpu);
    let aliases = format!("{entry}@");
    let mut kv = client.kv_client();
    let read = kv
        .txn(Txn::new().and_then([
            TxnOp::get(entry.as_str(), None),
            TxnOp::get(aliases.as_str(), Some(GetOptions::new().with_prefix())),
        ]))
        .await
        .ctx("read a GPU to forget")?;
    let infos: Vec<GpuInfo> = read
        .op_responses()
        .into_iter()
        .filter_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => Some(g.kvs().to_vec()),
            _ => None,
        })
        .flatten()
        .filter_map(|kv| serde_json::from_slice::<GpuInfo>(kv.value()).ok())
        .collect();
    let recent = infos
        .iter()
        .any(|i| telemetry::record::parse_timestamp(&i.last_seen).map_or(true, |t| t >= cutoff));
    if recent {
        return Ok(Some(false));
    }
    let uuids: Vec<&str> = infos
        .iter()
        .map(|i| i.uuid.as_str())
        .filter(|u| !u.is_empty())
        .collect();
    let nothing_under = |prefix: &str| {
        Compare::create_revision(prefix, CompareOp::Equal, 0).with_range(prefix_end(prefix))
    };
    let mut when = fence.to_vec();
    when.push(nothing_under(data_gpu));
    when.push(nothing_under(&chunks));
    let place = format!("{host}/{gpu}");
    let mut ops = vec![
        TxnOp::delete(entry.as_str(), None),
        TxnOp::delete(aliases.as_str(), Some(DeleteOptions::new().with_prefix())),
        TxnOp::delete(keys.identity_of_gpu(host, gpu), None),
    ];
    // A UUID's identity goes only if it names this GPU: an alias's UUID may be another's.
    ops.extend(uuids.iter().map(|u| {
        let key = keys.identity_of_uuid(u);
        TxnOp::txn(
            Txn::new()
                .when([Compare::value(
                    key.as_str(),
                    CompareOp::Equal,
                    place.as_str(),
                )])
                .and_then([TxnOp::delete(key.as_str(), None)]),
        )
    }));
    let resp = kv
        .txn(Txn::new().when(when).and_then(ops))
        .await
        .ctx("forget a GPU")?;
    if resp.succeeded() {
        return Ok(Some(true));
    }
    // Either the fence or the emptiness failed: tell which.
    let fenced = kv
        .txn(Txn::new().when(fence.to_vec()))
        .await
        .ctx("check the maintainer's fence")?
        .succeeded();
    Ok(fenced.then_some(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_cutoff_follows_the_newest_sample_but_never_the_future() {
        let week = Duration::from_secs(7 * 86_400);
        let now = t("2026-12-06T00:00:00Z");
        // A replayed file from last year is kept whole.
        let old = t("2025-07-18T13:42:33Z");
        assert_eq!(
            cutoff(old, now, week),
            t("2025-07-11T13:42:33Z").timestamp_nanos_opt().unwrap()
        );
        // A clock in the future counts as now.
        let future = t("2030-01-01T00:00:00Z");
        assert_eq!(
            cutoff(future, now, week),
            t("2026-11-29T00:00:00Z").timestamp_nanos_opt().unwrap()
        );
    }

    #[test]
    fn sweeps_run_a_twenty_fourth_of_the_retention_apart_within_bounds() {
        assert_eq!(
            every(Duration::from_secs(7 * 86_400)),
            Duration::from_secs(60)
        );
        assert_eq!(every(Duration::from_secs(240)), Duration::from_secs(10));
        assert_eq!(every(Duration::from_secs(2)), Duration::from_secs(1));
    }
}
