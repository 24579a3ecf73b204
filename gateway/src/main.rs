/// mimalloc: glibc malloc was about 35 % of the gateway's CPU serving JSON pages under load
/// (docs/performance.md, `perf record -g`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use anyhow::Context as _;
use gateway::config::Command;
use gateway::{Config, GatewayError};
use telemetry::service::{BadSetting, StartError};

telemetry::main!(Config, run);

async fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    if let Some(Command::Token { action }) = &cfg.command {
        return gateway::token_cli::run(&cfg, action).await;
    }
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", cfg.port))
        .await
        .map_err(|e| {
            BadSetting(format!(
                "GATEWAY_PORT: cannot listen on port {}: {e}",
                cfg.port
            ))
        })?;
    match gateway::run(cfg, listener, telemetry::shutdown::on_signal()).await {
        Ok(()) => {}
        // A refused credential: its one line, and exit 2.
        Err(GatewayError::Start(StartError::Setting(s))) => return Err(s.into()),
        Err(e) => return Err(e).context("gateway stopped"),
    }
    Ok(ExitCode::SUCCESS)
}
