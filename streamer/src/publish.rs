//! Publishing batched messages into the etcd queue, with retries, splitting what etcd refuses
//! for its size, and giving up only when shutdown's grace period runs out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use telemetry::backoff::Backoff;
use telemetry::queue::{plan, Encoded, Publisher};
use telemetry::settings::Settings;
use telemetry::storage::Room;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;

/// Publishes groups until the channel closes. Each group is retried until it lands or
/// `give_up` fires (shutdown's grace ran out), so a record is never dropped silently.
pub async fn publish(
    publisher: Arc<Publisher>,
    room: Arc<Room>,
    counters: Arc<Counters>,
    settings: Settings,
    groups: Arc<Mutex<mpsc::Receiver<Vec<Encoded>>>>,
    give_up: CancellationToken,
) {
    loop {
        let Some(msgs) = groups.lock().await.recv().await else {
            return;
        };
        // Groups still to publish, front first. A group etcd refuses for what it is (too
        // large, too many operations) is split in two and each half published on its own, so
        // one bad message never holds the others back.
        let mut pending: VecDeque<&[Encoded]> = plan(publisher.limits(), &msgs).into();
        while let Some(group) = pending.pop_front() {
            // The kill switch holds what was already batched, too: nothing is published while
            // it is off, and nothing is dropped (shutdown's grace still applies).
            tokio::select! {
                _ = settings.ingestion_on() => {}
                _ = give_up.cancelled() => {
                    tracing::error!("shutdown grace ran out while ingestion was switched off; unpublished records remain");
                    return;
                }
            }
            // Wait for room in etcd first: a burst must not run into the quota.
            let bytes = group.iter().map(|m| m.key.len() + m.value.len()).sum();
            tokio::select! {
                _ = room.take(bytes) => {}
                _ = give_up.cancelled() => {
                    tracing::error!("shutdown grace ran out while etcd had no room; unpublished records remain");
                    return;
                }
            }
            match publish_group(&publisher, &counters, group, &give_up).await {
                Published::Yes => {}
                Published::GaveUp => return,
                Published::Refused(e) if group.len() > 1 => {
                    tracing::warn!(error = %e, messages = group.len(), "etcd refused a publish; splitting it");
                    let (a, b) = group.split_at(group.len() / 2);
                    pending.push_front(b);
                    pending.push_front(a);
                }
                Published::Refused(e) => {
                    // Cannot happen for records checked at the door (one message fits one
                    // request by construction); if it does, say so loudly and go on.
                    counters.unpublishable(group[0].records as u64);
                    tracing::error!(error = %e, key = %group[0].key, records = group[0].records, "etcd refuses this message whatever we do; its records are not published");
                }
            }
        }
    }
}

enum Published {
    Yes,
    GaveUp,
    Refused(telemetry::etcd::EtcdError),
}

/// Publishes one group, retrying transient failures with backoff until it lands or
/// `give_up` fires. A failure that retrying cannot fix is returned.
async fn publish_group(
    publisher: &Publisher,
    counters: &Counters,
    group: &[Encoded],
    give_up: &CancellationToken,
) -> Published {
    let records: usize = group.iter().map(|m| m.records).sum();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        // A request to an unreachable etcd can wait for a connection indefinitely, so
        // the grace deadline must cut the request itself, not only the backoff sleep.
        let attempt = tokio::select! {
            r = publisher.put_group(group) => r,
            _ = give_up.cancelled() => {
                tracing::error!(records, "shutdown grace ran out; unpublished records remain");
                return Published::GaveUp;
            }
        };
        match attempt {
            Ok(()) => {
                counters.published(records as u64);
                return Published::Yes;
            }
            Err(e) if !e.is_transient() => {
                counters.publish_error();
                return Published::Refused(e);
            }
            Err(e) => {
                counters.publish_error();
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, records, retry_in = ?wait, "publish failed; holding the batch and retrying");
                tokio::select! {
                    _ = give_up.cancelled() => {
                        tracing::error!(records, "shutdown grace ran out; unpublished records remain");
                        return Published::GaveUp;
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
