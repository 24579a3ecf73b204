//! The fan-out of newly stored records to WebSocket clients.
//!
//! The gateway's one data watch ([`crate::live::follow`]) publishes every stored record here
//! once; the hub decodes it once and offers the frame to every client whose filter matches,
//! through that client's bounded queue. A full queue drops the frame for that client only (and
//! counts it): the hub never waits for a client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use prost::Message as _;
use serde::Serialize;
use telemetry::entries::TelemetryEntry;
use telemetry::proto::TelemetryRecord;
use tokio::sync::mpsc;

/// One stored record (or, for clients that asked, one alert's change), ready to send.
#[derive(Debug)]
pub struct Frame {
    pub revision: i64,
    /// An alert's change rather than a record: only for clients with `?include=alerts`.
    pub alert: bool,
    pub hostname: String,
    pub gpu_id: String,
    pub uuid: String,
    pub metric: String,
    pub json: Utf8Bytes,
}

#[derive(Serialize)]
struct FrameBody<'a> {
    revision: i64,
    #[serde(flatten)]
    entry: &'a TelemetryEntry,
}

impl Frame {
    pub(crate) fn of(revision: i64, value: &[u8]) -> Option<Arc<Frame>> {
        let rec = TelemetryRecord::decode(value).ok()?;
        let entry = TelemetryEntry::from(&rec);
        let json = serde_json::to_string(&FrameBody {
            revision,
            entry: &entry,
        })
        .ok()?;
        Some(Arc::new(Frame {
            revision,
            alert: false,
            hostname: rec.hostname,
            gpu_id: rec.gpu_id,
            uuid: rec.uuid,
            metric: rec.metric,
            json: json.into(),
        }))
    }
}

#[derive(Serialize)]
struct AlertBody<'a> {
    r#type: &'static str,
    revision: i64,
    #[serde(flatten)]
    alert: &'a telemetry::rules::Alert,
}

impl Frame {
    /// An alert's change. `cleared` is a pending alert that stopped holding before it fired:
    /// it is gone, and its frame says `"state": "inactive"`.
    pub(crate) fn of_alert(revision: i64, value: &[u8], cleared: bool) -> Option<Arc<Frame>> {
        let alert: telemetry::rules::Alert = serde_json::from_slice(value).ok()?;
        let mut json = serde_json::to_value(AlertBody {
            r#type: "alert",
            revision,
            alert: &alert,
        })
        .ok()?;
        if cleared {
            json["state"] = "inactive".into();
        }
        Some(Arc::new(Frame {
            revision,
            alert: true,
            hostname: alert.hostname,
            gpu_id: alert.gpu_id,
            uuid: alert.uuid,
            metric: alert.metric,
            json: json.to_string().into(),
        }))
    }
}

/// One connected client as the hub sees it.
struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<Arc<Frame>>,
    dropped: Arc<AtomicU64>,
}

/// Fans frames out to every client: filtered first, then into that client's bounded queue.
/// A full queue drops the frame for that client only, and counts it.
#[derive(Clone, Default)]
pub struct Hub {
    clients: Arc<Mutex<Vec<Subscriber>>>,
}

impl Hub {
    pub(crate) fn subscribe(
        &self,
        filter: Filter,
        capacity: usize,
    ) -> (mpsc::Receiver<Arc<Frame>>, Arc<AtomicU64>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        self.clients.lock().unwrap().push(Subscriber {
            filter,
            tx,
            dropped: dropped.clone(),
        });
        (rx, dropped)
    }

    pub(crate) fn publish(&self, revision: i64, value: &[u8]) {
        self.offer(|| Frame::of(revision, value));
    }

    /// Offers an alert's change to the clients that asked for alerts.
    pub(crate) fn publish_alert(&self, revision: i64, value: &[u8], cleared: bool) {
        self.offer(|| Frame::of_alert(revision, value, cleared));
    }

    fn offer(&self, frame: impl FnOnce() -> Option<Arc<Frame>>) {
        let mut clients = self.clients.lock().unwrap();
        clients.retain(|c| !c.tx.is_closed());
        if clients.is_empty() {
            return;
        }
        let Some(frame) = frame() else {
            return;
        };
        for c in clients.iter().filter(|c| c.filter.accepts(&frame)) {
            if c.tx.try_send(frame.clone()).is_err() {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ws_frames_dropped").increment(1);
            }
        }
    }
}

/// What a client asked to see.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) gpu: Option<String>,
    pub(crate) hostname: Option<String>,
    pub(crate) metric: Option<String>,
    /// Whether alert frames are wanted too (`?include=alerts`).
    pub(crate) alerts: bool,
}

impl Filter {
    pub(crate) fn accepts(&self, f: &Frame) -> bool {
        (!f.alert || self.alerts)
            && self
                .gpu
                .as_ref()
                .is_none_or(|g| *g == f.uuid || *g == f.gpu_id)
            && self.hostname.as_ref().is_none_or(|h| *h == f.hostname)
            && self.metric.as_ref().is_none_or(|m| *m == f.metric)
    }
}
