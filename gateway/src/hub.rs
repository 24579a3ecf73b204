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

/// One stored record, ready to send.
#[derive(Debug)]
pub struct Frame {
    pub revision: i64,
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
            hostname: rec.hostname,
            gpu_id: rec.gpu_id,
            uuid: rec.uuid,
            metric: rec.metric,
            json: json.into(),
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
        let mut clients = self.clients.lock().unwrap();
        clients.retain(|c| !c.tx.is_closed());
        if clients.is_empty() {
            return;
        }
        let Some(frame) = Frame::of(revision, value) else {
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
}

impl Filter {
    pub(crate) fn accepts(&self, f: &Frame) -> bool {
        self.gpu
            .as_ref()
            .is_none_or(|g| *g == f.uuid || *g == f.gpu_id)
            && self.hostname.as_ref().is_none_or(|h| *h == f.hostname)
            && self.metric.as_ref().is_none_or(|m| *m == f.metric)
    }
}
