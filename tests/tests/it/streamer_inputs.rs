//! The streamer's inputs, identity, backpressure and resilience, on real etcd.

use std::sync::Arc;
use std::time::Duration;

use pipeline_tests::checks::stored;
use pipeline_tests::checks::stored_records;
use pipeline_tests::services::{init_tracing, start_collector, unique_prefix, wait_until};
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
pub(crate) async fn fake_exporter(body: &'static str) -> String {
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
            stored(&client, &data).await == 5
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
    assert_eq!(stored(&client, &data).await, 5);
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
            stored(&client, &data).await == 14
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
