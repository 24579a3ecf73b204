//! Message states and trace ids (docs/operations.md) over real processes: a pushed request's
//! `traceparent` is followed from the streamer's log, through `GET /api/v1/messages/{id}`
//! while queued and once stored, to the collector's log line; a broken message is traced to
//! the dead-letter queue.

use std::time::Duration;

use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::unique_prefix;
use pipeline_tests::{sample_csv, EtcdCluster};
use serde_json::Value;
use telemetry::keys::Keys;

use crate::readme::{becomes_ready, cmd, get, ready_gateway};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The first `rows` rows of the real CSV, with its header.
fn csv_rows(rows: usize) -> String {
    let text = std::fs::read_to_string(sample_csv()).expect("read the sample CSV");
    text.lines().take(rows + 1).collect::<Vec<_>>().join("\n") + "\n"
}

/// The message id in a text log line: a `message_id=ID` field, or the `message{id=ID}` span.
fn message_id_in(line: &str) -> String {
    let at = line
        .find("message_id=")
        .or_else(|| line.find("message{id="))
        .unwrap_or_else(|| panic!("no message id in {line}"));
    let rest = &line[at..];
    let start = rest.find('=').unwrap() + 1;
    rest[start..start + 26].to_string()
}

async fn state(base: &str, id: &str) -> (u16, Value) {
    get(&format!("{base}/api/v1/messages/{id}"))
        .await
        .expect("GET message")
}

fn stages(body: &Value) -> Vec<String> {
    body["data"]["stages"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| s["stage"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_message_is_traced_from_publish_to_stored_and_into_the_collector_log() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("messages");
    let (_gw, port) = ready_gateway(&etcd.endpoints(), &prefix).await;
    let base = format!("http://127.0.0.1:{port}");
    let ingest = format!("127.0.0.1:{}", free_port());
    let str_admin = format!("127.0.0.1:{}", free_port());
    let streamer = Proc::spawn(
        "streamer",
        cmd("streamer", &etcd.endpoints(), &prefix)
            .args(["--listen", &ingest])
            .env("ADMIN_LISTEN", &str_admin)
            .env("RUST_LOG", "info,streamer=debug"),
    );
    assert!(becomes_ready(&str_admin, 60).await, "{}", streamer.stderr());

    // A push with a traceparent: the answer names the trace.
    let resp = reqwest::Client::new()
        .post(format!("http://{ingest}/api/v1/ingest"))
        .header("content-type", "text/csv")
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .body(csv_rows(10))
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status(), 202);
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report["trace_id"], TRACE, "{report}");
    assert_eq!(report["accepted"], 10, "{report}");

    // The streamer logs the message it formed with the trace id; no collector runs yet.
    let line = streamer
        .wait_for_log("message formed", Duration::from_secs(15))
        .await;
    assert!(line.contains(TRACE), "{line}");
    let id = message_id_in(&line);
    let (status, queued) = state(&base, &id).await;
    assert_eq!(status, 200, "{queued}");
    assert_eq!(queued["data"]["state"], "queued", "{queued:#}");
    assert_eq!(queued["data"]["trace_id"], TRACE);
    assert_eq!(stages(&queued), ["published"]);

    // A collector stores it; its log line for the message carries the trace id.
    let coll_admin = format!("127.0.0.1:{}", free_port());
    let collector = Proc::spawn(
        "collector",
        cmd("collector", &etcd.endpoints(), &prefix)
            .args(["--id", "coll-t"])
            .env("ADMIN_LISTEN", &coll_admin)
            .env("RUST_LOG", "info,collector=debug"),
    );
    let line = collector
        .wait_for_log("message stored", Duration::from_secs(60))
        .await;
    assert!(
        line.contains(TRACE),
        "the stored line lacks the trace id: {line}"
    );
    assert!(
        line.contains(&id),
        "the stored line lacks the message id: {line}"
    );

    let (status, done) = state(&base, &id).await;
    assert_eq!(status, 200, "{done}");
    let d = &done["data"];
    assert_eq!(d["state"], "stored", "{done:#}");
    assert_eq!(d["trace_id"], TRACE);
    assert_eq!(
        stages(&done),
        ["published", "claimed", "validated", "stored"]
    );
    let s = d["stages"].as_array().unwrap();
    assert_eq!(s[1]["by"], "coll-t");
    assert_eq!(s[1]["attempt"], 1);
    assert_eq!(s[2]["valid"], 10);
    assert_eq!(s[2]["invalid"], 0);
    assert_eq!(s[3]["stored"], 10);
    let at: Vec<&str> = s.iter().map(|s| s["at"].as_str().unwrap()).collect();
    assert!(
        at.windows(2).all(|w| w[0] <= w[1]),
        "stages in time order: {at:?}"
    );
    assert_eq!(done["count"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_message_is_traced_to_the_dead_letter_queue() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("messages-dlq");
    let keys = Keys::new(&prefix);
    let (_gw, port) = ready_gateway(&etcd.endpoints(), &prefix).await;
    let base = format!("http://127.0.0.1:{port}");
    let coll_admin = format!("127.0.0.1:{}", free_port());
    let collector = Proc::spawn(
        "collector",
        cmd("collector", &etcd.endpoints(), &prefix)
            .args(["--id", "coll-d"])
            .env("ADMIN_LISTEN", &coll_admin),
    );
    assert!(
        becomes_ready(&coll_admin, 60).await,
        "{}",
        collector.stderr()
    );

    let id = ulid::Ulid::new().to_string();
    etcd.client()
        .await
        .put(
            keys.queue_message(0, &id),
            b"\xff\xffnot protobuf".to_vec(),
            None,
        )
        .await
        .unwrap();
    let dead = pipeline_tests::services::wait_until(Duration::from_secs(30), || async {
        state(&base, &id).await.1["data"]["state"] == "dead_lettered"
    })
    .await;
    let (_, body) = state(&base, &id).await;
    assert!(dead, "{body:#}\n{}", collector.stderr());
    assert_eq!(stages(&body), ["published", "claimed", "dead_lettered"]);
    let last = &body["data"]["stages"][2];
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.contains("undecodable")),
        "{body:#}"
    );
    assert_eq!(body["data"]["stages"][1]["by"], "coll-d");

    // Unknown and malformed ids.
    let (status, body) = state(&base, &ulid::Ulid::new().to_string()).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "NOT_FOUND", "{body}");
    let (status, body) = state(&base, "not-a-message").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "INVALID_MESSAGE_ID", "{body}");
}
