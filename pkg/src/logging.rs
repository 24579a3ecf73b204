//! Tracing setup shared by the binaries: `RUST_LOG` sets the level, `LOG_FORMAT` the shape, and
//! the live setting `log.level` changes the level while running ([`follow_level`]).

use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::settings::{catalog, Settings};

/// The installed filter, when this process installed one (tests running several services in
/// one process share the first).
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The level at start-up: `RUST_LOG`, or `info`.
pub fn startup_level() -> String {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "info".to_string())
}

/// Installs the tracing subscriber: `RUST_LOG` sets the level, `format` is `text` or `json`.
pub fn init(format: &str) {
    let filter = EnvFilter::try_new(startup_level()).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // Colours only on a terminal: logs piped to a file or a collector stay plain text.
    let layer = fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = if format == "json" {
        tracing_subscriber::registry()
            .with(filter)
            .with(layer.json())
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init()
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Applies `log.level` whenever it changes, until `stop` fires.
pub async fn follow_level(settings: Settings, stop: CancellationToken) {
    let mut rx = settings.subscribe();
    let mut current = String::new();
    loop {
        let wanted = rx
            .borrow_and_update()
            .value(catalog::LOG_LEVEL)
            .as_str()
            .map(str::to_string);
        if let Some(wanted) = wanted.filter(|w| *w != current) {
            match (FILTER.get(), EnvFilter::try_new(&wanted)) {
                (Some(handle), Ok(filter)) => match handle.reload(filter) {
                    Ok(()) if !current.is_empty() => {
                        tracing::info!(level = %wanted, "log level changed")
                    }
                    Ok(()) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot change the log level"),
                },
                (None, _) => {}
                (_, Err(e)) => tracing::warn!(level = %wanted, error = %e, "not a log level"),
            }
            current = wanted;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}
