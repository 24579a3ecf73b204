//! The gateway's WebSocket live stream: filters, replay by revision, and slow clients.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use pipeline_tests::checks::stored;
use pipeline_tests::services::{
    init_tracing, start_collector, start_gateway, stream_csv, unique_prefix, wait_until,
};
use pipeline_tests::{sample_csv, EtcdCluster};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::gateway_api::{assert_error, csv_rows, get};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads text frames until `n` records arrived, the stream ended, or nothing came for 30 s.
async fn read_records(ws: &mut Ws, n: usize) -> Vec<Value> {
    read_records_until_end(ws, n).await.0
}

/// As `read_records`, also saying why it stopped short (a close frame with its code and
/// reason, an error, or silence), so a failure names its cause.
async fn read_records_until_end(ws: &mut Ws, n: usize) -> (Vec<Value>, String) {
    let mut out = Vec::new();
    while out.len() < n {
        let why = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                match serde_json::from_str::<Value>(&t).unwrap() {
                    Value::Array(a) => out.extend(a),
                    v => out.push(v),
                }
                continue;
            }
            Ok(Some(Ok(Message::Close(c)))) => format!("closed: {c:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => format!("error: {e}"),
            Ok(None) => "the stream ended".to_string(),
            Err(_) => "no frame for 30 s".to_string(),
        };
        return (out, why);
    }
    (out, "complete".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_delivers_new_records_filters_them_and_replays_from_a_revision() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("ws");
    let client = etcd.client().await;
    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| c.ws_buffer = 8192).await;
    let ws = base.replace("http", "ws") + "/api/v1/ws/telemetry";

    // Something stored before anyone connects is not streamed live.
    // The CSV's windows closed long ago: a fold would move them out of the raw keys that the
    // replay below reads (folding has tests of its own).
    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |c| c.storage.fold = false);
    let dir = tempfile::tempdir().unwrap();
    let early = dir.path().join("early.csv");
    std::fs::write(&early, "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n\"2025-07-18T19:00:00Z\",\"DCGM_FI_DEV_GPU_UTIL\",\"0\",\"nvidia0\",\"GPU-early\",\"H100\",\"early-host\",\"\",\"\",\"\",\"1\",\"\"\n").unwrap();
    stream_csv(etcd.endpoints(), &prefix, &[&early]).await;
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            stored(&client, &data).await == 1
        })
        .await
    );

    let (mut all, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    let (mut temps, _) = tokio_tungstenite::connect_async(format!(
        "{ws}?metric=DCGM_FI_DEV_GPU_TEMP&hostname=mtv5-dgx1-hgpu-031"
    ))
    .await
    .unwrap();
    let (mut gpu3, _) = tokio_tungstenite::connect_async(format!("{ws}?gpu=3"))
        .await
        .unwrap();
    // A client that never reads.
    let (_stuck, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // let the server register the subscriptions

    stream_csv(etcd.endpoints(), &prefix, &[&sample_csv()]).await;
    let rows = csv_rows();
    let got = read_records(&mut all, 2470).await;
    assert_eq!(
        got.len(),
        2470,
        "exactly the records stored after connecting"
    );
    assert!(got.iter().all(|f| f["hostname"] != "early-host"));
    let keys: HashSet<(String, String, String)> = got
        .iter()
        .map(|f| {
            (
                f["uuid"].as_str().unwrap().into(),
                f["metric"].as_str().unwrap().into(),
                f["timestamp"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(keys.len(), 2470);
    assert!(
        got.iter()
            .all(|f| f["revision"].as_i64().is_some_and(|r| r > 0)),
        "each frame carries its revision"
    );

    let want_temps = rows
        .iter()
        .filter(|r| r.3 == "DCGM_FI_DEV_GPU_TEMP" && r.0 == "mtv5-dgx1-hgpu-031")
        .count();
    let got_temps = read_records(&mut temps, want_temps).await;
    assert_eq!(got_temps.len(), want_temps);
    assert!(got_temps
        .iter()
        .all(|f| f["metric"] == "DCGM_FI_DEV_GPU_TEMP" && f["hostname"] == "mtv5-dgx1-hgpu-031"));
    let want_gpu3 = rows.iter().filter(|r| r.1 == "3").count();
    let got_gpu3 = read_records(&mut gpu3, want_gpu3).await;
    assert_eq!(got_gpu3.len(), want_gpu3);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), gpu3.next())
            .await
            .is_err(),
        "nothing beyond the filter"
    );

    // A client that reconnects with since_revision gets what it missed, once.
    let first_rev = got
        .iter()
        .map(|f| f["revision"].as_i64().unwrap())
        .min()
        .unwrap();
    let (mut replay, _) =
        tokio_tungstenite::connect_async(format!("{ws}?since_revision={first_rev}"))
            .await
            .unwrap();
    let replayed = read_records(&mut replay, 2470).await;
    assert_eq!(replayed.len(), 2470);
    let mut by_rev: HashMap<i64, usize> = HashMap::new();
    for f in &replayed {
        *by_rev.entry(f["revision"].as_i64().unwrap()).or_default() += 1;
    }
    let mut live_by_rev: HashMap<i64, usize> = HashMap::new();
    for f in &got {
        *live_by_rev
            .entry(f["revision"].as_i64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        by_rev, live_by_rev,
        "the replay matches the live stream revision by revision"
    );

    let (s, b) = get(format!("{base}/api/v1/ws/telemetry?since_revision=abc")).await;
    assert_error(s, &b, 400, "INVALID_REVISION");
    collector.shutdown().await.unwrap();
    gw.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_without_delaying_others() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("slow");
    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| {
        // Room for every frame the reader asks for (988), so however the gateway's watch
        // batches what it delivers on a loaded machine, a client that reads never overflows.
        // The stuck client is cut off by its missing pongs and by its losses past 32.
        c.ws_buffer = 1024;
        c.ws_max_dropped = 32;
        c.ws_ping_interval = Duration::from_secs(2);
    })
    .await;
    let ws = base.replace("http", "ws") + "/api/v1/ws/telemetry";
    // The stuck client: a tiny receive buffer, and it never reads until the end.
    let mut stuck = stuck_client(&base).await;
    // The reader client keeps up by reading concurrently.
    let (mut reader, _) =
        tokio_tungstenite::connect_async(format!("{ws}?metric=DCGM_FI_DEV_GPU_UTIL"))
            .await
            .unwrap();
    let reading = tokio::spawn(async move { read_records_until_end(&mut reader, 247 * 4).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    // Four passes of the file with fresh identities: 9,880 frames for the stuck client.
    publish_passes(&etcd, &prefix, 4).await;
    let (read, why) = reading.await.unwrap();
    if read.len() != 247 * 4 {
        let metrics = metrics_text(&base).await;
        let ws_lines: Vec<_> = metrics.lines().filter(|l| l.starts_with("ws_")).collect();
        panic!(
            "the normal client got {} of {} frames ({why}); gateway: {ws_lines:?}",
            read.len(),
            247 * 4
        );
    }

    // The stuck client was cut off: its stream ends before all frames, with 1008 if the close fit.
    let mut frames = 0;
    let mut close_code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), stuck.next()).await {
        match msg {
            Ok(Message::Text(_)) => frames += 1,
            Ok(Message::Close(c)) => {
                close_code = c.map(|c| u16::from(c.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        frames < 2470 * 4,
        "the stuck client did not get everything ({frames})"
    );
    if let Some(code) = close_code {
        assert_eq!(code, 1008, "policy close");
    }
    let metrics = metrics_text(&base).await;
    assert!(metrics.contains("ws_closed_slow"), "the cut-off is counted");
    collector.shutdown().await.unwrap();
    gw.shutdown().await.unwrap();
}

/// `WS_MAX_DROPPED` is enforced as soon as a client passes it, not at the next ping: a client
/// that never reads is closed within seconds, with the default 30 s ping interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_ws_max_dropped_is_closed_before_any_ping_would_notice() {
    init_tracing();
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("max-dropped");
    let (gw, base) = start_gateway(etcd.endpoints(), &prefix, |c| {
        // The default queue (4,096 frames): losses start only once the socket is full and
        // sends block, which is when a check made only on delivery never runs.
        c.ws_max_dropped = 1000;
        assert_eq!(c.ws_ping_interval, Duration::from_secs(30), "the default");
    })
    .await;
    let mut stuck = stuck_client(&base).await;
    let (collector, _) = start_collector(etcd.endpoints(), &prefix, |_| {});
    // Enough to fill the socket buffers (about 10 MB of frames): sends block from then on.
    publish_passes(&etcd, &prefix, 10).await;
    let client = etcd.client().await;
    let data = format!("{prefix}/telemetry/data/");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            stored(&client, &data).await == 24_700
        })
        .await
    );
    // Now read: what was buffered, then the end of the stream, well before a 30 s ping.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        let mut frames = 0;
        loop {
            match stuck.next().await {
                Some(Ok(Message::Text(_))) => frames += 1,
                Some(Ok(Message::Close(c))) => return (frames, c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return (frames, None),
            }
        }
    })
    .await;
    let (frames, code) = ended.expect("the stuck client is closed within seconds, not at a ping");
    assert!(frames < 24_700, "it lost frames ({frames} of 24,700)");
    if let Some(code) = code {
        assert_eq!(code, 1008);
    }
    collector.shutdown().await.unwrap();
    gw.shutdown().await.unwrap();
}

/// The gateway's `/metrics` page.
async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Publishes the real CSV `passes` times, each pass stamped with the time it is published, so
/// every pass is new data (2,470 records each).
async fn publish_passes(etcd: &EtcdCluster, prefix: &str, passes: usize) {
    for _ in 0..passes {
        let mut cfg = streamer::Config::for_tests(etcd.endpoints(), prefix);
        cfg.csv = vec![sample_csv()];
        cfg.timestamps = Some(streamer::config::Timestamps::Now);
        streamer::run(
            cfg,
            streamer::Listeners::default(),
            std::sync::Arc::new(streamer::Counters::default()),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    }
}

/// A WebSocket client with a tiny receive buffer, which reads nothing until the test does.
async fn stuck_client(base: &str) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let ws = base.replace("http", "ws") + "/api/v1/ws/telemetry";
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let (stuck, _) = tokio_tungstenite::client_async(&ws, stream).await.unwrap();
    stuck
}
