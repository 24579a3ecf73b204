use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use collector::config::{Command, DlqAction};
use collector::{Config, Stats};

/// mimalloc: the services allocate many small, short-lived objects (records, JSON, protobuf);
/// glibc malloc spent a third of the gateway's CPU on them under load (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let mut cfg = Config::parse();
    if let Err(e) = cfg.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    telemetry::logging::init(&cfg.runtime.log_format);
    match run(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let keys = telemetry::keys::Keys::new(&cfg.etcd.prefix);
    match &cfg.command {
        Some(Command::Dlq { action }) => {
            let client = telemetry::etcd::connect(&cfg.etcd).await?;
            match action {
                DlqAction::List => {
                    for letter in collector::dlq::list(&client, &keys).await? {
                        let mut v = serde_json::to_value(&letter)?;
                        v.as_object_mut().map(|o| o.remove("payload_hex"));
                        println!("{v}");
                    }
                }
                DlqAction::Requeue { ids } => {
                    let done = collector::dlq::requeue(&client, &keys, ids).await?;
                    println!("requeued {} dead letter(s)", done.len());
                }
            }
            Ok(())
        }
        None => {
            let shutdown = telemetry::shutdown::on_signal();
            let stats = Arc::new(Stats::default());
            collector::run(cfg, stats.clone(), shutdown).await?;
            tracing::info!(
                stored = Stats::get(&stats.stored),
                duplicates = Stats::get(&stats.duplicates),
                invalid = Stats::get(&stats.invalid),
                "collector stopped"
            );
            Ok(())
        }
    }
}
