//! The store: how a sample is keyed and encoded when the collector writes it ([`write`]), how
//! the gateway reads it back by key range ([`read`]), and how the storage maintainer finds and
//! expires the oldest ([`write::expire_before`], [`time_of`]).
//!
//! A sample lives at `/telemetry/data/{host}/{gpu}/{time}_{sha256}` (see `keys`): fixed-width
//! times make byte order time order, so a GPU's time range is one range read or one
//! `DeleteRange`, and the content hash as the last part makes the key the dedupe entry.

pub mod aggregate;
pub mod cache;
pub mod chunk;
pub mod read;
pub mod write;

pub use read::scan;

use chrono::{DateTime, Utc};
use prost::Message as _;
use telemetry_proto::TelemetryRecord;

/// Decodes a stored sample.
pub fn decode(value: &[u8]) -> Option<TelemetryRecord> {
    TelemetryRecord::decode(value).ok()
}

/// The sample time of a data key under `gpu_prefix` (`…/{time}_{sha256}`).
pub fn time_of(key: &[u8], gpu_prefix: &str) -> Option<DateTime<Utc>> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(gpu_prefix)?;
    let (time, _) = rest.rsplit_once('_')?;
    DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;
    use chrono::TimeZone;

    #[test]
    fn a_data_key_gives_back_its_time_and_a_stored_value_its_record() {
        let keys = Keys::new("/p");
        let t = Utc.timestamp_opt(1_752_871_354, 5).unwrap();
        let r = TelemetryRecord {
            hostname: "host-1".into(),
            gpu_id: "3".into(),
            timestamp_unix_nano: t.timestamp_nanos_opt().unwrap(),
            idempotency_key: "ab12".into(),
            metric: "DCGM_FI_DEV_GPU_TEMP".into(),
            value: 41.0,
            ..Default::default()
        };
        let key = write::data_key(&keys, &r);
        assert_eq!(
            time_of(key.as_bytes(), &keys.data_gpu("host-1", "3")),
            Some(t)
        );
        assert_eq!(time_of(b"/p/other", &keys.data_gpu("host-1", "3")), None);
        let stored = decode(&write::stored_bytes(&r)).unwrap();
        assert_eq!(
            stored.idempotency_key, "",
            "the hash is in the key, not the value"
        );
        assert_eq!(stored.value, 41.0);
    }
}
