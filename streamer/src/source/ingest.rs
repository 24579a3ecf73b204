//! Records pushed to the streamer: `POST /api/v1/ingest` (CSV or JSON body) and the gRPC
//! `Ingest` service, served together on `--listen`.
//!
//! Every pushed record is validated at the door, so the client learns at once which rows
//! were refused and why; the valid ones go on even when others in the same body are bad.

use std::sync::Arc;

use crate::dcgm_csv::{DcgmCsvReader, RowError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use telemetry::auth::{Guard, Role};
use telemetry::proto::ingest_server::{Ingest, IngestServer};
use telemetry::proto::{IngestSummary, TelemetryRecord};
use telemetry::ratelimit::RateLimiter;
use telemetry::record::parse_timestamp;
use telemetry::validate::validate;
use tokio_util::sync::CancellationToken;

use super::{Held, Sink};

/// At most this many reasons are returned; the counts are always complete.
const MAX_REASONS: usize = 100;

/// Answer to a push. Every row or record is accounted for: `accepted + invalid + missing`
/// is the number sent.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct IngestReport {
    pub accepted: u64,
    pub invalid: u64,
    /// CSV rows holding DCGM's "blank" sentinel: no reading was taken, so nothing is stored.
    #[serde(default)]
    pub missing: u64,
    pub reasons: Vec<String>,
    /// The W3C trace id the request's records travel under: its `traceparent`'s, or a new
    /// one. Every log line about their messages carries it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    #[serde(skip)]
    trace: Option<Arc<str>>,
}

impl IngestReport {
    /// A report for a request that sent `traceparent` (or none).
    fn traced(traceparent: Option<&str>) -> Self {
        let trace_id = traceparent
            .and_then(telemetry::trace::from_traceparent)
            .unwrap_or_else(telemetry::trace::new_trace_id);
        Self {
            trace: Some(Arc::from(trace_id.as_str())),
            trace_id,
            ..Default::default()
        }
    }

    fn missing(&mut self, sink: &Sink, e: &RowError) {
        sink.reject("ingest", e);
        self.missing += 1;
        if self.reasons.len() < MAX_REASONS {
            self.reasons.push(e.to_string());
        }
    }

    fn refuse(&mut self, sink: &Sink, reason: String) {
        sink.counters.read(1);
        sink.counters.invalid();
        self.invalid += 1;
        if self.reasons.len() < MAX_REASONS {
            self.reasons.push(reason);
        }
    }

    async fn offer(&mut self, sink: &Sink, r: TelemetryRecord, at: &str) -> bool {
        if let Err(reason) = validate(&r) {
            self.refuse(sink, format!("{at}: {reason}"));
            return true;
        }
        self.accepted += 1;
        sink.send_traced(r, self.trace.clone()).await
    }
}

/// A pushed record in JSON. Field names follow the CSV's where they differ from ours.
#[derive(Debug, Deserialize)]
struct JsonRecord {
    timestamp: Option<String>,
    timestamp_unix_nano: Option<i64>,
    #[serde(alias = "metric_name")]
    metric: String,
    gpu_id: serde_json::Value,
    #[serde(alias = "Hostname")]
    hostname: String,
    #[serde(default)]
    uuid: String,
    #[serde(default)]
    device: String,
    #[serde(default, alias = "modelName")]
    model: String,
    value: f64,
    #[serde(default)]
    labels: std::collections::HashMap<String, String>,
}

impl JsonRecord {
    fn into_record(self) -> Result<TelemetryRecord, String> {
        let timestamp_unix_nano = match (self.timestamp_unix_nano, &self.timestamp) {
            (Some(ns), _) => ns,
            (None, Some(t)) => parse_timestamp(t)?,
            (None, None) => return Err("no timestamp".into()),
        };
        let gpu_id = match self.gpu_id {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            other => return Err(format!("gpu_id {other} is neither a string nor a number")),
        };
        Ok(TelemetryRecord {
            timestamp_unix_nano,
            metric: self.metric,
            gpu_id,
            hostname: self.hostname,
            uuid: self.uuid,
            device: self.device,
            model: self.model,
            value: self.value,
            labels: self.labels,
            ..Default::default()
        })
    }
}

/// Parses a JSON push: an array of records, `{"records": [...]}`, or one record. The body as a
/// whole is refused (`Err`) only when it is not JSON of those shapes; each record is then a
/// record or the reason it is not one.
pub fn json_records(body: &[u8]) -> Result<Vec<Result<TelemetryRecord, String>>, String> {
    let items = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(a)) => a,
        Ok(serde_json::Value::Object(mut o)) => match o.remove("records") {
            Some(serde_json::Value::Array(a)) => a,
            _ => vec![serde_json::Value::Object(o)],
        },
        Ok(_) => return Err("expected a JSON array of records".into()),
        Err(e) => return Err(format!("body is not JSON: {e}")),
    };
    Ok(items
        .into_iter()
        .map(|item| {
            serde_json::from_value::<JsonRecord>(item)
                .map_err(|e| e.to_string())
                .and_then(JsonRecord::into_record)
        })
        .collect())
}

/// Who may push, how large a request may be, and how often a client may send one.
#[derive(Clone)]
pub struct Limits {
    /// Largest body (`INGEST_MAX_BODY`): 413 above it, and the gRPC message limit.
    pub max_body: usize,
    /// `AUTH_MODE=token`: pushing needs a token of role `ingest` (or `admin`).
    pub guard: Guard,
    /// Requests per second per client (`INGEST_RATE_LIMIT`): 429 with `Retry-After` above it.
    pub limiter: RateLimiter,
}

