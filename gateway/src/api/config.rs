//! `GET /api/v1/config` and `PUT /api/v1/config/{key}`: the live configuration that every
//! process follows (docs/operations.md).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use telemetry::auth::Caller;
use telemetry::settings::{self, catalog, Invalid, SetError, Snapshot, Source};

use super::{ok, Page};
use crate::error::{AppError, ErrorBody};
use crate::state::AppState;

/// One live setting as etcd has it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SettingEntry {
    /// The setting's name, e.g. `ingestion.enabled`.
    key: String,
    /// Its value: set in etcd, or the default. A process started with a flag for a setting
    /// that etcd does not set uses its flag (shown per process in its log).
    value: Value,
    /// `etcd` or `default`.
    #[schema(value_type = String)]
    source: Source,
    /// The mod revision of its etcd key, when set there.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
    /// What it does.
    description: &'static str,
}

/// The body of `PUT /api/v1/config/{key}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SetBody {
    /// The new value (JSON); `null` removes the override.
    value: Value,
}

fn entries(snapshot: Snapshot) -> Vec<SettingEntry> {
    snapshot
        .values
        .into_iter()
        .map(|(key, e)| SettingEntry {
            key: key.to_string(),
            value: e.value,
            source: e.source,
            revision: e.revision,
            description: catalog::spec(key).map_or("", |s| s.help),
        })
        .collect()
}

/// Every live setting: its effective value, where it comes from, and its etcd revision.
#[utoipa::path(get, path = "/api/v1/config",
    responses((status = 200, description = "every live setting", body = Page<SettingEntry>)))]
pub async fn list_config(State(s): State<AppState>) -> Result<Json<Page<SettingEntry>>, AppError> {
    let (stored, _) = super::etcd_read(settings::list(&s.client, &s.keys)).await?;
    let snapshot = settings::overlay(Snapshot::at_startup(&[]), stored);
    Ok(ok(entries(snapshot), None))
}

/// Checks and stores a live setting; every process applies it within moments.
#[utoipa::path(put, path = "/api/v1/config/{key}",
    params(("key" = String, Path, description = "a live setting, e.g. ingestion.enabled")),
    request_body = SetBody,
    responses((status = 200, description = "stored", body = Page<SettingEntry>), (status = 400, description = "not a valid value for the setting", body = ErrorBody), (status = 404, description = "no such setting", body = ErrorBody)))]
pub async fn set_config(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(key): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Page<SettingEntry>>, AppError> {
    let expected = |why: String| {
        AppError::bad(
            "INVALID_BODY",
            format!("expected a JSON body {{\"value\": ...}}: {why}"),
        )
    };
    let Json(body) = body.map_err(|e| expected(e.body_text()))?;
    // serde reads a struct from an array too (`[null]` would be `{"value": null}`, which
    // removes the override): only an object is the documented body.
    if !body.is_object() {
        return Err(expected("the body is not a JSON object".into()));
    }
    let body: SetBody = serde_json::from_value(body).map_err(|e| expected(e.to_string()))?;
    let revision = match settings::set(&s.client, &s.keys, &key, &body.value).await {
        Ok(r) => r,
        Err(SetError::Invalid(e @ Invalid::UnknownKey(_))) => {
            return Err(AppError::NotFound(e.to_string()))
        }
        Err(SetError::Invalid(e)) => return Err(AppError::bad("INVALID_CONFIG", e.to_string())),
        Err(SetError::Etcd(e)) => return Err(e.into()),
    };
    let actor = caller.map_or_else(|| Caller(None).describe(), |c| c.describe());
    let detail = serde_json::json!({"key": key, "value": body.value, "revision": revision});
    if let Err(e) = telemetry::audit::record(
        &s.client,
        &s.keys,
        s.cfg.runtime.audit_retention,
        &actor,
        "config.set",
        detail,
    )
    .await
    {
        // The change is made; its audit entry is at least in the log (target `audit`).
        tracing::error!(error = %e, "could not store the audit entry of a configuration change");
    }
    let (value, source) = match body.value {
        Value::Null => (
            catalog::spec(&key).map_or(Value::Null, |s| (s.default)()),
            Source::Default,
        ),
        v => (v, Source::Etcd),
    };
    Ok(ok(
        vec![SettingEntry {
            description: catalog::spec(&key).map_or("", |s| s.help),
            key,
            value,
            source,
            revision: Some(revision),
        }],
        None,
    ))
}
