//! The storage lifecycle against real etcd with a small quota: one maintainer and a takeover,
//! a burst far past the budget, NOSPACE raised from outside, and a WebSocket resume older than
//! the compacted history. What writers do while etcd is full is in `storage_full`.

use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{AlarmAction, AlarmType, Client};
use pipeline_tests::checks::stored;
use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{count, unique_prefix, wait_until};
use pipeline_tests::{sample_csv, EtcdCluster};

use crate::collector_faults::generate;
use crate::readme::{becomes_ready, cmd};

const QUOTA: &str = "33554432"; // 32 MiB

pub(crate) async fn small_etcd() -> EtcdCluster {
    EtcdCluster::start(1, &["--quota-backend-bytes", QUOTA]).await
}

/// A collector process as a user starts it, with a short lease and its own admin port.
pub(crate) fn collector(etcd: &EtcdCluster, prefix: &str, id: &str) -> (Proc, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let p = Proc::spawn(
        id,
        cmd("collector", &etcd.endpoints(), prefix)
            .env("COLLECTOR_ID", id)
            .env("ADMIN_LISTEN", &admin)
            .env("MQ_PROCESSING_TIMEOUT", "3s")
            .env("ETCD_QUOTA_BYTES", QUOTA),
    );
    (p, admin)
}

/// A metric's value in a process's `/metrics` (the first line that starts with `series`).
pub(crate) async fn metric(admin: &str, series: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub(crate) async fn alarm_raised(client: &Client) -> bool {
    let r = client
        .clone()
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    r.alarms().iter().any(|a| a.alarm() == AlarmType::Nospace)
}

/// Another writer, outside the pipeline, overwrites one key with 512 KiB values until etcd
/// raises its NOSPACE alarm: history fills the quota.
pub(crate) async fn fill_from_outside(client: &Client) {
    let blob = vec![b'x'; 512 * 1024];
    let mut c = client.clone();
    for _ in 0..10_000 {
        if c.put("/someone-else/blob", blob.clone(), None)
            .await
            .is_err()
        {
            break;
        }
    }
    assert!(alarm_raised(client).await, "the writer could not fill etcd");
}

/// Reads a streamer's one-line summary (`read=… published=… …`) into (name, value) pairs.
pub(crate) fn summary(stdout: &str) -> std::collections::HashMap<String, u64> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("published="))
        .unwrap_or("");
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_one_maintainer_and_a_takeover_within_a_lease_ttl() {
    let etcd = small_etcd().await;
    let prefix = unique_prefix("storage-election");
    let (a, admin_a) = collector(&etcd, &prefix, "a");
    let (b, admin_b) = collector(&etcd, &prefix, "b");
    let leading = |admin: String, id: &'static str| async move {
        metric(&admin, &format!("storage_maintainer{{id=\"{id}\"}}")).await == Some(1.0)
    };
    assert!(
        wait_until(Duration::from_secs(30), || async {
            leading(admin_a.clone(), "a").await || leading(admin_b.clone(), "b").await
        })
        .await,
        "nobody was elected: {}{}",
        a.stderr(),
        b.stderr()
    );
    let (maintainer, mut other, other_admin, other_id) = if leading(admin_a.clone(), "a").await {
        (a, b, admin_b.clone(), "b")
    } else {
        (b, a, admin_a.clone(), "a")
    };
    // One at a time: the other is a candidate, not a maintainer.
    for _ in 0..5 {
        assert!(
            !leading(other_admin.clone(), other_id).await,
            "two maintainers"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = etcd
        .client()
        .await
        .get(format!("{prefix}/storage/status"), None)
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(status.kvs()[0].value())
        .expect("the maintainer publishes its status");
    assert_ne!(status["maintainer"], other_id);
    assert_eq!(status["quota_bytes"], 33_554_432);
    assert_eq!(status["budget_bytes"], 26_843_545);

    maintainer.signal(libc::SIGKILL);
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || leading(
            other_admin.clone(),
            other_id
        ))
        .await,
        "no takeover: {}",
        other.stderr()
    );
    let took = killed.elapsed();
    println!("takeover after SIGKILL: {took:?} (lease TTL 3s)");
    // The lease TTL, plus etcd's expiry sweep (500 ms) and one poll of ours.
    assert!(took < Duration::from_secs(6), "takeover took {took:?}");
    let _ = other.wait_exit(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_far_past_a_small_quota_is_stored_or_expired_and_never_stays_full() {
    let etcd = small_etcd().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("storage-burst");
    let dir = tempfile::tempdir().unwrap();
    // 100 hosts x 10 GPUs x 15 steps x 10 metrics = 150,000 samples: about 110 MiB in etcd,
    // three times its quota.
    let csv = generate(dir.path(), 100, 15);
    let (coll, admin) = collector(&etcd, &prefix, "c1");
    assert!(becomes_ready(&admin, 30).await, "{}", coll.stderr());
    let mut streamer = Proc::spawn(
        "streamer",
        cmd("streamer", &etcd.endpoints(), &prefix)
            .arg("--csv")
            .arg(&csv)
            .env("ADMIN_LISTEN", ""),
    );
    let exit = streamer.wait_exit(Duration::from_secs(300)).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "{}\n{}",
        streamer.stderr(),
        coll.stderr()
    );
    let sum = summary(&streamer.stdout());
    assert_eq!(sum["read"], 150_000, "{}", streamer.stdout());
    assert_eq!(sum["unpublished"], 0);
    let queue = format!("{prefix}/queue/msg/");
    assert!(
        wait_until(Duration::from_secs(120), || async {
            count(&client, &queue).await == 0
        })
        .await,
        "the queue did not drain: {}",
        coll.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(60), || async {
            !alarm_raised(&client).await
        })
        .await,
        "the NOSPACE alarm stayed raised: {}",
        coll.stderr()
    );
    let stored = stored(&client, &format!("{prefix}/telemetry/data/")).await as u64;
    let invalid = count(&client, &format!("{prefix}/telemetry/invalid/")).await as u64;
    let expired = metric(&admin, "samples_expired{reason=\"budget\"}")
        .await
        .unwrap_or(0.0) as u64;
    println!("stored={stored} expired={expired} invalid={invalid} summary={sum:?}");
    assert!(
        expired > 0,
        "nothing expired: the burst did not pass the budget"
    );
    assert_eq!(
        stored + expired + invalid,
        sum["published"],
        "every published sample is stored, expired by budget or invalid"
    );
    assert_eq!(
        sum["published"] + sum["invalid"] + sum["missing_readings"],
        150_000
    );
    let dead = count(&client, &format!("{prefix}/queue/dead/")).await;
    assert_eq!(dead, 0, "nothing is dead-lettered because of space");
    // The pipeline goes on: the collector is ready and the store returns under its budget (the
    // last commits may leave it just over, until the maintainer's next expiry).
    assert!(becomes_ready(&admin, 30).await, "{}", coll.stderr());
    let under = wait_until(Duration::from_secs(30), || async {
        let in_use = metric(&admin, "etcd_db_size_in_use_bytes").await;
        let budget = metric(&admin, "storage_budget_bytes").await;
        matches!((in_use, budget), (Some(u), Some(b)) if u <= b)
    })
    .await;
    assert!(
        under,
        "in use {:?} stays over the budget {:?}",
        metric(&admin, "etcd_db_size_in_use_bytes").await,
        metric(&admin, "storage_budget_bytes").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_raised_from_outside_heals_without_an_operator_and_loses_nothing() {
    let etcd = small_etcd().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("storage-nospace");
    // Queue the real CSV with no collector running, then let another writer fill etcd.
    let out = Command::new(pipeline_tests::services::binary("streamer"))
        .arg("--csv")
        .arg(sample_csv())
        .env("ETCD_ENDPOINTS", etcd.endpoints().join(","))
        .env("ETCD_PREFIX", &prefix)
        .env("ADMIN_LISTEN", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fill_from_outside(&client).await;

    // A collector started during the alarm gets no lease (a lease is a write), so it cannot be
    // elected: it recovers etcd without an election.
    let (coll, admin) = collector(&etcd, &prefix, "late");
    coll.wait_for_log("recovering without an election", Duration::from_secs(30))
        .await;
    assert!(
        wait_until(Duration::from_secs(60), || async {
            !alarm_raised(&client).await
        })
        .await,
        "the alarm stayed raised: {}",
        coll.stderr()
    );
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await == 2_470
        })
        .await,
        "stored {} of 2,470: {}",
        stored(&client, &data).await,
        coll.stderr()
    );
    assert_eq!(count(&client, &format!("{prefix}/queue/dead/")).await, 0);
    assert!(becomes_ready(&admin, 30).await, "{}", coll.stderr());
}

