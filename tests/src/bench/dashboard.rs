//! `bench --dashboard` (issue 17): the dashboard's first load in a real headless Chromium, and
//! what 100 open dashboards on live data cost the gateway, both against baselines of the same
//! run.
//!
//! One collector and the gateway run over a fresh etcd; a looping streamer replays the real CSV
//! with fresh timestamps at `RATE` records/s, so every GPU's temperature changes live.
//! - First load: a new browser (cold cache) opens `/` until the grid is first drawn with data
//!   (the page's `fleet-drawn` mark), and once more warm (a reload, answered with 304s). The
//!   baseline is the same browser loading a page with nothing in it (`/health`).
//! - 100 dashboards: each is what an open fleet view asks of the gateway: one `fleet/latest`,
//!   a WebSocket on the temperature with alerts, and the alerts every 10 s. The gateway's CPU
//!   and memory, the store rate and the frames delivered are measured with none open, then
//!   with 100.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use super::procs::{counter_sum, cpu_seconds, free_port, rss_mb, Proc};
use super::scenarios::{base_env, generate, start_collectors};
use crate::browser::Browser;
use crate::{sample_csv, EtcdCluster};

const PREFIX: &str = "/bench";
const RATE: u64 = 1000;
const TEMP: &str = "DCGM_FI_DEV_GPU_TEMP";

/// What `--dashboard` measured.
#[derive(Debug, Default, Serialize)]
pub struct Dashboard {
    pub gpus: usize,
    /// Cold first loads: ms to the first drawn grid, ms to DOMContentLoaded, bytes transferred.
    pub cold: Vec<(f64, f64, f64)>,
    /// Warm reloads: ms to the first drawn grid, bytes transferred.
    pub warm: Vec<(f64, f64)>,
    /// A page of the gateway with nothing in it (`/health`) in the same browser, ms.
    pub blank_ms: Vec<f64>,
    pub phase_secs: u64,
    pub idle: Phase,
    pub loaded: Phase,
    pub dashboards: usize,
    /// The cold load of a fleet of 25,000 GPUs more.
    pub big: Option<Big>,
}

/// A cold load of a large fleet.
#[derive(Debug, Default, Serialize)]
pub struct Big {
    pub gpus: usize,
    pub drawn_ms: f64,
    pub bytes: f64,
    /// One paint of the whole grid, ms.
    pub full_draw_ms: f64,
    /// One repaint of the cells live frames changed (at most four a second), ms.
    pub draw_ms: f64,
}

