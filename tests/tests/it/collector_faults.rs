//! Faults against real processes and a real cluster: SIGKILL, SIGSTOP past the lease, and a
//! killed etcd leader. Every record must be stored exactly once.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pipeline_tests::checks::stored;
use pipeline_tests::checks::{checksum, csv_records, doubles, stored_records};
use pipeline_tests::process::{free_port, signal_pid};
use pipeline_tests::services::{
    binary, count, init_tracing, start_collector, unique_prefix, wait_until,
};
use pipeline_tests::EtcdCluster;
use tokio_util::sync::CancellationToken;

pub(crate) fn generate(dir: &Path, hosts: usize, steps: usize) -> std::path::PathBuf {
    let out = dir.join("fleet.csv");
    let (hosts, steps) = (hosts.to_string(), steps.to_string());
    pipeline_tests::services::generate(
        &out,
        &[
            "--hosts",
            &hosts,
            "--gpus-per-host",
            "10",
            "--steps",
            &steps,
        ],
    );
    out
}

struct Proc {
    child: Child,
    admin: u16,
}

fn spawn_collector(endpoints: &[String], prefix: &str, id: &str) -> Proc {
    let admin = free_port();
    let child = Command::new(binary("collector"))
        .env("ETCD_ENDPOINTS", endpoints.join(","))
        .env("ETCD_PREFIX", prefix)
        .env("COLLECTOR_ID", id)
        .env("MQ_PROCESSING_TIMEOUT", "3s")
        .env("MQ_RESCAN_INTERVAL", "1s")
        .env("ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc { child, admin }
}

/// Publishes `csv` once at `rate` records/s, in this process; returns the run and its counters.
pub(crate) fn publish_at(
    etcd: &EtcdCluster,
    prefix: &str,
    csv: &Path,
    rate: f64,
) -> (
    tokio::task::JoinHandle<Result<(), streamer::StreamerError>>,
    std::sync::Arc<streamer::Counters>,
) {
    let mut cfg = streamer::Config::for_tests(etcd.endpoints(), prefix);
    cfg.csv = vec![csv.to_path_buf()];
    cfg.rate = rate;
    let counters = std::sync::Arc::new(streamer::Counters::default());
    let run = tokio::spawn(streamer::run(
        cfg,
        streamer::Listeners::default(),
        counters.clone(),
        CancellationToken::new(),
    ));
    (run, counters)
}

fn signal(p: &Proc, sig: i32) {
    assert!(signal_pid(p.child.id(), sig), "kill({sig}) failed");
}

async fn metric(admin: u16, name: &str) -> f64 {
    let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await else {
        return -1.0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_collectors_store_everything_once_through_sigkill_and_sigstop() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("faults");
    let dir = tempfile::tempdir().unwrap();
    let csv = generate(dir.path(), 50, 10); // 50 hosts x 10 GPUs x 10 steps x 10 metrics = 50,000
    let expected = csv_records(&csv);
    assert_eq!(expected.len(), 50_000);

    let mut procs: Vec<Proc> = (0..4)
        .map(|i| spawn_collector(&etcd.endpoints(), &prefix, &format!("c{i}")))
        .collect();
    let members = format!("{prefix}/collectors/");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            count(&client, &members).await == 4
        })
        .await,
        "four collectors registered"
    );

    // Publish at a steady rate so the collectors are busy when the faults hit.
    let (streaming, counters) = publish_at(&etcd, &prefix, &csv, 10_000.0);

    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await >= 5_000
        })
        .await
    );
    signal(&procs[0], libc::SIGKILL);
    let _ = procs[0].child.wait();
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await >= 15_000
        })
        .await
    );
    let fenced_before = metric(procs[1].admin, "commits_fenced").await.max(0.0);
    signal(&procs[1], libc::SIGSTOP);
    // Past the 3 s lease: its partitions are claimed by the others while it sleeps.
    tokio::time::sleep(Duration::from_secs(6)).await;
    signal(&procs[1], libc::SIGCONT);

    streaming.await.unwrap().unwrap();
    assert_eq!(streamer::Counters::get(&counters.published), 50_000);
    let queue = format!("{prefix}/queue/msg/");
    assert!(
        wait_until(Duration::from_secs(120), || async {
            count(&client, &queue).await == 0
        })
        .await,
        "queue drained ({} messages left)",
        count(&client, &queue).await
    );

    let stored = stored_records(&client, &prefix).await;
    assert_eq!(stored.len(), 50_000, "every record stored");
    assert!(doubles(&stored).is_empty(), "no record stored twice");
    assert_eq!(
        checksum(&stored),
        checksum(&expected),
        "stored content matches the input"
    );
    let fenced = metric(procs[1].admin, "commits_fenced").await - fenced_before;
    eprintln!("the resumed collector had {fenced} late commit(s) refused");

    for p in procs.iter_mut().skip(1) {
        signal(p, libc::SIGTERM);
        let status = p.child.wait().unwrap();
        assert!(
            status.success(),
            "collector exits 0 on SIGTERM, got {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_etcd_leader_mid_run_loses_nothing() {
    init_tracing();
    let mut etcd = EtcdCluster::start(3, &[]).await;
    let endpoints = etcd.all_endpoints();
    let client = etcd.client().await;
    let prefix = unique_prefix("leader");
    let dir = tempfile::tempdir().unwrap();
    let csv = generate(dir.path(), 20, 10); // 20,000 records
    let expected = csv_records(&csv);

    let (collector, _stats) = start_collector(endpoints.clone(), &prefix, |_| {});
    let mut cfg = streamer::Config::for_tests(endpoints.clone(), &prefix);
    cfg.csv = vec![csv.clone()];
    cfg.rate = 5_000.0;
    let counters = std::sync::Arc::new(streamer::Counters::default());
    let streaming = tokio::spawn(streamer::run(
        cfg,
        streamer::Listeners::default(),
        counters.clone(),
        CancellationToken::new(),
    ));

    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await >= 5_000
        })
        .await
    );
    let leader = etcd.leader().await;
    etcd.kill(leader);
    eprintln!("killed leader m{leader}");

    streaming.await.unwrap().unwrap();
    let survivor = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .unwrap();
    let queue = format!("{prefix}/queue/msg/");
    assert!(
        wait_until(Duration::from_secs(120), || async {
            count(&survivor, &queue).await == 0
        })
        .await,
        "queue drained"
    );
    let stored = stored_records(&survivor, &prefix).await;
    assert_eq!(stored.len(), expected.len());
    assert!(doubles(&stored).is_empty());
    assert_eq!(checksum(&stored), checksum(&expected));
    etcd.restart(leader).await;
    collector.shutdown().await.unwrap();
}
