//! etcd's own metrics around a step: the disk histograms (WAL fsync and backend commit
//! durations), to tell a pipeline stall from a disk stall, and the bytes sent to clients.

use serde::Serialize;

/// Cumulative bucket counts of one etcd histogram: `(upper bound in seconds, count)`.
#[derive(Debug, Clone, Default)]
pub struct Histogram(Vec<(f64, f64)>);

/// What a step's window saw of etcd's disk.
#[derive(Debug, Default, Serialize)]
pub struct DiskStalls {
    pub wal_fsyncs: f64,
    /// WAL fsyncs slower than 128 ms, and the smallest bucket bound covering the slowest one.
    pub wal_fsyncs_over_128ms: f64,
    pub wal_fsync_max_le_ms: f64,
    pub backend_commits_over_128ms: f64,
}

pub async fn read(endpoint: &str, name: &str) -> Histogram {
    let text = match reqwest::get(format!("http://{endpoint}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let prefix = format!("{name}_bucket{{le=\"");
    Histogram(
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect(),
    )
}

impl Histogram {
    fn count(&self, le: f64) -> f64 {
        self.0
            .iter()
            .find(|(b, _)| *b >= le)
            .map_or(0.0, |(_, c)| *c)
    }
    fn total(&self) -> f64 {
        self.count(f64::INFINITY)
    }
    /// Observations above `secs` between `self` (earlier) and `later`.
    fn over(&self, later: &Histogram, secs: f64) -> f64 {
        (later.total() - later.count(secs)) - (self.total() - self.count(secs))
    }
    /// The smallest bucket bound that covers every observation between `self` and `later`.
    fn max_le(&self, later: &Histogram) -> f64 {
        let all = later.total() - self.total();
        later
            .0
            .iter()
            .find(|(b, c)| c - self.count(*b) >= all)
            .map_or(f64::NAN, |(b, _)| *b)
    }
}

const WAL: &str = "etcd_disk_wal_fsync_duration_seconds";
const COMMIT: &str = "etcd_disk_backend_commit_duration_seconds";

/// Snapshot both histograms now.
pub async fn snapshot(endpoint: &str) -> (Histogram, Histogram) {
    (read(endpoint, WAL).await, read(endpoint, COMMIT).await)
}

/// What happened on etcd's disk between two snapshots.
pub fn stalls(before: &(Histogram, Histogram), after: &(Histogram, Histogram)) -> DiskStalls {
    DiskStalls {
        wal_fsyncs: after.0.total() - before.0.total(),
        wal_fsyncs_over_128ms: before.0.over(&after.0, 0.128),
        wal_fsync_max_le_ms: before.0.max_le(&after.0) * 1000.0,
        backend_commits_over_128ms: before.1.over(&after.1, 0.128),
    }
}

/// Bytes etcd has sent to its gRPC clients so far (responses and watch events).
pub async fn grpc_sent_bytes(endpoint: &str) -> f64 {
    let text = match reqwest::get(format!("http://{endpoint}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return f64::NAN,
    };
    text.lines()
        .find_map(|l| {
            l.strip_prefix("etcd_network_client_grpc_sent_bytes_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN)
}
