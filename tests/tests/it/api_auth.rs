//! `AUTH_MODE=token` as a user meets it: tokens made with `gateway token create`, the
//! gateway and a streamer's push listener run as processes, and every answer checked: 401,
//! 403, a revoked token, the WebSocket with and without a token, 429 and 413, and the audit
//! log of each change.

use std::process::Command;
use std::time::Duration;

use etcd_client::GetOptions;
use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{binary, unique_prefix, wait_until};
use pipeline_tests::EtcdCluster;
use reqwest::StatusCode;
use serde_json::Value;
use telemetry::proto::ingest_client::IngestClient;
use telemetry::proto::TelemetryRecord;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn cmd(name: &str, etcd: &EtcdCluster, prefix: &str) -> Command {
    let mut c = Command::new(binary(name));
    c.env("ETCD_ENDPOINTS", etcd.endpoints().join(","))
        .env("ETCD_PREFIX", prefix)
        .env("ADMIN_LISTEN", "127.0.0.1:0")
        .env("AUTH_MODE", "token");
    c
}

/// `gateway token create`, as a user runs it: the secret on stdout, once.
pub(crate) fn create_token(etcd: &EtcdCluster, prefix: &str, role: &str) -> String {
    let out = cmd("gateway", etcd, prefix)
        .args([
            "token",
            "create",
            "--role",
            role,
            "--name",
            &format!("test {role}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("tpk_") && secret.len() > 40, "{secret}");
    secret
}

async fn call(method: reqwest::Method, url: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().request(method.clone(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if method == reqwest::Method::PUT {
        req = req.json(&serde_json::json!({"value": 500}));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_api_the_websocket_and_push_ingest_and_every_change_is_audited() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("auth");
    let read = create_token(&etcd, &prefix, "read");
    let admin = create_token(&etcd, &prefix, "admin");
    let ingest = create_token(&etcd, &prefix, "ingest");

    let port = free_port();
    let gateway = Proc::spawn(
        "gateway",
        cmd("gateway", &etcd, &prefix).env("GATEWAY_PORT", port.to_string()),
    );
    let base = format!("http://127.0.0.1:{port}");
    let ready = wait_until(Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/ready"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "{}", gateway.stderr());

    // The probes are open; everything else needs a token of the right role.
    let gpus = format!("{base}/api/v1/gpus");
    let (s, body) = call(reqwest::Method::GET, &gpus, None).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")),
        "{body}"
    );
    assert_eq!(body["success"], false);
    let resp = reqwest::get(&gpus).await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    for path in ["/metrics", "/api/v1/config", "/api/v1/ws/telemetry"] {
        let (s, _) = call(reqwest::Method::GET, &format!("{base}{path}"), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
    }
    // The dashboard's and the reference's code is open (no telemetry in it): a browser
    // cannot send a token when it navigates, so the page asks for one.
    for path in ["/", "/ui/app.js", "/openapi.json", "/docs/"] {
        let resp = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    assert_eq!(
        call(reqwest::Method::GET, &gpus, Some("tpk_guessed"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(reqwest::Method::GET, &gpus, Some(&read)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(reqwest::Method::GET, &gpus, Some(&admin)).await.0,
        StatusCode::OK
    );
    let (s, body) = call(reqwest::Method::GET, &gpus, Some(&ingest)).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("FORBIDDEN")),
        "{body}"
    );

    let config = format!("{base}/api/v1/config/stream.rate");
    assert_eq!(
        call(reqwest::Method::PUT, &config, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(reqwest::Method::PUT, &config, Some(&read)).await.0,
        StatusCode::FORBIDDEN
    );
    let (s, body) = call(reqwest::Method::PUT, &config, Some(&admin)).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // The WebSocket: refused without a token, accepted with the header or a subprotocol.
    let ws = format!("ws://127.0.0.1:{port}/api/v1/ws/telemetry");
    match tokio_tungstenite::connect_async(&ws).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("a WebSocket without a token was not refused: {other:?}"),
    }
    let mut req = ws.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {read}").parse().unwrap());
    let (_with_header, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("header token");
    let mut req = ws.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("telemetry.v1, bearer.{read}").parse().unwrap(),
    );
    let (_browser, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("subprotocol token");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "telemetry.v1");

    // `token list` shows the three, never a secret or its hash.
    let out = cmd("gateway", &etcd, &prefix)
        .args(["token", "list"])
        .output()
        .unwrap();
    let listed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|t| t.get("sha256").is_none()));
    let read_id = listed.iter().find(|t| t["role"] == "read").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Revoked: refused within seconds, without a restart.
    let out = cmd("gateway", &etcd, &prefix)
        .args(["token", "revoke", &read_id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = wait_until(Duration::from_secs(5), || async {
        call(reqwest::Method::GET, &gpus, Some(&read)).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "a revoked token still works");

    // Push ingest: its own role, a size limit and a rate limit.
    let ingest_port = free_port();
    let streamer = Proc::spawn(
        "streamer",
        cmd("streamer", &etcd, &prefix)
            .args(["--listen", &format!("127.0.0.1:{ingest_port}")])
            .env("INGEST_MAX_BODY", "4096")
            .env("INGEST_RATE_LIMIT", "2"),
    );
    let push_url = format!("http://127.0.0.1:{ingest_port}/api/v1/ingest");
    let push = |token: Option<String>, body: String| {
        let url = push_url.clone();
        async move {
            let mut req = reqwest::Client::new()
                .post(url)
                .header("content-type", "text/csv")
                .body(body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send().await
        }
    };
    let csv = "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n\
               2025-07-18T20:42:34Z,DCGM_FI_DEV_GPU_TEMP,0,nvidia0,GPU-a,H100,host-a,,,,40,\n";
    let up = wait_until(Duration::from_secs(30), || async {
        push(Some(ingest.clone()), csv.to_string())
            .await
            .is_ok_and(|r| r.status() == 202)
    })
    .await;
    assert!(up, "{}", streamer.stderr());
    tokio::time::sleep(Duration::from_secs(2)).await; // a full bucket again
    let r = push(None, csv.to_string()).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = push(Some(admin.clone()), csv.to_string()).await.unwrap();
    assert_eq!(r.status(), 202, "admin may push too");
    let r = push(Some(admin.replace("tpk_", "tpk_x")), csv.to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // gRPC push: the same guard, answered with gRPC statuses.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // `hostname`: a record of more than INGEST_MAX_BODY bytes is over the gRPC message limit.
    let grpc_push_to = |token: Option<String>, hostname: String| {
        let url = format!("http://127.0.0.1:{ingest_port}");
        async move {
            let mut client = IngestClient::connect(url).await.unwrap();
            let rec = TelemetryRecord {
                hostname,
                gpu_id: "0".into(),
                uuid: "GPU-g".into(),
                metric: "DCGM_FI_DEV_GPU_TEMP".into(),
                timestamp_unix_nano: 1_752_871_354_000_000_000,
                value: 41.0,
                ..Default::default()
            };
            let mut req = tonic::Request::new(futures::stream::iter(vec![rec]));
            if let Some(t) = token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            client.push(req).await.map(|r| r.into_inner().accepted)
        }
    };
    let grpc_push = |token: Option<String>| grpc_push_to(token, "host-g".into());
    fn code<T>(r: Result<T, tonic::Status>) -> Option<tonic::Code> {
        r.err().map(|s| s.code())
    }
    assert_eq!(
        code(grpc_push(None).await),
        Some(tonic::Code::Unauthenticated)
    );
    let denied = grpc_push(Some(read.clone())).await;
    assert_eq!(
        code(denied),
        Some(tonic::Code::Unauthenticated),
        "a revoked token"
    );
    assert_eq!(grpc_push(Some(ingest.clone())).await.ok(), Some(1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let big = format!("{csv}{}", "x".repeat(5000));
    let r = push(Some(ingest.clone()), big).await.unwrap();
    assert_eq!(r.status(), 413);
    let mut limited = None;
    for _ in 0..10 {
        let r = push(Some(ingest.clone()), csv.to_string()).await.unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("10 pushes at once are over 2 per second");
    assert!(
        limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED");
    // gRPC pushes meet the same limits, as gRPC statuses a client knows not to retry blindly.
    assert_eq!(
        code(grpc_push(Some(ingest.clone())).await),
        Some(tonic::Code::ResourceExhausted),
        "over the rate limit"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let too_big = grpc_push_to(Some(ingest.clone()), "h".repeat(5000)).await;
    assert_eq!(
        code(too_big),
        Some(tonic::Code::OutOfRange),
        "over INGEST_MAX_BODY"
    );

    // The audit log: three tokens created, one revoked, one setting changed, each with who.
    let client = etcd.client().await;
    let audit = client
        .clone()
        .get(
            format!("{prefix}/audit/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let entries: Vec<Value> = audit
        .kvs()
        .iter()
        .map(|kv| serde_json::from_slice(kv.value()).unwrap())
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "token.create",
            "token.create",
            "token.create",
            "config.set",
            "token.revoke"
        ]
    );
    let set = &entries[3];
    assert!(set["actor"].as_str().unwrap().contains("admin"), "{set}");
    assert_eq!(set["detail"]["key"], "stream.rate");
    assert!(
        entries[0]["actor"].as_str().unwrap().starts_with("cli"),
        "{}",
        entries[0]
    );
    assert!(
        audit.kvs().iter().all(|kv| kv.lease() != 0),
        "audit entries expire"
    );
}
