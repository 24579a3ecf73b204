//! Trace ids and message states: following one message from its source to its stored records.
//!
//! A trace id is W3C Trace Context's: 16 bytes as 32 lowercase hex digits, never all zeros. A
//! push request's `traceparent` header gives it; otherwise a message takes its own ULID's 128
//! bits, so a message id and its trace id are one lookup apart. A message holds the records
//! of one or more sources, so it carries one trace id and links the others
//! (`QueueMessage.linked_trace_ids`).
//!
//! A message's processing state is written by the collector that finishes it, inside the Txn
//! that stores its records or dead-letters it (one put more in a Txn it sends anyway), at
//! `{prefix}/trace/{message id}` under a time-bucket lease of `MESSAGE_STATE_TTL`. A message
//! still queued needs no state: the queue holds it, with its publish time.

use serde::{Deserialize, Serialize};

/// A trace id from a `traceparent` header (`00-{trace id}-{parent id}-{flags}`), if valid.
/// An invalid header is ignored, as W3C asks, and the request gets a new trace.
pub fn from_traceparent(header: &str) -> Option<String> {
    let mut parts = header.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then(|| trace.to_string())
}

/// The trace id of something that has none yet: the ULID's 128 bits in hex.
pub fn from_ulid(id: ulid::Ulid) -> String {
    format!("{:032x}", id.0)
}

/// The trace id a message id stands for when nothing better is known (an undecodable
/// message); empty when the id is not a ULID.
pub fn of_message_id(id: &str) -> String {
    ulid::Ulid::from_string(id)
        .map(from_ulid)
        .unwrap_or_default()
}

/// A new trace id.
pub fn new_trace_id() -> String {
    from_ulid(ulid::Ulid::new())
}

/// How a message's processing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its records are stored (those that were not already, and not invalid).
    Stored,
    /// Every record was invalid; each is kept in the invalid area.
    Invalid,
    /// It failed `MQ_MAX_RETRIES` times, or could not be decoded: it is in the dead-letter queue.
    DeadLettered,
}

/// What the collector that finished a message records about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageState {
    /// The message's id.
    pub id: String,
    /// Its trace id.
    pub trace_id: String,
    /// Further traces whose records it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linked_trace_ids: Vec<String>,
    /// Its queue partition.
    pub partition: u16,
    /// When the streamer formed it (Unix milliseconds).
    pub published_unix_ms: i64,
    /// When the collector that finished it took it from its partition.
    pub claimed_unix_ms: i64,
    /// That collector's id.
    pub claimed_by: String,
    /// Which attempt finished it (1 unless earlier commits failed).
    pub attempt: u32,
    /// When its records were validated (0: it could not be decoded).
    pub validated_unix_ms: i64,
    /// Records that passed validation.
    pub valid: usize,
    /// Records refused by validation.
    pub invalid: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// When it ended.
    pub done_unix_ms: i64,
    /// Records newly stored (the rest of the valid ones were already stored).
    pub stored: usize,
    /// Why it was dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_gives_its_trace_id() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            from_traceparent(t).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // A later version may add fields after the flags.
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(from_traceparent(future).is_some());
    }

    #[test]
    fn an_invalid_traceparent_is_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(from_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_ulid_makes_a_valid_trace_id() {
        let id = from_ulid(ulid::Ulid::new());
        let header = format!("00-{id}-00f067aa0ba902b7-01");
        assert_eq!(from_traceparent(&header), Some(id));
    }
}
