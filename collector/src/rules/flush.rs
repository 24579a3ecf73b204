//! Writes what evaluation decided, fenced by the leader key, with the revision it is
//! evaluated through (see the module above for why that makes every transition exactly once).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{PutOptions, Txn, TxnOp};
use telemetry::backoff::Backoff;
use telemetry::queue::{envelope, Publisher, SCHEMA_VERSION};
use telemetry::rules::alert::{Change, State};
use tokio_util::sync::CancellationToken;

use super::buckets::BucketLeases;
use super::{Decided, Evaluator, FLUSH_EVERY};
use crate::storage::Leadership;
use crate::Shared;

/// How long a resolved alert (and a webhook event nobody could deliver) is kept.
pub(crate) const RESOLVED_KEPT: Duration = Duration::from_secs(24 * 3600);
/// How often progress is written when nothing else is.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Derived samples per queue message.
const PER_MESSAGE: usize = 1000;
/// Bytes per Txn, below etcd's 1.5 MiB request limit.
const MAX_TXN_BYTES: usize = 1 << 20;

pub(super) async fn run(
    shared: Arc<Shared>,
    leader: Leadership,
    evaluator: Arc<Mutex<Evaluator>>,
    leading: CancellationToken,
) {
    let publisher = Publisher::new(
        shared.client.clone(),
        shared.keys.clone(),
        shared.cfg.process.queue.clone(),
    );
    let kept = BucketLeases::new(
        shared.client.clone(),
        shared.keys.clone(),
        "alerts",
        RESOLVED_KEPT,
    );
    let mut ids = ulid::Generator::new();
    let mut written = 0;
    let mut last_write = tokio::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while telemetry::shutdown::or_cancel(&leading, tokio::time::sleep(FLUSH_EVERY))
        .await
        .is_some()
    {
        let (decided, through) = evaluator.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Progress alone is written now and then: it only bounds what a successor re-reads.
        let progress_due = through > written && last_write.elapsed() >= PROGRESS_EVERY;
        if decided.is_empty() && !progress_due {
            continue;
        }
        let mut lease = lease_for_resolved(&kept).await;
        let units = units(&shared, &publisher, decided, &mut ids);
        let progress = Write::Put {
            key: shared.keys.rules_progress(),
            value: through.to_string().into_bytes(),
            kept: false,
        };
        for writes in pack(
            units,
            shared.cfg.process.queue.max_txn_ops as usize,
            progress,
        ) {
            loop {
                let ops: Vec<TxnOp> = writes.iter().map(|w| w.op(lease)).collect();
                let txn = Txn::new().when(leader.fence()).and_then(ops);
                match shared.client.kv_client().txn(txn).await {
                    Ok(r) if r.succeeded() => break,
                    Ok(_) => {
                        tracing::warn!("no longer the leader: leaving rule evaluation to the next");
                        return;
                    }
                    Err(e) if lease != 0 && telemetry::etcd::is_not_found(&e) => {
                        // The bucket's lease is gone (revoked, or etcd restored without it):
                        // the same writes would fail forever. Take the bucket's new one.
                        tracing::warn!(
                            lease,
                            "the lease for resolved alerts is gone; taking a new one"
                        );
                        kept.forget(lease);
                        let fresh = lease_for_resolved(&kept).await;
                        // Never the same dead lease twice: then the writes go without one.
                        lease = if fresh == lease { 0 } else { fresh };
                    }
                    Err(e) => {
                        let wait = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot write rule results yet");
                        if telemetry::shutdown::or_cancel(&leading, tokio::time::sleep(wait))
                            .await
                            .is_none()
                        {
                            return;
                        }
                    }
                }
            }
            backoff.reset();
        }
        written = through;
        last_write = tokio::time::Instant::now();
    }
}

/// The lease resolved alerts and undelivered events are written under; 0 (none) if etcd
/// cannot give one now, so that they are kept rather than held back.
async fn lease_for_resolved(kept: &BucketLeases) -> i64 {
    match kept.current().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot get a lease for resolved alerts; writing them without");
            0
        }
    }
}

