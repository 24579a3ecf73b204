//! Command line and environment of the gateway (CONTRACT.md).

use std::time::Duration;

use clap::Parser;
use telemetry::config::{parse_duration, EtcdArgs, RuntimeArgs};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "gateway",
    version,
    about = "REST API and WebSocket live stream over the stored GPU telemetry."
)]
pub struct Config {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub tls: telemetry::tls::TlsArgs,

    /// Port to listen on (all interfaces).
    #[arg(long, env = "GATEWAY_PORT", default_value_t = 8080)]
    pub port: u16,

    /// `token`: every path but /health and /ready needs `Authorization: Bearer TOKEN` of a
    /// role allowed to use it (docs/security.md). `none` is for a local demo: anyone who can
    /// reach the port can read everything and change the configuration.
    #[arg(
        long = "auth-mode",
        env = "AUTH_MODE",
        value_enum,
        default_value = "none"
    )]
    pub auth_mode: telemetry::auth::AuthMode,

    #[command(subcommand)]
    #[allow(missing_docs)]
    pub command: Option<Command>,

    /// Serve the WebSocket live stream.
    #[arg(long = "ws-enabled", env = "WS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub ws_enabled: bool,

    /// Most concurrent WebSocket clients; more are refused with 503.
    #[arg(
        long = "ws-max-connections",
        env = "WS_MAX_CONNECTIONS",
        default_value_t = 1000
    )]
    pub ws_max_connections: usize,

    /// Frames buffered per WebSocket client before it starts losing frames.
    #[arg(long = "ws-buffer", env = "WS_BUFFER", default_value_t = 4096)]
    pub ws_buffer: usize,

    /// Frames a client may lose before it is closed with a policy close code (1008).
    #[arg(
        long = "ws-max-dropped",
        env = "WS_MAX_DROPPED",
        default_value_t = 10_000
    )]
    pub ws_max_dropped: u64,

    /// Ping interval; a client that does not answer two pings is closed.
    #[arg(long = "ws-ping-interval", env = "WS_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ws_ping_interval: Duration,

    /// Requests per second allowed per client IP (0 disables the limit).
    #[arg(
        long = "rate-limit-rps",
        env = "RATE_LIMIT_RPS",
        default_value_t = 200.0
    )]
    pub rate_limit_rps: f64,

    /// Burst allowed per client IP above the steady rate.
    #[arg(
        long = "rate-limit-burst",
        env = "RATE_LIMIT_BURST",
        default_value_t = 400.0
    )]
    pub rate_limit_burst: f64,

    /// Longest a request may take.
    #[arg(long = "request-timeout", env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Allowed CORS origins, comma-separated ("*" for any).
    #[arg(
        long = "cors-origins",
        env = "CORS_ORIGINS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Largest request body, and largest query string, in bytes.
    #[arg(long = "max-request-bytes", env = "MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    pub max_request_bytes: usize,

    /// Memory for cached telemetry pages, in MiB; 0 turns the cache off. A page is served
    /// from it only while its GPUs have no newer write (see docs/design.md).
    #[arg(long = "query-cache-mb", env = "QUERY_CACHE_MB", default_value_t = 64)]
    pub query_cache_mb: u64,

    /// Memory for decoded folded chunks, in MiB; 0 turns it off. Unlike the query cache it
    /// serves nothing stale: every read still fetches the chunk, and a decoded copy is used
    /// only for the very bytes it was decoded from.
    #[arg(long = "chunk-cache-mb", env = "CHUNK_CACHE_MB", default_value_t = 64)]
    pub chunk_cache_mb: u64,

    /// Oldest a cached page may be: the bound on staleness should the watch fall behind.
    #[arg(long = "query-cache-ttl", env = "QUERY_CACHE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub query_cache_ttl: Duration,
}

impl Config {
    /// Logging and shutdown settings, for the start-up path.
    pub fn runtime(&self) -> &telemetry::config::RuntimeArgs {
        &self.runtime
    }

    pub fn validate(&mut self) -> Result<(), String> {
        for o in &self.cors_origins {
            check_origin(o)?;
        }
        if self.rate_limit_rps < 0.0 || !self.rate_limit_rps.is_finite() {
            return Err("RATE_LIMIT_RPS must be 0 (off) or positive".into());
        }
        if self.ws_buffer == 0 {
            return Err("WS_BUFFER must be at least 1".into());
        }
        Ok(())
    }

    pub fn for_tests(endpoints: Vec<String>, prefix: &str) -> Self {
        let mut c = Config::parse_from(["gateway"]);
        c.runtime.etcd_startup_timeout = Duration::ZERO;
        c.etcd = EtcdArgs::new(endpoints, prefix);
        c.port = 0;
        c.rate_limit_rps = 0.0;
        c
    }
}

/// What the gateway binary does besides serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Create, list or revoke API tokens (stored hashed in etcd; docs/security.md).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

/// `gateway token ...`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum TokenAction {
    /// Create a token and print its secret, once: it is stored only as a hash.
    Create {
        /// What it may do: read (the API and WebSocket), ingest (push records), admin (all).
        #[arg(long, value_enum)]
        role: telemetry::auth::Role,
        /// A label for people and the audit log.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Print every token (never its secret) as one JSON line.
    List,
    /// Revoke a token by id; every gateway and streamer stops accepting it within moments.
    Revoke {
        /// The token's id, as `token list` shows it.
        id: String,
    },
}

/// An origin as browsers send it: `*`, or `scheme://host[:port]` with nothing after.
fn check_origin(o: &str) -> Result<(), String> {
    if o == "*" {
        return Ok(());
    }
    let bad = |why: &str| {
        Err(format!(
            "CORS_ORIGINS entry {o:?} {why} (expected e.g. https://grafana.example.com:3000 or *)"
        ))
    };
    let Some((scheme, rest)) = o.split_once("://") else {
        return bad("has no scheme");
    };
    if !matches!(scheme, "http" | "https") {
        return bad("is not http or https");
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ', ',']) {
        return bad("is not just a host and port");
    }
    if axum::http::HeaderValue::from_str(o).is_err() {
        return bad("is not a valid header value");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        assert!(check_origin("*").is_ok());
        assert!(check_origin("http://localhost:3000").is_ok());
        for bad in [
            "localhost:3000",
            "ftp://x",
            "https://x/path",
            "https://",
            "http://a b",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }
}
