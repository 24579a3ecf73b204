//! `/health`, `/ready` and `/metrics`, served by every binary (the gateway on its main port,
//! the streamer and collector on `--admin-listen`).
//!
//! They are served from the first moment of a process, before etcd answers: a probe must see
//! "running, not ready, because …", never "connection refused". `/ready` answers at once from
//! [`Readiness`], which background tasks keep up to date, so a probe with a short timeout never
//! waits on etcd.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::service::BadSetting;

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

/// Why a process cannot do its work right now, one entry per condition ("etcd", "registry",
/// "storage", …). Ready means no condition blocks. Cheap to clone; every clone shares state.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<&'static str, String>>>);

impl Readiness {
    /// Starts not ready: etcd has not answered yet.
    pub fn new() -> Self {
        let r = Self::default();
        r.block("etcd", "waiting for etcd to answer");
        r
    }

    /// Marks `condition` as blocking, with a reason a person can act on.
    pub fn block(&self, condition: &'static str, reason: impl Into<String>) {
        self.0.lock().unwrap().insert(condition, reason.into());
    }

    /// Marks `condition` as satisfied.
    pub fn clear(&self, condition: &'static str) {
        self.0.lock().unwrap().remove(condition);
    }

    /// `Ok` when ready, else every blocking condition with its reason.
    pub fn check(&self) -> Result<(), BTreeMap<&'static str, String>> {
        let m = self.0.lock().unwrap();
        if m.is_empty() {
            Ok(())
        } else {
            Err(m.clone())
        }
    }
}

/// The three admin routes over `readiness`.
pub fn router(readiness: Readiness) -> Router {
    // Install the recorder now: metrics recorded before it exists are lost.
    metrics_handle();
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/ready", get(ready_handler))
        .route("/metrics", get(|| async { metrics_handle().render() }))
        .with_state(readiness)
}

async fn ready_handler(State(r): State<Readiness>) -> (StatusCode, Json<serde_json::Value>) {
    match r.check() {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))),
        Err(why) => {
            let reason = why
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("; ");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "not ready", "reason": reason, "checks": why})),
            )
        }
    }
}

/// Binds the admin address. `setting` is what the user gave (`None`: not given, `Some("")`:
/// disabled). When the user gave nothing and `default` is taken (a second collector on the
/// host), any free port on the same interface is bound instead and logged; an address the user
/// gave explicitly must be bound, or the process refuses to start.
pub async fn bind(setting: Option<&str>, default: &str) -> Result<Option<TcpListener>, BadSetting> {
    let (addr, explicit) = match setting {
        Some("") => return Ok(None),
        Some(a) => (a, true),
        None => (default, false),
    };
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::AddrInUse => {
            let fallback = addr
                .parse::<SocketAddr>()
                .map(|mut a| {
                    a.set_port(0);
                    a
                })
                .map_err(|p| BadSetting(format!("ADMIN_LISTEN default {addr:?}: {p}")))?;
            let l = TcpListener::bind(fallback)
                .await
                .map_err(|e| BadSetting(format!("ADMIN_LISTEN: cannot bind {fallback}: {e}")))?;
            tracing::warn!(
                default = addr,
                bound = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                "the default admin port is taken (another process on this host?); serving /health, /ready and /metrics on another port"
            );
            Ok(Some(l))
        }
        Err(e) => Err(BadSetting(format!(
            "ADMIN_LISTEN: cannot listen on {addr}: {e}"
        ))),
    }
}

/// Serves the admin router on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    stop: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /health, /ready and /metrics");
    }
    crate::http::serve(
        listener,
        router(readiness),
        crate::http::DEFAULT_HEADER_TIMEOUT,
        stop,
        std::time::Duration::from_secs(2),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_every_blocking_condition() {
        let r = Readiness::new();
        assert!(r.check().is_err());
        r.block("storage", "etcd is full");
        r.clear("etcd");
        assert_eq!(r.check().unwrap_err().len(), 1);
        r.clear("storage");
        assert!(r.check().is_ok());
    }

    #[tokio::test]
    async fn a_taken_default_port_falls_back_but_an_explicit_one_is_an_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let other = bind(None, &addr).await.unwrap().unwrap();
        assert_ne!(other.local_addr().unwrap().to_string(), addr);
        let err = bind(Some(&addr), "127.0.0.1:0").await.unwrap_err();
        assert!(err.0.contains("ADMIN_LISTEN"), "{err}");
        assert!(bind(Some(""), &addr).await.unwrap().is_none());
    }
}
