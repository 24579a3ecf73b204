//! Folding: each GPU's samples of a closed window move from raw keys into one chunk
//! (`telemetry::store::chunk`), in one Txn per GPU and window (docs/storage.md, "Folding").
//!
//! The Txn is fenced three ways: the maintainer's leader key; the window's raw range, every key
//! of which must be unmodified since the fold read it (a range `Compare`, so a sample committed
//! after the read fails the Txn instead of being deleted unfolded); and the chunk key, which
//! must be as read (a late sample merged by another pass). It puts the chunk, deletes the raw
//! range and rewrites the window's fold marker, which the commits compare (`commit::folded`).
//! A maintainer killed before the Txn leaves the window as it was; after it, folded. Either
//! way the next maintainer finds the raw samples still there, or none.

use std::collections::HashMap;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use telemetry::etcd::{Context, EtcdError};
use telemetry::keys::{key_time, Keys};
use telemetry::proto::TelemetryRecord;
use telemetry::store::chunk::{self, Decoded};
use tokio::time::Instant;

use super::expire::{first_and_last, gpu_prefixes, OPS_PER_TXN};
use super::Windows;

/// Raw keys read per request while folding a window.
const PAGE: i64 = 2_000;
/// A chunk must fit one etcd request with room to spare (1.5 MiB by default).
const MAX_CHUNK_BYTES: usize = 1_000_000;

/// What one pass folded.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Folded {
    pub(super) samples: u64,
    pub(super) chunks: u64,
    /// Windows left for a later pass (the time budget ran out, or ingest still writes them).
    pub(super) deferred: u64,
}

/// One GPU's raw tier at a glance: its oldest sample's time, and its newest key's revision.
struct Glance {
    oldest: i64,
    newest: i64,
    newest_revision: i64,
}

/// Folds closed windows, GPU by GPU, until `deadline`.
pub(super) struct Folder<'a> {
    pub(super) client: &'a Client,
    pub(super) keys: &'a Keys,
    pub(super) fence: &'a [Compare],
    pub(super) windows: Windows,
    /// Windows ending at or before this (Unix ns) are closed by the clock.
    pub(super) closed_before: i64,
    /// Windows ending by this (the published retention cutoff, Unix ns) are left to the next
    /// sweep, which deletes them: folding them would be wasted.
    pub(super) expiring_by: i64,
    /// Each GPU's newest raw revision at the previous pass: a GPU that has not moved since is
    /// quiet, and its closed windows are folded even if no later sample came.
    pub(super) quiet: &'a mut HashMap<String, i64>,
}

