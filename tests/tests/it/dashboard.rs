//! The dashboard in a real headless Chromium, against the real binaries over real etcd, fed with
//! the real CSV. Chromium can reach loopback only (see `pipeline_tests::browser`), so every test
//! here also shows that the page needs nothing but the gateway.
//!
//! `UPDATE_SCREENSHOTS=1` writes the views' screenshots into `docs/img/`; otherwise they go to
//! `target/dashboard/`.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use pipeline_tests::browser::Browser;
use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{unique_prefix, wait_until};
use pipeline_tests::{sample_csv, EtcdCluster};
use serde_json::{json, Value};

use crate::readme::{becomes_ready, cmd, get, ready_gateway};

const HOST: &str = "mtv5-dgx1-hgpu-001";
const GPU: &str = "GPU-a20b4d58-9025-2046-b046-994dcd463641";
const TEMP: &str = "DCGM_FI_DEV_GPU_TEMP";

fn screenshot_path(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    if std::env::var("UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        root.join("docs/img").join(name)
    } else {
        root.join("target/dashboard").join(name)
    }
}

/// Temperature rows for GPU 0 of the first host, in the real CSV's format.
fn temperature_csv(rows: &[(DateTime<Utc>, f64)]) -> String {
    let header = std::fs::read_to_string(sample_csv()).unwrap();
    let header = header.lines().next().unwrap();
    let mut out = format!("{header}\n");
    for (at, value) in rows {
        let ts = at.to_rfc3339_opts(SecondsFormat::Secs, true);
        out.push_str(&format!(
            "\"{ts}\",\"{TEMP}\",\"0\",\"nvidia0\",\"{GPU}\",\"NVIDIA H100 80GB HBM3\",\"{HOST}\",\"\",\"\",\"\",\"{value}\",\"\"\n"
        ));
    }
    out
}

