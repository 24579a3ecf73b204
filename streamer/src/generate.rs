//! `streamer generate`: a synthetic H100 fleet in the DCGM CSV format, for demos and load.
//!
//! Each GPU follows a random walk of utilization; the other metrics follow from it the way
//! they do on real hardware: power rises with utilization (≈70 W idle to ≈700 W), temperature
//! follows power, the SM clock boosts under load, framebuffer used plus free is constant, and
//! the memory clock is fixed. Output is written row by row, so any size fits in flat memory.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use telemetry::config::parse_duration;

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Number of hosts.
    #[arg(long, default_value_t = 4)]
    pub hosts: usize,
    /// GPUs per host.
    #[arg(long = "gpus-per-host", default_value_t = 8)]
    pub gpus_per_host: usize,
    /// Time steps; each step writes every metric of every GPU once.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Time between steps.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// First step's time (RFC 3339); default: now minus the span.
    #[arg(long)]
    pub start: Option<DateTime<Utc>>,
    /// Random seed, for reproducible files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output file ("-" for stdout).
    #[arg(long)]
    pub out: PathBuf,
}

pub const METRICS: [&str; 10] = [
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_DEC_UTIL",
    "DCGM_FI_DEV_ENC_UTIL",
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
];

const MODEL: &str = "NVIDIA H100 80GB HBM3";
const FB_TOTAL_MIB: f64 = 81_007.0;

struct Gpu {
    host: String,
    index: usize,
    uuid: String,
    util: f64,
    temp: f64,
}

impl Gpu {
    fn step(&mut self, rng: &mut StdRng) -> [f64; 10] {
        // Jobs start and stop: mostly small moves, sometimes a jump to idle or full load.
        self.util = match rng.random_range(0..100) {
            0..=2 => 0.0,
            3..=5 => 100.0,
            _ => (self.util + rng.random_range(-8.0..8.0)).clamp(0.0, 100.0),
        }
        .round();
        let load = self.util / 100.0;
        let power = 68.0 + 620.0 * load + rng.random_range(-6.0..6.0);
        let target_temp = 26.0 + power * 0.078;
        self.temp += (target_temp - self.temp) * 0.3;
        let fb_used = (4.0 + load * 73_000.0 + rng.random_range(0.0..400.0))
            .round()
            .min(FB_TOTAL_MIB);
        let sm_clock = if load > 0.05 { 1980.0 } else { 345.0 };
        [
            self.util,
            (self.util * 0.45 + rng.random_range(-3.0..3.0))
                .clamp(0.0, 100.0)
                .round(),
            (power * 1000.0).round() / 1000.0,
            self.temp.round(),
            fb_used,
            FB_TOTAL_MIB - fb_used,
            0.0,
            0.0,
            sm_clock,
            2619.0,
        ]
    }
}

fn uuid(rng: &mut StdRng) -> String {
    let b: [u8; 16] = rng.random();
    let h = hex(&b);
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes the fleet; returns the number of rows written.
/// Writes the fleet to `args.out` (`-` for stdout), showing progress on stderr.
pub fn write(args: &GenerateArgs) -> std::io::Result<u64> {
    let total = (args.hosts * args.gpus_per_host * args.steps * METRICS.len()) as u64;
    let mut progress = crate::progress::Progress::new("rows", total);
    let mut on_row = |rows: u64| {
        if rows.is_multiple_of(4096) {
            progress.update(rows, || format!("{rows} rows"));
        }
    };
    let rows = if args.out.as_os_str() == "-" {
        generate_with(args, &mut std::io::stdout().lock(), &mut on_row)?
    } else {
        let mut f = std::fs::File::create(&args.out).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", args.out.display()),
            )
        })?;
        generate_with(args, &mut f, &mut on_row)?
    };
    progress.finish();
    Ok(rows)
}

/// Writes the fleet to `out`; returns the number of rows.
pub fn generate(args: &GenerateArgs, out: &mut dyn Write) -> std::io::Result<u64> {
    generate_with(args, out, &mut |_| {})
}

