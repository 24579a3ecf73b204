//! `GET /api/v1/cluster`: every running process and the state of the pipeline between them
//! (docs/operations.md).

use axum::extract::State;
use axum::Json;
use telemetry::cluster::view::{self, ClusterView};

use super::{one, One};
use crate::error::AppError;
use crate::state::AppState;

/// Every running streamer, collector and gateway with its health and status; the queue depth
/// per partition; the dead letters; the storage maintainer and its figures; and whether every
/// member has applied the newest configuration. `count` is the number of members.
#[utoipa::path(get, path = "/api/v1/cluster",
    responses((status = 200, description = "the cluster", body = One<ClusterView>)))]
pub async fn cluster(State(s): State<AppState>) -> Result<Json<One<ClusterView>>, AppError> {
    let view = super::etcd_read(view::read(&s.client, &s.keys)).await?;
    let members = view.members.len();
    Ok(one(view, members))
}
