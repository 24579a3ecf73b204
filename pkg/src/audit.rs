//! The audit log: every configuration change, token change and dead-letter requeue, with who
//! did it. Each entry is logged (target `audit`) and kept in etcd under `audit/` for
//! `AUDIT_RETENTION`, on a lease of its own, so that etcd forgets it by itself.

use std::time::Duration;

use etcd_client::{Client, PutOptions};
use serde::{Deserialize, Serialize};

use crate::etcd::{Context, EtcdError};
use crate::keys::Keys;

/// One audited action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// When (Unix milliseconds).
    pub at_unix_ms: i64,
    /// Who: a token, an etcd user on the command line, or anonymous.
    pub actor: String,
    /// What, such as `config.set`, `token.create`, `token.revoke`, `dlq.requeue`.
    pub action: String,
    /// On what, with the details (a setting and its new value, a token id and role).
    pub detail: serde_json::Value,
}

/// Logs and stores one entry.
pub async fn record(
    client: &Client,
    keys: &Keys,
    retention: Duration,
    actor: &str,
    action: &str,
    detail: serde_json::Value,
) -> Result<(), EtcdError> {
    let entry = Entry {
        at_unix_ms: crate::record::now_millis(),
        actor: actor.to_string(),
        action: action.to_string(),
        detail,
    };
    tracing::info!(target: "audit", actor, action, detail = %entry.detail, "audit");
    let mut c = client.clone();
    let ttl = retention.as_secs().max(1) as i64;
    let lease = c.lease_grant(ttl, None).await.ctx("audit lease")?.id();
    let json = serde_json::to_vec(&entry).unwrap_or_default();
    let key = keys.audit(&ulid::Ulid::new().to_string());
    c.put(key, json, Some(PutOptions::new().with_lease(lease)))
        .await
        .ctx("audit entry")?;
    Ok(())
}

/// Who runs a command-line action: the etcd user it logs in as, and the OS user.
pub fn cli_actor(etcd_user: Option<&str>) -> String {
    let os = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    match etcd_user {
        Some(u) => format!("cli (etcd user {u}, os user {os})"),
        None => format!("cli (os user {os})"),
    }
}
