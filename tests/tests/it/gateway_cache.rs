//! The gateway's query cache: a page is reused until its GPU changes.

use std::time::Duration;

use pipeline_tests::services::{
    init_tracing, start_collector, start_gateway, stream_csv, wait_until,
};
use serde_json::Value;

use crate::gateway_api::{get, load_real_csv};

/// GET returning the `x-cache` header and the body.
async fn get_cached(url: &str) -> (String, Value) {
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let cache = resp.headers()["x-cache"].to_str().unwrap().to_string();
    (cache, resp.json().await.unwrap())
}

const LATE_ROW_GPU0_HOST031: &str = "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n\"2025-07-18T20:42:34.5Z\",\"DCGM_FI_DEV_GPU_UTIL\",\"0\",\"nvidia0\",\"GPU-5fd4f087-86f3-7a43-b711-4771313afc50\",\"H100\",\"mtv5-dgx1-hgpu-031\",\"\",\"\",\"\",\"1\",\"\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_pages_are_reused_until_their_gpu_changes() {
    init_tracing();
    let l = load_real_csv("cache").await;
    // A TTL far beyond the test: only the watch can make a page stale here.
    let (gw, base) = start_gateway(l.etcd.endpoints(), &l.prefix, |c| {
        c.query_cache_ttl = Duration::from_secs(3600)
    })
    .await;
    let changed =
        format!("{base}/api/v1/gpus/GPU-5fd4f087-86f3-7a43-b711-4771313afc50/telemetry?limit=100");
    let (_, gpus) = get(format!("{base}/api/v1/hosts/mtv5-dgx1-hgpu-001/gpus")).await;
    let other_uuid = gpus["data"][0]["uuid"].as_str().unwrap().to_string();
    let other = format!("{base}/api/v1/gpus/{other_uuid}/telemetry?limit=100");

    // The first read fills the cache; a repeat is a hit with the same body.
    let (_, before) = get_cached(&changed).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            get_cached(&changed).await.0 == "hit"
        })
        .await,
        "a repeated query is never served from the cache"
    );
    assert_eq!(get_cached(&changed).await.1, before);
    get_cached(&other).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            get_cached(&other).await.0 == "hit"
        })
        .await
    );

    // A new reading for the first GPU: its page goes stale, the other GPU's stays cached.
    let (collector, _) = start_collector(l.etcd.endpoints(), &l.prefix, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let late = dir.path().join("late.csv");
    std::fs::write(&late, LATE_ROW_GPU0_HOST031).unwrap();
    stream_csv(l.etcd.endpoints(), &l.prefix, &[&late]).await;
    let n = before["count"].as_u64().unwrap();
    let has_late = |page: &Value| {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["timestamp"] == "2025-07-18T20:42:34.500Z")
    };
    // The page was a cache hit before the write and the TTL is an hour: seeing the new
    // reading proves the watch invalidated it.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            has_late(&get_cached(&changed).await.1)
        })
        .await,
        "the cached page never shows the new reading"
    );
    let (state, after) = get_cached(&changed).await;
    assert!(has_late(&after));
    assert_eq!(after["count"].as_u64().unwrap(), n + 1);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            get_cached(&changed).await.0 == "hit"
        })
        .await,
        "the re-read page is cached again (last state {state})"
    );
    assert_eq!(
        get_cached(&other).await.0,
        "hit",
        "another GPU's page is untouched"
    );

    // Pages behind a cursor are pinned to their snapshot and never cached.
    let (_, first) = get_cached(&changed.replace("limit=100", "limit=3")).await;
    let c = first["next_cursor"].as_str().unwrap();
    assert_eq!(get_cached(&format!("{changed}&cursor={c}")).await.0, "off");
    collector.shutdown().await.unwrap();
    gw.shutdown().await.unwrap();
}
