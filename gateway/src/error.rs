//! Every error the API returns, in the contract's one shape:
//! `{"success": false, "error": "<message>", "code": "<CODE>"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use telemetry::etcd::EtcdError;

/// The contract's error body, fields in the contract's order.
#[derive(Serialize)]
struct ErrorBody<'a> {
    success: bool,
    error: &'a str,
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
    #[error("storage error: {0}")]
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
            Self::Etcd(_) => (StatusCode::BAD_GATEWAY, "STORAGE_ERROR"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let mut resp = error_response(status, &self.to_string(), code);
        if let Self::RateLimited { retry_after_secs } = self {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs.max(1)),
            );
        }
        resp
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
