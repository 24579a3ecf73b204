//! The collector: claims queue partitions under a lease, and stores every queued record
//! exactly once with fenced etcd Txns. See docs/protocol.md for the protocol and its
//! invariants.

pub mod access;
pub mod assignment;
pub mod claim;
pub mod commit;
pub mod config;
pub mod config_cli;
pub mod counters;
pub mod dedupe;
pub mod dlq;
pub mod gpu_registry;
pub mod identity;
pub mod inbox;
pub mod partition;
mod rules;
pub mod states;
pub mod storage;
pub mod watcher;

use std::sync::Arc;
use std::time::Duration;

use crate::commit::{Committer, FoldedWindows};
use etcd_client::Client;
use telemetry::cluster::{Registration, Role};
use telemetry::keys::Keys;
use telemetry::lease::KeptLease;
use telemetry::service::StartError;
use telemetry::settings::{catalog, Settings, Snapshot};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::Config;
pub use crate::counters::Counters;

/// What every task of one collector shares.
pub struct Shared {
    pub cfg: Config,
    pub client: Client,
    pub keys: Keys,
    pub committer: Committer,
    pub registry: gpu_registry::GpuRegistry,
    pub counters: Arc<Counters>,
    pub permits: Semaphore,
    /// Live configuration: the kill switch stops taking messages.
    pub settings: Settings,
    /// The partitions this collector works on now, for its cluster entry.
    pub held: std::sync::Mutex<Vec<u16>>,
    /// Samples older than this are refused (`storage::retention`).
    pub cutoff: storage::Cutoff,
}

/// Why a collector could not start: the start-up every queue process shares.
pub type CollectorError = StartError;

/// The admin address when `ADMIN_LISTEN` is not given.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9102";

