//! The gateway's watch on alert states, for WebSocket clients that asked for alerts: every
//! change of an alert becomes a frame with `"type": "alert"`. It starts from now, since a
//! client reads the current alerts from `GET /api/v1/alerts`; after a compaction it goes on
//! from now too (the states themselves are still in etcd to read).

use etcd_client::{Client, EventType, WatchOptions};
use telemetry::keys::Keys;
use telemetry::watch;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// Follows alert states until `stop` fires.
pub async fn follow(hub: Hub, client: Client, keys: Keys, stop: CancellationToken) {
    let root = keys.alerts_root();
    watch::follow(
        client,
        root.clone(),
        WatchOptions::new().with_prefix().with_prev_key(),
        AlertFollower { hub, root },
        stop,
    )
    .await;
}

struct AlertFollower {
    hub: Hub,
    root: String,
}

impl watch::Follower for AlertFollower {
    async fn resume(
        &mut self,
        client: &Client,
        resume: Option<i64>,
        compacted: bool,
    ) -> Result<Option<i64>, etcd_client::Error> {
        match (resume, compacted) {
            (Some(rev), false) => Ok(Some(rev)),
            _ => {
                let r = client.kv_client().get(self.root.as_str(), None).await?;
                Ok(Some(r.header().map_or(0, |h| h.revision()) + 1))
            }
        }
    }

    fn handle(&mut self, resp: &etcd_client::WatchResponse) -> watch::Flow {
        for ev in resp.events() {
            match (ev.event_type(), ev.kv(), ev.prev_kv()) {
                (EventType::Put, Some(kv), _) => {
                    self.hub.publish_alert(kv.mod_revision(), kv.value(), false)
                }
                (EventType::Delete, Some(kv), Some(prev)) => {
                    self.hub
                        .publish_alert(kv.mod_revision(), prev.value(), true)
                }
                _ => {}
            }
        }
        watch::Flow::Continue
    }
}
