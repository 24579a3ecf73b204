//! What a partition worker works on next: the messages its partition's watch delivered, or a
//! read of the partition from etcd whenever the deliveries alone might miss something.
//!
//! The watch already carries each message's value, so in the steady state the worker reads
//! nothing. Re-reading the partition on every wake-up made etcd send every message twice (on
//! the watch and in the range response), and etcd's CPU is the pipeline's bottleneck.
//!
//! The partition is read instead of trusting deliveries: when the worker starts, whenever the
//! watch (re)starts or overflows (the watcher rings `reread`), while a read came back full, and
//! at least every `MQ_RESCAN_INTERVAL` (a message whose commit gave up is found again). A
//! message can reach the worker twice, once read and once delivered; deliveries of messages
//! already handed out are dropped, and a commit is safe to repeat anyway (its compare on the
//! message's revision makes the second one `AlreadyDone`).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use etcd_client::{GetOptions, KeyValue};
use telemetry::etcd::{Context, EtcdError};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Messages handed out lately, so that a delivery of one that was read is not handled twice.
const REMEMBERED: usize = 4096;

pub enum Next {
    Batch(Vec<KeyValue>),
    Stopped,
    ReadFailed(EtcdError),
}

pub struct Inbox {
    prefix: String,
    deliveries: mpsc::Receiver<KeyValue>,
    reread: Arc<Notify>,
    must_read: bool,
    last_read: Instant,
    handed_out: Recent,
}

impl Inbox {
    pub fn new(prefix: String, deliveries: mpsc::Receiver<KeyValue>, reread: Arc<Notify>) -> Self {
        Self {
            prefix,
            deliveries,
            reread,
            must_read: true,
            last_read: Instant::now(),
            handed_out: Recent::default(),
        }
    }

    /// The next batch of at most `MQ_BATCH_SIZE` messages, oldest first within a read.
    pub async fn next(&mut self, shared: &Shared, stop: &CancellationToken) -> Next {
        let limit = shared.cfg.batch_size as usize;
        loop {
            if stop.is_cancelled() {
                return Next::Stopped;
            }
            if self.last_read.elapsed() >= shared.cfg.rescan_interval {
                self.must_read = true;
            }
            if self.must_read {
                let kvs = match read(shared, &self.prefix, limit).await {
                    Ok(kvs) => kvs,
                    Err(e) => return Next::ReadFailed(e),
                };
                self.last_read = Instant::now();
                self.must_read = kvs.len() >= limit;
                if !kvs.is_empty() {
                    return Next::Batch(self.hand_out(kvs));
                }
            }
            let mut batch = Vec::new();
            while batch.len() < limit {
                match self.deliveries.try_recv() {
                    Ok(kv) if self.handed_out.contains(&kv) => {}
                    Ok(kv) => batch.push(kv),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                return Next::Batch(self.hand_out(batch));
            }
            let rescan = shared.cfg.rescan_interval;
            tokio::select! {
                _ = stop.cancelled() => return Next::Stopped,
                _ = self.reread.notified() => self.must_read = true,
                _ = tokio::time::sleep(rescan.saturating_sub(self.last_read.elapsed())) => {}
                // Closed only once the watcher has stopped, which it does with this worker.
                delivered = self.deliveries.recv(), if !self.deliveries.is_closed() => {
                    if let Some(kv) = delivered.filter(|kv| !self.handed_out.contains(kv)) {
                        return Next::Batch(self.hand_out(vec![kv]));
                    }
                }
            }
        }
    }

    fn hand_out(&mut self, kvs: Vec<KeyValue>) -> Vec<KeyValue> {
        for kv in &kvs {
            self.handed_out.insert(kv);
        }
        kvs
    }
}

async fn read(shared: &Shared, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, EtcdError> {
    let opts = GetOptions::new().with_prefix().with_limit(limit as i64);
    let mut resp = shared
        .client
        .kv_client()
        .get(prefix, Some(opts))
        .await
        .ctx("read partition")?;
    Ok(resp.take_kvs())
}

/// A bounded memory of message versions (key and mod revision), oldest forgotten first.
#[derive(Default)]
struct Recent {
    set: HashSet<(Vec<u8>, i64)>,
    order: VecDeque<(Vec<u8>, i64)>,
}

impl Recent {
    fn contains(&self, kv: &KeyValue) -> bool {
        self.has(kv.key(), kv.mod_revision())
    }

    fn insert(&mut self, kv: &KeyValue) {
        self.remember(kv.key(), kv.mod_revision());
    }

    fn has(&self, key: &[u8], revision: i64) -> bool {
        self.set.contains(&(key.to_vec(), revision))
    }

    fn remember(&mut self, key: &[u8], revision: i64) {
        let id = (key.to_vec(), revision);
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_version_is_remembered_until_enough_newer_ones_push_it_out() {
        let mut r = Recent::default();
        r.remember(b"m1", 5);
        assert!(r.has(b"m1", 5));
        assert!(!r.has(b"m1", 6), "a requeued message (new revision) is new");
        for i in 0..REMEMBERED {
            r.remember(format!("x{i}").as_bytes(), 1);
        }
        assert!(!r.has(b"m1", 5), "the oldest is forgotten first");
        assert!(r.has(format!("x{}", REMEMBERED - 1).as_bytes(), 1));
        assert_eq!(r.order.len(), REMEMBERED);
        assert_eq!(r.set.len(), REMEMBERED);
    }
}
