/// mimalloc: glibc malloc was about 35 % of the gateway's CPU serving JSON pages under load
/// (docs/performance.md, `perf record -g`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use anyhow::Context as _;
use gateway::Config;
use telemetry::service::BadSetting;

telemetry::main!(Config, run);

async fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", cfg.port))
        .await
        .map_err(|e| {
            BadSetting(format!(
                "GATEWAY_PORT: cannot listen on port {}: {e}",
                cfg.port
            ))
        })?;
    gateway::run(cfg, listener, telemetry::shutdown::on_signal())
        .await
        .context("gateway stopped")?;
    Ok(ExitCode::SUCCESS)
}
