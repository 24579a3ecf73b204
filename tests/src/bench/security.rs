//! `bench --security` (issue 18): what a secure deployment costs, in the same run.
//!
//! Each round runs the same two configurations on fresh etcds: plain (no TLS, no auth), and
//! secure (etcd over mutual TLS with auth on and each process logged in as its own user, set
//! up by `collector etcd-auth`; the gateway over HTTPS with `AUTH_MODE=token`). It measures
//! ingest (4 collectors, a generated fleet) and gateway queries (one GPU's first page of 100,
//! query cache off so every request reads etcd, 32 keep-alive clients).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::procs::{free_port, release_binary, Proc};
use super::query::{load_with, wrk_with};
use super::scenarios::{base_env, generate, ingest_with, start_collectors_with};
use crate::etcd::EtcdTls;
use crate::pki::TestPki;
use crate::EtcdCluster;

const PREFIX: &str = "/bench";

/// What `--security` measured, per round.
#[derive(Debug, Default, Serialize)]
pub struct Security {
    pub records: u64,
    pub ingest_plain: Vec<f64>,
    pub ingest_secure: Vec<f64>,
    /// (req/s, p99 ms) per round.
    pub query_plain: Vec<(f64, f64)>,
    pub query_secure: Vec<(f64, f64)>,
    /// Secure etcd, plain gateway (no HTTPS, no token).
    pub query_etcd_secure: Vec<(f64, f64)>,
    pub query_secs: u64,
}

