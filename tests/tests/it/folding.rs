//! Folding closed windows into chunks (docs/storage.md), with real etcd and the real binaries:
//! nothing lost or stored twice while ingest writes into the windows being folded, late samples
//! merged, a replay after folding stores nothing, a maintainer killed mid-fold loses nothing,
//! and every query page is the same raw or folded.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use pipeline_tests::checks::{checksum, csv_records, stored, stored_records};
use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{count, start_gateway, unique_prefix, wait_until};
use pipeline_tests::{sample_csv, EtcdCluster};
use serde_json::Value;

use crate::readme::{becomes_ready, cmd};
use crate::storage::metric;

/// A collector process that folds (or not), looking at storage five times a second.
fn collector(etcd: &EtcdCluster, prefix: &str, id: &str, fold: bool) -> (Proc, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let p = Proc::spawn(
        id,
        cmd("collector", &etcd.endpoints(), prefix)
            .env("COLLECTOR_ID", id)
            .env("ADMIN_LISTEN", &admin)
            .env("MQ_PROCESSING_TIMEOUT", "3s")
            .env("STORAGE_CHECK_INTERVAL", "200ms")
            .env("STORAGE_FOLD", fold.to_string()),
    );
    (p, admin)
}

/// Streams `csv` once through a streamer process (at `rate` records/s, 0 for unlimited).
async fn stream(etcd: &EtcdCluster, prefix: &str, csv: &Path, rate: u32) {
    let mut s = Proc::spawn(
        "streamer",
        cmd("streamer", &etcd.endpoints(), prefix)
            .arg("--csv")
            .arg(csv)
            .env("STREAM_RATE", rate.to_string())
            .env("ADMIN_LISTEN", ""),
    );
    let exit = s.wait_exit(Duration::from_secs(300)).await;
    assert!(exit.is_some_and(|e| e.success()), "{}", s.stderr());
}

async fn raw(client: &etcd_client::Client, prefix: &str) -> i64 {
    count(client, &format!("{prefix}/telemetry/data/")).await
}

async fn chunks(client: &etcd_client::Client, prefix: &str) -> i64 {
    count(client, &format!("{prefix}/telemetry/chunks/")).await
}

/// Waits until `want` samples are stored and none is left raw.
async fn all_folded(client: &etcd_client::Client, prefix: &str, want: i64, log: &Proc) {
    let data = format!("{prefix}/telemetry/data/");
    let done = wait_until(Duration::from_secs(90), || async {
        raw(client, prefix).await == 0 && stored(client, &data).await == want
    })
    .await;
    assert!(
        done,
        "stored {} (want {want}), {} still raw:\n{}",
        stored(client, &data).await,
        raw(client, prefix).await,
        log.stderr()
    );
}