/// Runs a collector until `shutdown` fires; `counters` receives its figures.
pub async fn run(
    cfg: Config,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<(), CollectorError> {
    let mut cfg = cfg;
    let started =
        telemetry::service::start_queue_process(&mut cfg.process, DEFAULT_ADMIN_LISTEN, &shutdown)
            .await?;
    let readiness = started.admin.readiness.clone();
    let client = started.client.clone();
    let tracker = TaskTracker::new();
    let keys = Keys::new(&cfg.process.etcd.prefix);
    let startup = Snapshot::at_startup(&[(
        catalog::LOG_LEVEL,
        telemetry::logging::startup_level().into(),
    )]);
    let Some(settings) =
        telemetry::settings::follow(client.clone(), keys.clone(), startup, shutdown.clone()).await
    else {
        started.stop().await;
        return Ok(());
    };
    tracker.spawn(telemetry::logging::follow_level(
        settings.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(telemetry::settings::report_ingestion(
        settings.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    let shared = Arc::new(Shared {
        committer: Committer::new(
            client.clone(),
            keys.clone(),
            FoldedWindows::new(storage::Windows::new(cfg.storage.fold_window)),
            cfg.process.queue.max_txn_ops as usize,
        )
        .with_states(states::States::new(
            keys.clone(),
            cfg.message_state_ttl,
            cfg.id.clone(),
        )),
        registry: gpu_registry::GpuRegistry::new(client.clone(), keys.clone()),
        cutoff: storage::Cutoff::default(),
        permits: Semaphore::new(usize::from(cfg.workers)),
        settings,
        held: Default::default(),
        counters,
        keys,
        client: client.clone(),
        cfg,
    });
    tracker.spawn(telemetry::cluster::register(
        client.clone(),
        shared.keys.clone(),
        Registration::now(
            Role::Collector,
            shared.cfg.id.clone(),
            started.admin.addr.map(|a| a.to_string()),
        ),
        status(shared.clone()),
        readiness.clone(),
        shared.settings.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(housekeeping(shared.clone(), shutdown.clone()));
    tracker.spawn(storage::run(shared.clone(), shutdown.clone()));
    let storage = telemetry::storage::track(
        client.clone(),
        shared.keys.clone(),
        shared.cfg.storage.check_interval,
        readiness.clone(),
        telemetry::storage::BlockOn::Alarm,
        shutdown.clone(),
    );
    tracker.spawn(learn_cutoff(shared.clone(), storage.status));

    // One lease at a time; a lost lease stops every worker, then we start over with a new one.
    let mut backoff =
        telemetry::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    // The lease we declared lost: etcd restores leases when it restarts, so it may still hold
    // our partition claims, and nobody (not even us) could claim them until it expired.
    // Revoking it frees them at once; the fence keeps anything committed under it exact.
    let mut abandoned: Option<i64> = None;
    while !shutdown.is_cancelled() {
        if let Some(old) = abandoned {
            match client.clone().lease_revoke(old).await {
                Ok(_) => {
                    tracing::info!(
                        lease = old,
                        "revoked the lease we lost; its partitions are free"
                    );
                    abandoned = None;
                }
                Err(e) if telemetry::etcd::is_not_found(&e) => abandoned = None,
                Err(e) => {
                    tracing::debug!(lease = old, error = %e, "cannot revoke the lost lease yet")
                }
            }
        }
        let lease_stop = CancellationToken::new();
        let lease = match KeptLease::grant(
            &client,
            shared.cfg.processing_timeout,
            lease_stop.clone(),
        )
        .await
        {
            Ok(l) => {
                readiness.clear("lease");
                l
            }
            Err(e) => {
                shared.counters.database_error();
                readiness.block("lease", format!("cannot get a lease from etcd: {e}"));
                tracing::warn!(error = %e, "cannot get a lease; retrying");
                telemetry::shutdown::or_cancel(&shutdown, tokio::time::sleep(backoff.next_delay()))
                    .await;
                continue;
            }
        };
        backoff.reset();
        let result = assignment::run(shared.clone(), lease.clone(), shutdown.clone()).await;
        lease_stop.cancel();
        abandoned = Some(lease.id);
        if shutdown.is_cancelled() {
            let _ = client.clone().lease_revoke(lease.id).await;
        } else if let Err(e) = result {
            shared.counters.database_error();
            tracing::warn!(error = %e, "collector round ended with an error; starting over");
            telemetry::shutdown::or_cancel(&shutdown, tokio::time::sleep(backoff.next_delay()))
                .await;
        } else {
            tracing::warn!("lease lost; every partition was dropped; re-registering");
        }
    }
    telemetry::shutdown::drain(&tracker, shared.cfg.process.runtime.shutdown_grace).await;
    started.stop().await;
    Ok(())
}

/// A collector's figures for its cluster entry.
fn status(shared: Arc<Shared>) -> telemetry::cluster::StatusFn {
    let rate = telemetry::cluster::Rate::default();
    Arc::new(move || {
        let c = &shared.counters;
        let stored = Counters::get(&c.stored);
        serde_json::json!({
            "partitions": *shared.held.lock().unwrap_or_else(|e| e.into_inner()),
            "stored": stored,
            "stored_per_second": rate.per_second(stored),
            "duplicates": Counters::get(&c.duplicates),
            "invalid": Counters::get(&c.invalid),
            "dead_lettered": Counters::get(&c.dead_lettered),
            "lag_ms": Counters::get(&c.lag_ms),
        })
    })
}

/// Follows the retention cutoff the maintainer publishes, so that every worker refuses what
/// retention has deleted (the maintainer's own collector learns it at once).
async fn learn_cutoff(
    shared: Arc<Shared>,
    mut status: tokio::sync::watch::Receiver<Option<telemetry::storage::StorageStatus>>,
) {
    loop {
        if let Some(s) = status.borrow_and_update().as_ref() {
            shared.cutoff.learn(s.retention_cutoff_unix_nano);
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Once a second: samples the queue depth, and writes the GPU registry's pending historical
/// entries. Every rescan interval: dead-letters messages in partitions the queue does not have.
async fn housekeeping(shared: Arc<Shared>, stop: CancellationToken) {
    let mut last_sweep = tokio::time::Instant::now() - shared.cfg.rescan_interval;
    while telemetry::shutdown::or_cancel(&stop, tokio::time::sleep(Duration::from_secs(1)))
        .await
        .is_some()
    {
        if let Ok(d) = telemetry::queue::queue_depth(&shared.client, &shared.keys).await {
            ::metrics::gauge!("queue_depth").set(d as f64);
        }
        if let Err(e) = shared.registry.flush_historical().await {
            tracing::debug!(error = %e, "cannot write the GPU registry yet");
        }
        if last_sweep.elapsed() >= shared.cfg.rescan_interval {
            last_sweep = tokio::time::Instant::now();
            let partitions = shared.cfg.process.queue.partitions();
            if let Ok(n) =
                dlq::sweep_stray_partitions(&shared.client, &shared.keys, partitions).await
            {
                for _ in 0..n {
                    shared.counters.dead_lettered();
                }
            }
        }
    }
}
