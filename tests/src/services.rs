//! The three services, started in-process on port 0 against a test etcd, plus the polling
//! helpers tests use instead of fixed sleeps.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A service running in this process.
pub struct Running<T> {
    pub stop: CancellationToken,
    pub handle: JoinHandle<T>,
}

impl<T> Running<T> {
    /// Asks it to stop and waits for it.
    pub async fn shutdown(self) -> T {
        self.stop.cancel();
        self.handle.await.expect("service task panicked")
    }
}

/// Starts a collector; `tweak` adjusts its config.
pub fn start_collector(
    endpoints: Vec<String>,
    prefix: &str,
    tweak: impl FnOnce(&mut collector::Config),
) -> (
    Running<Result<(), collector::CollectorError>>,
    Arc<collector::Counters>,
) {
    let mut cfg = collector::Config::for_tests(endpoints, prefix);
    cfg.id = format!("test-collector-{}", ulid_like());
    tweak(&mut cfg);
    let stats = Arc::new(collector::Counters::default());
    let stop = CancellationToken::new();
    let handle = tokio::spawn(collector::run(cfg, stats.clone(), stop.clone()));
    (Running { stop, handle }, stats)
}

/// Publishes CSV files once, to the end, and returns the streamer's counters.
pub async fn stream_csv(
    endpoints: Vec<String>,
    prefix: &str,
    paths: &[&Path],
) -> Arc<streamer::Counters> {
    let mut cfg = streamer::Config::for_tests(endpoints, prefix);
    cfg.csv = paths.iter().map(|p| p.to_path_buf()).collect();
    let counters = Arc::new(streamer::Counters::default());
    streamer::run(
        cfg,
        streamer::Listeners::default(),
        counters.clone(),
        CancellationToken::new(),
    )
    .await
    .expect("streamer run");
    counters
}

/// Starts a gateway on a free port; returns it and its base URL.
pub async fn start_gateway(
    endpoints: Vec<String>,
    prefix: &str,
    tweak: impl FnOnce(&mut gateway::Config),
) -> (Running<Result<(), gateway::GatewayError>>, String) {
    let mut cfg = gateway::Config::for_tests(endpoints, prefix);
    tweak(&mut cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let handle = tokio::spawn(gateway::run(cfg, listener, stop.clone()));
    let url = format!("{base}/ready");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await,
        "gateway never became ready"
    );
    (Running { stop, handle }, base)
}

/// Polls `check` every 50 ms until it is true or `timeout` passes. A check still running at
/// the deadline counts as false, so a request that never answers cannot hang the test.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(_) => return false,
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Number of keys under a prefix.
pub async fn count(client: &Client, prefix: &str) -> i64 {
    client
        .clone()
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .map(|r| r.count())
        .unwrap_or(-1)
}

/// A prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    format!("/t-{name}-{}", ulid_like())
}

fn ulid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A workspace binary built by `cargo build` (tests of process-level faults need real
/// processes to SIGKILL and SIGSTOP).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` first (make test does)",
        p.display()
    );
    p
}

/// Writes a synthetic fleet CSV to `out` with `streamer generate {args} --out {out}`, as a
/// user runs it.
pub fn generate(out: &Path, args: &[&str]) {
    let status = std::process::Command::new(binary("streamer"))
        .arg("generate")
        .args(args)
        .arg("--out")
        .arg(out)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run streamer generate");
    assert!(status.success(), "streamer generate {args:?} failed");
}

/// Logs for tests, at RUST_LOG (default warn).
pub fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
