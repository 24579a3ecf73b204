//! JSON shapes stored beside the telemetry and served by the gateway: the GPU registry,
//! invalid records and dead letters. (Telemetry itself is stored as protobuf.)

use serde::{Deserialize, Serialize};
use telemetry_proto::TelemetryRecord;

use crate::record::format_timestamp;

/// One GPU the pipeline has seen, kept at `{prefix}/telemetry/gpus/{hostname}/{gpu_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuInfo {
    /// The GPU's UUID (the first one its host and index reported).
    pub uuid: String,
    /// The GPU's index on its host.
    pub gpu_id: String,
    /// The host's name.
    pub hostname: String,
    /// The device name, e.g. `nvidia0`.
    pub device: String,
    /// The GPU model, e.g. `NVIDIA H100 80GB HBM3`.
    pub model: String,
    /// RFC 3339 time of the newest reading seen when this entry was last refreshed.
    pub last_seen: String,
}

impl GpuInfo {
    /// The entry a record describes.
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
    /// The record's ULID.
    pub id: String,
    /// RFC 3339 time of the reading.
    pub timestamp: String,
    /// The metric name, e.g. `DCGM_FI_DEV_GPU_TEMP`.
    pub metric: String,
    /// The reading.
    pub value: f64,
    /// The GPU's index on its host.
    pub gpu_id: String,
    /// The GPU's UUID.
    pub uuid: String,
    /// The host's name.
    pub hostname: String,
    /// The device name.
    pub device: String,
    /// The GPU model.
    pub model: String,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty", default)]
    /// Other labels the source gave (container, pod, driver version, …).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Computed from other metrics (`derived.metrics`) rather than read from the device.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub derived: bool,
}

impl From<&TelemetryRecord> for TelemetryEntry {
    fn from(r: &TelemetryRecord) -> Self {
        Self::timed(r.clone(), format_timestamp(r.timestamp_unix_nano))
    }
}

impl TelemetryEntry {
    /// The entry of a record the caller owns, with its time already formatted: a page of a
    /// listing holds ten metrics per instant, so readers format each instant once
    /// ([`Timestamps`]) and move the record's strings rather than copy them.
    pub fn timed(r: TelemetryRecord, timestamp: String) -> Self {
        Self {
            id: r.id,
            timestamp,
            metric: r.metric,
            value: r.value,
            gpu_id: r.gpu_id,
            uuid: r.uuid,
            hostname: r.hostname,
            device: r.device,
            model: r.model,
            labels: r.labels.into_iter().collect(),
            derived: r.derived,
        }
    }
}

/// Formats instants as the API shows them, remembering the last one: consecutive entries of a
/// listing mostly share it.
#[derive(Debug, Default)]
pub struct Timestamps {
    last: Option<(i64, String)>,
}

impl Timestamps {
    /// `nanos` as RFC 3339 text.
    pub fn format(&mut self, nanos: i64) -> String {
        match &self.last {
            Some((t, text)) if *t == nanos => text.clone(),
            _ => {
                let text = format_timestamp(nanos);
                self.last = Some((nanos, text.clone()));
                text
            }
        }
    }

    /// The entry of an owned record.
    pub fn entry(&mut self, r: TelemetryRecord) -> TelemetryEntry {
        let timestamp = self.format(r.timestamp_unix_nano);
        TelemetryEntry::timed(r, timestamp)
    }
}

/// A record the collector refused, kept at `{prefix}/telemetry/invalid/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvalidEntry {
    /// The refused record's id (its key in the invalid area).
    pub id: String,
    /// The queue message it came in.
    pub message_id: String,
    /// The schema version it was sent in.
    pub schema_version: String,
    /// Why it was refused.
    pub reason: String,
    /// The host it named.
    pub hostname: String,
    /// The GPU index it named.
    pub gpu_id: String,
    /// The metric it named.
    pub metric: String,
    /// When it was refused (RFC 3339).
    pub detected_at: String,
}

/// A message that failed too often, kept at `{prefix}/queue/dead/{message_id}` with the
/// original bytes so it can be requeued unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The message's id.
    pub message_id: String,
    /// The partition it was queued in (and is requeued into, when the queue has it).
    pub partition: u16,
    /// Why it was dead-lettered.
    pub reason: String,
    /// Failed attempts before it was.
    pub attempts: u32,
    /// Records in the message.
    pub records: usize,
    /// When it was dead-lettered (RFC 3339).
    pub dead_at: String,
    /// The message's protobuf bytes, base16.
    pub payload_hex: String,
}
