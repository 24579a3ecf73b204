//! The streamer: reads GPU telemetry from files, devices and pushes, and publishes it into the
//! etcd queue at a controlled rate. `main` parses the config and calls [`run`], so tests run
//! the real thing in-process.

pub mod backpressure;
pub mod config;
pub mod counters;
pub mod dcgm_csv;
pub mod dcgm_fields;
pub mod generate;
pub mod pipeline;
pub mod progress;
pub mod publish;
pub mod source;

use std::sync::Arc;

use telemetry::auth::AuthMode;
use telemetry::keys::Keys;
use telemetry::queue::Publisher;
use telemetry::service::{BadSetting, StartError};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::Config;
pub use crate::counters::Counters;
use crate::source::{Gate, Sink, Source, SourceError};
use telemetry::cluster::{Registration, Role};

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum StreamerError {
    /// The start-up every queue process shares failed (a bad setting, no etcd).
    #[error(transparent)]
    Start(#[from] StartError),
    /// A source setting cannot work (exit 2).
    #[error(transparent)]
    Setting(#[from] BadSetting),
    /// A source failed to start.
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl StreamerError {
    /// The bad setting behind this error, if one is (exit 2).
    pub fn bad_setting(self) -> Result<BadSetting, Self> {
        match self {
            Self::Setting(s) | Self::Start(StartError::Setting(s)) => Ok(s),
            other => Err(other),
        }
    }
}

/// The admin address when `ADMIN_LISTEN` is not given.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9101";

/// Sockets the streamer serves on, bound by the caller (port 0 in tests).
#[derive(Debug, Default)]
pub struct Listeners {
    /// `POST /api/v1/ingest` and gRPC `Ingest`.
    pub ingest: Option<TcpListener>,
}

/// Shows how far a one-pass run is through its files, until `stop`.
async fn report_progress(total_bytes: u64, counters: Arc<Counters>, stop: CancellationToken) {
    let mut progress = progress::Progress::new("bytes", total_bytes);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    while telemetry::shutdown::or_cancel(&stop, tick.tick())
        .await
        .is_some()
    {
        let done = Counters::get(&counters.bytes);
        progress.update(done, || {
            format!(
                "read={} published={}",
                Counters::get(&counters.read),
                Counters::get(&counters.published)
            )
        });
    }
    progress.finish();
}

/// Builds the sources, checking each setting first so that a bad one stops the start-up.
fn sources(cfg: &Config) -> Result<Vec<Box<dyn Source>>, BadSetting> {
    let mut out: Vec<Box<dyn Source>> = Vec::new();
    if !cfg.csv.is_empty() {
        for p in cfg.csv.iter().filter(|p| !source::csv::is_stream(p)) {
            source::csv::open(p).map_err(|e| BadSetting(format!("--csv: {e}")))?;
        }
        out.push(Box::new(source::csv::CsvSource {
            paths: cfg.csv.clone(),
            looping: cfg.looping,
            stamp_now: cfg.stamp_now(),
        }));
    }
    if let Some(url) = &cfg.dcgm_url {
        source::dcgm::check_url(url)?;
        out.push(Box::new(source::dcgm::DcgmSource {
            url: url.clone(),
            interval: cfg.interval,
        }));
    }
    if let Some(bin) = &cfg.nvidia_smi {
        source::nvidia_smi::check_binary(bin)?;
        let hostname = if cfg.hostname.is_empty() {
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        } else {
            cfg.hostname.clone()
        };
        out.push(Box::new(source::nvidia_smi::NvidiaSmiSource {
            binary: bin.clone(),
            interval: cfg.interval,
            hostname,
        }));
    }
    Ok(out)
}

/// A streamer's figures for its cluster entry.
fn status(
    c: Arc<Counters>,
    gate: Gate,
    throttle: watch::Receiver<f64>,
) -> telemetry::cluster::StatusFn {
    let rate = telemetry::cluster::Rate::default();
    Arc::new(move || {
        let published = Counters::get(&c.published);
        serde_json::json!({
            "read": Counters::get(&c.read),
            "published": published,
            "published_per_second": rate.per_second(published),
            "invalid": Counters::get(&c.invalid),
            "skipped": Counters::get(&c.skipped),
            "throttle_rate": *throttle.borrow(),
            "held": gate.held().map(|h| h.reason()),
        })
    })
}

/// Runs until every finite input is published, or until `shutdown` fires for endless inputs.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<(), StreamerError> {
    let sources = sources(&cfg)?;
    let mut cfg = cfg;
    let started =
        telemetry::service::start_queue_process(&mut cfg.process, DEFAULT_ADMIN_LISTEN, &shutdown)
            .await?;
    let client = started.client.clone();
    let keys = Keys::new(&cfg.process.etcd.prefix);
    let stop_helpers = CancellationToken::new();
    let Some(settings) = telemetry::settings::follow(
        client.clone(),
        keys.clone(),
        telemetry::settings::Snapshot::at_startup(&cfg.startup_settings()),
        stop_helpers.clone(),
    )
    .await
    else {
        started.stop().await;
        return Ok(());
    };
    tokio::spawn(telemetry::logging::follow_level(
        settings.clone(),
        stop_helpers.clone(),
    ));
    tokio::spawn(telemetry::settings::report_ingestion(
        settings.clone(),
        started.admin.readiness.clone(),
        stop_helpers.clone(),
    ));
    let publisher = Arc::new(Publisher::new(
        client.clone(),
        keys.clone(),
        cfg.process.queue.clone(),
    ));
    let (tx, rx) = mpsc::channel(cfg.buffer);
    let (group_tx, group_rx) = mpsc::channel(cfg.publishers);
    let (throttle_tx, throttle_rx) = watch::channel(1.0);
    let throttle_seen = throttle_rx.clone();
    let give_up = CancellationToken::new();
    let stop_inputs = shutdown.child_token();

    let storage = telemetry::storage::track(
        client.clone(),
        keys.clone(),
        cfg.throttle_check_interval,
        started.admin.readiness.clone(),
        telemetry::storage::BlockOn::Full,
        stop_helpers.clone(),
    );
    tokio::spawn(backpressure::run(
        cfg.throttle_check_interval,
        settings.clone(),
        publisher.clone(),
        storage.pressure.clone(),
        throttle_tx,
        stop_helpers.clone(),
    ));
    let batcher = pipeline::Batcher {
        publisher: publisher.clone(),
        counters: counters.clone(),
        settings: settings.subscribe(),
        linger: cfg.linger,
        throttle: throttle_rx.clone(),
        draining: shutdown.clone(),
    };
    let flow = TaskTracker::new();
    flow.spawn(batcher.run(rx, group_tx));
    let group_rx = Arc::new(Mutex::new(group_rx));
    for _ in 0..cfg.publishers {
        flow.spawn(publish::publish(
            publisher.clone(),
            storage.room.clone(),
            counters.clone(),
            settings.clone(),
            group_rx.clone(),
            give_up.clone(),
        ));
    }
    // Only the publishers hold the receiver: once they have all given up, the batcher's next
    // hand-over fails and the pipeline unwinds instead of waiting on a channel nobody reads.
    drop(group_rx);

    let gate = Gate::new(storage.pressure.clone(), settings.clone());
    let sink = Sink::new(tx, counters.clone(), gate.clone());
    tokio::spawn(telemetry::cluster::register(
        client.clone(),
        keys.clone(),
        Registration::now(
            Role::Streamer,
            telemetry::cluster::process_id(),
            started.admin.addr.map(|a| a.to_string()),
        ),
        status(counters.clone(), gate, throttle_seen),
        started.admin.readiness.clone(),
        settings,
        stop_helpers.clone(),
    ));
    let inputs = TaskTracker::new();
    if let Some(l) = listeners.ingest {
        tracing::info!(addr = ?l.local_addr().ok(), "serving POST /api/v1/ingest and gRPC Ingest");
        let addr = l.local_addr().ok();
        if cfg.auth_mode == AuthMode::None && addr.is_some_and(|a| !a.ip().is_loopback()) {
            tracing::warn!(
                ?addr,
                "AUTH_MODE=none on a non-loopback address: anyone who can reach it can push \
                 records; set AUTH_MODE=token (docs/security.md)"
            );
        }
        let keys = telemetry::keys::Keys::new(&cfg.process.etcd.prefix);
        let tokens =
            telemetry::auth::Tokens::follow(started.client.clone(), &keys, stop_inputs.clone());
        let rate = cfg.ingest_rate_limit;
        let limits = source::ingest::Limits {
            max_body: cfg.ingest_max_body,
            guard: telemetry::auth::Guard::new(cfg.auth_mode, tokens, source::ingest::needs),
            limiter: telemetry::ratelimit::RateLimiter::new(rate, 2.0 * rate),
        };
        let tls = cfg.tls.acceptor(stop_inputs.clone())?;
        inputs.spawn(source::ingest::serve(
            l,
            sink.clone(),
            limits,
            tls,
            cfg.process.runtime.http_header_timeout,
            stop_inputs.clone(),
        ));
    }
    for s in sources {
        let (sink, stop, name) = (sink.clone(), stop_inputs.clone(), s.name());
        inputs.spawn(async move {
            if let Err(e) = s.run(sink, stop).await {
                tracing::error!(source = %name, error = %e, "source failed");
            }
        });
    }
    drop(sink);
    inputs.close();
    if cfg.finite() {
        let total = cfg
            .csv
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        tokio::spawn(report_progress(
            total,
            counters.clone(),
            stop_helpers.clone(),
        ));
    }
    if cfg.finite() {
        tokio::select! {
            _ = inputs.wait() => {}
            _ = shutdown.cancelled() => {}
        }
    } else {
        shutdown.cancelled().await;
    }
    // Stop taking input; publish what is buffered; give up only after the grace period. The
    // grace covers the sources too: with etcd gone the buffer stays full, and a source can be
    // stuck handing over its last record until the publishers give up and the pipeline closes.
    stop_inputs.cancel();
    flow.close();
    let drained = async {
        inputs.wait().await;
        flow.wait().await;
    };
    tokio::pin!(drained);
    // A finite input that ended waits for every record to be published, however long etcd
    // takes to have room again; only a signal starts the grace period.
    let done = !shutdown.is_cancelled()
        && tokio::select! {
            _ = &mut drained => true,
            _ = shutdown.cancelled() => false,
        };
    if !done
        && tokio::time::timeout(cfg.process.runtime.shutdown_grace, &mut drained)
            .await
            .is_err()
    {
        give_up.cancel();
        flow.wait().await;
        inputs.wait().await;
    }
    stop_helpers.cancel();
    started.stop().await;
    Ok(())
}
