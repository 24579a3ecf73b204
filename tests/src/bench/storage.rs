//! `make bench-storage`: the storage lifecycle under load.
//!
//! 1. A soak: etcd with a 256 MiB quota, one collector (the maintainer) and a looping streamer
//!    over a generated fleet (realistic metrics, ranges, precision and random walks; every
//!    pass stamped anew), until the collectors have processed the target number of samples.
//!    Sampled every 250 ms: each member's `dbSize` against the quota, and the NOSPACE alarm.
//! 2. Ingest with the maintainer on against off, in the same run, on an etcd whose real quota
//!    is large (8 GiB) so that "off" survives: "on" once with that quota (its cost: compaction,
//!    defragmentation, readings, the room), and once told the quota is 256 MiB, so that it
//!    compacts, expires and defragments all along as in the soak, and the streamer waits for
//!    it at the budget (the rate the store sustains when full).

use std::path::Path;
use std::time::Duration;

use etcd_client::{AlarmAction, AlarmType};
use serde::Serialize;
use tokio::time::Instant;

use super::procs::{counter_sum, free_port, Proc};
use super::scenarios::base_env;
use crate::EtcdCluster;

const QUOTA: u64 = 256 * 1024 * 1024;
/// The quota of the etcd under the on/off runs: large, so that "off" survives.
const REAL_QUOTA: u64 = 8 * 1024 * 1024 * 1024;

/// What the soak measured.
#[derive(Debug, Default, Serialize)]
pub struct Soak {
    pub samples_target: u64,
    pub samples_processed: u64,
    pub seconds: f64,
    pub samples_per_s: f64,
    pub quota_bytes: u64,
    pub peak_db_size_bytes: i64,
    pub peak_in_use_bytes: i64,
    pub alarm_seen_in_samples: u64,
    pub alarm_raised_at_end: bool,
    pub samples_expired_budget: u64,
    pub compactions: u64,
    pub defrags: u64,
    pub stored_at_end: i64,
}

fn collector(endpoints: &[String], prefix: &str, env: &[(&str, String)]) -> (Proc, u16) {
    let port = free_port();
    let mut all = base_env(endpoints, prefix);
    all.push(("ADMIN_LISTEN", format!("127.0.0.1:{port}")));
    all.extend(env.iter().cloned());
    (Proc::spawn("collector", &[], &all), port)
}

async fn processed(port: u16) -> u64 {
    (counter_sum(&[port], "messages_processed").await
        + counter_sum(&[port], "messages_duplicated").await) as u64
}

/// Runs the soak until `samples` are processed.
pub async fn soak(csv: &Path, samples: u64) -> Soak {
    let quota = QUOTA.to_string();
    let etcd = EtcdCluster::start(1, &["--quota-backend-bytes", &quota]).await;
    let eps = etcd.all_endpoints();
    let client = etcd.client().await;
    let (coll, port) = collector(&eps, "/soak", &[("ETCD_QUOTA_BYTES", quota.clone())]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut env = base_env(&eps, "/soak");
    env.push(("ADMIN_LISTEN", String::new()));
    let streamer = Proc::spawn(
        "streamer",
        &["--csv", csv.to_str().unwrap(), "--loop"],
        &env,
    );
    let started = Instant::now();
    let mut s = Soak {
        samples_target: samples,
        quota_bytes: QUOTA,
        ..Default::default()
    };
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut c = client.clone();
        if let Ok(st) = c.status().await {
            s.peak_db_size_bytes = s.peak_db_size_bytes.max(st.db_size());
            s.peak_in_use_bytes = s.peak_in_use_bytes.max(st.raft_used_db_size());
        }
        if let Ok(a) = c.alarm(AlarmAction::Get, AlarmType::None, None).await {
            if a.alarms().iter().any(|a| a.alarm() == AlarmType::Nospace) {
                s.alarm_seen_in_samples += 1;
            }
        }
        s.samples_processed = processed(port).await;
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            eprintln!(
                "      {} of {samples} samples ({:.0}/s), peak dbSize {:.1} MiB of {} MiB",
                s.samples_processed,
                s.samples_processed as f64 / started.elapsed().as_secs_f64(),
                s.peak_db_size_bytes as f64 / 1048576.0,
                QUOTA / 1048576
            );
        }
        if s.samples_processed >= samples {
            break;
        }
        // A generous bound (a third of the steady rate seen here, ~5,700 samples/s): it only
        // stops a soak that no longer makes progress.
        let bound = Duration::from_secs((samples / 2_000).max(600));
        assert!(
            started.elapsed() < bound,
            "the soak processed {} of {samples} samples in {bound:?}",
            s.samples_processed
        );
    }
    s.seconds = started.elapsed().as_secs_f64();
    s.samples_per_s = s.samples_processed as f64 / s.seconds;
    streamer.stop();
    s.samples_expired_budget = counter_sum(&[port], "samples_expired").await as u64;
    s.compactions = counter_sum(&[port], "compactions").await as u64;
    s.defrags = counter_sum(&[port], "defrags").await as u64;
    s.stored_at_end = crate::checks::stored(&client, "/soak/telemetry/data/").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alarms = client
        .clone()
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await;
    s.alarm_raised_at_end = alarms.is_ok_and(|a| !a.alarms().is_empty());
    coll.stop();
    s
}

