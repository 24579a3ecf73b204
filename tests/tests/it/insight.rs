//! Fleet insight (issue 16) with real etcd and the real binaries: `fleet/latest` equals the
//! newest input value of every GPU, whether the gateway saw the records arrive or started
//! after they were folded; aggregated queries equal aggregates computed from the input CSV
//! over raw, folded and mixed data.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::DateTime;
use pipeline_tests::checks::{csv_records, stored};
use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{count, unique_prefix, wait_until};
use pipeline_tests::{sample_csv, EtcdCluster};
use serde_json::Value;
use telemetry::proto::TelemetryRecord;

use crate::readme::{becomes_ready, cmd, get, ready_gateway};

fn collector(etcd: &EtcdCluster, prefix: &str, id: &str, fold: bool) -> (Proc, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let p = Proc::spawn(
        id,
        cmd("collector", &etcd.endpoints(), prefix)
            .args(["--id", id])
            .env("ADMIN_LISTEN", &admin)
            .env("STORAGE_CHECK_INTERVAL", "200ms")
            .env("STORAGE_FOLD_WINDOW", "5m")
            .env("STORAGE_FOLD", fold.to_string()),
    );
    (p, admin)
}

pub(crate) async fn stream(etcd: &EtcdCluster, prefix: &str, csv: &Path) {
    let mut s = Proc::spawn(
        "streamer",
        cmd("streamer", &etcd.endpoints(), prefix)
            .arg("--csv")
            .arg(csv)
            .env("ADMIN_LISTEN", ""),
    );
    let exit = s.wait_exit(Duration::from_secs(120)).await;
    assert!(exit.is_some_and(|e| e.success()), "{}", s.stderr());
}

async fn wait_stored(etcd: &EtcdCluster, prefix: &str, want: i64) {
    let client = etcd.client().await;
    let data = format!("{prefix}/telemetry/data/");
    let ok = wait_until(Duration::from_secs(90), || async {
        stored(&client, &data).await == want
    })
    .await;
    assert!(ok, "stored {} of {want}", stored(&client, &data).await);
}

async fn wait_folded(etcd: &EtcdCluster, prefix: &str, log: &Proc) {
    let client = etcd.client().await;
    let raw = format!("{prefix}/telemetry/data/");
    let ok = wait_until(Duration::from_secs(90), || async {
        count(&client, &raw).await == 0
    })
    .await;
    assert!(ok, "still raw after 90 s:\n{}", log.stderr());
}

async fn body(url: &str) -> Value {
    match get(url).await {
        Some((200, b)) => b,
        other => panic!("GET {url}: {other:?}"),
    }
}

/// The newest value per (host, GPU) of `metric` in `records`; a tie keeps the larger value.
fn newest(records: &[TelemetryRecord], metric: &str) -> BTreeMap<(String, String), (i64, f64)> {
    let mut out: BTreeMap<(String, String), (i64, f64)> = BTreeMap::new();
    for r in records.iter().filter(|r| r.metric == metric) {
        let e = out
            .entry((r.hostname.clone(), r.gpu_id.clone()))
            .or_insert((r.timestamp_unix_nano, r.value));
        if (r.timestamp_unix_nano, r.value) > *e {
            *e = (r.timestamp_unix_nano, r.value);
        }
    }
    out
}

