//! The commit: one fenced Txn stores a message's records and removes it from the queue (a
//! message larger than one Txn takes several; see [`crate::dedupe::chunks`]).
//!
//! Compares, each for a reason (docs/protocol.md):
//! 1. the owner key's create revision equals our fence: only the current owner commits;
//! 2. the message key's mod revision equals what we read: the message is still queued and
//!    unchanged, so no commit applies twice;
//! 3. for each record, its entry in the processed set does not exist: the content has not been
//!    stored before. The entry is the record's own data key, which ends with its SHA-256
//!    ([`crate::dedupe`]);
//! 4. for each fold window the records fall in, its fold marker is where the committer last
//!    saw it: no chunk that could already hold one of the records has changed unseen
//!    ([`folded`]).
//!
//! On success it puts each record (no lease: retention deletes, see `storage::retention`),
//! puts invalid records with their reasons, and deletes the message and its attempt
//! counter. On failure the same Txn reads back the owner key, the message key and the
//! processed-set entries, so one round trip tells which compare failed: duplicates are dropped
//! and the Txn retried; a lost fence or a gone message ends the commit.

use std::collections::HashSet;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use telemetry::entries::InvalidEntry;
use telemetry::etcd::EtcdError;
use telemetry::keys::Keys;
use telemetry::proto::TelemetryRecord;

use crate::claim::{fence_compare, Fence};
use crate::states::{Progress, States};

mod folded;
mod write_set;
pub use folded::FoldedWindows;
use telemetry::store::write::{data_key, stored_bytes};
use write_set::{refused, unique_by_key, Refused};

/// A queued message as read by its owner.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub key: String,
    pub mod_revision: i64,
    pub message_id: String,
    pub schema_version: String,
    /// What its state will say (see `states`).
    pub progress: Progress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed {
        stored: usize,
        duplicates: usize,
        invalid: usize,
    },
    /// Our claim is gone: nothing was written.
    Fenced,
    /// The message was already committed (by us earlier, or a previous owner).
    AlreadyDone,
}

pub struct Committer {
    client: Client,
    keys: Keys,
    folded: FoldedWindows,
    max_ops: usize,
    states: States,
}

impl Committer {
    /// `max_ops` is etcd's `--max-txn-ops`: a message whose commit needs more is cut into
    /// several Txns ([`crate::dedupe::chunks`]).
    pub fn new(client: Client, keys: Keys, folded: FoldedWindows, max_ops: usize) -> Self {
        let keys_for_states = keys.clone();
        Self {
            client,
            keys,
            folded,
            max_ops,
            states: States::off(keys_for_states),
        }
    }

    /// Writes each finished message's state with its last Txn.
    pub fn with_states(mut self, states: States) -> Self {
        self.states = states;
        self
    }

    /// Where message states go (the dead-letter path writes them too).
    pub fn states(&self) -> &States {
        &self.states
    }

    /// Commits `valid` and `invalid` records of `msg` under `fence`.
    pub async fn commit(
        &self,
        fence: Fence,
        msg: &Claimed,
        valid: &[TelemetryRecord],
        invalid: &[(TelemetryRecord, String)],
    ) -> Result<Outcome, EtcdError> {
        let (valid, mut duplicates) = unique_by_key(valid);
        let refused = refused(&self.keys, invalid);
        let (mut stored, mut invalid_stored) = (0, 0);
        let windows = self.folded.ends(valid.iter().copied()).len();
        for chunk in crate::dedupe::chunks(valid.len(), invalid.len(), self.max_ops, windows) {
            let records = valid[chunk.valid].to_vec();
            match self
                .commit_chunk(
                    fence,
                    msg,
                    records,
                    &refused[chunk.invalid],
                    chunk.last.then_some(stored),
                )
                .await?
            {
                Outcome::Committed {
                    stored: s,
                    duplicates: d,
                    invalid: i,
                } => {
                    stored += s;
                    duplicates += d;
                    invalid_stored += i;
                }
                other => return Ok(other),
            }
        }
        Ok(Outcome::Committed {
            stored,
            duplicates,
            invalid: invalid_stored,
        })
    }

