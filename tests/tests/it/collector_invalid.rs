//! What the collector refuses: invalid records kept with their reasons, and messages that go
//! to the dead-letter queue (undecodable, failing too often, in a partition the queue lacks).

use std::time::Duration;

use etcd_client::GetOptions;
use pipeline_tests::checks::stored;
use pipeline_tests::services::{count, init_tracing, start_collector, unique_prefix, wait_until};
use pipeline_tests::EtcdCluster;
use prost::Message as _;
use telemetry::entries::{DeadLetter, InvalidEntry};
use telemetry::keys::Keys;
use telemetry::proto::{QueueMessage, TelemetryRecord};
use telemetry::queue::envelope;

use crate::collector_protocol::{publish, reading, T0};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_records_are_kept_with_their_reasons_and_bad_messages_are_dead_lettered() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("invalid");
    let keys = Keys::new(&prefix);

    // A v1beta1 message: two good records, three bad ones.
    let legacy = |host: &str, ts: &str, value: &str| TelemetryRecord {
        hostname: host.into(),
        gpu_id: "1".into(),
        metric: "DCGM_FI_DEV_POWER_USAGE".into(),
        timestamp_text: ts.into(),
        value_text: value.into(),
        ..Default::default()
    };
    let records = vec![
        legacy("h1", "2025-07-18T20:42:34Z", "101.5"),
        legacy("h1", "2025-07-18T20:42:35Z", "n/a"),
        legacy("bad/host", "2025-07-18T20:42:34Z", "1"),
        legacy("h1", "not a time", "1"),
        legacy("h1", "2025-07-18T20:42:36Z", "99"),
    ];
    publish(&client, &keys, &envelope(records, "v1beta1")).await;
    // A message of an unknown schema: every record invalid.
    publish(
        &client,
        &keys,
        &envelope(vec![reading("h2", "0", T0, 1.0)], "v9"),
    )
    .await;
    // Bytes that are no message at all.
    client
        .clone()
        .put(
            keys.queue_message(0, "01JUNKJUNKJUNKJUNKJUNKJUNK"),
            vec![0xff, 0xff, 0x01],
            None,
        )
        .await
        .unwrap();

    let (collector, stats) = start_collector(etcd.endpoints(), &prefix, |c| {
        c.process.queue.partitions = Some(1)
    });
    assert!(
        wait_until(Duration::from_secs(30), || async {
            count(&client, &keys.queue_root()).await == 0
        })
        .await
    );

    let invalid: Vec<InvalidEntry> = client
        .clone()
        .get(keys.invalid_root(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| serde_json::from_slice(kv.value()).unwrap())
        .collect();
    let mut reasons: Vec<&str> = invalid.iter().map(|e| e.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(invalid.len(), 4, "{reasons:?}");
    assert_eq!(stored(&client, &keys.data_root()).await, 2);
    assert!(reasons.iter().any(|r| r.contains("not a number")));
    assert!(reasons.iter().any(|r| r.contains("hostname")));
    assert!(reasons.iter().any(|r| r.contains("bad timestamp")));
    assert!(reasons.iter().any(|r| r.contains("unknown schema version")));
    assert_eq!(collector::Counters::get(&stats.invalid), 4);

    // The undecodable message is a dead letter, with its reason; requeue puts it back.
    let dead: Vec<DeadLetter> = collector::dlq::list(&client, &keys).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("undecodable"), "{}", dead[0].reason);
    collector.shutdown().await.unwrap();
    let requeued = collector::dlq::requeue(&client, &keys, 1, &[])
        .await
        .unwrap();
    assert_eq!(requeued, vec!["01JUNKJUNKJUNKJUNKJUNKJUNK".to_string()]);
    assert_eq!(count(&client, &keys.queue_root()).await, 1);
    assert_eq!(count(&client, &keys.dead_letters_root()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_a_partition_the_queue_does_not_have_is_dead_lettered_with_its_reason() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("stray");
    let keys = Keys::new(&prefix);
    // Written by hand, as a producer with a wrong partition count would: partition 20 of 16.
    let msg = telemetry::queue::envelope(vec![], telemetry::queue::SCHEMA_VERSION);
    client
        .clone()
        .put(keys.queue_message(20, &msg.id), msg.encode_to_vec(), None)
        .await
        .unwrap();
    let (collector, stats) = start_collector(etcd.endpoints(), &prefix, |_| {});
    assert!(
        wait_until(Duration::from_secs(30), || async {
            count(&client, &keys.queue_root()).await == 0
        })
        .await,
        "the stray message leaves the queue"
    );
    let dead = collector::dlq::list(&client, &keys).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("16 partitions"),
        "{}",
        dead[0].reason
    );
    assert_eq!(collector::Counters::get(&stats.dead_lettered), 1);
    collector.shutdown().await.unwrap();
    // Requeued, it lands in a partition the queue has.
    collector::dlq::requeue(&client, &keys, 16, &[])
        .await
        .unwrap();
    let queued = client
        .clone()
        .get(keys.queue_root(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(queued.kvs().len(), 1);
    assert!(queued.kvs()[0]
        .key_str()
        .unwrap()
        .starts_with(&keys.queue_partition(4)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_goes_to_the_dead_letter_queue_after_max_retries() {
    init_tracing();
    // etcd refuses Txns with more than 16 operations; the collector is told 128 fit.
    let etcd = EtcdCluster::start(1, &["--max-txn-ops", "16"]).await;
    let client = etcd.client().await;
    let prefix = unique_prefix("retries");
    let keys = Keys::new(&prefix);
    let records: Vec<_> = (0..20).map(|i| reading("h1", "0", T0 + i, 1.0)).collect();
    publish(&client, &keys, &envelope(records, "v1")).await;
    let (collector, stats) = start_collector(etcd.endpoints(), &prefix, |c| {
        c.process.queue.partitions = Some(1);
        c.max_retries = 3;
    });
    assert!(
        wait_until(Duration::from_secs(30), || async {
            count(&client, &keys.dead_letters_root()).await == 1
        })
        .await
    );
    let dead = collector::dlq::list(&client, &keys).await.unwrap();
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].reason.contains("too many operations"),
        "{}",
        dead[0].reason
    );
    assert_eq!(count(&client, &keys.queue_root()).await, 0);
    assert_eq!(stored(&client, &keys.data_root()).await, 0);
    assert!(collector::Counters::get(&stats.database_errors) >= 3);
    let decoded =
        QueueMessage::decode(hex::decode(&dead[0].payload_hex).unwrap().as_slice()).unwrap();
    assert_eq!(
        decoded.records.len(),
        20,
        "the dead letter keeps the original message"
    );
    collector.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_records_that_share_an_id_are_all_kept_and_the_good_ones_stored() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("shared-id");
    let keys = Keys::new(&prefix);
    // A producer may send its own ULIDs; two refused records carrying the same one must not
    // make the commit put one invalid key twice (etcd refuses such a Txn).
    let shared_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV".to_string();
    let bad = |host: &str| TelemetryRecord {
        id: shared_id.clone(),
        hostname: host.into(),
        gpu_id: "0".into(),
        metric: "DCGM_FI_DEV_GPU_TEMP".into(),
        timestamp_unix_nano: T0,
        value: 1.0,
        ..Default::default()
    };
    let records = vec![
        reading("h1", "0", T0, 40.0),
        bad("bad/host"),
        bad("worse/host"),
        reading("h1", "0", T0 + 1, 41.0),
    ];
    publish(&client, &keys, &envelope(records, "v1")).await;
    let (collector, stats) = start_collector(etcd.endpoints(), &prefix, |c| {
        c.process.queue.partitions = Some(1)
    });
    assert!(
        wait_until(Duration::from_secs(30), || async {
            count(&client, &keys.queue_root()).await == 0
        })
        .await
    );
    assert_eq!(
        stored(&client, &keys.data_root()).await,
        2,
        "the good records"
    );
    assert_eq!(
        count(&client, &keys.invalid_root()).await,
        2,
        "both refusals"
    );
    assert_eq!(count(&client, &keys.dead_letters_root()).await, 0);
    assert_eq!(collector::Counters::get(&stats.invalid), 2);
    collector.shutdown().await.unwrap();
}
