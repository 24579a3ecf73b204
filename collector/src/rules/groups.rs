//! Sample groups waiting for their derived metrics: one per GPU and instant, holding the
//! values that derived metrics read until every input of each has arrived.
//!
//! A device's metrics of one instant arrive in any order and any message (a DCGM CSV lists
//! them metric by metric), so a group waits up to [`WAIT`] for the rest. A derived metric
//! whose inputs do not all arrive within it is skipped and counted (`derived_skipped`).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use telemetry::proto::TelemetryRecord;
use telemetry::rules::Derived;
use tokio::time::Instant;

/// How long a group waits for the rest of its inputs.
pub(crate) const WAIT: Duration = Duration::from_secs(30);
/// Groups kept at most; the oldest beyond it are given up as if their wait had ended.
const MAX_GROUPS: usize = 200_000;

type GroupKey = (String, String, i64);

struct Group {
    /// The revision of its first sample: progress may not pass it while it waits.
    first_revision: i64,
    since: Instant,
    template: TelemetryRecord,
    values: Vec<(String, f64)>,
    /// Per derived metric (in dependency order): computed or given up.
    done: Vec<bool>,
}

/// Groups waiting, oldest first.
#[derive(Default)]
pub(crate) struct Groups {
    open: HashMap<GroupKey, Group>,
    order: VecDeque<(GroupKey, Instant)>,
}

/// What a group gave.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Yield {
    pub(crate) records: Vec<TelemetryRecord>,
    /// Derived metrics given up: an input missing, or a value that is not a number.
    pub(crate) skipped: u64,
}

impl Groups {
    /// Adds a stored device sample at `revision`; returns the derived records it completes.
    pub(crate) fn add(&mut self, derived: &Derived, r: &TelemetryRecord, revision: i64) -> Yield {
        let mut out = Yield::default();
        if r.derived || !derived.reads(&r.metric) {
            return out;
        }
        let key = (r.hostname.clone(), r.gpu_id.clone(), r.timestamp_unix_nano);
        let now = Instant::now();
        let g = self.open.entry(key.clone()).or_insert_with(|| {
            self.order.push_back((key.clone(), now));
            Group {
                first_revision: revision,
                since: now,
                template: TelemetryRecord {
                    hostname: r.hostname.clone(),
                    gpu_id: r.gpu_id.clone(),
                    uuid: r.uuid.clone(),
                    device: r.device.clone(),
                    model: r.model.clone(),
                    timestamp_unix_nano: r.timestamp_unix_nano,
                    derived: true,
                    ..Default::default()
                },
                values: Vec::new(),
                done: vec![false; derived.metrics.len()],
            }
        });
        match g.values.iter_mut().find(|(m, _)| *m == r.metric) {
            Some(v) => v.1 = r.value,
            None => g.values.push((r.metric.clone(), r.value)),
        }
        for (i, d) in derived.metrics.iter().enumerate() {
            if g.done[i]
                || !d
                    .inputs
                    .iter()
                    .all(|m| g.values.iter().any(|(n, _)| n == m))
            {
                continue;
            }
            g.done[i] = true;
            let value = d
                .expr
                .eval(&|m| g.values.iter().find(|(n, _)| n == m).map(|(_, v)| *v));
            match value {
                Some(v) if v.is_finite() => {
                    g.values.push((d.name.clone(), v));
                    out.records.push(TelemetryRecord {
                        metric: d.name.clone(),
                        value: v,
                        ..g.template.clone()
                    });
                }
                _ => out.skipped += 1,
            }
        }
        if g.done.iter().all(|d| *d) {
            self.open.remove(&key);
        }
        out
    }

    /// Gives up groups that waited past [`WAIT`] (or beyond [`MAX_GROUPS`]): each derived
    /// metric that had some input but not all is skipped.
    pub(crate) fn expire(&mut self, derived: &Derived) -> u64 {
        let mut skipped = 0;
        while let Some((key, since)) = self.order.front() {
            let over = self.open.len() > MAX_GROUPS;
            if since.elapsed() < WAIT && !over {
                break;
            }
            let key = key.clone();
            self.order.pop_front();
            let Some(g) = self.open.get(&key) else {
                continue;
            };
            if g.since.elapsed() < WAIT && !over {
                continue;
            }
            let g = self.open.remove(&key).expect("just found");
            skipped += derived
                .metrics
                .iter()
                .zip(&g.done)
                .filter(|(d, done)| {
                    !**done
                        && d.inputs
                            .iter()
                            .any(|m| g.values.iter().any(|(n, _)| n == m))
                })
                .count() as u64;
        }
        skipped
    }

    /// The revision of the oldest sample still waiting, if any.
    pub(crate) fn oldest_revision(&self) -> Option<i64> {
        self.open.values().map(|g| g.first_revision).min()
    }

    /// Forgets every group (the definitions changed).
    pub(crate) fn clear(&mut self) {
        self.open.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(metric: &str, value: f64) -> TelemetryRecord {
        TelemetryRecord {
            hostname: "h".into(),
            gpu_id: "0".into(),
            uuid: "GPU-1".into(),
            metric: metric.into(),
            value,
            timestamp_unix_nano: 1_000,
            ..Default::default()
        }
    }

    fn chain() -> Derived {
        Derived::parse(&json!([
            {"name": "free_pct", "expr": "100 - used_pct"},
            {"name": "used_pct", "expr": "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) * 100"},
            {"name": "hot", "expr": "DCGM_FI_DEV_GPU_TEMP / 0"},
        ]))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_input_completes_a_chain_in_dependency_order() {
        let d = chain();
        let mut g = Groups::default();
        assert_eq!(
            g.add(&d, &sample("DCGM_FI_DEV_FB_USED", 20.0), 5),
            Yield::default()
        );
        assert_eq!(g.oldest_revision(), Some(5));
        let y = g.add(&d, &sample("DCGM_FI_DEV_FB_FREE", 60.0), 9);
        let got: Vec<_> = y
            .records
            .iter()
            .map(|r| (r.metric.as_str(), r.value, r.derived))
            .collect();
        assert_eq!(got, [("used_pct", 25.0, true), ("free_pct", 75.0, true)]);
        assert_eq!(y.records[0].timestamp_unix_nano, 1_000);
        let y = g.add(&d, &sample("DCGM_FI_DEV_GPU_TEMP", 50.0), 10);
        assert_eq!(
            (y.records.len(), y.skipped),
            (0, 1),
            "division by zero is skipped"
        );
        assert_eq!(g.oldest_revision(), None, "a finished group is dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_missing_an_input_is_skipped_after_the_wait() {
        let d = chain();
        let mut g = Groups::default();
        g.add(&d, &sample("DCGM_FI_DEV_FB_USED", 20.0), 5);
        g.add(&d, &sample("DCGM_FI_DEV_POWER_USAGE", 300.0), 6);
        assert_eq!(g.expire(&d), 0, "still waiting");
        tokio::time::advance(WAIT).await;
        assert_eq!(
            g.expire(&d),
            2,
            "used_pct and free_pct had an input; hot had none"
        );
        assert_eq!(g.oldest_revision(), None);
    }
}
