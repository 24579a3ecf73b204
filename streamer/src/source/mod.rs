//! Inputs of the streamer. Each is a [`Source`]: it reads records from somewhere and hands
//! them to a [`Sink`], which counts them and applies backpressure (a full buffer makes the
//! source wait). Adding an input means adding one file here.

pub mod csv;
pub mod dcgm;
pub mod ingest;
pub mod nvidia_smi;

use std::sync::Arc;

use crate::dcgm_csv::RowError;
use futures::future::BoxFuture;
use telemetry::proto::TelemetryRecord;
use telemetry::settings::Settings;
use telemetry::storage::Pressure;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{0}")]
    Other(String),
}

pub trait Source: Send + 'static {
    /// For logs.
    fn name(&self) -> String;
    /// Reads until the input ends or `stop` fires.
    fn run(
        self: Box<Self>,
        sink: Sink,
        stop: CancellationToken,
    ) -> BoxFuture<'static, Result<(), SourceError>>;
}

/// A record on its way to the batcher, with the trace it belongs to, if its source has one.
#[derive(Debug)]
pub struct Input {
    pub record: TelemetryRecord,
    pub trace: Option<Arc<str>>,
}

/// Where sources put records: a bounded channel to the publisher, plus the counters.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::Sender<Input>,
    pub counters: Arc<Counters>,
    gate: Gate,
}

/// What decides whether the pipeline takes input now. Kept apart from [`Sink`] so that a
/// reporter can ask without holding the record channel open.
#[derive(Clone)]
pub struct Gate {
    storage: watch::Receiver<Pressure>,
    settings: Settings,
}

impl Gate {
    pub fn new(storage: watch::Receiver<Pressure>, settings: Settings) -> Self {
        Self { storage, settings }
    }

    /// Why input is held now, if it is: the kill switch, or etcd without room.
    pub fn held(&self) -> Option<Held> {
        if !self.settings.now().ingestion_enabled() {
            Some(Held::IngestionOff)
        } else if *self.storage.borrow() == Pressure::Full {
            Some(Held::StorageFull)
        } else {
            None
        }
    }
}

/// Why the pipeline holds its input now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The kill switch is off (`ingestion.enabled=false`).
    IngestionOff,
    /// etcd is at its storage budget.
    StorageFull,
}

impl Held {
    /// The `reason` label of `samples_skipped`.
    pub fn reason(self) -> &'static str {
        match self {
            Held::IngestionOff => "ingestion_disabled",
            Held::StorageFull => "storage_full",
        }
    }

    /// The error code a push is refused with.
    pub fn code(self) -> &'static str {
        match self {
            Held::IngestionOff => "INGESTION_DISABLED",
            Held::StorageFull => "STORAGE_FULL",
        }
    }

    /// What a refused push is told.
    pub fn message(self) -> &'static str {
        match self {
            Held::IngestionOff => "ingestion is switched off (live setting ingestion.enabled=false); nothing was taken. Retry later.",
            Held::StorageFull => "etcd is full; the pipeline holds its input until the storage maintainer frees space. Retry later.",
        }
    }
}

impl Sink {
    pub fn new(tx: mpsc::Sender<Input>, counters: Arc<Counters>, gate: Gate) -> Self {
        Self { tx, counters, gate }
    }

    /// Whether the pipeline holds what it has now (the kill switch, or etcd without room): a
    /// source that cannot wait (a device scrape) skips, and a push is told to come back later.
    /// File sources simply wait, since the pipeline stops taking their records.
    pub fn held(&self) -> Option<Held> {
        self.gate.held()
    }

    /// Counts a device scrape's samples as skipped while input is held; true if skipped.
    pub fn skip_if_held(&self, samples: usize) -> bool {
        let Some(held) = self.held() else {
            return false;
        };
        self.counters.skipped(samples as u64, held.reason());
        tracing::warn!(
            samples,
            reason = held.reason(),
            "input is held: this scrape is skipped (counted in samples_skipped)"
        );
        true
    }

    /// Hands a record on, waiting while the buffer is full. False once the pipeline is gone.
    /// A record too large to ever be stored is counted invalid and logged here, at the door:
    /// queued, it would block every record behind it.
    pub async fn send(&self, r: TelemetryRecord) -> bool {
        self.send_traced(r, None).await
    }

    /// [`send`](Self::send) for a record of a known trace (a push request's `traceparent`).
    pub async fn send_traced(&self, record: TelemetryRecord, trace: Option<Arc<str>>) -> bool {
        self.counters.read(1);
        if self.too_large(&record) {
            return true;
        }
        self.tx.send(Input { record, trace }).await.is_ok()
    }

    /// Same as [`send`](Self::send), for sources that run on a blocking thread.
    pub fn blocking_send(&self, r: TelemetryRecord) -> bool {
        self.counters.read(1);
        if self.too_large(&r) {
            return true;
        }
        self.tx
            .blocking_send(Input {
                record: r,
                trace: None,
            })
            .is_ok()
    }

    fn too_large(&self, r: &TelemetryRecord) -> bool {
        match telemetry::validate::check_size(r) {
            Ok(()) => false,
            Err(reason) => {
                self.counters.invalid();
                tracing::warn!(hostname = %r.hostname, gpu_id = %r.gpu_id, metric = %r.metric, "record refused: {reason}");
                true
            }
        }
    }

    /// Counts and logs a row that did not become a record.
    pub fn reject(&self, source: &str, e: &RowError) {
        self.counters.read(1);
        match e {
            RowError::Malformed { .. } => self.counters.csv_error(),
            RowError::Invalid { .. } => self.counters.invalid(),
            RowError::MissingReading { .. } => self.counters.missing(),
        }
        tracing::warn!(source, "{e}");
    }
}