/// Records in every queued message.
pub(crate) async fn queued_records(client: &Client, prefix: &str) -> u64 {
    use prost::Message as _;
    let resp = client
        .kv_client()
        .get(
            format!("{prefix}/queue/msg/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            telemetry::proto::QueueMessage::decode(kv.value())
                .unwrap()
                .records
                .len() as u64
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_resume_older_than_the_compacted_history_gets_410() {
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("storage-ws-resume");
    let (_gateway, port) = crate::readme::ready_gateway(&etcd.endpoints(), &prefix).await;
    let mut c = client.clone();
    for i in 0..5 {
        c.put(format!("{prefix}/x/{i}"), "v", None).await.unwrap();
    }
    let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
    c.compact(rev, None).await.unwrap();
    let url =
        |since: i64| format!("ws://127.0.0.1:{port}/api/v1/ws/telemetry?since_revision={since}");
    match tokio_tungstenite::connect_async(url(rev - 2)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 410);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["code"], "REVISION_COMPACTED", "{body}");
        }
        other => panic!("expected 410, got {other:?}"),
    }
    // From the compacted revision on, a resume is exact and accepted.
    let (_ws, resp) = tokio_tungstenite::connect_async(url(rev)).await.unwrap();
    assert_eq!(resp.status(), 101);
}
