//! `bench --codecs`: the chunk codec measured on realistic data, against Gorilla's encoding.
//!
//! The fleet comes from `streamer generate` (the real CSV's metrics, value ranges, precision
//! and random walks). Each GPU's samples are sorted as their raw keys are (time, then content
//! hash) and folded as the maintainer folds them. For the comparison, every series (one GPU's
//! metric) is encoded twice, times and values only: with pco, as a chunk stores them, and with
//! Gorilla's delta-of-delta times and XOR values as Facebook's paper and Prometheus's chunks
//! describe them (written here as a baseline, not used by the pipeline).

use std::collections::BTreeMap;

use serde::Serialize;
use telemetry::proto::TelemetryRecord;
use telemetry::store::chunk;

/// What the codec measurement found.
#[derive(Debug, Default, Serialize)]
pub struct Codecs {
    pub samples: u64,
    pub gpus: u64,
    /// Whole chunks (templates, series table, times, row order, values) per sample.
    pub chunk_bytes_per_sample: f64,
    /// Times and values alone, per series, with pco.
    pub pco_bytes_per_sample: f64,
    /// Times and values alone, per series, with Gorilla.
    pub gorilla_bytes_per_sample: f64,
    /// Where a chunk's bytes go: its columns.
    pub column_bytes: Columns,
}

/// Bytes of each kind of chunk column, summed over chunks.
#[derive(Debug, Default, Serialize)]
pub struct Columns {
    pub times: u64,
    pub rows: u64,
    pub values: u64,
}

/// The generated fleet's records: `hosts` × 8 GPUs × `steps` steps at `interval_s`.
pub fn fleet(hosts: usize, steps: usize, interval_s: u64) -> Vec<TelemetryRecord> {
    let args = streamer::generate::GenerateArgs {
        hosts,
        gpus_per_host: 8,
        steps,
        interval: std::time::Duration::from_secs(interval_s),
        start: None,
        seed: 42,
        out: "-".into(),
    };
    let mut csv = Vec::new();
    streamer::generate::generate(&args, &mut csv).expect("generate");
    let mut reader = streamer::dcgm_csv::DcgmCsvReader::new(&csv[..]).expect("csv header");
    std::iter::from_fn(|| reader.next_row())
        .filter_map(Result::ok)
        .collect()
}

/// Folds each GPU's samples into one chunk, and encodes each series with both codecs.
pub fn measure(records: Vec<TelemetryRecord>) -> Codecs {
    let mut by_gpu: BTreeMap<(String, String), Vec<(String, TelemetryRecord)>> = BTreeMap::new();
    for r in records {
        let key = format!(
            "{:020}_{}",
            r.timestamp_unix_nano,
            telemetry::record::idempotency_key(&r)
        );
        by_gpu
            .entry((r.hostname.clone(), r.gpu_id.clone()))
            .or_default()
            .push((key, r));
    }
    let mut c = Codecs {
        gpus: by_gpu.len() as u64,
        ..Default::default()
    };
    let (mut chunk_bytes, mut pco_bytes, mut gorilla_bytes) = (0usize, 0usize, 0usize);
    for (_, mut samples) in by_gpu {
        samples.sort_by(|a, b| a.0.cmp(&b.0));
        let records: Vec<TelemetryRecord> = samples.into_iter().map(|(_, r)| r).collect();
        c.samples += records.len() as u64;
        let folded = chunk::fold(&records).expect("fold");
        chunk_bytes += folded.len();
        let parts =
            <telemetry::proto::Chunk as prost::Message>::decode(&folded[..]).expect("chunk");
        c.column_bytes.times += parts.times.len() as u64;
        c.column_bytes.rows += parts.rows.len() as u64;
        c.column_bytes.values += parts
            .series
            .iter()
            .map(|s| s.values.len() as u64)
            .sum::<u64>();
        let mut series: BTreeMap<&str, (Vec<i64>, Vec<f64>)> = BTreeMap::new();
        for r in &records {
            let s = series.entry(&r.metric).or_default();
            s.0.push(r.timestamp_unix_nano);
            s.1.push(r.value);
        }
        for (times, values) in series.values() {
            pco_bytes += chunk::compress("times", times).expect("pco").len();
            pco_bytes += chunk::compress("values", values).expect("pco").len();
            gorilla_bytes += gorilla(times, values).len();
        }
    }
    let per = |b: usize| b as f64 / c.samples.max(1) as f64;
    c.chunk_bytes_per_sample = per(chunk_bytes);
    c.pco_bytes_per_sample = per(pco_bytes);
    c.gorilla_bytes_per_sample = per(gorilla_bytes);
    c
}

