//! End to end on real etcd: the real DCGM export through streamer, collector and gateway.

use std::collections::HashSet;
use std::time::Duration;

use pipeline_tests::checks::stored;
use pipeline_tests::services::{
    count, init_tracing, start_collector, start_gateway, stream_csv, unique_prefix, wait_until,
};
use pipeline_tests::{sample_csv, EtcdCluster};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_csv_flows_through_all_three_services() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("e2e");
    let client = etcd.client().await;

    let (collector, stats) = start_collector(etcd.endpoints(), &prefix, |_| {});
    let counters = stream_csv(etcd.endpoints(), &prefix, &[&sample_csv()]).await;
    assert_eq!(
        counters
            .summary()
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>(),
        ["read=2470", "published=2470", "invalid=0", "duplicates=0"]
    );

    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await == 2470
        })
        .await,
        "expected 2470 stored records, found {}",
        stored(&client, &data).await
    );
    assert_eq!(
        count(&client, &format!("{prefix}/queue/msg/")).await,
        0,
        "queue drained"
    );

    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |_| {}).await;
    let get = |path: String| async move {
        reqwest::get(path)
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            get(format!("{base}/api/v1/gpus")).await["count"] == 247
        })
        .await
    );
    let gpus = get(format!("{base}/api/v1/gpus")).await;
    assert_eq!(gpus["success"], true);
    let hosts = get(format!("{base}/api/v1/hosts")).await;
    assert_eq!(hosts["count"], 31);
    let uuids: HashSet<&str> = gpus["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(uuids.len(), 247);

    // One GPU's telemetry, in time order, with the file's values.
    let uuid = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50";
    let t = get(format!("{base}/api/v1/gpus/{uuid}/telemetry?limit=1000")).await;
    let entries = t["data"].as_array().unwrap();
    let expected = expected_rows(uuid);
    assert_eq!(entries.len(), expected.len());
    let times: Vec<&str> = entries
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "entries are in time order: {times:?}"
    );
    for e in entries {
        assert_eq!(e["uuid"], uuid);
        assert_eq!(e["hostname"], "mtv5-dgx1-hgpu-031");
        let key = (
            e["timestamp"].as_str().unwrap().to_string(),
            e["metric"].as_str().unwrap().to_string(),
        );
        assert_eq!(
            e["value"].as_f64(),
            expected.get(&key).copied(),
            "value of {key:?}"
        );
    }
    assert_eq!(collector::Counters::get(&stats.stored), 2470);

    gw.shutdown().await.unwrap();
    collector.shutdown().await.unwrap();
}

/// (timestamp, metric) -> value for one GPU, read straight from the CSV.
fn expected_rows(uuid: &str) -> std::collections::HashMap<(String, String), f64> {
    let mut rdr = csv_reader();
    let headers = rdr.headers().unwrap().clone();
    let col = |n: &str| headers.iter().position(|h| h == n).unwrap();
    let (ts, metric, u, value) = (
        col("timestamp"),
        col("metric_name"),
        col("uuid"),
        col("value"),
    );
    rdr.records()
        .map(Result::unwrap)
        .filter(|r| &r[u] == uuid)
        .map(|r| {
            (
                (r[ts].to_string(), r[metric].to_string()),
                r[value].parse().unwrap(),
            )
        })
        .collect()
}

fn csv_reader() -> csv::Reader<std::fs::File> {
    csv::Reader::from_path(sample_csv()).unwrap()
}
