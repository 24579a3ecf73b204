//! What every handler shares.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use etcd_client::Client;
use telemetry::keys::Keys;

use crate::config::Config;
use crate::ratelimit::RateLimiter;
use crate::registry_cache::RegistryCache;
use crate::ws::Hub;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub client: Client,
    pub keys: Keys,
    pub registry: RegistryCache,
    pub hub: Hub,
    pub ws_clients: Arc<AtomicUsize>,
    pub limiter: RateLimiter,
}
