//! Bad input to the streamer is counted, never fatal: malformed rows, bad flags, unreadable
//! files and an exporter that does not answer.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use pipeline_tests::services::{binary, count, init_tracing, unique_prefix, wait_until};
use pipeline_tests::EtcdCluster;
use streamer::{Config, Counters};

use crate::streamer_inputs::{row, start_streamer, HEADER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_are_counted_and_the_good_rows_around_them_go_through() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("malformed");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("messy.csv");
    let good = |s: u32| {
        row(
            &format!("2025-07-18T20:42:{s:02}Z"),
            "DCGM_FI_DEV_GPU_UTIL",
            "0",
            "GPU-1",
            "h1",
            "7",
        )
    };
    let mut f = std::fs::File::create(&path).unwrap();
    // A BOM, CRLF endings, rows out of order, bad rows, and a last row cut inside a quote.
    write!(f, "\u{feff}{HEADER}\r\n{}\r\n", good(30)).unwrap();
    write!(f, "{}\r\n", good(10)).unwrap();
    write!(
        f,
        "{}\r\n",
        row("yesterday", "DCGM_FI_DEV_GPU_UTIL", "0", "GPU-1", "h1", "1")
    )
    .unwrap();
    write!(
        f,
        "{}\r\n",
        row(
            "2025-07-18T20:42:11Z",
            "DCGM_FI_DEV_GPU_UTIL",
            "0",
            "GPU-1",
            "h1",
            "lots"
        )
    )
    .unwrap();
    write!(
        f,
        "{}\r\n",
        row(
            "2025-07-18T20:42:12Z",
            "DCGM_FI_DEV_FB_FREE",
            "0",
            "GPU-1",
            "h1",
            "9223372036854775794"
        )
    )
    .unwrap();
    write!(f, "{}\r\n", good(20)).unwrap();
    write!(
        f,
        "\"2025-07-18T20:42:50Z\",\"DCGM_FI_DEV_GPU_UTIL\",\"0\",\"nvid"
    )
    .unwrap();
    drop(f);

    let out = Command::new(binary("streamer"))
        .args(["--csv"])
        .arg(&path)
        .env("ETCD_ENDPOINTS", etcd.endpoints().join(","))
        .env("ETCD_PREFIX", &prefix)
        .env("ADMIN_LISTEN", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("read=7 published=3 invalid=3"), "{stdout}");
    assert!(stdout.contains("missing_readings=1"), "{stdout}");
    assert!(
        stderr.contains("line 4") && stderr.contains("line 5"),
        "bad rows are logged with their line: {stderr}"
    );
    let client = etcd.client().await;
    assert_eq!(
        count(&client, &format!("{prefix}/queue/msg/")).await,
        1,
        "the three good rows went out in one message"
    );
}

#[tokio::test]
async fn bad_flags_and_unreadable_files_exit_non_zero_with_a_clear_message() {
    let run = |args: &[&str]| {
        Command::new(binary("streamer"))
            .args(args)
            .env("ADMIN_LISTEN", "")
            .output()
            .unwrap()
    };
    let out = run(&[
        "--csv",
        "/nonexistent/file.csv",
        "--etcd-endpoints",
        "127.0.0.1:1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file.csv"));
    let out = run(&["--csv", "x.csv", "--throttle-rate", "1.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("THROTTLE_RATE"));
    let out = run(&["--csv", "x.csv", "--interval", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--interval"));
    let out = Command::new(binary("collector"))
        .env("MQ_PROCESSING_TIMEOUT", "1s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MQ_PROCESSING_TIMEOUT"));
}

/// An exporter that does not answer is a failed scrape, counted as such: no record was read,
/// so nothing is invalid and nothing is left unpublished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_exporter_counts_scrape_errors_not_invalid_records() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("scrape-errors");
    let closed = pipeline_tests::process::free_port();
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.dcgm_url = Some(format!("http://127.0.0.1:{closed}/metrics"));
    cfg.interval = Duration::from_millis(100);
    let s = start_streamer(cfg, false).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            Counters::get(&s.counters.scrape_errors) >= 3
        })
        .await
    );
    let counters = s.stop().await;
    assert_eq!(Counters::get(&counters.invalid), 0);
    assert_eq!(Counters::get(&counters.read), 0);
    assert_eq!(counters.unpublished(), 0);
    assert!(
        counters.summary().contains("scrape_errors="),
        "{}",
        counters.summary()
    );
}
