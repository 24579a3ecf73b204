//! The processed set: where the SHA-256 of every stored record is remembered, and how a
//! message's commit is cut into Txns that etcd accepts.
//!
//! etcd's apply loop is the pipeline's bottleneck and costs about the same per key whatever the
//! value, so a marker key beside every record would halve ingest (docs/performance.md). A data
//! key ends with the record's SHA-256, and every other part of it (host, GPU, time) is content
//! too, so it is a pure function of what was hashed: while the record is stored, its key *is*
//! its entry in the processed set (and once folded, its chunk is: `commit::folded`). Retention
//! deletes a record only once it is older than the cutoff every collector refuses
//! (`storage::Cutoff`), so a replay of it is refused, never stored a second time: the hash is
//! remembered for as long as `DEDUPE_WINDOW` asks, whatever it is.

use std::ops::Range;

/// The records and invalid entries of one message that go into one Txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub valid: Range<usize>,
    pub invalid: Range<usize>,
    /// The last chunk also deletes the message and its attempt counter.
    pub last: bool,
}

/// What the last Txn of a commit writes beyond records: the message's delete, its attempt
/// counter's delete, and its processing state.
pub const LAST_OPS: usize = 3;

/// Cuts a message's `valid` records and `invalid` entries into Txns of at most `max_ops`
/// operations and compares each (a compare per record, one per fold window its records fall
/// in, and two for the owner and the message). Usually one: the streamer sizes messages for
/// one Txn. Each stores its records only if their entries are absent, and only the last
/// deletes the message, so a crash between them leaves the message queued and its next commit
/// finds the earlier chunk's records already stored.
pub fn chunks(valid: usize, invalid: usize, max_ops: usize, windows: usize) -> Vec<Chunk> {
    // Every Txn keeps room for the last one's extra ops, so the plan does not depend on which
    // is last.
    let budget = max_ops.saturating_sub(LAST_OPS).max(1);
    let most_valid = budget.min(max_ops.saturating_sub(2 + windows)).max(1);
    let (mut v, mut i) = (0, 0);
    let mut out = Vec::new();
    loop {
        let nv = (valid - v).min(most_valid);
        let ni = (invalid - i).min(budget - nv);
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
        let plan = chunks(125, 0, 128, 1);
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
        let plan = chunks(125, 0, 128, 2);
        assert_eq!(plan.len(), 2);
        assert!(
            plan.iter().all(|c| c.valid.len() + 2 + 2 <= 128),
            "{plan:?}"
        );
    }

    #[test]
    fn an_empty_message_still_gets_its_delete() {
        let plan = chunks(0, 0, 128, 1);
        assert_eq!(plan.len(), 1);
        assert!(plan[0].last);
    }

    #[test]
    fn a_message_too_large_for_one_txn_takes_several_that_each_fit() {
        let plan = chunks(200, 6, 128, 1);
        assert_eq!(plan.len(), 2);
        for c in &plan {
            assert!(c.valid.len() + c.invalid.len() + LAST_OPS <= 128, "{c:?}");
        }
        assert_eq!(plan[0].valid, 0..125);
        assert_eq!(plan[1].valid, 125..200);
        assert_eq!(plan[1].invalid, 0..6);
        assert!(!plan[0].last && plan[1].last);
    }

    #[test]
    fn invalid_entries_fill_what_records_leave() {
        let plan = chunks(100, 40, 128, 1);
        assert_eq!(plan[0].invalid, 0..25);
        assert_eq!(plan[1].invalid, 25..40);
        assert_eq!(plan.len(), 2);
    }
}
