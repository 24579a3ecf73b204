//! Message states: what the collector that finishes a message writes about it, inside the Txn
//! that stores its records or dead-letters it (`telemetry::trace` says why there).
//!
//! The states share time-bucket leases (`buckets`), so a million of them expire with a few
//! leases after `MESSAGE_STATE_TTL`; a TTL of 0 writes none.

use std::time::Duration;

use etcd_client::{Client, PutOptions, TxnOp};
use telemetry::etcd::EtcdError;
use telemetry::keys::Keys;
use telemetry::trace::{MessageState, Outcome};

use crate::buckets::BucketLeases;
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
    leases: Option<BucketLeases>,
    keys: Keys,
    owner: String,
}

impl States {
    /// States kept for `ttl` (none when it is zero), written by collector `owner`.
    pub fn new(client: Client, keys: Keys, ttl: Duration, owner: String) -> Self {
        let leases =
            (!ttl.is_zero()).then(|| BucketLeases::new(client, keys.clone(), "trace", ttl));
        Self {
            leases,
            keys,
            owner,
        }
    }

    /// States that are never written.
    pub fn off(keys: Keys) -> Self {
        Self {
            leases: None,
            keys,
            owner: String::new(),
        }
    }

    /// The put of `msg`'s final state, for the Txn that ends it.
    pub async fn put(
        &self,
        msg: &Claimed,
        outcome: Outcome,
        stored: usize,
        reason: Option<&str>,
    ) -> Result<Option<TxnOp>, EtcdError> {
        let Some(leases) = &self.leases else {
            return Ok(None);
        };
        let lease = leases.current().await?;
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
        Ok(Some(TxnOp::put(
            self.keys.message_state(&msg.message_id),
            serde_json::to_vec(&state).unwrap_or_default(),
            Some(PutOptions::new().with_lease(lease)),
        )))
    }

    /// Forgets cached leases, after etcd said one no longer exists.
    pub fn invalidate(&self) {
        if let Some(l) = &self.leases {
            l.invalidate();
        }
    }
}
