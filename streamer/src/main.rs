use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use streamer::config::Command;
use streamer::{Config, Counters, Listeners, StreamerError};
use telemetry::service::BadSetting;

// The system allocator, unlike the collector and the gateway: with mimalloc the streamer's peak
// memory on a 1 GB file rose from 35 to 97 MB (make bench), for no throughput it needs.
telemetry::main!(Config, run);

async fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    if let Some(Command::Generate(args)) = &cfg.command {
        let rows = streamer::generate::write(args)?;
        eprintln!("wrote {rows} rows to {}", args.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let ingest = match cfg.listen.as_deref().filter(|a| !a.is_empty()) {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| BadSetting(format!("INGEST_LISTEN: cannot listen on {a}: {e}")))?,
        ),
        None => None,
    };
    let counters = Arc::new(Counters::default());
    let shutdown = telemetry::shutdown::on_signal();
    let result = streamer::run(cfg, Listeners { ingest }, counters.clone(), shutdown).await;
    if result.is_ok() || Counters::get(&counters.read) > 0 {
        println!("{}", counters.summary());
    }
    match result.map_err(StreamerError::bad_setting) {
        Ok(()) if counters.unpublished() > 0 => Err(anyhow::anyhow!(
            "{} records were read but not published (etcd unreachable or full until the grace period ran out)",
            counters.unpublished()
        )),
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Ok(setting)) => Err(setting.into()),
        Err(Err(e)) => Err(e).context("streamer stopped"),
    }
}
