//! What a commit writes beyond the samples (`telemetry::store::write`): the invalid area's
//! entries, and the one-of-each rule within a batch.

use std::collections::{HashMap, HashSet};

use telemetry::keys::Keys;
use telemetry::proto::TelemetryRecord;

/// A refused record, its reason, and the key of its entry in the invalid area.
pub(super) struct Refused<'a> {
    pub(super) record: &'a TelemetryRecord,
    pub(super) reason: &'a str,
    pub(super) key: String,
}

/// Invalid-area entries are keyed by record id, and a producer may send its own ids, so a
/// repeat within one message gets `-{n}` appended: a Txn may not put one key twice, and a later
/// chunk must not overwrite an earlier one's entry. The numbering follows the message's order,
/// so a retried commit writes the same keys again.
pub(super) fn refused<'a>(
    keys: &Keys,
    invalid: &'a [(TelemetryRecord, String)],
) -> Vec<Refused<'a>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    invalid
        .iter()
        .map(|(record, reason)| {
            let n = seen.entry(record.id.as_str()).or_insert(0);
            let key = match *n {
                0 => keys.invalid(&record.id),
                n => keys.invalid(&format!("{}-{n}", record.id)),
            };
            *n += 1;
            Refused {
                record,
                reason,
                key,
            }
        })
        .collect()
}

/// Drops records whose idempotency key repeats within the batch: they would share a data key,
/// and a Txn may not put one key twice.
pub(super) fn unique_by_key(records: &[TelemetryRecord]) -> (Vec<&TelemetryRecord>, usize) {
    let mut keys = HashSet::new();
    let before = records.len();
    let out: Vec<_> = records
        .iter()
        .filter(|r| keys.insert(r.idempotency_key.as_str()))
        .collect();
    let dups = before - out.len();
    (out, dups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_records_that_share_an_id_get_distinct_entries() {
        let r = |id: &str| {
            let rec = TelemetryRecord {
                id: id.into(),
                ..Default::default()
            };
            (rec, "bad".to_string())
        };
        let batch = [r("A"), r("B"), r("A"), r("A")];
        let keys: Vec<String> = refused(&Keys::new("/p"), &batch)
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            keys,
            [
                "/p/telemetry/invalid/A",
                "/p/telemetry/invalid/B",
                "/p/telemetry/invalid/A-1",
                "/p/telemetry/invalid/A-2"
            ]
        );
    }

    #[test]
    fn repeats_within_a_batch_are_duplicates() {
        let r = |k: &str, id: &str| TelemetryRecord {
            idempotency_key: k.into(),
            id: id.into(),
            ..Default::default()
        };
        let batch = [r("a", "1"), r("a", "2"), r("b", "1")];
        let (out, dups) = unique_by_key(&batch);
        assert_eq!(dups, 1);
        let kept: Vec<&str> = out.iter().map(|r| r.idempotency_key.as_str()).collect();
        assert_eq!(kept, ["a", "b"], "the first of a repeat is kept, in order");
    }
}
