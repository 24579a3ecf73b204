//! Retention by deletion on real etcd: the maintainer deletes what is older than
//! `TELEMETRY_RETENTION` before the newest sample, forgets GPUs with nothing left, and every
//! collector refuses a replay of what was deleted. No stored key is under a lease.

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use pipeline_tests::checks::stored;
use pipeline_tests::services::{
    count, init_tracing, start_collector, stream_csv, unique_prefix, wait_until,
};
use pipeline_tests::{sample_csv, EtcdCluster};
use telemetry::keys::Keys;
use telemetry::queue::envelope;
use telemetry::storage::StorageStatus;

use crate::collector_protocol::{publish, reading, T0};

/// The CSV's rows at 20:42:34, the earliest of its four seconds.
const ROWS_IN_FIRST_SECOND: u64 = 741;

async fn status(client: &Client, keys: &Keys) -> StorageStatus {
    telemetry::storage::published(client, keys)
        .await
        .unwrap()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_what_is_older_than_the_newest_sample_and_refuses_its_replay() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let client = etcd.client().await;
    let prefix = unique_prefix("retention");
    let keys = Keys::new(&prefix);
    let data = keys.data_root();
    let retention = |c: &mut collector::Config| {
        c.retention = Duration::from_secs(2);
        c.message_state_ttl = Duration::from_secs(3);
        c.storage.fold = false;
        c.storage.check_interval = Duration::from_millis(200);
    };

    // Stored first by a collector that does not maintain storage, so that what the maintainer
    // expires is exactly known: the real CSV, and one GPU that stopped three minutes earlier.
    let (ingest, ingest_stats) = start_collector(etcd.endpoints(), &prefix, |c| {
        retention(c);
        c.storage.maintainer = false;
    });
    let retired = reading("retired-host", "0", T0 - 180_000_000_000, 41.0);
    publish(&client, &keys, &envelope(vec![retired], "v1")).await;
    stream_csv(etcd.endpoints(), &prefix, &[&sample_csv()]).await;
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await == 2471
        })
        .await,
        "everything stored before the maintainer starts"
    );
    assert_eq!(count(&client, &keys.gpu("retired-host", "0")).await, 1);
    assert_eq!(
        count(&client, &keys.identity_of_uuid("GPU-retired-host-0")).await,
        1
    );

    // The maintainer publishes a cutoff 2 s before the newest sample (20:42:37), then deletes
    // below it: the CSV's first second and the retired GPU.
    let (maintainer, maintainer_stats) = start_collector(etcd.endpoints(), &prefix, retention);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            status(&client, &keys).await.samples_expired_retention == ROWS_IN_FIRST_SECOND + 1
        })
        .await,
        "expired: {:?}",
        status(&client, &keys).await
    );
    let s = status(&client, &keys).await;
    assert_eq!(
        s.retention_cutoff_unix_nano,
        T0 + 1_000_000_000,
        "2 s before the newest sample"
    );
    assert_eq!(stored(&client, &data).await, 2470 - 741);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            count(&client, &keys.gpu("retired-host", "0")).await == 0
        })
        .await,
        "a GPU with nothing left is forgotten"
    );
    for gone in [
        keys.identity_of_gpu("retired-host", "0"),
        keys.identity_of_uuid("GPU-retired-host-0"),
    ] {
        assert_eq!(count(&client, &gone).await, 0, "{gone} forgotten");
    }
    let gpus = client
        .clone()
        .get(
            keys.gpus_root(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(gpus.kvs().len(), 247, "every CSV GPU keeps its entry");

    // The same file again: what retention deleted is refused with a reason, the rest is a
    // duplicate, and nothing is stored twice.
    let seen_invalid = collector::Counters::get(&ingest_stats.invalid)
        + collector::Counters::get(&maintainer_stats.invalid);
    stream_csv(etcd.endpoints(), &prefix, &[&sample_csv()]).await;
    assert!(
        wait_until(Duration::from_secs(60), || async {
            count(&client, &keys.queue_root()).await == 0
        })
        .await
    );
    let dups = |s: &collector::Counters| collector::Counters::get(&s.duplicates);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            dups(&ingest_stats) + dups(&maintainer_stats) == 2470 - ROWS_IN_FIRST_SECOND
        })
        .await
    );
    assert_eq!(
        collector::Counters::get(&ingest_stats.invalid)
            + collector::Counters::get(&maintainer_stats.invalid)
            - seen_invalid,
        ROWS_IN_FIRST_SECOND,
        "the replayed first second is refused as older than the retention"
    );
    assert_eq!(stored(&client, &data).await, 2470 - 741);

    // Refused records and message states are deleted by their ids' time.
    assert!(
        wait_until(Duration::from_secs(20), || async {
            count(&client, &keys.invalid_root()).await == 0
                && count(&client, &keys.message_state("")).await == 0
        })
        .await,
        "invalid entries after TELEMETRY_RETENTION, states after MESSAGE_STATE_TTL"
    );

    // Nothing the collectors store is under a lease: retention deletes it.
    let all = client
        .clone()
        .get(
            format!("{prefix}/telemetry/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert!(all.kvs().len() > 1729);
    for kv in all.kvs() {
        assert_eq!(kv.lease(), 0, "{} is under a lease", kv.key_str().unwrap());
    }
    maintainer.shutdown().await.unwrap();
    ingest.shutdown().await.unwrap();
}
