//! The benchmark behind `make bench`: etcd's raw write ceiling, end-to-end ingest with 1 and 4
//! collectors, publication-to-WebSocket latency, gateway query throughput, and peak memory, all
//! measured in one run on this machine. Figures go to stdout as a table and to
//! `bench-results/` as JSON.

pub mod ceiling;
pub mod codec;
pub mod dashboard;
pub mod etcd_disk;
pub mod fleet;
pub mod fold;
pub mod insight;
pub mod memory;
pub mod procs;
pub mod query;
pub mod scenarios;
pub mod security;
pub mod storage;

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub etcd: String,
    pub cluster_members: usize,
    /// The mean of `ceiling_samples` (one before the ingest runs, one after).
    pub ceiling_keys_per_s: f64,
    pub ceiling_samples: Vec<f64>,
    pub ingest: Vec<Ingest>,
    /// 4-collector runs with message states off (MESSAGE_STATE_TTL=0), alternating with the
    /// 4-collector runs of `ingest`, which have them on (the default).
    pub ingest_states_off: Vec<Ingest>,
    pub latency: Option<Latency>,
    pub query: Option<Query>,
    pub big_csv: Option<BigCsv>,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Ingest {
    pub collectors: usize,
    pub records: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub ratio_to_ceiling: f64,
    pub streamer_peak_rss_mb: f64,
    pub collector_peak_rss_mb: f64,
    /// What etcd sent its clients during the run (watch events included), in MB.
    pub etcd_sent_mb: f64,
    /// CPU time etcd (all members) and the collectors (together) spent per stored record.
    pub etcd_cpu_us_per_record: f64,
    pub collector_cpu_us_per_record: f64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub rate: f64,
    pub frames: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub gateway_peak_rss_mb: f64,
    pub etcd_disk: etcd_disk::DiskStalls,
}

#[derive(Debug, Serialize)]
pub struct BigCsv {
    pub bytes: u64,
    pub seconds: f64,
    pub streamer_peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct Query {
    pub tool: String,
    pub stored_records: i64,
    pub requests_per_s: f64,
    pub p99_ms: f64,
    pub paced_requests_per_s: f64,
    pub paced_p99_ms: f64,
    pub uncached_requests_per_s: f64,
    pub uncached_p99_ms: f64,
}

impl Report {
    /// The baseline is the mean of the ceiling samples; every ingest ratio is to it.
    pub fn set_ceiling(&mut self) {
        self.ceiling_keys_per_s = mean(self.ceiling_samples.iter().copied());
        for i in self.ingest.iter_mut().chain(&mut self.ingest_states_off) {
            i.ratio_to_ceiling = i.records_per_s / self.ceiling_keys_per_s;
        }
    }

