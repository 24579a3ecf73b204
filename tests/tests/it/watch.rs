//! The shared watch helper against real etcd: a watch that starts behind a compaction is
//! cancelled by etcd, the follower is told so and re-reads, and following goes on from the
//! read's revision + 1 without missing or repeating an event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, GetOptions, WatchOptions, WatchResponse};
use pipeline_tests::services::{unique_prefix, wait_until};
use pipeline_tests::EtcdCluster;
use telemetry::watch::{self, Flow};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen {
    compactions: usize,
    values: Vec<String>,
}

struct Recorder {
    prefix: String,
    seen: Arc<Mutex<Seen>>,
}

impl watch::Follower for Recorder {
    async fn resume(
        &mut self,
        client: &Client,
        resume: Option<i64>,
        compacted: bool,
    ) -> Result<Option<i64>, etcd_client::Error> {
        if resume.is_none() {
            // Deliberately behind the compaction below.
            return Ok(Some(1));
        }
        if !compacted {
            return Ok(resume);
        }
        self.seen.lock().unwrap().compactions += 1;
        let read = client
            .kv_client()
            .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut seen = self.seen.lock().unwrap();
        seen.values = read
            .kvs()
            .iter()
            .map(|kv| kv.value_str().unwrap().to_string())
            .collect();
        Ok(Some(read.header().unwrap().revision() + 1))
    }

    fn handle(&mut self, resp: &WatchResponse) -> Flow {
        let mut seen = self.seen.lock().unwrap();
        for ev in resp.events() {
            if let Some(kv) = ev.kv() {
                seen.values.push(kv.value_str().unwrap().to_string());
            }
        }
        Flow::Continue
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_watch_re_reads_and_resumes_after_the_read() {
    let etcd = EtcdCluster::single().await;
    let mut client = etcd.client().await;
    let prefix = unique_prefix("watch");
    for i in 0..5 {
        client
            .put(format!("{prefix}/{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    let rev = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(rev, None).await.unwrap();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = CancellationToken::new();
    let following = tokio::spawn(watch::follow(
        client.clone(),
        prefix.clone(),
        WatchOptions::new().with_prefix(),
        Recorder {
            prefix: prefix.clone(),
            seen: seen.clone(),
        },
        stop.clone(),
    ));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            seen.lock().unwrap().compactions == 1
        })
        .await,
        "etcd cancels a watch behind its compaction, and the follower is told"
    );
    for i in 5..8 {
        client
            .put(format!("{prefix}/{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    let expected: Vec<String> = (0..8).map(|i| format!("v{i}")).collect();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            seen.lock().unwrap().values == expected
        })
        .await,
        "everything once, in order: {:?}",
        seen.lock().unwrap().values
    );
    stop.cancel();
    following.await.unwrap();
}
