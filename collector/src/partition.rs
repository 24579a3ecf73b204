//! Work on one owned partition: take the messages its watch delivers (or a read of the
//! partition, see `inbox`), and commit each under the fence.

use std::sync::Arc;
use std::time::Duration;

use crate::claim::Fence;
use crate::commit::{Claimed, Outcome};
use etcd_client::KeyValue;
use futures::StreamExt;
use prost::Message as _;
use telemetry::backoff::Backoff;
use telemetry::etcd::EtcdError;
use telemetry::proto::QueueMessage;
use telemetry::record::now_millis;
use telemetry::shutdown::or_cancel;
use telemetry::validate::admit;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::inbox::{Inbox, Next};
use crate::{dlq, Shared};

/// Why a partition worker stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (shutdown, rebalance, lease lost).
    Stopped,
    /// A commit was refused: someone else owns the partition now.
    Fenced,
}

enum Step {
    Next,
    Fenced,
    Stop,
}

pub async fn run(shared: Arc<Shared>, fence: Fence, stop: CancellationToken) -> Exit {
    let (deliver, deliveries) = mpsc::channel(shared.cfg.batch_size as usize);
    let reread = Arc::new(Notify::new());
    let watch_stop = stop.child_token();
    let _stop_watch_on_exit = watch_stop.clone().drop_guard();
    tokio::spawn(crate::watcher::run(
        shared.clone(),
        fence.partition,
        deliver,
        reread.clone(),
        watch_stop,
    ));
    let mut inbox = Inbox::new(
        shared.keys.queue_partition(fence.partition),
        deliveries,
        reread,
    );
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if !shared.settings.now().ingestion_enabled() {
            // The kill switch: messages stay queued, claimed by nobody's work, until it is on.
            tracing::debug!(
                partition = fence.partition,
                "ingestion is off; taking no messages"
            );
            if or_cancel(&stop, shared.settings.ingestion_on())
                .await
                .is_none()
            {
                return Exit::Stopped;
            }
        }
        let kvs = match inbox.next(&shared, &stop).await {
            Next::Batch(kvs) => kvs,
            Next::Stopped => return Exit::Stopped,
            Next::ReadFailed(e) => {
                shared.counters.database_error();
                tracing::warn!(partition = fence.partition, error = %e, "cannot read partition; retrying");
                or_cancel(&stop, tokio::time::sleep(backoff.next_delay())).await;
                continue;
            }
        };
        backoff.reset();
        let steps: Vec<Step> = futures::stream::iter(kvs)
            .map(|kv| handle(&shared, fence, kv, &stop))
            .buffer_unordered(usize::from(shared.cfg.workers))
            .collect()
            .await;
        if steps.iter().any(|s| matches!(s, Step::Fenced)) {
            return Exit::Fenced;
        }
        if steps.iter().any(|s| matches!(s, Step::Stop)) {
            return Exit::Stopped;
        }
    }
}

/// Processes one message to an end: committed, already done, dead-lettered, fenced, or stopped.
async fn handle(shared: &Shared, fence: Fence, kv: KeyValue, stop: &CancellationToken) -> Step {
    let _permit = shared.permits.acquire().await;
    let key = kv.key_str().unwrap_or_default().to_string();
    let message_id = key.rsplit('/').next().unwrap_or_default().to_string();
    let mut message = match QueueMessage::decode(kv.value()) {
        Ok(m) => m,
        Err(e) => {
            let claimed = Claimed {
                key,
                mod_revision: kv.mod_revision(),
                message_id,
                schema_version: String::new(),
            };
            return bury(
                shared,
                fence,
                &claimed,
                kv.value(),
                &format!("undecodable message: {e}"),
                1,
                0,
            )
            .await;
        }
    };
    let claimed = Claimed {
        key,
        mod_revision: kv.mod_revision(),
        message_id,
        schema_version: message.schema_version.clone(),
    };
    let total = message.records.len();
    shared.counters.consumed(total);

    let mut valid = Vec::with_capacity(total);
    let mut invalid = Vec::new();
    for mut r in std::mem::take(&mut message.records) {
        match admit(&message.schema_version, &mut r) {
            Ok(()) => valid.push(r),
            Err(reason) => invalid.push((r, reason)),
        }
    }
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        if stop.is_cancelled() {
            return Step::Stop;
        }
        let started = Instant::now();
        let result = match shared.registry.refresh(&valid).await {
            Ok(()) => {
                shared
                    .committer
                    .commit(fence, &claimed, &valid, &invalid)
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(Outcome::Committed {
                stored,
                duplicates,
                invalid,
            }) => {
                let latency = started.elapsed().as_secs_f64() * 1e3;
                let lag = (now_millis() - message.created_unix_ms).max(0) as f64;
                shared
                    .counters
                    .committed(stored, duplicates, invalid, latency, lag);
                return Step::Next;
            }
            Ok(Outcome::AlreadyDone) => return Step::Next,
            Ok(Outcome::Fenced) => {
                shared.counters.fenced();
                tracing::warn!(partition = fence.partition, message = %claimed.message_id, "commit refused: the claim is no longer ours");
                return Step::Fenced;
            }
            Err(e) => {
                shared.counters.database_error();
                if let Some(step) =
                    failed_attempt(shared, fence, &claimed, kv.value(), &e, total).await
                {
                    return step;
                }
                let wait = backoff.next_delay();
                tracing::warn!(message = %claimed.message_id, error = %e, retry_in = ?wait, "commit failed");
                or_cancel(stop, tokio::time::sleep(wait)).await;
            }
        }
    }
}

/// Counts a failed commit against the message when etcd refused the request itself; a
/// transient failure (etcd down, no leader) is not the message's fault and is only retried.
async fn failed_attempt(
    shared: &Shared,
    fence: Fence,
    msg: &Claimed,
    payload: &[u8],
    e: &EtcdError,
    records: usize,
) -> Option<Step> {
    if e.is_transient() {
        return None;
    }
    let attempts = match dlq::record_attempt(&shared.client, &shared.keys, fence, msg).await {
        Ok(n) => n,
        Err(_) => return None,
    };
    if attempts >= shared.cfg.max_retries {
        return Some(
            bury(
                shared,
                fence,
                msg,
                payload,
                &e.to_string(),
                attempts,
                records,
            )
            .await,
        );
    }
    None
}

async fn bury(
    shared: &Shared,
    fence: Fence,
    msg: &Claimed,
    payload: &[u8],
    reason: &str,
    attempts: u32,
    records: usize,
) -> Step {
    let letter = dlq::letter(fence, msg, payload, reason, attempts, records);
    match dlq::bury(&shared.client, &shared.keys, fence, msg, &letter).await {
        Ok(true) => {
            shared.counters.dead_lettered();
            tracing::error!(message = %msg.message_id, reason, attempts, "message moved to the dead-letter queue");
            Step::Next
        }
        Ok(false) => Step::Fenced,
        Err(e) => {
            shared.counters.database_error();
            tracing::warn!(message = %msg.message_id, error = %e, "cannot dead-letter the message; it stays queued");
            Step::Next
        }
    }
}
