//! Per-client-IP rate limiting: a token bucket per address, answered with 429 and
//! `Retry-After` when empty. Buckets of clients idle for a minute are forgotten, so the map
//! stays as small as the set of active clients.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::time::Instant;

use crate::throttle::TokenBucket;

/// A token bucket per client address (the gateway's API, the streamer's push ingest).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rps: f64,
    burst: f64,
    buckets: Arc<Mutex<HashMap<IpAddr, (TokenBucket, Instant)>>>,
}

impl RateLimiter {
    /// `rps` requests per second per address (0: no limit), with bursts of `burst`.
    pub fn new(rps: f64, burst: f64) -> Self {
        Self {
            rps,
            burst: burst.max(1.0),
            buckets: Arc::default(),
        }
    }

    /// `Err(wait)` when this address is over its rate.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.rps == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() > 10_000 {
            buckets.retain(|_, (_, seen)| now.duration_since(*seen) < Duration::from_secs(60));
        }
        let (bucket, seen) = buckets
            .entry(ip)
            .or_insert_with(|| (TokenBucket::new(self.rps, self.burst), now));
        *seen = now;
        bucket.try_take(1.0)
    }
}

/// Answers 429 with `Retry-After`, in the contract's error shape, to a client over its rate
/// (a gRPC call gets `ResourceExhausted`, with the same `Retry-After` header).
pub async fn middleware(State(limiter): State<RateLimiter>, req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(ip) = ip {
        if let Err(wait) = limiter.check(ip) {
            metrics::counter!("http_rate_limited").increment(1);
            let secs = (wait.as_secs_f64().ceil() as u64).max(1);
            let message = format!("too many requests from {ip}: retry in {secs}s");
            let mut resp = if crate::auth::is_grpc(&req) {
                tonic::Status::resource_exhausted(message)
                    .into_http::<axum::body::Body>()
                    .into_response()
            } else {
                let body = serde_json::json!({
                    "success": false,
                    "error": message,
                    "code": "RATE_LIMITED",
                });
                (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
            };
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return resp;
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limits_each_address_separately() {
        let l = RateLimiter::new(1.0, 2.0);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(l.check(a).is_ok() && l.check(a).is_ok());
        assert_eq!(l.check(a), Err(Duration::from_secs(1)));
        assert!(l.check(b).is_ok(), "another client is not affected");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.check(a).is_ok());
    }
}
