//! Derived metrics and alerts (issue 16) with the real binaries over real etcd: a chain of
//! derived metrics computed from the real CSV, a cycle refused, and an alert that goes
//! pending, firing and resolved on a temperature ramp while the collector that evaluated it is
//! killed, heard exactly once per transition by a webhook and by a WebSocket client, and kept
//! under a new lease when the one for resolved alerts was revoked.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::GetOptions;
use futures::StreamExt;
use pipeline_tests::checks::csv_records;
use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{unique_prefix, wait_until};
use pipeline_tests::{sample_csv, EtcdCluster};
use serde_json::{json, Value};

use crate::insight::stream;
use crate::live_config::put;
use crate::readme::{becomes_ready, cmd, get, ready_gateway};
use crate::storage::metric;

fn collector(etcd: &EtcdCluster, prefix: &str, id: &str, webhook: Option<&str>) -> (Proc, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut c = cmd("collector", &etcd.endpoints(), prefix);
    c.args(["--id", id])
        .env("ADMIN_LISTEN", &admin)
        .env("MQ_PROCESSING_TIMEOUT", "3s")
        .env("STORAGE_FOLD", "false");
    if let Some(url) = webhook {
        c.env("ALERT_WEBHOOK_URL", url);
    }
    (Proc::spawn(id, &mut c), admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derived_chain_of_depth_two_is_computed_and_a_cycle_is_refused() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("derived");
    let (_gw, port) = ready_gateway(&etcd.endpoints(), &prefix).await;
    let base = format!("http://127.0.0.1:{port}");

    for (value, says) in [
        (
            json!([{"name": "a", "expr": "b + 1"}, {"name": "b", "expr": "a * 2"}]),
            "a cycle",
        ),
        (
            json!([{"name": "a", "expr": "DCGM_FI_DEV_FB_USED + fb_total"}]),
            "unknown name \"fb_total\"",
        ),
    ] {
        let (status, body) = put(&base, "derived.metrics", value).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("INVALID_CONFIG")),
            "{body}"
        );
        assert!(body["error"].as_str().unwrap().contains(says), "{body}");
    }
    let chain = json!([
        {"name": "mem_free_pct", "expr": "100 - mem_used_pct"},
        {"name": "mem_used_pct", "expr": "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) * 100"},
    ]);
    let (status, body) = put(&base, "derived.metrics", chain).await;
    assert_eq!(status, 200, "{body}");

    let (c, admin) = collector(&etcd, &prefix, "c1", None);
    assert!(becomes_ready(&admin, 60).await, "{}", c.stderr());
    stream(&etcd, &prefix, &sample_csv()).await;

    // What the chain should give, from the input itself.
    let records = csv_records(&sample_csv());
    let mut fb: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for r in &records {
        let e = fb.entry(r.uuid.clone()).or_default();
        match r.metric.as_str() {
            "DCGM_FI_DEV_FB_USED" => e.0 = Some(r.value),
            "DCGM_FI_DEV_FB_FREE" => e.1 = Some(r.value),
            _ => {}
        }
    }
    assert_eq!(fb.len(), 247);
    let stored_all = wait_until(Duration::from_secs(60), || async {
        let Some((200, b)) = get(&format!("{base}/api/v1/fleet/latest?metric=mem_free_pct")).await
        else {
            return false;
        };
        b["count"] == 247
    })
    .await;
    assert!(stored_all, "derived values not all stored:\n{}", c.stderr());
    for (uuid, (used, free)) in fb.iter().take(40) {
        let (used, free) = (used.unwrap(), free.unwrap());
        let pct = used / (used + free) * 100.0;
        for (metric, want) in [("mem_used_pct", pct), ("mem_free_pct", 100.0 - pct)] {
            let (status, b) = get(&format!(
                "{base}/api/v1/gpus/{uuid}/telemetry?metric={metric}"
            ))
            .await
            .unwrap();
            assert_eq!(
                (status, b["count"].as_u64()),
                (200, Some(1)),
                "{uuid} {metric}: {b}"
            );
            let e = &b["data"][0];
            // serde_json reads floats to within an ulp, not exactly.
            let got = e["value"].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-9,
                "{uuid} {metric}: {got} != {want}"
            );
            assert_eq!(e["derived"], true, "{e}");
        }
    }
    let (_, device) = get(&format!(
        "{base}/api/v1/gpus/{}/telemetry?metric=DCGM_FI_DEV_FB_USED",
        fb.keys().next().unwrap()
    ))
    .await
    .unwrap();
    assert!(device["data"][0].get("derived").is_none(), "{device}");
    assert_eq!(metric(&admin, "derived_computed").await, Some(494.0));
    assert_eq!(metric(&admin, "derived_skipped").await.unwrap_or(0.0), 0.0);
}

