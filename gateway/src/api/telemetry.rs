//! `GET /api/v1/gpus/{id}/telemetry`: one GPU's readings in a time range, oldest first.
//!
//! Keys are `{gpu prefix}{timestamp}_{id}` with fixed-width timestamps, so a time range is one
//! key-range scan per GPU, never a read-everything-and-filter. A GPU index names that index on
//! every host; the hosts' ranges are merged in (time, id, host) order, which is also the
//! order the cursor records.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use telemetry::entries::{TelemetryEntry, Timestamps};
use telemetry::keys::key_time_of;
use telemetry::proto::TelemetryRecord;
use telemetry::store::read::{chunk_rows, first_reads};
use telemetry::store::scan;

use super::{ok, param, typed_param, Params};
use crate::cursor::Cursor;
use crate::error::{AppError, ErrorBody};
use crate::state::AppState;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;
/// Sorts after every character a key suffix can hold.
const SUFFIX_MAX: &str = "~";

pub fn parse_limit(raw: Option<&str>) -> Result<usize, AppError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LIMIT);
    };
    let n: i64 = raw.parse().map_err(|_| {
        AppError::bad(
            "INVALID_LIMIT",
            format!("limit {raw:?} is not a whole number"),
        )
    })?;
    if n < 1 || n as usize > MAX_LIMIT {
        return Err(AppError::bad(
            "INVALID_LIMIT",
            format!("limit must be between 1 and {MAX_LIMIT}, got {n}"),
        ));
    }
    Ok(n as usize)
}

fn parse_time(name: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, AppError> {
    raw.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                AppError::bad(
                    "INVALID_TIME",
                    format!("{name} {s:?} is not an RFC 3339 time: {e}"),
                )
            })
    })
    .transpose()
}

/// One GPU's telemetry (by UUID or index), oldest first, with cursor pagination. First pages
/// are served from the query cache while their GPUs are unchanged (see `query_cache`).
#[utoipa::path(get, path = "/api/v1/gpus/{id}/telemetry",
    params(
        ("id" = String, Path, description = "GPU UUID, or GPU index such as 0"),
        ("hostname" = Option<String>, Query, description = "narrow an index to one host"),
        ("start_time" = Option<String>, Query, format = DateTime, description = "RFC 3339, inclusive"),
        ("end_time" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive"),
        ("metric" = Option<String>, Query, description = "only this metric"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "default 100, at most 10000"),
        ("cursor" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]*$", description = "next_cursor of the previous page (opaque)"),
        ("step" = Option<String>, Query, pattern = "^[0-9]+(s|m|h|d)$", description = "one point per step and metric instead of samples, e.g. 1m (at least 1s; at most 10000 buckets)"),
        ("agg" = Option<String>, Query, pattern = "^(avg|min|max|last|count)$", description = "with step: avg (default), min, max, last or count"),
    ),
    responses((status = 200, description = "telemetry entries, or aggregated points with step", body = super::aggregate::TelemetryAnswer), (status = 400, description = "bad parameter", body = ErrorBody), (status = 404, description = "unknown GPU", body = ErrorBody)))]
pub async fn gpu_telemetry(
    State(s): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    p: Params,
) -> Result<Response, AppError> {
    let limit = parse_limit(typed_param(&p, "limit"))?;
    let start = parse_time("start_time", typed_param(&p, "start_time"))?;
    let end = parse_time("end_time", typed_param(&p, "end_time"))?;
    if let (Some(a), Some(b)) = (start, end) {
        if a > b {
            return Err(AppError::bad(
                "INVALID_RANGE",
                "start_time must not be after end_time",
            ));
        }
    }
    let cursor = param(&p, "cursor")
        .map(Cursor::decode)
        .transpose()
        .map_err(|e| AppError::bad("INVALID_CURSOR", e))?;
    let metric = param(&p, "metric");
    let targets = s.registry.resolve(&id, param(&p, "hostname"));
    if targets.is_empty() {
        return Err(AppError::NotFound(format!("no GPU {id:?} has telemetry")));
    }
    if super::aggregate::wanted(&p) {
        return Ok(super::aggregate::answer(&s, &p, &targets, (start, end))
            .await?
            .into_response());
    }
    if start.is_some() && start == end {
        // [t, t) holds nothing.
        return Ok(ok(Vec::<TelemetryEntry>::new(), None).into_response());
    }
    let gpu_prefixes: Vec<String> = targets
        .iter()
        .map(|g| s.keys.data_gpu(&g.hostname, &g.gpu_id))
        .collect();
    let cache_key = (cursor.is_none() && s.cache.enabled())
        .then(|| format!("{id}?{}", raw.as_deref().unwrap_or_default()));
    if let Some(body) = cache_key
        .as_ref()
        .and_then(|k| s.cache.get(k, &gpu_prefixes))
    {
        return Ok(json(body, "hit"));
    }
    let lo = start.map(key_time_of).unwrap_or_default();
    let hi = end
        .map(key_time_of)
        .unwrap_or_else(|| SUFFIX_MAX.to_string());

    let mut revision = cursor.as_ref().map_or(0, |c| c.r);
    let mut first_revision = None;
    let mut merged: Vec<(String, String, TelemetryEntry)> = Vec::new();
    for (gpu, prefix) in targets.iter().zip(&gpu_prefixes) {
        let from = match &cursor {
            Some(c) if gpu.hostname > c.h => lo.clone().max(c.s.clone()),
            Some(c) => lo.clone().max(format!("{}\0", c.s)),
            None => lo.clone(),
        };
        let (entries, rev) =
            match read_gpu(&s, prefix, &from, &hi, metric, limit + 1, revision).await {
                Err(AppError::Etcd(e)) if revision > 0 && e.is_compacted() => {
                    // The snapshot is gone; continue at the latest revision from the same position.
                    read_gpu(&s, prefix, &from, &hi, metric, limit + 1, 0).await?
                }
                other => other?,
            };
        revision = rev;
        first_revision.get_or_insert(rev);
        merged.extend(
            entries
                .into_iter()
                .map(|(suffix, e)| (suffix, gpu.hostname.clone(), e)),
        );
    }
    merged.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let more = merged.len() > limit;
    merged.truncate(limit);
    let next = more
        .then(|| {
            merged.last().map(|(suffix, host, _)| {
                Cursor {
                    r: revision,
                    s: suffix.clone(),
                    h: host.clone(),
                }
                .encode()
            })
        })
        .flatten();
    let page = ok(merged.into_iter().map(|(_, _, e)| e).collect(), next).0;
    let body =
        Bytes::from(serde_json::to_vec(&page).map_err(|e| AppError::Internal(e.to_string()))?);
    match cache_key {
        Some(key) => {
            // Keyed on the earliest revision read: a compaction retry may have moved later GPUs on.
            let rev = first_revision.unwrap_or(revision);
            s.cache.put(key, rev, gpu_prefixes, body.clone());
            Ok(json(body, "miss"))
        }
        None => Ok(json(body, "off")),
    }
}

