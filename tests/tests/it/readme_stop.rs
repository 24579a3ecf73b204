//! Stopping and refusing, as a user sees it: WebSocket 1001 on shutdown, the drain on
//! SIGTERM, and exit 2 with one line for each bad setting.

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{binary, count, unique_prefix};
use pipeline_tests::{sample_csv, EtcdCluster};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::readme::cmd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_shutdown_closes_websockets_with_1001() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("readme-ws-close");
    let (mut gateway, port) = crate::readme::ready_gateway(&etcd.endpoints(), &prefix).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/api/v1/ws/telemetry"))
            .await
            .unwrap();
    gateway.signal(libc::SIGTERM);
    let close = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Close(frame)) = msg {
                return frame;
            }
        }
        None
    })
    .await
    .expect("a close frame within the grace period");
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    let status = gateway.wait_exit(Duration::from_secs(35)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", gateway.stderr());
}

#[tokio::test]
async fn bad_settings_stop_each_binary_with_exit_2_and_one_line_naming_them() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    /// Binary, arguments, environment, and the setting the error must name.
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("streamer", vec!["--csv", "/no/such.csv"], vec![], "--csv"),
        (
            "streamer",
            vec!["--nvidia-smi=/no/such/binary"],
            vec![],
            "--nvidia-smi",
        ),
        (
            "streamer",
            vec!["--dcgm-url", "not a url"],
            vec![],
            "--dcgm-url",
        ),
        (
            "streamer",
            vec!["--listen", &taken],
            vec![],
            "INGEST_LISTEN",
        ),
        (
            "collector",
            vec![],
            vec![("ADMIN_LISTEN", &taken)],
            "ADMIN_LISTEN",
        ),
        (
            "gateway",
            vec![],
            vec![("CORS_ORIGINS", "example.com")],
            "CORS_ORIGINS",
        ),
    ];
    for (bin, args, env, names) in cases {
        let out = Command::new(binary(bin))
            .args(&args)
            .envs(env.iter().copied())
            .env("ETCD_ENDPOINTS", "127.0.0.1:1")
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin} {args:?} {env:?}: {err}");
        assert!(err.contains(names), "{bin} {args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

/// SIGTERM publishes what is buffered without the token bucket (so that it fits the grace
/// period), and says so: nothing is lost and nothing is silently faster than STREAM_RATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_buffer_unpaced_and_says_so() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("readme-drain");
    let port = free_port();
    let mut streamer = Proc::spawn(
        "streamer",
        cmd("streamer", &etcd.endpoints(), &prefix)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("STREAM_RATE", "50"),
    );
    streamer.admin_addr().await;
    let csv = std::fs::read_to_string(sample_csv()).unwrap();
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1/ingest"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    // At 50 records/s the 2,470 rows would take 49 s; the signal comes first.
    streamer.signal(libc::SIGTERM);
    let status = streamer.wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", streamer.stderr());
    assert!(
        streamer.stdout().contains("read=2470 published=2470"),
        "{}",
        streamer.stdout()
    );
    assert!(
        streamer.stderr().contains("without pacing"),
        "the unpaced drain is logged: {}",
        streamer.stderr()
    );
    let client = etcd.client().await;
    assert!(count(&client, &format!("{prefix}/queue/msg/")).await > 0);
}
