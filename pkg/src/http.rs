//! Serving an axum router with the limits that `axum::serve` does not expose: a deadline for a
//! request's headers (a slowloris client sending a header one byte at a time), which hyper
//! also applies to a keep-alive connection waiting for its next request (an idle timeout).
//! Every listener of the pipeline (gateway, ingest, admin) is served through here.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long a client may take to send a request's headers, and how long a keep-alive
/// connection may wait idle for its next request.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` fires, then lets requests in flight finish (at most
/// `grace`). Each request carries `ConnectInfo<SocketAddr>`, as with axum's own server.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    serve_tls(listener, app, None, header_timeout, stop, grace).await
}

/// [`serve`], over TLS when `tls` is given (the handshake must finish within
/// `header_timeout`, like a request's headers).
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    stop: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(header_timeout);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Without it, a response written in two pieces (TLS writes its headers and body as
        // separate records) waits for the client's delayed ACK: 40 ms a request.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let app = app.clone();
        let service = TowerToHyperService::new(tower::service_fn(
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            },
        ));
        let Some(tls) = tls.clone() else {
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
            continue;
        };
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics::counter!("tls_handshake_failures").increment(1);
                    return tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "HTTP connections still open after the grace period");
    }
    Ok(())
}
