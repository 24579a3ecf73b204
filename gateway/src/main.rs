use std::process::ExitCode;

use clap::Parser;
use gateway::Config;

/// mimalloc: the services allocate many small, short-lived objects (records, JSON, protobuf);
/// glibc malloc spent a third of the gateway's CPU on them under load (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = Config::parse();
    if let Err(e) = cfg.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    telemetry::logging::init(&cfg.runtime.log_format);
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", cfg.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot listen on port {} (GATEWAY_PORT): {e}",
                cfg.port
            );
            return ExitCode::FAILURE;
        }
    };
    match gateway::run(cfg, listener, telemetry::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