/// A serialized JSON page, with whether it came from the query cache.
fn json(body: Bytes, cache: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (
                HeaderName::from_static("x-cache"),
                HeaderValue::from_static(cache),
            ),
        ],
        body,
    )
        .into_response()
}

/// Up to `want` entries of one GPU (its raw key prefix) with key suffix in `[from, to)`,
/// filtered by metric: the raw tier's and the folded chunks' first `want` each, read at one
/// revision and merged in key-suffix order, which is the same whichever tier a sample is in.
/// The first page of each tier comes from one Txn ([`first_reads`]).
async fn read_gpu(
    s: &AppState,
    prefix: &str,
    from: &str,
    to: &str,
    metric: Option<&str>,
    want: usize,
    revision: i64,
) -> Result<(Vec<(String, TelemetryEntry)>, i64), AppError> {
    let chunks = s
        .keys
        .chunks_of_data_gpu(prefix)
        .ok_or_else(|| AppError::Internal(format!("{prefix} is not a GPU's data prefix")))?;
    let page = if metric.is_some() {
        (want * 4).min(MAX_LIMIT)
    } else {
        want
    } as i64;
    let (start, end) = (format!("{prefix}{from}"), format!("{prefix}{to}"));
    let first = super::etcd_read(first_reads(
        &s.client,
        (&start, &end, page),
        (&chunks, from),
        revision,
    ))
    .await?;
    let revision = first.revision;
    let mut out = read_raw(s, (prefix, &end, page), metric, want, revision, first.raw).await?;
    let folded = super::etcd_read(chunk_rows(
        (&s.client, &s.chunks),
        &chunks,
        (from, to),
        metric,
        want,
        revision,
        Some(first.chunk),
    ))
    .await?;
    if !folded.is_empty() {
        let mut times = Timestamps::default();
        out.extend(
            folded
                .into_iter()
                .map(|(suffix, r)| (suffix, times.entry(r))),
        );
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.truncate(want);
    }
    Ok((out, revision))
}

/// The raw tier's part of [`read_gpu`], from its first page on, up to `end`, `page` keys a read.
async fn read_raw(
    s: &AppState,
    (prefix, end, page): (&str, &str, i64),
    metric: Option<&str>,
    want: usize,
    revision: i64,
    (mut rows, mut more): (Vec<(String, TelemetryRecord)>, bool),
) -> Result<Vec<(String, TelemetryEntry)>, AppError> {
    let mut out = Vec::new();
    let mut times = Timestamps::default();
    while let Some((last_key, _)) = rows.last() {
        let next = format!("{last_key}\0");
        for (key, rec) in rows {
            if metric.is_some_and(|m| m != rec.metric) {
                continue;
            }
            let suffix = key[prefix.len()..].to_string();
            out.push((suffix, times.entry(rec)));
            if out.len() >= want {
                return Ok(out);
            }
        }
        if !more {
            break;
        }
        (rows, more, _) = super::etcd_read(scan(&s.client, &next, end, page, revision)).await?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert_eq!(parse_limit(None).unwrap(), 100);
        assert_eq!(parse_limit(Some("10000")).unwrap(), 10_000);
        for bad in ["0", "10001", "-1", "ten", "1.5"] {
            assert!(
                matches!(
                    parse_limit(Some(bad)),
                    Err(AppError::BadRequest {
                        code: "INVALID_LIMIT",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn times_are_checked() {
        assert!(parse_time("start_time", Some("2025-07-18T20:42:34Z"))
            .unwrap()
            .is_some());
        assert!(matches!(
            parse_time("start_time", Some("yesterday")),
            Err(AppError::BadRequest {
                code: "INVALID_TIME",
                ..
            })
        ));
    }
}
