//! A process's own entry in the cluster view, kept under its lease until the process stops.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio_util::sync::CancellationToken;

use super::{Member, Role, MEMBER_TTL, REFRESH};
use crate::admin::Readiness;
use crate::backoff::Backoff;
use crate::keys::Keys;
use crate::lease::KeptLease;
use crate::record::now_millis;
use crate::settings::Settings;
use crate::shutdown::or_cancel;

/// The role-specific part of a member's status, computed at each refresh.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What a process says about itself once, at start-up.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Its role.
    pub role: Role,
    /// Its id.
    pub id: String,
    /// Its admin (or, for the gateway, API) address.
    pub address: Option<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
}

impl Registration {
    /// A registration for a process starting now.
    pub fn now(role: Role, id: impl Into<String>, address: Option<String>) -> Self {
        Self {
            role,
            id: id.into(),
            address,
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    fn entry(&self, readiness: &Readiness, settings: &Settings, status: &StatusFn) -> Member {
        let reasons = readiness
            .check()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<std::collections::BTreeMap<_, _>>();
        Member {
            role: self.role,
            id: self.id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            address: self.address.clone(),
            started_at: self.started_at.clone(),
            ready: reasons.is_empty(),
            reasons,
            config_revision: settings.now().revision,
            updated_unix_ms: now_millis(),
            status: status(),
        }
    }
}

/// Keeps `me` registered until `stop` fires, then removes it at once (revoking its lease).
/// The entry is rewritten every [`REFRESH`] and as soon as the configuration changes, so the
/// view shows a kill switch taking effect within moments. etcd being away only delays it:
/// a lost lease is replaced by a new one.
pub async fn register(
    client: Client,
    keys: Keys,
    me: Registration,
    status: StatusFn,
    readiness: Readiness,
    settings: Settings,
    stop: CancellationToken,
) {
    let key = keys.cluster_member(me.role.as_str(), &me.id);
    let mut changes = settings.subscribe();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !stop.is_cancelled() {
        let lease_stop = stop.child_token();
        let lease = match KeptLease::grant(&client, MEMBER_TTL, lease_stop.clone()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot register in the cluster view yet");
                or_cancel(&stop, tokio::time::sleep(backoff.next_delay())).await;
                continue;
            }
        };
        loop {
            let entry = me.entry(&readiness, &settings, &status);
            let value = serde_json::to_vec(&entry).unwrap_or_default();
            let mut kv = client.kv_client();
            let put = kv.put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease.id)),
            );
            match tokio::time::timeout(REFRESH, put).await {
                Ok(Ok(_)) => backoff.reset(),
                Ok(Err(e)) if crate::etcd::is_not_found(&e) => break, // the lease is gone
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot refresh the cluster entry"),
                Err(_) => tracing::debug!("cluster entry refresh timed out"),
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.clone().lease_revoke(lease.id),
                    )
                    .await;
                    return;
                }
                _ = lease.lost().cancelled() => break,
                _ = tokio::time::sleep(REFRESH) => {}
                _ = changes.changed() => {}
            }
        }
        lease_stop.cancel();
    }
}
