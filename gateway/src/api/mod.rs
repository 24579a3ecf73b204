//! REST handlers. Query strings are parsed by hand from a map so that every bad parameter
//! gets the contract's JSON error with a precise message, not the extractor's plain text.

pub mod aggregate;
pub mod alerts;
pub mod cluster;
pub mod config;
pub mod fleet;
pub mod gpus;
pub mod invalid;
pub mod messages;
pub mod telemetry;

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::Json;

use crate::error::AppError;
use serde::Serialize;

/// The longest one etcd read of a request may take: well under the request timeout, so that a
/// stopped etcd gets a prompt 503 with `Retry-After`, not a hung request.
pub(crate) const ETCD_READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs one etcd read under [`ETCD_READ_DEADLINE`].
pub(crate) async fn etcd_read<T>(
    read: impl std::future::Future<Output = Result<T, ::telemetry::etcd::EtcdError>>,
) -> Result<T, AppError> {
    match tokio::time::timeout(ETCD_READ_DEADLINE, read).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(AppError::Unavailable(format!(
            "etcd did not answer within {ETCD_READ_DEADLINE:?}; retry shortly"
        ))),
    }
}

/// `{"success": true, "data": ..., "count": N[, "next_cursor": ...]}`, serialized straight
/// from the entries (no intermediate JSON tree).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// Always true on success.
    success: bool,
    data: Vec<T>,
    /// Entries in `data`.
    count: usize,
    /// Present when more entries follow: pass it as `cursor` to get the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    next_cursor: Option<String>,
}

/// `{"success": true, "data": {...}, "count": N}` for an answer that is one object; `count`
/// counts what the object lists (members, stages).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct One<T> {
    /// Always true on success.
    success: bool,
    data: T,
    /// Entries the object lists.
    count: usize,
}

pub fn one<T: Serialize>(data: T, count: usize) -> Json<One<T>> {
    Json(One {
        success: true,
        data,
        count,
    })
}

pub fn ok<T: Serialize>(data: Vec<T>, next_cursor: Option<String>) -> Json<Page<T>> {
    Json(Page {
        success: true,
        count: data.len(),
        data,
        next_cursor,
    })
}

/// A request's query parameters, decoded strictly: a parameter given twice, or one that is
/// not UTF-8 once percent-decoded, is a 400 in the contract's shape (a map would silently keep
/// the last of two values, and a lossy decoder would invent characters).
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses a raw query string.
    pub fn parse(raw: &str) -> Result<Self, AppError> {
        let mut out = HashMap::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (decode(k)?, decode(v)?);
            if out.contains_key(&k) {
                return Err(AppError::bad(
                    "INVALID_PARAMETER",
                    format!("parameter {k:?} is given more than once"),
                ));
            }
            out.insert(k, v);
        }
        Ok(Self(out))
    }
}

fn decode(s: &str) -> Result<String, AppError> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            AppError::bad(
                "INVALID_PARAMETER",
                format!("query parameter {s:?} is not UTF-8"),
            )
        })
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        Self::parse(parts.uri.query().unwrap_or_default())
    }
}

/// A parameter as given, empty or not: for typed parameters (a number, a time), where an empty
/// value is a mistake to report rather than a default to apply.
pub fn typed_param<'a>(p: &'a Params, name: &str) -> Option<&'a str> {
    p.0.get(name).map(String::as_str)
}

/// A non-empty parameter: for free-text filters, where empty means no filter.
pub fn param<'a>(p: &'a Params, name: &str) -> Option<&'a str> {
    p.0.get(name).map(String::as_str).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_decoded_strictly() {
        let p = Params::parse("a=1&b=x%20y+z&c=").unwrap();
        assert_eq!(param(&p, "a"), Some("1"));
        assert_eq!(param(&p, "b"), Some("x y z"));
        assert_eq!(param(&p, "c"), None);
        assert!(Params::parse("limit=5&limit=").is_err());
        assert!(Params::parse("hostname=%FF").is_err());
    }
}