impl Folder<'_> {
    pub(super) async fn pass(&mut self, deadline: Instant) -> Result<Folded, EtcdError> {
        let gpus = gpu_prefixes(self.client, self.keys).await?;
        let mut done = Folded::default();
        for batch in gpus.chunks(OPS_PER_TXN / 2) {
            let glances = self.glance(batch).await?;
            for (gpu, glance) in batch.iter().zip(glances) {
                let Some(g) = glance else { continue };
                let end = self.windows.end_of(g.oldest);
                let moved_on = g.newest >= end;
                let quiet =
                    self.quiet.insert(gpu.clone(), g.newest_revision) == Some(g.newest_revision);
                if end > self.closed_before || !(moved_on || quiet) || end <= self.expiring_by {
                    continue;
                }
                if Instant::now() >= deadline {
                    done.deferred += 1;
                    continue;
                }
                match self.fold(gpu, end).await? {
                    Some(samples) => {
                        done.samples += samples;
                        done.chunks += 1;
                    }
                    None => done.deferred += 1,
                }
            }
        }
        Ok(done)
    }

    /// The oldest and newest raw key of each GPU.
    async fn glance(&self, gpus: &[String]) -> Result<Vec<Option<Glance>>, EtcdError> {
        Ok(first_and_last(self.client, gpus)
            .await?
            .into_iter()
            .zip(gpus)
            .map(|((first, last), p)| {
                let (first, last) = (first?, last?);
                Some(Glance {
                    oldest: nanos_of(first.key(), p)?,
                    newest: nanos_of(last.key(), p)?,
                    newest_revision: last.mod_revision(),
                })
            })
            .collect())
    }

    /// Folds one GPU's window ending at `end`: the number of raw samples it removed, or `None`
    /// when the window changed under it (left for the next pass).
    async fn fold(&self, gpu: &str, end: i64) -> Result<Option<u64>, EtcdError> {
        let Some(chunk_key) = self.chunk_key(gpu, end) else {
            return Ok(None);
        };
        let from = format!("{gpu}{}", key_time(self.windows.start_of(end)));
        let to = format!("{gpu}{}", key_time(end));
        let Some((mut records, revision)) = self.read_raw(gpu, &from, &to).await? else {
            return Ok(None);
        };
        let chunk = self
            .client
            .kv_client()
            .get(
                chunk_key.as_str(),
                Some(GetOptions::new().with_revision(revision)),
            )
            .await
            .ctx("read chunk")?;
        let chunk_revision = chunk.kvs().first().map_or(0, |kv| kv.mod_revision());
        if let Some(kv) = chunk.kvs().first() {
            match Decoded::new(kv.value()) {
                Ok(c) => records.extend((0..c.len()).map(|i| c.identified(i))),
                Err(e) => {
                    tracing::error!(key = %chunk_key, error = %e, "unreadable chunk; window left unfolded");
                    return Ok(None);
                }
            }
        }
        // Rows in raw-key order, one per content hash (a replay that raced a fold is folded
        // away here).
        records.sort_by(|a, b| {
            (a.timestamp_unix_nano, &a.idempotency_key)
                .cmp(&(b.timestamp_unix_nano, &b.idempotency_key))
        });
        records.dedup_by(|a, b| a.idempotency_key == b.idempotency_key);
        let bytes = match chunk::fold(&records) {
            Ok(b) if b.len() <= MAX_CHUNK_BYTES => b,
            Ok(b) => {
                tracing::error!(gpu, end = %key_time(end), bytes = b.len(), "window too large for one chunk (shorten STORAGE_FOLD_WINDOW); left unfolded");
                return Ok(None);
            }
            Err(e) => {
                tracing::error!(gpu, error = %e, "cannot fold window; left unfolded");
                return Ok(None);
            }
        };
        let mut compares = self.fence.to_vec();
        compares.push(
            Compare::mod_revision(from.as_str(), CompareOp::Less, revision + 1)
                .with_range(to.as_str()),
        );
        compares.push(Compare::mod_revision(
            chunk_key.as_str(),
            CompareOp::Equal,
            chunk_revision,
        ));
        let ops = [
            TxnOp::put(chunk_key.as_str(), bytes, None),
            TxnOp::delete(
                from.as_str(),
                Some(etcd_client::DeleteOptions::new().with_range(to.as_str())),
            ),
            TxnOp::put(self.keys.folded(end), Vec::new(), None),
        ];
        let resp = self
            .client
            .kv_client()
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .ctx("fold window")?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let deleted = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Delete(d) => Some(d.deleted().max(0) as u64),
                _ => None,
            })
            .unwrap_or(0);
        Ok(Some(deleted))
    }

    /// Every raw sample of `[from, to)` at one revision, with its content hash (from its key).
    async fn read_raw(
        &self,
        gpu: &str,
        from: &str,
        to: &str,
    ) -> Result<Option<(Vec<TelemetryRecord>, i64)>, EtcdError> {
        let mut records = Vec::new();
        let mut next = from.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let mut opts = GetOptions::new().with_range(to).with_limit(PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp = self
                .client
                .kv_client()
                .get(next.clone(), Some(opts))
                .await
                .ctx("read window")?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                let hash = kv
                    .key_str()
                    .ok()
                    .and_then(|k| k.rsplit_once('_'))
                    .map(|(_, h)| h);
                match (telemetry::store::decode(kv.value()), hash) {
                    (Some(mut r), Some(hash)) => {
                        r.idempotency_key = hash.to_string();
                        records.push(r);
                    }
                    _ => {
                        tracing::error!(gpu, key = %String::from_utf8_lossy(kv.key()), "unreadable sample; window left unfolded");
                        return Ok(None);
                    }
                }
            }
            match (resp.more(), resp.kvs().last()) {
                (true, Some(last)) => next = [last.key(), b"\0"].concat(),
                _ => return Ok(Some((records, revision))),
            }
        }
    }

    fn chunk_key(&self, gpu: &str, end: i64) -> Option<String> {
        Some(format!(
            "{}{}",
            self.keys.chunks_of_data_gpu(gpu)?,
            key_time(end)
        ))
    }
}

fn nanos_of(key: &[u8], gpu: &str) -> Option<i64> {
    telemetry::store::time_of(key, gpu)?.timestamp_nanos_opt()
}
