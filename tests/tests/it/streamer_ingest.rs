//! Records pushed to the streamer (HTTP and gRPC): counts, reasons, bad bodies, and
//! adversarial records refused at the door while the good ones around them are stored.

use std::time::Duration;

use pipeline_tests::checks::stored;
use pipeline_tests::services::{init_tracing, start_collector, unique_prefix, wait_until};
use pipeline_tests::EtcdCluster;
use serde_json::{json, Value};
use streamer::{Config, Counters};

use crate::streamer_inputs::{row, start_streamer, HEADER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_reports_counts_and_reasons_and_refuses_bad_bodies() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("ingest");
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.ingest_max_body = 4096;
    let s = start_streamer(cfg, true).await;
    let url = format!("{}/api/v1/ingest", s.ingest);
    let http = reqwest::Client::new();

    let body = format!(
        "{HEADER}\n{}\n{}\n{}\n",
        row(
            "2025-07-18T20:42:34Z",
            "DCGM_FI_DEV_GPU_UTIL",
            "0",
            "GPU-1",
            "h1",
            "5"
        ),
        row(
            "2025-07-18T20:42:34Z",
            "DCGM_FI_DEV_GPU_UTIL",
            "1",
            "GPU-2",
            "h1",
            "not-a-number"
        ),
        row(
            "2025-07-18T20:42:35Z",
            "DCGM_FI_DEV_GPU_UTIL",
            "0",
            "GPU-1",
            "h1",
            "6"
        ),
    );
    let resp = http
        .post(&url)
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let report: Value = resp.json().await.unwrap();
    assert_eq!(
        (report["accepted"].as_u64(), report["invalid"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(
        report["reasons"][0].as_str().unwrap().contains("line 3"),
        "{report}"
    );

    let resp = http
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["success"], false);
    assert!(err["error"].as_str().unwrap().contains("not JSON"));

    let resp = http.post(&url).header("content-type", "application/json").body(r#"[{"metric":"X","gpu_id":0,"hostname":"","value":1,"timestamp":"2025-07-18T20:42:34Z"}]"#).send().await.unwrap();
    assert_eq!(resp.status(), 400, "nothing usable");
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["reasons"][0]
            .as_str()
            .unwrap()
            .contains("hostname is empty"),
        "{err}"
    );

    let resp = http
        .post(&url)
        .header("content-type", "text/csv")
        .body("x".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["success"], false);

    let counters = s.stop().await;
    assert_eq!(Counters::get(&counters.published), 2);
    assert_eq!(Counters::get(&counters.invalid), 2);
}

/// Adversarial pushes: a record too large for etcd is refused at the door with its reason, and
/// every row of a body with NaN, ±inf and out-of-range values is accounted for in the reply.
/// The good records around them are stored, and nothing waits behind the bad ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_non_finite_records_are_refused_at_the_door_and_the_good_ones_stored() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("ingest-adversarial");
    let cfg = Config::for_tests(etcd.endpoints(), &prefix);
    let s = start_streamer(cfg, true).await;
    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    let url = format!("{}/api/v1/ingest", s.ingest);
    let http = reqwest::Client::new();

    let record = |gpu: u32, labels: Value| {
        serde_json::json!({"timestamp": "2025-07-18T20:42:34Z", "metric": "DCGM_FI_DEV_GPU_TEMP",
            "gpu_id": gpu, "hostname": "h1", "uuid": format!("GPU-{gpu}"), "value": 40.0, "labels": labels})
    };
    let huge = serde_json::json!({"blob": "x".repeat(2 << 20)});
    let body = serde_json::json!([record(0, json!({})), record(1, huge), record(2, json!({}))]);
    let resp = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let report: Value = resp.json().await.unwrap();
    assert_eq!(
        (report["accepted"].as_u64(), report["invalid"].as_u64()),
        (Some(2), Some(1)),
        "{report}"
    );
    assert!(
        report["reasons"][0]
            .as_str()
            .unwrap()
            .contains("bytes encoded"),
        "{report}"
    );

    let values = [
        "NaN",
        "inf",
        "-inf",
        "1e400",
        "-1e400",
        "1e308",
        "140737488355328",
        "41",
        "42",
    ];
    let rows: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            row(
                &format!("2025-07-18T20:43:{i:02}Z"),
                "DCGM_FI_DEV_POWER_USAGE",
                "3",
                "GPU-3",
                "h1",
                v,
            )
        })
        .collect();
    let resp = http
        .post(&url)
        .header("content-type", "text/csv")
        .body(format!("{HEADER}\n{}\n", rows.join("\n")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let report: Value = resp.json().await.unwrap();
    let n = |k: &str| report[k].as_u64().unwrap();
    assert_eq!(
        n("accepted") + n("invalid") + n("missing"),
        values.len() as u64,
        "every row accounted for: {report}"
    );
    assert_eq!(
        (n("accepted"), n("invalid"), n("missing")),
        (3, 5, 1),
        "{report}"
    );
    assert_eq!(
        report["reasons"].as_array().unwrap().len(),
        6,
        "a reason for every refused row: {report}"
    );

    let client = etcd.client().await;
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            stored(&client, &data).await == 5
        })
        .await,
        "the five good records are stored: {}",
        stored(&client, &data).await
    );
    let counters = s.stop().await;
    assert_eq!(
        Counters::get(&counters.publish_errors),
        0,
        "nothing was retried against etcd"
    );
    assert_eq!(counters.unpublished(), 0);
    collector.shutdown().await.unwrap();
}