fn answered(body: &Value) -> BTreeMap<(String, String), (i64, f64)> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| {
            let t = DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
            (
                (
                    e["hostname"].as_str().unwrap().to_string(),
                    e["gpu_id"].as_str().unwrap().to_string(),
                ),
                (
                    t.timestamp_nanos_opt().unwrap(),
                    e["value"].as_f64().unwrap(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_latest_is_the_newest_input_value_of_every_gpu_seen_live_or_loaded_from_chunks() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("fleet-latest");
    // One gateway sees the records arrive through its watch...
    let (_live_gw, live_port) = ready_gateway(&etcd.endpoints(), &prefix).await;
    let (folder, admin) = collector(&etcd, &prefix, "folder", true);
    assert!(becomes_ready(&admin, 60).await, "{}", folder.stderr());
    stream(&etcd, &prefix, &sample_csv()).await;
    wait_stored(&etcd, &prefix, 2470).await;
    wait_folded(&etcd, &prefix, &folder).await;
    // ...the other starts once everything is folded, and loads the index from the chunks.
    let (_loaded_gw, loaded_port) = ready_gateway(&etcd.endpoints(), &prefix).await;

    let records = csv_records(&sample_csv());
    let metrics: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r.metric.as_str()).collect();
    assert_eq!(metrics.len(), 10);
    for port in [live_port, loaded_port] {
        let base = format!("http://127.0.0.1:{port}");
        for m in &metrics {
            let want = newest(&records, m);
            let got = body(&format!("{base}/api/v1/fleet/latest?metric={m}")).await;
            assert_eq!(answered(&got), want, "{m} on port {port}");
        }
        let temps = body(&format!(
            "{base}/api/v1/fleet/latest?metric=DCGM_FI_DEV_GPU_TEMP"
        ))
        .await;
        assert_eq!(temps["count"], 247);
        let one_host = &temps["data"][0]["hostname"];
        let host = one_host.as_str().unwrap();
        let narrowed = body(&format!(
            "{base}/api/v1/fleet/latest?metric=DCGM_FI_DEV_GPU_TEMP&hostname={host}"
        ))
        .await;
        let want_host = newest(&records, "DCGM_FI_DEV_GPU_TEMP")
            .into_keys()
            .filter(|(h, _)| h == host)
            .count();
        assert_eq!(narrowed["count"], want_host);

        let summary = body(&format!(
            "{base}/api/v1/fleet/summary?metric=DCGM_FI_DEV_GPU_TEMP"
        ))
        .await;
        let s = &summary["data"][0];
        let values: Vec<f64> = newest(&records, "DCGM_FI_DEV_GPU_TEMP")
            .into_values()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(s["fleet"]["count"], 247, "{s}");
        assert_eq!(
            s["fleet"]["max"].as_f64(),
            values.iter().copied().reduce(f64::max)
        );
        assert_eq!(
            s["fleet"]["min"].as_f64(),
            values.iter().copied().reduce(f64::min)
        );
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((s["fleet"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
        assert_eq!(s["hosts"].as_array().map(Vec::len), Some(31));
        let all = body(&format!("{base}/api/v1/fleet/summary")).await;
        assert_eq!(all["count"], 10, "one summary per metric");

        let (status, err) = get(&format!("{base}/api/v1/fleet/latest")).await.unwrap();
        assert_eq!(
            (status, err["code"].as_str()),
            (400, Some("MISSING_METRIC"))
        );
    }
}

/// A generated fleet of one host's 2 GPUs, `steps` scrapes 10 s apart from `start`.
fn fleet(dir: &Path, name: &str, start: &str, steps: usize) -> PathBuf {
    let out = dir.join(name);
    let steps = steps.to_string();
    pipeline_tests::services::generate(
        &out,
        &[
            "--hosts",
            "1",
            "--gpus-per-host",
            "2",
            "--steps",
            &steps,
            "--interval",
            "10s",
            "--seed",
            "7",
            "--start",
            start,
        ],
    );
    out
}

/// Aggregates per (bucket start ns, metric): (avg, min, max, last, count).
type Expected = BTreeMap<(i64, String), (f64, f64, f64, f64, u64)>;

/// Aggregates computed from the input.
fn expected(records: &[TelemetryRecord], uuid: &str, step_ns: i64) -> Expected {
    let mut groups: HashMap<(i64, String), Vec<(i64, f64)>> = HashMap::new();
    for r in records.iter().filter(|r| r.uuid == uuid) {
        let bucket = r.timestamp_unix_nano.div_euclid(step_ns) * step_ns;
        groups
            .entry((bucket, r.metric.clone()))
            .or_default()
            .push((r.timestamp_unix_nano, r.value));
    }
    groups
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            let n = v.len();
            let sum: f64 = v.iter().map(|x| x.1).sum();
            let min = v.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
            let max = v.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
            (k, (sum / n as f64, min, max, v[n - 1].1, n as u64))
        })
        .collect()
}

/// Checks every aggregate of one GPU against `want`.
async fn check_aggregates(base: &str, uuid: &str, want: &Expected, when: &str) {
    let range = "start_time=2025-01-01T00:00:00Z&end_time=2025-01-01T01:00:00Z";
    for (agg, pick) in [
        ("avg", 0usize),
        ("min", 1),
        ("max", 2),
        ("last", 3),
        ("count", 4),
    ] {
        let url = format!("{base}/api/v1/gpus/{uuid}/telemetry?step=1m&agg={agg}&{range}");
        let got = body(&url).await;
        let points = got["data"].as_array().unwrap();
        assert_eq!(
            points.len(),
            want.len(),
            "{when}: {agg}: one point per bucket and metric"
        );
        for p in points {
            let t = DateTime::parse_from_rfc3339(p["timestamp"].as_str().unwrap())
                .unwrap()
                .timestamp_nanos_opt()
                .unwrap();
            let key = (t, p["metric"].as_str().unwrap().to_string());
            let w = want
                .get(&key)
                .unwrap_or_else(|| panic!("{when}: unexpected {p}"));
            let value = [w.0, w.1, w.2, w.3, w.4 as f64][pick];
            let v = p["value"].as_f64().unwrap();
            assert!(
                (v - value).abs() <= 1e-9 * value.abs().max(1.0),
                "{when}: {agg} of {key:?}: {v} != {value}"
            );
            assert_eq!(p["count"], w.4, "{when}: {key:?}");
            assert_eq!(p["uuid"], uuid);
        }
    }
    // One metric only.
    let url = format!(
        "{base}/api/v1/gpus/{uuid}/telemetry?step=5m&agg=max&metric=DCGM_FI_DEV_GPU_TEMP&{range}"
    );
    let got = body(&url).await;
    assert!(got["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["metric"] == "DCGM_FI_DEV_GPU_TEMP"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_equal_the_input_over_raw_folded_and_mixed_data() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("aggregates");
    let dir = tempfile::tempdir().unwrap();
    let first = fleet(dir.path(), "first.csv", "2025-01-01T00:00:00Z", 120);
    let second = fleet(dir.path(), "second.csv", "2025-01-01T00:20:00Z", 61);
    let (mut raw_only, admin) = collector(&etcd, &prefix, "raw-only", false);
    assert!(becomes_ready(&admin, 60).await, "{}", raw_only.stderr());
    stream(&etcd, &prefix, &first).await;
    let mut records = csv_records(&first);
    wait_stored(&etcd, &prefix, records.len() as i64).await;
    let uuid = records[0].uuid.clone();
    let step = 60_000_000_000;
    let port = free_port();
    let gw = Proc::spawn(
        "gateway",
        cmd("gateway", &etcd.endpoints(), &prefix)
            .env("GATEWAY_PORT", port.to_string())
            .env("QUERY_CACHE_MB", "0"),
    );
    assert!(
        becomes_ready(&format!("127.0.0.1:{port}"), 30).await,
        "{}",
        gw.stderr()
    );
    let base = format!("http://127.0.0.1:{port}");

    let want = expected(&records, &uuid, step);
    assert_eq!(want.len(), 20 * 10, "20 minutes of 10 metrics");
    check_aggregates(&base, &uuid, &want, "raw").await;

    raw_only.signal(libc::SIGTERM);
    let _ = raw_only.wait_exit(Duration::from_secs(20)).await;
    let (mut folder, _) = collector(&etcd, &prefix, "folder", true);
    wait_folded(&etcd, &prefix, &folder).await;
    check_aggregates(&base, &uuid, &want, "folded").await;

    folder.signal(libc::SIGTERM);
    let _ = folder.wait_exit(Duration::from_secs(20)).await;
    let (_raw_again, admin) = collector(&etcd, &prefix, "raw-again", false);
    assert!(becomes_ready(&admin, 60).await);
    stream(&etcd, &prefix, &second).await;
    records.extend(csv_records(&second));
    wait_stored(&etcd, &prefix, records.len() as i64).await;
    let want = expected(&records, &uuid, step);
    check_aggregates(&base, &uuid, &want, "mixed").await;

    // Bad requests get the contract's errors.
    for (query, code) in [
        ("step=1m&agg=median", "INVALID_AGG"),
        ("step=0s", "INVALID_STEP"),
        ("agg=avg", "INVALID_STEP"),
        (
            "step=1s&start_time=2024-01-01T00:00:00Z&end_time=2025-01-01T00:00:00Z",
            "TOO_MANY_POINTS",
        ),
    ] {
        let (status, b) = get(&format!("{base}/api/v1/gpus/{uuid}/telemetry?{query}"))
            .await
            .unwrap();
        assert_eq!(
            (status, b["code"].as_str()),
            (400, Some(code)),
            "{query}: {b}"
        );
    }
}
