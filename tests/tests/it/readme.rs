//! The README's commands as a user runs them: the real binaries as processes, with their
//! default admin listeners (no `ADMIN_LISTEN`), against a real etcd.

use std::process::Command;
use std::time::Duration;

use pipeline_tests::checks::stored;
use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{binary, unique_prefix, wait_until};
use pipeline_tests::{sample_csv, EtcdCluster};

/// A binary with the pipeline's environment and nothing else of ours.
pub(crate) fn cmd(name: &str, endpoints: &[String], prefix: &str) -> Command {
    let mut c = Command::new(binary(name));
    c.env("ETCD_ENDPOINTS", endpoints.join(","))
        .env("ETCD_PREFIX", prefix)
        .env("RUST_LOG", "info")
        .env_remove("ADMIN_LISTEN");
    c
}

pub(crate) async fn get(url: &str) -> Option<(u16, serde_json::Value)> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.unwrap_or_default()))
}

/// Asserts that every address answers `/health` 200 and `/ready` 503 naming etcd, within 10 s.
async fn assert_all_not_ready(addrs: &[String], when: &str) {
    for a in addrs {
        let not_ready = wait_until(Duration::from_secs(10), || async {
            let health = get(&format!("http://{a}/health")).await;
            let ready = get(&format!("http://{a}/ready")).await;
            matches!(health, Some((200, _)))
                && ready.is_some_and(|(s, body)| {
                    s == 503 && body["reason"].as_str().is_some_and(|r| r.contains("etcd"))
                })
        })
        .await;
        assert!(
            not_ready,
            "{a}: /health must be 200 and /ready 503 naming etcd {when}"
        );
    }
}

/// A gateway process on a free port, waited on until ready; its port.
pub(crate) async fn ready_gateway(endpoints: &[String], prefix: &str) -> (Proc, u16) {
    let port = free_port();
    let gateway = Proc::spawn(
        "gateway",
        cmd("gateway", endpoints, prefix).env("GATEWAY_PORT", port.to_string()),
    );
    assert!(
        becomes_ready(&format!("127.0.0.1:{port}"), 30).await,
        "{}",
        gateway.stderr()
    );
    (gateway, port)
}

