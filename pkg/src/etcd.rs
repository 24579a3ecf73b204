//! Connecting to etcd, and telling transient failures from permanent ones.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::config::EtcdArgs;

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

fn options(args: &EtcdArgs) -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(args.dial_timeout)
        .with_timeout(Duration::from_secs(30))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
}

/// Connects once, failing after the dial timeout.
pub async fn connect(args: &EtcdArgs) -> Result<Client, EtcdError> {
    let mut client = Client::connect(&args.endpoints, Some(options(args)))
        .await
        .ctx("connect")?;
    // A channel can come up lazily; one status call proves a member answers.
    match tokio::time::timeout(args.dial_timeout, client.status()).await {
        Ok(r) => r.ctx("connect")?,
        Err(_) => {
            return Err(EtcdError::new(
                "connect",
                etcd_client::Error::InvalidArgs(format!(
                    "no answer within ETCD_DIAL_TIMEOUT ({:?})",
                    args.dial_timeout
                )),
            ))
        }
    };
    Ok(client)
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
