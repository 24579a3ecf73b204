//! Settings every binary shares. Each is a flag and an environment variable (see CONTRACT.md),
//! so that the same binary runs from a shell, a unit file or a test without a config file.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Parses `10s`, `500ms`, `24h`: the duration syntax every setting uses.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 24h)"))
}

/// How to reach etcd, and the key prefix that isolates one pipeline from another.
#[derive(Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(
        long = "etcd-endpoints",
        env = "ETCD_ENDPOINTS",
        default_value = "localhost:2379",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,

    /// How long to wait for a connection to etcd.
    #[arg(long = "etcd-dial-timeout", env = "ETCD_DIAL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub dial_timeout: Duration,

    /// Prefix for every key the pipeline writes, so that several pipelines can share one etcd.
    #[arg(long = "etcd-prefix", env = "ETCD_PREFIX", default_value = "")]
    pub prefix: String,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub security: EtcdSecurity,
}

/// TLS and authentication to etcd (docs/security.md). The password is only ever read from a
/// file: a flag or an environment variable would show in `ps`, shell history or a unit file.
#[derive(Args, Debug, Clone, Default)]
pub struct EtcdSecurity {
    /// PEM file of the CA that signed etcd's server certificate; setting it turns TLS on.
    #[arg(long = "etcd-ca-file", env = "ETCD_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// PEM client certificate for mutual TLS (with ETCD_KEY_FILE). With auth enabled and no
    /// ETCD_USERNAME, etcd takes the certificate's common name as the user.
    #[arg(long = "etcd-cert-file", env = "ETCD_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,

    /// PEM private key of ETCD_CERT_FILE.
    #[arg(long = "etcd-key-file", env = "ETCD_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,

    /// etcd user to log in as (with ETCD_PASSWORD_FILE).
    #[arg(
        long = "etcd-username",
        env = "ETCD_USERNAME",
        requires = "password_file"
    )]
    pub username: Option<String>,

    /// File holding ETCD_USERNAME's password (one line; a trailing newline is ignored).
    #[arg(
        long = "etcd-password-file",
        env = "ETCD_PASSWORD_FILE",
        requires = "username"
    )]
    pub password_file: Option<PathBuf>,
}

impl EtcdSecurity {
    /// Whether the connection to etcd uses TLS.
    pub fn tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some()
    }
}

impl EtcdArgs {
    /// Settings for a test or tool that already knows its endpoints.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        Self {
            endpoints,
            dial_timeout: Duration::from_secs(5),
            prefix: prefix.into(),
            security: EtcdSecurity::default(),
        }
    }
}

/// Logging and shutdown behaviour, the same for every binary.
#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Log format: text or json. The level comes from RUST_LOG.
    #[arg(long = "log-format", env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// How long shutdown may take to drain work in flight before exiting anyway.
    #[arg(long = "shutdown-grace", env = "SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Longest a client may take to send a request's headers, and longest an idle keep-alive
    /// connection stays open, on every HTTP listener (slow or silent clients hold nothing).
    #[arg(long = "http-header-timeout", env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// How long to wait at start-up for etcd to answer before giving up with exit 1 (0: wait
    /// forever). Meanwhile /health answers 200 and /ready 503 with the reason.
    #[arg(long = "etcd-startup-timeout", env = "ETCD_STARTUP_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub etcd_startup_timeout: Duration,

    /// How long audit entries (configuration, token and dead-letter changes) stay in etcd.
    #[arg(long = "audit-retention", env = "AUDIT_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub audit_retention: Duration,
}

/// What a streamer and a collector both take: etcd, the queue, logging and shutdown, and where
/// their admin endpoints are served.
#[derive(Args, Debug, Clone)]
pub struct QueueProcessArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub queue: QueueArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub runtime: RuntimeArgs,
    /// Where /health, /ready and /metrics are served [default: 0.0.0.0:9101 for a streamer,
    /// 0.0.0.0:9102 for a collector, or a free port when that one is taken]; empty disables
    /// them. An address given here must be bound.
    #[arg(long = "admin-listen", env = "ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
}

/// The queue's shape, which the streamer and the collectors must agree on.
#[derive(Args, Debug, Clone)]
pub struct QueueArgs {
    /// Number of queue partitions [default: the queue's own count, or 16 for a new queue].
    /// Collectors own whole partitions, so this bounds how many collectors share the load. The
    /// count is written to etcd by the first process; a process given another refuses to start.
    #[arg(long = "mq-partitions", env = "MQ_PARTITIONS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub partitions: Option<u16>,

    /// Most operations in one etcd Txn (etcd's --max-txn-ops, 128 on stock etcd).
    #[arg(long = "mq-max-txn-ops", env = "MQ_MAX_TXN_OPS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(8..))]
    pub max_txn_ops: u32,

    /// Most bytes in one etcd request (etcd's --max-request-bytes, 1.5 MiB on stock etcd).
    #[arg(long = "mq-max-request-bytes", env = "MQ_MAX_REQUEST_BYTES", default_value_t = 1_572_864, value_parser = clap::value_parser!(u32).range(65_536..))]
    pub max_request_bytes: u32,
}

impl Default for QueueArgs {
    fn default() -> Self {
        Self {
            partitions: None,
            max_txn_ops: 128,
            max_request_bytes: 1_572_864,
        }
    }
}

impl QueueArgs {
    /// The count for a queue that has none yet.
    pub const DEFAULT_PARTITIONS: u16 = 16;

    /// The partition count in effect: the queue's own once [`crate::queue::agree`] has run.
    pub fn partitions(&self) -> u16 {
        self.partitions.unwrap_or(Self::DEFAULT_PARTITIONS)
    }

    /// Records per message, so that its commit is one Txn: a put and a compare per record (its
    /// data key is also its dedupe entry, see `dedupe`), plus the deletes of the message and
    /// its attempt counter, and the compares of its owner, its message and its fold window.
    /// Fewer, larger Txns are what etcd applies fastest (docs/performance.md).
    pub fn records_per_message(&self) -> usize {
        (self.max_txn_ops as usize).saturating_sub(3).max(1)
    }

    /// Most record bytes in one message. The message must fit one request, and so must its
    /// commit, which puts every record again under its own key: half the request limit leaves
    /// room for the keys. Real records fill a message by count long before (126 × ~300 B).
    pub fn message_bytes(&self) -> usize {
        self.max_request_bytes as usize / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_per_message_fits_one_txn() {
        let q = QueueArgs::default();
        assert_eq!(q.records_per_message(), 125);
        assert!(q.records_per_message() + 3 <= q.max_txn_ops as usize);
    }

    #[test]
    fn durations_parse_and_bad_ones_explain() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("thirty").unwrap_err().contains("expected"));
    }
}
