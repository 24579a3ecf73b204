//! The gateway against real etcd with the real CSV loaded: every endpoint, every error, the
//! live stream, its filters, slow clients and replay.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use pipeline_tests::services::{
    count, init_tracing, start_collector, start_gateway, stream_csv, unique_prefix, wait_until,
};
use pipeline_tests::{sample_csv, EtcdCluster};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

struct Loaded {
    etcd: EtcdCluster,
    prefix: String,
}

async fn load_real_csv(name: &str) -> Loaded {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix(name);
    let client = etcd.client().await;
    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    stream_csv(etcd.endpoints(), &prefix, &[&sample_csv()]).await;
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            count(&client, &data).await == 2470
        })
        .await
    );
    collector.shutdown().await.unwrap();
    Loaded { etcd, prefix }
}

async fn get(url: String) -> (u16, Value) {
    let resp = reqwest::get(url).await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
}

/// Rows of the CSV as (hostname, gpu_id, uuid, metric, timestamp, value).
fn csv_rows() -> Vec<(String, String, String, String, String, f64)> {
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
    let docs = reqwest::get(format!("{base}/docs"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(docs.contains("/openapi.json"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_connection_limits_refuse_clearly() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("limits");
    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| {
        c.rate_limit_rps = 1.0;
        c.rate_limit_burst = 3.0;
        c.ws_max_connections = 1;
    })
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let r = reqwest::get(format!("{base}/api/v1/hosts")).await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "RATE_LIMITED");
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(retry_after.is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
    gw.shutdown().await.unwrap();

    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| c.ws_max_connections = 1).await;
    let ws = base.replace("http", "ws") + "/api/v1/ws/telemetry";
    let (_first, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    match tokio_tungstenite::connect_async(&ws).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert!(body["error"]
                .as_str()
                .unwrap()
                .contains("WS_MAX_CONNECTIONS"));
        }
        other => panic!("second WebSocket should be refused, got {other:?}"),
    }
    gw.shutdown().await.unwrap();
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads text frames until `n` records arrived (or 60 s passed).
async fn read_records(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < n && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<Value>(&t).unwrap() {
                Value::Array(a) => out.extend(a),
                v => out.push(v),
            },
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_delivers_new_records_filters_them_and_replays_from_a_revision() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("ws");
    let client = etcd.client().await;
    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| c.ws_buffer = 8192).await;
    let ws = base.replace("http", "ws") + "/api/v1/ws/telemetry";

    // Something stored before anyone connects is not streamed live.
    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let early = dir.path().join("early.csv");
    std::fs::write(&early, "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n\"2025-07-18T19:00:00Z\",\"DCGM_FI_DEV_GPU_UTIL\",\"0\",\"nvidia0\",\"GPU-early\",\"H100\",\"early-host\",\"\",\"\",\"\",\"1\",\"\"\n").unwrap();
    stream_csv(etcd.endpoints(), &prefix, &[&early]).await;
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            count(&client, &data).await == 1
        })
        .await
    );

    let (mut all, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    let (mut temps, _) = tokio_tungstenite::connect_async(format!(
        "{ws}?metric=DCGM_FI_DEV_GPU_TEMP&hostname=mtv5-dgx1-hgpu-031"
    ))
    .await
    .unwrap();
    let (mut gpu3, _) = tokio_tungstenite::connect_async(format!("{ws}?gpu=3"))
        .await
        .unwrap();
    // A client that never reads.
    let (_stuck, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // let the server register the subscriptions

    stream_csv(etcd.endpoints(), &prefix, &[&sample_csv()]).await;
    let rows = csv_rows();
    let got = read_records(&mut all, 2470).await;
    assert_eq!(
        got.len(),
        2470,
        "exactly the records stored after connecting"
    );
    assert!(got.iter().all(|f| f["hostname"] != "early-host"));
    let keys: HashSet<(String, String, String)> = got
        .iter()
        .map(|f| {
            (
                f["uuid"].as_str().unwrap().into(),
                f["metric"].as_str().unwrap().into(),
                f["timestamp"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(keys.len(), 2470);
    assert!(
        got.iter()
            .all(|f| f["revision"].as_i64().is_some_and(|r| r > 0)),
        "each frame carries its revision"
    );

    let want_temps = rows
        .iter()
        .filter(|r| r.3 == "DCGM_FI_DEV_GPU_TEMP" && r.0 == "mtv5-dgx1-hgpu-031")
        .count();
    let got_temps = read_records(&mut temps, want_temps).await;
    assert_eq!(got_temps.len(), want_temps);
    assert!(got_temps
        .iter()
        .all(|f| f["metric"] == "DCGM_FI_DEV_GPU_TEMP" && f["hostname"] == "mtv5-dgx1-hgpu-031"));
    let want_gpu3 = rows.iter().filter(|r| r.1 == "3").count();
    let got_gpu3 = read_records(&mut gpu3, want_gpu3).await;
    assert_eq!(got_gpu3.len(), want_gpu3);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), gpu3.next())
            .await
            .is_err(),
        "nothing beyond the filter"
    );

    // A client that reconnects with since_revision gets what it missed, once.
    let first_rev = got
        .iter()
        .map(|f| f["revision"].as_i64().unwrap())
        .min()
        .unwrap();
    let (mut replay, _) =
        tokio_tungstenite::connect_async(format!("{ws}?since_revision={first_rev}"))
            .await
            .unwrap();
    let replayed = read_records(&mut replay, 2470).await;
    assert_eq!(replayed.len(), 2470);
    let mut by_rev: HashMap<i64, usize> = HashMap::new();
    for f in &replayed {
        *by_rev.entry(f["revision"].as_i64().unwrap()).or_default() += 1;
    }
    let mut live_by_rev: HashMap<i64, usize> = HashMap::new();
    for f in &got {
        *live_by_rev
            .entry(f["revision"].as_i64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        by_rev, live_by_rev,
        "the replay matches the live stream revision by revision"
    );

    let (s, b) = get(format!("{base}/api/v1/ws/telemetry?since_revision=abc")).await;
    assert_error(s, &b, 400, "INVALID_REVISION");
    collector.shutdown().await.unwrap();
    gw.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_without_delaying_others() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("slow");
    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| {
        // Room for a commit's burst (63 records) for a client that reads; nothing more.
        c.ws_buffer = 512;
        c.ws_max_dropped = 32;
        c.ws_ping_interval = Duration::from_secs(2);
    })
    .await;
    let ws = base.replace("http", "ws") + "/api/v1/ws/telemetry";
    // The stuck client: a tiny receive buffer, and it never reads until the end.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let (mut stuck, _) = tokio_tungstenite::client_async(&ws, stream).await.unwrap();
    // The reader client keeps up by reading concurrently.
    let (mut reader, _) =
        tokio_tungstenite::connect_async(format!("{ws}?metric=DCGM_FI_DEV_GPU_UTIL"))
            .await
            .unwrap();
    let reading = tokio::spawn(async move { read_records(&mut reader, 247 * 4).await.len() });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    for _ in 0..4 {
        // Four passes of the file with fresh identities: 9,880 frames for the stuck client.
        let mut cfg = streamer::Config::for_tests(etcd.endpoints(), &prefix);
        cfg.csv = vec![sample_csv()];
        cfg.timestamps = Some(streamer::config::Timestamps::Now);
        streamer::run(
            cfg,
            streamer::Listeners::default(),
            std::sync::Arc::new(streamer::Counters::default()),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        reading.await.unwrap(),
        247 * 4,
        "the normal client got every frame it asked for"
    );

    // The stuck client was cut off: its stream ends before all frames, with 1008 if the close fit.
    let mut frames = 0;
    let mut close_code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), stuck.next()).await {
        match msg {
            Ok(Message::Text(_)) => frames += 1,
            Ok(Message::Close(c)) => {
                close_code = c.map(|c| u16::from(c.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        frames < 2470 * 4,
        "the stuck client did not get everything ({frames})"
    );
    if let Some(code) = close_code {
        assert_eq!(code, 1008, "policy close");
    }
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("ws_closed_slow"), "the cut-off is counted");
    collector.shutdown().await.unwrap();
    gw.shutdown().await.unwrap();
}

/// `WS_MAX_DROPPED` is enforced as soon as a client passes it, not at the next ping: a client
/// that never reads is closed within seconds, with the default 30 s ping interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_ws_max_dropped_is_closed_before_any_ping_would_notice() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("max-dropped");
    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| {
        // The default queue (4,096 frames): losses start only once the socket is full and
        // sends block, which is when a check made only on delivery never runs.
        c.ws_max_dropped = 1000;
        assert_eq!(c.ws_ping_interval, Duration::from_secs(30), "the default");
    })
    .await;
    let ws = base.replace("http", "ws") + "/api/v1/ws/telemetry";
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let (mut stuck, _) = tokio_tungstenite::client_async(&ws, stream).await.unwrap();
    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    // Enough to fill the socket buffers (about 10 MB of frames): sends block from then on.
    for _ in 0..10 {
        let mut cfg = streamer::Config::for_tests(etcd.endpoints(), &prefix);
        cfg.csv = vec![sample_csv()];
        cfg.timestamps = Some(streamer::config::Timestamps::Now);
        streamer::run(
            cfg,
            streamer::Listeners::default(),
            std::sync::Arc::new(streamer::Counters::default()),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    }
    let client = etcd.client().await;
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            count(&client, &data).await == 24_700
        })
        .await
    );
    // Now read: what was buffered, then the end of the stream, well before a 30 s ping.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        let mut frames = 0;
        loop {
            match stuck.next().await {
                Some(Ok(Message::Text(_))) => frames += 1,
                Some(Ok(Message::Close(c))) => return (frames, c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return (frames, None),
            }
        }
    })
    .await;
    let (frames, code) = ended.expect("the stuck client is closed within seconds, not at a ping");
    assert!(frames < 24_700, "it lost frames ({frames} of 24,700)");
    if let Some(code) = code {
        assert_eq!(code, 1008);
    }
    collector.shutdown().await.unwrap();
    gw.shutdown().await.unwrap();
}

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
    let ok = std::process::Command::new(pipeline_tests::services::binary("streamer"))
        .args([
            "generate",
            "--hosts",
            "3",
            "--gpus-per-host",
            "2",
            "--steps",
            "100",
        ])
        .args(["--start", "2025-07-18T20:00:00Z", "--out"])
        .arg(&csv)
        .status()
        .unwrap();
    assert!(ok.success());
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

