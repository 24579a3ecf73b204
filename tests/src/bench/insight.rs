//! `bench --insight` (issue 16): what fleet insight costs and how fast it answers.
//!
//! - Ingest of a generated fleet with rule evaluation on (the H100 alert rules and a chain of
//!   two derived metrics) against off (no rules), alternating on fresh etcds, 4 collectors.
//!   "On" stores two derived samples per GPU and instant besides the input; its rate counts
//!   the input only, over the time until input and derived samples are all stored.
//! - Queries on a fleet of 2,504 GPUs (313 hosts × 8) holding a day at 10 s, folded into
//!   one-hour chunks written straight into etcd as the maintainer writes them: the p50 and p99
//!   of a one-day, one-minute `avg` aggregate of one GPU (one metric, and all ten), and of
//!   `fleet/latest`, each request for another GPU so that no answer is served from a cache.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use telemetry::keys::Keys;
use tokio::time::Instant;

use super::fleet;
use super::procs::{free_port, Proc};
use super::quantile;
use super::scenarios::{base_env, generate, ingest, start_collectors};
use crate::EtcdCluster;

const ETCD_ARGS: [&str; 2] = ["--quota-backend-bytes", "8589934592"];
const PREFIX: &str = "/bench";

/// What `--insight` measured.
#[derive(Debug, Default, Serialize)]
pub struct Insight {
    pub ceiling_keys_per_s: f64,
    /// Input records per second, rules off, per round.
    pub ingest_off: Vec<f64>,
    /// Input records per second, alert rules on (no derived metric), per round.
    pub ingest_alerts: Vec<f64>,
    /// Input records per second, alert rules and two derived metrics on, per round.
    pub ingest_on: Vec<f64>,
    pub input_records: u64,
    pub derived_records: u64,
    pub fleet_gpus: usize,
    pub fleet_samples: u64,
    pub fleet_chunks: u64,
    pub fleet_write_s: f64,
    pub gateway_ready_s: f64,
    /// One GPU, one day, 1-minute avg of one metric: (p50, p99) ms.
    pub aggregate_one_metric_ms: (f64, f64),
    /// The same over all ten metrics.
    pub aggregate_all_metrics_ms: (f64, f64),
    /// `fleet/latest?metric=DCGM_FI_DEV_GPU_TEMP`: (p50, p99) ms.
    pub fleet_latest_ms: (f64, f64),
    pub requests: usize,
}

pub async fn run(quick: bool) {
    let mut report = Insight::default();
    eprintln!("[1/3] etcd write ceiling");
    {
        let etcd = EtcdCluster::start(1, &ETCD_ARGS).await;
        let secs = Duration::from_secs(if quick { 3 } else { 8 });
        report.ceiling_keys_per_s = super::ceiling::measure(&etcd.all_endpoints(), 8, secs).await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (hosts, steps) = if quick { (25, 10) } else { (100, 63) };
    let fleet = dir.path().join("fleet.csv");
    report.input_records = generate(&fleet, hosts, steps, 1);
    report.derived_records = (hosts * 8 * steps * 2) as u64;
    let rounds = if quick { 1 } else { 2 };
    for round in 1..=rounds {
        for rules in [Rules::Off, Rules::Alerts, Rules::AlertsAndDerived] {
            eprintln!(
                "[2/3] ingest of {} records, {rules:?}, round {round} of {rounds}",
                report.input_records,
            );
            let rate = ingest_with_rules(&fleet, &report, rules).await;
            match rules {
                Rules::Off => report.ingest_off.push(rate),
                Rules::Alerts => report.ingest_alerts.push(rate),
                Rules::AlertsAndDerived => report.ingest_on.push(rate),
            }
        }
    }
    let (gpu_hosts, requests) = if quick { (25, 60) } else { (313, 300) };
    report.requests = requests;
    eprintln!(
        "[3/3] queries on {} GPUs holding a day at 10 s, folded",
        gpu_hosts * 8
    );
    queries(&mut report, gpu_hosts, requests).await;
    println!("{}", table(&report));
    super::write_results("insight", &report);
}

/// What is evaluated during an ingest.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rules {
    /// No alert rule, no derived metric.
    Off,
    /// The default H100 alert rules.
    Alerts,
    /// Those and two derived metrics (a chain), which store two more samples per instant.
    AlertsAndDerived,
}

/// One ingest on a fresh etcd; input records per second.
async fn ingest_with_rules(fleet: &Path, report: &Insight, rules: Rules) -> f64 {
    let etcd = EtcdCluster::start(1, &ETCD_ARGS).await;
    let client = etcd.client().await;
    let keys = Keys::new(PREFIX);
    let on = rules == Rules::AlertsAndDerived;
    let alerts = match rules {
        Rules::Off => serde_json::json!([]),
        _ => telemetry::settings::catalog::spec(telemetry::settings::catalog::ALERTS_RULES)
            .map(|s| (s.default)())
            .unwrap_or_default(),
    };
    let derived = if on {
        serde_json::json!([
            {"name": "mem_used_pct", "expr": "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) * 100"},
            {"name": "mem_free_pct", "expr": "100 - mem_used_pct"},
        ])
    } else {
        serde_json::json!([])
    };
    let rules = alerts;
    let mut kv = client.kv_client();
    kv.put(keys.config("alerts.rules"), rules.to_string(), None)
        .await
        .expect("set alerts.rules");
    kv.put(keys.config("derived.metrics"), derived.to_string(), None)
        .await
        .expect("set derived.metrics");
    let collectors = start_collectors(4, &etcd.all_endpoints(), PREFIX);
    let expect = report.input_records + if on { report.derived_records } else { 0 };
    let run = ingest(&etcd, PREFIX, fleet, expect, &collectors, f64::NAN).await;
    collectors.0.into_iter().for_each(|p| p.stop());
    report.input_records as f64 / run.seconds
}

