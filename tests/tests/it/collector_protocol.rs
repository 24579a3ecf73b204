//! The claim protocol on real etcd: fencing, dedupe, validation and dead letters.

use std::time::Duration;

use collector::claim::Claims;
use collector::commit::{Claimed, Committer, FoldedWindows, Outcome};
use collector::storage::Windows;
use etcd_client::GetOptions;
use pipeline_tests::checks::stored;
use pipeline_tests::checks::{checksum, csv_records, stored_records};
use pipeline_tests::services::{
    count, init_tracing, start_collector, stream_csv, unique_prefix, wait_until,
};
use pipeline_tests::{sample_csv, EtcdCluster};
use prost::Message as _;
use telemetry::config::QueueArgs;
use telemetry::keys::Keys;
use telemetry::proto::{QueueMessage, TelemetryRecord};
use telemetry::queue::{envelope, Publisher};
use telemetry::record::{assign_identity, idempotency_key};

pub(crate) fn reading(host: &str, gpu: &str, ts: i64, value: f64) -> TelemetryRecord {
    let mut r = TelemetryRecord {
        hostname: host.into(),
        gpu_id: gpu.into(),
        uuid: format!("GPU-{host}-{gpu}"),
        metric: "DCGM_FI_DEV_GPU_TEMP".into(),
        timestamp_unix_nano: ts,
        value,
        ..Default::default()
    };
    assign_identity(&mut r);
    r
}

pub(crate) const T0: i64 = 1_752_871_354_000_000_000;

