//! What every handler shares.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use etcd_client::Client;
use telemetry::keys::Keys;

use crate::config::Config;
use crate::query_cache::QueryCache;
use crate::ratelimit::RateLimiter;
use crate::registry_cache::RegistryCache;
use crate::ws::Hub;

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
    pub registry: RegistryCache,
    pub hub: Hub,
    pub cache: QueryCache,
    pub ws_clients: Arc<AtomicUsize>,
    pub limiter: RateLimiter,
}
