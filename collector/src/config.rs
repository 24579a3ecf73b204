//! Command line and environment of the collector (CONTRACT.md).

use std::time::Duration;

use clap::{Parser, Subcommand};
use telemetry::config::{parse_duration, EtcdArgs, QueueArgs, RuntimeArgs};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "collector",
    version,
    about = "Claims queued GPU telemetry from etcd and stores every record exactly once."
)]
pub struct Config {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,

    /// This collector's id, unique among live collectors (default: hostname-pid).
    #[arg(long, env = "COLLECTOR_ID", default_value = "")]
    pub id: String,

    /// Messages committed concurrently by this collector.
    #[arg(long, env = "COLLECTOR_WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,

    /// Queue messages read from a partition per etcd request.
    #[arg(long = "batch-size", env = "MQ_BATCH_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// Failed attempts at a message before it moves to the dead-letter queue.
    #[arg(long = "max-retries", env = "MQ_MAX_RETRIES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_retries: u32,

    /// TTL of this collector's lease: how long its partitions stay claimed after it dies.
    #[arg(long = "processing-timeout", env = "MQ_PROCESSING_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub processing_timeout: Duration,

    /// How long content hashes are remembered for deduplication (at least). A stored record's
    /// key holds its hash, so when TELEMETRY_RETENTION is at least this long no separate
    /// dedupe markers are written.
    #[arg(long = "dedupe-window", env = "DEDUPE_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub dedupe_window: Duration,

    /// How long stored telemetry is kept.
    #[arg(long = "retention", env = "TELEMETRY_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,

    /// Safety-net rescan of owned partitions, in case a watch event was missed.
    #[arg(long = "rescan-interval", env = "MQ_RESCAN_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub rescan_interval: Duration,

    /// Where /health, /ready and /metrics are served [default: 0.0.0.0:9102, or a free port
    /// when that one is taken]; empty disables them. An address given here must be bound.
    #[arg(long = "admin-listen", env = "ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Inspect or requeue dead letters.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum DlqAction {
    /// Print every dead letter as one JSON line (payload omitted).
    List,
    /// Put dead letters back on the queue (all of them when no id is given).
    Requeue { ids: Vec<String> },
}

impl Config {
    /// Checks settings that clap cannot, naming the setting at fault.
    pub fn validate(&mut self) -> Result<(), String> {
        if self.processing_timeout < Duration::from_secs(2) {
            return Err("MQ_PROCESSING_TIMEOUT must be at least 2s (it is the lease TTL)".into());
        }
        if self.dedupe_window < Duration::from_secs(60) {
            return Err("DEDUPE_WINDOW must be at least 60s".into());
        }
        if self.id.is_empty() {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "collector".into());
            self.id = format!("{host}-{}", std::process::id());
        }
        if self.id.contains('/') {
            return Err("COLLECTOR_ID must not contain '/'".into());
        }
        Ok(())
    }

    /// Defaults for tests and tools.
    pub fn for_tests(endpoints: Vec<String>, prefix: &str) -> Self {
        let mut c = Config::parse_from(["collector", "--admin-listen", ""]);
        c.etcd = EtcdArgs::new(endpoints, prefix);
        c.processing_timeout = Duration::from_secs(3);
        c.rescan_interval = Duration::from_secs(1);
        c.runtime.etcd_startup_timeout = Duration::ZERO;
        c
    }
}