/// Slow or silent clients hold nothing: a header sent one byte at a time (slowloris) and an
/// idle keep-alive connection are both closed after `HTTP_HEADER_TIMEOUT`, on the gateway and
/// on the streamer's ingest listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("slowloris");
    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| {
        c.runtime.http_header_timeout = Duration::from_secs(1);
    })
    .await;
    let ingest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest_addr = ingest.local_addr().unwrap().to_string();
    let mut cfg = streamer::Config::for_tests(etcd.endpoints(), &prefix);
    cfg.listen = Some("in-process".into());
    cfg.runtime.http_header_timeout = Duration::from_secs(1);
    let stop = tokio_util::sync::CancellationToken::new();
    let streaming = tokio::spawn(streamer::run(
        cfg,
        streamer::Listeners {
            ingest: Some(ingest),
        },
        std::sync::Arc::new(streamer::Counters::default()),
        stop.clone(),
    ));

    for addr in [base.trim_start_matches("http://").to_string(), ingest_addr] {
        // Twenty slowloris connections, a byte every 200 ms.
        let mut slow = Vec::new();
        for _ in 0..20 {
            slow.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        let started = tokio::time::Instant::now();
        let header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut open = slow.len();
        'bytes: for b in header.iter().cycle() {
            open = 0;
            for s in &mut slow {
                if s.write_all(&[*b]).await.is_ok() && s.flush().await.is_ok() {
                    open += 1;
                }
            }
            if open == 0 || started.elapsed() > Duration::from_secs(20) {
                break 'bytes;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(open, 0, "{addr}: every slowloris connection is closed");
        // A served request, then silence: the keep-alive connection is closed too.
        let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 "),
            "a response"
        );
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match idle.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "{addr}: an idle keep-alive connection is closed"
        );
    }
    stop.cancel();
    streaming.await.unwrap().unwrap();
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
            count(&client, &data).await == 2472
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
