//! The streamer's counters: Prometheus metrics under the contract's names, plus atomics that
//! make the end-of-run summary and tests independent of the global recorder.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Counters {
    pub read: AtomicU64,
    pub published: AtomicU64,
    pub invalid: AtomicU64,
    pub csv_errors: AtomicU64,
    pub missing: AtomicU64,
    pub duplicates: AtomicU64,
    pub throttled: AtomicU64,
    pub publish_errors: AtomicU64,
    /// Device scrapes that failed (exporter unreachable, nvidia-smi failing): no records.
    pub scrape_errors: AtomicU64,
    /// Records etcd refused to take whatever we did (never expected; see `pipeline`).
    pub unpublishable: AtomicU64,
    /// Device samples not taken because etcd was full (device sources cannot wait).
    pub skipped: AtomicU64,
    /// Bytes of file input consumed, for progress reports.
    pub bytes: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
    pub fn read(&self, n: u64) {
        self.read.fetch_add(n, Relaxed);
        metrics::counter!("records_read").increment(n);
    }
    pub fn bytes_read(&self, n: u64) {
        self.bytes.fetch_add(n, Relaxed);
    }
    pub fn published(&self, n: u64) {
        self.published.fetch_add(n, Relaxed);
        metrics::counter!("messages_published").increment(n);
    }
    pub fn invalid(&self) {
        self.invalid.fetch_add(1, Relaxed);
        metrics::counter!("messages_invalid").increment(1);
    }
    pub fn csv_error(&self) {
        self.csv_errors.fetch_add(1, Relaxed);
        self.invalid.fetch_add(1, Relaxed);
        metrics::counter!("csv_read_errors").increment(1);
    }
    pub fn missing(&self) {
        self.missing.fetch_add(1, Relaxed);
        metrics::counter!("readings_missing").increment(1);
    }
    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Relaxed);
        metrics::counter!("messages_duplicated_at_source").increment(1);
    }
    pub fn throttled(&self, n: u64) {
        self.throttled.fetch_add(n, Relaxed);
        metrics::counter!("messages_throttled").increment(n);
    }
    pub fn unpublishable(&self, n: u64) {
        self.unpublishable.fetch_add(n, Relaxed);
        metrics::counter!("records_unpublishable").increment(n);
    }
    pub fn scrape_error(&self) {
        self.scrape_errors.fetch_add(1, Relaxed);
        metrics::counter!("scrape_errors").increment(1);
    }
    /// Device samples dropped for `reason` (`storage_full`): counted, never read.
    pub fn skipped(&self, n: u64, reason: &'static str) {
        self.skipped.fetch_add(n, Relaxed);
        metrics::counter!("samples_skipped", "reason" => reason).increment(n);
    }
    pub fn publish_error(&self) {
        self.publish_errors.fetch_add(1, Relaxed);
        metrics::counter!("publish_errors").increment(1);
    }

    /// Records read but neither published nor refused (invalid, duplicate, missing reading):
    /// what a run that ends now leaves behind.
    pub fn unpublished(&self) -> u64 {
        Self::get(&self.read).saturating_sub(
            Self::get(&self.published)
                + Self::get(&self.invalid)
                + Self::get(&self.duplicates)
                + Self::get(&self.missing),
        )
    }

    /// The contract's one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "read={} published={} invalid={} duplicates={} missing_readings={} csv_read_errors={} publish_errors={} scrape_errors={} skipped={} unpublished={}",
            Self::get(&self.read),
            Self::get(&self.published),
            Self::get(&self.invalid),
            Self::get(&self.duplicates),
            Self::get(&self.missing),
            Self::get(&self.csv_errors),
            Self::get(&self.publish_errors),
            Self::get(&self.scrape_errors),
            Self::get(&self.skipped),
            self.unpublished(),
        )
    }
}
