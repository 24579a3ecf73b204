//! TLS on the gateway's and the ingest listener's ports (`TLS_CERT_FILE`, `TLS_KEY_FILE`).
//! The certificate is re-read when its files change, so a renewed certificate (cert-manager,
//! certbot) is served to new connections without a restart; a broken renewal keeps the old
//! one and says so.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use clap::Args;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::service::BadSetting;

/// How often the certificate files are checked for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// The listener's certificate; both set: HTTPS (and gRPC over TLS), neither: plain HTTP.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate chain served on the listener.
    #[arg(
        id = "tls_cert_file",
        long = "tls-cert-file",
        env = "TLS_CERT_FILE",
        requires = "tls_key_file"
    )]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of TLS_CERT_FILE.
    #[arg(
        id = "tls_key_file",
        long = "tls-key-file",
        env = "TLS_KEY_FILE",
        requires = "tls_cert_file"
    )]
    pub key_file: Option<PathBuf>,
}

impl TlsArgs {
    /// An acceptor when TLS is configured, reloading its certificate until `stop`. A file that
    /// cannot be read or parsed is a bad setting (exit 2).
    pub fn acceptor(&self, stop: CancellationToken) -> Result<Option<TlsAcceptor>, BadSetting> {
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else {
            return Ok(None);
        };
        let resolver = Arc::new(Reloading {
            cert: cert.clone(),
            key: key.clone(),
            current: RwLock::new(Arc::new(load(cert, key)?)),
        });
        // ring, the provider etcd-client's TLS already links (its post-quantum key exchange
        // needs aws-lc, a second provider and a C build).
        #[allow(deprecated)]
        let provider = Arc::new(ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BadSetting(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // gRPC needs HTTP/2; browsers and curl may use either.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio::spawn(resolver.watch(stop));
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

/// Reads and checks a certificate chain and its key.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, BadSetting> {
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        BadSetting(format!("{what}: cannot use {}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("TLS_CERT_FILE", cert, &e))?;
    if chain.is_empty() {
        return Err(bad("TLS_CERT_FILE", cert, &"no certificate in it"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("TLS_KEY_FILE", key, &e))?;
    let signer = ring::sign::any_supported_type(&der).map_err(|e| bad("TLS_KEY_FILE", key, &e))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        bad(
            "TLS_KEY_FILE",
            key,
            &format!("it does not match TLS_CERT_FILE: {e}"),
        )
    })?;
    Ok(certified)
}

#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap().clone())
    }
}

impl Reloading {
    fn stamp(&self) -> Option<(SystemTime, SystemTime)> {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((modified(&self.cert)?, modified(&self.key)?))
    }

    /// Polls the files' modification times: a change loads the pair again. Polling rather
    /// than inotify, because renewals often swap a symlink or a mounted directory.
    async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut seen = self.stamp();
        loop {
            if crate::shutdown::or_cancel(&stop, tokio::time::sleep(RELOAD_CHECK))
                .await
                .is_none()
            {
                return;
            }
            let now = self.stamp();
            if now == seen {
                continue;
            }
            match load(&self.cert, &self.key) {
                Ok(c) => {
                    *self.current.write().unwrap() = Arc::new(c);
                    seen = now;
                    metrics::counter!("tls_reloads").increment(1);
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                }
                // A renewal caught halfway (the certificate written, the key not yet) reads as
                // a mismatch: keep serving the old pair and look again next time.
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate changed but cannot be used yet; keeping the old one")
                }
            }
        }
    }
}
