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

use super::procs::{cpu_seconds_of, free_port, release_binary, Proc};
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
    /// Per round: req/s, p99 ms, and CPU per request (µs) of etcd and of the gateway.
    pub query_plain: Vec<Query>,
    pub query_secure: Vec<Query>,
    /// Secure etcd, plain gateway (no HTTPS, no token).
    pub query_etcd_secure: Vec<Query>,
    /// The query cache on, as by default: with no writes meanwhile, every request is a hit.
    pub query_plain_cached: Vec<Query>,
    pub query_secure_cached: Vec<Query>,
    pub query_secs: u64,
}

/// One query measurement.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Query {
    pub rps: f64,
    pub p99_ms: f64,
    /// CPU time per request, in µs, over the measurement.
    pub etcd_cpu_us: f64,
    pub gateway_cpu_us: f64,
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
            let (ingest, [query, cached, etcd_only]) =
                one(&pki, &fleet, report.records, secure, report.query_secs).await;
            if secure {
                report.ingest_secure.push(ingest);
                report.query_secure.push(query);
                report.query_secure_cached.push(cached);
                report.query_etcd_secure.push(etcd_only);
            } else {
                report.ingest_plain.push(ingest);
                report.query_plain.push(query);
                report.query_plain_cached.push(cached);
            }
        }
    }
    println!("{}", table(&report));
    super::write_results("security", &report);
}

/// One configuration on a fresh etcd: ingest records/s, then queries with the cache off, on,
/// and (secure only; a default otherwise) off with the gateway itself plain.
async fn one(
    pki: &TestPki,
    fleet: &Path,
    records: u64,
    secure: bool,
    secs: u64,
) -> (f64, [Query; 3]) {
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

    let etcd_pids = etcd.pids();
    let serve = |https, cache| Serve {
        https,
        cache,
        etcd_pids: &etcd_pids,
    };
    let query = queries(pki, &setup, serve(secure, false), secs).await;
    let cached = queries(pki, &setup, serve(secure, true), secs).await;
    // Secure: the same queries once more with the gateway itself plain, to tell the cost of
    // etcd's TLS and auth from that of HTTPS and tokens.
    let etcd_only = if secure {
        queries(pki, &setup, serve(false, false), secs).await
    } else {
        Query::default()
    };
    (records as f64 / run.seconds, [query, cached, etcd_only])
}

/// How the gateway of one query measurement serves.
struct Serve<'a> {
    /// HTTPS with a read token.
    https: bool,
    /// The query cache at its default size (else off: every request reads etcd).
    cache: bool,
    etcd_pids: &'a [u32],
}

/// A gateway on the stored fleet, served as `serve` says, under wrk.
async fn queries(pki: &TestPki, setup: &Setup, serve: Serve<'_>, secs: u64) -> Query {
    let Serve {
        https,
        cache,
        etcd_pids,
    } = serve;
    let mut env = setup.env_as("gateway");
    let port = free_port();
    env.extend([
        ("GATEWAY_PORT", port.to_string()),
        ("RATE_LIMIT_RPS", "0".to_string()),
    ]);
    if !cache {
        env.push(("QUERY_CACHE_MB", "0".to_string()));
    }
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
    let gateway_pid = [gateway.child.id()];
    let before = (cpu_seconds_of(etcd_pids), cpu_seconds_of(&gateway_pid));
    let (rps, p99_ms) = match wrk_with(&base, &paths, secs, None, header.as_deref()) {
        Some(f) => f,
        None => load_with(client, &base, &paths, secs).await,
    };
    let requests = (rps * secs as f64).max(1.0);
    let per_request = |now: f64, then: f64| (now - then) * 1e6 / requests;
    let query = Query {
        rps,
        p99_ms,
        etcd_cpu_us: per_request(cpu_seconds_of(etcd_pids), before.0),
        gateway_cpu_us: per_request(cpu_seconds_of(&gateway_pid), before.1),
    };
    gateway.stop();
    query
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
    let rps = |v: &[Query]| v.iter().map(|q| q.rps).collect::<Vec<_>>();
    let p99 = |v: &[Query]| v.iter().map(|q| q.p99_ms).fold(0.0, f64::max);
    let us = |v: &[Query], f: fn(&Query) -> f64| mean(&v.iter().map(f).collect::<Vec<_>>());
    let (ip, is) = (mean(&r.ingest_plain), mean(&r.ingest_secure));
    let qp = mean(&rps(&r.query_plain));
    let qc = mean(&rps(&r.query_plain_cached));
    // A row, with its ratio against `base` (req/s) when it has one.
    let query = |name: &str, v: &[Query], base: Option<f64>| {
        let q = mean(&rps(v));
        let ratio = base.map_or(String::new(), |b| format!("**{:.2}×**", q / b));
        format!(
            "| query: {name} ({}) | {q:.0} req/s, p99 {:.1} ms; CPU per request: etcd {:.0} µs, gateway {:.0} µs | {ratio} |\n",
            list(&rps(v)),
            p99(v),
            us(v, |q| q.etcd_cpu_us),
            us(v, |q| q.gateway_cpu_us),
        )
    };
    format!(
        "| measure (per round in brackets) | figure | against plain (aim ≥ 0.8×) |\n|---|---|---|\n\
         | ingest, 4 collectors, {} records, plain ({}) | {ip:.0} records/s | |\n\
         | ingest, etcd over mutual TLS with auth, a user per process ({}) | {is:.0} records/s | **{:.2}×** |\n\
         {}{}{}{}{}\
         (queries: one GPU's page of 100, 32 keep-alive clients, {} s each; the cache off unless said, so that every request reads etcd)",
        r.records,
        list(&r.ingest_plain),
        list(&r.ingest_secure),
        is / ip,
        query("plain", &r.query_plain, None),
        query("etcd TLS + auth, gateway plain", &r.query_etcd_secure, Some(qp)),
        query("etcd TLS + auth, gateway HTTPS + token", &r.query_secure, Some(qp)),
        query("cache on (the default), plain", &r.query_plain_cached, None),
        query(
            "cache on (the default), etcd TLS + auth, gateway HTTPS + token",
            &r.query_secure_cached,
            Some(qc)
        ),
        r.query_secs,
    )
}