/// One write of a flush, turned into an operation at each attempt so that a retry can carry a
/// new lease.
#[derive(Debug, Clone, PartialEq)]
enum Write {
    /// A put; `kept` ones carry the lease of resolved alerts.
    Put {
        key: String,
        value: Vec<u8>,
        kept: bool,
    },
    Delete(String),
}

impl Write {
    fn op(&self, lease: i64) -> TxnOp {
        match self {
            Write::Put { key, value, kept } => {
                let opts = (*kept && lease != 0).then(|| PutOptions::new().with_lease(lease));
                TxnOp::put(key.as_str(), value.clone(), opts)
            }
            Write::Delete(key) => TxnOp::delete(key.as_str(), None),
        }
    }
}

/// Groups of operations that must land together: a queue message of derived samples, or one
/// alert's newest state with the events of every transition it made since the last write.
fn units(
    shared: &Shared,
    publisher: &Publisher,
    decided: Decided,
    ids: &mut ulid::Generator,
) -> Vec<Unit> {
    let mut out = Vec::new();
    for chunk in decided.derived.chunks(PER_MESSAGE) {
        let mut records = chunk.to_vec();
        records
            .iter_mut()
            .for_each(telemetry::record::assign_identity);
        let m = publisher.encode(&envelope(records, SCHEMA_VERSION));
        out.push(Unit {
            bytes: m.key.len() + m.value.len(),
            writes: vec![Write::Put {
                key: m.key,
                value: m.value,
                kept: false,
            }],
        });
    }
    let notify = shared.cfg.alert_webhook_url.is_some();
    // A Txn may not touch a key twice: one op per alert, its last state.
    let mut by_key: Vec<(String, Unit, Option<Write>)> = Vec::new();
    for (key, change) in decided.changes {
        let at = match by_key.iter().position(|(k, ..)| *k == key) {
            Some(i) => i,
            None => {
                by_key.push((key.clone(), Unit::default(), None));
                by_key.len() - 1
            }
        };
        let (_, unit, last) = &mut by_key[at];
        unit.bytes += key.len();
        *last = Some(match change {
            Change::Put {
                alert,
                notify: fired_or_resolved,
            } => {
                let json = serde_json::to_vec(&alert).unwrap_or_default();
                unit.bytes += json.len();
                if fired_or_resolved && notify {
                    let id = ids.generate().unwrap_or_else(|_| ulid::Ulid::new());
                    let event = shared.keys.alert_event(&id.to_string());
                    unit.bytes += event.len() + json.len();
                    unit.writes.push(Write::Put {
                        key: event,
                        value: json.clone(),
                        kept: true,
                    });
                }
                Write::Put {
                    kept: alert.state == State::Resolved,
                    key,
                    value: json,
                }
            }
            Change::Clear(_) => Write::Delete(key),
        });
    }
    out.extend(by_key.into_iter().map(|(_, mut unit, last)| {
        unit.writes.extend(last);
        unit
    }));
    out
}

/// Writes that land in one Txn, and roughly what they weigh.
#[derive(Default)]
struct Unit {
    writes: Vec<Write>,
    bytes: usize,
}

/// Packs units into Txns within etcd's op and byte limits; the last Txn also records progress.
fn pack(units: Vec<Unit>, max_ops: usize, progress: Write) -> Vec<Vec<Write>> {
    let mut txns: Vec<Vec<Write>> = vec![Vec::new()];
    let mut bytes = 0;
    for unit in units {
        let current = txns.last().expect("never empty");
        if !current.is_empty()
            && (current.len() + unit.writes.len() >= max_ops || bytes + unit.bytes > MAX_TXN_BYTES)
        {
            txns.push(Vec::new());
            bytes = 0;
        }
        bytes += unit.bytes;
        txns.last_mut().expect("never empty").extend(unit.writes);
    }
    txns.last_mut().expect("never empty").push(progress);
    txns
}
