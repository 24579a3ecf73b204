//! Dedupe against folded chunks. A folded sample has no raw key left to be its processed-set
//! entry; its entry is its row in the chunk of its GPU and window, and a commit must not store
//! a sample that is already there (docs/storage.md, "Identity of a folded sample").
//!
//! Every fold of a window rewrites that window's marker (`Keys::folded`). A commit compares the
//! marker of each window its records fall in: while a window has never been folded (the case
//! of live data) it compares the marker's absence, which costs one compare and no read. Into a
//! window known to be folded (late samples, a replay), it first reads the markers and the
//! chunks of its records' GPUs in one Txn, drops the records a chunk already holds, and
//! compares the markers' revisions of that read: a fold in between fails the Txn, which is
//! then redone. A failed Txn that finds a marker moved teaches the committer that its window
//! is folded.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use telemetry::etcd::{Context, EtcdError};
use telemetry::keys::Keys;
use telemetry::proto::TelemetryRecord;
use telemetry::store::chunk::Decoded;

use crate::storage::Windows;

/// The fold markers a committer has seen.
pub struct FoldedWindows {
    windows: Windows,
    seen: Mutex<HashMap<i64, i64>>,
}

impl FoldedWindows {
    pub fn new(windows: Windows) -> Self {
        Self {
            windows,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The windows (by end) that `records` fall in.
    pub(super) fn ends<'a>(
        &self,
        records: impl IntoIterator<Item = &'a TelemetryRecord>,
    ) -> Vec<i64> {
        let ends: BTreeSet<i64> = records
            .into_iter()
            .map(|r| self.windows.end_of(r.timestamp_unix_nano))
            .collect();
        ends.into_iter().collect()
    }

    /// Whether any of the windows is known to be folded: then the commit must read its chunks.
    pub(super) fn any_folded(&self, ends: &[i64]) -> bool {
        let seen = self.seen.lock().unwrap();
        ends.iter().any(|e| seen.get(e).is_some_and(|r| *r > 0))
    }

    /// Remembers the markers a failed Txn read back (in `ends`' order).
    pub(super) fn learn(&self, ends: &[i64], markers: &[Option<etcd_client::KeyValue>]) {
        let mut seen = self.seen.lock().unwrap();
        for (end, kv) in ends.iter().zip(markers) {
            let rev = kv.as_ref().map_or(0, |kv| kv.mod_revision());
            let known = seen.entry(*end).or_insert(rev);
            *known = (*known).max(rev);
        }
    }

    /// One compare per window: its marker is still at `expected`.
    pub(super) fn compares(keys: &Keys, ends: &[i64], expected: &[i64]) -> Vec<Compare> {
        ends.iter()
            .zip(expected)
            .map(|(e, rev)| Compare::mod_revision(keys.folded(*e), CompareOp::Equal, *rev))
            .collect()
    }

    /// Reads of the markers of `ends`: in a failed commit's `or_else`, to tell whether one
    /// moved, and ahead of a commit into a folded window.
    pub(super) fn reads(keys: &Keys, ends: &[i64]) -> Vec<TxnOp> {
        ends.iter()
            .map(|e| TxnOp::get(keys.folded(*e), Some(GetOptions::new().with_keys_only())))
            .collect()
    }

    /// Whether any of `markers` (read back in the compares' order) is not where the Txn
    /// expected it. Compared with what the Txn compared, not with what we know now: another
    /// worker may have learned a newer revision meanwhile.
    pub(super) fn moved(expected: &[i64], markers: &[Option<etcd_client::KeyValue>]) -> bool {
        expected
            .iter()
            .zip(markers)
            .any(|(rev, kv)| *rev != kv.as_ref().map_or(0, |kv| kv.mod_revision()))
    }

    /// Reads the markers of `ends` and the chunks of `records`' GPUs in those windows at one
    /// revision: which records a chunk already holds, and each marker's revision (to compare).
    pub(super) async fn folded_already(
        &self,
        client: &Client,
        keys: &Keys,
        ends: &[i64],
        records: &[&TelemetryRecord],
    ) -> Result<(Vec<bool>, HashMap<i64, i64>), EtcdError> {
        let mut chunk_keys: Vec<String> = records
            .iter()
            .map(|r| self.chunk_key(keys, r))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut markers = HashMap::new();
        let mut chunks = HashMap::new();
        // A marker read is repeated in every batch: each batch is its own revision, and the
        // marker remembered must be no newer than the chunks it vouches for.
        while !chunk_keys.is_empty() || markers.is_empty() {
            let take = chunk_keys.len().min(127 - ends.len().min(126));
            let batch: Vec<String> = chunk_keys.drain(..take).collect();
            let ops: Vec<TxnOp> = Self::reads(keys, ends)
                .into_iter()
                .chain(batch.iter().map(|k| TxnOp::get(k.as_str(), None)))
                .collect();
            let resp = client
                .kv_client()
                .txn(Txn::new().and_then(ops))
                .await
                .ctx("read folded chunks")?;
            for (i, r) in resp.op_responses().into_iter().enumerate() {
                let TxnOpResponse::Get(g) = r else { continue };
                let kv = g.kvs().first();
                if i < ends.len() {
                    let rev = kv.map_or(0, |kv| kv.mod_revision());
                    let m = markers.entry(ends[i]).or_insert(rev);
                    *m = (*m).min(rev);
                } else if let Some(kv) = kv {
                    match Decoded::new(kv.value()) {
                        Ok(c) => {
                            chunks.insert(batch[i - ends.len()].clone(), c);
                        }
                        Err(e) => {
                            tracing::error!(key = %batch[i - ends.len()], error = %e, "unreadable chunk; its samples cannot be deduplicated")
                        }
                    }
                }
            }
        }
        let held = records
            .iter()
            .map(|r| {
                chunks
                    .get(&self.chunk_key(keys, r))
                    .is_some_and(|c| c.contains(r))
            })
            .collect();
        Ok((held, markers))
    }

    fn chunk_key(&self, keys: &Keys, r: &TelemetryRecord) -> String {
        keys.chunk(
            &r.hostname,
            &r.gpu_id,
            self.windows.end_of(r.timestamp_unix_nano),
        )
    }
}