/// `bench --codecs`: bytes per sample of a folded fleet, pco against Gorilla.
pub fn run(quick: bool) {
    // The Prometheus anchor of the folding issue (20 minutes at 1 s), and one default
    // STORAGE_FOLD_WINDOW (1 h) at a 10 s scrape: 12,000 and 3,600 samples per chunk.
    let shapes = if quick {
        [(120, 1), (36, 10)]
    } else {
        [(1_200, 1), (360, 10)]
    };
    println!("chunk codec: 31 hosts x 8 GPUs, one chunk per GPU; bytes per sample");
    println!("| fleet | samples | whole chunks | times+values, pco | times+values, Gorilla |");
    println!("|---|---|---|---|---|");
    for (steps, interval_s) in shapes {
        let c = measure(fleet(31, steps, interval_s));
        println!(
            "| {steps} steps of {interval_s} s | {} | {:.3} | {:.3} | {:.3} ({:.2}x pco) |",
            c.samples,
            c.chunk_bytes_per_sample,
            c.pco_bytes_per_sample,
            c.gorilla_bytes_per_sample,
            c.gorilla_bytes_per_sample / c.pco_bytes_per_sample
        );
        let per = |b: u64| b as f64 / c.samples as f64;
        eprintln!(
            "    chunk columns per sample: times {:.3}, rows {:.3}, values {:.3}",
            per(c.column_bytes.times),
            per(c.column_bytes.rows),
            per(c.column_bytes.values)
        );
    }
}

/// Bits appended most significant first.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    used: u32,
}

impl Bits {
    fn push(&mut self, value: u64, width: u32) {
        for i in (0..width).rev() {
            if self.used.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if value >> i & 1 == 1 {
                *self.bytes.last_mut().expect("pushed above") |= 0x80 >> (self.used % 8);
            }
            self.used += 1;
        }
    }
}

/// Gorilla: the first time and value whole; then each time as a delta of deltas in Prometheus's
/// buckets (0 → 1 bit; 14, 17, 20 bits; else 64), and each value XORed with the one before
/// (0 → 1 bit; inside the previous window of meaningful bits → 2 bits + the window; else
/// 2 bits + 5 bits of leading zeros + 6 bits of length + the meaningful bits).
fn gorilla(times: &[i64], values: &[f64]) -> Vec<u8> {
    let mut out = Bits::default();
    let (mut prev_t, mut prev_delta) = (0i64, 0i64);
    let (mut prev_v, mut window) = (0u64, (u32::MAX, 0u32));
    for (i, (&t, &v)) in times.iter().zip(values).enumerate() {
        let v = v.to_bits();
        if i == 0 {
            out.push(t as u64, 64);
            out.push(v, 64);
        } else {
            let delta = t.wrapping_sub(prev_t);
            let dod = delta.wrapping_sub(prev_delta);
            prev_delta = delta;
            match dod {
                0 => out.push(0, 1),
                d if (-(1 << 13)..(1 << 13)).contains(&d) => {
                    out.push(0b10, 2);
                    out.push(d as u64 & 0x3fff, 14);
                }
                d if (-(1 << 16)..(1 << 16)).contains(&d) => {
                    out.push(0b110, 3);
                    out.push(d as u64 & 0x1_ffff, 17);
                }
                d if (-(1 << 19)..(1 << 19)).contains(&d) => {
                    out.push(0b1110, 4);
                    out.push(d as u64 & 0xf_ffff, 20);
                }
                d => {
                    out.push(0b1111, 4);
                    out.push(d as u64, 64);
                }
            }
            let xor = v ^ prev_v;
            if xor == 0 {
                out.push(0, 1);
            } else {
                let (lead, trail) = (xor.leading_zeros().min(31), xor.trailing_zeros());
                if lead >= window.0 && trail >= window.1 && window.0 != u32::MAX {
                    out.push(0b10, 2);
                    let width = 64 - window.0 - window.1;
                    out.push(xor >> window.1, width);
                } else {
                    let width = 64 - lead - trail;
                    out.push(0b11, 2);
                    out.push(u64::from(lead), 5);
                    out.push(u64::from(width - 1), 6);
                    out.push(xor >> trail, width);
                    window = (lead, trail);
                }
            }
        }
        prev_t = t;
        prev_v = v;
    }
    out.bytes
}