/// The real CSV's rows again, one second later and with other values: late samples for
/// windows that are already folded.
fn late_rows(dir: &Path, rows: usize) -> std::path::PathBuf {
    let text = std::fs::read_to_string(sample_csv()).unwrap();
    let mut lines = text.lines();
    let mut out = vec![lines.next().unwrap().to_string()];
    for line in lines
        .filter(|l| l.starts_with("\"2025-07-18T20:42:37Z\""))
        .take(rows)
    {
        let late = line.replacen("20:42:37Z", "20:42:38Z", 1);
        // The value is the 11th column, after ten quoted fields.
        let mut fields: Vec<String> = late.splitn(12, "\",\"").map(String::from).collect();
        fields[10] = "7.25".into();
        out.push(fields.join("\",\""));
    }
    let path = dir.join("late.csv");
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fold_while_ingest_writes_its_windows_then_late_samples_then_a_replay_keep_every_sample_once(
) {
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("fold-ingest");
    let dir = tempfile::tempdir().unwrap();
    let (coll, admin) = collector(&etcd, &prefix, "folder", true);
    assert!(becomes_ready(&admin, 30).await, "{}", coll.stderr());

    // 100 records/s: every GPU goes quiet between its rows, so its window is folded and
    // written again many times while the file streams.
    stream(&etcd, &prefix, &sample_csv(), 100).await;
    all_folded(&client, &prefix, 2470, &coll).await;
    let written = metric(&admin, "chunks_written").await.unwrap_or(0.0);
    println!("chunks written while streaming: {written}");
    assert!(
        written > 247.0,
        "each GPU's window was folded once ({written} chunks): folds did not meet ingest"
    );
    assert_eq!(
        chunks(&client, &prefix).await,
        247,
        "one chunk per GPU and window"
    );

    // Late samples land raw in folded windows, and are merged into the chunks.
    let late = late_rows(dir.path(), 300);
    stream(&etcd, &prefix, &late, 0).await;
    all_folded(&client, &prefix, 2470 + 300, &coll).await;
    let mut want = csv_records(&sample_csv());
    want.extend(csv_records(&late));
    let got = stored_records(&client, &prefix).await;
    assert_eq!(checksum(&got), checksum(&want), "stored content differs");
    assert_eq!(chunks(&client, &prefix).await, 247);

    // A replay of everything after folding stores nothing new.
    let processed = metric(&admin, "messages_processed").await.unwrap_or(-1.0);
    let duplicated = metric(&admin, "messages_duplicated").await.unwrap_or(0.0);
    stream(&etcd, &prefix, &sample_csv(), 0).await;
    stream(&etcd, &prefix, &late, 0).await;
    let queue = format!("{prefix}/queue/msg/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            count(&client, &queue).await == 0
                && metric(&admin, "messages_duplicated").await.unwrap_or(0.0)
                    >= duplicated + 2770.0
        })
        .await,
        "the replay was not deduplicated: processed {processed} -> {:?}, duplicated {duplicated} -> {:?}, stored {}, queued {}",
        metric(&admin, "messages_processed").await,
        metric(&admin, "messages_duplicated").await,
        stored(&client, &format!("{prefix}/telemetry/data/")).await,
        count(&client, &queue).await,
    );
    assert_eq!(
        metric(&admin, "messages_processed").await.unwrap_or(-1.0),
        processed,
        "the replay stored samples"
    );
    assert_eq!(raw(&client, &prefix).await, 0, "the replay left raw keys");
    assert_eq!(
        stored(&client, &format!("{prefix}/telemetry/data/")).await,
        2770
    );
}

