//! The streamer's inputs, identity, backpressure and resilience, on real etcd.

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pipeline_tests::checks::{checksum, csv_records, doubles, stored_records};
use pipeline_tests::services::{
    binary, count, init_tracing, start_collector, unique_prefix, wait_until,
};
use pipeline_tests::EtcdCluster;
use serde_json::json;
use streamer::{Config, Counters, Listeners};
use telemetry::proto::ingest_client::IngestClient;
use telemetry::proto::TelemetryRecord;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub(crate) const HEADER: &str = "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw";

pub(crate) fn row(
    ts: &str,
    metric: &str,
    gpu: &str,
    uuid: &str,
    host: &str,
    value: &str,
) -> String {
    format!("\"{ts}\",\"{metric}\",\"{gpu}\",\"nvidia{gpu}\",\"{uuid}\",\"NVIDIA H100 80GB HBM3\",\"{host}\",\"\",\"\",\"\",\"{value}\",\"Hostname=\"\"{host}\"\"\"")
}

pub(crate) struct Streamer {
    pub(crate) stop: CancellationToken,
    pub(crate) handle: tokio::task::JoinHandle<Result<(), streamer::StreamerError>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) ingest: String,
}

pub(crate) async fn start_streamer(mut cfg: Config, with_ingest: bool) -> Streamer {
    let ingest_listener = if with_ingest {
        Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
    } else {
        None
    };
    let ingest = ingest_listener
        .as_ref()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .unwrap_or_default();
    if with_ingest {
        cfg.listen = Some("in-process".into()); // marks the run as endless; the socket is passed in
    }
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let handle = tokio::spawn(streamer::run(
        cfg,
        Listeners {
            ingest: ingest_listener,
        },
        counters.clone(),
        stop.clone(),
    ));
    Streamer {
        stop,
        handle,
        counters,
        ingest,
    }
}

impl Streamer {
    pub(crate) async fn stop(self) -> Arc<Counters> {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
        self.counters
    }
}