/// Polls `http://{addr}/ready` until it answers 200, at most `secs` seconds.
pub(crate) async fn becomes_ready(addr: &str, secs: u64) -> bool {
    wait_until(Duration::from_secs(secs), || async {
        get(&format!("http://{addr}/ready"))
            .await
            .is_some_and(|(s, _)| s == 200)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_pass_streamer_exits_as_soon_as_its_file_is_published() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("readme-one-pass");
    let mut streamer = Proc::spawn(
        "streamer",
        cmd("streamer", &etcd.endpoints(), &prefix)
            .arg("--csv")
            .arg(sample_csv())
            .env("SHUTDOWN_GRACE", "60s"),
    );
    // A contract check, not a speed check: 20 s is a third of the grace period, and the file
    // takes well under a second.
    let status = streamer.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}; stderr:\n{}",
        streamer.stderr()
    );
    assert!(
        streamer
            .stdout()
            .contains("read=2470 published=2470 invalid=0"),
        "{}",
        streamer.stdout()
    );
    assert!(!streamer.stderr().contains("grace period ran out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_and_two_streamers_run_side_by_side_on_one_host() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("readme-side-by-side");
    let eps = etcd.endpoints();
    let collectors: Vec<Proc> = (0..2)
        .map(|_| Proc::spawn("collector", &mut cmd("collector", &eps, &prefix)))
        .collect();
    let ingest_ports = [free_port(), free_port()];
    let streamers: Vec<Proc> = ingest_ports
        .iter()
        .map(|p| {
            Proc::spawn(
                "streamer",
                cmd("streamer", &eps, &prefix).args(["--listen", &format!("127.0.0.1:{p}")]),
            )
        })
        .collect();
    // Four processes, each with its own admin port, each ready.
    let mut admins = Vec::new();
    for p in collectors.iter().chain(&streamers) {
        admins.push(p.admin_addr().await);
    }
    admins.sort();
    admins.dedup();
    assert_eq!(
        admins.len(),
        4,
        "every process serves its own admin port: {admins:?}"
    );
    for a in &admins {
        assert!(becomes_ready(a, 30).await, "{a} never became ready");
    }
    // Half of the real CSV through each streamer; all of it stored once.
    let csv = std::fs::read_to_string(sample_csv()).unwrap();
    let (header, rows) = csv.split_once('\n').unwrap();
    let rows: Vec<&str> = rows.lines().collect();
    let http = reqwest::Client::new();
    for (i, half) in rows.chunks(rows.len().div_ceil(2)).enumerate() {
        let body = format!("{header}\n{}\n", half.join("\n"));
        let resp = http
            .post(format!(
                "http://127.0.0.1:{}/api/v1/ingest",
                ingest_ports[i]
            ))
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            202,
            "{}",
            resp.text().await.unwrap()
        );
    }
    let client = etcd.client().await;
    let data = format!("{prefix}/telemetry/data/");
    let all_stored = wait_until(Duration::from_secs(60), || async {
        stored(&client, &data).await == 2470
    })
    .await;
    assert!(
        all_stored,
        "stored {} of 2470",
        stored(&client, &data).await
    );
    for p in collectors.iter().chain(&streamers) {
        assert!(
            !p.stderr().contains("Address already in use"),
            "{}",
            p.stderr()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_answer_while_etcd_is_down_and_ready_returns_with_it() {
    let mut etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("readme-etcd-down");
    let eps = etcd.endpoints();
    // etcd is down before the processes start: they must answer at once all the same.
    etcd.kill(0);
    let gateway_port = free_port();
    let collector = Proc::spawn("collector", &mut cmd("collector", &eps, &prefix));
    let streamer = Proc::spawn(
        "streamer",
        cmd("streamer", &eps, &prefix).args(["--listen", &format!("127.0.0.1:{}", free_port())]),
    );
    let gateway = Proc::spawn(
        "gateway",
        cmd("gateway", &eps, &prefix).env("GATEWAY_PORT", gateway_port.to_string()),
    );
    let mut bases = vec![format!("127.0.0.1:{gateway_port}")];
    bases.push(collector.admin_addr().await);
    bases.push(streamer.admin_addr().await);

    assert_all_not_ready(&bases, "while etcd is down").await;
    // The API says why too, in the contract's shape.
    let (status, body) = get(&format!("http://127.0.0.1:{gateway_port}/api/v1/gpus"))
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["success"], false);

    etcd.restart(0).await;
    for b in &bases {
        assert!(
            becomes_ready(b, 60).await,
            "{b} never became ready once etcd was back"
        );
    }
    // The default admin ports are shared with every other test: a process that exited here
    // would leave its port to another test's process, whose answers would mislead the rest.
    let mut procs = [collector, streamer, gateway];
    for p in &mut procs {
        assert!(p.running(), "a process exited when etcd came back");
    }

    // Stopped again while running: not ready with a reason, answered at once.
    etcd.kill(0);
    assert_all_not_ready(&bases, "when etcd goes away").await;
    // A query that reads etcd (/invalid always does) gets a prompt 503 in the contract's shape
    // with Retry-After, not a long wait for a 502 carrying gRPC text.
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{gateway_port}/api/v1/invalid"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "STORAGE_UNAVAILABLE", "{body}");
    let text = body["error"].as_str().unwrap();
    assert!(
        !text.contains("tonic") && !text.contains("grpc"),
        "no gRPC text: {text}"
    );
    for p in &mut procs {
        assert!(p.running(), "a process exited when etcd went away again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_count_belongs_to_the_queue_and_a_mismatch_is_refused() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("readme-partitions");
    let eps = etcd.endpoints();
    let mut first = Proc::spawn(
        "streamer",
        cmd("streamer", &eps, &prefix)
            .arg("--csv")
            .arg(sample_csv())
            .env("MQ_PARTITIONS", "4"),
    );
    assert!(first
        .wait_exit(Duration::from_secs(30))
        .await
        .is_some_and(|s| s.success()));

    let mut wrong = Proc::spawn(
        "collector",
        cmd("collector", &eps, &prefix).env("MQ_PARTITIONS", "8"),
    );
    let status = wrong.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{}", wrong.stderr());
    let err = wrong.stderr();
    assert!(
        err.contains("MQ_PARTITIONS=8") && err.contains("4 partitions"),
        "the error names both values: {err}"
    );

    // Unset, a collector adopts the queue's count and stores everything.
    let _collector = Proc::spawn("collector", &mut cmd("collector", &eps, &prefix));
    let client = etcd.client().await;
    let data = format!("{prefix}/telemetry/data/");
    let all_stored = wait_until(Duration::from_secs(60), || async {
        stored(&client, &data).await == 2470
    })
    .await;
    assert!(
        all_stored,
        "stored {} of 2470",
        stored(&client, &data).await
    );

    // A count that is not a number is a setting to fix, named with its key: exit 2 at once, not
    // an etcd failure retried until ETCD_STARTUP_TIMEOUT.
    let damaged = unique_prefix("readme-partitions-damaged");
    let key = format!("{damaged}/queue/meta/partitions");
    client
        .clone()
        .put(key.as_str(), "four", None)
        .await
        .unwrap();
    let mut refused = Proc::spawn("collector", &mut cmd("collector", &eps, &damaged));
    let status = refused.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "{}",
        refused.stderr()
    );
    assert!(refused.stderr().contains(&key), "{}", refused.stderr());
}
