use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use streamer::config::Command;
use streamer::{Config, Counters, Listeners};

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = Config::parse();
    if let Err(e) = cfg.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    telemetry::logging::init(&cfg.runtime.log_format);
    match run(cfg).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    if let Some(Command::Generate(args)) = &cfg.command {
        let rows = if args.out.as_os_str() == "-" {
            streamer::generate::generate(args, &mut std::io::stdout().lock())?
        } else {
            let mut f = std::fs::File::create(&args.out)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", args.out.display()))?;
            streamer::generate::generate(args, &mut f)?
        };
        eprintln!("wrote {rows} rows to {}", args.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let bind = |addr: &Option<String>, what: &'static str| {
        let addr = addr.clone();
        async move {
            match addr.filter(|a| !a.is_empty()) {
                Some(a) => tokio::net::TcpListener::bind(&a)
                    .await
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("cannot listen on {a} ({what}): {e}")),
                None => Ok(None),
            }
        }
    };
    let listeners = Listeners {
        ingest: bind(&cfg.listen, "INGEST_LISTEN").await?,
        admin: bind(&Some(cfg.admin_listen.clone()), "ADMIN_LISTEN").await?,
    };
    let counters = Arc::new(Counters::default());
    let shutdown = telemetry::shutdown::on_signal();
    streamer::run(cfg, listeners, counters.clone(), shutdown).await?;
    println!("{}", counters.summary());
    Ok(ExitCode::SUCCESS)
}