/// The routes of the ingest listener: HTTP and gRPC, behind the same limits.
pub fn router(sink: Sink, limits: Limits) -> Router {
    let grpc = IngestServer::new(GrpcIngest { sink: sink.clone() })
        .max_decoding_message_size(limits.max_body);
    let grpc = tonic::service::Routes::new(grpc).into_axum_router();
    Router::new()
        .route("/api/v1/ingest", post(http_ingest))
        .layer(DefaultBodyLimit::max(limits.max_body))
        .with_state(sink)
        .merge(grpc)
        .layer(middleware::from_fn_with_state(
            limits.guard,
            telemetry::auth::guard,
        ))
        .layer(middleware::from_fn_with_state(
            limits.limiter,
            telemetry::ratelimit::middleware,
        ))
}

/// Every request on the ingest listener pushes records.
pub fn needs(_: &axum::http::Method, _: &str) -> Option<Role> {
    Some(Role::Ingest)
}

fn json_error(status: StatusCode, message: String, report: Option<IngestReport>) -> Response {
    let mut body = serde_json::json!({"success": false, "error": message, "code": status.canonical_reason().unwrap_or("ERROR").to_uppercase().replace(' ', "_")});
    if let Some(r) = report {
        body["accepted"] = r.accepted.into();
        body["invalid"] = r.invalid.into();
        body["missing"] = r.missing.into();
        body["reasons"] = serde_json::json!(r.reasons);
    }
    (status, Json(body)).into_response()
}

/// 503 with `Retry-After` while the pipeline holds its input: nothing is taken, so nothing is
/// lost.
fn unavailable(held: Held) -> Response {
    let body = serde_json::json!({
        "success": false,
        "error": held.message(),
        "code": held.code(),
    });
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    r
}

async fn http_ingest(
    State(sink): State<Sink>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(held) = sink.held() {
        return unavailable(held);
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => return json_error(e.status(), e.body_text(), None),
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let mut report = IngestReport::traced(traceparent);
    tracing::debug!(trace_id = %report.trace_id, bytes = body.len(), "ingest request");
    if is_json {
        let records = match json_records(&body) {
            Ok(r) => r,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, e, None),
        };
        for (i, record) in records.into_iter().enumerate() {
            let at = format!("record {i}");
            match record {
                Ok(r) => {
                    if !report.offer(&sink, r, &at).await {
                        return json_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the streamer is shutting down".into(),
                            Some(report),
                        );
                    }
                }
                Err(reason) => report.refuse(&sink, format!("{at}: {reason}")),
            }
        }
    } else {
        let reader = match DcgmCsvReader::new(body.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!("body is not DCGM CSV: {e}"),
                    None,
                )
            }
        };
        for row in reader {
            match row {
                Ok(r) => {
                    if !report.offer(&sink, r, "row").await {
                        return json_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the streamer is shutting down".into(),
                            Some(report),
                        );
                    }
                }
                Err(e @ RowError::MissingReading { .. }) => report.missing(&sink, &e),
                Err(e) => report.refuse(&sink, e.to_string()),
            }
        }
    }
    if report.accepted == 0 {
        return json_error(
            StatusCode::BAD_REQUEST,
            "no usable record in the body".into(),
            Some(report),
        );
    }
    (StatusCode::ACCEPTED, Json(report)).into_response()
}

struct GrpcIngest {
    sink: Sink,
}

#[tonic::async_trait]
impl Ingest for GrpcIngest {
    async fn push(
        &self,
        request: tonic::Request<tonic::Streaming<TelemetryRecord>>,
    ) -> Result<tonic::Response<IngestSummary>, tonic::Status> {
        if let Some(held) = self.sink.held() {
            let mut refused = tonic::Status::unavailable(held.message());
            refused.metadata_mut().insert(
                "retry-after",
                tonic::metadata::MetadataValue::from_static("5"),
            );
            return Err(refused);
        }
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut report = IngestReport::traced(traceparent.as_deref());
        tracing::debug!(trace_id = %report.trace_id, "gRPC ingest request");
        let mut stream = request.into_inner();
        let mut n = 0u64;
        while let Some(mut r) = stream.message().await? {
            n += 1;
            if r.timestamp_unix_nano == 0 && !r.timestamp_text.is_empty() {
                match parse_timestamp(&r.timestamp_text) {
                    Ok(ts) => r.timestamp_unix_nano = ts,
                    Err(reason) => {
                        report.refuse(&self.sink, format!("record {n}: {reason}"));
                        continue;
                    }
                }
            }
            if !report.offer(&self.sink, r, &format!("record {n}")).await {
                return Err(tonic::Status::unavailable("the streamer is shutting down"));
            }
        }
        Ok(tonic::Response::new(IngestSummary {
            accepted: report.accepted,
            invalid: report.invalid,
            reasons: report.reasons,
        }))
    }
}

/// Serves the ingest endpoints until `stop` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sink: Sink,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: std::time::Duration,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = router(sink, limits);
    telemetry::http::serve_tls(
        listener,
        app,
        tls,
        header_timeout,
        stop,
        std::time::Duration::from_secs(5),
    )
    .await
}
