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

/// Where sources put records: a bounded channel to the publisher, plus the counters.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::Sender<TelemetryRecord>,
    pub counters: Arc<Counters>,
    storage: watch::Receiver<Pressure>,
}

impl Sink {
    pub fn new(
        tx: mpsc::Sender<TelemetryRecord>,
        counters: Arc<Counters>,
        storage: watch::Receiver<Pressure>,
    ) -> Self {
        Self {
            tx,
            counters,
            storage,
        }
    }

    /// etcd has no room now: the pipeline holds what it has, so a source that cannot wait
    /// (a device scrape) skips, and a push is told to come back later.
    pub fn storage_full(&self) -> bool {
        *self.storage.borrow() == Pressure::Full
    }

    /// Counts a device scrape's samples as skipped when storage is full; true if skipped.
    pub fn skip_if_full(&self, samples: usize) -> bool {
        if !self.storage_full() {
            return false;
        }
        self.counters.skipped(samples as u64, "storage_full");
        tracing::warn!(
            samples,
            "etcd is full: this scrape is skipped (samples_skipped{{reason=\"storage_full\"}})"
        );
        true
    }

    /// Hands a record on, waiting while the buffer is full. False once the pipeline is gone.
    /// A record too large to ever be stored is counted invalid and logged here, at the door:
    /// queued, it would block every record behind it.
    pub async fn send(&self, r: TelemetryRecord) -> bool {
        self.counters.read(1);
        if self.too_large(&r) {
            return true;
        }
        self.tx.send(r).await.is_ok()
    }

    /// Same as [`send`](Self::send), for sources that run on a blocking thread.
    pub fn blocking_send(&self, r: TelemetryRecord) -> bool {
        self.counters.read(1);
        if self.too_large(&r) {
            return true;
        }
        self.tx.blocking_send(r).is_ok()
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
