//! Connecting to etcd, and telling transient failures from permanent ones.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::EtcdArgs;

/// An etcd call failed; `context` says what we were doing.
#[derive(Debug, thiserror::Error)]
#[error("etcd {context}: {source}")]
pub struct EtcdError {
    pub context: &'static str,
    #[source]
    pub source: etcd_client::Error,
}

impl EtcdError {
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

/// Shorthand for mapping an etcd-client error with context.
pub trait Context<T> {
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
    client.status().await.ctx("connect")?;
    Ok(client)
}

/// Connects, retrying with backoff until etcd answers or `cancel` fires (then `None`).
/// Services start before etcd in many deployments; they wait rather than crash-loop.
pub async fn connect_with_retry(args: &EtcdArgs, cancel: &CancellationToken) -> Option<Client> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match connect(args).await {
            Ok(c) => return Some(c),
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(endpoints = ?args.endpoints, error = %e, retry_in = ?wait, "etcd is not reachable yet");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Ready means: a member answers and the cluster has a leader.
pub async fn is_ready(client: &Client) -> bool {
    let mut c = client.clone();
    matches!(
        tokio::time::timeout(Duration::from_secs(2), c.status()).await,
        Ok(Ok(s)) if s.leader() != 0
    )
}
