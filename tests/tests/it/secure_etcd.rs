//! The pipeline against an etcd that serves clients only over mutual TLS with authentication
//! on, set up by `collector etcd-auth`, each process logging in as its own least-privilege
//! user, as docs/security.md tells an operator to run it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use pipeline_tests::checks::stored;
use pipeline_tests::etcd::EtcdTls;
use pipeline_tests::pki::{CertFiles, TestPki};
use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{binary, generate, unique_prefix, wait_until};
use pipeline_tests::{sample_csv, EtcdCluster};
use tempfile::TempDir;

/// etcd's `--auth-token-ttl` here: every token expires within a run.
const TOKEN_TTL_SECS: u64 = 2;

struct Secure {
    pki: TestPki,
    etcd: EtcdCluster,
    prefix: String,
    secrets: TempDir,
    /// A client certificate that names no etcd user: mutual TLS only, the user comes from
    /// the password login.
    client: CertFiles,
}

impl Secure {
    async fn start(name: &str) -> Self {
        let pki = TestPki::new();
        let tls = EtcdTls {
            ca: pki.ca_file.clone(),
            server: pki.server("etcd"),
            root: pki.client("root"),
        };
        let ttl = format!("--auth-token-ttl={TOKEN_TTL_SECS}");
        let etcd = EtcdCluster::single_tls(tls.clone(), &[&ttl]).await;
        let prefix = unique_prefix(name);
        let secrets = tempfile::Builder::new()
            .prefix("secrets-")
            .tempdir()
            .unwrap();
        let client = pki.client("pipeline-process");
        let s = Self {
            pki,
            etcd,
            prefix,
            secrets,
            client,
        };
        // The operator's one step, as root (the root certificate needs no password).
        let out = s
            .cmd("collector", None)
            .env("ETCD_CERT_FILE", &tls.root.cert)
            .env("ETCD_KEY_FILE", &tls.root.key)
            .args(["etcd-auth", "--secrets-dir"])
            .arg(s.secrets.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("authentication enabled"),
            "etcd-auth failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Least privilege: each process's user has its own prefix role and nothing more (the
        // collector's leases hold no data, so it needs no root role; docs/security.md).
        let mut root = s.etcd.client().await;
        for role in ["streamer", "collector", "gateway"] {
            let user = format!("telemetry-{role}");
            let got = root.user_get(user.as_str()).await.unwrap();
            assert_eq!(got.roles(), std::slice::from_ref(&user), "{user}'s roles");
        }
        s
    }

    fn password_file(&self, user: &str) -> PathBuf {
        self.secrets.path().join(format!("{user}.password"))
    }

    /// A binary with TLS settings, logging in as `user` (none: the certificate alone).
    fn cmd(&self, name: &str, user: Option<&str>) -> Command {
        let mut c = Command::new(binary(name));
        c.env("ETCD_ENDPOINTS", self.etcd.endpoints().join(","))
            .env("ETCD_PREFIX", &self.prefix)
            .env("ETCD_CA_FILE", &self.pki.ca_file)
            .env("ETCD_CERT_FILE", &self.client.cert)
            .env("ETCD_KEY_FILE", &self.client.key)
            .env("ADMIN_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info");
        if let Some(user) = user {
            c.env("ETCD_USERNAME", user)
                .env("ETCD_PASSWORD_FILE", self.password_file(user));
        }
        c
    }

    /// Mutual TLS with the certificate that names no user.
    fn tls(&self) -> etcd_client::TlsOptions {
        let pem = |p: &Path| std::fs::read(p).unwrap();
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(pem(&self.pki.ca_file)))
            .identity(etcd_client::Identity::from_pem(
                pem(&self.client.cert),
                pem(&self.client.key),
            ))
    }

    /// An etcd-client connection as `user`, over the same TLS.
    async fn client_as(&self, user: &str) -> Client {
        let password = std::fs::read_to_string(self.password_file(user)).unwrap();
        let opts = ConnectOptions::new()
            .with_tls(self.tls())
            .with_user(user, password.trim_end());
        Client::connect(self.etcd.endpoints(), Some(opts))
            .await
            .unwrap()
    }