/// Ingest of `csv` (`records` samples) with one collector, the maintainer on or off.
pub async fn ingest_with_maintainer(csv: &Path, records: u64, told_quota: Option<u64>) -> f64 {
    let on = told_quota.is_some();
    let real = REAL_QUOTA.to_string();
    let etcd = EtcdCluster::start(1, &["--quota-backend-bytes", &real]).await;
    let eps = etcd.all_endpoints();
    let env = [
        ("STORAGE_MAINTAINER", on.to_string()),
        ("ETCD_QUOTA_BYTES", told_quota.unwrap_or(QUOTA).to_string()),
        ("STORAGE_HISTORY", "30s".to_string()),
    ];
    let (coll, port) = collector(&eps, "/onoff", &env);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut senv = base_env(&eps, "/onoff");
    senv.push(("ADMIN_LISTEN", String::new()));
    let started = Instant::now();
    let streamer = Proc::spawn("streamer", &["--csv", csv.to_str().unwrap()], &senv);
    while processed(port).await < records {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "ingest did not finish"
        );
    }
    let rate = records as f64 / started.elapsed().as_secs_f64();
    streamer.stop();
    coll.stop();
    rate
}

/// `make bench-storage`: prints the soak's figures and the maintainer's cost.
pub async fn run(quick: bool, soak_samples: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = dir.path().join("fleet.csv");
    let (hosts, steps) = if quick { (25, 10) } else { (100, 63) };
    let records = super::scenarios::generate(&fleet, hosts, steps, 1);
    let soak_samples = if quick {
        soak_samples.min(2_000_000)
    } else {
        soak_samples
    };
    // Off; on with the real 8 GiB quota (compaction, defragmentation and the readings, but
    // the budget is never reached); on told 256 MiB (it expires all along, as in the soak, and
    // the streamer waits for it at the budget).
    let configs = [
        ("off", None),
        ("on", Some(REAL_QUOTA)),
        ("on, at a 256 MiB budget", Some(QUOTA)),
    ];
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 1..=2 {
        for (i, (name, told)) in configs.iter().enumerate() {
            eprintln!(
                "[storage] ingest of {records} samples, maintainer {name}, round {round} of 2"
            );
            rates[i].push(ingest_with_maintainer(&fleet, records, *told).await);
        }
    }
    eprintln!("[storage] soak: {soak_samples} samples on a 256 MiB quota");
    let soak = soak(&fleet, soak_samples).await;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let off = mean(&rates[0]);
    let mib = |b: i64| b as f64 / 1048576.0;
    println!(
        "storage lifecycle (etcd {})",
        crate::etcd::etcd_binary().display()
    );
    println!("| figure | value | against |");
    println!("|---|---|---|");
    println!(
        "| soak: samples processed | {} in {:.0} s ({:.0}/s) | target {} |",
        soak.samples_processed, soak.seconds, soak.samples_per_s, soak.samples_target
    );
    println!(
        "| soak: peak dbSize | {:.1} MiB | {:.2} of the {:.0} MiB quota |",
        mib(soak.peak_db_size_bytes),
        soak.peak_db_size_bytes as f64 / soak.quota_bytes as f64,
        mib(soak.quota_bytes as i64)
    );
    println!(
        "| soak: peak dbSizeInUse | {:.1} MiB | {:.2} of the quota |",
        mib(soak.peak_in_use_bytes),
        soak.peak_in_use_bytes as f64 / soak.quota_bytes as f64
    );
    println!(
        "| soak: NOSPACE alarm seen | {} of {} samples (4 per second); raised at the end: {} | |",
        soak.alarm_seen_in_samples,
        (soak.seconds * 4.0) as u64,
        soak.alarm_raised_at_end
    );
    println!(
        "| soak: samples expired by budget | {} | {:.2} of those processed |",
        soak.samples_expired_budget,
        soak.samples_expired_budget as f64 / soak.samples_processed.max(1) as f64
    );
    println!("| soak: stored at the end | {} | |", soak.stored_at_end);
    println!(
        "| soak: compactions, defrags | {}, {} | |",
        soak.compactions, soak.defrags
    );
    for (i, (name, _)) in configs.iter().enumerate() {
        let runs: Vec<f64> = rates[i].iter().map(|r| r.round()).collect();
        println!(
            "| ingest, maintainer {name} (rec/s) | {:.0} | {:.2}x off; runs {runs:?} |",
            mean(&rates[i]),
            mean(&rates[i]) / off
        );
    }
    std::fs::create_dir_all("bench-results").expect("bench-results/");
    let name = format!(
        "bench-results/storage-{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    let json = serde_json::json!({"soak": soak, "ingest_off": rates[0], "ingest_on": rates[1], "ingest_on_at_budget": rates[2]});
    std::fs::write(&name, serde_json::to_string_pretty(&json).unwrap()).expect("write results");
    eprintln!("figures written to {name}");
}
