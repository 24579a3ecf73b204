//! Following the configuration prefix with the shared watch loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions, WatchResponse};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::store::{list, parse, parse_all, Stored};
use super::{catalog, Effective, Settings, Snapshot, Source};
use crate::backoff::Backoff;
use crate::keys::Keys;
use crate::shutdown::or_cancel;
use crate::watch::{Flow, Follower};

/// Follows `{prefix}/config/` from a first read, until `stop` fires. The first read happens
/// before this returns (retried until etcd answers; `None` if `stop` fires first), so a
/// process starts with etcd's values, the kill switch included, rather than a moment later.
pub async fn follow(
    client: Client,
    keys: Keys,
    startup: Snapshot,
    stop: CancellationToken,
) -> Option<Settings> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let (stored, revision) = loop {
        match or_cancel(&stop, list(&client, &keys)).await? {
            Ok(read) => break read,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the live configuration yet; retrying");
                or_cancel(&stop, tokio::time::sleep(backoff.next_delay())).await?;
            }
        }
    };
    let mut overlay = Overlay {
        root: keys.config_root(),
        startup,
        etcd: BTreeMap::new(),
        revision: 0,
        tx: None,
    };
    overlay.reset(stored);
    let (tx, rx) = watch::channel(Arc::new(overlay.snapshot()));
    overlay.tx = Some(tx);
    let root = overlay.root.clone();
    tokio::spawn(crate::watch::follow(
        client,
        root,
        WatchOptions::new().with_prefix(),
        Resume {
            overlay,
            first: Some(revision + 1),
        },
        stop,
    ));
    Some(Settings { rx })
}

/// `startup` with the valid values of `stored` on top, and its newest revision.
pub fn overlay(startup: Snapshot, stored: Vec<Stored>) -> Snapshot {
    let mut o = Overlay {
        root: String::new(),
        startup,
        etcd: BTreeMap::new(),
        revision: 0,
        tx: None,
    };
    o.reset(stored);
    o.snapshot()
}

/// The start-up values with etcd's on top.
struct Overlay {
    root: String,
    startup: Snapshot,
    /// Valid values set in etcd, with their revisions.
    etcd: BTreeMap<String, (Value, i64)>,
    /// The newest configuration change seen.
    revision: i64,
    tx: Option<watch::Sender<Arc<Snapshot>>>,
}

impl Overlay {
    fn snapshot(&self) -> Snapshot {
        let mut s = self.startup.clone();
        s.revision = self.revision;
        for (name, e) in s.values.iter_mut() {
            if let Some((v, rev)) = self.etcd.get(*name) {
                *e = Effective {
                    value: v.clone(),
                    source: Source::Etcd,
                    revision: Some(*rev),
                };
            }
        }
        s
    }

    /// Replaces what etcd holds with a full read.
    fn reset(&mut self, stored: Vec<Stored>) {
        self.etcd.clear();
        for s in stored {
            self.apply(s);
        }
    }

    /// Applies one key's new value: an override, an unset (`null`), or a refusal.
    fn apply(&mut self, s: Stored) {
        self.revision = self.revision.max(s.revision);
        match s.value {
            Ok(Value::Null) => {
                self.etcd.remove(&s.name);
            }
            Ok(v) => {
                if catalog::spec(&s.name).is_some() {
                    self.etcd.insert(s.name, (v, s.revision));
                }
            }
            Err(reason) => {
                metrics::counter!("config_rejected").increment(1);
                tracing::warn!(setting = %s.name, %reason, revision = s.revision, "ignoring an invalid live setting; keeping the current value");
            }
        }
    }

    fn publish(&self) {
        if let Some(tx) = &self.tx {
            let next = Arc::new(self.snapshot());
            tx.send_if_modified(|cur| {
                let changed = **cur != *next;
                if changed {
                    *cur = next;
                }
                changed
            });
        }
    }
}

struct Resume {
    overlay: Overlay,
    /// Where the first watch starts: right after the first read.
    first: Option<i64>,
}

impl Follower for Resume {
    async fn resume(
        &mut self,
        client: &Client,
        resume: Option<i64>,
        compacted: bool,
    ) -> Result<Option<i64>, etcd_client::Error> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        if !compacted {
            return Ok(resume);
        }
        let resp = client
            .kv_client()
            .get(
                self.overlay.root.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        self.overlay
            .reset(parse_all(&self.overlay.root, resp.kvs()));
        self.overlay.publish();
        Ok(Some(revision + 1))
    }

    fn handle(&mut self, resp: &WatchResponse) -> Flow {
        for e in resp.events() {
            let Some(kv) = e.kv() else { continue };
            let value: &[u8] = match e.event_type() {
                EventType::Put => kv.value(),
                // Deleted by hand: the same as unset.
                EventType::Delete => b"null",
            };
            if let Some(s) = parse(&self.overlay.root, kv.key(), value, kv.mod_revision()) {
                if let Ok(v) = &s.value {
                    tracing::info!(setting = %s.name, value = %v, revision = s.revision, "live setting applied");
                }
                self.overlay.apply(s);
            }
        }
        self.overlay.publish();
        Flow::Continue
    }
}
