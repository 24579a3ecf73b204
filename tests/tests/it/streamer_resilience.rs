//! The streamer under pressure: backpressure from a deep queue, an etcd restart, and shutdown
//! with a full buffer or with etcd gone.

use std::time::Duration;

use pipeline_tests::checks::stored;
use pipeline_tests::checks::{checksum, csv_records, doubles, stored_records};
use pipeline_tests::services::{count, init_tracing, start_collector, unique_prefix, wait_until};
use pipeline_tests::EtcdCluster;
use streamer::{Config, Counters};

use crate::streamer_inputs::start_streamer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_engages_when_the_queue_is_deep_and_releases_when_it_drains() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("backpressure");
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.csv = vec![pipeline_tests::sample_csv()];
    // The token bucket's burst is one second of the rate: 1,000 records (8 messages) go out at
    // once, well past the depth limit, and the other 1,470 must wait for the throttle.
    cfg.rate = 1_000.0;
    cfg.throttle_enabled = true;
    cfg.throttle_max_queue_depth = 2;
    cfg.throttle_rate = 0.0;
    cfg.throttle_check_interval = Duration::from_millis(50);
    let s = start_streamer(cfg, false).await;
    let queue = format!("{prefix}/queue/msg/");

    // No collector yet: the queue passes 2 messages and the streamer stops publishing. Pacing
    // at STREAM_RATE also counts as throttled, so "engaged" is: past the depth, throttled, and
    // nothing published over three depth checks (at 1,000 records/s unthrottled publishing
    // would add ~150 records in that time).
    assert!(
        wait_until(Duration::from_secs(20), || async {
            let before = Counters::get(&s.counters.published);
            tokio::time::sleep(Duration::from_millis(150)).await;
            count(&client, &queue).await > 2
                && Counters::get(&s.counters.throttled) > 0
                && Counters::get(&s.counters.published) == before
        })
        .await,
        "throttling engaged"
    );
    let depth_then = count(&client, &queue).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let depth_later = count(&client, &queue).await;
    assert_eq!(
        depth_then, depth_later,
        "nothing is published while throttled"
    );
    assert!(
        depth_later > 2 && depth_later < 20,
        "depth stays bounded: {depth_later}"
    );
    assert!(Counters::get(&s.counters.published) < 2470);

    // A collector drains the queue; the streamer resumes and finishes.
    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await == 2470
        })
        .await,
        "released and finished"
    );
    s.handle.await.unwrap().unwrap();
    assert_eq!(Counters::get(&s.counters.published), 2470);
    collector.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_waits_through_an_etcd_restart_and_loses_nothing() {
    init_tracing();
    let mut etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("restart");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("fleet.csv");
    pipeline_tests::services::generate(
        &csv,
        &["--hosts", "10", "--gpus-per-host", "10", "--steps", "10"],
    );

    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.csv = vec![csv.clone()];
    cfg.rate = 2_000.0;
    let s = start_streamer(cfg, false).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            Counters::get(&s.counters.published) >= 2_000
        })
        .await
    );
    etcd.kill(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.restart(0).await;
    s.handle.await.unwrap().unwrap();
    assert_eq!(Counters::get(&s.counters.published), 10_000);
    assert!(
        Counters::get(&s.counters.publish_errors) > 0,
        "the outage was seen and retried"
    );

    let client = etcd.client().await;
    let queue = format!("{prefix}/queue/msg/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            count(&client, &queue).await == 0
        })
        .await
    );
    let stored = stored_records(&client, &prefix).await;
    assert!(doubles(&stored).is_empty());
    assert_eq!(checksum(&stored), checksum(&csv_records(&csv)));
    collector.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_publishes_the_whole_buffer_without_pacing_it() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("drain");
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.csv = vec![pipeline_tests::sample_csv()];
    cfg.looping = true;
    // The buffer holds 40 s of records at this rate; the grace period is 10 s. Paced, the
    // buffer could not drain in time; flushed on shutdown, it does.
    cfg.rate = 50.0;
    cfg.buffer = 2_000;
    cfg.process.runtime.shutdown_grace = Duration::from_secs(10);
    let s = start_streamer(cfg, false).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            Counters::get(&s.counters.read) >= 2_000
        })
        .await,
        "the buffer never filled"
    );
    let counters = s.stop().await;
    let (read, published) = (
        Counters::get(&counters.read),
        Counters::get(&counters.published),
    );
    assert_eq!(
        published, read,
        "every buffered record is published on shutdown"
    );
    let client = etcd.client().await;
    let queued = count(&client, &format!("{prefix}/queue/msg/")).await;
    assert!(queued > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_etcd_gone_ends_when_the_grace_period_does() {
    init_tracing();
    let mut etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("grace");
    let mut cfg = Config::for_tests(etcd.endpoints(), &prefix);
    cfg.csv = vec![pipeline_tests::sample_csv()];
    cfg.looping = true;
    cfg.rate = 2_000.0;
    cfg.process.runtime.shutdown_grace = Duration::from_secs(1);
    cfg.buffer = 64;
    let s = start_streamer(cfg, false).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            Counters::get(&s.counters.published) >= 500
        })
        .await
    );
    etcd.kill(0);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            Counters::get(&s.counters.publish_errors) > 0
        })
        .await,
        "publishing never noticed that etcd is gone"
    );
    // Let the small buffer fill, so the CSV source is blocked handing over a record.
    let read = Counters::get(&s.counters.read);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            let now = Counters::get(&s.counters.read);
            tokio::time::sleep(Duration::from_millis(300)).await;
            now > read && Counters::get(&s.counters.read) == now
        })
        .await,
        "the source never stalled on the full buffer"
    );
    // Buffered records cannot be published; shutdown must still end after its grace period
    // (1 s) rather than wait for etcd forever. 60 s only bounds a hang, it times nothing.
    s.stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(60), s.handle).await;
    assert!(
        ended.is_ok(),
        "the streamer did not stop after its grace period"
    );
    ended.unwrap().unwrap().unwrap();
    assert!(
        Counters::get(&s.counters.published) < Counters::get(&s.counters.read),
        "the test should leave records unpublished"
    );
}
