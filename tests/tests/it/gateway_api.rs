//! The gateway against real etcd with the real CSV loaded: every REST endpoint and error, and
//! cursor pagination while data arrives. Shared by the other gateway modules: the loaders and
//! the request helpers.

use std::collections::HashSet;
use std::time::Duration;

use pipeline_tests::checks::stored;
use pipeline_tests::services::{
    init_tracing, start_collector, start_gateway, stream_csv, unique_prefix, wait_until,
};
use pipeline_tests::{sample_csv, EtcdCluster};
use serde_json::Value;

pub(crate) struct Loaded {
    pub(crate) etcd: EtcdCluster,
    pub(crate) prefix: String,
}

pub(crate) async fn load_real_csv(name: &str) -> Loaded {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix(name);
    let client = etcd.client().await;
    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    stream_csv(etcd.endpoints(), &prefix, &[&sample_csv()]).await;
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await == 2470
        })
        .await
    );
    collector.shutdown().await.unwrap();
    Loaded { etcd, prefix }
}

pub(crate) async fn get(url: String) -> (u16, Value) {
    let resp = reqwest::get(url).await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

pub(crate) fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
}

/// Rows of the CSV as (hostname, gpu_id, uuid, metric, timestamp, value).
pub(crate) fn csv_rows() -> Vec<(String, String, String, String, String, f64)> {
    let mut rdr = csv::Reader::from_path(sample_csv()).unwrap();
    rdr.records()
        .map(Result::unwrap)
        .map(|r| {
            (
                r[6].to_string(),
                r[2].to_string(),
                r[4].to_string(),
                r[1].to_string(),
                r[0].to_string(),
                r[10].parse().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_endpoints_answer_from_etcd_with_the_contract_shapes() {
    init_tracing();
    let l = load_real_csv("rest").await;
    let (gw, base) = start_gateway(l.etcd.endpoints(), &l.prefix, |_| {}).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            get(format!("{base}/api/v1/gpus")).await.1["count"] == 247
        })
        .await
    );
    let rows = csv_rows();

    let (_, gpus) = get(format!("{base}/api/v1/gpus?hostname=mtv5-dgx1-hgpu-031")).await;
    assert_eq!(gpus["count"], 8);
    for field in ["uuid", "gpu_id", "hostname", "device", "model", "last_seen"] {
        assert!(
            gpus["data"][0][field].is_string(),
            "GPU entries carry {field}: {gpus}"
        );
    }
    let (_, hosts) = get(format!("{base}/api/v1/hosts")).await;
    assert_eq!(hosts["count"], 31);
    let (_, host_gpus) = get(format!("{base}/api/v1/hosts/mtv5-dgx1-hgpu-031/gpus")).await;
    assert_eq!(host_gpus["count"], 8);
    let (s, b) = get(format!("{base}/api/v1/hosts/no-such-host/gpus")).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    // Invalid UTF-8 in a path, a repeated parameter, a wrong method: the same JSON shape.
    let (s, b) = get(format!("{base}/api/v1/hosts/%FF%FE/gpus")).await;
    assert_error(s, &b, 400, "BAD_REQUEST");
    let (s, b) = get(format!("{base}/api/v1/gpus?hostname=a&hostname=b")).await;
    assert_error(s, &b, 400, "INVALID_PARAMETER");
    let resp = reqwest::Client::new()
        .delete(format!("{base}/api/v1/gpus"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let b: Value = resp.json().await.unwrap();
    assert_error(status, &b, 405, "METHOD_NOT_ALLOWED");

    // A time range by UUID: start inclusive, end exclusive, oldest first.
    let uuid = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50";
    let (_, all) = get(format!("{base}/api/v1/gpus/{uuid}/telemetry?limit=1000")).await;
    let times: Vec<String> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap().to_string())
        .collect();
    let distinct: Vec<&String> = times
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        distinct.len() >= 2,
        "the GPU has readings at several times: {distinct:?}"
    );
    let (start, end) = (distinct[0], distinct[1]);
    let (_, ranged) = get(format!(
        "{base}/api/v1/gpus/{uuid}/telemetry?start_time={start}&end_time={end}"
    ))
    .await;
    let want = rows.iter().filter(|r| r.2 == uuid && &r.4 == start).count();
    assert_eq!(ranged["count"].as_u64().unwrap() as usize, want);
    assert!(ranged["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["timestamp"] == start.as_str()));
    let (_, one_metric) = get(format!(
        "{base}/api/v1/gpus/{uuid}/telemetry?metric=DCGM_FI_DEV_GPU_TEMP"
    ))
    .await;
    assert_eq!(
        one_metric["count"].as_u64().unwrap() as usize,
        rows.iter()
            .filter(|r| r.2 == uuid && r.3 == "DCGM_FI_DEV_GPU_TEMP")
            .count()
    );

    // An index covers every host, merged in time order; ?hostname narrows it.
    let (_, idx) = get(format!("{base}/api/v1/gpus/0/telemetry?limit=10000")).await;
    let want0 = rows.iter().filter(|r| r.1 == "0").count();
    assert_eq!(idx["count"].as_u64().unwrap() as usize, want0);
    let idx_times: Vec<&str> = idx["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap())
        .collect();
    assert!(idx_times.windows(2).all(|w| w[0] <= w[1]));
    let hosts_seen: HashSet<&str> = idx["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts_seen.len(),
        rows.iter()
            .filter(|r| r.1 == "0")
            .map(|r| &r.0)
            .collect::<HashSet<_>>()
            .len()
    );
    let (_, narrowed) = get(format!(
        "{base}/api/v1/gpus/0/telemetry?hostname=mtv5-dgx1-hgpu-031&limit=10000"
    ))
    .await;
    assert_eq!(
        narrowed["count"].as_u64().unwrap() as usize,
        rows.iter()
            .filter(|r| r.1 == "0" && r.0 == "mtv5-dgx1-hgpu-031")
            .count()
    );

    // Bad parameters: 400 with the JSON shape; unknown GPU: 404.
    for (query, code) in [
        ("start_time=yesterday", "INVALID_TIME"),
        ("end_time=2025-13-01T00:00:00Z", "INVALID_TIME"),
        ("limit=abc", "INVALID_LIMIT"),
        ("limit=0", "INVALID_LIMIT"),
        ("limit=10001", "INVALID_LIMIT"),
        ("cursor=%%%", "INVALID_CURSOR"),
        ("cursor=bm90LWpzb24", "INVALID_CURSOR"),
        (
            "start_time=2025-07-18T21:00:00Z&end_time=2025-07-18T20:00:00Z",
            "INVALID_RANGE",
        ),
    ] {
        let (s, b) = get(format!("{base}/api/v1/gpus/{uuid}/telemetry?{query}")).await;
        assert_error(s, &b, 400, code);
    }
    let (s, b) = get(format!("{base}/api/v1/gpus/GPU-does-not-exist/telemetry")).await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (s, b) = get(format!("{base}/api/v1/nothing-here")).await;
    assert_error(s, &b, 404, "NOT_FOUND");

    // Operations endpoints.
    let (s, spec) = get(format!("{base}/openapi.json")).await;
    assert_eq!(s, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/gpus",
        "/api/v1/gpus/{id}/telemetry",
        "/api/v1/hosts",
        "/api/v1/ws/telemetry",
    ] {
        assert!(spec["paths"][path].is_object(), "spec documents {path}");
    }
    // `/docs` is Swagger UI served by the gateway (redirected to `/docs/`), reading the spec.
    let text = |path: &'static str| {
        let url = format!("{base}{path}");
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    assert!(text("/docs").await.contains("swagger-ui-bundle.js"));
    assert!(text("/docs/swagger-initializer.js")
        .await
        .contains("/openapi.json"));
    assert_eq!(get(format!("{base}/health")).await.0, 200);
    assert_eq!(get(format!("{base}/ready")).await.0, 200);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("http_requests_total")
            && metrics.contains("route=\"/api/v1/gpus/{id}/telemetry\""),
        "per-route counts"
    );
    assert!(
        metrics.contains("http_request_duration_ms"),
        "latency histograms"
    );
    let (s, invalid) = get(format!("{base}/api/v1/invalid")).await;
    assert_eq!((s, invalid["count"].as_u64()), (200, Some(0)));
    gw.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_next_cursor_yields_every_entry_once_while_data_arrives() {
    init_tracing();
    let l = load_real_csv("cursor").await;
    let (gw, base) = start_gateway(l.etcd.endpoints(), &l.prefix, |_| {}).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            get(format!("{base}/api/v1/gpus")).await.1["count"] == 247
        })
        .await
    );
    let (_, full) = get(format!("{base}/api/v1/gpus/0/telemetry?limit=10000")).await;
    let full: Vec<Value> = full["data"].as_array().unwrap().clone();

    let (collector, _) = start_collector(l.etcd.endpoints(), &l.prefix, |_| {});
    let mut paged = Vec::new();
    let mut url = format!("{base}/api/v1/gpus/0/telemetry?limit=7");
    let mut pages = 0;
    loop {
        let (s, page) = get(url.clone()).await;
        assert_eq!(s, 200, "{page}");
        paged.extend(page["data"].as_array().unwrap().iter().cloned());
        pages += 1;
        if pages == 2 {
            // New readings for GPU 0 arrive, some inside the range already listed.
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("late.csv");
            std::fs::write(&p, "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n\"2025-07-18T20:42:34.5Z\",\"DCGM_FI_DEV_GPU_UTIL\",\"0\",\"nvidia0\",\"GPU-5fd4f087-86f3-7a43-b711-4771313afc50\",\"H100\",\"mtv5-dgx1-hgpu-031\",\"\",\"\",\"\",\"1\",\"\"\n").unwrap();
            stream_csv(l.etcd.endpoints(), &l.prefix, &[&p]).await;
        }
        match page["next_cursor"].as_str() {
            Some(c) => url = format!("{base}/api/v1/gpus/0/telemetry?limit=7&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        paged.len(),
        full.len(),
        "every entry once, from the snapshot of the first page"
    );
    assert_eq!(paged, full, "same entries, same order");
    let ids: HashSet<&str> = paged.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), paged.len(), "no entry twice");
    collector.shutdown().await.unwrap();
    gw.shutdown().await.unwrap();
}
