use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use telemetry_proto::TelemetryRecord;

use super::{fold, unfold};

fn record(template: u8, metric: u8, time: i64, value: f64) -> TelemetryRecord {
    let mut r = TelemetryRecord {
        hostname: "host-1".into(),
        gpu_id: "3".into(),
        uuid: format!("GPU-{template}"),
        device: "nvidia3".into(),
        model: "NVIDIA H100 80GB HBM3".into(),
        metric: format!("DCGM_FI_METRIC_{metric}"),
        timestamp_unix_nano: time,
        value,
        ..Default::default()
    };
    if template == 2 {
        r.labels.insert("driver".into(), "550.54".into());
        r.pod = "train-0".into();
    }
    r
}

/// Equal in every field, with values compared bit for bit (NaN payloads, -0.0).
fn assert_same(got: &[TelemetryRecord], want: &[TelemetryRecord]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.value.to_bits(), w.value.to_bits(), "{w:?}");
        let (mut g, mut w) = (g.clone(), w.clone());
        (g.value, w.value) = (0.0, 0.0);
        assert_eq!(g, w);
    }
}

#[test]
fn awkward_values_and_times_round_trip_bit_for_bit() {
    let values = [
        f64::NAN,
        -f64::NAN,
        f64::from_bits(0x7ff0_0000_0000_0001), // a signalling NaN with a payload
        f64::INFINITY,
        f64::NEG_INFINITY,
        -0.0,
        0.0,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        1e308,
        73.432,
    ];
    let times = [
        i64::MIN,
        i64::MAX,
        0,
        0,
        -1,
        1_752_871_354_000_000_000,
        1_752_871_354_000_000_000,
        1_752_871_353_000_000_000,
        1,
        i64::MAX,
        i64::MIN,
        42,
    ];
    let records: Vec<_> = values
        .iter()
        .zip(times)
        .enumerate()
        .map(|(i, (v, t))| record((i % 3) as u8, (i % 4) as u8, t, *v))
        .collect();
    assert_same(&unfold(&fold(&records).unwrap()).unwrap(), &records);
    assert!(unfold(&fold(&[]).unwrap()).unwrap().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_records_round_trip_in_their_order(
        rows in prop::collection::vec((0u8..3, 0u8..4, any::<i64>(), any::<u64>()), 0..300)
    ) {
        let records: Vec<_> = rows
            .iter()
            .map(|&(t, m, time, bits)| record(t, m, time, f64::from_bits(bits)))
            .collect();
        assert_same(&unfold(&fold(&records).unwrap()).unwrap(), &records);
    }

    #[test]
    fn damaged_bytes_are_an_error_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = unfold(&bytes);
    }
}

/// One GPU for an hour at a 1 s scrape, ten DCGM metrics on random walks at DCGM's precision
/// (integers, or three decimals for power and energy): the size a fold of real data has.
fn realistic_hour(seed: u64) -> Vec<TelemetryRecord> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let start = 1_752_871_354_000_000_000i64;
    let mut level = [
        41.0, 73.432, 35.0, 12.0, 1980.0, 2619.0, 40_000.0, 0.0, 11.0, 9.5e6,
    ];
    let mut out = Vec::new();
    for step in 0..3_600i64 {
        // Scrapes jitter by a few milliseconds around the second.
        let t = start + step * 1_000_000_000 + rng.random_range(0..5_000_000);
        for (m, v) in level.iter_mut().enumerate() {
            let walk: f64 = rng.random_range(-1.0..1.0);
            *v = match m {
                1 => ((*v + walk * 5.0).clamp(60.0, 700.0) * 1000.0).round() / 1000.0,
                9 => *v + (rng.random_range(60.0..700.0f64) * 1000.0).round() / 1000.0,
                _ => (*v + walk * 2.0).clamp(0.0, 1e6).round(),
            };
            out.push(record(0, m as u8, t, *v));
        }
    }
    out
}

#[test]
fn a_realistic_hour_folds_to_a_few_bytes_per_sample() {
    let records = realistic_hour(7);
    let bytes = fold(&records).unwrap();
    let per_sample = bytes.len() as f64 / records.len() as f64;
    eprintln!(
        "{} samples folded into {} bytes: {per_sample:.3} B/sample",
        records.len(),
        bytes.len()
    );
    assert!(
        per_sample < 4.0,
        "{} bytes for {} samples: {per_sample:.2} B/sample",
        bytes.len(),
        records.len()
    );
    assert_same(&unfold(&bytes).unwrap(), &records);
}

#[test]
fn descriptive_fields_are_kept_once_whatever_order_their_labels_came_in() {
    // Every record's labels are a map of its own, which protobuf encodes in no fixed order.
    let records: Vec<_> = (0..100)
        .map(|i| {
            let mut r = record(0, (i % 10) as u8, i64::from(i), f64::from(i));
            for k in ["instance", "job", "driver", "pci_bus_id", "exporter"] {
                r.labels.insert(k.into(), format!("{k}-value"));
            }
            r
        })
        .collect();
    let chunk =
        <telemetry_proto::Chunk as prost::Message>::decode(&fold(&records).unwrap()[..]).unwrap();
    assert_eq!(chunk.templates.len(), 1);
    assert_eq!(chunk.series.len(), 10);
    assert_same(&unfold(&fold(&records).unwrap()).unwrap(), &records);
}

#[test]
fn a_folded_sample_keeps_its_content_hash_and_id_and_is_found_by_them() {
    // As the maintainer folds: with content hashes and content ids, in (time, hash) order,
    // several samples sharing a time.
    let mut records: Vec<_> = realistic_hour(3).into_iter().take(200).collect();
    for r in &mut records {
        r.idempotency_key = crate::record::idempotency_key(r);
        r.id = crate::record::content_id(r.timestamp_unix_nano, &r.idempotency_key).unwrap();
    }
    records.sort_by(|a, b| {
        (a.timestamp_unix_nano, &a.idempotency_key)
            .cmp(&(b.timestamp_unix_nano, &b.idempotency_key))
    });
    let chunk = super::Decoded::new(&fold(&records).unwrap()).unwrap();
    assert_eq!(chunk.len(), records.len());
    for (i, r) in records.iter().enumerate() {
        assert_eq!(&chunk.identified(i), r, "sample {i} as it was stored raw");
        assert!(chunk.contains(r));
        assert_eq!(
            chunk.at(r.timestamp_unix_nano).len(),
            10,
            "ten metrics a scrape"
        );
    }
    // Another value at the same time and metric is other content.
    let mut other = records[17].clone();
    other.value += 0.001;
    other.idempotency_key = crate::record::idempotency_key(&other);
    assert!(!chunk.contains(&other));
    let mut later = records[17].clone();
    later.timestamp_unix_nano += 1;
    later.idempotency_key = crate::record::idempotency_key(&later);
    assert!(!chunk.contains(&later));
}
