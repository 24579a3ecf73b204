//! The gateway: REST over stored telemetry and a WebSocket live stream, served by axum.
//! [`app`] builds the router from a state (tests drive it with `oneshot`); [`run`] serves it.

pub mod alerts_live;
pub mod api;
pub mod config;
pub mod cursor;
pub mod error;
pub mod gpu_registry;
pub mod hub;
pub mod latest;
pub mod live;
pub mod openapi;
pub mod query_cache;
pub mod state;
pub mod token_cli;
pub mod ui;
pub mod ws;

use std::sync::{Arc, OnceLock};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use etcd_client::Client;
use telemetry::admin::Readiness;
use telemetry::auth::{AuthMode, Guard};
use telemetry::cluster::{Registration, Role};
use telemetry::service::StartError;
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
    // Origins were checked by `Config::validate`; a bad one cannot reach here.
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
        .route("/api/v1/fleet/latest", get(api::fleet::latest))
        .route("/api/v1/fleet/summary", get(api::fleet::summary))
        .route("/api/v1/cluster", get(api::cluster::cluster))
        .route("/api/v1/alerts", get(api::alerts::alerts))
        .route("/api/v1/messages/{id}", get(api::messages::message))
        .route("/api/v1/config", get(api::config::list_config))
        .route("/api/v1/config/{key}", put(api::config::set_config))
        .route("/api/v1/ws/telemetry", get(ws::ws_handler))
        .route("/openapi.json", get(openapi::spec))
        .merge(ui::router())
        .fallback(|| async { status_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), limits))
        .layer(middleware::from_fn_with_state(
            state.limiter.clone(),
            telemetry::ratelimit::middleware,
        ))
        .with_state(state.clone());
    let guard = Guard::new(state.cfg.auth_mode, state.tokens.clone(), needs);
    api.merge(telemetry::admin::router(state.readiness.clone()))
        .layer(middleware::from_fn_with_state(
            guard,
            telemetry::auth::guard,
        ))
        .layer(middleware::map_response(error::json_errors))
        .layer(middleware::from_fn(record_metrics))
        .layer(CompressionLayer::new())
        .layer(RequestBodyLimitLayer::new(state.cfg.max_request_bytes))
        .layer(cors)
}

