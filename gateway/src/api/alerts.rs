//! `GET /api/v1/alerts`: every alert the rules raised, from the state the evaluating collector
//! keeps in etcd (docs/insight.md).

use axum::extract::State;
use axum::Json;
use etcd_client::GetOptions;
use telemetry::etcd::Context;
use telemetry::rules::alert::State as AlertState;
use telemetry::rules::Alert;

use super::{ok, param, Page, Params};
use crate::error::AppError;
use crate::state::AppState;

/// Every pending, firing and recently resolved alert (resolved ones are kept for a day),
/// firing first, then pending, then resolved; newest first within each.
#[utoipa::path(get, path = "/api/v1/alerts",
    params(("state" = Option<String>, Query, description = "only alerts in this state", pattern = "^(pending|firing|resolved)?$")),
    responses((status = 200, description = "the alerts", body = Page<Alert>),
        (status = 400, description = "state is not pending, firing or resolved (INVALID_STATE)", body = crate::error::ErrorBody)))]
pub async fn alerts(State(s): State<AppState>, p: Params) -> Result<Json<Page<Alert>>, AppError> {
    let wanted = param(&p, "state")
        .map(|v| {
            serde_json::from_value::<AlertState>(serde_json::Value::from(v)).map_err(|_| {
                AppError::bad(
                    "INVALID_STATE",
                    format!("state {v:?} is not one of pending, firing, resolved"),
                )
            })
        })
        .transpose()?;
    let root = s.keys.alerts_root();
    let resp = super::etcd_read(async {
        s.client
            .kv_client()
            .get(root.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .ctx("read alerts")
    })
    .await?;
    let mut list: Vec<Alert> = resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Alert>(kv.value()).ok())
        .filter(|a| wanted.is_none_or(|w| a.state == w))
        .collect();
    let rank = |a: &Alert| match a.state {
        AlertState::Firing => 0,
        AlertState::Pending => 1,
        AlertState::Resolved => 2,
    };
    list.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then(b.sample_unix_nano.cmp(&a.sample_unix_nano))
    });
    Ok(ok(list, None))
}
