//! `make bench-folding`: the folded store's figures (issue 14), each against a baseline of the
//! same run.
//!
//! 1. etcd's raw write ceiling, then ingest with folding on against off (the same file, the
//!    same fresh etcd settings, alternated twice).
//! 2. A soak on a 256 MiB quota: a generated fleet shaped like the real CSV (31 hosts x 8
//!    H100s, ten metrics, random walks at DCGM's precision, a 10 s scrape), streamed from a
//!    pipe so that twenty million samples never sit in a file, stamped in the past so that its
//!    windows are closed. Peak `dbSize`, NOSPACE, expiry by budget; at the end, once folded,
//!    compacted and defragmented, `dbSize` over the samples stored: the bytes per sample at rest.
//! 3. The same samples backfilled into Prometheus's TSDB with `promtool tsdb
//!    create-blocks-from openmetrics`: the anchor.
//! 4. Telemetry queries (limit 100, query cache off) over the folded store.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{AlarmAction, AlarmType, CompactionOptions};
use serde::Serialize;
use tokio::time::Instant;

use super::procs::{counter_sum, free_port, release_binary, Proc};
use super::query::Load;
use super::scenarios::base_env;
use crate::EtcdCluster;

const QUOTA: u64 = 256 * 1024 * 1024;
const BIG_QUOTA: u64 = 8 * 1024 * 1024 * 1024;
/// The soak's fold window. A window is folded once complete, so the raw tier holds up to a
/// window and a fold's delay of the whole fleet: at ~780 B a raw sample, an hour of 248 GPUs
/// (893,000 samples) is 2.6 times the 256 MiB quota. Five minutes is 74,400 samples.
const WINDOW: &str = "5m";
const HOSTS: usize = 31;
const GPUS: usize = 8;
const START: &str = "2025-01-01T00:00:00Z";

/// What the run measured.
#[derive(Debug, Default, Serialize)]
pub struct Folding {
    pub ceiling_keys_per_s: f64,
    pub ingest_off: Vec<f64>,
    pub ingest_on: Vec<f64>,
    pub soak_samples: u64,
    pub soak_seconds: f64,
    pub quota_bytes: u64,
    pub peak_db_size_bytes: i64,
    pub alarm_seen_in_samples: u64,
    pub samples_expired_budget: u64,
    pub samples_folded: u64,
    pub chunks_written: u64,
    pub stored_at_end: i64,
    pub db_size_at_rest_bytes: i64,
    pub db_in_use_at_rest_bytes: i64,
    pub prometheus_block_bytes: Option<u64>,
    /// Message states under `trace/` when the soak ended (keys, bytes), with
    /// `MESSAGE_STATE_TTL` at [`SOAK_STATE_TTL`]; deleted before the store is measured at rest.
    pub message_states_at_end: Option<(u64, u64)>,
    /// What is left at rest under the soak's prefix, by area (telemetry by tier, the rest by
    /// first path segment):
    /// (area, keys, bytes of keys and values).
    pub at_rest_areas: Vec<(String, u64, u64)>,
    /// Query loads over the folded store, all with the query cache off: (what, req/s, p99 ms).
    pub queries: Vec<(String, f64, f64)>,
}

/// `streamer generate` of the fleet, `steps` scrapes from [`START`], into `out` (a pipe).
fn generate(out: &Path, steps: usize) -> Child {
    Command::new(release_binary("streamer"))
        .args(["generate", "--hosts", &HOSTS.to_string()])
        .args(["--gpus-per-host", &GPUS.to_string(), "--interval", "10s"])
        .args([
            "--steps",
            &steps.to_string(),
            "--start",
            START,
            "--seed",
            "7",
        ])
        .arg("--out")
        .arg(out)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("streamer generate")
}

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let ok = Command::new("mkfifo")
        .arg(&p)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo {}", p.display());
    p
}

/// How long the soak's collector keeps message states: short, so that the store measured at
/// rest is the telemetry's (states are a fixed hour of messages by default, whatever the
/// retention; the soak reports what they held before they went).
const SOAK_STATE_TTL: &str = "1m";

