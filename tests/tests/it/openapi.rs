//! The OpenAPI document is true: schemathesis (a property-based API tester that reads
//! `/openapi.json`) runs every check it has against a gateway process holding the real CSV.
//! `make deps` installs it; without it this test fails and says how to install it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{binary, wait_until};

/// Where `.ci/deps.sh` installs it, unless `SCHEMATHESIS` names another.
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("SCHEMATHESIS") {
        return p.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    let p = PathBuf::from(home).join(".cache/telemetry-pipeline/schemathesis/bin/schemathesis");
    assert!(
        p.exists(),
        "schemathesis is not installed at {}: run `make deps` (or set SCHEMATHESIS)",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_what_the_gateway_answers() {
    let crate::gateway_api::Loaded { etcd, prefix } =
        crate::gateway_api::load_real_csv("openapi").await;

    let port = free_port();
    let gateway = Proc::spawn(
        "gateway",
        Command::new(binary("gateway"))
            .env("ETCD_ENDPOINTS", etcd.endpoints().join(","))
            .env("ETCD_PREFIX", &prefix)
            .env("GATEWAY_PORT", port.to_string())
            // Thousands of requests from one client: the rate limit would answer 429s,
            // which are documented but would hide everything else.
            .env("RATE_LIMIT_RPS", "0"),
    );
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            reqwest::get(format!("{base}/ready"))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await,
        "{}",
        gateway.stderr()
    );
    // A message the load stored, so that `GET /api/v1/messages/{id}` is tried with a real one.
    let states = etcd
        .client()
        .await
        .get(
            format!("{prefix}/trace/"),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(1),
            ),
        )
        .await
        .expect("read message states");
    let message_id = states
        .kvs()
        .first()
        .and_then(|kv| kv.key_str().ok()?.rsplit('/').next().map(str::to_string))
        .expect("the load left message states");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/schemathesis.toml");
    let out = tokio::process::Command::new(schemathesis())
        .args(["--config-file", config, "run"])
        .arg(format!("{base}/openapi.json"))
        .args(["--checks", "all", "--max-examples", "100", "--seed", "1"])
        // A WebSocket is not an HTTP operation schemathesis can call.
        .args(["--exclude-path", "/api/v1/ws/telemetry"])
        .env("NO_COLOR", "1")
        .env("MESSAGE_ID", &message_id)
        .output()
        .await
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("No issues found"), "{stdout}");
}
