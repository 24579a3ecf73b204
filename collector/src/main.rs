use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use collector::config::{Command, DlqAction};
use collector::{CollectorError, Config, Counters};

/// mimalloc: decoding and committing messages makes many small, short-lived allocations
/// (docs/performance.md). The streamer keeps the system allocator for its lower RSS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

telemetry::main!(Config, run);

async fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    let keys = telemetry::keys::Keys::new(&cfg.process.etcd.prefix);
    if let Some(Command::EtcdAuth(args)) = &cfg.command {
        let client = telemetry::etcd::connect(&cfg.process.etcd).await?;
        for line in collector::access::setup(&client, &keys, args).await? {
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(Command::Config { action }) = &cfg.command {
        let client = telemetry::etcd::connect(&cfg.process.etcd).await?;
        let audit = collector::config_cli::Audit {
            actor: telemetry::audit::cli_actor(cfg.process.etcd.security.username.as_deref()),
            retention: cfg.process.runtime.audit_retention,
        };
        return collector::config_cli::run(&client, &keys, action, &audit).await;
    }
    let Some(Command::Dlq { action }) = &cfg.command else {
        let shutdown = telemetry::shutdown::on_signal();
        let counters = Arc::new(Counters::default());
        match collector::run(cfg, counters.clone(), shutdown).await {
            Ok(()) => {}
            Err(CollectorError::Setting(s)) => return Err(s.into()),
            Err(e) => return Err(e).context("collector stopped"),
        }
        tracing::info!(
            stored = Counters::get(&counters.stored),
            duplicates = Counters::get(&counters.duplicates),
            invalid = Counters::get(&counters.invalid),
            "collector stopped"
        );
        return Ok(ExitCode::SUCCESS);
    };
    let client = telemetry::etcd::connect(&cfg.process.etcd).await?;
    let mut queue = cfg.process.queue.clone();
    telemetry::queue::agree(&client, &keys, &mut queue).await?;
    match action {
        DlqAction::List => {
            for letter in collector::dlq::list(&client, &keys).await? {
                let mut v = serde_json::to_value(&letter)?;
                v.as_object_mut().map(|o| o.remove("payload_hex"));
                println!("{v}");
            }
        }
        DlqAction::Requeue { ids } => {
            let done = collector::dlq::requeue(&client, &keys, queue.partitions(), ids).await?;
            let etcd = &cfg.process.etcd.security;
            let actor = telemetry::audit::cli_actor(etcd.username.as_deref());
            let detail = serde_json::json!({ "requeued": done });
            let retention = cfg.process.runtime.audit_retention;
            telemetry::audit::record(&client, &keys, retention, &actor, "dlq.requeue", detail)
                .await?;
            println!("requeued {} dead letter(s)", done.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}
