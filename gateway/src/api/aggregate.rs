//! `GET /api/v1/gpus/{id}/telemetry?step=1m&agg=avg`: one point per step and metric instead of
//! raw samples, computed by `telemetry::store::aggregate` from raw and folded data alike.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::Serialize;
use telemetry::entries::{GpuInfo, TelemetryEntry};
use telemetry::store::aggregate::{gather, Agg, Buckets};
use utoipa::openapi::schema::{AnyOfBuilder, Schema};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use super::{ok, param, typed_param, Page, Params};
use crate::error::AppError;
use crate::state::AppState;

/// At most this many buckets per metric in one answer.
pub const MAX_POINTS: i64 = 10_000;
/// The longest step: a year, so that bucket arithmetic stays far from overflow.
const MAX_STEP: Duration = Duration::from_secs(365 * 86_400);
/// Without `start_time`, an answer covers this many steps before its end.
pub const DEFAULT_STEPS: i64 = 60;

/// One bucket of one metric of one GPU.
#[derive(Debug, Serialize, ToSchema)]
pub struct AggregatePoint {
    /// The bucket's start (RFC 3339): buckets are `[timestamp, timestamp + step)`, aligned to
    /// multiples of the step since the Unix epoch.
    timestamp: String,
    metric: String,
    /// The aggregate of the bucket's samples.
    value: f64,
    /// Samples in the bucket.
    count: u64,
    gpu_id: String,
    uuid: String,
    hostname: String,
}

/// The telemetry endpoint's answer: raw entries, or points when `step` is given.
pub struct TelemetryAnswer;

impl PartialSchema for TelemetryAnswer {
    fn schema() -> RefOr<Schema> {
        Schema::AnyOf(
            AnyOfBuilder::new()
                .item(<Page<TelemetryEntry> as PartialSchema>::schema())
                .item(<Page<AggregatePoint> as PartialSchema>::schema())
                .build(),
        )
        .into()
    }
}

impl ToSchema for TelemetryAnswer {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        <Page<TelemetryEntry> as ToSchema>::schemas(schemas);
        <Page<AggregatePoint> as ToSchema>::schemas(schemas);
    }
}

/// Whether the request asks for points rather than samples.
/// A `step` or `agg` given empty is a mistake to report, not an absent parameter.
pub fn wanted(p: &Params) -> bool {
    typed_param(p, "step").is_some() || typed_param(p, "agg").is_some()
}

/// Answers an aggregated query over `targets` in `[start, end)`.
pub async fn answer(
    s: &AppState,
    p: &Params,
    targets: &[GpuInfo],
    (start, end): (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
) -> Result<axum::Json<Page<AggregatePoint>>, AppError> {
    let step = step(p)?;
    let agg: Agg = typed_param(p, "agg")
        .unwrap_or("avg")
        .parse()
        .map_err(|e: String| AppError::bad("INVALID_AGG", e))?;
    if param(p, "cursor").is_some() {
        return Err(AppError::bad(
            "INVALID_PARAMETER",
            "an aggregated answer is one page: cursor does not apply with step",
        ));
    }
    let metric = param(p, "metric");
    let step_ns = i64::try_from(step.as_nanos()).unwrap_or(i64::MAX);
    let end_ns = match end {
        Some(t) => nanos(t),
        // Up to the newest sample of the GPUs asked for, its bucket included.
        None => targets
            .iter()
            .filter_map(|g| DateTime::parse_from_rfc3339(&g.last_seen).ok())
            .map(|t| nanos(t.with_timezone(&Utc)))
            .max()
            .map_or_else(
                || nanos(Utc::now()),
                |t| t.div_euclid(step_ns) * step_ns + step_ns,
            ),
    };
    let start_ns = start.map_or(end_ns.saturating_sub(DEFAULT_STEPS * step_ns), nanos);
    let buckets = end_ns.saturating_sub(start_ns).div_euclid(step_ns) + 2;
    if buckets > MAX_POINTS {
        return Err(AppError::bad(
            "TOO_MANY_POINTS",
            format!(
                "{buckets} buckets of {} per metric; at most {MAX_POINTS}: widen step or narrow the range",
                humantime::format_duration(step)
            ),
        ));
    }
    let mut out = Vec::new();
    for g in targets {
        let data = s.keys.data_gpu(&g.hostname, &g.gpu_id);
        let chunks = s.keys.chunks_gpu(&g.hostname, &g.gpu_id);
        let mut b = Buckets::new(step_ns, agg);
        super::etcd_read(gather(
            (&s.client, &s.chunks),
            (&data, &chunks),
            (start_ns, end_ns),
            metric,
            &mut b,
        ))
        .await?;
        out.extend(b.points().into_iter().map(|pt| {
            AggregatePoint {
                timestamp: Utc
                    .timestamp_nanos(pt.bucket)
                    .to_rfc3339_opts(SecondsFormat::AutoSi, true),
                metric: pt.metric,
                value: pt.value,
                count: pt.count,
                gpu_id: g.gpu_id.clone(),
                uuid: g.uuid.clone(),
                hostname: g.hostname.clone(),
            }
        }));
    }
    // Oldest first, like raw entries; then by metric and host.
    out.sort_by(|a, b| {
        (&a.timestamp, &a.metric, &a.hostname).cmp(&(&b.timestamp, &b.metric, &b.hostname))
    });
    Ok(ok(out, None))
}

fn step(p: &Params) -> Result<Duration, AppError> {
    let raw = param(p, "step")
        .ok_or_else(|| AppError::bad("INVALID_STEP", "agg needs a step, such as step=1m"))?;
    let step = telemetry::config::parse_duration(raw)
        .map_err(|e| AppError::bad("INVALID_STEP", format!("step {raw:?}: {e}")))?;
    if step < Duration::from_secs(1) || step > MAX_STEP {
        return Err(AppError::bad(
            "INVALID_STEP",
            format!("step {raw:?} is not between 1s and 365d"),
        ));
    }
    Ok(step)
}

/// Unix nanoseconds, clamped: a time outside i64's ±292 years gives a range too wide to
/// answer (TOO_MANY_POINTS), not an overflow.
fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}
