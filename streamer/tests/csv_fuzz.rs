//! Property tests of the DCGM CSV reader, which takes outside input (files, pushed bodies):
//! whatever the bytes, no panic, and every data row comes out as a record or a reason.

use proptest::prelude::*;
use streamer::dcgm_csv::{DcgmCsvReader, RowError};
use telemetry::validate::validate;

const HEADER: &str = "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n";

/// A field: plausible values, hostile ones, and noise.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("2025-07-18T20:42:34Z".to_string()),
        Just("DCGM_FI_DEV_GPU_TEMP".to_string()),
        Just("0".to_string()),
        Just("NaN".to_string()),
        Just("-inf".to_string()),
        Just("1e400".to_string()),
        Just("9223372036854775794".to_string()),
        Just("..".to_string()),
        Just("a\"b".to_string()),
        Just("Hostname=\"\"x\"\",gpu=\"\"0\"\"".to_string()),
        "[ -~]{0,12}",
        any::<String>().prop_map(|s| s.chars().take(16).collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut input = HEADER.as_bytes().to_vec();
        input.extend(body);
        if let Ok(reader) = DcgmCsvReader::new(input.as_slice()) {
            for r in reader.flatten() {
                let _ = validate(&r);
            }
        }
    }

    #[test]
    fn every_row_is_a_record_or_a_reason(rows in proptest::collection::vec(proptest::collection::vec(field(), 12), 1..20)) {
        let mut body = HEADER.to_string();
        for r in &rows {
            let quoted: Vec<String> = r.iter().map(|f| format!("\"{}\"", f.replace('"', "\"\""))).collect();
            body.push_str(&quoted.join(","));
            body.push('\n');
        }
        let out: Vec<_> = DcgmCsvReader::new(body.as_bytes()).unwrap().collect();
        // Quoted fields keep newlines inside one row, so each generated row is one result.
        prop_assert_eq!(out.len(), rows.len());
        for row in out {
            match row {
                Ok(r) => { let _ = validate(&r); }
                Err(RowError::Malformed { reason, .. } | RowError::Invalid { reason, .. }) => prop_assert!(!reason.is_empty()),
                Err(RowError::MissingReading { raw, .. }) => prop_assert!(!raw.is_empty()),
            }
        }
    }
}