    /// One Txn of a commit; retried without the records it finds already stored. The last
    /// one (`stored_before`: what the earlier ones stored) also ends the message.
    async fn commit_chunk(
        &self,
        fence: Fence,
        msg: &Claimed,
        mut valid: Vec<&TelemetryRecord>,
        invalid: &[Refused<'_>],
        stored_before: Option<usize>,
    ) -> Result<Outcome, EtcdError> {
        let mut duplicates = 0;
        loop {
            let mut ends = self.folded.ends(valid.iter().copied());
            let mut expected = vec![0; ends.len()];
            if self.folded.any_folded(&ends) {
                let (held, markers) = self
                    .folded
                    .folded_already(&self.client, &self.keys, &ends, &valid)
                    .await?;
                let before = valid.len();
                let mut held = held.into_iter();
                valid.retain(|_| !held.next().unwrap_or(false));
                duplicates += before - valid.len();
                ends = self.folded.ends(valid.iter().copied());
                expected = ends.iter().map(|e| markers[e]).collect();
            }
            let end = match stored_before {
                Some(before) => {
                    let outcome = if msg.progress.valid == 0 && msg.progress.invalid > 0 {
                        telemetry::trace::Outcome::Invalid
                    } else {
                        telemetry::trace::Outcome::Stored
                    };
                    Some(self.states.put(msg, outcome, before + valid.len(), None))
                }
                None => None,
            };
            let txn = self.build(fence, msg, (&valid, &ends, &expected), invalid, end);
            let resp = match self.client.kv_client().txn(txn).await {
                Ok(r) => r,
                Err(e) => {
                    let e = EtcdError::new("commit", e);
                    // The Txn that crosses etcd's quota is applied and then answered with
                    // NOSPACE: find out, so that the counts stay exact.
                    if telemetry::storage::is_no_space(&e)
                        && self.landed(msg, &valid, invalid).await
                    {
                        return Ok(Outcome::Committed {
                            stored: valid.len(),
                            duplicates,
                            invalid: invalid.len(),
                        });
                    }
                    return Err(e);
                }
            };
            if resp.succeeded() {
                return Ok(Outcome::Committed {
                    stored: valid.len(),
                    duplicates,
                    invalid: invalid.len(),
                });
            }
            let reads: Vec<Option<etcd_client::KeyValue>> = resp
                .op_responses()
                .into_iter()
                .map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                    _ => None,
                })
                .collect();
            match reads.first() {
                Some(Some(owner)) if owner.create_revision() == fence.revision => {}
                _ => return Ok(Outcome::Fenced),
            }
            match reads.get(1) {
                Some(Some(m)) if m.mod_revision() == msg.mod_revision => {}
                _ => return Ok(Outcome::AlreadyDone),
            }
            let (entries, markers) = reads[2..].split_at(valid.len());
            let seen: HashSet<&[u8]> = entries.iter().flatten().map(|kv| kv.key()).collect();
            let before = valid.len();
            valid.retain(|r| !seen.contains(data_key(&self.keys, r).as_bytes()));
            let moved = FoldedWindows::moved(&expected, markers);
            if moved {
                // Read the chunks on the next try.
                self.folded.learn(&ends, markers);
            }
            duplicates += before - valid.len();
            if before == valid.len() && !moved {
                // Nothing explains the failure; let the caller retry the message from scratch.
                return Err(EtcdError::new(
                    "commit",
                    etcd_client::Error::InvalidArgs("commit failed without a cause".into()),
                ));
            }
        }
    }

    fn build(
        &self,
        fence: Fence,
        msg: &Claimed,
        (valid, ends, expected): (&[&TelemetryRecord], &[i64], &[i64]),
        invalid: &[Refused<'_>],
        end: Option<Option<TxnOp>>,
    ) -> Txn {
        let k = &self.keys;
        let mut compares = Vec::with_capacity(valid.len() + ends.len() + 2);
        compares.push(fence_compare(k, fence));
        compares.push(Compare::mod_revision(
            msg.key.as_str(),
            CompareOp::Equal,
            msg.mod_revision,
        ));
        let mut success = Vec::with_capacity(valid.len() + invalid.len() + 3);
        let mut failure = Vec::with_capacity(valid.len() + 2);
        failure.push(TxnOp::get(k.owner(fence.partition), None));
        failure.push(TxnOp::get(
            msg.key.as_str(),
            Some(GetOptions::new().with_keys_only()),
        ));
        for r in valid {
            let entry = data_key(k, r);
            compares.push(Compare::create_revision(
                entry.as_str(),
                CompareOp::Equal,
                0,
            ));
            failure.push(TxnOp::get(
                entry.as_str(),
                Some(GetOptions::new().with_keys_only()),
            ));
            success.push(TxnOp::put(entry, stored_bytes(r), None));
        }
        for Refused {
            record: r,
            reason,
            key,
        } in invalid
        {
            let entry = InvalidEntry {
                id: r.id.clone(),
                message_id: msg.message_id.clone(),
                schema_version: msg.schema_version.clone(),
                reason: reason.to_string(),
                hostname: r.hostname.clone(),
                gpu_id: r.gpu_id.clone(),
                metric: r.metric.clone(),
                detected_at: chrono::Utc::now().to_rfc3339(),
            };
            let json = serde_json::to_vec(&entry).unwrap_or_default();
            success.push(TxnOp::put(key.as_str(), json, None));
        }
        compares.extend(FoldedWindows::compares(k, ends, expected));
        failure.extend(FoldedWindows::reads(k, ends));
        // The last Txn ends the message: see `dedupe::LAST_OPS`.
        if let Some(state) = end {
            success.push(TxnOp::delete(msg.key.as_str(), None));
            success.push(TxnOp::delete(k.attempts(&msg.message_id), None));
            success.extend(state);
        }
        Txn::new().when(compares).and_then(success).or_else(failure)
    }

    /// Whether a Txn that failed with NOSPACE was applied anyway (its first and last puts,
    /// written after the message was read).
    async fn landed(
        &self,
        msg: &Claimed,
        valid: &[&TelemetryRecord],
        invalid: &[Refused<'_>],
    ) -> bool {
        // The Txn puts the valid records' keys, then the invalid ones'.
        let first = valid
            .first()
            .map(|r| data_key(&self.keys, r))
            .or_else(|| invalid.first().map(|r| r.key.clone()));
        let last = invalid
            .last()
            .map(|r| r.key.clone())
            .or_else(|| valid.last().map(|r| data_key(&self.keys, r)));
        telemetry::storage::landed(
            &self.client,
            first.as_deref(),
            last.as_deref(),
            msg.mod_revision,
        )
        .await
    }
}
