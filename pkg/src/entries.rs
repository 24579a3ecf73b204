//! JSON shapes stored beside the telemetry and served by the gateway: the GPU registry,
//! invalid records and dead letters. (Telemetry itself is stored as protobuf.)

use serde::{Deserialize, Serialize};
use telemetry_proto::TelemetryRecord;

use crate::record::format_timestamp;

/// One GPU the pipeline has seen, kept at `{prefix}/telemetry/gpus/{hostname}/{gpu_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuInfo {
    pub uuid: String,
    pub gpu_id: String,
    pub hostname: String,
    pub device: String,
    pub model: String,
    /// RFC 3339 time of the newest reading seen when this entry was last refreshed.
    pub last_seen: String,
}

impl GpuInfo {
    pub fn of(r: &TelemetryRecord) -> Self {
        Self {
            uuid: r.uuid.clone(),
            gpu_id: r.gpu_id.clone(),
            hostname: r.hostname.clone(),
            device: r.device.clone(),
            model: r.model.clone(),
            last_seen: format_timestamp(r.timestamp_unix_nano),
        }
    }
}

/// A stored reading as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TelemetryEntry {
    pub id: String,
    pub timestamp: String,
    pub metric: String,
    pub value: f64,
    pub gpu_id: String,
    pub uuid: String,
    pub hostname: String,
    pub device: String,
    pub model: String,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty", default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl From<&TelemetryRecord> for TelemetryEntry {
    fn from(r: &TelemetryRecord) -> Self {
        Self {
            id: r.id.clone(),
            timestamp: format_timestamp(r.timestamp_unix_nano),
            metric: r.metric.clone(),
            value: r.value,
            gpu_id: r.gpu_id.clone(),
            uuid: r.uuid.clone(),
            hostname: r.hostname.clone(),
            device: r.device.clone(),
            model: r.model.clone(),
            labels: r
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// A record the collector refused, kept at `{prefix}/telemetry/invalid/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvalidEntry {
    pub id: String,
    pub message_id: String,
    pub schema_version: String,
    pub reason: String,
    pub hostname: String,
    pub gpu_id: String,
    pub metric: String,
    pub detected_at: String,
}

/// A message that failed too often, kept at `{prefix}/queue/dead/{message_id}` with the
/// original bytes so it can be requeued unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub message_id: String,
    pub partition: u16,
    pub reason: String,
    pub attempts: u32,
    pub records: usize,
    pub dead_at: String,
    /// The message's protobuf bytes, base16.
    pub payload_hex: String,
}
