//! `GET /api/v1/fleet/latest` and `GET /api/v1/fleet/summary`: the newest value of a metric on
//! every GPU, and per-host and fleet-wide figures over those values, from the in-memory
//! latest-value index (`crate::latest`).

use axum::extract::State;
use axum::Json;
use chrono::{SecondsFormat, TimeZone, Utc};
use serde::Serialize;

use super::{ok, param, Page, Params};
use crate::error::{AppError, ErrorBody};
use crate::state::AppState;

/// One GPU's newest value of a metric.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LatestValue {
    hostname: String,
    gpu_id: String,
    uuid: String,
    metric: String,
    value: f64,
    /// When it was read (RFC 3339).
    timestamp: String,
}

/// Count, min, max and mean of some latest values.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// GPUs with a value.
    count: usize,
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
}

impl Stats {
    fn of(values: impl Iterator<Item = f64>) -> Self {
        let (mut count, mut sum) = (0usize, 0.0);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values {
            count += 1;
            sum += v;
            min = min.min(v);
            max = max.max(v);
        }
        if count == 0 {
            return Self::default();
        }
        Self {
            count,
            min: Some(min),
            max: Some(max),
            mean: Some(sum / count as f64),
        }
    }
}

/// One metric across the fleet.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MetricSummary {
    metric: String,
    /// Over every GPU's latest value.
    fleet: Stats,
    /// Per host, by name.
    hosts: Vec<HostStats>,
}

/// One host's figures for one metric.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostStats {
    hostname: String,
    #[serde(flatten)]
    stats: Stats,
}

/// Every GPU's most recent value of `metric`, with its timestamp, by host then GPU.
#[utoipa::path(get, path = "/api/v1/fleet/latest",
    params(
        ("metric" = String, Query, pattern = "[\\s\\S]", description = "e.g. DCGM_FI_DEV_GPU_TEMP"),
        ("hostname" = Option<String>, Query, description = "only this host's GPUs"),
    ),
    responses((status = 200, description = "each GPU's newest value", body = Page<LatestValue>),
        (status = 400, description = "no metric given", body = ErrorBody)))]
pub async fn latest(
    State(s): State<AppState>,
    p: Params,
) -> Result<Json<Page<LatestValue>>, AppError> {
    let metric = param(&p, "metric").ok_or_else(|| {
        AppError::bad(
            "MISSING_METRIC",
            "give metric, e.g. metric=DCGM_FI_DEV_GPU_TEMP",
        )
    })?;
    let values = s
        .latest
        .of_metric(metric, param(&p, "hostname"))
        .into_iter()
        .map(|(hostname, gpu_id, uuid, v)| LatestValue {
            hostname,
            gpu_id,
            uuid,
            metric: metric.to_string(),
            value: v.value,
            timestamp: Utc
                .timestamp_nanos(v.at)
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        })
        .collect();
    Ok(ok(values, None))
}

/// Per-host and fleet-wide count, min, max and mean of every GPU's latest value, for each
/// metric (or only `metric`).
#[utoipa::path(get, path = "/api/v1/fleet/summary",
    params(("metric" = Option<String>, Query, description = "only this metric")),
    responses((status = 200, description = "one summary per metric", body = Page<MetricSummary>)))]
pub async fn summary(
    State(s): State<AppState>,
    p: Params,
) -> Result<Json<Page<MetricSummary>>, AppError> {
    let metrics = match param(&p, "metric") {
        Some(m) => vec![m.to_string()],
        None => s.latest.metrics(),
    };
    let out = metrics
        .into_iter()
        .map(|metric| {
            let values = s.latest.of_metric(&metric, None);
            let mut hosts: Vec<HostStats> = Vec::new();
            for chunk in values.chunk_by(|a, b| a.0 == b.0) {
                hosts.push(HostStats {
                    hostname: chunk[0].0.clone(),
                    stats: Stats::of(chunk.iter().map(|v| v.3.value)),
                });
            }
            MetricSummary {
                fleet: Stats::of(values.iter().map(|v| v.3.value)),
                metric,
                hosts,
            }
        })
        .filter(|m| m.fleet.count > 0)
        .collect();
    Ok(ok(out, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_nothing_are_empty_and_of_values_exact() {
        assert_eq!(Stats::of(std::iter::empty()).count, 0);
        let s = Stats::of([3.0, 1.0, 5.0].into_iter());
        assert_eq!(
            (s.count, s.min, s.max, s.mean),
            (3, Some(1.0), Some(5.0), Some(3.0))
        );
    }
}
