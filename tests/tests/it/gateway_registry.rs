//! The GPU registry as the gateway serves it: `last_seen`, and identities a pushed record
//! cannot take over.

use std::time::Duration;

use pipeline_tests::checks::stored;
use pipeline_tests::services::{
    init_tracing, start_collector, start_gateway, stream_csv, unique_prefix, wait_until,
};
use pipeline_tests::EtcdCluster;

use crate::gateway_api::{csv_rows, get, load_real_csv};

/// `last_seen` is the newest stored reading of each GPU, also when a whole file of history is
/// stored in one burst (it used to stay at the first reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_is_each_gpus_newest_reading_after_a_burst_of_history() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("last-seen");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("history.csv");
    // 100 steps of 10 s: 16.5 minutes of readings, long ago.
    pipeline_tests::services::generate(
        &csv,
        &[
            "--hosts",
            "3",
            "--gpus-per-host",
            "2",
            "--steps",
            "100",
            "--start",
            "2025-07-18T20:00:00Z",
        ],
    );
    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    stream_csv(etcd.endpoints(), &prefix, &[&csv]).await;
    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |_| {}).await;
    let newest = "2025-07-18T20:16:30Z";
    let all_current = wait_until(Duration::from_secs(30), || async {
        let (_, gpus) = get(format!("{base}/api/v1/gpus")).await;
        gpus["count"] == 6
            && gpus["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["last_seen"] == newest)
    })
    .await;
    let (_, gpus) = get(format!("{base}/api/v1/gpus")).await;
    assert!(all_current, "every last_seen is {newest}: {gpus}");
    let (_, hosts) = get(format!("{base}/api/v1/hosts")).await;
    assert_eq!(hosts["data"][0]["last_seen"], newest);
    collector.shutdown().await.unwrap();
    gw.shutdown().await.unwrap();
}

/// A pushed record cannot take over another GPU's identity: a UUID reported on a second host,
/// and a second UUID reported for a host and index, are kept as aliases, and every query by
/// UUID still finds all the real GPU's data (it used to find only the attacker's record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_record_cannot_remap_a_gpus_identity_or_hide_its_data() {
    init_tracing();
    let l = load_real_csv("identity").await;
    let rows = csv_rows();
    let (host, gpu, uuid) = (rows[0].0.clone(), rows[0].1.clone(), rows[0].2.clone());
    let real: usize = rows.iter().filter(|r| r.0 == host && r.1 == gpu).count();
    // A collector that has never seen these GPUs (the one that stored the CSV is gone).
    let (collector, _) = start_collector(l.etcd.endpoints(), &l.prefix, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("evil.csv");
    let evil_row = |h: &str, u: &str, ts: &str| {
        format!("\"{ts}\",\"DCGM_FI_DEV_GPU_TEMP\",\"{gpu}\",\"nvidia{gpu}\",\"{u}\",\"H100\",\"{h}\",\"\",\"\",\"\",\"99\",\"\"\n")
    };
    std::fs::write(
        &p,
        format!(
            "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n{}{}",
            evil_row("evil-host", &uuid, "2025-07-18T21:00:00Z"),
            evil_row(&host, "GPU-EVIL-0000", "2025-07-18T21:00:01Z"),
        ),
    )
    .unwrap();
    stream_csv(l.etcd.endpoints(), &l.prefix, &[&p]).await;
    let client = l.etcd.client().await;
    let data = format!("{}/telemetry/data/", l.prefix);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            stored(&client, &data).await == 2472
        })
        .await
    );
    let (gw, base) = start_gateway(l.etcd.endpoints(), &l.prefix, |c| c.query_cache_mb = 0).await;

    // The real GPU keeps its UUID in the registry.
    let (_, gpus) = get(format!("{base}/api/v1/hosts/{host}/gpus")).await;
    let entry = gpus["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gpu_id"] == gpu.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["uuid"], uuid.as_str(), "{entry}");
    // Its UUID finds every one of its records (and the impostor's, kept visible).
    let (_, by_uuid) = get(format!("{base}/api/v1/gpus/{uuid}/telemetry?limit=1000")).await;
    let hosts: Vec<&str> = by_uuid["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts.iter().filter(|h| **h == host).count(),
        real + 1,
        "all of the real GPU's records (and the later one sent for it with another UUID): {by_uuid}"
    );
    assert!(
        hosts.contains(&"evil-host"),
        "the impostor's record stays queryable"
    );
    // The second UUID of the real host and index is an alias: it finds that GPU's data too.
    let (s, by_alias) = get(format!(
        "{base}/api/v1/gpus/GPU-EVIL-0000/telemetry?limit=1000"
    ))
    .await;
    assert_eq!(s, 200, "{by_alias}");
    assert_eq!(by_alias["count"].as_u64().unwrap() as usize, real + 1);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gpu_identity_conflicts"),
        "conflicts are counted"
    );
    collector.shutdown().await.unwrap();
    gw.shutdown().await.unwrap();
}
