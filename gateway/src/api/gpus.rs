//! `/api/v1/gpus`, `/api/v1/hosts` and `/api/v1/hosts/{hostname}/gpus`, from the registry cache.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;

use super::{ok, param, Page, Params};
use crate::error::{AppError, ErrorBody};
use crate::state::AppState;

/// List every GPU with telemetry.
#[utoipa::path(get, path = "/api/v1/gpus", params(("hostname" = Option<String>, Query, description = "only this host's GPUs")),
    responses((status = 200, description = "GPUs", body = Page<telemetry::entries::GpuInfo>)))]
pub async fn list_gpus(
    State(s): State<AppState>,
    p: Params,
) -> Result<Json<Page<telemetry::entries::GpuInfo>>, AppError> {
    let host = param(&p, "hostname");
    let gpus: Vec<_> = s
        .registry
        .all()
        .into_iter()
        .filter(|g| host.is_none_or(|h| g.hostname == h))
        .collect();
    Ok(ok(gpus, None))
}

/// A host with telemetry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostInfo {
    pub hostname: String,
    pub gpu_count: usize,
    pub last_seen: String,
}

/// List every host with telemetry.
#[utoipa::path(get, path = "/api/v1/hosts", responses((status = 200, description = "hosts", body = Page<HostInfo>)))]
pub async fn list_hosts(State(s): State<AppState>) -> Json<Page<HostInfo>> {
    let mut hosts: BTreeMap<String, HostInfo> = BTreeMap::new();
    for g in s.registry.all() {
        let h = hosts.entry(g.hostname.clone()).or_insert_with(|| HostInfo {
            hostname: g.hostname.clone(),
            gpu_count: 0,
            last_seen: String::new(),
        });
        h.gpu_count += 1;
        if g.last_seen > h.last_seen {
            h.last_seen = g.last_seen;
        }
    }
    ok(hosts.into_values().collect(), None)
}

/// List one host's GPUs.
#[utoipa::path(get, path = "/api/v1/hosts/{hostname}/gpus", params(("hostname" = String, Path, description = "host name")),
    responses((status = 200, description = "GPUs", body = Page<telemetry::entries::GpuInfo>), (status = 404, description = "unknown host", body = ErrorBody)))]
pub async fn host_gpus(
    State(s): State<AppState>,
    Path(hostname): Path<String>,
) -> Result<Json<Page<telemetry::entries::GpuInfo>>, AppError> {
    let gpus: Vec<_> = s
        .registry
        .all()
        .into_iter()
        .filter(|g| g.hostname == hostname)
        .collect();
    if gpus.is_empty() {
        return Err(AppError::NotFound(format!(
            "no host named {hostname:?} has telemetry"
        )));
    }
    Ok(ok(gpus, None))
}
