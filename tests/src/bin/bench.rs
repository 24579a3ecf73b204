//! `make bench`: see `pipeline_tests::bench`. `--cluster` runs on a 3-node local etcd;
//! `--quick` uses smaller loads (for a smoke run, not for figures).

use std::time::Duration;

use pipeline_tests::bench::{ceiling, scenarios, Report};
use pipeline_tests::services::count;
use pipeline_tests::EtcdCluster;

const ETCD_ARGS: [&str; 2] = ["--quota-backend-bytes", "8589934592"];

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cluster = args.iter().any(|a| a == "--cluster");
    let quick = args.iter().any(|a| a == "--quick");
    let members = if cluster { 3 } else { 1 };
    let (hosts, steps) = if quick { (25, 10) } else { (100, 63) }; // 504,000 records per file
    let dir = tempfile::tempdir().expect("temp dir");
    let mut report = Report {
        etcd: pipeline_tests::etcd::etcd_binary().display().to_string(),
        cluster_members: members,
        ..Default::default()
    };

    eprintln!("[1/5] etcd write ceiling");
    {
        let etcd = EtcdCluster::start(members, &ETCD_ARGS).await;
        report.ceiling_keys_per_s = ceiling::measure(
            &etcd.all_endpoints(),
            8,
            Duration::from_secs(if quick { 3 } else { 8 }),
        )
        .await;
    }

    let fleet_a = dir.path().join("fleet-a.csv");
    let fleet_b = dir.path().join("fleet-b.csv");
    let records = scenarios::generate(&fleet_a, hosts, steps, 1);
    scenarios::generate(&fleet_b, hosts, steps, 2);

    eprintln!("[2/5] ingest of {records} records with 1 collector");
    {
        let etcd = EtcdCluster::start(members, &ETCD_ARGS).await;
        let eps = etcd.all_endpoints();
        let collectors = scenarios::start_collectors(1, &eps, "/bench");
        report.ingest.push(
            scenarios::ingest(
                &eps,
                "/bench",
                &fleet_a,
                records,
                &collectors,
                report.ceiling_keys_per_s,
            )
            .await,
        );
        collectors.0.into_iter().for_each(|p| p.stop());
    }

    eprintln!("[3/5] ingest of {records} records with 4 collectors");
    let etcd = EtcdCluster::start(members, &ETCD_ARGS).await;
    let eps = etcd.all_endpoints();
    let collectors = scenarios::start_collectors(4, &eps, "/bench");
    report.ingest.push(
        scenarios::ingest(
            &eps,
            "/bench",
            &fleet_a,
            records,
            &collectors,
            report.ceiling_keys_per_s,
        )
        .await,
    );
    eprintln!("      topping up with a second fleet for the query test");
    scenarios::ingest(
        &eps,
        "/bench",
        &fleet_b,
        records,
        &collectors,
        report.ceiling_keys_per_s,
    )
    .await;

    eprintln!("[4/5] latency at 5,000 records/s");
    let small = dir.path().join("small.csv");
    scenarios::generate(&small, 10, 10, 3);
    report.latency =
        Some(scenarios::latency(&eps, "/bench", &small, 5_000.0, if quick { 5 } else { 15 }).await);
    collectors.0.into_iter().for_each(|p| p.stop());

    eprintln!("[5/5] gateway queries");
    let client = etcd.client().await;
    let stored = count(&client, "/bench/telemetry/data/").await;
    report.query = Some(scenarios::query(&eps, "/bench", stored, if quick { 5 } else { 10 }).await);
    if stored < 1_000_000 {
        report.notes.push(format!(
            "only {stored} records were stored for the query test (--quick)"
        ));
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
}
