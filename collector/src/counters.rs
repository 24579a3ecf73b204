//! The collector's counters: exported to Prometheus under the contract's names, and kept as
//! plain atomics per instance so that tests (and the run summary) can read one collector's
//! figures even when several run in one process.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    pub consumed: AtomicU64,
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub invalid: AtomicU64,
    pub batches: AtomicU64,
    pub fenced: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub database_errors: AtomicU64,
    /// The last commit's lag behind its message's creation, in milliseconds.
    pub lag_ms: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn consumed(&self, n: usize) {
        self.consumed.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("messages_consumed").increment(n as u64);
    }

    pub fn committed(
        &self,
        stored: usize,
        duplicates: usize,
        invalid: usize,
        latency_ms: f64,
        lag_ms: f64,
    ) {
        self.stored.fetch_add(stored as u64, Ordering::Relaxed);
        self.duplicates
            .fetch_add(duplicates as u64, Ordering::Relaxed);
        self.invalid.fetch_add(invalid as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.lag_ms.store(lag_ms as u64, Ordering::Relaxed);
        metrics::counter!("messages_processed").increment(stored as u64);
        metrics::counter!("messages_duplicated").increment(duplicates as u64);
        metrics::counter!("messages_invalid").increment(invalid as u64);
        metrics::counter!("batches_processed").increment(1);
        metrics::histogram!("processing_latency_ms").record(latency_ms);
        metrics::histogram!("processing_lag_ms").record(lag_ms);
        metrics::gauge!("processing_lag_ms_last").set(lag_ms);
    }

    pub fn fenced(&self) {
        self.fenced.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("commits_fenced").increment(1);
    }

    pub fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("messages_dead_lettered").increment(1);
    }

    pub fn database_error(&self) {
        self.database_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("database_errors").increment(1);
    }
}
