//! Message states: what the collector that finishes a message writes about it, inside the Txn
//! that stores its records or dead-letters it (`telemetry::trace` says why there).
//!
//! A state's key is its message's ULID, so the storage maintainer deletes those older than
//! `MESSAGE_STATE_TTL` with one `DeleteRange` (`storage::retention`); a TTL of 0 writes none.

use std::time::Duration;

use etcd_client::TxnOp;
use telemetry::keys::Keys;
use telemetry::trace::{MessageState, Outcome};

use crate::commit::Claimed;

/// What a worker learns about a message on its way through, for its state.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Its trace id, and the traces it links.
    pub trace_id: String,
    pub linked_trace_ids: Vec<String>,
    pub partition: u16,
    pub published_unix_ms: i64,
    pub claimed_unix_ms: i64,
    pub validated_unix_ms: i64,
    pub valid: usize,
    pub invalid: usize,
    /// This attempt's number: 1, plus the failed commits counted against the message.
    pub attempt: u32,
}

/// Writes message states, or nothing when they are off.
pub struct States {
    on: bool,
    keys: Keys,
    owner: String,
}

impl States {
    /// States kept for `ttl` (none when it is zero), written by collector `owner`.
    pub fn new(keys: Keys, ttl: Duration, owner: String) -> Self {
        Self {
            on: !ttl.is_zero(),
            keys,
            owner,
        }
    }

    /// States that are never written.
    pub fn off(keys: Keys) -> Self {
        Self {
            on: false,
            keys,
            owner: String::new(),
        }
    }

    /// The put of `msg`'s final state, for the Txn that ends it.
    pub fn put(
        &self,
        msg: &Claimed,
        outcome: Outcome,
        stored: usize,
        reason: Option<&str>,
    ) -> Option<TxnOp> {
        if !self.on {
            return None;
        }
        let p = &msg.progress;
        let state = MessageState {
            id: msg.message_id.clone(),
            trace_id: p.trace_id.clone(),
            linked_trace_ids: p.linked_trace_ids.clone(),
            partition: p.partition,
            published_unix_ms: p.published_unix_ms,
            claimed_unix_ms: p.claimed_unix_ms,
            claimed_by: self.owner.clone(),
            attempt: p.attempt.max(1),
            validated_unix_ms: p.validated_unix_ms,
            valid: p.valid,
            invalid: p.invalid,
            outcome,
            done_unix_ms: telemetry::record::now_millis(),
            stored,
            reason: reason.map(str::to_string),
        };
        Some(TxnOp::put(
            self.keys.message_state(&msg.message_id),
            serde_json::to_vec(&state).unwrap_or_default(),
            None,
        ))
    }
}
