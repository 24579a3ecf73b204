//! Schema versions and validation of records before they are stored.
//!
//! Producers may send three schema versions; each is migrated to the current one (v1) first:
//! - `v1beta1`: timestamp and value both as text (`timestamp_text`, `value_text`);
//! - `v1beta2`: numeric value, timestamp as RFC 3339 text (`timestamp_text`);
//! - `v1`: numeric value and `timestamp_unix_nano`.

use telemetry_proto::TelemetryRecord;

use crate::record::{content_id, idempotency_key, parse_timestamp};

/// The schema version records are migrated to.
pub const CURRENT: &str = "v1";
/// The schema versions producers may send.
pub const SUPPORTED: [&str; 3] = ["v1", "v1beta2", "v1beta1"];

/// Brings a record of `schema_version` to the current schema.
pub fn migrate(schema_version: &str, r: &mut TelemetryRecord) -> Result<(), String> {
    match schema_version {
        "v1" | "" => {}
        "v1beta2" => {
            r.timestamp_unix_nano = parse_timestamp(&r.timestamp_text)?;
        }
        "v1beta1" => {
            r.timestamp_unix_nano = parse_timestamp(&r.timestamp_text)?;
            r.value = r
                .value_text
                .trim()
                .parse()
                .map_err(|_| format!("value {:?} is not a number", r.value_text))?;
        }
        other => {
            return Err(format!(
                "unknown schema version {other:?} (supported: {SUPPORTED:?})"
            ))
        }
    }
    r.timestamp_text.clear();
    r.value_text.clear();
    Ok(())
}

/// A hostname becomes a key segment and a URL path segment: letters, digits, `-`, `_` and `.`,
/// not starting with a dot (so never `.` or `..`), at most 253 bytes (DNS's limit).
fn hostname(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("hostname is empty".into());
    }
    let ok_chars = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if v.len() > 253 || !ok_chars || v.starts_with('.') {
        return Err(format!(
            "hostname {v:?} is not a host name (letters, digits, '-', '_' and '.', not starting with '.', at most 253 bytes)"
        ));
    }
    Ok(())
}

/// A GPU id is the GPU's index on its host, in canonical form (`0`, `7`, `12`; not `07`), so
/// that one GPU has one key.
fn gpu_index(v: &str) -> Result<(), String> {
    let digits = !v.is_empty() && v.len() <= 5 && v.bytes().all(|b| b.is_ascii_digit());
    if !digits || (v.len() > 1 && v.starts_with('0')) {
        return Err(format!(
            "gpu_id {v:?} is not a GPU index (a whole number such as 0 or 7)"
        ));
    }
    Ok(())
}

/// The largest record the pipeline takes, encoded. A message of such records, and the commit
/// that stores them, must fit etcd's request limit (1.5 MiB); real DCGM records are ~300 bytes,
/// so anything near this is a mistake or an attack (2 MB of labels, say).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Refuses a record too large to ever be stored.
pub fn check_size(r: &TelemetryRecord) -> Result<(), String> {
    use prost::Message as _;
    let n = r.encoded_len();
    if n > MAX_RECORD_BYTES {
        return Err(format!(
            "record is {n} bytes encoded; at most {MAX_RECORD_BYTES} fit the pipeline (labels too large?)"
        ));
    }
    Ok(())
}

/// Checks a migrated record; the reason is stored with an invalid record.
pub fn validate(r: &TelemetryRecord) -> Result<(), String> {
    check_size(r)?;
    hostname(&r.hostname)?;
    gpu_index(&r.gpu_id)?;
    if r.metric.is_empty()
        || !r
            .metric
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("metric {:?} is not a metric name", r.metric));
    }
    if !r.value.is_finite() {
        return Err(format!("value {} is not finite", r.value));
    }
    // 2000-01-01 .. 2200-01-01: anything else is a unit mistake (seconds sent as nanos, say).
    if !(946_684_800_000_000_000..7_258_118_400_000_000_000).contains(&r.timestamp_unix_nano) {
        return Err(format!(
            "timestamp {} ns is outside 2000..2200",
            r.timestamp_unix_nano
        ));
    }
    Ok(())
}