const HOUR_NS: i64 = 3_600_000_000_000;

async fn queries(report: &mut Insight, hosts: usize, requests: usize) {
    let etcd = EtcdCluster::start(1, &ETCD_ARGS).await;
    let client = etcd.client().await;
    let keys = Keys::new(PREFIX);
    // A day that ended an hour ago: every window closed and folded.
    let now = chrono::Utc::now().timestamp_nanos_opt().expect("now");
    let day_start = (now - 25 * HOUR_NS).div_euclid(HOUR_NS) * HOUR_NS;
    let started = Instant::now();
    let (samples, chunks) = fleet::write_folded(&client, &keys, hosts, day_start, (24, 360)).await;
    report.fleet_write_s = started.elapsed().as_secs_f64();
    report.fleet_gpus = hosts * 8;
    report.fleet_samples = samples;
    report.fleet_chunks = chunks;

    let port = free_port();
    let mut env = base_env(&etcd.all_endpoints(), PREFIX);
    env.push(("GATEWAY_PORT", port.to_string()));
    env.push(("RATE_LIMIT_RPS", "0".into()));
    let started = Instant::now();
    let gateway = Proc::spawn("gateway", &[], &env);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..1200 {
        if http
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the gateway did not become ready");
    report.gateway_ready_s = started.elapsed().as_secs_f64();

    let day = |t: i64| telemetry::record::format_timestamp(t);
    let (from, to) = (day(day_start), day(day_start + 24 * HOUR_NS));
    let gpus = hosts * 8;
    let path = |i: usize, metric: Option<&str>| {
        let g = fleet::gpu((i * 7919) % gpus / 8, (i * 7919) % 8);
        let m = metric.map(|m| format!("&metric={m}")).unwrap_or_default();
        format!(
            "{base}/api/v1/gpus/{}/telemetry?step=1m&agg=avg&start_time={from}&end_time={to}{m}",
            g.uuid
        )
    };
    // Every answer is checked: 1,440 points per metric.
    let one = timed(
        &http,
        requests,
        |i| path(i, Some("DCGM_FI_DEV_GPU_TEMP")),
        1440,
    )
    .await;
    let all = timed(&http, requests, |i| path(i + requests, None), 14_400).await;
    let latest = timed(
        &http,
        requests,
        |_| format!("{base}/api/v1/fleet/latest?metric=DCGM_FI_DEV_GPU_TEMP"),
        gpus,
    )
    .await;
    report.aggregate_one_metric_ms = one;
    report.aggregate_all_metrics_ms = all;
    report.fleet_latest_ms = latest;
    gateway.stop();
}

/// (p50, p99) in ms of `n` sequential requests, each answering `count`.
async fn timed(
    http: &reqwest::Client,
    n: usize,
    url: impl Fn(usize) -> String,
    count: usize,
) -> (f64, f64) {
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let u = url(i);
        let t = Instant::now();
        let resp = http.get(&u).send().await.expect("request");
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.expect("json");
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(status.is_success(), "{u}: {status} {body}");
        assert_eq!(body["count"].as_u64(), Some(count as u64), "{u}");
    }
    ms.sort_by(f64::total_cmp);
    (quantile(&ms, 0.5), quantile(&ms, 0.99))
}

fn table(r: &Insight) -> String {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (off, alerts, on) = (
        mean(&r.ingest_off),
        mean(&r.ingest_alerts),
        mean(&r.ingest_on),
    );
    let stored_ratio =
        on * (r.input_records + r.derived_records) as f64 / r.input_records as f64 / off;
    let mut t = String::new();
    t += "| insight (issue 16) | figure | against |\n|---|---|---|\n";
    t += &format!(
        "| etcd write ceiling | {:.0} keys/s | baseline |\n",
        r.ceiling_keys_per_s
    );
    t += &format!(
        "| ingest, rules off (4 collectors, {} records) | {off:.0} records/s | {:.2}× ceiling |\n",
        r.input_records,
        off / r.ceiling_keys_per_s
    );
    t += &format!(
        "| ingest, H100 alert rules on | {alerts:.0} records/s | **{:.2}× off** (aim ≥ 0.9) |\n",
        alerts / off
    );
    t += &format!(
        "| ingest, alert rules + 2 derived metrics on (+{} derived samples stored) | {on:.0} input records/s | **{:.2}× off** (aim ≥ 0.9); stored samples/s {stored_ratio:.2}× off |\n",
        r.derived_records,
        on / off
    );
    t += &format!(
        "| fleet: {} GPUs × 1 day at 10 s × 10 metrics, folded | {} samples in {} chunks, written in {:.0} s | |\n",
        r.fleet_gpus, r.fleet_samples, r.fleet_chunks, r.fleet_write_s
    );
    t += &format!(
        "| gateway ready (latest index loaded) | {:.1} s | |\n",
        r.gateway_ready_s
    );
    let q = |(p50, p99): (f64, f64)| format!("p50 {p50:.1} ms, **p99 {p99:.1} ms**");
    t += &format!(
        "| one GPU, 1 day, step=1m avg, 1 metric (1,440 points) | {} | aim p99 ≤ 50 ms |\n",
        q(r.aggregate_one_metric_ms)
    );
    t += &format!(
        "| one GPU, 1 day, step=1m avg, 10 metrics (14,400 points) | {} | |\n",
        q(r.aggregate_all_metrics_ms)
    );
    t += &format!(
        "| fleet/latest, {} GPUs | {} | aim p99 ≤ 50 ms |\n",
        r.fleet_gpus,
        q(r.fleet_latest_ms)
    );
    t += &format!(
        "| requests per figure | {} sequential, another GPU each | |\n",
        r.requests
    );
    t
}