/// A collector folding or not, on a `quota`; `state_ttl` sets `MESSAGE_STATE_TTL`.
fn collector(
    eps: &[String],
    prefix: &str,
    (fold, quota): (bool, u64),
    state_ttl: Option<&str>,
) -> (Proc, u16) {
    let port = free_port();
    let mut env = base_env(eps, prefix);
    if let Some(ttl) = state_ttl {
        env.push(("MESSAGE_STATE_TTL", ttl.to_string()));
    }
    env.push(("ADMIN_LISTEN", format!("127.0.0.1:{port}")));
    env.push(("STORAGE_FOLD", fold.to_string()));
    env.push(("STORAGE_FOLD_WINDOW", WINDOW.to_string()));
    env.push(("ETCD_QUOTA_BYTES", quota.to_string()));
    (Proc::spawn("collector", &[], &env), port)
}

async fn processed(port: u16) -> u64 {
    (counter_sum(&[port], "messages_processed").await
        + counter_sum(&[port], "messages_duplicated").await) as u64
}

/// Ingest of `steps` scrapes of the fleet with folding on or off: samples per second.
async fn ingest(dir: &Path, steps: usize, fold: bool) -> f64 {
    let samples = (HOSTS * GPUS * steps * 10) as u64;
    let etcd = EtcdCluster::start(1, &["--quota-backend-bytes", &BIG_QUOTA.to_string()]).await;
    let eps = etcd.all_endpoints();
    let (coll, port) = collector(&eps, "/fold", (fold, BIG_QUOTA), None);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let pipe = fifo(dir, &format!("ingest-{fold}-{n}.csv"));
    let mut gen = generate(&pipe, steps);
    let mut env = base_env(&eps, "/fold");
    env.push(("ADMIN_LISTEN", String::new()));
    let started = Instant::now();
    let streamer = Proc::spawn("streamer", &["--csv", pipe.to_str().unwrap()], &env);
    while processed(port).await < samples {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "ingest did not finish"
        );
    }
    let rate = samples as f64 / started.elapsed().as_secs_f64();
    let _ = gen.wait();
    streamer.stop();
    coll.stop();
    rate
}

/// Writes the fleet's `steps` scrapes as OpenMetrics, with dcgm-exporter's labels.
fn openmetrics(dir: &Path, steps: usize) -> PathBuf {
    let pipe = fifo(dir, "prom.csv");
    let mut gen = generate(&pipe, steps);
    let out = dir.join("samples.om");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&out).expect("openmetrics file"));
    let csv = std::io::BufReader::new(std::fs::File::open(&pipe).expect("open pipe"));
    for r in streamer::dcgm_csv::DcgmCsvReader::new(csv)
        .expect("csv header")
        .flatten()
    {
        writeln!(
            w,
            "{}{{gpu=\"{}\",UUID=\"{}\",device=\"{}\",modelName=\"{}\",Hostname=\"{}\"}} {} {}.{:03}",
            r.metric,
            r.gpu_id,
            r.uuid,
            r.device,
            r.model,
            r.hostname,
            r.value,
            r.timestamp_unix_nano.div_euclid(1_000_000_000),
            r.timestamp_unix_nano.rem_euclid(1_000_000_000) / 1_000_000
        )
        .expect("write openmetrics");
    }
    writeln!(w, "# EOF").expect("write openmetrics");
    w.flush().expect("write openmetrics");
    let _ = gen.wait();
    out
}

/// The bytes of the blocks `promtool` builds from the same samples (None without promtool).
fn prometheus_bytes(dir: &Path, steps: usize) -> Option<u64> {
    let promtool = which("promtool")?;
    let input = openmetrics(dir, steps);
    let blocks = dir.join("prom-blocks");
    let ok = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&blocks)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&input);
    ok.then(|| dir_bytes(&blocks))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// The soak (see the module's comment); fills in `f`.