    /// Ingest runs grouped by collector count, in the order first run.
    fn ingest_by_collectors(&self) -> Vec<(usize, Vec<&Ingest>)> {
        let mut out: Vec<(usize, Vec<&Ingest>)> = Vec::new();
        for i in &self.ingest {
            match out.iter_mut().find(|(n, _)| *n == i.collectors) {
                Some((_, runs)) => runs.push(i),
                None => out.push((i.collectors, vec![i])),
            }
        }
        out
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        t += &format!(
            "etcd {} ({} member{})\n",
            self.etcd,
            self.cluster_members,
            if self.cluster_members == 1 { "" } else { "s" }
        );
        t += "| measure | figure | target |\n|---|---|---|\n";
        let samples: Vec<String> = self
            .ceiling_samples
            .iter()
            .map(|c| format!("{c:.0}"))
            .collect();
        t += &format!("| etcd write ceiling (Txn of 100 puts, 8 clients, 100 B keys, 300 B values; mean of {}) | {:.0} keys/s | baseline |\n", samples.join(" and "), self.ceiling_keys_per_s);
        let configs = self.ingest_by_collectors();
        for (n, runs) in &configs {
            let rates: Vec<String> = runs
                .iter()
                .map(|i| format!("{:.0}", i.records_per_s))
                .collect();
            let rate = mean(runs.iter().map(|i| i.records_per_s));
            t += &format!(
                "| ingest, {n} collector{} ({} records; {} run{}: {} records/s) | {rate:.0} records/s, {:.2} of ceiling | ≥ 30,000/s and ≥ 0.35 |\n",
                if *n == 1 { "" } else { "s" },
                runs[0].records,
                runs.len(),
                if runs.len() == 1 { "" } else { "s" },
                rates.join(", "),
                rate / self.ceiling_keys_per_s
            );
        }
        if let [(1, one), (4, four)] = &configs[..] {
            let rounds: Vec<String> = one
                .iter()
                .zip(four)
                .map(|(a, b)| format!("{:.2}", b.records_per_s / a.records_per_s))
                .collect();
            t += &format!(
                "| 4 collectors vs 1 (ratio of the means; per round {}) | {:.2}x | ≥ 1.0x |\n",
                rounds.join(", "),
                mean(four.iter().map(|i| i.records_per_s))
                    / mean(one.iter().map(|i| i.records_per_s))
            );
        }
        if let (Some((_, on)), false) = (
            configs.iter().find(|(n, _)| *n == 4),
            self.ingest_states_off.is_empty(),
        ) {
            let off = &self.ingest_states_off;
            let rounds: Vec<String> = on
                .iter()
                .zip(off)
                .map(|(a, b)| format!("{:.2}", a.records_per_s / b.records_per_s))
                .collect();
            t += &format!(
                "| ingest with message states on vs off, 4 collectors (off: {} records/s; per round {}) | {:.2}x | ≥ 0.95x |\n",
                off.iter()
                    .map(|i| format!("{:.0}", i.records_per_s))
                    .collect::<Vec<_>>()
                    .join(", "),
                rounds.join(", "),
                mean(on.iter().map(|i| i.records_per_s)) / mean(off.iter().map(|i| i.records_per_s))
            );
        }
        for (n, runs) in &configs {
            let max = |f: fn(&Ingest) -> f64| runs.iter().map(|i| f(i)).fold(0.0, f64::max);
            t += &format!(
                "| etcd → clients during ingest, {n} collector(s) | {:.0} MB | |\n",
                max(|i| i.etcd_sent_mb)
            );
            t += &format!(
                "| CPU per stored record, {n} collector(s) | etcd {:.1} µs, collectors {:.1} µs | |\n",
                mean(runs.iter().map(|i| i.etcd_cpu_us_per_record)),
                mean(runs.iter().map(|i| i.collector_cpu_us_per_record))
            );
            t += &format!(
                "| peak RSS during ingest, {n} collector(s) | streamer {:.0} MB, collector {:.0} MB (largest) | ≤ 64 MB, ≤ 150 MB |\n",
                max(|i| i.streamer_peak_rss_mb),
                max(|i| i.collector_peak_rss_mb)
            );
        }
        if let Some(l) = &self.latency {
            t += &format!(
                "| publish → WebSocket latency at {:.0} records/s ({} frames) | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms | p99 ≤ 250 ms |\n",
                l.rate, l.frames, l.p50_ms, l.p99_ms, l.max_ms
            );
            let d = &l.etcd_disk;
            t += &format!(
                "| etcd disk during the latency run | {:.0} WAL fsyncs, {:.0} over 128 ms (slowest ≤ {:.0} ms); {:.0} backend commits over 128 ms | |\n",
                d.wal_fsyncs, d.wal_fsyncs_over_128ms, d.wal_fsync_max_le_ms, d.backend_commits_over_128ms
            );
            t += &format!("| gateway peak RSS | {:.0} MB | |\n", l.gateway_peak_rss_mb);
        }
        if let Some(q) = &self.query {
            t += &format!(
                "| GET /api/v1/gpus/{{uuid}}/telemetry?limit=100, {} records stored ({}) | {:.0} req/s, p99 {:.1} ms | ≥ 5,000 req/s, p99 ≤ 20 ms |\n",
                q.stored_records, q.tool, q.requests_per_s, q.p99_ms
            );
            t += &format!(
                "| the same paced near {:.0} req/s (wrk delay() per connection) | {:.0} req/s, p99 {:.1} ms | ≥ 5,000 req/s, p99 ≤ 20 ms |\n",
                query::PACED_RATE, q.paced_requests_per_s, q.paced_p99_ms
            );
            t += &format!(
                "| the same with the query cache off (QUERY_CACHE_MB=0: every request reads etcd) | {:.0} req/s, p99 {:.1} ms | |\n",
                q.uncached_requests_per_s, q.uncached_p99_ms
            );
        }
        if let Some(b) = &self.big_csv {
            t += &format!(
                "| streamer peak RSS on a {:.2} GB CSV (published in {:.1} s) | {:.0} MB | ≤ 64 MB |\n",
                b.bytes as f64 / 1e9,
                b.seconds,
                b.streamer_peak_rss_mb
            );
        }
        for n in &self.notes {
            t += &format!("\nnote: {n}");
        }
        t
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0), |(s, n), x| (s + x, n + 1));
    sum / n as f64
}

/// The value at quantile `q` of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Writes a run's figures to `bench-results/{what}-{UTC time}.json` and says where.
pub fn write_results(what: &str, report: &impl Serialize) {
    std::fs::create_dir_all("bench-results").expect("bench-results/");
    let name = format!(
        "bench-results/{what}-{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    std::fs::write(&name, serde_json::to_string_pretty(report).unwrap()).expect("write");
    eprintln!("figures written to {name}");
}