pub(crate) async fn publish(client: &etcd_client::Client, keys: &Keys, msg: &QueueMessage) {
    let p = Publisher::new(
        client.clone(),
        keys.clone(),
        QueueArgs {
            partitions: Some(1),
            ..Default::default()
        },
    );
    let enc = p.encode(msg);
    p.put_group(&[enc]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_whose_lease_expired_cannot_commit() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("fence");
    let keys = Keys::new(&prefix);
    let records: Vec<_> = (0..10)
        .map(|i| reading("h1", "0", T0 + i, i as f64))
        .collect();
    publish(&client, &keys, &envelope(records.clone(), "v1")).await;
    let committer = Committer::new(
        client.clone(),
        keys.clone(),
        FoldedWindows::new(Windows::new(Duration::from_secs(3600))),
        128,
    );

    // A claims partition 0 and reads the message...
    let lease_a = client.clone().lease_grant(2, None).await.unwrap().id();
    let a = Claims::new(client.clone(), keys.clone(), "a".into(), lease_a);
    let fence_a = a
        .try_claim(0)
        .await
        .unwrap()
        .expect("A claims the free partition");
    let kv = client
        .clone()
        .get(
            keys.queue_partition(0),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap()
        .kvs()[0]
        .clone();
    let msg = Claimed {
        key: kv.key_str().unwrap().into(),
        mod_revision: kv.mod_revision(),
        message_id: String::new(),
        schema_version: "v1".into(),
        progress: Default::default(),
    };

    // ...then stalls until its lease expires (etcd deletes the claim) and B claims the partition.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            count(&client, &keys.owner(0)).await == 0
        })
        .await,
        "the claim expires with A's lease"
    );
    let lease_b = client.clone().lease_grant(30, None).await.unwrap().id();
    let b = Claims::new(client.clone(), keys.clone(), "b".into(), lease_b);
    let fence_b = b
        .try_claim(0)
        .await
        .unwrap()
        .expect("B claims the expired partition");
    assert_ne!(fence_a, fence_b);

    // A wakes up and commits late: refused, nothing written, the message still queued.
    let late = committer
        .commit(fence_a, &msg, &records, &[])
        .await
        .unwrap();
    assert_eq!(late, Outcome::Fenced);
    assert_eq!(stored(&client, &keys.data_root()).await, 0);
    assert_eq!(count(&client, &keys.queue_root()).await, 1);

    // B commits the same message: stored once.
    let done = committer
        .commit(fence_b, &msg, &records, &[])
        .await
        .unwrap();
    assert_eq!(
        done,
        Outcome::Committed {
            stored: 10,
            duplicates: 0,
            invalid: 0
        }
    );
    assert_eq!(stored(&client, &keys.data_root()).await, 10);
    assert_eq!(count(&client, &keys.queue_root()).await, 0);

    // A retries again: still refused; B retries: the message is already done.
    assert_eq!(
        committer
            .commit(fence_a, &msg, &records, &[])
            .await
            .unwrap(),
        Outcome::Fenced
    );
    assert_eq!(
        committer
            .commit(fence_b, &msg, &records, &[])
            .await
            .unwrap(),
        Outcome::AlreadyDone
    );
    assert_eq!(stored(&client, &keys.data_root()).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_csv_sent_twice_is_stored_once() {
    same_csv_twice("twice", |_| {}).await;
}

/// Streams the real CSV twice through one collector; checks it is stored once and that every
/// second row counts as a duplicate, and that no data key has a lease (retention deletes).
async fn same_csv_twice(name: &str, tweak: impl FnOnce(&mut collector::Config)) {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix(name);
    let keys = Keys::new(&prefix);
    let (collector, stats) = start_collector(etcd.endpoints(), &prefix, tweak);
    let data = keys.data_root();

    stream_csv(etcd.endpoints(), &prefix, &[&sample_csv()]).await;
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await == 2470
        })
        .await
    );
    stream_csv(etcd.endpoints(), &prefix, &[&sample_csv()]).await;
    assert!(
        wait_until(Duration::from_secs(60), || async {
            count(&client, &keys.queue_root()).await == 0
        })
        .await
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            collector::Counters::get(&stats.duplicates) == 2470
        })
        .await
    );

    assert_eq!(stored(&client, &data).await, 2470);
    assert_eq!(collector::Counters::get(&stats.stored), 2470);
    assert_eq!(
        collector::Counters::get(&stats.duplicates),
        2470,
        "messages_duplicated equals the rows sent again"
    );
    let stored = stored_records(&client, &prefix).await;
    assert_eq!(
        checksum(&stored),
        checksum(&csv_records(&sample_csv())),
        "stored content matches the file"
    );
    let kvs = client
        .clone()
        .get(data.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    for kv in kvs.kvs() {
        let r = TelemetryRecord::decode(kv.value()).unwrap();
        let key = kv.key_str().unwrap();
        assert!(
            key.ends_with(&format!("_{}", idempotency_key(&r))),
            "{key} ends with its content's SHA-256"
        );
        assert_eq!(kv.lease(), 0, "{key} is under no lease");
    }
    collector.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_collector_takes_new_messages_from_its_watch_without_waiting_for_a_rescan() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("delivered");
    let keys = Keys::new(&prefix);
    let (collector, stats) = start_collector(etcd.endpoints(), &prefix, |c| {
        c.process.queue.partitions = Some(1);
        c.rescan_interval = Duration::from_secs(600);
    });
    // Claimed, watching, and done with its first read of the empty partition.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            count(&client, &keys.owner(0)).await == 1
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    for batch in 0..5 {
        let records: Vec<_> = (0..20)
            .map(|i| reading("h1", "0", T0 + batch * 100 + i, i as f64))
            .collect();
        publish(&client, &keys, &envelope(records, "v1")).await;
        let want = (batch as u64 + 1) * 20;
        assert!(
            wait_until(Duration::from_secs(5), || async {
                collector::Counters::get(&stats.stored) == want
            })
            .await,
            "message {batch} stored well before the 600 s rescan"
        );
    }
    assert_eq!(stored(&client, &keys.data_root()).await, 100);
    assert_eq!(count(&client, &keys.queue_root()).await, 0);
    collector.shutdown().await.unwrap();
}
