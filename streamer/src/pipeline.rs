//! From records to messages: identity, source-side dedupe, the token bucket, and batching
//! (publishing them is [`crate::publish`]).
//!
//! ```text
//! sources ─▶ [bounded channel] ─▶ batcher ─▶ [bounded channel of Txn groups] ─▶ publishers ─▶ etcd
//! ```
//! Both channels are bounded, so when etcd is slow or down the sources wait: nothing is dropped
//! and memory stays flat. Publishers retry a group with jittered exponential backoff until it
//! lands (or shutdown's grace period runs out).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use telemetry::proto::TelemetryRecord;
use telemetry::queue::{envelope_traced, Encoded, Publisher, SCHEMA_VERSION};
use telemetry::record::{assign_identity, now_nanos};
use telemetry::settings::{catalog, Snapshot};
use telemetry::throttle::TokenBucket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;
use crate::source::Input;

/// A record timestamp meaning "stamp me with the processing time when you publish me"
/// (`--timestamps now`). Sources read ahead into the buffer, so stamping at read time would
/// date a record by when it was read, not when it entered the queue. Pushed records cannot
/// carry it: validation refuses timestamps before 2000.
pub const STAMP_AT_PUBLISH: i64 = 0;

/// Remembers the idempotency keys of the last `capacity` records, to skip repeats at the
/// source cheaply. (The collector's dedupe is the guarantee; this only saves work.)
pub struct RecentKeys {
    set: HashSet<u128>,
    order: VecDeque<u128>,
    capacity: usize,
}

impl RecentKeys {
    pub fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// True if the key was seen recently; remembers it otherwise.
    pub fn seen(&mut self, hex_key: &str) -> bool {
        let short =
            u128::from_str_radix(hex_key.get(..32).unwrap_or(hex_key), 16).unwrap_or_default();
        if !self.set.insert(short) {
            return true;
        }
        self.order.push_back(short);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        false
    }
}

pub struct Batcher {
    pub publisher: Arc<Publisher>,
    pub counters: Arc<Counters>,
    /// Live settings: `stream.rate`, and the kill switch, which pauses batching.
    pub settings: watch::Receiver<Arc<Snapshot>>,
    pub linger: Duration,
    pub throttle: watch::Receiver<f64>,
    /// Fires when shutdown is requested (a signal, not the end of the input). From then on,
    /// what is buffered is published without pacing: the rate protects etcd from sustained
    /// load, while the buffer is at most `STREAM_BUFFER` records, and pacing it at a low rate
    /// could outlast the grace period. A one-pass run whose input simply ends stays paced.
    pub draining: CancellationToken,
}