/// One GPU's temperatures at `t0 + seconds`.
fn ramp(dir: &Path, name: &str, points: &[(i64, f64)]) -> std::path::PathBuf {
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let mut csv = String::from(
        "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n",
    );
    for (s, v) in points {
        let t =
            (t0 + chrono::Duration::seconds(*s)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        csv += &format!(
            "\"{t}\",\"DCGM_FI_DEV_GPU_TEMP\",\"0\",\"nvidia0\",\"GPU-ramp-0\",\"NVIDIA H100 80GB HBM3\",\"ramp-host\",\"\",\"\",\"\",\"{v}\",\"\"\n"
        );
    }
    let path = dir.join(name);
    std::fs::write(&path, csv).unwrap();
    path
}

/// A webhook receiver on a free port: every body it was sent.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

async fn alert_state(base: &str) -> Option<String> {
    let (_, b) = get(&format!("{base}/api/v1/alerts")).await?;
    b["data"]
        .as_array()?
        .iter()
        .find(|a| a["rule"] == "gpu_hot" && a["hostname"] == "ramp-host")
        .and_then(|a| a["state"].as_str().map(str::to_string))
}

async fn maintainer(base: &str) -> Option<String> {
    let (_, b) = get(&format!("{base}/api/v1/cluster")).await?;
    b["data"]["maintainer"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_goes_pending_firing_resolved_across_a_sigkill_and_is_heard_once_per_transition() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("alerts");
    let dir = tempfile::tempdir().unwrap();
    let (_gw, port) = ready_gateway(&etcd.endpoints(), &prefix).await;
    let base = format!("http://127.0.0.1:{port}");
    let rule = json!([{"name": "gpu_hot", "metric": "DCGM_FI_DEV_GPU_TEMP", "op": ">", "threshold": 85, "for": "2m"}]);
    assert_eq!(put(&base, "alerts.rules", rule).await.0, 200);
    let (hook, heard) = webhook().await;

    let (mut first, first_admin) = collector(&etcd, &prefix, "first", Some(&hook));
    assert!(becomes_ready(&first_admin, 60).await, "{}", first.stderr());
    let elected = wait_until(Duration::from_secs(30), || async {
        maintainer(&base).await.as_deref() == Some("first")
    })
    .await;
    assert!(elected, "first is not the maintainer:\n{}", first.stderr());
    let (second, second_admin) = collector(&etcd, &prefix, "second", Some(&hook));
    assert!(
        becomes_ready(&second_admin, 60).await,
        "{}",
        second.stderr()
    );

    let ws_url =
        base.replace("http", "ws") + "/api/v1/ws/telemetry?include=alerts&hostname=ramp-host";
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();

    // Hot from t=10 s: pending, evaluated by the first collector.
    stream(
        &etcd,
        &prefix,
        &ramp(dir.path(), "1.csv", &[(0, 80.0), (10, 86.0), (60, 88.0)]),
    )
    .await;
    let pending = wait_until(Duration::from_secs(30), || async {
        alert_state(&base).await.as_deref() == Some("pending")
    })
    .await;
    assert!(pending, "no pending alert:\n{}", first.stderr());
    first.signal(libc::SIGKILL);
    let _ = first.wait_exit(Duration::from_secs(10)).await;

    // Still hot two minutes after it began: firing, evaluated by the second.
    stream(&etcd, &prefix, &ramp(dir.path(), "2.csv", &[(130, 90.0)])).await;
    let firing = wait_until(Duration::from_secs(60), || async {
        alert_state(&base).await.as_deref() == Some("firing")
    })
    .await;
    assert!(
        firing,
        "not firing after the hand-over:\n{}",
        second.stderr()
    );
    assert_eq!(maintainer(&base).await.as_deref(), Some("second"));

    // The lease resolved alerts are kept under is revoked from outside (as a restore without
    // it would): the next flush takes a new one instead of retrying the dead one forever.
    // Undelivered webhook events share that lease and would go with it: first let the firing
    // one be delivered.
    let fired_heard = wait_until(Duration::from_secs(30), || async {
        !heard.lock().unwrap().is_empty()
    })
    .await;
    assert!(fired_heard, "the webhook heard nothing of the firing");
    let client = etcd.client().await;
    let bucket = client
        .kv_client()
        .get(
            format!("{prefix}/leases/alerts/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let revoked: Vec<i64> = bucket
        .kvs()
        .iter()
        .map(|kv| kv.value_str().unwrap().parse().unwrap())
        .collect();
    assert!(!revoked.is_empty(), "the firing flush took a bucket lease");
    for id in &revoked {
        client.lease_client().revoke(*id).await.unwrap();
    }

    stream(&etcd, &prefix, &ramp(dir.path(), "3.csv", &[(200, 70.0)])).await;
    let resolved = wait_until(Duration::from_secs(30), || async {
        alert_state(&base).await.as_deref() == Some("resolved")
    })
    .await;
    assert!(resolved, "not resolved:\n{}", second.stderr());
    let stored = client
        .kv_client()
        .get(format!("{prefix}/alerts/state/gpu_hot/ramp-host/0"), None)
        .await
        .unwrap();
    let lease = stored.kvs()[0].lease();
    assert!(
        lease != 0 && !revoked.contains(&lease),
        "kept under a new lease"
    );
    let ttl = client
        .lease_client()
        .time_to_live(lease, None)
        .await
        .unwrap()
        .ttl();
    assert!(ttl > 0, "the new lease is alive ({ttl})");
    let (_, listed) = get(&format!("{base}/api/v1/alerts?state=resolved"))
        .await
        .unwrap();
    let a = &listed["data"][0];
    assert_eq!(
        (
            a["started_at"].as_str(),
            a["fired_at"].as_str(),
            a["resolved_at"].as_str()
        ),
        (
            Some("2026-01-01T00:00:10Z"),
            Some("2026-01-01T00:02:10Z"),
            Some("2026-01-01T00:03:20Z")
        ),
        "{a}"
    );
    let (status, bad) = get(&format!("{base}/api/v1/alerts?state=hot"))
        .await
        .unwrap();
    assert_eq!((status, bad["code"].as_str()), (400, Some("INVALID_STATE")));

    // The webhook hears each transition once: wait for both, then a little more for doubles.
    let both = wait_until(Duration::from_secs(30), || async {
        heard.lock().unwrap().len() >= 2
    })
    .await;
    assert!(
        both,
        "webhook heard {:?}\n{}",
        heard.lock().unwrap(),
        second.stderr()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let heard = heard.lock().unwrap().clone();
    let statuses: Vec<_> = heard
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["firing", "resolved"], "{heard:?}");
    let labels = &heard[0]["alerts"][0]["labels"];
    assert_eq!(labels["alertname"], "gpu_hot");
    assert_eq!(labels["hostname"], "ramp-host");
    assert_eq!(heard[0]["version"], "4");
    assert_eq!(heard[1]["alerts"][0]["endsAt"], "2026-01-01T00:03:20Z");

    // The WebSocket client, connected from the start, saw the records and each alert change.
    let mut alerts = Vec::new();
    let mut records = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alerts.len() < 3 {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        let Ok(Some(Ok(msg))) = next else { break };
        let Ok(text) = msg.into_text() else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if v["type"] == "alert" {
            alerts.push(v["state"].as_str().unwrap_or_default().to_string());
        } else if v["metric"] == "DCGM_FI_DEV_GPU_TEMP" {
            records += 1;
        }
    }
    assert_eq!(alerts, ["pending", "firing", "resolved"]);
    assert_eq!(records, 5, "the records stored while connected");
}
