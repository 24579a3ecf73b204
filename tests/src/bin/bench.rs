//! `make bench`: see `pipeline_tests::bench`.

use std::time::Duration;

use clap::Parser;
use pipeline_tests::bench::{ceiling, memory, query, scenarios, Report};
use pipeline_tests::EtcdCluster;

const ETCD_ARGS: [&str; 2] = ["--quota-backend-bytes", "8589934592"];

/// Measures the pipeline on this machine against its own etcd and prints one table.
#[derive(Parser)]
struct Args {
    /// Run on a 3-node local etcd cluster instead of a single node.
    #[arg(long)]
    cluster: bool,
    /// Smaller loads: a smoke run of every step, not figures to quote.
    #[arg(long)]
    quick: bool,
    /// Leave out the streamer's memory on a >1 GB CSV (it needs ~2 GB of temporary disk).
    #[arg(long)]
    no_big_csv: bool,
    /// Only the publish → WebSocket latency step, on a fresh etcd with 4 collectors.
    #[arg(long)]
    latency_only: bool,
    /// With --latency-only: first store this many generated fleets of 504,000 records.
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// Only the ceiling and the ingest runs (steps 1-3), for quick before/after figures.
    #[arg(long)]
    ingest_only: bool,
    /// Only the storage lifecycle (`make bench-storage`): a soak on a 256 MiB quota, and
    /// ingest with the storage maintainer on against off.
    #[arg(long)]
    storage: bool,
    /// Samples the storage soak processes.
    #[arg(long, default_value_t = 20_000_000)]
    soak_samples: u64,
    /// Only folding (`make bench-folding`): ingest with folding on against off and against
    /// etcd's ceiling, a soak of --soak-samples on a 256 MiB quota with the bytes per sample at
    /// rest against Prometheus's TSDB, and queries over the folded store.
    #[arg(long)]
    folding: bool,
    /// Only the query loads of --folding, over a store of the soak's shape written folded
    /// straight into etcd (minutes instead of the soak's hour).
    #[arg(long)]
    folded_queries: bool,
    /// Only the chunk codec: a generated fleet (31 hosts × 8 GPUs × 1,200 steps of 1 s) folded
    /// per GPU, and its series encoded with pco and with Gorilla's encoding.
    #[arg(long)]
    codecs: bool,
    /// Fleet insight: ingest with rule evaluation on against off, and the p99 of a one-day
    /// aggregate and of fleet/latest on 2,504 GPUs holding a day at 10 s, folded.
    #[arg(long)]
    insight: bool,
    /// Security: ingest and query throughput with etcd over mutual TLS with auth and the
    /// gateway over HTTPS with tokens, against neither, in the same run.
    #[arg(long)]
    security: bool,
    /// Dashboard: its first load in headless Chromium (cold and warm), and the gateway's cost
    /// of 100 open dashboards on live data against none.
    #[arg(long)]
    dashboard: bool,
    /// Ingest runs per configuration (1 and 4 collectors, alternating); --quick runs one.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

async fn measure_ceiling(members: usize, secs: Duration) -> f64 {
    let etcd = EtcdCluster::start(members, &ETCD_ARGS).await;
    ceiling::measure(&etcd.all_endpoints(), 8, secs).await
}

#[tokio::main]
async fn main() {
    let Args {
        cluster,
        quick,
        no_big_csv,
        latency_only,
        preload,
        ingest_only,
        storage,
        soak_samples,
        codecs,
        folding,
        folded_queries,
        insight,
        security,
        dashboard,
        rounds,
    } = Args::parse();
    if dashboard {
        pipeline_tests::bench::dashboard::run(quick).await;
        return;
    }
    if security {
        pipeline_tests::bench::security::run(quick, rounds).await;
        return;
    }
    if folded_queries {
        pipeline_tests::bench::fold::queries_only().await;
        return;
    }
    if folding {
        pipeline_tests::bench::fold::run(quick, soak_samples).await;
        return;
    }
    if codecs {
        pipeline_tests::bench::codec::run(quick);
        return;
    }
    if insight {
        pipeline_tests::bench::insight::run(quick).await;
        return;
    }
    if storage {
        pipeline_tests::bench::storage::run(quick, soak_samples).await;
        return;
    }
    let members = if cluster { 3 } else { 1 };
    if latency_only {
        let dir = tempfile::tempdir().expect("temp dir");
        let etcd = EtcdCluster::start(members, &ETCD_ARGS).await;
        let eps = etcd.all_endpoints();
        let collectors = scenarios::start_collectors(4, &eps, "/bench");
        tokio::time::sleep(Duration::from_secs(3)).await; // partitions claimed
        for seed in 0..preload {
            let fleet = dir.path().join("fleet.csv");
            let n = scenarios::generate(&fleet, 100, 63, 10 + seed);
            scenarios::ingest(&etcd, "/bench", &fleet, n, &collectors, f64::NAN).await;
        }
        let small = dir.path().join("small.csv");
        scenarios::generate(&small, 10, 10, 3);
        let report = Report {
            etcd: pipeline_tests::etcd::etcd_binary().display().to_string(),
            cluster_members: members,
            latency: Some(scenarios::latency(&eps, "/bench", &small, 5_000.0, 15).await),
            ..Default::default()
        };
        collectors.0.into_iter().for_each(|p| p.stop());
        println!("{}", report.table());
        return;
    }
    let (hosts, steps) = if quick { (25, 10) } else { (100, 63) }; // 504,000 records per file
    let dir = tempfile::tempdir().expect("temp dir");
    let mut report = Report {
        etcd: pipeline_tests::etcd::etcd_binary().display().to_string(),
        cluster_members: members,
        ..Default::default()
    };

    eprintln!("[1/6] etcd write ceiling");
    let ceiling_secs = Duration::from_secs(if quick { 3 } else { 8 });
    report
        .ceiling_samples
        .push(measure_ceiling(members, ceiling_secs).await);
    report.ceiling_keys_per_s = report.ceiling_samples[0];

    let fleet_a = dir.path().join("fleet-a.csv");
    let records = scenarios::generate(&fleet_a, hosts, steps, 1);

    // The two configurations alternate, each run on a fresh etcd, so that the drift of this
    // machine's disk over a minute falls on both alike; the last 4-collector etcd stays up for
    // the latency and query steps.
    let rounds = if quick { 1 } else { rounds.max(1) };
    let mut kept = None;
    for round in 1..=rounds {
        // Message states on is the default; off (MESSAGE_STATE_TTL=0) measures what they cost.
        for (n, states) in [(1, true), (4, false), (4, true)] {
            let off = if states { "" } else { ", message states off" };
            eprintln!("[{}/6] ingest of {records} records with {n} collector(s){off}, round {round} of {rounds}", if n == 1 { 2 } else { 3 });
            let etcd = EtcdCluster::start(members, &ETCD_ARGS).await;
            let eps = etcd.all_endpoints();
            let env = if states {
                vec![]
            } else {
                vec![("MESSAGE_STATE_TTL", "0".to_string())]
            };
            let collectors = scenarios::start_collectors_with(n, &eps, "/bench", &env);
            let run =
                scenarios::ingest(&etcd, "/bench", &fleet_a, records, &collectors, f64::NAN).await;
            if states {
                report.ingest.push(run);
            } else {
                report.ingest_states_off.push(run);
            }
            if n == 4 && states && round == rounds {
                kept = Some((etcd, eps, collectors));
            } else {
                collectors.0.into_iter().for_each(|p| p.stop());
            }
        }
    }
    let (etcd, eps, collectors) = kept.expect("the last round ran");

    if ingest_only {
        collectors.0.into_iter().for_each(|p| p.stop());
    } else {
        eprintln!("      topping up with a second fleet for the query test");
        let fleet_b = dir.path().join("fleet-b.csv");
        scenarios::generate(&fleet_b, hosts, steps, 2);
        scenarios::ingest(&etcd, "/bench", &fleet_b, records, &collectors, f64::NAN).await;

        eprintln!("[4/6] latency at 5,000 records/s");
        let small = dir.path().join("small.csv");
        scenarios::generate(&small, 10, 10, 3);
        let secs = if quick { 5 } else { 15 };
        report.latency = Some(scenarios::latency(&eps, "/bench", &small, 5_000.0, secs).await);
        collectors.0.into_iter().for_each(|p| p.stop());

        eprintln!("[5/6] gateway queries");
        let client = etcd.client().await;
        let stored = pipeline_tests::checks::stored(&client, "/bench/telemetry/data/").await;
        report.query = Some(query::query(&eps, "/bench", stored, if quick { 5 } else { 10 }).await);
        if stored < 1_000_000 {
            report.notes.push(format!(
                "only {stored} records were stored for the query test (--quick)"
            ));
        }
    }
    drop(etcd);

    // The disk under this machine drifts; a second ceiling after the ingest, latency and query
    // runs (not between them: its burst of disk writes would sit in the latency window), on a fresh
    // etcd, and their mean as the baseline make the ratios less sensitive to when they ran.
    eprintln!("      etcd write ceiling again");
    report
        .ceiling_samples
        .push(measure_ceiling(members, ceiling_secs).await);
    report.set_ceiling();

    if !no_big_csv && !ingest_only {
        // 100 hosts x 8 GPUs x 320 steps x 10 metrics = 2,560,000 rows, about 1.09 GB.
        let steps = if quick { 40 } else { 320 };
        eprintln!("[6/6] streamer memory on a large CSV ({steps} steps)");
        let big = dir.path().join("big.csv");
        scenarios::generate(&big, 100, steps, 4);
        let etcd = EtcdCluster::start(members, &ETCD_ARGS).await;
        report.big_csv =
            Some(memory::streamer_on_big_csv(&etcd.all_endpoints(), "/bench", &big).await);
        std::fs::remove_file(&big).ok();
    }

    let table = report.table();
    println!("{table}");
    std::fs::create_dir_all("bench-results").expect("bench-results/");
    let name = format!(
        "bench-results/bench-{}{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        if cluster { "-cluster" } else { "" }
    );
    std::fs::write(&name, serde_json::to_string_pretty(&report).unwrap()).expect("write results");
    eprintln!("figures written to {name}");
    eprintln!("the storage lifecycle (soak on a 256 MiB quota, maintainer on vs off) is `make bench-storage`");
}
