//! `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`, run every interval and mapped
//! onto the DCGM metric names, so that its readings look like dcgm-exporter's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use telemetry::proto::TelemetryRecord;
use telemetry::record::now_nanos;
use telemetry::service::BadSetting;
use tokio_util::sync::CancellationToken;

use super::{Sink, Source, SourceError};

/// Query fields in order: the first four identify the GPU, the rest map to DCGM metrics.
pub const QUERY: [(&str, &str); 12] = [
    ("index", ""),
    ("uuid", ""),
    ("name", ""),
    ("pci.bus_id", ""),
    ("utilization.gpu", "DCGM_FI_DEV_GPU_UTIL"),
    ("utilization.memory", "DCGM_FI_DEV_MEM_COPY_UTIL"),
    ("memory.used", "DCGM_FI_DEV_FB_USED"),
    ("memory.free", "DCGM_FI_DEV_FB_FREE"),
    ("temperature.gpu", "DCGM_FI_DEV_GPU_TEMP"),
    ("power.draw", "DCGM_FI_DEV_POWER_USAGE"),
    ("clocks.sm", "DCGM_FI_DEV_SM_CLOCK"),
    ("clocks.mem", "DCGM_FI_DEV_MEM_CLOCK"),
];

#[derive(Debug, Clone)]
pub struct NvidiaSmiSource {
    pub binary: PathBuf,
    pub interval: Duration,
    pub hostname: String,
}

/// Parses nvidia-smi's CSV output. `[N/A]` and similar fields are missing readings: they
/// are counted in the second value, never stored as numbers.
/// Checks at start-up that `binary` names an executable file (a path, or a name on `PATH`),
/// so that a typo stops the streamer with exit 2 instead of a source that fails every tick.
pub fn check_binary(binary: &Path) -> Result<(), BadSetting> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if binary.components().count() > 1 {
        executable(binary)
    } else {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| executable(&d.join(binary))))
    };
    if found {
        Ok(())
    } else {
        Err(BadSetting(format!(
            "--nvidia-smi: {} is not an executable file{}",
            binary.display(),
            if binary.components().count() > 1 {
                ""
            } else {
                " on PATH"
            }
        )))
    }
}

pub fn parse(output: &str, hostname: &str, ts: i64) -> (Vec<TelemetryRecord>, usize) {
    let mut records = Vec::new();
    let mut missing = 0;
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() < QUERY.len() {
            missing += 1;
            continue;
        }
        let gpu_id = cols[0].to_string();
        for (i, (_, metric)) in QUERY.iter().enumerate().skip(4) {
            match cols[i].parse::<f64>() {
                Ok(value) => records.push(TelemetryRecord {
                    timestamp_unix_nano: ts,
                    metric: metric.to_string(),
                    gpu_id: gpu_id.clone(),
                    device: format!("nvidia{gpu_id}"),
                    uuid: cols[1].to_string(),
                    model: cols[2].to_string(),
                    hostname: hostname.to_string(),
                    value,
                    ..Default::default()
                }),
                Err(_) => missing += 1,
            }
        }
    }
    (records, missing)
}

impl Source for NvidiaSmiSource {
    fn name(&self) -> String {
        format!("nvidia-smi {}", self.binary.display())
    }

    fn run(
        self: Box<Self>,
        sink: Sink,
        stop: CancellationToken,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move {
            let fields: Vec<&str> = QUERY.iter().map(|(f, _)| *f).collect();
            let query = format!("--query-gpu={}", fields.join(","));
            let mut tick = tokio::time::interval(self.interval);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                let out = tokio::process::Command::new(&self.binary)
                    .arg(&query)
                    .arg("--format=csv,noheader,nounits")
                    .output()
                    .await;
                let out = match out {
                    Ok(o) if o.status.success() => o,
                    Ok(o) => {
                        sink.counters.scrape_error();
                        tracing::warn!(status = %o.status, stderr = %String::from_utf8_lossy(&o.stderr), "nvidia-smi failed");
                        continue;
                    }
                    Err(e) => {
                        // Checked at start-up; gone since (a driver upgrade?). Keep trying.
                        sink.counters.scrape_error();
                        tracing::warn!(binary = %self.binary.display(), error = %e, "cannot run nvidia-smi");
                        continue;
                    }
                };
                let (records, missing) = parse(
                    &String::from_utf8_lossy(&out.stdout),
                    &self.hostname,
                    now_nanos(),
                );
                for _ in 0..missing {
                    sink.counters.read(1);
                    sink.counters.missing();
                }
                if sink.skip_if_held(records.len()) {
                    continue;
                }
                for r in records {
                    if !sink.send(r).await {
                        return Ok(());
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_columns_and_counts_na() {
        let out = "0, GPU-aaa, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 87, 40, 60000, 21007, 65, 612.45, 1980, 2619\n\
                   1, GPU-bbb, NVIDIA H100 80GB HBM3, 00000000:2A:00.0, [N/A], 0, 4, 81003, 31, 70.1, 345, 2619\n";
        let (records, missing) = parse(out, "host-x", 7);
        assert_eq!(missing, 1);
        assert_eq!(records.len(), 15);
        let util = records
            .iter()
            .find(|r| r.uuid == "GPU-aaa" && r.metric == "DCGM_FI_DEV_GPU_UTIL")
            .unwrap();
        assert_eq!(
            (util.value, util.gpu_id.as_str(), util.hostname.as_str()),
            (87.0, "0", "host-x")
        );
        assert!(records
            .iter()
            .any(|r| r.metric == "DCGM_FI_DEV_POWER_USAGE" && r.value == 612.45));
    }
}