/// Serves a fixed dcgm-exporter scrape.
async fn fake_exporter(body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let app =
        axum::Router::new().route("/metrics", axum::routing::get(move || async move { body }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reading_from_every_source_has_one_identity_and_is_stored_once() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("identity");
    let (collector, cstats) = start_collector(etcd.endpoints(), &prefix, |_| {});

    // The shared reading: h1 / GPU 0 / temperature 41 at 2025-07-18T20:42:34Z (1752871354000 ms).
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("one.csv");
    std::fs::write(
        &csv,
        format!(
            "{HEADER}\n{}\n{}\n",
            row(
                "2025-07-18T20:42:34Z",
                "DCGM_FI_DEV_GPU_TEMP",
                "0",
                "GPU-1",
                "h1",
                "41"
            ),
            row(
                "2025-07-18T20:42:34Z",
                "DCGM_FI_DEV_GPU_TEMP",
                "1",
                "GPU-2",
                "h1",
                "50"
            )
        ),
    )
    .unwrap();
    let exporter = fake_exporter(concat!(
        "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).\n# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n",
        "DCGM_FI_DEV_GPU_TEMP{gpu=\"0\",UUID=\"GPU-1\",device=\"nvidia0\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"h1\"} 41 1752871354000\n",
        "DCGM_FI_DEV_GPU_TEMP{gpu=\"2\",UUID=\"GPU-3\",device=\"nvidia2\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"h1\"} 60 1752871354000\n",
    ))
    .await;
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.csv = vec![csv];
    cfg.dcgm_url = Some(exporter);
    cfg.interval = Duration::from_secs(3600); // one scrape
    let s = start_streamer(cfg, true).await;

    // JSON push: the same reading with fields in another order, plus one of its own.
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/api/v1/ingest", s.ingest))
        .json(&json!([
            {"value": 41, "hostname": "h1", "metric": "DCGM_FI_DEV_GPU_TEMP", "gpu_id": 0, "uuid": "GPU-1", "timestamp": "2025-07-18T20:42:34Z"},
            {"value": 70, "hostname": "h1", "metric": "DCGM_FI_DEV_GPU_TEMP", "gpu_id": "3", "uuid": "GPU-4", "timestamp": "2025-07-18T20:42:34Z"}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // gRPC push: the same reading, plus one of its own.
    let mut grpc = IngestClient::connect(s.ingest.clone()).await.unwrap();
    let rec = |gpu: &str, uuid: &str, value: f64| TelemetryRecord {
        hostname: "h1".into(),
        gpu_id: gpu.into(),
        uuid: uuid.into(),
        metric: "DCGM_FI_DEV_GPU_TEMP".into(),
        timestamp_unix_nano: 1_752_871_354_000_000_000,
        value,
        device: "ignored-by-identity".into(),
        ..Default::default()
    };
    let summary = grpc
        .push(futures::stream::iter(vec![
            rec("0", "GPU-1", 41.0),
            rec("4", "GPU-5", 80.0),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.accepted, summary.invalid), (2, 0));

    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            count(&client, &data).await == 5
        })
        .await,
        "1 shared + 4 distinct readings"
    );
    let counters = s.stop().await;
    let dups = Counters::get(&counters.duplicates) + collector::Counters::get(&cstats.duplicates);
    assert_eq!(
        dups, 3,
        "the shared reading arrived four times and was kept once"
    );
    assert_eq!(count(&client, &data).await, 5);
    collector.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvidia_smi_output_is_mapped_and_na_fields_are_counted_not_stored() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("smi");
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("nvidia-smi");
    // Real `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` output, [N/A] included.
    std::fs::write(
        &fake,
        "#!/bin/sh\ncat <<'OUT'\n0, GPU-5fd4f087-86f3-7a43-b711-4771313afc50, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 100, 45, 77413, 3594, 62, 689.45, 1980, 2619\n1, GPU-bc7a12ab-4998-fdc5-0785-2678a929a142, NVIDIA H100 80GB HBM3, 00000000:2A:00.0, [N/A], 0, 4, 81003, 29, [N/A], 345, 2619\nOUT\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.nvidia_smi = Some(fake);
    cfg.hostname = "node-a".into();
    cfg.interval = Duration::from_secs(3600);
    let s = start_streamer(cfg, false).await;
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            count(&client, &data).await == 14
        })
        .await,
        "8 + 6 readings"
    );
    let counters = s.stop().await;
    assert_eq!(Counters::get(&counters.missing), 2, "two [N/A] fields");
    let stored = stored_records(&client, &prefix).await;
    let power = stored
        .iter()
        .find(|r| r.gpu_id == "0" && r.metric == "DCGM_FI_DEV_POWER_USAGE")
        .unwrap();
    assert_eq!((power.value, power.hostname.as_str()), (689.45, "node-a"));
    assert!(
        !stored
            .iter()
            .any(|r| r.gpu_id == "1" && r.metric == "DCGM_FI_DEV_GPU_UTIL"),
        "[N/A] is not stored as a number"
    );
    collector.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_engages_when_the_queue_is_deep_and_releases_when_it_drains() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("backpressure");
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.csv = vec![pipeline_tests::sample_csv()];
    // The token bucket's burst is one second of the rate: 1,000 records (8 messages) go out at
    // once, well past the depth limit, and the other 1,470 must wait for the throttle.
    cfg.rate = 1_000.0;
    cfg.throttle_enabled = true;
    cfg.throttle_max_queue_depth = 2;
    cfg.throttle_rate = 0.0;
    cfg.throttle_check_interval = Duration::from_millis(50);
    let s = start_streamer(cfg, false).await;
    let queue = format!("{prefix}/queue/msg/");

    // No collector yet: the queue passes 2 messages and the streamer stops publishing. Pacing
    // at STREAM_RATE also counts as throttled, so "engaged" is: past the depth, throttled, and
    // nothing published over three depth checks (at 1,000 records/s unthrottled publishing
    // would add ~150 records in that time).
    assert!(
        wait_until(Duration::from_secs(20), || async {
            let before = Counters::get(&s.counters.published);
            tokio::time::sleep(Duration::from_millis(150)).await;
            count(&client, &queue).await > 2
                && Counters::get(&s.counters.throttled) > 0
                && Counters::get(&s.counters.published) == before
        })
        .await,
        "throttling engaged"
    );
    let depth_then = count(&client, &queue).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let depth_later = count(&client, &queue).await;
    assert_eq!(
        depth_then, depth_later,
        "nothing is published while throttled"
    );
    assert!(
        depth_later > 2 && depth_later < 20,
        "depth stays bounded: {depth_later}"
    );
    assert!(Counters::get(&s.counters.published) < 2470);

    // A collector drains the queue; the streamer resumes and finishes.
    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            count(&client, &data).await == 2470
        })
        .await,
        "released and finished"
    );
    s.handle.await.unwrap().unwrap();
    assert_eq!(Counters::get(&s.counters.published), 2470);
    collector.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_waits_through_an_etcd_restart_and_loses_nothing() {
    init_tracing();
    let mut etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("restart");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("fleet.csv");
    let ok = Command::new(binary("streamer"))
        .args([
            "generate",
            "--hosts",
            "10",
            "--gpus-per-host",
            "10",
            "--steps",
            "10",
            "--out",
        ])
        .arg(&csv)
        .status()
        .unwrap();
    assert!(ok.success());

    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.csv = vec![csv.clone()];
    cfg.rate = 2_000.0;
    let s = start_streamer(cfg, false).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            Counters::get(&s.counters.published) >= 2_000
        })
        .await
    );
    etcd.kill(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.restart(0).await;
    s.handle.await.unwrap().unwrap();
    assert_eq!(Counters::get(&s.counters.published), 10_000);
    assert!(
        Counters::get(&s.counters.publish_errors) > 0,
        "the outage was seen and retried"
    );

    let client = etcd.client().await;
    let queue = format!("{prefix}/queue/msg/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            count(&client, &queue).await == 0
        })
        .await
    );
    let stored = stored_records(&client, &prefix).await;
    assert!(doubles(&stored).is_empty());
    assert_eq!(checksum(&stored), checksum(&csv_records(&csv)));
    collector.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_publishes_the_whole_buffer_without_pacing_it() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("drain");
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.csv = vec![pipeline_tests::sample_csv()];
    cfg.looping = true;
    // The buffer holds 40 s of records at this rate; the grace period is 10 s. Paced, the
    // buffer could not drain in time; flushed on shutdown, it does.
    cfg.rate = 50.0;
    cfg.buffer = 2_000;
    cfg.runtime.shutdown_grace = Duration::from_secs(10);
    let s = start_streamer(cfg, false).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            Counters::get(&s.counters.read) >= 2_000
        })
        .await,
        "the buffer never filled"
    );
    let counters = s.stop().await;
    let (read, published) = (
        Counters::get(&counters.read),
        Counters::get(&counters.published),
    );
    assert_eq!(
        published, read,
        "every buffered record is published on shutdown"
    );
    let client = etcd.client().await;
    let queued = count(&client, &format!("{prefix}/queue/msg/")).await;
    assert!(queued > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_etcd_gone_ends_when_the_grace_period_does() {
    init_tracing();
    let mut etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("grace");
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.csv = vec![pipeline_tests::sample_csv()];
    cfg.looping = true;
    cfg.rate = 2_000.0;
    cfg.runtime.shutdown_grace = Duration::from_secs(1);
    cfg.buffer = 64;
    let s = start_streamer(cfg, false).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            Counters::get(&s.counters.published) >= 500
        })
        .await
    );
    etcd.kill(0);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            Counters::get(&s.counters.publish_errors) > 0
        })
        .await,
        "publishing never noticed that etcd is gone"
    );
    // Let the small buffer fill, so the CSV source is blocked handing over a record.
    let read = Counters::get(&s.counters.read);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            let now = Counters::get(&s.counters.read);
            tokio::time::sleep(Duration::from_millis(300)).await;
            now > read && Counters::get(&s.counters.read) == now
        })
        .await,
        "the source never stalled on the full buffer"
    );
    // Buffered records cannot be published; shutdown must still end after its grace period
    // (1 s) rather than wait for etcd forever. 60 s only bounds a hang, it times nothing.
    s.stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(60), s.handle).await;
    assert!(
        ended.is_ok(),
        "the streamer did not stop after its grace period"
    );
    ended.unwrap().unwrap().unwrap();
    assert!(
        Counters::get(&s.counters.published) < Counters::get(&s.counters.read),
        "the test should leave records unpublished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_are_counted_and_the_good_rows_around_them_go_through() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("malformed");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("messy.csv");
    let good = |s: u32| {
        row(
            &format!("2025-07-18T20:42:{s:02}Z"),
            "DCGM_FI_DEV_GPU_UTIL",
            "0",
            "GPU-1",
            "h1",
            "7",
        )
    };
    let mut f = std::fs::File::create(&path).unwrap();
    // A BOM, CRLF endings, rows out of order, bad rows, and a last row cut inside a quote.
    write!(f, "\u{feff}{HEADER}\r\n{}\r\n", good(30)).unwrap();
    write!(f, "{}\r\n", good(10)).unwrap();
    write!(
        f,
        "{}\r\n",
        row("yesterday", "DCGM_FI_DEV_GPU_UTIL", "0", "GPU-1", "h1", "1")
    )
    .unwrap();
    write!(
        f,
        "{}\r\n",
        row(
            "2025-07-18T20:42:11Z",
            "DCGM_FI_DEV_GPU_UTIL",
            "0",
            "GPU-1",
            "h1",
            "lots"
        )
    )
    .unwrap();
    write!(
        f,
        "{}\r\n",
        row(
            "2025-07-18T20:42:12Z",
            "DCGM_FI_DEV_FB_FREE",
            "0",
            "GPU-1",
            "h1",
            "9223372036854775794"
        )
    )
    .unwrap();
    write!(f, "{}\r\n", good(20)).unwrap();
    write!(
        f,
        "\"2025-07-18T20:42:50Z\",\"DCGM_FI_DEV_GPU_UTIL\",\"0\",\"nvid"
    )
    .unwrap();
    drop(f);

    let out = Command::new(binary("streamer"))
        .args(["--csv"])
        .arg(&path)
        .env("ETCD_ENDPOINTS", etcd.endpoints().join(","))
        .env("ETCD_PREFIX", &prefix)
        .env("ADMIN_LISTEN", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("read=7 published=3 invalid=3"), "{stdout}");
    assert!(stdout.contains("missing_readings=1"), "{stdout}");
    assert!(
        stderr.contains("line 4") && stderr.contains("line 5"),
        "bad rows are logged with their line: {stderr}"
    );
    let client = etcd.client().await;
    assert_eq!(
        count(&client, &format!("{prefix}/queue/msg/")).await,
        1,
        "the three good rows went out in one message"
    );
}

