//! A lease kept alive in the background.
//!
//! etcd-client's `LeaseKeeper::keep_alive()` sends a single request, so the keeper loops it at a
//! third of the TTL and reads every answer. A TTL of 0, or no answer before the TTL runs out,
//! means the lease is gone: [`KeptLease::lost`] fires and everything that relied on the lease
//! must stop. The commit fence (see `claim`) makes late work harmless anyway, since a lease
//! is not a lock.

use std::time::Duration;

use etcd_client::Client;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::etcd::{Context, EtcdError};

/// A granted lease and the signal that it is gone.
#[derive(Debug, Clone)]
pub struct KeptLease {
    /// The lease id, to attach keys to.
    pub id: i64,
    /// Its TTL as granted.
    pub ttl: Duration,
    lost: CancellationToken,
}

impl KeptLease {
    /// Grants a lease of `ttl` and keeps it alive until `stop` fires or the lease is lost.
    pub async fn grant(
        client: &Client,
        ttl: Duration,
        stop: CancellationToken,
    ) -> Result<Self, EtcdError> {
        let mut c = client.clone();
        let ttl_secs = ttl.as_secs().max(1) as i64;
        let id = c.lease_grant(ttl_secs, None).await.ctx("lease grant")?.id();
        let lost = CancellationToken::new();
        let lease = Self {
            id,
            ttl: Duration::from_secs(ttl_secs as u64),
            lost: lost.clone(),
        };
        tokio::spawn(keep_alive(c, id, lease.ttl, stop, lost));
        Ok(lease)
    }

    /// Fires when the lease has expired or could not be renewed in time.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Whether [`KeptLease::lost`] has fired.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }
}

async fn keep_alive(
    mut client: Client,
    id: i64,
    ttl: Duration,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    let interval = (ttl / 3).max(Duration::from_millis(200));
    let mut deadline = Instant::now() + ttl;
    let mut stream = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                lease = id,
                "lease not renewed within its TTL; treating it as lost"
            );
            lost.cancel();
            return;
        }
        if stream.is_none() {
            stream = match client.lease_keep_alive(id).await {
                Ok(s) => Some(s),
                Err(e) => {
                    renew_login_if_refused(&client, &e).await;
                    None
                }
            };
        }
        if let Some((keeper, responses)) = stream.as_mut() {
            let renewed = async {
                keeper.keep_alive().await?;
                responses.message().await
            };
            match tokio::time::timeout(interval, renewed).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    deadline = Instant::now() + Duration::from_secs(resp.ttl() as u64)
                }
                Ok(Ok(Some(_))) => {
                    tracing::warn!(lease = id, "etcd reports the lease expired (TTL 0)");
                    lost.cancel();
                    return;
                }
                Ok(Err(e)) => {
                    // A keep-alive stream keeps the token it was opened with: when etcd
                    // refuses that, log in again before reopening it.
                    renew_login_if_refused(&client, &e).await;
                    stream = None;
                }
                _ => stream = None, // stream broke or timed out: reopen on the next round
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn renew_login_if_refused(client: &Client, e: &etcd_client::Error) {
    if crate::etcd::is_auth_error(e) {
        crate::etcd::renew_login(client).await;
    }
}
