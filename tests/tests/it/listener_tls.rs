//! HTTPS on the gateway and on the streamer's push listener (`TLS_CERT_FILE`, `TLS_KEY_FILE`),
//! with the certificate replaced on disk while they run: new connections get the new one,
//! without a restart.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pipeline_tests::pki::{CertFiles, TestPki};
use pipeline_tests::process::{free_port, Proc};
use pipeline_tests::services::{binary, unique_prefix, wait_until};
use pipeline_tests::EtcdCluster;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One HTTP/1.1 request over TLS, trusting only the test CA. Returns the status and the
/// certificate the server presented.
async fn https(
    port: u16,
    ca: &std::path::Path,
    request: &str,
) -> std::io::Result<(u16, CertificateDer<'static>)> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.ok();
    let head = String::from_utf8_lossy(&answer);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, cert))
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

fn der(files: &CertFiles) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(&files.cert).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_and_the_ingest_listener_serve_https_and_pick_up_a_renewed_certificate() {
    let etcd = EtcdCluster::single().await;
    let prefix = unique_prefix("listener-tls");
    let pki = TestPki::new();
    let first = pki.server("first");
    let (cert, key) = (pki.dir().join("live.pem"), pki.dir().join("live-key.pem"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let cmd = |name: &str| {
        let mut c = Command::new(binary(name));
        c.env("ETCD_ENDPOINTS", etcd.endpoints().join(","))
            .env("ETCD_PREFIX", &prefix)
            .env("ADMIN_LISTEN", "127.0.0.1:0")
            .env("TLS_CERT_FILE", &cert)
            .env("TLS_KEY_FILE", &key);
        c
    };
    let port = free_port();
    let gateway = Proc::spawn(
        "gateway",
        cmd("gateway").env("GATEWAY_PORT", port.to_string()),
    );
    let ingest_port = free_port();
    let streamer = Proc::spawn(
        "streamer",
        cmd("streamer").args(["--listen", &format!("127.0.0.1:{ingest_port}")]),
    );

    let up = wait_until(Duration::from_secs(30), || async {
        matches!(
            https(port, &pki.ca_file, &get("/ready")).await,
            Ok((200, _))
        )
    })
    .await;
    assert!(up, "{}", gateway.stderr());
    let (status, served) = https(port, &pki.ca_file, &get("/api/v1/gpus"))
        .await
        .unwrap();
    assert_eq!((status, served), (200, der(&first)));
    // Plain HTTP on the TLS port gets nothing useful.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/health")).await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);

    let csv = "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n\
               2025-07-18T20:42:34Z,DCGM_FI_DEV_GPU_TEMP,0,nvidia0,GPU-a,H100,host-a,,,,40,\n";
    let post = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/csv\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{csv}",
        csv.len()
    );
    let pushed = wait_until(Duration::from_secs(30), || async {
        matches!(https(ingest_port, &pki.ca_file, &post).await, Ok((202, _)))
    })
    .await;
    assert!(pushed, "{}", streamer.stderr());

    // Renewed on disk (key first, then certificate, as a renewal tool may): served within
    // seconds, on both listeners, with no restart.
    let second = pki.server("second");
    std::fs::copy(&second.key, &key).unwrap();
    std::fs::copy(&second.cert, &cert).unwrap();
    for p in [port, ingest_port] {
        let renewed = wait_until(Duration::from_secs(15), || async {
            https(p, &pki.ca_file, &get("/health"))
                .await
                .is_ok_and(|(_, c)| c == der(&second))
        })
        .await;
        assert!(renewed, "port {p} still serves the old certificate");
    }

    // A key that does not exist is a bad setting: exit 2, naming it.
    let mut bad = Proc::spawn(
        "gateway",
        cmd("gateway")
            .env("GATEWAY_PORT", free_port().to_string())
            .env("TLS_KEY_FILE", pki.dir().join("missing.pem")),
    );
    let status = bad.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{}", bad.stderr());
    assert!(bad.stderr().contains("TLS_KEY_FILE"), "{}", bad.stderr());
}