#[tokio::test]
async fn bad_flags_and_unreadable_files_exit_non_zero_with_a_clear_message() {
    let run = |args: &[&str]| {
        Command::new(binary("streamer"))
            .args(args)
            .env("ADMIN_LISTEN", "")
            .output()
            .unwrap()
    };
    let out = run(&[
        "--csv",
        "/nonexistent/file.csv",
        "--etcd-endpoints",
        "127.0.0.1:1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file.csv"));
    let out = run(&["--csv", "x.csv", "--throttle-rate", "1.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("THROTTLE_RATE"));
    let out = run(&["--csv", "x.csv", "--interval", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--interval"));
    let out = Command::new(binary("collector"))
        .env("MQ_PROCESSING_TIMEOUT", "1s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MQ_PROCESSING_TIMEOUT"));
}

/// An exporter that does not answer is a failed scrape, counted as such: no record was read,
/// so nothing is invalid and nothing is left unpublished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_exporter_counts_scrape_errors_not_invalid_records() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("scrape-errors");
    let closed = pipeline_tests::process::free_port();
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.dcgm_url = Some(format!("http://127.0.0.1:{closed}/metrics"));
    cfg.interval = Duration::from_millis(100);
    let s = start_streamer(cfg, false).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            Counters::get(&s.counters.scrape_errors) >= 3
        })
        .await
    );
    let counters = s.stop().await;
    assert_eq!(Counters::get(&counters.invalid), 0);
    assert_eq!(Counters::get(&counters.read), 0);
    assert_eq!(counters.unpublished(), 0);
    assert!(
        counters.summary().contains("scrape_errors="),
        "{}",
        counters.summary()
    );
}
