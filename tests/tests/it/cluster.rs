//! The cluster view (`GET /api/v1/cluster`, docs/operations.md) over real processes: every
//! member is listed with its status, a configuration change is seen applied everywhere, and a
//! SIGKILLed member disappears within its lease TTL.

use std::time::{Duration, Instant};

use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{unique_prefix, wait_until};
use pipeline_tests::{sample_csv, EtcdCluster};
use serde_json::{json, Value};

use crate::readme::{becomes_ready, cmd, get, ready_gateway};

/// The lease TTL of a cluster entry (`telemetry::cluster::MEMBER_TTL`).
const MEMBER_TTL: Duration = Duration::from_secs(10);

async fn cluster(base: &str) -> Value {
    match get(&format!("{base}/api/v1/cluster")).await {
        Some((200, body)) => body,
        other => panic!("GET /api/v1/cluster: {other:?}"),
    }
}

/// `role/id` of every member.
fn members(view: &Value) -> Vec<String> {
    view["data"]["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    format!(
                        "{}/{}",
                        m["role"].as_str().unwrap_or("?"),
                        m["id"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn member<'a>(view: &'a Value, role: &str, id: &str) -> Option<&'a Value> {
    view["data"]["members"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == role && m["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_lists_every_process_and_drops_a_killed_one_within_its_ttl() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("cluster");
    let (_gw, port) = ready_gateway(&etcd.endpoints(), &prefix).await;
    let base = format!("http://127.0.0.1:{port}");
    let mut collectors = Vec::new();
    for id in ["coll-a", "coll-b"] {
        let admin = format!("127.0.0.1:{}", free_port());
        let p = Proc::spawn(
            "collector",
            cmd("collector", &etcd.endpoints(), &prefix)
                .args(["--id", id])
                .env("ADMIN_LISTEN", &admin),
        );
        collectors.push((id, admin, p));
    }
    let str_admin = format!("127.0.0.1:{}", free_port());
    let streamer = Proc::spawn(
        "streamer",
        cmd("streamer", &etcd.endpoints(), &prefix)
            .arg("--csv")
            .arg(sample_csv())
            .arg("--loop")
            .env("STREAM_RATE", "200")
            .env("ADMIN_LISTEN", &str_admin),
    );
    for (_, admin, p) in &collectors {
        assert!(becomes_ready(admin, 60).await, "{}", p.stderr());
    }
    assert!(becomes_ready(&str_admin, 60).await, "{}", streamer.stderr());

    // Every process, healthy, with its role's status.
    let all_there = wait_until(Duration::from_secs(20), || async {
        let v = cluster(&base).await;
        let roles: Vec<&str> = v["data"]["members"]
            .as_array()
            .map(|ms| ms.iter().filter_map(|m| m["role"].as_str()).collect())
            .unwrap_or_default();
        roles.iter().filter(|r| **r == "collector").count() == 2
            && roles.contains(&"streamer")
            && roles.contains(&"gateway")
            && v["data"]["members"]
                .as_array()
                .is_some_and(|ms| ms.iter().all(|m| m["health"] == "healthy"))
    })
    .await;
    let view = cluster(&base).await;
    assert!(all_there, "{view:#}");
    assert_eq!(view["count"], 4, "{view:#}");
    let c = member(&view, "collector", "coll-a").expect("coll-a listed");
    assert_eq!(c["address"], collectors[0].1, "{c}");
    assert!(c["status"]["partitions"].is_array(), "{c}");
    assert!(c["version"].as_str().is_some_and(|v| !v.is_empty()));
    let s = view["data"]["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["role"] == "streamer"))
        .expect("streamer listed");
    assert_eq!(s["address"], str_admin, "{s}");
    assert!(s["status"]["published"].as_u64().is_some(), "{s}");
    let gw = view["data"]["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["role"] == "gateway"))
        .expect("gateway listed");
    assert_eq!(gw["address"], format!("0.0.0.0:{port}"), "{gw}");

    // The queue's partitions, each held by one of the two collectors once they share them.
    let shared = wait_until(Duration::from_secs(20), || async {
        let v = cluster(&base).await;
        let parts = v["data"]["queue"]["partitions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        !parts.is_empty()
            && parts
                .iter()
                .all(|p| p["owner"] == "coll-a" || p["owner"] == "coll-b")
    })
    .await;
    assert!(shared, "{:#}", cluster(&base).await);
    assert_eq!(view["data"]["dead_letters"], 0);
    assert!(view["data"]["queue"]["depth"].as_i64().is_some());
    let maintained = wait_until(Duration::from_secs(30), || async {
        let v = cluster(&base).await;
        v["data"]["maintainer"] == "coll-a" || v["data"]["maintainer"] == "coll-b"
    })
    .await;
    assert!(maintained, "no maintainer: {:#}", cluster(&base).await);
    assert!(cluster(&base).await["data"]["storage"]["db_size_bytes"].as_i64() > Some(0));

    // The kill switch: every member reports the new revision applied, and says it is held.
    let resp = reqwest::Client::new()
        .put(format!("{base}/api/v1/config/ingestion.enabled"))
        .json(&json!({"value": false}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 200);
    let applied = wait_until(Duration::from_secs(10), || async {
        let v = cluster(&base).await;
        let config = &v["data"]["config"];
        config["ingestion_enabled"] == false
            && config["revision"].as_i64() > Some(0)
            && config["applied_everywhere"] == true
            && member(&v, "collector", "coll-a").is_some_and(|m| m["ready"] == false)
    })
    .await;
    assert!(applied, "{:#}", cluster(&base).await);
    let view = cluster(&base).await;
    let c = member(&view, "collector", "coll-a").unwrap();
    assert!(
        c["reasons"].to_string().contains("ingestion"),
        "a held member says why: {c}"
    );
    assert_eq!(c["health"], "not_ready");

    // SIGKILL: no clean exit, so only the lease's expiry removes it.
    let killed = Instant::now();
    collectors[1].2.signal(libc::SIGKILL);
    let gone = wait_until(MEMBER_TTL + Duration::from_secs(3), || async {
        !members(&cluster(&base).await).contains(&"collector/coll-b".to_string())
    })
    .await;
    let took = killed.elapsed();
    assert!(gone, "a killed collector is still listed after {took:?}");
    assert!(
        members(&cluster(&base).await).contains(&"collector/coll-a".to_string()),
        "the live one stays"
    );
    eprintln!("killed member dropped after {took:?} (TTL {MEMBER_TTL:?})");
}
