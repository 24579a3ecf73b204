//! The gateway's limits: per-client rate, connections, slow headers and idle connections.

use std::time::Duration;

use pipeline_tests::services::{init_tracing, start_gateway, unique_prefix};
use pipeline_tests::EtcdCluster;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_connection_limits_refuse_clearly() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("limits");
    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| {
        c.rate_limit_rps = 1.0;
        c.rate_limit_burst = 3.0;
        c.ws_max_connections = 1;
    })
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let r = reqwest::get(format!("{base}/api/v1/hosts")).await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "RATE_LIMITED");
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(retry_after.is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
    gw.shutdown().await.unwrap();

    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| c.ws_max_connections = 1).await;
    let ws = base.replace("http", "ws") + "/api/v1/ws/telemetry";
    let (_first, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    match tokio_tungstenite::connect_async(&ws).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert!(body["error"]
                .as_str()
                .unwrap()
                .contains("WS_MAX_CONNECTIONS"));
        }
        other => panic!("second WebSocket should be refused, got {other:?}"),
    }
    gw.shutdown().await.unwrap();
}

/// Slow or silent clients hold nothing: a header sent one byte at a time (slowloris) and an
/// idle keep-alive connection are both closed after `HTTP_HEADER_TIMEOUT`, on the gateway and
/// on the streamer's ingest listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("slowloris");
    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| {
        c.runtime.http_header_timeout = Duration::from_secs(1);
    })
    .await;
    let ingest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest_addr = ingest.local_addr().unwrap().to_string();
    let mut cfg = streamer::Config::for_tests(etcd.endpoints(), &prefix);
    cfg.listen = Some("in-process".into());
    cfg.process.runtime.http_header_timeout = Duration::from_secs(1);
    let stop = tokio_util::sync::CancellationToken::new();
    let streaming = tokio::spawn(streamer::run(
        cfg,
        streamer::Listeners {
            ingest: Some(ingest),
        },
        std::sync::Arc::new(streamer::Counters::default()),
        stop.clone(),
    ));

    for addr in [base.trim_start_matches("http://").to_string(), ingest_addr] {
        // Twenty slowloris connections, a byte every 200 ms.
        let mut slow = Vec::new();
        for _ in 0..20 {
            slow.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        let started = tokio::time::Instant::now();
        let header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut open = slow.len();
        'bytes: for b in header.iter().cycle() {
            open = 0;
            for s in &mut slow {
                if s.write_all(&[*b]).await.is_ok() && s.flush().await.is_ok() {
                    open += 1;
                }
            }
            if open == 0 || started.elapsed() > Duration::from_secs(20) {
                break 'bytes;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(open, 0, "{addr}: every slowloris connection is closed");
        // A served request, then silence: the keep-alive connection is closed too.
        let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 "),
            "a response"
        );
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match idle.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "{addr}: an idle keep-alive connection is closed"
        );
    }
    stop.cancel();
    streaming.await.unwrap().unwrap();
    gw.shutdown().await.unwrap();
}
