//! Real etcd processes for tests and benchmarks: single nodes or clusters on free loopback
//! ports, with temporary data directories, waited on until they serve, and killed on drop.
//!
//! Which binary: `$ETCD_BIN` if set, else the etcd 3.7 shipped in the `etcd-bin-vendored`
//! crate, else `etcd` on PATH (Debian's `etcd-server`). If none runs, the harness panics with
//! the install command: a test that needs etcd never passes without one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::pki::CertFiles;

/// Finds an etcd binary, or explains how to get one.
pub fn etcd_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(p) = etcd_bin_vendored::etcd_bin_path() {
        if p.exists() {
            return p.to_path_buf();
        }
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("etcd");
        if p.is_file() {
            return p;
        }
    }
    panic!("no etcd binary found: set ETCD_BIN, or install one with `apt-get install etcd-server` (or run `make deps`)");
}

use crate::process::free_port;

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    child: Option<Child>,
}

/// Certificates of an etcd that serves clients over mutual TLS.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA both sides trust.
    pub ca: PathBuf,
    /// etcd's server certificate.
    pub server: CertFiles,
    /// A client certificate for CN `root`, which etcd lets do anything without a password:
    /// the harness's own connection.
    pub root: CertFiles,
}

/// A running etcd cluster of one or more members.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    extra_args: Vec<String>,
    tls: Option<EtcdTls>,
    dir: TempDir,
}

impl EtcdCluster {
    /// One member, waited on until it serves.
    pub async fn single() -> Self {
        Self::start(1, &[]).await
    }

    /// `n` members on loopback, waited on until a leader is elected.
    pub async fn start(n: usize, extra_args: &[&str]) -> Self {
        Self::start_with(n, extra_args, None).await
    }

    /// One member that serves clients only over TLS and demands a client certificate
    /// (`--client-cert-auth`).
    pub async fn single_tls(tls: EtcdTls, extra_args: &[&str]) -> Self {
        Self::start_with(1, extra_args, Some(tls)).await
    }

    async fn start_with(n: usize, extra_args: &[&str], tls: Option<EtcdTls>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("etcd-test-")
            .tempdir()
            .expect("temp dir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            tls,
            dir,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_ready().await;
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let bin = etcd_binary();
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .expect("etcd log file");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut cmd = Command::new(&bin);
        if let Some(t) = &self.tls {
            cmd.arg("--client-cert-auth")
                .arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg(format!("--cert-file={}", t.server.cert.display()))
                .arg(format!("--key-file={}", t.server.key.display()));
        }
        let child = cmd
            .args(["--name", &m.name])
            .args(["--data-dir", m.data_dir.to_str().unwrap()])
            .args([
                "--listen-client-urls",
                &format!("{scheme}://127.0.0.1:{}", m.client_port),
            ])
            .args([
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{}", m.client_port),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer_port),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer_port),
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "test",
            ])
            .args(["--log-level", "error"])
            .args(&self.extra_args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}. Install etcd with `apt-get install etcd-server`",
                    bin.display()
                )
            });
        self.members[i].child = Some(child);
    }

    /// Client endpoints of the members that are running.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Every member's endpoint, running or not (what a client is configured with).
    pub fn all_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Process ids of the running members (the benchmark reads their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kills a member with SIGKILL (its data stays, for a restart).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed member again with its data and waits for the cluster to serve.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready().await;
    }

    /// Index of the current leader.
    pub async fn leader(&self) -> usize {
        for (i, ep) in self.endpoints_by_index() {
            if let Ok(mut c) = etcd_client::Client::connect([ep], None).await {
                if let Ok(s) = c.status().await {
                    if s.leader() == s.header().map(|h| h.member_id()).unwrap_or(0) {
                        return i;
                    }
                }
            }
        }
        panic!("no member is leader");
    }

    fn endpoints_by_index(&self) -> Vec<(usize, String)> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.child.is_some())
            .map(|(i, m)| (i, format!("127.0.0.1:{}", m.client_port)))
            .collect()
    }

    /// Polls until every running member answers and agrees there is a leader (60 s at most,
    /// then panics with the member's log).
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for (i, ep) in self.endpoints_by_index() {
            loop {
                let ok = async {
                    let mut c = etcd_client::Client::connect([ep.as_str()], self.options())
                        .await
                        .ok()?;
                    let s = c.status().await.ok()?;
                    c.put("/__harness_ready", "1", None).await.ok()?;
                    (s.leader() != 0).then_some(())
                };
                if tokio::time::timeout(Duration::from_secs(2), ok)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    let log = std::fs::read_to_string(self.dir.path().join(format!("m{i}.log")))
                        .unwrap_or_default();
                    panic!("etcd member m{i} at {ep} never became ready; its log:\n{log}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// How the harness connects: with the binaries' request timeout and keep-alive (a request
    /// caught by a frozen etcd once waited forever without them, and hung a test), and over
    /// TLS as `root` when etcd demands it.
    pub fn options(&self) -> Option<etcd_client::ConnectOptions> {
        let options = etcd_client::ConnectOptions::new()
            .with_timeout(std::time::Duration::from_secs(30))
            .with_keep_alive(
                std::time::Duration::from_secs(10),
                std::time::Duration::from_secs(5),
            )
            .with_keep_alive_while_idle(true);
        let Some(t) = self.tls.as_ref() else {
            return Some(options);
        };
        let pem = |p: &Path| std::fs::read(p).unwrap();
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(pem(&t.ca)))
            .identity(etcd_client::Identity::from_pem(
                pem(&t.root.cert),
                pem(&t.root.key),
            ));
        Some(options.with_tls(tls))
    }

    /// A connected client.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.all_endpoints(), self.options())
            .await
            .expect("connect to test etcd")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
