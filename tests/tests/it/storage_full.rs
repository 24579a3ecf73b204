//! Writers while etcd is full (NOSPACE raised by another writer, no collector to heal it): a
//! streamer stopped then exits 1 with the exact count, pushes get 503 with `Retry-After`, and
//! device scrapes are skipped and counted.

use std::time::Duration;

use etcd_client::Client;
use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{unique_prefix, wait_until};
use pipeline_tests::{sample_csv, EtcdCluster};

use crate::readme::{cmd, get};
use crate::storage::{fill_from_outside, metric, queued_records, small_etcd, summary};

/// A small etcd whose queue exists (the first process to start writes its partition count),
/// filled by another writer until NOSPACE.
async fn full_etcd(name: &str) -> (EtcdCluster, Client, String) {
    let etcd = small_etcd().await;
    let client = etcd.client().await;
    let prefix = unique_prefix(name);
    client
        .kv_client()
        .put(format!("{prefix}/queue/meta/partitions"), "16", None)
        .await
        .unwrap();
    fill_from_outside(&client).await;
    (etcd, client, prefix)
}

/// Whether the process at `admin` answers `/ready` with 503 and a `storage` check (within 20 s).
async fn says_storage_full(admin: &str) -> bool {
    wait_until(Duration::from_secs(20), || async {
        matches!(get(&format!("http://{admin}/ready")).await, Some((503, b)) if b["checks"]["storage"].is_string())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamer_stopped_while_etcd_is_full_exits_non_zero_and_counts_what_it_kept() {
    let (etcd, client, prefix) = full_etcd("storage-stopped").await;
    let admin = format!("127.0.0.1:{}", free_port());
    let mut streamer = Proc::spawn(
        "streamer",
        cmd("streamer", &etcd.endpoints(), &prefix)
            .arg("--csv")
            .arg(sample_csv())
            .env("ADMIN_LISTEN", &admin)
            .env("SHUTDOWN_GRACE", "2s"),
    );
    // It says why it waits.
    assert!(says_storage_full(&admin).await, "{}", streamer.stderr());
    streamer.signal(libc::SIGTERM);
    let exit = streamer
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits");
    assert_eq!(exit.code(), Some(1), "{}", streamer.stderr());
    let sum = summary(&streamer.stdout());
    let queued: u64 = queued_records(&client, &prefix).await;
    println!("summary={sum:?} queued={queued}");
    assert_eq!(
        sum["published"], queued,
        "published counts what is in the queue"
    );
    assert_eq!(
        sum["unpublished"],
        sum["read"] - queued - sum["invalid"] - sum["missing_readings"] - sum["duplicates"],
        "{}",
        streamer.stdout()
    );
    assert!(sum["unpublished"] > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_etcd_is_full_pushes_get_503_and_device_scrapes_are_skipped_and_counted() {
    let (etcd, client, prefix) = full_etcd("storage-push").await;
    let exporter = crate::streamer_inputs::fake_exporter(concat!(
        "DCGM_FI_DEV_GPU_TEMP{gpu=\"0\",UUID=\"GPU-1\",device=\"nvidia0\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"h1\"} 41\n",
        "DCGM_FI_DEV_POWER_USAGE{gpu=\"0\",UUID=\"GPU-1\",device=\"nvidia0\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"h1\"} 300.5\n",
    ))
    .await;
    let (admin, ingest) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let streamer = Proc::spawn(
        "streamer",
        cmd("streamer", &etcd.endpoints(), &prefix)
            .args([
                "--dcgm-url",
                &exporter,
                "--interval",
                "1s",
                "--listen",
                &ingest,
            ])
            .env("ADMIN_LISTEN", &admin),
    );
    assert!(says_storage_full(&admin).await, "{}", streamer.stderr());
    let csv: String = std::fs::read_to_string(sample_csv())
        .unwrap()
        .lines()
        .take(2)
        .map(|l| format!("{l}\n"))
        .collect();
    let resp = reqwest::Client::new()
        .post(format!("http://{ingest}/api/v1/ingest"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "STORAGE_FULL", "{body}");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            metric(&admin, "samples_skipped{reason=\"storage_full\"}")
                .await
                .is_some_and(|n| n >= 2.0)
        })
        .await,
        "{}",
        streamer.stderr()
    );
    assert_eq!(
        queued_records(&client, &prefix).await,
        0,
        "nothing was taken"
    );

    // A collector started now (one that will not maintain storage, so the alarm stays) gets no
    // lease, and says so on /ready, with storage as the reason.
    let admin = format!("127.0.0.1:{}", free_port());
    let collector = Proc::spawn(
        "collector",
        cmd("collector", &etcd.endpoints(), &prefix)
            .env("ADMIN_LISTEN", &admin)
            .env("STORAGE_MAINTAINER", "false"),
    );
    assert!(says_storage_full(&admin).await, "{}", collector.stderr());
    let (_, why) = get(&format!("http://{admin}/ready")).await.unwrap();
    assert!(why["checks"]["lease"].is_string(), "{why}");
}