/// Writes a fleet CSV that spans two fold windows, in the past.
fn two_windows(dir: &Path, hosts: usize) -> std::path::PathBuf {
    let out = dir.join("fleet.csv");
    let hosts = hosts.to_string();
    pipeline_tests::services::generate(
        &out,
        &[
            "--hosts",
            &hosts,
            "--gpus-per-host",
            "8",
            "--steps",
            "60",
            "--interval",
            "10s",
            "--start",
            "2025-01-01T00:55:00Z",
        ],
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintainer_killed_mid_fold_loses_and_doubles_nothing() {
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("fold-kill");
    let dir = tempfile::tempdir().unwrap();
    // 25 hosts x 8 GPUs x 60 steps x 10 metrics = 120,000 samples in 400 GPU-windows.
    let csv = two_windows(dir.path(), 25);
    let want = csv_records(&csv);
    let n = want.len() as i64;
    let data = format!("{prefix}/telemetry/data/");

    let (mut ingest, admin) = collector(&etcd, &prefix, "ingest", false);
    assert!(becomes_ready(&admin, 30).await, "{}", ingest.stderr());
    stream(&etcd, &prefix, &csv, 0).await;
    assert!(
        wait_until(Duration::from_secs(120), || async {
            stored(&client, &data).await == n
        })
        .await,
        "stored {} of {n}",
        stored(&client, &data).await
    );
    assert_eq!(
        chunks(&client, &prefix).await,
        0,
        "STORAGE_FOLD=false folded"
    );
    ingest.signal(libc::SIGTERM);
    let _ = ingest.wait_exit(Duration::from_secs(20)).await;

    let (first, first_admin) = collector(&etcd, &prefix, "first", true);
    assert!(
        wait_until(Duration::from_secs(60), || async {
            metric(&first_admin, "chunks_written").await.unwrap_or(0.0) > 0.0
        })
        .await,
        "no fold began: {}",
        first.stderr()
    );
    first.signal(libc::SIGKILL);
    let (raw_left, folded) = (raw(&client, &prefix).await, chunks(&client, &prefix).await);
    println!("killed with {folded} chunks written and {raw_left} samples still raw");
    assert!(
        raw_left > 0 && folded > 0,
        "the kill did not land mid-fold ({folded} chunks, {raw_left} raw)"
    );
    assert_eq!(
        stored(&client, &data).await,
        n,
        "the killed fold lost or doubled"
    );

    let (second, _) = collector(&etcd, &prefix, "second", true);
    all_folded(&client, &prefix, n, &second).await;
    assert_eq!(chunks(&client, &prefix).await, 400);
    let got = stored_records(&client, &prefix).await;
    assert_eq!(checksum(&got), checksum(&want), "stored content differs");
}

/// Every page of a listing, following `next_cursor` to the end.
async fn pages(base: &str, query: &str) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}{query}&cursor={c}"),
            None => format!("{base}{query}"),
        };
        let page: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        out.push(page["data"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_answers_and_cursor_pages_are_the_same_raw_and_folded() {
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("fold-pages");
    let (mut raw_only, admin) = collector(&etcd, &prefix, "raw-only", false);
    assert!(becomes_ready(&admin, 30).await, "{}", raw_only.stderr());
    stream(&etcd, &prefix, &sample_csv(), 0).await;
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await == 2470
        })
        .await
    );
    let (_gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| c.query_cache_mb = 0).await;
    let queries = [
        // An index on every host, merged across hosts, in small pages.
        "/api/v1/gpus/0/telemetry?limit=7",
        "/api/v1/gpus/3/telemetry?limit=50&metric=DCGM_FI_DEV_GPU_TEMP",
        "/api/v1/gpus/1/telemetry?limit=9&start_time=2025-07-18T20:42:35Z&end_time=2025-07-18T20:42:37Z",
        "/api/v1/gpus/GPU-5fd4f087-86f3-7a43-b711-4771313afc50/telemetry?limit=3",
        "/api/v1/gpus/2/telemetry?limit=10000",
    ];
    let mut before = Vec::new();
    for q in queries {
        before.push(pages(&base, q).await);
    }
    // A cursor taken before the fold, followed after it at a compacted revision.
    let first: Value = reqwest::get(format!("{base}{}", queries[0]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cursor = first["next_cursor"].as_str().unwrap().to_string();

    raw_only.signal(libc::SIGTERM);
    let _ = raw_only.wait_exit(Duration::from_secs(20)).await;
    let (folder, _) = collector(&etcd, &prefix, "folder", true);
    all_folded(&client, &prefix, 2470, &folder).await;
    for (q, want) in queries.iter().zip(&before) {
        let got = pages(&base, q).await;
        assert_eq!(got.len(), want.len(), "{q}: page count");
        assert_eq!(&got, want, "{q}: pages differ once folded");
    }
    let total: usize = before[0].iter().map(Vec::len).sum();
    let index_0 = csv_records(&sample_csv())
        .iter()
        .filter(|r| r.gpu_id == "0")
        .count();
    assert_eq!(
        total, index_0,
        "every reading of GPU index 0, on every host"
    );

    let now = client
        .clone()
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.clone().compact(now, None).await.unwrap();
    let rest: Value = reqwest::get(format!("{base}{}&cursor={cursor}", queries[0]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        rest["data"].as_array().unwrap(),
        &before[0][1],
        "a cursor from before the fold continues at the same place"
    );
    let ids: HashSet<&str> = before[4]
        .iter()
        .flatten()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), before[4].iter().map(Vec::len).sum::<usize>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamer_reads_a_fleet_from_standard_input_once() {
    // How the folding benchmark streams twenty million samples without a file:
    // `streamer generate --out - | streamer --csv -`.
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("fold-stdin");
    let (coll, admin) = collector(&etcd, &prefix, "stdin", false);
    assert!(becomes_ready(&admin, 30).await, "{}", coll.stderr());
    let mut s = Proc::spawn_reading(
        "streamer",
        cmd("streamer", &etcd.endpoints(), &prefix)
            .args(["--csv", "-"])
            .env("ADMIN_LISTEN", ""),
        std::fs::File::open(sample_csv()).unwrap(),
    );
    let exit = s.wait_exit(Duration::from_secs(60)).await;
    assert!(
        exit.is_some_and(|e| e.success()),
        "a one-pass streamer exits once standard input ends: {}",
        s.stderr()
    );
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await == 2470
        })
        .await,
        "stored {} of 2470",
        stored(&client, &data).await
    );
}
