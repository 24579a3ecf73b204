//! Property tests of the streamer's parsers of outside input: the dcgm-exporter exposition
//! format and JSON pushes. Whatever the input, no panic, and each line or record is a record,
//! nothing (a comment), or a reason.

use proptest::prelude::*;
use streamer::source::dcgm::{parse_line, to_record};
use streamer::source::ingest::json_records;
use telemetry::validate::validate;

fn exposition_line() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("DCGM_FI_DEV_GPU_TEMP".to_string()),
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
        "[ -~]{0,10}"
    ];
    let label = prop_oneof![
        Just(r#"gpu="0""#.to_string()),
        Just(r#"Hostname="h\"1""#.to_string()),
        Just(r#"UUID="GPU-1""#.to_string()),
        "[a-z]{1,5}=\"[ -~]{0,8}\"",
        "[ -~]{0,12}",
    ];
    let value = prop_oneof![
        Just("42".to_string()),
        Just("NaN".to_string()),
        Just("+Inf".to_string()),
        Just("1e400".to_string()),
        Just("140737488355328".to_string()),
        "[ -~]{0,8}",
    ];
    let ts = prop_oneof![
        Just(String::new()),
        Just(" 1752871354000".to_string()),
        " [0-9-]{0,20}"
    ];
    (name, proptest::collection::vec(label, 0..5), value, ts)
        .prop_map(|(n, l, v, t)| format!("{n}{{{}}} {v}{t}", l.join(",")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn exposition_lines_never_panic(line in prop_oneof![exposition_line(), any::<String>()]) {
        match parse_line(&line) {
            Ok(Some(sample)) => match to_record(sample, 1_752_871_354_000_000_000) {
                Ok(r) => { let _ = validate(&r); }
                Err(reason) => prop_assert!(!reason.is_empty()),
            },
            Ok(None) => {}
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }

    #[test]
    fn json_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = json_records(&body);
    }

    #[test]
    fn every_json_record_is_a_record_or_a_reason(
        values in proptest::collection::vec(prop_oneof![
            Just(serde_json::json!({"timestamp": "2025-07-18T20:42:34Z", "metric": "M", "gpu_id": 0, "hostname": "h", "value": 1.0})),
            Just(serde_json::json!({"timestamp": "yesterday", "metric": "M", "gpu_id": "0", "hostname": "h", "value": 1.0})),
            Just(serde_json::json!({"metric": "M", "gpu_id": [1], "hostname": "..", "value": "x"})),
            Just(serde_json::json!(null)),
            Just(serde_json::json!({"gpu_id": 1e300, "hostname": {}, "value": -1e308})),
            any::<i64>().prop_map(|n| serde_json::json!({"timestamp_unix_nano": n, "metric": "M", "gpu_id": n, "hostname": "h", "value": n})),
        ], 0..20)
    ) {
        let body = serde_json::to_vec(&values).unwrap();
        let records = json_records(&body).unwrap();
        prop_assert_eq!(records.len(), values.len());
        for r in records {
            match r {
                Ok(r) => { let _ = validate(&r); }
                Err(reason) => prop_assert!(!reason.is_empty()),
            }
        }
    }
}
