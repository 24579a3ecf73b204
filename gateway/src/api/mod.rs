//! REST handlers. Query strings are parsed by hand from a map so that every bad parameter
//! gets the contract's JSON error with a precise message, not the extractor's plain text.

pub mod gpus;
pub mod invalid;
pub mod telemetry;

use std::collections::HashMap;

use axum::Json;
use serde::Serialize;

/// `{"success": true, "data": ..., "count": N[, "next_cursor": ...]}`, serialized straight
/// from the entries (no intermediate JSON tree).
#[derive(Debug, Serialize)]
pub struct Page<T> {
    success: bool,
    data: Vec<T>,
    count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

pub fn ok<T: Serialize>(data: Vec<T>, next_cursor: Option<String>) -> Json<Page<T>> {
    Json(Page {
        success: true,
        count: data.len(),
        data,
        next_cursor,
    })
}

pub type Params = HashMap<String, String>;

/// A non-empty parameter.
pub fn param<'a>(p: &'a Params, name: &str) -> Option<&'a str> {
    p.get(name).map(String::as_str).filter(|s| !s.is_empty())
}