/// The role each request needs under `AUTH_MODE=token`: none for the probes and the dashboard's
/// and API reference's code (see [`ui`]), `admin` to change anything, `read` for the rest (the
/// API, the WebSocket, `/metrics`).
fn needs(method: &Method, path: &str) -> Option<telemetry::auth::Role> {
    if matches!(path, "/health" | "/ready") || ui::is_public(path) {
        return None;
    }
    let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
    use telemetry::auth::Role::{Admin, Read};
    Some(if reads.contains(method) { Read } else { Admin })
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

/// Why the gateway could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// etcd never answered, or refused our credentials.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The listener failed.
    #[error("serving HTTP failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Builds the state over a connected `client`, and starts the registry and live-stream
/// watches. The registry clears `readiness`'s "registry" condition at its first load.
pub fn state(
    cfg: Config,
    addr: Option<String>,
    client: Client,
    readiness: Readiness,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> AppState {
    let keys = telemetry::keys::Keys::new(&cfg.etcd.prefix);
    let registry = gpu_registry::GpuRegistry::default();
    let hub = hub::Hub::default();
    let cache = query_cache::QueryCache::new(cfg.query_cache_mb * 1024 * 1024, cfg.query_cache_ttl);
    tasks.spawn(registry.clone().follow(
        client.clone(),
        keys.clone(),
        readiness.clone(),
        stop.clone(),
    ));
    // Always followed: the latest-value index needs it even without WebSockets or a cache.
    let latest = latest::Latest::default();
    readiness.block("latest", "loading the latest-value index");
    tasks.spawn(live::follow(
        hub.clone(),
        cache.clone(),
        latest.clone(),
        client.clone(),
        keys.clone(),
        stop.clone(),
    ));
    tasks.spawn(alerts_live::follow(
        hub.clone(),
        client.clone(),
        keys.clone(),
        stop.clone(),
    ));
    tasks.spawn(latest::load(
        latest.clone(),
        registry.clone(),
        (client.clone(), keys.clone()),
        readiness.clone(),
        stop.clone(),
    ));
    // The gateway follows the live configuration for its log level; the API reads etcd.
    let (c, k, startup, stop_follow) = (
        client.clone(),
        keys.clone(),
        telemetry::settings::Snapshot::at_startup(&[(
            telemetry::settings::catalog::LOG_LEVEL,
            telemetry::logging::startup_level().into(),
        )]),
        stop.clone(),
    );
    let me = Registration::now(Role::Gateway, telemetry::cluster::process_id(), addr);
    let (ws_clients, ready) = (
        Arc::<std::sync::atomic::AtomicUsize>::default(),
        readiness.clone(),
    );
    let ws_seen = ws_clients.clone();
    tasks.spawn(async move {
        let Some(s) =
            telemetry::settings::follow(c.clone(), k.clone(), startup, stop_follow.clone()).await
        else {
            return;
        };
        let status: telemetry::cluster::StatusFn = Arc::new(move || {
            let n = ws_seen.load(std::sync::atomic::Ordering::Relaxed);
            serde_json::json!({ "websocket_clients": n })
        });
        tokio::join!(
            telemetry::logging::follow_level(s.clone(), stop_follow.clone()),
            telemetry::cluster::register(c, k, me, status, ready, s, stop_follow),
        );
    });
    let chunks = telemetry::store::cache::Chunks::new(cfg.chunk_cache_mb * 1024 * 1024);
    let limiter = telemetry::ratelimit::RateLimiter::new(cfg.rate_limit_rps, cfg.rate_limit_burst);
    let tokens = telemetry::auth::Tokens::follow(client.clone(), &keys, stop.clone());
    AppState::new(state::Shared {
        cfg: Arc::new(cfg),
        client,
        keys,
        registry,
        hub,
        cache,
        chunks,
        latest,
        ws_clients,
        limiter,
        tokens,
        readiness,
        shutdown: stop.clone(),
        ws_tasks: TaskTracker::new(),
    })
}

/// Serves the gateway on `listener` until `shutdown` fires, then drains.
///
/// `/health`, `/ready` and `/metrics` answer from the first moment; until etcd answers, the
/// API answers 503 in the contract's error shape, and `/ready` says why.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let tasks = TaskTracker::new();
    let grace = cfg.runtime.shutdown_grace;
    let readiness = Readiness::new();
    // Blocked from the start, so that /ready never passes between etcd answering and the
    // registry's first load.
    readiness.block("registry", "loading the GPU registry");
    let full_app: Arc<OnceLock<Router>> = Arc::default();
    let early = early_app(readiness.clone(), full_app.clone());
    let tls = cfg
        .tls
        .acceptor(shutdown.clone())
        .map_err(StartError::Setting)?;
    let listener_addr = listener.local_addr().ok();
    tracing::info!(addr = ?listener_addr, tls = tls.is_some(), auth_mode = ?cfg.auth_mode, "gateway listening");
    if cfg.auth_mode == AuthMode::None && listener_addr.is_some_and(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            addr = ?listener_addr,
            "AUTH_MODE=none on a non-loopback address: anyone who can reach it can read all \
             telemetry and change the configuration; set AUTH_MODE=token (docs/security.md)"
        );
    }
    let stop = shutdown.clone();
    let server = tokio::spawn(telemetry::http::serve_tls(
        listener,
        early,
        tls,
        cfg.runtime.http_header_timeout,
        stop,
        grace,
    ));
    let stop_health = CancellationToken::new();
    let connected = telemetry::service::connect_etcd(
        &cfg.etcd,
        &cfg.runtime,
        &readiness,
        &shutdown,
        stop_health.clone(),
    )
    .await;
    let ws_tasks = match connected {
        Ok(client) => {
            let addr = listener_addr.map(|a| a.to_string());
            let state = state(cfg, addr, client, readiness, &tasks, &shutdown);
            let ws_tasks = state.ws_tasks.clone();
            let _ = full_app.set(app(state));
            Some(ws_tasks)
        }
        Err(e) => {
            shutdown.cancel();
            let _ = server.await;
            return Err(e.into());
        }
    };
    shutdown.cancelled().await;
    // WebSocket clients get their 1001 close frames within the grace period.
    if let Some(ws) = ws_tasks {
        ws.close();
        let _ = tokio::time::timeout(grace, ws.wait()).await;
    }
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(r)) => r?,
        Ok(Err(_)) | Err(_) => tracing::warn!("HTTP connections still open after the grace period"),
    }
    stop_health.cancel();
    telemetry::shutdown::drain(&tasks, grace).await;
    Ok(())
}

/// The router served while the gateway connects: the admin routes, and every other path
/// handed to the full app once it exists (503 before).
fn early_app(readiness: Readiness, full: Arc<OnceLock<Router>>) -> Router {
    let admin = telemetry::admin::router(readiness.clone());
    Router::new().fallback(move |req: Request| {
        let (full, admin, readiness) = (full.clone(), admin.clone(), readiness.clone());
        async move {
            use tower::ServiceExt as _;
            if let Some(app) = full.get() {
                return app.clone().oneshot(req).await.into_response();
            }
            match req.uri().path() {
                "/health" | "/ready" | "/metrics" => admin.oneshot(req).await.into_response(),
                _ => {
                    let why = readiness
                        .check()
                        .err()
                        .and_then(|m| m.into_values().next())
                        .unwrap_or_else(|| "starting".into());
                    error::AppError::Unavailable(format!("the gateway is starting: {why}"))
                        .into_response()
                }
            }
        }
    })
}