/// Migrates and validates, then makes the identity consistent with the content: the
/// idempotency key is recomputed from the migrated record, and a missing ULID is assigned.
pub fn admit(schema_version: &str, r: &mut TelemetryRecord) -> Result<(), String> {
    // Even a refused record needs an id: it is the key of its entry in the invalid area.
    if ulid::Ulid::from_string(&r.id).is_err() {
        r.id = ulid::Ulid::new().to_string();
    }
    migrate(schema_version, r)?;
    validate(r)?;
    r.idempotency_key = idempotency_key(r);
    if let Some(id) = content_id(r.timestamp_unix_nano, &r.idempotency_key) {
        r.id = id;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> TelemetryRecord {
        TelemetryRecord {
            hostname: "h".into(),
            gpu_id: "0".into(),
            metric: "DCGM_FI_DEV_GPU_UTIL".into(),
            timestamp_unix_nano: 1_752_871_354_000_000_000,
            value: 5.0,
            ..Default::default()
        }
    }

    #[test]
    fn path_like_names_and_non_numeric_gpu_ids_are_refused() {
        for host in [".", "..", "a%2Fb", "a/b", "", ".hidden", "a b", "x\u{0}"] {
            let r = TelemetryRecord {
                hostname: host.into(),
                ..good()
            };
            assert!(validate(&r).unwrap_err().contains("hostname"), "{host:?}");
        }
        for gpu in ["zero", "..", "", "07", "-1", "1.0", "123456"] {
            let r = TelemetryRecord {
                gpu_id: gpu.into(),
                ..good()
            };
            assert!(validate(&r).unwrap_err().contains("gpu_id"), "{gpu:?}");
        }
        for (host, gpu) in [("gpu-node-001", "0"), ("a.b_c-d", "15"), ("H", "10")] {
            let r = TelemetryRecord {
                hostname: host.into(),
                gpu_id: gpu.into(),
                ..good()
            };
            assert!(validate(&r).is_ok(), "{host} {gpu}");
        }
    }

    #[test]
    fn every_schema_version_migrates_to_the_same_record() {
        let mut v1 = good();
        admit("v1", &mut v1).unwrap();

        let mut b2 = TelemetryRecord {
            timestamp_unix_nano: 0,
            timestamp_text: "2025-07-18T20:42:34Z".into(),
            ..good()
        };
        admit("v1beta2", &mut b2).unwrap();

        let mut b1 = TelemetryRecord {
            timestamp_unix_nano: 0,
            value: 0.0,
            timestamp_text: "2025-07-18T20:42:34Z".into(),
            value_text: "5".into(),
            ..good()
        };
        admit("v1beta1", &mut b1).unwrap();

        assert_eq!(v1.idempotency_key, b2.idempotency_key);
        assert_eq!(v1.idempotency_key, b1.idempotency_key);
        assert_eq!(
            (b1.timestamp_unix_nano, b1.value),
            (v1.timestamp_unix_nano, 5.0)
        );
    }

    #[test]
    fn bad_records_say_why() {
        let cases: [(TelemetryRecord, &str); 5] = [
            (
                TelemetryRecord {
                    hostname: String::new(),
                    ..good()
                },
                "hostname is empty",
            ),
            (
                TelemetryRecord {
                    gpu_id: "0/1".into(),
                    ..good()
                },
                "gpu_id",
            ),
            (
                TelemetryRecord {
                    metric: "bad metric".into(),
                    ..good()
                },
                "metric",
            ),
            (
                TelemetryRecord {
                    value: f64::NAN,
                    ..good()
                },
                "not finite",
            ),
            (
                TelemetryRecord {
                    timestamp_unix_nano: 1_752_871_354,
                    ..good()
                },
                "outside",
            ),
        ];
        for (mut r, want) in cases {
            let err = admit("v1", &mut r).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
        let mut r = good();
        assert!(admit("v2", &mut r)
            .unwrap_err()
            .contains("unknown schema version"));
        assert!(
            ulid::Ulid::from_string(&r.id).is_ok(),
            "refused records get an id too"
        );
        let mut r = TelemetryRecord {
            value_text: "n/a".into(),
            timestamp_text: "2025-07-18T20:42:34Z".into(),
            ..good()
        };
        assert!(admit("v1beta1", &mut r)
            .unwrap_err()
            .contains("not a number"));
    }
}
