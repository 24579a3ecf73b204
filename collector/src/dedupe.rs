//! The processed set: where the SHA-256 of every stored record is remembered for the dedupe
//! window, and how a message's commit is cut into Txns that etcd accepts.
//!
//! etcd's apply loop is the pipeline's bottleneck and costs about the same per key whatever the
//! value, so a marker key beside every record halves ingest (docs/performance.md). A data key
//! ends with the record's SHA-256, and every other part of it (host, GPU, time) is content
//! too, so it is a pure function of what was hashed: while the record is stored, its key *is*
//! its entry in the processed set. Only when stored data expires before the dedupe window
//! does a separate marker have to remember the hash for the rest of the window.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;

use crate::buckets::BucketLeases;
use telemetry::keys::Keys;

#[derive(Clone)]
pub enum ProcessedSet {
    /// Stored data outlives the dedupe window: the data key is the entry. One key per record.
    DataKeys,
    /// Stored data expires before the dedupe window ends: a marker per record, under a dedupe
    /// bucket lease, keeps the hash for the whole window. Two keys per record.
    Markers(Arc<BucketLeases>),
}

/// The records and invalid entries of one message that go into one Txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub valid: Range<usize>,
    pub invalid: Range<usize>,
    /// The last chunk also deletes the message and its attempt counter.
    pub last: bool,
}

impl ProcessedSet {
    /// Separate markers only when `retention` is shorter than `dedupe_window`.
    pub fn for_settings(
        client: &Client,
        keys: &Keys,
        dedupe_window: Duration,
        retention: Duration,
    ) -> Self {
        if retention >= dedupe_window {
            Self::DataKeys
        } else {
            Self::Markers(Arc::new(BucketLeases::new(
                client.clone(),
                keys.clone(),
                "dedupe",
                dedupe_window,
            )))
        }
    }

    /// Txn operations one stored record costs.
    pub fn ops_per_record(&self) -> usize {
        match self {
            Self::DataKeys => 1,
            Self::Markers(_) => 2,
        }
    }

    /// Cuts a message's commit into Txns that fit (see [`chunks`]).
    pub fn chunks(
        &self,
        valid: usize,
        invalid: usize,
        max_ops: usize,
        windows: usize,
    ) -> Vec<Chunk> {
        chunks(self.ops_per_record(), valid, invalid, max_ops, windows)
    }
}

/// What the last Txn of a commit writes beyond records: the message's delete, its attempt
/// counter's delete, and its processing state.
pub const LAST_OPS: usize = 3;

/// Cuts a message's `valid` records and `invalid` entries into Txns of at most `max_ops`
/// operations and compares each (a compare per record, one per fold window its records fall
/// in, and two for the owner and the message). Usually one: the streamer sizes messages for one Txn of data keys. With
/// markers a message takes two; each stores its records only if their entries are absent, and
/// only the last deletes the message, so a crash between them leaves the message queued and
/// its next commit finds the earlier chunk's records already stored.
pub fn chunks(
    per_record: usize,
    valid: usize,
    invalid: usize,
    max_ops: usize,
    windows: usize,
) -> Vec<Chunk> {
    // Every Txn keeps room for the last one's extra ops, so the plan does not depend on which
    // is last.
    let budget = max_ops.saturating_sub(LAST_OPS).max(per_record);
    let most_valid = (budget / per_record)
        .min(max_ops.saturating_sub(2 + windows))
        .max(1);
    let (mut v, mut i) = (0, 0);
    let mut out = Vec::new();
    loop {
        let nv = (valid - v).min(most_valid);
        let ni = (invalid - i).min(budget - nv * per_record);
        let last = v + nv == valid && i + ni == invalid;
        out.push(Chunk {
            valid: v..v + nv,
            invalid: i..i + ni,
            last,
        });
        (v, i) = (v + nv, i + ni);
        if last {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_message_is_one_txn_of_data_keys() {
        let plan = ProcessedSet::DataKeys.chunks(125, 0, 128, 1);
        assert_eq!(
            plan,
            vec![Chunk {
                valid: 0..125,
                invalid: 0..0,
                last: true
            }]
        );
    }

    #[test]
    fn records_over_several_fold_windows_leave_room_for_their_compares() {
        let plan = ProcessedSet::DataKeys.chunks(125, 0, 128, 2);
        assert_eq!(plan.len(), 2);
        assert!(
            plan.iter().all(|c| c.valid.len() + 2 + 2 <= 128),
            "{plan:?}"
        );
    }

    #[test]
    fn an_empty_message_still_gets_its_delete() {
        let plan = ProcessedSet::DataKeys.chunks(0, 0, 128, 1);
        assert_eq!(plan.len(), 1);
        assert!(plan[0].last);
    }

    #[test]
    fn with_markers_a_full_message_takes_two_txns_that_each_fit() {
        let plan = chunks(2, 120, 6, 128, 1);
        assert_eq!(plan.len(), 2);
        for c in &plan {
            assert!(
                c.valid.len() * 2 + c.invalid.len() + LAST_OPS <= 128,
                "{c:?}"
            );
        }
        assert_eq!(plan[0].valid, 0..62);
        assert_eq!(plan[1].valid, 62..120);
        assert_eq!(
            plan[0].invalid,
            0..1,
            "one invalid entry fills the first Txn"
        );
        assert_eq!(plan[1].invalid, 1..6);
        assert!(!plan[0].last && plan[1].last);
    }

    #[test]
    fn invalid_entries_fill_what_records_leave() {
        let plan = ProcessedSet::DataKeys.chunks(100, 40, 128, 1);
        assert_eq!(plan[0].invalid, 0..25);
        assert_eq!(plan[1].invalid, 25..40);
        assert_eq!(plan.len(), 2);
    }
}