async fn soak(dir: &Path, steps: usize, f: &mut Folding) {
    let samples = (HOSTS * GPUS * steps * 10) as u64;
    let etcd = EtcdCluster::start(1, &["--quota-backend-bytes", &QUOTA.to_string()]).await;
    let eps = etcd.all_endpoints();
    let client = etcd.client().await;
    let (coll, port) = collector(&eps, "/soak", (true, QUOTA), Some(SOAK_STATE_TTL));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pipe = fifo(dir, "soak.csv");
    let mut gen = generate(&pipe, steps);
    let mut env = base_env(&eps, "/soak");
    env.push(("ADMIN_LISTEN", String::new()));
    let streamer = Proc::spawn("streamer", &["--csv", pipe.to_str().unwrap()], &env);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut done = 0;
    while done < samples {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut c = client.clone();
        if let Ok(st) = c.status().await {
            f.peak_db_size_bytes = f.peak_db_size_bytes.max(st.db_size());
        }
        if let Ok(a) = c.alarm(AlarmAction::Get, AlarmType::None, None).await {
            if a.alarms().iter().any(|a| a.alarm() == AlarmType::Nospace) {
                f.alarm_seen_in_samples += 1;
            }
        }
        done = processed(port).await;
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            eprintln!(
                "      {done} of {samples} samples ({:.0}/s), {} folded, peak dbSize {:.1} MiB",
                done as f64 / started.elapsed().as_secs_f64(),
                counter_sum(&[port], "samples_folded").await,
                f.peak_db_size_bytes as f64 / 1048576.0
            );
        }
        let bound = Duration::from_secs((samples / 2_000).max(600));
        assert!(
            started.elapsed() < bound,
            "the soak processed {done} of {samples} in {bound:?}"
        );
    }
    f.soak_samples = done;
    f.soak_seconds = started.elapsed().as_secs_f64();
    let _ = gen.wait();
    streamer.stop();
    // The last window folds once its GPUs are quiet.
    let raw = "/soak/telemetry/data/";
    for _ in 0..600 {
        if crate::services::count(&client, raw).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Message states of the last minute of the soak, then none once the maintainer's sweep
    // has deleted them past their TTL.
    let states = "/soak/trace/";
    let mut held = (0, 0);
    scan(&client, states, |_, bytes| {
        held = (held.0 + 1, held.1 + bytes)
    })
    .await;
    f.message_states_at_end = Some(held);
    for _ in 0..600 {
        if crate::services::count(&client, states).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    f.samples_expired_budget = counter_sum(&[port], "samples_expired").await as u64;
    f.samples_folded = counter_sum(&[port], "samples_folded").await as u64;
    f.chunks_written = counter_sum(&[port], "chunks_written").await as u64;
    f.stored_at_end = crate::checks::stored(&client, raw).await;
    let mut c = client.clone();
    let rev = c
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .revision();
    let _ = c
        .compact(rev, Some(CompactionOptions::new().with_physical()))
        .await;
    c.defragment().await.expect("defragment");
    let st = c.status().await.expect("status");
    f.db_size_at_rest_bytes = st.db_size();
    f.db_in_use_at_rest_bytes = st.raft_used_db_size();
    f.at_rest_areas = areas(&client, "/soak/").await;
    query_loads(&eps, "/soak", &mut f.queries).await;
    coll.stop();
}

/// Keys and their bytes under `prefix`, telemetry by tier and the rest by first path segment,
/// so that the bytes per sample at rest can be told apart from what else the pipeline keeps.
async fn areas(client: &etcd_client::Client, prefix: &str) -> Vec<(String, u64, u64)> {
    let mut by_area = std::collections::BTreeMap::<String, (u64, u64)>::new();
    scan(client, prefix, |key, bytes| {
        let depth = if key.starts_with("telemetry/") { 2 } else { 1 };
        let area: Vec<&str> = key.splitn(depth + 1, '/').take(depth).collect();
        let e = by_area.entry(area.join("/")).or_default();
        e.0 += 1;
        e.1 += bytes;
    })
    .await;
    by_area.into_iter().map(|(a, (k, b))| (a, k, b)).collect()
}

/// Calls `each` with every key under `prefix` (without the prefix) and its key and value bytes.
async fn scan(client: &etcd_client::Client, prefix: &str, mut each: impl FnMut(&str, u64)) {
    let end = telemetry::keys::prefix_end(prefix);
    let mut from = prefix.as_bytes().to_vec();
    loop {
        let opts = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_limit(1000);
        let resp = client
            .kv_client()
            .get(from.clone(), Some(opts))
            .await
            .expect("read the store");
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(&kv.key()[prefix.len()..]);
            each(&key, (kv.key().len() + kv.value().len()) as u64);
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => from = [last.key(), b"\0"].concat(),
            _ => break,
        }
    }
}