/// Publishes a CSV file once with `bin/streamer --csv`, as a user would, and waits for it.
async fn stream(eps: &[String], prefix: &str, dir: &std::path::Path, name: &str, csv: &str) {
    let path = dir.join(name);
    std::fs::write(&path, csv).unwrap();
    let mut s = Proc::spawn(
        "streamer",
        cmd("streamer", eps, prefix).arg("--csv").arg(&path),
    );
    let status = s.wait_exit(Duration::from_secs(60)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", s.stderr());
}

/// The fleet's latest temperatures from the API, as the page should show them.
async fn latest(base: &str) -> Vec<Value> {
    let (status, body) = get(&format!("{base}/api/v1/fleet/latest?metric={TEMP}"))
        .await
        .expect("fleet/latest");
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

/// Moves the mouse onto a GPU's cell of the grid, clicking it if asked.
async fn point_at(b: &Browser, uuid: &str, click: bool) {
    let at = b
        .js(
            "const c = window.dashboard.fleet.cellCenter(arguments[0]); if (!c) return null; \
             const r = document.getElementById('fleet-grid').getBoundingClientRect(); \
             window.scrollTo(0, 0); return [r.left + c.x, r.top + c.y];",
            vec![json!(uuid)],
        )
        .await;
    let at = at
        .as_array()
        .unwrap_or_else(|| panic!("no cell for {uuid}"));
    b.pointer(at[0].as_f64().unwrap(), at[1].as_f64().unwrap(), click)
        .await;
}

/// Points the mouse at a GPU's cell and returns the tooltip's text.
async fn hover(b: &Browser, uuid: &str) -> String {
    point_at(b, uuid, false).await;
    b.text("#fleet-tip").await
}

/// The colour painted at the centre of a GPU's cell, as `[r, g, b, a]`.
async fn pixel(b: &Browser, uuid: &str) -> Value {
    b.js(
        "const c = window.dashboard.fleet.cellCenter(arguments[0]); \
         const k = document.getElementById('fleet-grid'); const d = window.devicePixelRatio || 1; \
         return [...k.getContext('2d').getImageData(c.x * d, c.y * d, 1, 1).data];",
        vec![json!(uuid)],
    )
    .await
}

fn attr(css: &str, name: &str) -> String {
    format!(
        "const e = document.querySelector('{css}'); return e ? e.getAttribute('{name}') : null;"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_shows_the_real_fleet_live_and_a_gpu_chart_gets_its_points() {
    let etcd = EtcdCluster::single().await;
    let eps = etcd.endpoints();
    let prefix = unique_prefix("dashboard");
    let dir = tempfile::tempdir().unwrap();
    // The real CSV (July 2025) beside samples from now: retention counts back from the newest
    // sample, so it has to reach back to the CSV, or the CSV would expire mid-test.
    let _collector = Proc::spawn(
        "collector",
        cmd("collector", &eps, &prefix).env("TELEMETRY_RETENTION", "3650d"),
    );
    let (_gw, port) = ready_gateway(&eps, &prefix).await;
    let base = format!("http://127.0.0.1:{port}");

    // The real CSV, and 20 minutes of one GPU's temperature ending ten minutes ago.
    stream(
        &eps,
        &prefix,
        dir.path(),
        "real.csv",
        &std::fs::read_to_string(sample_csv()).unwrap(),
    )
    .await;
    let now = Utc::now();
    let history: Vec<_> = (0..20)
        .map(|k| (now - chrono::Duration::minutes(30 - k), 40.0 + k as f64))
        .collect();
    stream(
        &eps,
        &prefix,
        dir.path(),
        "history.csv",
        &temperature_csv(&history),
    )
    .await;
    let stored = wait_until(Duration::from_secs(60), || async {
        latest(&base).await.len() == 247
            && latest(&base)
                .await
                .iter()
                .any(|v| v["uuid"] == GPU && v["value"] == 59.0)
    })
    .await;
    assert!(
        stored,
        "the fleet was not stored: {:?}",
        latest(&base).await.len()
    );

    let b = Browser::start().await;
    b.client.goto(&format!("{base}/")).await.unwrap();
    let gpus = b
        .wait_js(
            &attr("#fleet-grid", "data-gpus"),
            Duration::from_secs(20),
            |v| v == "247",
        )
        .await;
    assert_eq!(gpus, "247", "the grid never showed the fleet");
    assert_eq!(b.js(&attr("#fleet-grid", "data-hosts"), vec![]).await, "31");
    let summary = b.text("#fleet-summary").await;
    assert!(summary.starts_with("247 GPUs on 31 hosts"), "{summary}");

    // Each GPU's cell says its host, index and latest temperature, as the API has them.
    let fleet = latest(&base).await;
    for v in fleet.iter().step_by(23) {
        let tip = hover(&b, v["uuid"].as_str().unwrap()).await;
        let want = format!(
            "{} · GPU {} · {} °C",
            v["hostname"].as_str().unwrap(),
            v["gpu_id"].as_str().unwrap(),
            v["value"].as_f64().unwrap()
        );
        assert!(tip.starts_with(&want), "tooltip {tip:?}, want {want:?}");
    }
    b.screenshot(&screenshot_path("dashboard-fleet.png")).await;

    // A record stored after the page loaded shows without a reload, in the tooltip and in the
    // cell's colour.
    let before = b.js(&attr("#fleet-grid", "data-updates"), vec![]).await;
    let colour = pixel(&b, GPU).await;
    stream(
        &eps,
        &prefix,
        dir.path(),
        "live.csv",
        &temperature_csv(&[(Utc::now(), 87.0)]),
    )
    .await;
    let shown = wait_until(Duration::from_secs(20), || async {
        hover(&b, GPU).await.contains("· 87 °C")
    })
    .await;
    assert!(
        shown,
        "the live record never reached the grid: {}",
        hover(&b, GPU).await
    );
    let after = b
        .wait_js(
            &attr("#fleet-grid", "data-updates"),
            Duration::from_secs(5),
            |v| v != &before,
        )
        .await;
    assert_ne!(before, after, "the grid was not updated live");
    let repainted = wait_until(Duration::from_secs(5), || async {
        pixel(&b, GPU).await != colour
    })
    .await;
    assert!(repainted, "the cell kept its colour {colour} at 87 °C");

    // Clicking the cell opens the GPU view: its temperature chart has the 20 historical
    // half-minute points and the live one, and a new sample is appended without a reload.
    point_at(&b, GPU, true).await;
    let chart = format!(".chart[data-metric=\"{TEMP}\"]");
    let points = b
        .wait_js(&attr(&chart, "data-points"), Duration::from_secs(20), |v| {
            v == "21"
        })
        .await;
    assert_eq!(points, "21", "the 1-hour chart of {GPU}");
    assert!(b.text("#gpu-title").await.contains("GPU 0 (nvidia0)"));
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#gpu-charts canvas').length > 0;",
            vec![]
        )
        .await,
        true,
        "no chart drawn"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stream(
        &eps,
        &prefix,
        dir.path(),
        "live2.csv",
        &temperature_csv(&[(Utc::now(), 88.0)]),
    )
    .await;
    let points = b
        .wait_js(&attr(&chart, "data-points"), Duration::from_secs(20), |v| {
            v == "22"
        })
        .await;
    assert_eq!(points, "22", "the live sample was not appended");
    b.screenshot(&screenshot_path("dashboard-gpu.png")).await;

    // The alerts view lists what the API lists.
    b.client.goto(&format!("{base}/#/alerts")).await.unwrap();
    let (_, alerts) = get(&format!("{base}/api/v1/alerts")).await.unwrap();
    let rows = b
        .wait_js(
            "return document.querySelectorAll('#alerts tbody tr[data-rule]').length;",
            Duration::from_secs(10),
            |v| v.as_u64() == alerts["count"].as_u64(),
        )
        .await;
    assert_eq!(rows.as_u64(), alerts["count"].as_u64(), "{alerts}");
    b.screenshot(&screenshot_path("dashboard-alerts.png")).await;

    // The pipeline view of this run, for the documentation (its checks are the next test's).
    b.client.goto(&format!("{base}/#/pipeline")).await.unwrap();
    b.wait_js(
        "return document.querySelectorAll('#members tbody tr').length;",
        Duration::from_secs(10),
        |v| v.as_u64() >= Some(2),
    )
    .await;
    b.screenshot(&screenshot_path("dashboard-pipeline.png"))
        .await;

    // Nothing the page loaded came from anywhere but the gateway.
    let origins = b
        .js(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).host);",
            vec![],
        )
        .await;
    let origins = origins.as_array().unwrap();
    assert!(!origins.is_empty());
    assert!(
        origins.iter().all(|h| h == &format!("127.0.0.1:{port}")),
        "{origins:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reference_renders_every_operation_offline() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("dashboard-docs");
    let (_gw, port) = ready_gateway(&etcd.endpoints(), &prefix).await;
    let base = format!("http://127.0.0.1:{port}");
    let (_, spec) = get(&format!("{base}/openapi.json")).await.unwrap();
    let operations: usize = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();

    let b = Browser::start().await;
    b.client.goto(&format!("{base}/docs")).await.unwrap();
    let shown = b
        .wait_js(
            "return document.querySelectorAll('.opblock').length;",
            Duration::from_secs(20),
            |v| v.as_u64() == Some(operations as u64),
        )
        .await;
    assert_eq!(
        shown.as_u64(),
        Some(operations as u64),
        "Swagger UI's operations"
    );
    let title = b.text(".info .title").await;
    assert!(title.contains("GPU telemetry gateway"), "{title}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_view_asks_for_a_token_and_only_an_admin_flips_the_kill_switch() {
    let mut etcd = EtcdCluster::single().await;
    let eps = etcd.endpoints();
    let prefix = unique_prefix("dashboard-kill");
    let token = |role: &str| crate::api_auth::create_token(&etcd, &prefix, role);
    let (read, admin) = (token("read"), token("admin"));
    let coll_admin = format!("127.0.0.1:{}", free_port());
    let _collector = Proc::spawn(
        "collector",
        cmd("collector", &eps, &prefix)
            .args(["--id", "coll-dash"])
            .env("ADMIN_LISTEN", &coll_admin),
    );
    assert!(becomes_ready(&coll_admin, 30).await);
    let port = free_port();
    let gw = Proc::spawn(
        "gateway",
        cmd("gateway", &eps, &prefix)
            .env("GATEWAY_PORT", port.to_string())
            .env("AUTH_MODE", "token"),
    );
    assert!(
        becomes_ready(&format!("127.0.0.1:{port}"), 30).await,
        "{}",
        gw.stderr()
    );
    let base = format!("http://127.0.0.1:{port}");

    // The page loads without a token, and asks for one when the API answers 401.
    let b = Browser::start().await;
    b.client.goto(&format!("{base}/#/pipeline")).await.unwrap();
    let asked = b
        .wait_js(
            "return document.getElementById('token-dialog').open;",
            Duration::from_secs(10),
            |v| v == true,
        )
        .await;
    assert_eq!(asked, true, "no token prompt");
    let enter = |secret: String| {
        let b = &b;
        async move {
            let input = b.element("#token-input").await;
            input.clear().await.unwrap();
            input.send_keys(&secret).await.unwrap();
            b.click("#token-form button[value=save]").await;
        }
    };
    enter(read.clone()).await;
    let members = b
        .wait_js(
            "return [...document.querySelectorAll('#members tbody tr')].map(r => r.dataset.role + ':' + r.dataset.id);",
            Duration::from_secs(10),
            |v| v.as_array().is_some_and(|a| a.len() == 2),
        )
        .await;
    let members: Vec<String> = serde_json::from_value(members).unwrap();
    assert!(
        members.contains(&"collector:coll-dash".to_string()),
        "{members:?}"
    );
    assert!(
        members.iter().any(|m| m.starts_with("gateway:")),
        "{members:?}"
    );
    assert_eq!(b.text("#kill-state").await, "on");

    // A read token cannot flip the switch, and the page says why.
    b.click("#kill-flip").await;
    b.click("#kill-confirm").await;
    let said = b
        .wait_js(
            "return document.getElementById('kill-message').textContent;",
            Duration::from_secs(10),
            |v| v.as_str().is_some_and(|s| s.contains("admin token")),
        )
        .await;
    assert!(
        said.as_str().unwrap().contains("needs an admin token"),
        "{said}"
    );
    let config = |t: String| {
        let base = base.clone();
        async move {
            let resp = reqwest::Client::new()
                .get(format!("{base}/api/v1/cluster"))
                .bearer_auth(t)
                .send()
                .await
                .unwrap();
            resp.json::<Value>().await.unwrap()["data"]["config"]["ingestion_enabled"].clone()
        }
    };
    assert_eq!(config(admin.clone()).await, true);

    // With an admin token it flips, and the collector stops being ready for ingestion.
    b.click("#token-button").await;
    enter(admin.clone()).await;
    b.click("#kill-flip").await;
    b.click("#kill-confirm").await;
    let off = b
        .wait_js(
            "return document.getElementById('kill-state').textContent;",
            Duration::from_secs(10),
            |v| v == "off",
        )
        .await;
    assert_eq!(off, "off", "{}", b.text("#kill-message").await);
    assert_eq!(config(admin.clone()).await, false);
    let paused = wait_until(Duration::from_secs(15), || async {
        get(&format!("http://{coll_admin}/ready"))
            .await
            .is_some_and(|(s, body)| s == 503 && body.to_string().contains("ingestion"))
    })
    .await;
    assert!(paused, "the collector did not apply the kill switch");

    // etcd going away is shown, with the gateway's reason, and clears once etcd is back.
    let banner_js =
        "const e = document.getElementById('banner'); return e.hidden ? '' : e.textContent;";
    etcd.kill(0);
    let banner = b
        .wait_js(banner_js, Duration::from_secs(30), |v| {
            v.as_str().is_some_and(|s| s.contains("cannot serve data"))
        })
        .await;
    assert!(
        banner
            .as_str()
            .unwrap()
            .contains("The gateway cannot serve data"),
        "{banner}"
    );
    etcd.restart(0).await;
    let cleared = b
        .wait_js(banner_js, Duration::from_secs(30), |v| v == "")
        .await;
    assert_eq!(cleared, "", "the banner stayed after etcd came back");

    // The gateway going away is shown, not a blank page.
    gw.signal(libc::SIGKILL);
    let banner = b
        .wait_js(banner_js, Duration::from_secs(15), |v| {
            v.as_str()
                .is_some_and(|s| s.contains("Cannot reach the gateway"))
        })
        .await;
    assert!(
        banner
            .as_str()
            .unwrap()
            .contains("Cannot reach the gateway"),
        "{banner}"
    );
}