/// One measuring window.
#[derive(Debug, Default, Serialize)]
pub struct Phase {
    pub gateway_cpu_pct: f64,
    pub gateway_rss_mb: f64,
    pub stored_per_sec: f64,
    pub frames_per_sec: f64,
    pub frames_dropped: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub async fn run(quick: bool) {
    let etcd = EtcdCluster::start(1, &["--quota-backend-bytes", "8589934592"]).await;
    let eps = etcd.all_endpoints();
    let (collectors, ports) = start_collectors(1, &eps, PREFIX);
    let port = free_port();
    let mut env = base_env(&eps, PREFIX);
    env.push(("GATEWAY_PORT", port.to_string()));
    env.push(("WS_MAX_CONNECTIONS", "1000".to_string()));
    env.push(("RATE_LIMIT_RPS", "0".to_string()));
    let gateway = Proc::spawn("gateway", &[], &env);
    let base = format!("http://127.0.0.1:{port}");
    let mut streamer_env = base_env(&eps, PREFIX);
    streamer_env.push(("STREAM_RATE", RATE.to_string()));
    streamer_env.push(("ADMIN_LISTEN", format!("127.0.0.1:{}", free_port())));
    let csv = sample_csv().display().to_string();
    let streamer = Proc::spawn("streamer", &["--csv", &csv, "--loop"], &streamer_env);
    let http = reqwest::Client::new();
    let mut report = Dashboard {
        phase_secs: if quick { 5 } else { 20 },
        dashboards: 100,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while report.gpus < 247 {
        assert!(
            Instant::now() < deadline,
            "the fleet was not stored within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        report.gpus = latest(&http, &base).await.map_or(0, |v| v.len());
    }

    let loads = if quick { 2 } else { 5 };
    eprintln!("first load: {loads} cold loads in a new Chromium each, then a warm reload");
    for _ in 0..loads {
        let b = Browser::start().await;
        // The browser's own cost of one page from the gateway: `/health`, once to start up.
        for _ in 0..2 {
            b.client
                .goto(&format!("{base}/health"))
                .await
                .expect("open /health");
        }
        let blank = b
            .js(
                "return performance.getEntriesByType('navigation')[0].loadEventEnd;",
                vec![],
            )
            .await;
        report
            .blank_ms
            .push(blank.as_f64().expect("navigation timing"));
        b.client
            .goto(&format!("{base}/"))
            .await
            .expect("open the dashboard");
        let cold = timing(&b).await;
        report.cold.push((cold[0], cold[1], cold[2]));
        b.client.refresh().await.expect("reload");
        let warm = timing(&b).await;
        report.warm.push((warm[0], warm[2]));
    }

    eprintln!(
        "gateway cost: {} s with no dashboard, then {} s with {}",
        report.phase_secs, report.phase_secs, report.dashboards
    );
    let frames = Arc::new(AtomicU64::new(0));
    report.idle = phase(&gateway, &ports, port, &frames, report.phase_secs).await;
    let tasks: Vec<_> = (0..report.dashboards)
        .map(|_| tokio::spawn(dashboard(base.clone(), port, frames.clone())))
        .collect();
    // Let every dashboard load and connect before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    report.loaded = phase(&gateway, &ports, port, &frames, report.phase_secs).await;
    tasks.iter().for_each(|t| t.abort());

    // A fleet of 25,000 GPUs more (one scrape each), then a cold load of the whole grid.
    let big = if quick { 2_500 } else { 25_000 };
    eprintln!("a fleet of {big} GPUs more: storing it, then a cold load");
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = dir.path().join("fleet.csv");
    let big = big / 8 * 8;
    generate(&fleet, big / 8, 1, 7);
    let mut one_pass = Proc::spawn(
        "streamer",
        &["--csv", &fleet.display().to_string()],
        &base_env(&eps, PREFIX),
    );
    let _ = one_pass.child.wait();
    let deadline = Instant::now() + Duration::from_secs(600);
    let want = report.gpus + big;
    while latest(&http, &base).await.map_or(0, |v| v.len()) < want {
        assert!(
            Instant::now() < deadline,
            "the big fleet was not stored within 10 min"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let b = Browser::start().await;
    b.client
        .goto(&format!("{base}/"))
        .await
        .expect("open the dashboard");
    let t = timing(&b).await;
    // The looping streamer still runs: after the first full paint, live frames repaint only
    // their own cells.
    let draws = b
        .wait_js(
            &format!(
                "const c = document.getElementById('fleet-grid'); \
                 return c.dataset.gpus === '{want}' && c.dataset.drawMs ? [Number(c.dataset.fullDrawMs), Number(c.dataset.drawMs)] : null;"
            ),
            Duration::from_secs(30),
            |v| v.is_array(),
        )
        .await;
    let draws: Vec<f64> = serde_json::from_value(draws).unwrap_or_default();
    report.big = Some(Big {
        gpus: want,
        drawn_ms: t[0],
        bytes: t[2],
        full_draw_ms: draws.first().copied().unwrap_or(f64::NAN),
        draw_ms: draws.get(1).copied().unwrap_or(f64::NAN),
    });
    drop(b);
    streamer.stop();
    collectors.into_iter().for_each(|p| p.stop());
    gateway.stop();
    println!("{}", table(&report));
    super::write_results("dashboard", &report);
}

async fn latest(http: &reqwest::Client, base: &str) -> Option<Vec<Value>> {
    let body: Value = http
        .get(format!("{base}/api/v1/fleet/latest?metric={TEMP}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["data"].as_array().cloned()
}

/// [ms to the first drawn grid, ms to DOMContentLoaded, bytes transferred] of the page shown.
async fn timing(b: &Browser) -> Vec<f64> {
    let got = b
        .wait_js(
            "const d = performance.getEntriesByName('fleet-drawn')[0]; if (!d) return null; \
             const n = performance.getEntriesByType('navigation')[0]; \
             const bytes = performance.getEntriesByType('resource').reduce((a, e) => a + e.transferSize, n.transferSize); \
             return [d.startTime, n.domContentLoadedEventEnd, bytes];",
            Duration::from_secs(30),
            |v| v.is_array(),
        )
        .await;
    let got: Vec<f64> = serde_json::from_value(got).expect("the grid was never drawn");
    got
}

/// One open fleet view's traffic: the first read, the live stream, and the alerts poll.
async fn dashboard(base: String, port: u16, frames: Arc<AtomicU64>) {
    let http = reqwest::Client::new();
    let _ = latest(&http, &base).await;
    let url = format!("ws://127.0.0.1:{port}/api/v1/ws/telemetry?metric={TEMP}&include=alerts");
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return;
    };
    let mut poll = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(m)) if m.is_text() => {
                    let n = match serde_json::from_slice::<Value>(&m.into_data()) {
                        Ok(Value::Array(a)) => a.len() as u64,
                        Ok(_) => 1,
                        Err(_) => 0,
                    };
                    frames.fetch_add(n, Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            _ = poll.tick() => {
                let _ = http.get(format!("{base}/api/v1/alerts?state=firing")).send().await;
            }
        }
    }
}

async fn phase(gateway: &Proc, ports: &[u16], port: u16, frames: &AtomicU64, secs: u64) -> Phase {
    let pid = gateway.child.id();
    let (cpu0, stored0, f0) = (
        cpu_seconds(pid),
        counter_sum(ports, "messages_processed").await,
        frames.load(Ordering::Relaxed),
    );
    let dropped0 = counter_sum(&[port], "ws_frames_dropped").await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let s = t.elapsed().as_secs_f64();
    Phase {
        gateway_cpu_pct: (cpu_seconds(pid) - cpu0) / s * 100.0,
        gateway_rss_mb: rss_mb(pid),
        stored_per_sec: (counter_sum(ports, "messages_processed").await - stored0) / s,
        frames_per_sec: (frames.load(Ordering::Relaxed) - f0) as f64 / s,
        frames_dropped: counter_sum(&[port], "ws_frames_dropped").await - dropped0,
    }
}

fn table(r: &Dashboard) -> String {
    let cold = median(r.cold.iter().map(|c| c.0).collect());
    let dcl = median(r.cold.iter().map(|c| c.1).collect());
    let bytes = median(r.cold.iter().map(|c| c.2).collect());
    let warm = median(r.warm.iter().map(|w| w.0).collect());
    let warm_bytes = median(r.warm.iter().map(|w| w.1).collect());
    let blank = median(r.blank_ms.clone());
    let (i, l) = (&r.idle, &r.loaded);
    let temp_per_sec = l.stored_per_sec / 10.0;
    let mut out = format!(
        "Dashboard ({} GPUs, live ingest of {RATE} records/s)\n\
         first load, cold (median of {}): grid drawn {cold:.0} ms, DOMContentLoaded {dcl:.0} ms, {:.0} KB transferred\n\
         first load, warm reload:        grid drawn {warm:.0} ms, {:.1} KB transferred\n\
         baseline, /health in the same browser: {blank:.1} ms; cold load = {:.1}x it\n",
        r.gpus,
        r.cold.len(),
        bytes / 1024.0,
        warm_bytes / 1024.0,
        cold / blank
    );
    out += &format!(
        "{:<34}{:>12}{:>16}{:>9}\n",
        "gateway, per measuring window",
        "none open",
        format!("{} open", r.dashboards),
        "ratio"
    );
    let row = |name: &str, a: f64, b: f64| format!("{name:<34}{a:>12.1}{b:>16.1}{:>8.2}x\n", b / a);
    out += &row("CPU (% of one core)", i.gateway_cpu_pct, l.gateway_cpu_pct);
    out += &row("resident memory (MB)", i.gateway_rss_mb, l.gateway_rss_mb);
    out += &row(
        "records stored/s (pipeline)",
        i.stored_per_sec,
        l.stored_per_sec,
    );
    out += &format!(
        "frames delivered/s: {:.0} in all, {:.1} per dashboard against {:.1} temperatures stored/s ({:.2}x); {} dropped\n",
        l.frames_per_sec,
        l.frames_per_sec / r.dashboards as f64,
        temp_per_sec,
        l.frames_per_sec / r.dashboards as f64 / temp_per_sec,
        l.frames_dropped
    );
    if let Some(b) = &r.big {
        out += &format!(
            "a fleet of {} GPUs, cold: grid drawn {:.0} ms ({:.1}x the /health baseline), {:.0} KB transferred;\n  \
             one full paint {:.1} ms, one live repaint {:.1} ms\n",
            b.gpus,
            b.drawn_ms,
            b.drawn_ms / blank,
            b.bytes / 1024.0,
            b.full_draw_ms,
            b.draw_ms
        );
    }
    out
}
