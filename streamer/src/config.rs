//! Command line and environment of the streamer (CONTRACT.md).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use telemetry::config::{parse_duration, EtcdArgs, QueueProcessArgs};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "streamer",
    version,
    about = "Reads GPU telemetry and publishes it into the etcd queue."
)]
pub struct Config {
    #[command(flatten)]
    pub process: QueueProcessArgs,

    /// DCGM CSV file to publish; may be given several times.
    #[arg(long = "csv", env = "CSV_PATH", value_delimiter = ',')]
    pub csv: Vec<PathBuf>,

    /// Stream the CSV files forever.
    #[arg(long = "loop", env = "STREAM_LOOP")]
    pub looping: bool,

    /// Which timestamps CSV rows carry: the file's own (`source`) or the processing time
    /// (`now`). Default: `now` with --loop, else `source`.
    #[arg(long, env = "STREAM_TIMESTAMPS", value_enum)]
    pub timestamps: Option<Timestamps>,

    /// Scrape a dcgm-exporter /metrics endpoint every --interval.
    #[arg(long = "dcgm-url", env = "DCGM_URL")]
    pub dcgm_url: Option<String>,

    /// Run nvidia-smi every --interval (optionally the path of the binary).
    #[arg(long = "nvidia-smi", env = "NVIDIA_SMI", num_args = 0..=1, default_missing_value = "nvidia-smi")]
    pub nvidia_smi: Option<PathBuf>,

    /// Hostname stamped on nvidia-smi readings (default: this machine's).
    #[arg(long, env = "STREAM_HOSTNAME", default_value = "")]
    pub hostname: String,

    /// Poll interval of the device sources.
    #[arg(long, env = "STREAM_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Serve POST /api/v1/ingest and the gRPC Ingest service on this address.
    #[arg(long, env = "INGEST_LISTEN")]
    pub listen: Option<String>,

    /// `token`: pushing records needs `Authorization: Bearer TOKEN` of role ingest or admin
    /// (`gateway token create --role ingest`; docs/security.md).
    #[arg(
        long = "auth-mode",
        env = "AUTH_MODE",
        value_enum,
        default_value = "none"
    )]
    pub auth_mode: telemetry::auth::AuthMode,

    /// Push requests per second per client address (0: no limit); bursts of twice as many.
    /// Above it: 429 with Retry-After.
    #[arg(
        long = "ingest-rate-limit",
        env = "INGEST_RATE_LIMIT",
        default_value_t = 100.0
    )]
    pub ingest_rate_limit: f64,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub tls: telemetry::tls::TlsArgs,

    /// Largest accepted ingest body, in bytes.
    #[arg(long = "ingest-max-body", env = "INGEST_MAX_BODY", default_value_t = 8 * 1024 * 1024)]
    pub ingest_max_body: usize,

    /// Records per second (0 = unlimited); the token bucket's rate. On SIGINT or SIGTERM the
    /// records already buffered are published without pacing, so that they fit the grace period.
    #[arg(long = "rate", env = "STREAM_RATE", default_value_t = 0.0)]
    pub rate: f64,

    /// Slow down when the queue is deep.
    #[arg(long = "throttle-enabled", env = "THROTTLE_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub throttle_enabled: bool,

    /// Queue depth (messages) above which the streamer slows down.
    #[arg(
        long = "throttle-max-queue-depth",
        env = "THROTTLE_MAX_QUEUE_DEPTH",
        default_value_t = 1000
    )]
    pub throttle_max_queue_depth: i64,

    /// Fraction of the rate kept while the queue is too deep (0.0 pauses).
    #[arg(long = "throttle-rate", env = "THROTTLE_RATE", default_value_t = 0.1)]
    pub throttle_rate: f64,

    /// How often the queue depth is sampled.
    #[arg(long = "throttle-check-interval", env = "THROTTLE_CHECK_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub throttle_check_interval: Duration,

    /// Longest a record waits for its message to fill before it is published anyway.
    #[arg(long, env = "STREAM_LINGER", default_value = "20ms", value_parser = parse_duration)]
    pub linger: Duration,

    /// Records buffered between the sources and etcd; sources wait when it is full.
    #[arg(long, env = "STREAM_BUFFER", default_value_t = 8192)]
    pub buffer: usize,

    /// Concurrent publish requests to etcd.
    #[arg(long = "publishers", env = "STREAM_PUBLISHERS", default_value_t = 4)]
    pub publishers: usize,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamps {
    Source,
    Now,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Write a realistic synthetic fleet as DCGM CSV.
    Generate(crate::generate::GenerateArgs),
}

impl Config {
    /// The live settings this streamer was started with (flags, environment, defaults); a
    /// value set in etcd overrides each.
    pub fn startup_settings(&self) -> Vec<(&'static str, serde_json::Value)> {
        use telemetry::settings::catalog;
        vec![
            (catalog::STREAM_RATE, self.rate.into()),
            (catalog::THROTTLE_ENABLED, self.throttle_enabled.into()),
            (
                catalog::THROTTLE_MAX_QUEUE_DEPTH,
                self.throttle_max_queue_depth.into(),
            ),
            (catalog::THROTTLE_RATE, self.throttle_rate.into()),
            (
                catalog::LOG_LEVEL,
                telemetry::logging::startup_level().into(),
            ),
        ]
    }

    /// Logging and shutdown settings, for the start-up path.
    pub fn runtime(&self) -> &telemetry::config::RuntimeArgs {
        &self.process.runtime
    }

    pub fn stamp_now(&self) -> bool {
        self.timestamps.unwrap_or(if self.looping {
            Timestamps::Now
        } else {
            Timestamps::Source
        }) == Timestamps::Now
    }

    /// Checks what clap cannot, naming the setting at fault.
    pub fn validate(&mut self) -> Result<(), String> {
        if self.rate < 0.0 || !self.rate.is_finite() {
            return Err("STREAM_RATE must be 0 (unlimited) or a positive number".into());
        }
        if self.ingest_rate_limit < 0.0 || !self.ingest_rate_limit.is_finite() {
            return Err("INGEST_RATE_LIMIT must be 0 (no limit) or a positive number".into());
        }
        if !(0.0..=1.0).contains(&self.throttle_rate) {
            return Err("THROTTLE_RATE must be between 0.0 and 1.0".into());
        }
        if self.throttle_max_queue_depth < 0 {
            return Err("THROTTLE_MAX_QUEUE_DEPTH must not be negative".into());
        }
        if self.buffer == 0 || self.publishers == 0 {
            return Err("STREAM_BUFFER and STREAM_PUBLISHERS must be at least 1".into());
        }
        if self.command.is_none()
            && self.csv.is_empty()
            && self.dcgm_url.is_none()
            && self.nvidia_smi.is_none()
            && self.listen.is_none()
        {
            return Err("no input: give --csv, --dcgm-url, --nvidia-smi or --listen".into());
        }
        if self.looping && self.csv.is_empty() {
            return Err("--loop needs --csv".into());
        }
        Ok(())
    }

    /// True when every input ends by itself (one pass over files), so the streamer exits.
    pub fn finite(&self) -> bool {
        !self.looping
            && self.dcgm_url.is_none()
            && self.nvidia_smi.is_none()
            && self.listen.is_none()
    }

    pub fn for_tests(endpoints: Vec<String>, prefix: &str) -> Self {
        let mut c =
            Config::parse_from(["streamer", "--admin-listen", "", "--listen", "127.0.0.1:0"]);
        c.process.runtime.etcd_startup_timeout = std::time::Duration::ZERO;
        c.listen = None;
        c.process.etcd = EtcdArgs::new(endpoints, prefix);
        c
    }
}
