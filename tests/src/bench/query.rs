//! Gateway query throughput under a real load tool.

use std::time::Duration;

use tokio::time::Instant;

use super::procs::{free_port, Proc};
use super::scenarios::base_env;
use super::{quantile, Query};

/// Gateway throughput for one GPU's telemetry, driven by wrk when it is installed: once as a
/// dashboard sees it (the query cache on, the default) and once with every request read from
/// etcd (`QUERY_CACHE_MB=0`).
pub async fn query(endpoints: &[String], prefix: &str, stored: i64, secs: u64) -> Query {
    let (tool, cached) = load_gateway(endpoints, prefix, secs, &Load::cached()).await;
    let paced = Load {
        pace: Some(PACED_RATE),
        ..Load::cached()
    };
    let (_, paced) = load_gateway(endpoints, prefix, secs, &paced).await;
    let (_, uncached) = load_gateway(endpoints, prefix, secs, &Load::uncached()).await;
    Query {
        tool,
        stored_records: stored,
        requests_per_s: cached.0,
        p99_ms: cached.1,
        paced_requests_per_s: paced.0,
        paced_p99_ms: paced.1,
        uncached_requests_per_s: uncached.0,
        uncached_p99_ms: uncached.1,
    }
}

/// How a gateway is loaded.
pub struct Load {
    /// `QUERY_CACHE_MB`.
    pub query_cache_mb: &'static str,
    /// `CHUNK_CACHE_MB`.
    pub chunk_cache_mb: &'static str,
    /// Paced near this many req/s (see [`wrk`]); `None`: at saturation.
    pub pace: Option<f64>,
    /// One GPU's first page (`false`), or a different GPU and start time at each request
    /// (`true`): every GPU, at [`SPREAD_STARTS`] instants spread over its data, as dashboards
    /// that look at different GPUs and times would ask.
    pub spread: bool,
}

impl Load {
    /// The gateway's defaults: one GPU's first page, as a dashboard's refreshes read it.
    pub fn cached() -> Self {
        Self {
            query_cache_mb: "64",
            chunk_cache_mb: "64",
            pace: None,
            spread: false,
        }
    }

    /// Every request read from etcd (`QUERY_CACHE_MB=0`; decoded chunks still shared).
    pub fn uncached() -> Self {
        Self {
            query_cache_mb: "0",
            ..Self::cached()
        }
    }
}

/// Start times per GPU of a spread load.
pub const SPREAD_STARTS: usize = 16;

