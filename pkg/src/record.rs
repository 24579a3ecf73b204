//! Record identity: every record gets a ULID (where it entered the pipeline) and an
//! idempotency key (what it says). Two sources that read the same reading must produce the
//! same key, so the key covers only the reading's content, in a fixed order and format:
//!
//! ```text
//! sha256("gpu-telemetry/v1" US hostname US gpu_id US uuid US metric US timestamp_ns US value)
//! ```
//!
//! where US is the ASCII unit separator (0x1F, which no field may contain) and `value` is the
//! shortest decimal that round-trips the f64 (`100`, `0.5`, `1e-7`). Labels, device name, model and
//! pod are descriptive and left out, so that a scrape and a CSV row of one reading agree.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use sha2::{Digest, Sha256};
use telemetry_proto::TelemetryRecord;

const DOMAIN: &str = "gpu-telemetry/v1";
const SEP: char = '\u{1f}';

/// The canonical form hashed into the idempotency key.
pub fn canonical_form(r: &TelemetryRecord) -> String {
    let mut s = String::with_capacity(160);
    for part in [
        DOMAIN,
        &r.hostname,
        &r.gpu_id,
        &r.uuid,
        &r.metric,
        &r.timestamp_unix_nano.to_string(),
        &canonical_value(r.value),
    ] {
        if !s.is_empty() {
            s.push(SEP);
        }
        s.push_str(part);
    }
    s
}

/// Shortest round-trip decimal, with `-0` folded into `0`.
pub fn canonical_value(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else {
        format!("{v}")
    }
}

/// The record's content hash, the lowercase hex SHA-256 of its canonical form (docs/identity.md).
pub fn idempotency_key(r: &TelemetryRecord) -> String {
    hex_of(&content_hash(r))
}

/// The SHA-256 of the record's canonical form: [`idempotency_key`] before hex.
pub fn content_hash(r: &TelemetryRecord) -> [u8; 32] {
    Sha256::digest(canonical_form(r).as_bytes()).into()
}

/// Lowercase hex of a SHA-256 digest. Readers of folded data hash every sample they return,
/// so this is on the query path: `hex::encode`'s per-char iterator cost more than the hash.
pub fn hex_of(digest: &[u8; 32]) -> String {
    let mut out = [0u8; 64];
    hex::encode_to_slice(digest, &mut out).expect("64 bytes hold 32 in hex");
    String::from_utf8(out.to_vec()).expect("hex is ASCII")
}

/// The `id` of a stored reading: a ULID of the reading's millisecond and the first 80 bits of
/// its content hash. A function of the content, so a reading keeps its id when it is folded
/// into a chunk (which keeps the content, not the bytes it arrived with), and the same reading
/// sent twice has one id. `None` when the key is not a hex hash.
pub fn content_id(timestamp_nanos: i64, idempotency_key: &str) -> Option<String> {
    let random = u128::from_str_radix(idempotency_key.get(..20)?, 16).ok()?;
    let ms = timestamp_nanos
        .div_euclid(1_000_000)
        .clamp(0, (1 << 48) - 1) as u64;
    Some(ulid::Ulid::from_parts(ms, random).to_string())
}

/// Gives a record its ULID and idempotency key. Call once the content is final.
pub fn assign_identity(r: &mut TelemetryRecord) {
    if r.id.is_empty() {
        r.id = ulid::Ulid::new().to_string();
    }
    r.idempotency_key = idempotency_key(r);
}

/// Parses an RFC 3339 timestamp into Unix nanoseconds.
pub fn parse_timestamp(s: &str) -> Result<i64, String> {
    let t =
        DateTime::parse_from_rfc3339(s.trim()).map_err(|e| format!("bad timestamp {s:?}: {e}"))?;
    t.with_timezone(&Utc)
        .timestamp_nanos_opt()
        .ok_or_else(|| format!("timestamp {s:?} is out of range"))
}

/// RFC 3339 with as many fraction digits as needed.
pub fn format_timestamp(nanos: i64) -> String {
    Utc.timestamp_nanos(nanos)
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The wall clock in Unix nanoseconds.
pub fn now_nanos() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// The wall clock in Unix milliseconds.
pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> TelemetryRecord {
        TelemetryRecord {
            hostname: "h1".into(),
            gpu_id: "3".into(),
            uuid: "GPU-abc".into(),
            metric: "DCGM_FI_DEV_GPU_TEMP".into(),
            timestamp_unix_nano: 1_752_871_354_000_000_000,
            value: 41.0,
            ..Default::default()
        }
    }

    #[test]
    fn key_ignores_descriptive_fields_and_ids() {
        let a = reading();
        let mut b = reading();
        b.id = "01SOMETHINGELSE".into();
        b.device = "nvidia3".into();
        b.labels.insert("job".into(), "x".into());
        assert_eq!(idempotency_key(&a), idempotency_key(&b));
    }

    #[test]
    fn key_changes_with_content() {
        let a = reading();
        let mut b = reading();
        b.value = 41.5;
        assert_ne!(idempotency_key(&a), idempotency_key(&b));
        let mut c = reading();
        c.timestamp_unix_nano += 1;
        assert_ne!(idempotency_key(&a), idempotency_key(&c));
    }

    #[test]
    fn key_is_pinned() {
        // The canonical form is a contract with stored data: changing it silently would let
        // every record through the dedupe window a second time.
        assert_eq!(
            canonical_form(&reading()),
            "gpu-telemetry/v1\u{1f}h1\u{1f}3\u{1f}GPU-abc\u{1f}DCGM_FI_DEV_GPU_TEMP\u{1f}1752871354000000000\u{1f}41"
        );
        assert_eq!(idempotency_key(&reading()).len(), 64);
    }

    #[test]
    fn a_content_id_is_a_ulid_of_the_reading_millisecond_and_the_hash() {
        let r = reading();
        let key = idempotency_key(&r);
        let id = content_id(r.timestamp_unix_nano, &key).unwrap();
        let ulid = ulid::Ulid::from_string(&id).unwrap();
        assert_eq!(ulid.timestamp_ms(), 1_752_871_354_000);
        assert_eq!(
            ulid.random(),
            u128::from_str_radix(&key[..20], 16).unwrap(),
            "the hash's first 80 bits"
        );
        assert_eq!(content_id(r.timestamp_unix_nano, &key), Some(id));
        assert_eq!(content_id(0, "not hex"), None);
    }

    #[test]
    fn values_are_canonical() {
        assert_eq!(canonical_value(100.0), "100");
        assert_eq!(canonical_value(-0.0), "0");
        assert_eq!(canonical_value(0.1), "0.1");
    }

    #[test]
    fn timestamps_parse() {
        assert_eq!(
            parse_timestamp("2025-07-18T20:42:34Z").unwrap(),
            1_752_871_354_000_000_000
        );
        assert!(parse_timestamp("yesterday").is_err());
    }
}
