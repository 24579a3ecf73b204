//! Live configuration (docs/operations.md), with real etcd and the real binaries: the kill
//! switch holds everything and loses nothing, a rate change applies without a restart, and a
//! bad value is refused before any process sees it.

use std::time::Duration;

use pipeline_tests::checks::{checksum, csv_records, stored, stored_records};
use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{unique_prefix, wait_until};
use pipeline_tests::{sample_csv, EtcdCluster};
use serde_json::{json, Value};

use crate::readme::{becomes_ready, cmd, get};
use crate::storage::metric;

/// A gateway process on a free port; its base URL.
fn gateway(etcd: &EtcdCluster, prefix: &str) -> (Proc, String) {
    let port = free_port();
    let p = Proc::spawn(
        "gateway",
        cmd("gateway", &etcd.endpoints(), prefix).env("GATEWAY_PORT", port.to_string()),
    );
    (p, format!("http://127.0.0.1:{port}"))
}

pub(crate) async fn put(base: &str, key: &str, value: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .put(format!("{base}/api/v1/config/{key}"))
        .json(&json!({ "value": value }))
        .send()
        .await
        .expect("PUT config");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// `collector config ...` as a script runs it: (exit code, stdout, stderr).
fn config_cli(etcd: &EtcdCluster, prefix: &str, args: &[&str]) -> (i32, String, String) {
    let out = cmd("collector", &etcd.endpoints(), prefix)
        .arg("config")
        .args(args)
        .output()
        .expect("run collector config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn published(admin: &str) -> f64 {
    metric(admin, "messages_published").await.unwrap_or(-1.0)
}

/// Records a streamer published in `secs` seconds.
async fn published_in(admin: &str, secs: u64) -> f64 {
    let before = published(admin).await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    published(admin).await - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_stops_publishing_and_claiming_and_loses_nothing() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("kill-switch");
    let client = etcd.client().await;
    let data = format!("{prefix}/telemetry/data/");
    let (_gw, base) = gateway(&etcd, &prefix);
    let coll_admin = format!("127.0.0.1:{}", free_port());
    let collector = Proc::spawn(
        "collector",
        cmd("collector", &etcd.endpoints(), &prefix).env("ADMIN_LISTEN", &coll_admin),
    );
    let str_admin = format!("127.0.0.1:{}", free_port());
    let mut streamer = Proc::spawn(
        "streamer",
        cmd("streamer", &etcd.endpoints(), &prefix)
            .arg("--csv")
            .arg(sample_csv())
            .env("STREAM_RATE", "150")
            .env("ADMIN_LISTEN", &str_admin),
    );
    assert!(
        becomes_ready(&coll_admin, 60).await,
        "{}",
        collector.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await >= 300
        })
        .await,
        "nothing stored:\n{}",
        collector.stderr()
    );

    assert!(
        wait_until(Duration::from_secs(30), || async {
            get(&format!("{base}/health"))
                .await
                .is_some_and(|(s, _)| s == 200)
        })
        .await
    );
    let (status, body) = put(&base, "ingestion.enabled", json!(false)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["source"], "etcd", "{body}");

    // Both processes take it within a few seconds, and say so on /ready.
    for admin in [&str_admin, &coll_admin] {
        let held = wait_until(Duration::from_secs(5), || async {
            get(&format!("http://{admin}/ready"))
                .await
                .is_some_and(|(s, b)| s == 503 && b.to_string().contains("ingestion"))
        })
        .await;
        assert!(held, "{admin} still ready with ingestion off");
    }
    // Settled: nothing published, nothing stored, for as long as it stays off.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (p1, s1) = (published(&str_admin).await, stored(&client, &data).await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (p2, s2) = (published(&str_admin).await, stored(&client, &data).await);
    assert_eq!(p1, p2, "the streamer published while ingestion was off");
    assert_eq!(s1, s2, "the collector stored while ingestion was off");
    assert!(
        s2 < 2470,
        "the run finished before the switch ({s2} stored)"
    );
    assert!(
        streamer.running(),
        "a one-pass streamer must hold its input, not exit"
    );

    // Switched on again from the command line: everything is stored exactly once.
    let (code, out, err) = config_cli(&etcd, &prefix, &["set", "ingestion.enabled", "true"]);
    assert_eq!(code, 0, "{out}{err}");
    let exit = streamer.wait_exit(Duration::from_secs(120)).await;
    assert!(exit.is_some_and(|e| e.success()), "{}", streamer.stderr());
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await == 2470
        })
        .await,
        "stored {} of 2470:\n{}",
        stored(&client, &data).await,
        collector.stderr()
    );
    let want = csv_records(&sample_csv());
    assert_eq!(
        checksum(&stored_records(&client, &prefix).await),
        checksum(&want),
        "every record once"
    );
    assert!(becomes_ready(&coll_admin, 5).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_change_applies_without_a_restart_and_a_bad_value_never_reaches_a_process() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("live-rate");
    let (_gw, base) = gateway(&etcd, &prefix);
    let _collector = Proc::spawn(
        "collector",
        &mut cmd("collector", &etcd.endpoints(), &prefix),
    );
    let str_admin = format!("127.0.0.1:{}", free_port());
    let streamer = Proc::spawn(
        "streamer",
        cmd("streamer", &etcd.endpoints(), &prefix)
            .arg("--csv")
            .arg(sample_csv())
            .arg("--loop")
            .env("STREAM_RATE", "40")
            .env("ADMIN_LISTEN", &str_admin),
    );
    assert!(becomes_ready(&str_admin, 60).await, "{}", streamer.stderr());
    assert!(
        wait_until(Duration::from_secs(30), || async {
            get(&format!("{base}/api/v1/config"))
                .await
                .is_some_and(|(s, _)| s == 200)
        })
        .await
    );
    // At 40/s, 5 s hold at most 200 records, plus a burst of one second's worth and a batch
    // paced just before the window: SLOW bounds it. More needs the new rate.
    const SLOW: f64 = 40.0 * 7.0;
    let slow = published_in(&str_admin, 5).await;
    assert!(slow <= SLOW, "{slow} records in 5 s at 40/s");

    let (status, body) = put(&base, "stream.rate", json!(2000)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fast = published_in(&str_admin, 5).await;
    assert!(
        fast > 3.0 * SLOW,
        "{fast} records in 5 s after stream.rate=2000 (was {slow})"
    );

    // Refused before it is stored: 400 (or 404 for no such key), and etcd keeps 2000.
    for (key, bad) in [
        ("stream.rate", json!("fast")),
        ("stream.rate", json!(-5)),
        ("throttle.rate", json!(2)),
        ("ingestion.enabled", json!("off")),
        ("log.level", json!("[[")),
    ] {
        let (status, body) = put(&base, key, bad.clone()).await;
        assert_eq!(status, 400, "{key} = {bad}: {body}");
        assert_eq!(body["success"], false);
        assert_eq!(body["code"], "INVALID_CONFIG", "{body}");
    }
    let (status, body) = put(&base, "stream.speed", json!(5)).await;
    assert_eq!(status, 404, "{body}");
    // Only an object is a body: `[null]` is not `{"value": null}` (which would remove 2000).
    for raw in ["[null]", "[5]", "5", "{}"] {
        let resp = reqwest::Client::new()
            .put(format!("{base}/api/v1/config/stream.rate"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{raw}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "INVALID_BODY", "{raw}: {body}");
    }
    let (code, _, err) = config_cli(&etcd, &prefix, &["set", "stream.rate", "-5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("stream.rate"), "{err}");
    let (_, cfg) = get(&format!("{base}/api/v1/config")).await.unwrap();
    let rate = cfg["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "stream.rate")
        .cloned()
        .unwrap();
    assert_eq!(rate["value"], 2000, "{cfg}");
    assert_eq!(rate["source"], "etcd");
    assert!(rate["revision"].as_i64().unwrap() > 0);
    let (code, out, err) = config_cli(&etcd, &prefix, &["get", "stream.rate"]);
    assert_eq!((code, out.trim()), (0, "2000"), "{err}");
    let still_fast = published_in(&str_admin, 5).await;
    assert!(
        still_fast > 3.0 * SLOW,
        "the streamer took a refused value: {still_fast} in 5 s"
    );

    // The log level, too: the streamer logs at debug once it is set.
    let (status, _) = put(&base, "log.level", json!("debug")).await;
    assert_eq!(status, 200);
    let changed = wait_until(Duration::from_secs(10), || async {
        streamer.stderr().contains("log level changed")
    })
    .await;
    assert!(changed, "{}", streamer.stderr());
    // Unset: back to the flag (40/s).
    let (code, out, err) = config_cli(&etcd, &prefix, &["unset", "stream.rate"]);
    assert_eq!(code, 0, "{out}{err}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = published_in(&str_admin, 5).await;
    assert!(
        again <= SLOW,
        "{again} records in 5 s after unsetting stream.rate"
    );
}
