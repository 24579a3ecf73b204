//! The gateway: REST over stored telemetry and a WebSocket live stream, served by axum.
//! [`app`] builds the router from a state (tests drive it with `oneshot`); [`run`] serves it.

pub mod api;
pub mod config;
pub mod cursor;
pub mod error;
pub mod live;
pub mod openapi;
pub mod query_cache;
pub mod ratelimit;
pub mod registry_cache;
pub mod state;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

pub use crate::config::Config;
use crate::error::status_error;
use crate::state::AppState;

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let ready_client = state.client.clone();
    let registry = state.registry.clone();
    let ready: telemetry::admin::ReadyCheck = Arc::new(move || {
        let (c, r) = (ready_client.clone(), registry.clone());
        Box::pin(async move { r.is_loaded() && telemetry::etcd::is_ready(&c).await })
    });
    let cors = if state.cfg.cors_origins.iter().any(|o| o == "*") {
        CorsLayer::new().allow_origin(AllowOrigin::any())
    } else {
        CorsLayer::new().allow_origin(
            state
                .cfg
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    let api = Router::new()
        .route("/api/v1/gpus", get(api::gpus::list_gpus))
        .route(
            "/api/v1/gpus/{id}/telemetry",
            get(api::telemetry::gpu_telemetry),
        )
        .route("/api/v1/hosts", get(api::gpus::list_hosts))
        .route("/api/v1/hosts/{hostname}/gpus", get(api::gpus::host_gpus))
        .route("/api/v1/invalid", get(api::invalid::list_invalid))
        .route("/api/v1/ws/telemetry", get(ws::ws_handler))
        .route("/openapi.json", get(openapi::spec))
        .route("/docs", get(openapi::docs))
        .fallback(|| async { status_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), limits))
        .layer(middleware::from_fn_with_state(
            state.limiter.clone(),
            ratelimit::middleware,
        ))
        .with_state(state.clone());
    api.merge(telemetry::admin::router(ready))
        .layer(middleware::from_fn(record_metrics))
        .layer(CompressionLayer::new())
        .layer(RequestBodyLimitLayer::new(state.cfg.max_request_bytes))
        .layer(cors)
}

/// Query-size limit and request timeout, answered in the contract's error shape.
async fn limits(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if req
        .uri()
        .query()
        .is_some_and(|q| q.len() > s.cfg.max_request_bytes)
    {
        return status_error(
            StatusCode::URI_TOO_LONG,
            "QUERY_TOO_LONG",
            format!("query string longer than {} bytes", s.cfg.max_request_bytes),
        );
    }
    match tokio::time::timeout(s.cfg.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => status_error(
            StatusCode::GATEWAY_TIMEOUT,
            "TIMEOUT",
            format!("request took longer than {:?}", s.cfg.request_timeout),
        ),
    }
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_ms", "route" => route)
        .record(started.elapsed().as_secs_f64() * 1e3);
    resp
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("etcd was never reachable before shutdown")]
    NoEtcd,
    #[error("serving HTTP failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Builds the state: connects, and starts the registry and live-stream watches.
pub async fn state(
    cfg: Config,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<AppState, GatewayError> {
    let client = telemetry::etcd::connect_with_retry(&cfg.etcd, stop)
        .await
        .ok_or(GatewayError::NoEtcd)?;
    let keys = telemetry::keys::Keys::new(&cfg.etcd.prefix);
    let registry = registry_cache::RegistryCache::default();
    let hub = ws::Hub::default();
    let cache = query_cache::QueryCache::new(cfg.query_cache_mb * 1024 * 1024, cfg.query_cache_ttl);
    tasks.spawn(
        registry
            .clone()
            .follow(client.clone(), keys.clone(), stop.clone()),
    );
    if cfg.ws_enabled || cache.enabled() {
        tasks.spawn(live::follow(
            hub.clone(),
            cache.clone(),
            client.clone(),
            keys.clone(),
            stop.clone(),
        ));
    }
    let limiter = ratelimit::RateLimiter::new(cfg.rate_limit_rps, cfg.rate_limit_burst);
    Ok(AppState::new(state::Shared {
        cfg: Arc::new(cfg),
        client,
        keys,
        registry,
        hub,
        cache,
        ws_clients: Arc::default(),
        limiter,
    }))
}

/// Serves the gateway on `listener` until `shutdown` fires, then drains.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let tasks = TaskTracker::new();
    let grace = cfg.runtime.shutdown_grace;
    let state = state(cfg, &tasks, &shutdown).await?;
    tracing::info!(addr = ?listener.local_addr().ok(), "gateway listening");
    let app = app(state).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    telemetry::shutdown::drain(&tasks, grace).await;
    Ok(())
}
