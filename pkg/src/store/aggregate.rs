//! Aggregated range queries: one point per step and metric, from raw and folded samples alike.
//!
//! Buckets are aligned to multiples of the step since the Unix epoch, `[bucket, bucket + step)`,
//! and labelled with their start. Both tiers are read at one revision (a fold moves samples
//! between them in one Txn, so every sample is counted once), and the folded tier is read a
//! whole chunk at a time: a chunk's times, metrics and values are columns, so a day of one GPU
//! is a few hundred chunk reads, not 86,400 keys.
//!
//! Every aggregate is independent of the order samples arrive in, so a raw, folded or mixed
//! store gives the same answer: `last` breaks a tie between two samples of one instant by the
//! larger value, not by which tier it came from.

use std::collections::BTreeMap;
use std::str::FromStr;

use etcd_client::Client;

use super::cache::Chunks;
use super::read::{chunk_start, read_opts, scan};
use crate::etcd::{Context, EtcdError};
use crate::keys::{key_time, prefix_end};

/// Raw keys read per request.
const RAW_PAGE: i64 = 2_000;
/// Chunks read per request.
const CHUNK_PAGE: i64 = 16;

/// How a bucket's samples become one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// The mean.
    Avg,
    /// The smallest.
    Min,
    /// The largest.
    Max,
    /// The newest.
    Last,
    /// How many samples.
    Count,
}

impl FromStr for Agg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "avg" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "last" => Agg::Last,
            "count" => Agg::Count,
            other => {
                return Err(format!(
                    "agg {other:?} is not one of avg, min, max, last, count"
                ))
            }
        })
    }
}

/// One bucket of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The bucket's start, Unix nanoseconds.
    pub bucket: i64,
    /// The metric.
    pub metric: String,
    /// The aggregate.
    pub value: f64,
    /// Samples in the bucket.
    pub count: u64,
}

#[derive(Debug, Clone, Copy)]
struct Acc {
    sum: f64,
    min: f64,
    max: f64,
    last: (i64, f64),
    count: u64,
}

/// Samples gathered into buckets.
#[derive(Debug)]
pub struct Buckets {
    step: i64,
    agg: Agg,
    acc: BTreeMap<(i64, String), Acc>,
}

impl Buckets {
    /// Empty buckets of `step` nanoseconds.
    pub fn new(step: i64, agg: Agg) -> Self {
        Self {
            step: step.max(1),
            agg,
            acc: BTreeMap::new(),
        }
    }

    /// Adds one sample.
    pub fn add(&mut self, t: i64, metric: &str, v: f64) {
        let bucket = t.div_euclid(self.step) * self.step;
        // Look up by borrowed parts first: most samples land in an existing bucket.
        let key = (bucket, metric.to_string());
        match self.acc.get_mut(&key) {
            Some(a) => {
                a.sum += v;
                a.min = a.min.min(v);
                a.max = a.max.max(v);
                if (t, v.total_cmp(&a.last.1)) > (a.last.0, std::cmp::Ordering::Equal) {
                    a.last = (t, v);
                }
                a.count += 1;
            }
            None => {
                self.acc.insert(
                    key,
                    Acc {
                        sum: v,
                        min: v,
                        max: v,
                        last: (t, v),
                        count: 1,
                    },
                );
            }
        }
    }

    /// The points, oldest bucket first, then by metric.
    pub fn points(self) -> Vec<Point> {
        let agg = self.agg;
        self.acc
            .into_iter()
            .map(|((bucket, metric), a)| Point {
                bucket,
                metric,
                value: match agg {
                    Agg::Avg => a.sum / a.count as f64,
                    Agg::Min => a.min,
                    Agg::Max => a.max,
                    Agg::Last => a.last.1,
                    Agg::Count => a.count as f64,
                },
                count: a.count,
            })
            .collect()
    }
}

/// Aggregates one GPU's samples in `[from, to)` (Unix nanoseconds) into `buckets`, from its
/// raw keys under `data_prefix` and its chunks under `chunk_prefix`, at one revision. Returns
/// that revision.
pub async fn gather(
    (client, chunks): (&Client, &Chunks),
    (data_prefix, chunk_prefix): (&str, &str),
    (from, to): (i64, i64),
    metric: Option<&str>,
    buckets: &mut Buckets,
) -> Result<i64, EtcdError> {
    let end = format!("{data_prefix}{}", key_time(to));
    let mut next = format!("{data_prefix}{}", key_time(from));
    let mut revision = 0;
    loop {
        let (rows, more, rev) = scan(client, &next, &end, RAW_PAGE, revision).await?;
        revision = rev;
        for (_, r) in &rows {
            if metric.is_none_or(|m| m == r.metric) {
                buckets.add(r.timestamp_unix_nano, &r.metric, r.value);
            }
        }
        match rows.last() {
            Some((key, _)) if more => next = format!("{key}\0"),
            _ => break,
        }
    }
    let mut next = chunk_start(chunk_prefix, &key_time(from));
    let chunk_end = prefix_end(chunk_prefix);
    loop {
        let opts = read_opts(chunk_end.clone(), CHUNK_PAGE, revision);
        let resp = client
            .kv_client()
            .get(next.clone(), Some(opts))
            .await
            .ctx("read chunks")?;
        for kv in resp.kvs() {
            let chunk = match chunks.decoded(kv) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(key = %String::from_utf8_lossy(kv.key()), error = %e, "unreadable chunk skipped");
                    continue;
                }
            };
            let times = chunk.times();
            if times.first().is_some_and(|&t| t >= to) {
                return Ok(revision);
            }
            for (i, &t) in times.iter().enumerate() {
                if t < from || t >= to || metric.is_some_and(|m| m != chunk.metric(i)) {
                    continue;
                }
                buckets.add(t, chunk.metric(i), chunk.value(i));
            }
        }
        match resp.kvs().last() {
            Some(kv) if resp.more() => next = [kv.key(), b"\0"].concat(),
            _ => return Ok(revision),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn buckets_are_aligned_to_the_epoch_and_labelled_with_their_start() {
        let mut b = Buckets::new(60 * S, Agg::Avg);
        b.add(59 * S, "m", 1.0);
        b.add(60 * S, "m", 2.0);
        b.add(119 * S, "m", 4.0);
        b.add(-1, "m", 8.0);
        let p = b.points();
        let got: Vec<(i64, f64, u64)> = p.iter().map(|p| (p.bucket, p.value, p.count)).collect();
        assert_eq!(got, [(-60 * S, 8.0, 1), (0, 1.0, 1), (60 * S, 3.0, 2)]);
    }

    #[test]
    fn every_aggregate_ignores_the_order_samples_come_in() {
        let samples = [(5, 3.0), (1, 7.0), (9, -2.0), (9, 4.0), (3, 0.5)];
        for agg in [Agg::Avg, Agg::Min, Agg::Max, Agg::Last, Agg::Count] {
            let run = |order: &[(i64, f64)]| {
                let mut b = Buckets::new(100, agg);
                for &(t, v) in order {
                    b.add(t, "m", v);
                }
                b.points()
            };
            let mut reversed = samples;
            reversed.reverse();
            assert_eq!(run(&samples), run(&reversed), "{agg:?}");
        }
        let mut b = Buckets::new(100, Agg::Last);
        samples.iter().for_each(|&(t, v)| b.add(t, "m", v));
        assert_eq!(b.points()[0].value, 4.0, "newest, ties by the larger value");
    }

    #[test]
    fn agg_names_are_checked() {
        assert_eq!("last".parse::<Agg>(), Ok(Agg::Last));
        assert!("median".parse::<Agg>().is_err());
    }
}
