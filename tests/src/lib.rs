//! Test support: a real-etcd harness ([`etcd`]) and helpers that run the three services
//! in-process ([`services`]). Used by the tests in `tests/tests/` and by the benchmark.

pub mod bench;
pub mod browser;
pub mod checks;
pub mod etcd;
pub mod pki;
pub mod process;
pub mod services;

pub use etcd::EtcdCluster;

/// The real DCGM export the tests use: 2,470 rows, 31 hosts, 247 H100 GPUs, 10 metrics. A copy
/// lives in the repository (`tests/data/`), so a clone tests on its own.
pub fn sample_csv() -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/dcgm_metrics_20250718_134233.csv");
    assert!(p.exists(), "the sample data is missing at {}", p.display());
    p
}