impl Batcher {
    /// Runs until the record channel closes; sends full Txn groups to `out`.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Input>, out: mpsc::Sender<Vec<Encoded>>) {
        let per_message = self.publisher.limits().records_per_message();
        let group_size = self.publisher.limits().max_txn_ops as usize;
        let rate = self.rate();
        let mut bucket = TokenBucket::new(rate, rate.max(1.0));
        let mut recent = RecentKeys::new(65_536);
        let max_bytes = self.publisher.limits().message_bytes();
        let mut records: Vec<TelemetryRecord> = Vec::with_capacity(per_message);
        let mut traces: Vec<Arc<str>> = Vec::new();
        let mut bytes = 0usize;
        let mut messages: Vec<Encoded> = Vec::new();
        let mut deadline: Option<Instant> = None;
        let mut observed = RateMeter::default();
        let draining = self.draining.clone();
        let mut announced = false;
        loop {
            let next = match deadline {
                Some(d) => tokio::select! {
                    r = rx.recv() => r.map(Some),
                    _ = tokio::time::sleep_until(d) => Some(None),
                },
                None => rx.recv().await.map(Some),
            };
            let closed = next.is_none();
            if let Some(Some(Input {
                record: mut r,
                trace,
            })) = next
            {
                if draining.is_cancelled() && !announced {
                    announced = true;
                    tracing::info!(
                        buffered = rx.len() + 1,
                        rate = self.rate(),
                        "shutdown: publishing the buffered records without pacing (STREAM_RATE paces sustained input; the buffer must drain within SHUTDOWN_GRACE)"
                    );
                }
                if !draining.is_cancelled() {
                    tokio::select! {
                        _ = self.pace(&mut bucket, observed.rate()) => {}
                        _ = draining.cancelled() => {}
                    }
                }
                if r.timestamp_unix_nano == STAMP_AT_PUBLISH {
                    r.timestamp_unix_nano = now_nanos();
                }
                assign_identity(&mut r);
                if recent.seen(&r.idempotency_key) {
                    self.counters.duplicate();
                    continue;
                }
                observed.tick();
                let size = prost::Message::encoded_len(&r);
                if !records.is_empty() && bytes + size > max_bytes {
                    messages.push(self.seal(&mut records, &mut traces));
                    bytes = 0;
                }
                bytes += size;
                records.push(r);
                if let Some(t) = trace {
                    if !traces.contains(&t) {
                        traces.push(t);
                    }
                }
                deadline.get_or_insert_with(|| Instant::now() + self.linger);
                if records.len() >= per_message {
                    messages.push(self.seal(&mut records, &mut traces));
                    bytes = 0;
                }
                if messages.len() < group_size {
                    continue;
                }
            }
            // Linger expired, a group is full, or the input ended: flush what we have.
            if !records.is_empty() {
                messages.push(self.seal(&mut records, &mut traces));
                bytes = 0;
            }
            deadline = None;
            if !messages.is_empty() && out.send(std::mem::take(&mut messages)).await.is_err() {
                return;
            }
            if closed {
                return;
            }
        }
    }

    /// Wraps the records gathered so far into one encoded message, with their traces.
    fn seal(&self, records: &mut Vec<TelemetryRecord>, traces: &mut Vec<Arc<str>>) -> Encoded {
        let traces = traces.drain(..).map(|t| t.to_string()).collect();
        let msg = envelope_traced(std::mem::take(records), SCHEMA_VERSION, traces);
        tracing::debug!(message_id = %msg.id, trace_id = %msg.trace_id, records = msg.records.len(), "message formed");
        self.publisher.encode(&msg)
    }

    /// `stream.rate` now (its flag, or the live setting).
    fn rate(&self) -> f64 {
        self.settings.borrow().f64(catalog::STREAM_RATE)
    }

    /// Waits for a token, at the configured rate times the backpressure factor. With no
    /// configured rate, throttling keeps a fraction of the rate observed lately. Waits, too,
    /// while the kill switch is off.
    async fn pace(&mut self, bucket: &mut TokenBucket, observed: f64) {
        loop {
            if !self.settings.borrow_and_update().ingestion_enabled() {
                let _ = self.settings.wait_for(|s| s.ingestion_enabled()).await;
                continue;
            }
            let rate = self.rate();
            let factor = *self.throttle.borrow_and_update();
            if factor <= 0.0 {
                // THROTTLE_RATE=0 pauses until the queue drains.
                self.counters.throttled(1);
                let _ = self.throttle.changed().await;
                continue;
            }
            let base = if rate > 0.0 {
                rate
            } else if factor < 1.0 {
                observed.max(1.0)
            } else {
                0.0
            };
            let want = if base == 0.0 { 0.0 } else { base * factor };
            if (bucket.rate() - want).abs() > f64::EPSILON {
                bucket.set_rate(want);
            }
            if !bucket.take(1.0).await.is_zero() {
                self.counters.throttled(1);
            }
            return;
        }
    }
}

/// Records per second over the last full second, for throttling an unlimited stream.
#[derive(Default)]
struct RateMeter {
    window_start: Option<Instant>,
    count: u64,
    last_rate: f64,
}

impl RateMeter {
    fn tick(&mut self) {
        let now = Instant::now();
        let start = *self.window_start.get_or_insert(now);
        self.count += 1;
        let elapsed = now.duration_since(start);
        if elapsed >= Duration::from_secs(1) {
            self.last_rate = self.count as f64 / elapsed.as_secs_f64();
            self.count = 0;
            self.window_start = Some(now);
        }
    }

    fn rate(&self) -> f64 {
        self.last_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keys_forget_the_oldest() {
        let mut r = RecentKeys::new(2);
        let k = |c: char| c.to_string().repeat(64);
        assert!(!r.seen(&k('a')));
        assert!(r.seen(&k('a')));
        assert!(!r.seen(&k('b')));
        assert!(!r.seen(&k('c')));
        assert!(!r.seen(&k('a')), "a was evicted when c arrived");
    }
}
