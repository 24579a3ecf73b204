//! The cluster view: every running streamer, collector and gateway, as etcd sees them.
//!
//! Each process keeps one key, `{prefix}/cluster/{role}/{id}`, under a short lease of its own
//! ([`MEMBER_TTL`]), and rewrites it every [`REFRESH`] with its health, the configuration
//! revision it has applied, and a small role-specific status (rates, partitions, lag). A
//! process that dies stops renewing its lease, and etcd deletes its key within the TTL; one
//! that stops cleanly revokes the lease, and disappears at once. The view ([`view`]) is a
//! read of that prefix plus the queue, the dead-letter queue and the storage maintainer's
//! published figures.
//!
//! The lease is separate from a collector's claim lease on purpose: the claim's TTL is
//! `MQ_PROCESSING_TIMEOUT` (30 s by default), far too slow for a health view, and a short
//! lease lost to a slow etcd must never cost a collector its partitions.

mod rate;
mod register;
pub mod view;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use rate::Rate;
pub use register::{register, Registration, StatusFn};

/// How long a member outlives its last renewal.
pub const MEMBER_TTL: Duration = Duration::from_secs(10);
/// How often a member rewrites its status (and renews its lease).
pub const REFRESH: Duration = Duration::from_secs(2);

/// The default id of a process: its host name and process id, unique among running ones.
pub fn process_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}-{}", std::process::id())
}

/// What a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads input and publishes it into the queue.
    Streamer,
    /// Claims queue partitions and stores their records.
    Collector,
    /// Serves the API.
    Gateway,
}

impl Role {
    /// Its name in keys and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Streamer => "streamer",
            Role::Collector => "collector",
            Role::Gateway => "gateway",
        }
    }
}

/// One member's entry, as it writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Its role.
    pub role: Role,
    /// Its id (`--id` for a collector, host-pid otherwise).
    pub id: String,
    /// The build's version.
    pub version: String,
    /// Where it answers `/health`, `/ready` and `/metrics` (none when it serves no admin port).
    pub address: Option<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// True when nothing blocks its work (its `/ready`).
    pub ready: bool,
    /// Why it is not ready, per condition (its `/ready` reasons).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, String>,
    /// The newest configuration revision it has applied.
    pub config_revision: i64,
    /// When it wrote this entry (Unix milliseconds).
    pub updated_unix_ms: i64,
    /// Role-specific figures: rates, partitions held, lag.
    pub status: serde_json::Value,
}