/// Telemetry queries (limit 100, query cache off) over the folded store at `prefix`: one GPU's
/// first page with decoded chunks shared and without, and pages spread over every GPU.
async fn query_loads(eps: &[String], prefix: &str, out: &mut Vec<(String, f64, f64)>) {
    eprintln!("[folding] queries over the folded store, query cache off");
    let loads = [
        (
            "one GPU's first page, decoded chunks shared (the default)",
            Load::uncached(),
        ),
        (
            "one GPU's first page, CHUNK_CACHE_MB=0",
            Load {
                chunk_cache_mb: "0",
                ..Load::uncached()
            },
        ),
        (
            "every GPU at 16 start times in turn, decoded chunks shared",
            Load {
                spread: true,
                ..Load::uncached()
            },
        ),
    ];
    for (what, load) in loads {
        let (_, (rps, p99)) = super::query::load_gateway(eps, prefix, 10, &load).await;
        eprintln!("[folding]   {what}: {rps:.0} req/s, p99 {p99:.1} ms");
        out.push((what.to_string(), rps, p99));
    }
}

/// `bench --folded-queries`: only the query loads, over a store written folded straight into
/// etcd with the soak's shape (31 hosts × 8 GPUs, a 10 s scrape in 5 m windows, 22.4 hours),
/// so that a change to the read path is measured in minutes, not after an hour's soak.
pub async fn queries_only() {
    let etcd = EtcdCluster::start(1, &["--quota-backend-bytes", &BIG_QUOTA.to_string()]).await;
    let eps = etcd.all_endpoints();
    let client = etcd.client().await;
    let keys = telemetry::keys::Keys::new("/soak");
    let start = chrono::DateTime::parse_from_rfc3339(START)
        .expect("START")
        .timestamp_nanos_opt()
        .expect("START in range");
    let started = Instant::now();
    // 269 windows of 30 scrapes: 8,070 scrapes, the soak's 8,065 rounded up to whole windows.
    let (samples, chunks) =
        super::fleet::write_folded(&client, &keys, HOSTS, start, (269, 30)).await;
    eprintln!(
        "[folded queries] {samples} samples in {chunks} chunks written in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // As in the soak, the maintaining collector runs beside the gateway while it is loaded.
    let (coll, _) = collector(&eps, "/soak", (true, QUOTA), None);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut queries = Vec::new();
    query_loads(&eps, "/soak", &mut queries).await;
    coll.stop();
    println!("| load (query cache off, limit 100, 10 s each) | req/s | p99 |\n|---|---|---|");
    for (what, rps, p99) in queries {
        println!("| {what} | {rps:.0} | {p99:.1} ms |");
    }
}

/// `make bench-folding`.
pub async fn run(quick: bool, soak_samples: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut f = Folding {
        quota_bytes: QUOTA,
        ..Default::default()
    };
    let per_step = (HOSTS * GPUS * 10) as u64;
    let soak_steps = (soak_samples.div_ceil(per_step)) as usize;
    let soak_steps = if quick {
        soak_steps.min(800)
    } else {
        soak_steps
    };
    let ingest_steps = if quick { 100 } else { 400 };
    {
        let etcd = EtcdCluster::start(1, &["--quota-backend-bytes", &BIG_QUOTA.to_string()]).await;
        f.ceiling_keys_per_s =
            super::ceiling::measure(&etcd.all_endpoints(), 4, Duration::from_secs(10)).await;
    }
    for round in 1..=2 {
        for fold in [false, true] {
            eprintln!(
                "[folding] ingest of {} samples, folding {fold}, round {round} of 2",
                ingest_steps as u64 * per_step
            );
            let rate = ingest(dir.path(), ingest_steps, fold).await;
            eprintln!("[folding]   {rate:.0} samples/s");
            if fold {
                f.ingest_on.push(rate)
            } else {
                f.ingest_off.push(rate)
            }
        }
    }
    eprintln!(
        "[folding] soak: {} samples on a 256 MiB quota",
        soak_steps as u64 * per_step
    );
    soak(dir.path(), soak_steps, &mut f).await;
    eprintln!("[folding] the same samples into Prometheus's TSDB (promtool)");
    f.prometheus_block_bytes = prometheus_bytes(dir.path(), soak_steps);
    print(&f);
    std::fs::create_dir_all("bench-results").expect("bench-results/");
    let name = format!(
        "bench-results/folding-{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    std::fs::write(&name, serde_json::to_string_pretty(&f).unwrap()).expect("write results");
    eprintln!("figures written to {name}");
}

fn print(f: &Folding) {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (off, on) = (mean(&f.ingest_off), mean(&f.ingest_on));
    let mib = |b: i64| b as f64 / 1048576.0;
    let per_sample = f.db_size_at_rest_bytes as f64 / f.stored_at_end.max(1) as f64;
    println!(
        "folding (etcd {}, fold window {WINDOW})",
        crate::etcd::etcd_binary().display()
    );
    println!("| figure | value | against |");
    println!("|---|---|---|");
    println!(
        "| etcd write ceiling (keys/s, 4 clients, Txns of 100 puts) | {:.0} | baseline |",
        f.ceiling_keys_per_s
    );
    println!(
        "| ingest, folding off (samples/s) | {off:.0} | {:.2} of the ceiling; runs {:?} |",
        off / f.ceiling_keys_per_s,
        f.ingest_off.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    println!("| ingest, folding on (samples/s) | {on:.0} | {:.2}x off, {:.2} of the ceiling; runs {:?} |", on / off, on / f.ceiling_keys_per_s, f.ingest_on.iter().map(|r| r.round()).collect::<Vec<_>>());
    println!(
        "| soak: samples processed | {} in {:.0} s ({:.0}/s) | |",
        f.soak_samples,
        f.soak_seconds,
        f.soak_samples as f64 / f.soak_seconds
    );
    println!(
        "| soak: peak dbSize | {:.1} MiB | {:.2} of the {:.0} MiB quota |",
        mib(f.peak_db_size_bytes),
        f.peak_db_size_bytes as f64 / f.quota_bytes as f64,
        mib(f.quota_bytes as i64)
    );
    println!(
        "| soak: NOSPACE alarm seen | {} of {} readings (4 per second) | |",
        f.alarm_seen_in_samples,
        (f.soak_seconds * 4.0) as u64
    );
    println!(
        "| soak: samples expired by budget | {} | |",
        f.samples_expired_budget
    );
    println!(
        "| soak: samples folded, chunks written | {}, {} | |",
        f.samples_folded, f.chunks_written
    );
    println!(
        "| soak: samples stored at the end | {} | {} processed |",
        f.stored_at_end, f.soak_samples
    );
    println!(
        "| at rest: dbSize after compaction and defrag | {:.1} MiB (in use {:.1} MiB) | |",
        mib(f.db_size_at_rest_bytes),
        mib(f.db_in_use_at_rest_bytes)
    );
    match f.prometheus_block_bytes {
        Some(b) => {
            let prom = b as f64 / f.stored_at_end.max(1) as f64;
            println!("| at rest: bytes per sample | {per_sample:.2} | {:.2}x Prometheus's {prom:.2} ({:.1} MB of blocks, promtool) |", per_sample / prom, b as f64 / 1e6);
        }
        None => println!(
            "| at rest: bytes per sample | {per_sample:.2} | promtool not installed: no anchor |"
        ),
    }
    if let Some((keys, bytes)) = f.message_states_at_end {
        println!(
            "| soak: message states at its end (MESSAGE_STATE_TTL={SOAK_STATE_TTL}) | {keys} keys, {:.2} MiB | deleted past their TTL before the figures at rest |",
            mib(bytes as i64)
        );
    }
    for (area, keys, bytes) in &f.at_rest_areas {
        println!(
            "| at rest: {area} | {keys} keys, {:.2} MiB of keys and values | {:.2} B per sample |",
            mib(*bytes as i64),
            *bytes as f64 / f.stored_at_end.max(1) as f64
        );
    }
    for (what, rps, p99) in &f.queries {
        println!("| queries over folded data, query cache off (limit 100): {what} | {rps:.0} req/s, p99 {p99:.1} ms | target 5,000 req/s, p99 20 ms |");
    }
}
