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
    let (tool, cached) = load_gateway(endpoints, prefix, secs, "64", None).await;
    let (_, paced) = load_gateway(endpoints, prefix, secs, "64", Some(PACED_RATE)).await;
    let (_, uncached) = load_gateway(endpoints, prefix, secs, "0", None).await;
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

/// Starts a gateway with `QUERY_CACHE_MB=cache_mb` and loads it: (tool, (req/s, p99 ms)).
pub(super) async fn load_gateway(
    endpoints: &[String],
    prefix: &str,
    secs: u64,
    cache_mb: &str,
    pace: Option<f64>,
) -> (String, (f64, f64)) {
    let port = free_port();
    let mut env = base_env(endpoints, prefix);
    env.push(("GATEWAY_PORT", port.to_string()));
    env.push(("RATE_LIMIT_RPS", "0".into()));
    env.push(("QUERY_CACHE_MB", cache_mb.into()));
    let gateway = Proc::spawn("gateway", &[], &env);
    let base = format!("http://127.0.0.1:{port}");
    let mut uuid = String::new();
    for _ in 0..400 {
        if let Ok(r) = reqwest::get(format!("{base}/api/v1/gpus")).await {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            if let Some(u) = v["data"][0]["uuid"].as_str() {
                uuid = u.to_string();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!uuid.is_empty(), "the gateway lists no GPU");
    let url = format!("{base}/api/v1/gpus/{uuid}/telemetry?limit=100");
    // Steady state, not start-up: with the cache on, until it serves hits (its watch is live).
    for _ in 0..200 {
        let hit = reqwest::get(&url)
            .await
            .is_ok_and(|r| r.headers().get("x-cache").is_some_and(|v| v == "hit"));
        if hit || cache_mb == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let out = match wrk(&url, secs, pace) {
        Some(figures) => ("wrk -t2 -c32".to_string(), figures),
        None => (
            "built-in (wrk not installed)".to_string(),
            builtin_load(&url, secs).await,
        ),
    };
    gateway.stop();
    out
}

/// The request rate of the paced run: the target's 5,000 req/s.
pub const PACED_RATE: f64 = 5_000.0;
const CONNECTIONS: f64 = 32.0;

/// wrk at saturation, or paced near `pace` req/s: each connection waits `32 / pace` s after a
/// response before its next request (wrk's `delay()` hook), so latency is measured at that load
/// rather than at the machine's limit. (req/s achieved, p99 ms).
fn wrk(url: &str, secs: u64, pace: Option<f64>) -> Option<(f64, f64)> {
    let script = tempfile::Builder::new().suffix(".lua").tempfile().ok()?;
    let mut args = vec![
        "-t2".to_string(),
        format!("-c{CONNECTIONS}"),
        format!("-d{secs}s"),
        "--latency".to_string(),
    ];
    if let Some(rate) = pace {
        let delay_ms = CONNECTIONS * 1000.0 / rate;
        std::fs::write(
            script.path(),
            format!("function delay()\n  return {delay_ms:.3}\nend\n"),
        )
        .ok()?;
        args.push("-s".into());
        args.push(script.path().display().to_string());
    }
    args.push(url.to_string());
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
async fn builtin_load(url: &str, secs: u64) -> (f64, f64) {
    let client = reqwest::Client::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    if client
                        .get(&url)
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