fn generate_with(
    args: &GenerateArgs,
    out: &mut dyn Write,
    on_row: &mut dyn FnMut(u64),
) -> std::io::Result<u64> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let span = args.interval * args.steps.saturating_sub(1) as u32;
    let start = args
        .start
        .unwrap_or_else(|| Utc::now() - chrono::Duration::from_std(span).unwrap_or_default());
    let mut gpus: Vec<Gpu> = (0..args.hosts)
        .flat_map(|h| (0..args.gpus_per_host).map(move |g| (h, g)))
        .map(|(h, g)| Gpu {
            host: format!("gpu-node-{:03}", h + 1),
            index: g,
            uuid: uuid(&mut rng),
            util: rng.random_range(0.0..100.0_f64).round(),
            temp: 35.0,
        })
        .collect();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
    writeln!(w, "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw")?;
    let mut rows = 0u64;
    for step in 0..args.steps {
        let t = start + chrono::Duration::from_std(args.interval * step as u32).unwrap_or_default();
        let ts = t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let values: Vec<[f64; 10]> = gpus.iter_mut().map(|g| g.step(&mut rng)).collect();
        for (m, metric) in METRICS.iter().enumerate() {
            for (g, v) in gpus.iter().zip(&values) {
                let labels = format!(
                    "DCGM_FI_DRIVER_VERSION=\"\"535.129.03\"\",Hostname=\"\"{h}\"\",UUID=\"\"{u}\"\",__name__=\"\"{metric}\"\",device=\"\"nvidia{i}\"\",gpu=\"\"{i}\"\",instance=\"\"{h}:9400\"\",job=\"\"dcgm_exporter\"\",modelName=\"\"{MODEL}\"\"",
                    h = g.host,
                    u = g.uuid,
                    i = g.index
                );
                writeln!(
                    w,
                    "\"{ts}\",\"{metric}\",\"{i}\",\"nvidia{i}\",\"{u}\",\"{MODEL}\",\"{h}\",\"\",\"\",\"\",\"{v}\",\"{labels}\"",
                    i = g.index,
                    u = g.uuid,
                    h = g.host,
                    v = v[m]
                )?;
                rows += 1;
                on_row(rows);
            }
        }
    }
    w.flush()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcgm_csv::DcgmCsvReader;

    #[test]
    fn generated_rows_parse_and_are_consistent() {
        let args = GenerateArgs {
            hosts: 2,
            gpus_per_host: 3,
            steps: 4,
            interval: Duration::from_secs(10),
            start: None,
            seed: 1,
            out: "-".into(),
        };
        let mut buf = Vec::new();
        assert_eq!(generate(&args, &mut buf).unwrap(), 2 * 3 * 4 * 10);
        let rows: Vec<_> = DcgmCsvReader::new(buf.as_slice())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 240);
        // Free plus used framebuffer is constant for every GPU at every step.
        for used in rows.iter().filter(|r| r.metric == "DCGM_FI_DEV_FB_USED") {
            let free = rows
                .iter()
                .find(|r| {
                    r.metric == "DCGM_FI_DEV_FB_FREE"
                        && r.uuid == used.uuid
                        && r.timestamp_unix_nano == used.timestamp_unix_nano
                })
                .unwrap();
            assert_eq!(used.value + free.value, FB_TOTAL_MIB);
        }
        // Power follows utilization.
        let power_at = |util: f64| {
            rows.iter()
                .filter(|r| r.metric == "DCGM_FI_DEV_GPU_UTIL" && (r.value - util).abs() <= 20.0)
                .filter_map(|u| {
                    rows.iter().find(|p| {
                        p.metric == "DCGM_FI_DEV_POWER_USAGE"
                            && p.uuid == u.uuid
                            && p.timestamp_unix_nano == u.timestamp_unix_nano
                    })
                })
                .map(|p| p.value)
                .fold(f64::NAN, f64::max)
        };
        let (low, high) = (power_at(0.0), power_at(100.0));
        assert!(
            low.is_nan() || high.is_nan() || low < high,
            "idle {low} W vs busy {high} W"
        );
    }

    #[test]
    fn same_seed_same_file() {
        let args = GenerateArgs {
            hosts: 1,
            gpus_per_host: 2,
            steps: 2,
            interval: Duration::from_secs(1),
            start: Some(Utc::now()),
            seed: 9,
            out: "-".into(),
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        generate(&args, &mut a).unwrap();
        generate(&args, &mut b).unwrap();
        assert_eq!(a, b);
    }
}