/// Starts a gateway configured as `load` says and loads it: (tool, (req/s, p99 ms)).
pub(super) async fn load_gateway(
    endpoints: &[String],
    prefix: &str,
    secs: u64,
    load: &Load,
) -> (String, (f64, f64)) {
    let port = free_port();
    let mut env = base_env(endpoints, prefix);
    env.push(("GATEWAY_PORT", port.to_string()));
    env.push(("RATE_LIMIT_RPS", "0".into()));
    env.push(("QUERY_CACHE_MB", load.query_cache_mb.into()));
    env.push(("CHUNK_CACHE_MB", load.chunk_cache_mb.into()));
    let gateway = Proc::spawn("gateway", &[], &env);
    let base = format!("http://127.0.0.1:{port}");
    let mut gpus = Vec::new();
    for _ in 0..400 {
        if let Ok(r) = reqwest::get(format!("{base}/api/v1/gpus")).await {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            gpus = v["data"].as_array().cloned().unwrap_or_default();
            if !gpus.is_empty() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!gpus.is_empty(), "the gateway lists no GPU");
    let uuid = gpus[0]["uuid"].as_str().unwrap_or_default();
    let url = format!("{base}/api/v1/gpus/{uuid}/telemetry?limit=100");
    // Steady state, not start-up: with the cache on, until it serves hits (its watch is live).
    for _ in 0..200 {
        let hit = reqwest::get(&url)
            .await
            .is_ok_and(|r| r.headers().get("x-cache").is_some_and(|v| v == "hit"));
        if hit || load.query_cache_mb == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let paths = if load.spread {
        spread_paths(&base, &gpus).await
    } else {
        vec![url.trim_start_matches(&base).to_string()]
    };
    let out = match wrk(&base, &paths, secs, load.pace) {
        Some(figures) => ("wrk -t2 -c32".to_string(), figures),
        None => (
            "built-in (wrk not installed)".to_string(),
            builtin_load(&base, &paths, secs).await,
        ),
    };
    gateway.stop();
    out
}

/// Telemetry paths over every GPU, each at [`SPREAD_STARTS`] start times evenly spread between
/// its first sample and its `last_seen`, in an order that changes GPU at every request.
async fn spread_paths(base: &str, gpus: &[serde_json::Value]) -> Vec<String> {
    let mut spans = Vec::new();
    for g in gpus {
        let uuid = g["uuid"].as_str().unwrap_or_default().to_string();
        let first: serde_json::Value =
            reqwest::get(format!("{base}/api/v1/gpus/{uuid}/telemetry?limit=1"))
                .await
                .expect("first sample")
                .json()
                .await
                .expect("json");
        let time = |v: &serde_json::Value| {
            chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default()).ok()
        };
        if let (Some(a), Some(b)) = (time(&first["data"][0]["timestamp"]), time(&g["last_seen"])) {
            spans.push((uuid, a, b));
        }
    }
    assert!(!spans.is_empty(), "no GPU has a first sample");
    let mut paths = Vec::new();
    for k in 0..SPREAD_STARTS {
        for (uuid, a, b) in &spans {
            let at = *a + (*b - *a) * k as i32 / SPREAD_STARTS as i32;
            let at = at
                .to_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            paths.push(format!(
                "/api/v1/gpus/{uuid}/telemetry?limit=100&start_time={at}"
            ));
        }
    }
    paths
}

/// The request rate of the paced run: the target's 5,000 req/s.
pub const PACED_RATE: f64 = 5_000.0;
const CONNECTIONS: f64 = 32.0;

/// wrk at saturation, or paced near `pace` req/s: each connection waits `32 / pace` s after a
/// response before its next request (wrk's `delay()` hook), so latency is measured at that load
/// rather than at the machine's limit. (req/s achieved, p99 ms).
fn wrk(base: &str, paths: &[String], secs: u64, pace: Option<f64>) -> Option<(f64, f64)> {
    wrk_with(base, paths, secs, pace, None)
}

/// [`wrk`] with one more request header (`Authorization: Bearer ...`), over http or https.
pub(super) fn wrk_with(
    base: &str,
    paths: &[String],
    secs: u64,
    pace: Option<f64>,
    header: Option<&str>,
) -> Option<(f64, f64)> {
    let script = tempfile::Builder::new().suffix(".lua").tempfile().ok()?;
    let mut lua = String::new();
    if let Some(rate) = pace {
        let delay_ms = CONNECTIONS * 1000.0 / rate;
        lua.push_str(&format!("function delay()\n  return {delay_ms:.3}\nend\n"));
    }
    if paths.len() > 1 {
        // Each wrk thread walks the list from its own place.
        lua.push_str("paths = {\n");
        for p in paths {
            lua.push_str(&format!("  {p:?},\n"));
        }
        lua.push_str("}\ni = math.random(#paths)\n");
        lua.push_str("function request()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n");
    }
    std::fs::write(script.path(), lua).ok()?;
    let mut args = vec![
        "-t2".to_string(),
        format!("-c{CONNECTIONS}"),
        format!("-d{secs}s"),
        "--latency".to_string(),
        "-s".into(),
        script.path().display().to_string(),
        format!("{base}{}", paths[0]),
    ];
    if let Some(h) = header {
        args.splice(0..0, ["-H".to_string(), h.to_string()]);
    }
    let out = std::process::Command::new("wrk")
        .args(&args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))?
        .split_whitespace()
        .nth(1)?;
    Some((rps, parse_wrk_duration(p99)?))
}

fn parse_wrk_duration(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// 32 concurrent keep-alive clients in this process (used when wrk is not installed).
async fn builtin_load(base: &str, paths: &[String], secs: u64) -> (f64, f64) {
    load_with(reqwest::Client::new(), base, paths, secs).await
}

/// 32 concurrent keep-alive clients of `client` (its TLS roots and headers) in this process:
/// requests per second and the p99 in ms.
pub(super) async fn load_with(
    client: reqwest::Client,
    base: &str,
    paths: &[String],
    secs: u64,
) -> (f64, f64) {
    let end = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..32)
        .map(|c| {
            let client = client.clone();
            let urls: Vec<String> = paths.iter().map(|p| format!("{base}{p}")).collect();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = c;
                while Instant::now() < end {
                    let t = Instant::now();
                    i = (i + 1) % urls.len();
                    if client
                        .get(&urls[i])
                        .send()
                        .await
                        .and_then(|r| r.error_for_status())
                        .is_ok()
                    {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    (all.len() as f64 / secs as f64, quantile(&all, 0.99))
}