/// How the processes of one configuration reach etcd and serve.
struct Setup {
    /// Environment for every process, with the user to log in as filled in by `as_user`.
    etcd_env: Vec<(&'static str, String)>,
    secrets: Option<tempfile::TempDir>,
}

impl Setup {
    fn env_as(&self, user: &str) -> Vec<(&'static str, String)> {
        let mut env = self.etcd_env.clone();
        if let Some(dir) = &self.secrets {
            let file = |user: &str| {
                let path = dir.path().join(format!("{user}.password"));
                path.display().to_string()
            };
            // The maintainer's compactions need etcd's root role, and only they get it.
            if user == "collector" {
                env.push(("ETCD_MAINTENANCE_USERNAME", "telemetry-maintenance".into()));
                env.push((
                    "ETCD_MAINTENANCE_PASSWORD_FILE",
                    file("telemetry-maintenance"),
                ));
            }
            let user = format!("telemetry-{user}");
            env.push(("ETCD_PASSWORD_FILE", file(&user)));
            env.push(("ETCD_USERNAME", user));
        }
        env
    }
}

pub async fn run(quick: bool, rounds: usize) {
    let mut report = Security {
        query_secs: if quick { 3 } else { 10 },
        ..Default::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet = dir.path().join("fleet.csv");
    let (hosts, steps) = if quick { (10, 10) } else { (50, 63) };
    report.records = generate(&fleet, hosts, steps, 1);
    let rounds = if quick { 1 } else { rounds };
    let pki = TestPki::new();
    for round in 1..=rounds {
        for secure in [false, true] {
            let what = if secure { "TLS + auth" } else { "plain" };
            eprintln!(
                "[round {round} of {rounds}] {what}: ingest of {} records, then queries",
                report.records
            );
            let (ingest, query, etcd_only) =
                one(&pki, &fleet, report.records, secure, report.query_secs).await;
            if secure {
                report.ingest_secure.push(ingest);
                report.query_secure.push(query);
                report.query_etcd_secure.extend(etcd_only);
            } else {
                report.ingest_plain.push(ingest);
                report.query_plain.push(query);
            }
        }
    }
    println!("{}", table(&report));
    super::write_results("security", &report);
}

/// One configuration on a fresh etcd: ingest records/s, then (req/s, p99 ms) of queries.
async fn one(
    pki: &TestPki,
    fleet: &Path,
    records: u64,
    secure: bool,
    secs: u64,
) -> (f64, (f64, f64), Option<(f64, f64)>) {
    let quota = ["--quota-backend-bytes", "8589934592"];
    let (etcd, setup) = if secure {
        let tls = EtcdTls {
            ca: pki.ca_file.clone(),
            server: pki.server("etcd"),
            root: pki.client("root"),
        };
        let etcd = EtcdCluster::single_tls(tls.clone(), &quota).await;
        let secrets = tempfile::tempdir().expect("temp dir");
        let client = pki.client("pipeline");
        let mut env = base_env(&etcd.all_endpoints(), PREFIX);
        env.push(("ETCD_CA_FILE", pki.ca_file.display().to_string()));
        let auth = std::process::Command::new(release_binary("collector"))
            .envs(env.iter().cloned())
            .env("ETCD_CERT_FILE", &tls.root.cert)
            .env("ETCD_KEY_FILE", &tls.root.key)
            .args(["etcd-auth", "--secrets-dir"])
            .arg(secrets.path())
            .output()
            .expect("collector etcd-auth");
        assert!(
            auth.status.success(),
            "{}",
            String::from_utf8_lossy(&auth.stderr)
        );
        env.push(("ETCD_CERT_FILE", client.cert.display().to_string()));
        env.push(("ETCD_KEY_FILE", client.key.display().to_string()));
        let setup = Setup {
            etcd_env: env,
            secrets: Some(secrets),
        };
        (etcd, setup)
    } else {
        let etcd = EtcdCluster::start(1, &quota).await;
        let env = base_env(&etcd.all_endpoints(), PREFIX);
        (
            etcd,
            Setup {
                etcd_env: env,
                secrets: None,
            },
        )
    };
    let collectors =
        start_collectors_with(4, &etcd.all_endpoints(), PREFIX, &setup.env_as("collector"));
    let streamer_env = setup.env_as("streamer");
    let run = ingest_with(
        &etcd,
        PREFIX,
        fleet,
        records,
        &collectors,
        f64::NAN,
        &streamer_env,
    )
    .await;
    collectors.0.into_iter().for_each(|p| p.stop());

    let query = queries(pki, &setup, secure, secs).await;
    // Secure: the same queries once more with the gateway itself plain, to tell the cost of
    // etcd's TLS and auth from that of HTTPS and tokens.
    let etcd_only = if secure {
        Some(queries(pki, &setup, false, secs).await)
    } else {
        None
    };
    (records as f64 / run.seconds, query, etcd_only)
}

/// A gateway on the stored fleet (HTTPS with a read token when `https`): (req/s, p99 ms).
async fn queries(pki: &TestPki, setup: &Setup, https: bool, secs: u64) -> (f64, f64) {
    let mut env = setup.env_as("gateway");
    let port = free_port();
    env.extend([
        ("GATEWAY_PORT", port.to_string()),
        ("RATE_LIMIT_RPS", "0".to_string()),
        ("QUERY_CACHE_MB", "0".to_string()),
    ]);
    let mut client = reqwest::Client::new();
    let mut token = None;
    let mut base = format!("http://127.0.0.1:{port}");
    if https {
        let cert = pki.server("gateway");
        let created = std::process::Command::new(release_binary("gateway"))
            .envs(env.iter().cloned())
            .args(["token", "create", "--role", "read", "--name", "bench"])
            .output()
            .expect("gateway token create");
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        let secret = String::from_utf8(created.stdout)
            .unwrap()
            .trim()
            .to_string();
        env.extend([
            ("AUTH_MODE", "token".to_string()),
            ("TLS_CERT_FILE", cert.cert.display().to_string()),
            ("TLS_KEY_FILE", cert.key.display().to_string()),
        ]);
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca_file).unwrap()).unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {secret}").parse().unwrap());
        token = Some(secret);
        client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .default_headers(headers)
            .build()
            .unwrap();
        base = format!("https://localhost:{port}");
    }
    let gateway = Proc::spawn("gateway", &[], &env);
    let mut uuid = None;
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{base}/api/v1/gpus")).send().await {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            uuid = v["data"][0]["uuid"].as_str().map(str::to_string);
            if uuid.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let uuid = uuid.expect("the gateway lists GPUs");
    let paths = vec![format!("/api/v1/gpus/{uuid}/telemetry?limit=100")];
    // wrk (C, OpenSSL) when installed, as `make bench` does: a Rust client in this process
    // spends more of the two cores on TLS than the gateway does, which measured the client.
    let header = token.as_ref().map(|t| format!("Authorization: Bearer {t}"));
    let figures = match wrk_with(&base, &paths, secs, None, header.as_deref()) {
        Some(f) => f,
        None => load_with(client, &base, &paths, secs).await,
    };
    gateway.stop();
    figures
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn table(r: &Security) -> String {
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rps = |v: &[(f64, f64)]| v.iter().map(|q| q.0).collect::<Vec<_>>();
    let p99 = |v: &[(f64, f64)]| v.iter().map(|q| q.1).fold(0.0, f64::max);
    let (ip, is) = (mean(&r.ingest_plain), mean(&r.ingest_secure));
    let qp = mean(&rps(&r.query_plain));
    let query = |name: &str, v: &[(f64, f64)]| {
        let q = mean(&rps(v));
        format!(
            "| query: {name} ({}) | {q:.0} req/s, p99 {:.1} ms | **{:.2}×** |\n",
            list(&rps(v)),
            p99(v),
            q / qp
        )
    };
    format!(
        "| measure (per round in brackets) | figure | against plain (aim ≥ 0.8×) |\n|---|---|---|\n\
         | ingest, 4 collectors, {} records, plain ({}) | {ip:.0} records/s | |\n\
         | ingest, etcd over mutual TLS with auth, a user per process ({}) | {is:.0} records/s | **{:.2}×** |\n\
         {}{}{}\
         (queries: one GPU's page of 100, query cache off, 32 keep-alive clients, {} s each)",
        r.records,
        list(&r.ingest_plain),
        list(&r.ingest_secure),
        is / ip,
        query("plain", &r.query_plain),
        query("etcd TLS + auth, gateway plain", &r.query_etcd_secure),
        query("etcd TLS + auth, gateway HTTPS + token", &r.query_secure),
        r.query_secs,
    )
}
