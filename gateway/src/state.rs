//! What every handler shares.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use etcd_client::Client;
use telemetry::admin::Readiness;
use telemetry::keys::Keys;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::gpu_registry::GpuRegistry;
use crate::hub::Hub;
use crate::query_cache::QueryCache;
use telemetry::ratelimit::RateLimiter;
use telemetry::store::cache::Chunks;

/// Cheap to clone: axum clones the state for every request, and an etcd `Client` clone alone
/// copies a dozen gRPC service handles (it was a third of the gateway's CPU on cached queries).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub cfg: Arc<Config>,
    pub client: Client,
    pub keys: Keys,
    pub registry: GpuRegistry,
    pub hub: Hub,
    pub cache: QueryCache,
    /// Decoded folded chunks, shared by reads (checked against the bytes each read fetches).
    pub chunks: Chunks,
    /// Every GPU's newest value of every metric (`fleet/latest`, `fleet/summary`).
    pub latest: crate::latest::Latest,
    pub ws_clients: Arc<AtomicUsize>,
    pub limiter: RateLimiter,
    /// API tokens in force (checked under `AUTH_MODE=token`), kept current by a watch.
    pub tokens: telemetry::auth::Tokens,
    /// What `/ready` reports.
    pub readiness: Readiness,
    /// Fires when the gateway shuts down: WebSocket clients are closed with 1001.
    pub shutdown: CancellationToken,
    /// Upgraded WebSocket connections, which the HTTP server's graceful shutdown does not
    /// wait for: the gateway waits for their close frames itself.
    pub ws_tasks: TaskTracker,
}
