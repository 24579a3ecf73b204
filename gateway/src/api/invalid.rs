//! `/api/v1/invalid`: records the collectors refused, with their reasons.

use axum::extract::State;
use axum::Json;
use etcd_client::GetOptions;
use telemetry::entries::InvalidEntry;
use telemetry::etcd::Context;

use super::{ok, typed_param, Page, Params};
use crate::error::{AppError, ErrorBody};
use crate::state::AppState;

/// List invalid records (newest ids last).
#[utoipa::path(get, path = "/api/v1/invalid", params(("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "at most this many (default 100, max 10000)")),
    responses((status = 200, description = "invalid records", body = Page<InvalidEntry>), (status = 400, description = "bad parameter", body = ErrorBody)))]
pub async fn list_invalid(
    State(s): State<AppState>,
    p: Params,
) -> Result<Json<Page<InvalidEntry>>, AppError> {
    let limit = super::telemetry::parse_limit(typed_param(&p, "limit"))?;
    let opts = GetOptions::new().with_prefix().with_limit(limit as i64);
    let mut kv = s.client.kv_client();
    let resp = super::etcd_read(async {
        kv.get(s.keys.invalid_root(), Some(opts))
            .await
            .ctx("list invalid records")
    })
    .await?;
    let entries: Vec<InvalidEntry> = resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    Ok(ok(entries, None))
}
