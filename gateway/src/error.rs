//! Every error the API returns, in the contract's one shape:
//! `{"success": false, "error": "<message>", "code": "<CODE>"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use telemetry::etcd::EtcdError;

/// The contract's error body, fields in the contract's order.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// Always false.
    success: bool,
    /// What went wrong, for a person.
    error: &'a str,
    /// What went wrong, for a program (e.g. `INVALID_LIMIT`, `NOT_FOUND`, `RATE_LIMITED`).
    code: &'a str,
}

fn error_response(status: StatusCode, error: &str, code: &str) -> Response {
    let body = ErrorBody {
        success: false,
        error,
        code,
    };
    (status, Json(body)).into_response()
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("too many requests; retry in {retry_after_secs}s")]
    RateLimited { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// The message shown is generic: etcd's own text (gRPC details) goes to the log only.
    #[error("{}", etcd_message(.0))]
    Etcd(#[from] EtcdError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Self::Etcd(e) if e.is_transient() => {
                (StatusCode::SERVICE_UNAVAILABLE, "STORAGE_UNAVAILABLE")
            }
            Self::Etcd(_) => (StatusCode::BAD_GATEWAY, "STORAGE_ERROR"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Self::Etcd(e) => tracing::warn!(error = %e, "request failed"),
            _ if status.is_server_error() => tracing::warn!(error = %self, "request failed"),
            _ => {}
        }
        let mut resp = error_response(status, &self.to_string(), code);
        let retry_after = match self {
            Self::RateLimited { retry_after_secs } => Some(retry_after_secs.max(1)),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

fn etcd_message(e: &EtcdError) -> String {
    if e.is_transient() {
        format!(
            "etcd is not reachable right now ({}); retry shortly",
            e.context
        )
    } else {
        format!("etcd refused the request ({})", e.context)
    }
}

/// A JSON error for a status that did not come from a handler (404 route, 405, 408, 413).
pub fn status_error(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
) -> Response {
    error_response(status, &message.into(), code)
}

/// Puts an error that did not come from our handlers (an extractor's plain-text rejection, such
/// as invalid UTF-8 in a path, or a 405) into the contract's JSON shape, keeping its status.
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    let code = match status {
        StatusCode::BAD_REQUEST => "BAD_REQUEST",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::PAYLOAD_TOO_LARGE => "BODY_TOO_LARGE",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
        s if s.is_server_error() => "INTERNAL",
        _ => "CLIENT_ERROR",
    };
    let mut out = error_response(status, &message, code);
    for (name, value) in parts
        .headers
        .iter()
        .filter(|(n, _)| *n == header::RETRY_AFTER || *n == header::ALLOW)
    {
        out.headers_mut().insert(name.clone(), value.clone());
    }
    out
}