    async fn stored(&self) -> i64 {
        let root = self.etcd.client().await;
        stored(&root, &format!("{}/telemetry/data/", self.prefix)).await
    }

    async fn stream(&self, csv: &Path) -> String {
        let mut s = Proc::spawn(
            "streamer",
            self.cmd("streamer", Some("telemetry-streamer"))
                .arg("--csv")
                .arg(csv),
        );
        let status = s.wait_exit(Duration::from_secs(60)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "streamer: {status:?}\n{}",
            s.stderr()
        );
        s.stdout()
    }

    async fn wait_stored(&self, want: i64) {
        let ok = wait_until(Duration::from_secs(90), || async {
            self.stored().await == want
        })
        .await;
        assert!(ok, "stored {} of {want}", self.stored().await);
    }
}

fn is_denied(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::PermissionDenied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_csv_runs_over_tls_with_each_roles_own_user_through_token_expiry_and_a_restart() {
    let mut s = Secure::start("secure-e2e").await;

    // Authentication is on: a certificate that names no user may do nothing.
    let opts = ConnectOptions::new().with_tls(s.tls());
    let anonymous = Client::connect(s.etcd.endpoints(), Some(opts))
        .await
        .unwrap();
    assert!(anonymous
        .clone()
        .get(s.prefix.as_str(), None)
        .await
        .is_err());

    let gateway_port = free_port();
    let collector = Proc::spawn(
        "collector",
        s.cmd("collector", Some("telemetry-collector"))
            // History kept briefly, so the maintainer compacts within the test.
            .env("STORAGE_HISTORY", "1s")
            .env("ETCD_MAINTENANCE_USERNAME", "telemetry-maintenance")
            .env(
                "ETCD_MAINTENANCE_PASSWORD_FILE",
                s.password_file("telemetry-maintenance"),
            ),
    );
    let gateway = Proc::spawn(
        "gateway",
        s.cmd("gateway", Some("telemetry-gateway"))
            .env("GATEWAY_PORT", gateway_port.to_string()),
    );
    let summary = s.stream(&sample_csv()).await;
    assert!(
        summary.contains("read=2470 published=2470 invalid=0"),
        "{summary}"
    );
    s.wait_stored(2470).await;

    let base = format!("http://127.0.0.1:{gateway_port}");
    let gpus = || async {
        let r = reqwest::get(format!("{base}/api/v1/gpus")).await.ok()?;
        r.json::<serde_json::Value>().await.ok()?["count"].as_i64()
    };
    assert!(
        wait_until(Duration::from_secs(30), || async {
            gpus().await == Some(247)
        })
        .await,
        "gateway: {:?}\n{}",
        gpus().await,
        gateway.stderr()
    );

    // Least privilege, checked against etcd itself.
    let data_key = format!("{}/telemetry/data/x", s.prefix);
    let mut gw = s.client_as("telemetry-gateway").await;
    let e = gw.put(data_key.as_str(), "x", None).await.unwrap_err();
    assert!(is_denied(&e), "the gateway wrote the data prefix: {e:?}");
    gw.get(data_key.as_str(), None)
        .await
        .expect("the gateway reads data");
    let mut st = s.client_as("telemetry-streamer").await;
    let e = st
        .get(
            format!("{}/telemetry/data/", s.prefix),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap_err();
    assert!(is_denied(&e), "the streamer read stored data: {e:?}");
    let mut co = s.client_as("telemetry-collector").await;
    let e = co
        .put(format!("{}/config/stream.rate", s.prefix), "1", None)
        .await
        .unwrap_err();
    assert!(
        is_denied(&e),
        "the collector wrote the configuration: {e:?}"
    );
    let e = gw.put("/outside-the-prefix", "x", None).await.unwrap_err();
    assert!(is_denied(&e), "the gateway wrote outside its prefix: {e:?}");
    // The gateway's own write: the live configuration, through its API.
    let put = reqwest::Client::new()
        .put(format!("{base}/api/v1/config/stream.rate"))
        .json(&serde_json::json!({"value": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 200, "{}", put.text().await.unwrap());

    // Every token issued so far expires; processes log in again and lose nothing.
    tokio::time::sleep(Duration::from_secs(3 * TOKEN_TTL_SECS)).await;
    let dir = tempfile::tempdir().unwrap();
    let second = dir.path().join("second.csv");
    generate(
        &second,
        &[
            "--hosts",
            "2",
            "--gpus-per-host",
            "2",
            "--steps",
            "10",
            "--start",
            "2026-01-01T00:00:00Z",
        ],
    );
    s.stream(&second).await;
    s.wait_stored(2470 + 400).await;

    // A restart of etcd forgets every token: streams and unary calls alike log in again.
    s.etcd.kill(0);
    s.etcd.restart(0).await;
    let third = dir.path().join("third.csv");
    generate(
        &third,
        &[
            "--hosts",
            "2",
            "--gpus-per-host",
            "2",
            "--steps",
            "10",
            "--start",
            "2026-01-02T00:00:00Z",
        ],
    );
    s.stream(&third).await;
    s.wait_stored(2470 + 800).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            gpus().await == Some(247 + 4)
        })
        .await,
        "the gateway followed the store through the restart: {:?}",
        gpus().await
    );
    let root = s.etcd.client().await;
    let dead = root
        .clone()
        .get(
            format!("{}/queue/dead/", s.prefix),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count();
    assert_eq!(dead, 0, "nothing dead-lettered");
    // The maintainer folded and compacted with its maintenance login.
    let status = root
        .clone()
        .get(format!("{}/storage/status", s.prefix), None)
        .await
        .unwrap();
    let status: serde_json::Value =
        serde_json::from_slice(status.kvs().first().expect("storage status").value()).unwrap();
    assert!(status["compactions"].as_u64() > Some(0), "{status}");
    for p in [&collector, &gateway] {
        assert!(!p.stderr().contains("permission denied"), "{}", p.stderr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_stop_every_binary_at_start_up_with_exit_2_and_plain_text_cannot_connect() {
    let s = Secure::start("secure-refused").await;
    let wrong = s.secrets.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let csv = sample_csv();
    for (name, user) in [
        ("streamer", "telemetry-streamer"),
        ("collector", "telemetry-collector"),
        ("gateway", "telemetry-gateway"),
    ] {
        let mut c = s.cmd(name, Some(user));
        c.env("ETCD_PASSWORD_FILE", &wrong)
            .env("GATEWAY_PORT", free_port().to_string());
        if name == "streamer" {
            c.arg("--csv").arg(&csv);
        }
        let mut p = Proc::spawn(name, &mut c);
        let status = p.wait_exit(Duration::from_secs(30)).await;
        let err = p.stderr();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(2),
            "{name}: {status:?}\n{err}"
        );
        let line = err
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(
            line.contains(&format!("etcd refused ETCD_USERNAME={user}"))
                && line.contains("authentication failed"),
            "{name}: {err}"
        );
        assert!(
            !err.contains("not-the-password"),
            "{name} logged the password"
        );
    }

    // A certificate from another CA: refused by the handshake, also exit 2.
    let other_ca = TestPki::new();
    let other = other_ca.client("telemetry-collector");
    let mut p = Proc::spawn(
        "collector",
        s.cmd("collector", Some("telemetry-collector"))
            .env("ETCD_CERT_FILE", &other.cert)
            .env("ETCD_KEY_FILE", &other.key),
    );
    let status = p.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{}", p.stderr());
    assert!(p.stderr().contains("etcd refused"), "{}", p.stderr());

    // Without TLS nothing gets through: not etcd-client, not a binary.
    let plain = Client::connect(s.etcd.endpoints(), None).await;
    if let Ok(mut c) = plain {
        let r = tokio::time::timeout(Duration::from_secs(10), c.get("x", None)).await;
        assert!(
            !matches!(r, Ok(Ok(_))),
            "a plain-text client read from etcd"
        );
    }
    let mut p = Proc::spawn(
        "gateway",
        Command::new(binary("gateway"))
            .env("ETCD_ENDPOINTS", s.etcd.endpoints().join(","))
            .env("ETCD_PREFIX", &s.prefix)
            .env("GATEWAY_PORT", free_port().to_string())
            .env("ETCD_STARTUP_TIMEOUT", "3s"),
    );
    let status = p.wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
}
