//! dcgm-exporter's `/metrics`, scraped every interval.
//!
//! The Prometheus text format is parsed here rather than with `prometheus-parse`: that crate
//! splits label blocks on `,` and `=` without honouring quotes or escapes, so a label value
//! holding a comma (a pod name, a quoted driver string) would be mangled. The grammar we need
//! is small: comments (`# HELP`, `# TYPE`), and `name{labels} value [timestamp_ms]`.

use std::time::Duration;

use crate::dcgm_fields::{is_dcgm_blank, parse_labels};
use futures::future::BoxFuture;
use telemetry::proto::TelemetryRecord;
use telemetry::record::now_nanos;
use telemetry::service::BadSetting;
use tokio_util::sync::CancellationToken;

use super::{Sink, Source, SourceError};

#[derive(Debug, Clone)]
pub struct DcgmSource {
    pub url: String,
    pub interval: Duration,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::HashMap<String, String>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

/// Parses one exposition line; `Ok(None)` for comments and blank lines.
/// Checks at start-up that `url` is an http(s) URL, so that a typo stops the streamer with
/// exit 2 instead of a scrape that fails every interval.
pub fn check_url(url: &str) -> Result<(), BadSetting> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(u) => Err(BadSetting(format!(
            "--dcgm-url {url:?}: expected an http:// or https:// URL with a host, got scheme {:?}",
            u.scheme()
        ))),
        Err(e) => Err(BadSetting(format!("--dcgm-url {url:?}: {e}"))),
    }
}

pub fn parse_line(line: &str) -> Result<Option<Sample>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = std::collections::HashMap::new();
    if rest.starts_with('{') {
        let close = closing_brace(rest).ok_or("unterminated label block")?;
        labels = parse_labels(&rest[1..close])?;
        rest = &rest[close + 1..];
    }
    let mut parts = rest.split_whitespace();
    let raw = parts.next().ok_or("no value")?;
    let value = match raw {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .map_err(|_| format!("value {v:?} is not a number"))?,
    };
    let timestamp_ms = parts
        .next()
        .map(|t| {
            t.parse()
                .map_err(|_| format!("timestamp {t:?} is not an integer"))
        })
        .transpose()?;
    Ok(Some(Sample {
        name,
        labels,
        value,
        timestamp_ms,
    }))
}

/// Index of the `}` closing a label block, skipping braces inside quoted values.
fn closing_brace(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Turns a sample into a record; `Err` names why it is not one.
pub fn to_record(s: Sample, scrape_ts: i64) -> Result<TelemetryRecord, String> {
    if !s.value.is_finite() || is_dcgm_blank(s.value) {
        return Err(format!("missing reading ({} = {})", s.name, s.value));
    }
    let mut labels = s.labels;
    let mut take = |k: &str| labels.remove(k).unwrap_or_default();
    let record = TelemetryRecord {
        timestamp_unix_nano: s
            .timestamp_ms
            .map_or(scrape_ts, |ms| ms.saturating_mul(1_000_000)),
        metric: s.name,
        gpu_id: take("gpu"),
        device: take("device"),
        uuid: take("UUID"),
        model: take("modelName"),
        hostname: take("Hostname"),
        container: take("container"),
        pod: take("pod"),
        namespace: take("namespace"),
        value: s.value,
        ..Default::default()
    };
    if record.hostname.is_empty() || record.gpu_id.is_empty() {
        return Err(format!("{} lacks the Hostname or gpu label", record.metric));
    }
    Ok(TelemetryRecord {
        labels: labels.into_iter().collect(),
        ..record
    })
}

impl Source for DcgmSource {
    fn name(&self) -> String {
        format!("dcgm-exporter {}", self.url)
    }

    fn run(
        self: Box<Self>,
        sink: Sink,
        stop: CancellationToken,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move {
            let http = reqwest::Client::builder()
                .timeout(self.interval.max(Duration::from_secs(1)))
                .build()
                .map_err(|e| SourceError::Other(e.to_string()))?;
            let mut tick = tokio::time::interval(self.interval);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                let body = match http
                    .get(&self.url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(e) => {
                        sink.counters.scrape_error();
                        tracing::warn!(url = %self.url, error = %e, "scrape failed");
                        continue;
                    }
                };
                let ts = now_nanos();
                if sink.held().is_some() {
                    let samples = body.lines().filter(|l| l.starts_with("DCGM_")).count();
                    sink.skip_if_held(samples);
                    continue;
                }
                for (n, line) in body.lines().enumerate() {
                    let sample = match parse_line(line) {
                        Ok(Some(s)) => s,
                        Ok(None) => continue,
                        Err(reason) => {
                            sink.counters.read(1);
                            sink.counters.csv_error();
                            tracing::warn!(url = %self.url, line = n + 1, reason, "unparsable exposition line");
                            continue;
                        }
                    };
                    if !sample.name.starts_with("DCGM_") {
                        continue;
                    }
                    match to_record(sample, ts) {
                        Ok(r) => {
                            if !sink.send(r).await {
                                return Ok(());
                            }
                        }
                        Err(reason) => {
                            sink.counters.read(1);
                            if reason.starts_with("missing") {
                                sink.counters.missing();
                            } else {
                                sink.counters.invalid();
                            }
                            tracing::debug!(url = %self.url, line = n + 1, reason, "sample skipped");
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).
# TYPE DCGM_FI_DEV_GPU_TEMP gauge
DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-1",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="h1",DCGM_FI_DRIVER_VERSION="535.129.03",pod="a,b=\"c\"}"} 41
DCGM_FI_DEV_FB_FREE{gpu="1",UUID="GPU-2",device="nvidia1",modelName="NVIDIA H100 80GB HBM3",Hostname="h1"} 9223372036854775794
"#;

    #[test]
    fn parses_help_type_and_escaped_labels() {
        let samples: Vec<Sample> = SCRAPE
            .lines()
            .filter_map(|l| parse_line(l).unwrap())
            .collect();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].labels["pod"], "a,b=\"c\"}");
        let r = to_record(samples[0].clone(), 5).unwrap();
        assert_eq!(
            (
                r.hostname.as_str(),
                r.gpu_id.as_str(),
                r.uuid.as_str(),
                r.value
            ),
            ("h1", "0", "GPU-1", 41.0)
        );
        assert_eq!(r.pod, "a,b=\"c\"}");
        assert_eq!(r.labels["DCGM_FI_DRIVER_VERSION"], "535.129.03");
    }

    #[test]
    fn sentinels_are_missing_readings() {
        let s = parse_line(SCRAPE.lines().nth(3).unwrap()).unwrap().unwrap();
        assert!(to_record(s, 5).unwrap_err().starts_with("missing"));
    }

    #[test]
    fn timestamps_and_bad_lines() {
        let s = parse_line(r#"DCGM_X{gpu="0",Hostname="h"} 1.5 1752871354000"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            to_record(s, 0).unwrap().timestamp_unix_nano,
            1_752_871_354_000_000_000
        );
        assert!(parse_line(r#"DCGM_X{gpu="0" 1"#).is_err());
        assert!(parse_line("DCGM_X{} abc").is_err());
    }
}
