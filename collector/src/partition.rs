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
use crate::states::Progress;
use crate::{dlq, Shared};
use telemetry::proto::TelemetryRecord;
use tracing::Instrument;

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
    // Every line logged about this message carries its ids (the trace's once decoded).
    let span = tracing::info_span!(
        "message",
        id = %message_id,
        partition = fence.partition,
        trace_id = tracing::field::Empty,
        linked = tracing::field::Empty,
    );
    process(shared, fence, &kv, (key, message_id), stop)
        .instrument(span)
        .await
}

async fn process(
    shared: &Shared,
    fence: Fence,
    kv: &KeyValue,
    (key, message_id): (String, String),
    stop: &CancellationToken,
) -> Step {
    let progress = Progress {
        partition: fence.partition,
        claimed_unix_ms: now_millis(),
        attempt: 1,
        ..Default::default()
    };
    let mut message = match QueueMessage::decode(kv.value()) {
        Ok(m) => m,
        Err(e) => {
            let trace_id = telemetry::trace::of_message_id(&message_id);
            let claimed = Claimed {
                key,
                mod_revision: kv.mod_revision(),
                message_id,
                schema_version: String::new(),
                progress: Progress {
                    trace_id,
                    ..progress
                },
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
    let mut claimed = Claimed {
        key,
        mod_revision: kv.mod_revision(),
        message_id,
        schema_version: message.schema_version.clone(),
        progress: Progress {
            trace_id: std::mem::take(&mut message.trace_id),
            linked_trace_ids: std::mem::take(&mut message.linked_trace_ids),
            published_unix_ms: message.created_unix_ms,
            ..progress
        },
    };
    // Every line logged about this message, here and below, carries its ids.
    let span = tracing::Span::current();
    span.record(
        "trace_id",
        tracing::field::display(&claimed.progress.trace_id),
    );
    if !claimed.progress.linked_trace_ids.is_empty() {
        span.record(
            "linked",
            tracing::field::display(claimed.progress.linked_trace_ids.join(",")),
        );
    }
    let total = message.records.len();
    shared.counters.consumed(total);

    let mut valid = Vec::with_capacity(total);
    let mut invalid = Vec::new();
    for mut r in std::mem::take(&mut message.records) {
        let refused = admit(&message.schema_version, &mut r).err().or_else(|| {
            let old = shared.cutoff.refuses(r.timestamp_unix_nano)?;
            // Its entry is kept from now, not from the sample's (long past) time.
            let at = message.created_unix_ms.saturating_mul(1_000_000);
            if let Some(id) = telemetry::record::content_id(at, &r.idempotency_key) {
                r.id = id;
            }
            Some(old)
        });
        match refused {
            None => valid.push(r),
            Some(reason) => invalid.push((r, reason)),
        }
    }
    claimed.progress.validated_unix_ms = now_millis();
    claimed.progress.valid = valid.len();
    claimed.progress.invalid = invalid.len();
    commit_until_done(shared, fence, kv.value(), claimed, (valid, invalid), stop).await
}

/// Commits a validated message, retrying what etcd fails, until it is stored, dead-lettered,
/// fenced or stopped.
async fn commit_until_done(
    shared: &Shared,
    fence: Fence,
    payload: &[u8],
    mut claimed: Claimed,
    (valid, invalid): (Vec<TelemetryRecord>, Vec<(TelemetryRecord, String)>),
    stop: &CancellationToken,
) -> Step {
    let total = valid.len() + invalid.len();
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
                let lag = (now_millis() - claimed.progress.published_unix_ms).max(0) as f64;
                shared
                    .counters
                    .committed(stored, duplicates, invalid, latency, lag);
                tracing::debug!(
                    stored,
                    duplicates,
                    invalid,
                    attempt = claimed.progress.attempt,
                    "message stored"
                );
                return Step::Next;
            }
            Ok(Outcome::AlreadyDone) => return Step::Next,
            Ok(Outcome::Fenced) => {
                shared.counters.fenced();
                tracing::warn!("commit refused: the claim is no longer ours");
                return Step::Fenced;
            }
            Err(e) => {
                shared.counters.database_error();
                match failed_attempt(shared, fence, &claimed, payload, &e, total).await {
                    Attempt::Over(step) => return step,
                    Attempt::Counted(n) => claimed.progress.attempt = n + 1,
                    Attempt::Transient => {}
                }
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "commit failed");
                or_cancel(stop, tokio::time::sleep(wait)).await;
            }
        }
    }
}

/// What a failed commit meant for its message.
enum Attempt {
    /// etcd was away: not the message's fault, and not counted.
    Transient,
    /// Counted against it: this many attempts have failed.
    Counted(u32),
    /// Its last allowed attempt failed: it was dead-lettered (or the claim was lost).
    Over(Step),
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
) -> Attempt {
    if e.is_transient() {
        return Attempt::Transient;
    }
    let attempts = match dlq::record_attempt(&shared.client, &shared.keys, fence, msg).await {
        Ok(n) => n,
        Err(_) => return Attempt::Transient,
    };
    if attempts >= shared.cfg.max_retries {
        let reason = e.to_string();
        return Attempt::Over(bury(shared, fence, msg, payload, &reason, attempts, records).await);
    }
    Attempt::Counted(attempts)
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
    let state = shared.committer.states().put(
        msg,
        telemetry::trace::Outcome::DeadLettered,
        0,
        Some(reason),
    );
    match dlq::bury(&shared.client, &shared.keys, fence, msg, &letter, state).await {
        Ok(true) => {
            shared.counters.dead_lettered();
            tracing::error!(reason, attempts, "message moved to the dead-letter queue");
            Step::Next
        }
        Ok(false) => Step::Fenced,
        Err(e) => {
            shared.counters.database_error();
            tracing::warn!(error = %e, "cannot dead-letter the message; it stays queued");
            Step::Next
        }
    }
}
