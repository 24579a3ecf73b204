//! `/health`, `/ready` and `/metrics`, served by every binary (the gateway on its main port,
//! the streamer and collector on `--admin-listen`).

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    RECORDER
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Tests start several services in one process: only the first install wins, and
            // they all share its registry.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Answers whether the service is ready (etcd reachable, leader elected, ...).
pub type ReadyCheck = Arc<dyn Fn() -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

pub fn router(ready: ReadyCheck) -> Router {
    // Install the recorder now: metrics recorded before it exists are lost.
    metrics_handle();
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/ready", get(ready_handler))
        .route("/metrics", get(|| async { metrics_handle().render() }))
        .with_state(ready)
}

async fn ready_handler(State(ready): State<ReadyCheck>) -> (StatusCode, Json<serde_json::Value>) {
    if ready().await {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not ready"})),
        )
    }
}

/// Serves the admin router until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    ready: ReadyCheck,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(ready))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
