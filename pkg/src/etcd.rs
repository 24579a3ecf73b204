//! Connecting to etcd, and telling transient failures from permanent ones.

use std::time::Duration;

use std::path::Path;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::config::EtcdArgs;
use crate::service::BadSetting;

/// An etcd call failed; `context` says what we were doing.
#[derive(Debug, thiserror::Error)]
#[error("etcd {context}: {source}")]
pub struct EtcdError {
    /// What we were doing.
    pub context: &'static str,
    #[source]
    /// What etcd-client said.
    pub source: etcd_client::Error,
}

impl EtcdError {
    /// Wraps an etcd-client error with what we were doing.
    pub fn new(context: &'static str, source: etcd_client::Error) -> Self {
        Self { context, source }
    }

    /// True when retrying the same request later may succeed (etcd down, no leader, timeout).
    /// False when etcd rejected the request itself (too many ops, too large, bad argument):
    /// those count as a failed attempt at the message.
    pub fn is_transient(&self) -> bool {
        match &self.source {
            etcd_client::Error::GRpcStatus(s) => !matches!(
                s.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::OutOfRange
            ),
            _ => true,
        }
    }
}

impl EtcdError {
    /// True when the request asked for a revision that compaction has removed (etcd answers
    /// `OutOfRange` for exactly that).
    pub fn is_compacted(&self) -> bool {
        matches!(&self.source, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::OutOfRange)
    }
}

/// True when etcd answered NotFound (e.g. a lease that expired or was revoked already).
pub fn is_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::NotFound)
}

/// Shorthand for mapping an etcd-client error with context.
pub trait Context<T> {
    /// Adds `context` to an etcd-client error.
    fn ctx(self, context: &'static str) -> Result<T, EtcdError>;
}

impl<T> Context<T> for Result<T, etcd_client::Error> {
    fn ctx(self, context: &'static str) -> Result<T, EtcdError> {
        self.map_err(|e| EtcdError::new(context, e))
    }
}

/// Why [`connect`] failed: a setting that cannot work (exit 2), or etcd not answering (retry).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A certificate or password file cannot be read, or etcd refused our credentials.
    #[error(transparent)]
    Setting(#[from] BadSetting),
    /// etcd did not answer (yet).
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, BadSetting> {
    std::fs::read(path)
        .map_err(|e| BadSetting(format!("{setting}: cannot read {}: {e}", path.display())))
}

fn options(args: &EtcdArgs) -> Result<ConnectOptions, BadSetting> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(args.dial_timeout)
        .with_timeout(Duration::from_secs(30))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    let sec = &args.security;
    if sec.tls() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &sec.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read("ETCD_CA_FILE", ca)?));
        }
        if let (Some(cert), Some(key)) = (&sec.cert_file, &sec.key_file) {
            let cert = read("ETCD_CERT_FILE", cert)?;
            tls = tls.identity(Identity::from_pem(cert, read("ETCD_KEY_FILE", key)?));
        }
        options = options.with_tls(tls);
    }
    if let (Some(user), Some(file)) = (&sec.username, &sec.password_file) {
        let password = String::from_utf8(read("ETCD_PASSWORD_FILE", file)?)
            .map_err(|_| BadSetting("ETCD_PASSWORD_FILE: the password is not UTF-8".into()))?;
        let password = password.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(BadSetting(format!(
                "ETCD_PASSWORD_FILE: {} is empty",
                file.display()
            )));
        }
        // Unary calls log in again when etcd says the token expired (or etcd restarted and
        // forgot it); streams are re-opened with a fresh token by `watch` and `lease`.
        options = options
            .with_user(user, password)
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

/// Whether etcd (or the TLS handshake) refused who we are, rather than not answering: a wrong
/// password, auth not enabled for a user, a certificate it does not trust. Retrying cannot help.
fn refused(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                Code::InvalidArgument
                    | Code::FailedPrecondition
                    | Code::PermissionDenied
                    | Code::Unauthenticated
            ) || tls_failure(s)
        }
        etcd_client::Error::TransportError(t) => tls_failure(t),
        _ => false,
    }
}

/// rustls reports a failed handshake (an untrusted certificate, a missing client certificate,
/// a plain-text peer) as an `InvalidData` I/O error somewhere in the chain.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// The error and its causes on one line, each said once.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        next = err.source();
    }
    parts.join(": ").replace('\n', " ")
}

fn refusal(args: &EtcdArgs, e: &etcd_client::Error) -> BadSetting {
    let sec = &args.security;
    let who = match &sec.username {
        Some(user) => format!("ETCD_USERNAME={user} (ETCD_PASSWORD_FILE)"),
        None if sec.tls() => "ETCD_CA_FILE/ETCD_CERT_FILE/ETCD_KEY_FILE".to_string(),
        None => "the connection settings".to_string(),
    };
    BadSetting(format!("etcd refused {who}: {}", one_line(e)))
}

/// Connects once, failing after the dial timeout. A refused credential is a [`BadSetting`].
pub async fn connect(args: &EtcdArgs) -> Result<Client, ConnectError> {
    let failed = |e: etcd_client::Error| -> ConnectError {
        if refused(&e) {
            refusal(args, &e).into()
        } else {
            EtcdError::new("connect", e).into()
        }
    };
    let mut client = Client::connect(&args.endpoints, Some(options(args)?))
        .await
        .map_err(failed)?;
    // A channel can come up lazily; one status call proves a member answers.
    match tokio::time::timeout(args.dial_timeout, client.status()).await {
        Ok(r) => r.map_err(failed)?,
        Err(_) => {
            return Err(EtcdError::new(
                "connect",
                etcd_client::Error::InvalidArgs(format!(
                    "no answer within ETCD_DIAL_TIMEOUT ({:?})",
                    args.dial_timeout
                )),
            )
            .into())
        }
    };
    Ok(client)
}

/// Logs in again after etcd refused a stream (watch, lease keep-alive) for its token: those do
/// not refresh an expired token by themselves. Without a user it does nothing.
pub async fn renew_login(client: &Client) {
    if let Err(e) = client.refresh_token().await {
        tracing::warn!(error = %e, "cannot log in to etcd again yet");
    }
}

/// True when etcd refused the request for its token or its permissions.
pub fn is_auth_error(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied))
}

/// Keeps the "etcd" condition of `readiness` current until `stop`: a member answers within a
/// second and the cluster has a leader. `/ready` reads the result, so it never waits on etcd.
pub async fn track_health(client: Client, readiness: Readiness, stop: CancellationToken) {
    let mut c = client;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), c.status()).await {
            Ok(Ok(s)) if s.leader() != 0 => readiness.clear("etcd"),
            Ok(Ok(_)) => readiness.block("etcd", "the etcd cluster has no leader"),
            Ok(Err(e)) => readiness.block("etcd", format!("etcd is not reachable: {e}")),
            Err(_) => readiness.block("etcd", "etcd did not answer within 1s"),
        }
        if crate::shutdown::or_cancel(&stop, tokio::time::sleep(Duration::from_secs(1)))
            .await
            .is_none()
        {
            return;
        }
    }
}
