//! End-to-end scenarios against release binaries: ingest and latency.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::procs::{counter_sum, cpu_seconds_of, free_port, Proc};
use super::{etcd_disk, quantile, Ingest, Latency};
use crate::EtcdCluster;

pub(crate) fn base_env(endpoints: &[String], prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ETCD_ENDPOINTS", endpoints.join(",")),
        ("ETCD_PREFIX", prefix.to_string()),
    ]
}

/// Writes a generated fleet of `hosts x 8 GPUs x steps x 10 metrics` records.
pub fn generate(out: &Path, hosts: usize, steps: usize, seed: u64) -> u64 {
    let status = std::process::Command::new(super::procs::release_binary("streamer"))
        .args([
            "generate",
            "--hosts",
            &hosts.to_string(),
            "--gpus-per-host",
            "8",
            "--steps",
            &steps.to_string(),
            "--seed",
            &seed.to_string(),
            "--out",
        ])
        .arg(out)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("generate");
    assert!(status.success());
    (hosts * 8 * steps * 10) as u64
}

pub fn start_collectors(n: usize, endpoints: &[String], prefix: &str) -> (Vec<Proc>, Vec<u16>) {
    start_collectors_with(n, endpoints, prefix, &[])
}

/// [`start_collectors`] with more environment (a setting under test).
pub fn start_collectors_with(
    n: usize,
    endpoints: &[String],
    prefix: &str,
    extra: &[(&'static str, String)],
) -> (Vec<Proc>, Vec<u16>) {
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    for i in 0..n {
        let port = free_port();
        let mut env = base_env(endpoints, prefix);
        env.push(("ADMIN_LISTEN", format!("127.0.0.1:{port}")));
        env.push(("COLLECTOR_ID", format!("bench-{i}")));
        env.extend(extra.iter().cloned());
        procs.push(Proc::spawn("collector", &[], &env));
        ports.push(port);
    }
    (procs, ports)
}

/// Publishes `csv` with the streamer and waits until the collectors have stored `records` more.
pub async fn ingest(
    etcd: &EtcdCluster,
    prefix: &str,
    csv: &Path,
    records: u64,
    collectors: &(Vec<Proc>, Vec<u16>),
    ceiling: f64,
) -> Ingest {
    ingest_with(etcd, prefix, csv, records, collectors, ceiling, &[]).await
}

/// [`ingest`] with more environment for the streamer (TLS and a login, say).
pub async fn ingest_with(
    etcd: &EtcdCluster,
    prefix: &str,
    csv: &Path,
    records: u64,
    collectors: &(Vec<Proc>, Vec<u16>),
    ceiling: f64,
    streamer_env: &[(&'static str, String)],
) -> Ingest {
    let endpoints = &etcd.all_endpoints();
    let ports = &collectors.1;
    let collector_pids: Vec<u32> = collectors.0.iter().map(|p| p.child.id()).collect();
    // Wait until every collector serves its metrics (it has connected and registered).
    for _ in 0..200 {
        if futures::future::join_all(
            ports
                .iter()
                .map(|p| reqwest::get(format!("http://127.0.0.1:{p}/ready"))),
        )
        .await
        .iter()
        .all(|r| r.as_ref().is_ok_and(|r| r.status().is_success()))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // partitions claimed
    let before = counter_sum(ports, "messages_processed").await
        + counter_sum(ports, "messages_duplicated").await;
    let sent_before = etcd_disk::grpc_sent_bytes(&endpoints[0]).await;
    let (etcd_cpu, collector_cpu) = (
        cpu_seconds_of(&etcd.pids()),
        cpu_seconds_of(&collector_pids),
    );
    let started = Instant::now();
    let mut env = base_env(endpoints, prefix);
    env.push(("ADMIN_LISTEN", String::new()));
    env.extend(streamer_env.iter().cloned());
    let streamer = Proc::spawn("streamer", &["--csv", csv.to_str().unwrap()], &env);
    let pid = streamer.child.id();
    let mut streamer_rss: f64 = 0.0;
    let mut streamer = Some(streamer);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(s) = streamer.as_mut() {
            streamer_rss = streamer_rss.max(super::procs::peak_rss_mb(pid));
            if let Ok(Some(status)) = s.child.try_wait() {
                assert!(status.success(), "streamer failed: {status}");
                streamer = None;
            }
        }
        let done = counter_sum(ports, "messages_processed").await
            + counter_sum(ports, "messages_duplicated").await
            - before;
        if done >= records as f64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "ingest did not finish: {done} of {records}"
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let etcd_cpu = cpu_seconds_of(&etcd.pids()) - etcd_cpu;
    let collector_cpu = cpu_seconds_of(&collector_pids) - collector_cpu;
    let sent = etcd_disk::grpc_sent_bytes(&endpoints[0]).await - sent_before;
    if let Some(s) = streamer {
        let _ = s.child.wait_with_output();
    }
    let collector_rss = collectors
        .0
        .iter()
        .map(|p| p.peak_rss_mb())
        .fold(0.0, f64::max);
    let rate = records as f64 / seconds;
    Ingest {
        collectors: collectors.0.len(),
        records,
        seconds,
        records_per_s: rate,
        ratio_to_ceiling: rate / ceiling,
        streamer_peak_rss_mb: streamer_rss,
        collector_peak_rss_mb: collector_rss,
        etcd_sent_mb: sent / 1e6,
        etcd_cpu_us_per_record: etcd_cpu * 1e6 / records as f64,
        collector_cpu_us_per_record: collector_cpu * 1e6 / records as f64,
    }
}

/// A looping streamer at `rate` records/s; latency = WebSocket arrival − the record's timestamp
/// (stamped when the streamer publishes it).
pub async fn latency(
    endpoints: &[String],
    prefix: &str,
    csv: &Path,
    rate: f64,
    secs: u64,
) -> Latency {
    let port = free_port();
    let mut env = base_env(endpoints, prefix);
    env.push(("GATEWAY_PORT", port.to_string()));
    env.push(("RATE_LIMIT_RPS", "0".into()));
    env.push(("WS_BUFFER", "65536".into()));
    let gateway = Proc::spawn("gateway", &[], &env);
    let base = format!("127.0.0.1:{port}");
    for _ in 0..200 {
        if reqwest::get(format!("http://{base}/ready"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{base}/api/v1/ws/telemetry"))
        .await
        .expect("ws connect");
    let mut senv = base_env(endpoints, prefix);
    senv.push(("ADMIN_LISTEN", String::new()));
    senv.push(("STREAM_RATE", rate.to_string()));
    let streamer = Proc::spawn(
        "streamer",
        &["--csv", csv.to_str().unwrap(), "--loop"],
        &senv,
    );
    let warmup = Instant::now() + Duration::from_secs(2);
    let mut disk_before = None;
    let end = warmup + Duration::from_secs(secs);
    let mut samples = Vec::new();
    while Instant::now() < end {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await
        else {
            break;
        };
        let now = chrono::Utc::now();
        if Instant::now() < warmup {
            continue;
        }
        if disk_before.is_none() {
            disk_before = Some(etcd_disk::snapshot(&endpoints[0]).await);
        }
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
            if let Some(ts) = v["timestamp"]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            {
                samples.push(
                    (now - ts.with_timezone(&chrono::Utc))
                        .num_microseconds()
                        .unwrap_or(0) as f64
                        / 1000.0,
                );
            }
        }
    }
    let disk_after = etcd_disk::snapshot(&endpoints[0]).await;
    streamer.stop();
    let gateway_rss = gateway.peak_rss_mb();
    gateway.stop();
    samples.sort_by(f64::total_cmp);
    Latency {
        rate,
        frames: samples.len(),
        p50_ms: quantile(&samples, 0.5),
        p99_ms: quantile(&samples, 0.99),
        max_ms: samples.last().copied().unwrap_or(f64::NAN),
        gateway_peak_rss_mb: gateway_rss,
        etcd_disk: etcd_disk::stalls(&disk_before.unwrap_or_default(), &disk_after),
    }
}
