//! Command line and environment of the collector (CONTRACT.md).

use std::time::Duration;

use clap::{Parser, Subcommand};
use telemetry::config::{parse_duration, EtcdArgs, QueueProcessArgs};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "collector",
    version,
    about = "Claims queued GPU telemetry from etcd and stores every record exactly once."
)]
pub struct Config {
    #[command(flatten)]
    pub process: QueueProcessArgs,

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
    /// key holds its hash, and what retention deletes is refused afterwards, so every window is
    /// covered without a marker key (docs/protocol.md).
    #[arg(long = "dedupe-window", env = "DEDUPE_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub dedupe_window: Duration,

    /// How long a finished message's processing state stays readable at
    /// `GET /api/v1/messages/{id}` (0 turns message states off).
    #[arg(long = "message-state-ttl", env = "MESSAGE_STATE_TTL", default_value = "1h", value_parser = parse_duration)]
    pub message_state_ttl: Duration,

    /// How long stored telemetry is kept, in sample time: the storage maintainer deletes what is
    /// older than this before the newest stored sample, and collectors refuse it.
    #[arg(long = "retention", env = "TELEMETRY_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,

    /// Safety-net rescan of owned partitions, in case a watch event was missed.
    #[arg(long = "rescan-interval", env = "MQ_RESCAN_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub rescan_interval: Duration,

    /// Where alert transitions (firing, resolved) are sent, as Alertmanager's webhook JSON,
    /// by the collector that evaluates rules (the storage maintainer).
    #[arg(long = "alert-webhook-url", env = "ALERT_WEBHOOK_URL")]
    pub alert_webhook_url: Option<String>,

    #[command(flatten)]
    pub storage: StorageArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The storage maintainer's settings (docs/storage.md). Every collector takes them, since any
/// of them may be elected.
#[derive(clap::Args, Debug, Clone)]
pub struct StorageArgs {
    /// etcd history kept before compaction, so that watches and WebSocket resumes work within
    /// it. Compacted sooner when space is short.
    #[arg(long = "storage-history", env = "STORAGE_HISTORY", default_value = "10m", value_parser = parse_duration)]
    pub history: Duration,

    /// etcd's --quota-backend-bytes (a size such as 2GiB, or bytes). When a member reports a
    /// smaller quota (etcd 3.6 and later do), that one is used.
    #[arg(long = "etcd-quota-bytes", env = "ETCD_QUOTA_BYTES", default_value = "2GiB", value_parser = parse_size)]
    pub quota_bytes: u64,

    /// How much of etcd the pipeline may fill: a percentage of the quota (80%) or a size
    /// (1.5GiB). Above it the oldest samples expire first.
    #[arg(long = "storage-budget", env = "STORAGE_BUDGET", default_value = "80%", value_parser = parse_budget)]
    pub budget: Budget,

    /// How often the maintainer looks at etcd's size (four times as often when space is short).
    #[arg(long = "storage-check-interval", env = "STORAGE_CHECK_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub check_interval: Duration,

    /// Length of the windows whose samples are folded into one chunk per GPU. Every collector
    /// must use the same: a commit finds a sample's chunk by it.
    #[arg(long = "storage-fold-window", env = "STORAGE_FOLD_WINDOW", default_value = "1h", value_parser = parse_duration)]
    pub fold_window: Duration,

    /// How long after a window's end, by the wall clock, it is folded: late samples that come
    /// within it are folded with the rest; later ones are merged into the chunk by a later fold.
    #[arg(long = "storage-fold-after", env = "STORAGE_FOLD_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub fold_after: Duration,

    /// Whether the maintainer folds closed windows at all (off: the benchmark's baseline).
    #[arg(long = "storage-fold", env = "STORAGE_FOLD", default_value_t = true, action = clap::ArgAction::Set)]
    pub fold: bool,

    /// Whether this collector stands for election as the storage maintainer. Turning it off
    /// everywhere leaves etcd's history and size unmanaged (the benchmark's baseline).
    #[arg(long = "storage-maintainer", env = "STORAGE_MAINTAINER", default_value_t = true, action = clap::ArgAction::Set)]
    pub maintainer: bool,

    /// etcd user for the maintainer's compactions, defragmentations and alarm disarms, which
    /// etcd allows only to its root role (docs/security.md). Only those calls use it; without
    /// it the maintainer uses the collector's own login.
    #[arg(
        long = "etcd-maintenance-username",
        env = "ETCD_MAINTENANCE_USERNAME",
        requires = "maintenance_password_file"
    )]
    pub maintenance_username: Option<String>,

    /// File holding ETCD_MAINTENANCE_USERNAME's password.
    #[arg(
        long = "etcd-maintenance-password-file",
        env = "ETCD_MAINTENANCE_PASSWORD_FILE",
        requires = "maintenance_username"
    )]
    pub maintenance_password_file: Option<std::path::PathBuf>,
}

impl StorageArgs {
    /// How the maintainer connects for the calls etcd reserves to its root role.
    pub fn maintenance_etcd(
        &self,
        etcd: &telemetry::config::EtcdArgs,
    ) -> telemetry::config::EtcdArgs {
        let mut args = etcd.clone();
        if let Some(user) = &self.maintenance_username {
            args.security.username = Some(user.clone());
            args.security.password_file = self.maintenance_password_file.clone();
        }
        args
    }
}

/// `STORAGE_BUDGET`: a share of the quota, or a size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// A fraction of the quota, in (0, 1].
    Share(f64),
    /// Bytes.
    Bytes(u64),
}

impl Budget {
    /// The budget in bytes for `quota`; never above the quota.
    pub fn bytes(self, quota: u64) -> u64 {
        match self {
            Budget::Share(f) => (quota as f64 * f) as u64,
            Budget::Bytes(b) => b.min(quota),
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let b = s
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("{e} (expected a size such as 2GiB, 512MiB or 1073741824)"))?
        .as_u64();
    if b < 1024 * 1024 {
        return Err(format!("{b} bytes is below 1MiB, too small for etcd"));
    }
    Ok(b)
}

fn parse_budget(s: &str) -> Result<Budget, String> {
    match s.trim().strip_suffix('%') {
        Some(p) => {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a percentage (expected e.g. 80%)"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("{s:?}: a percentage must be in (0, 100]"));
            }
            Ok(Budget::Share(p / 100.0))
        }
        None => parse_size(s).map(Budget::Bytes),
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Inspect or requeue dead letters.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Read or change the live configuration (docs/operations.md).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Create the least-privilege etcd roles and users of the three processes and enable
    /// etcd's authentication (docs/security.md). Run it as etcd's root once auth is on.
    EtcdAuth(crate::access::SetupArgs),
}

#[derive(Subcommand, Debug, Clone)]
pub enum ConfigAction {
    /// Print every live setting as one JSON line: key, value, source, revision.
    List,
    /// Print one setting's value (JSON).
    Get { key: String },
    /// Check and store a value (JSON: `false`, `250`, `"debug"`; a bare word is taken as a
    /// string). Refused, with exit 2, when the value is not valid for the key.
    Set {
        key: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Remove the override: processes go back to their flags and defaults.
    Unset { key: String },
}

#[derive(Subcommand, Debug, Clone)]
pub enum DlqAction {
    /// Print every dead letter as one JSON line (payload omitted).
    List,
    /// Put dead letters back on the queue (all of them when no id is given).
    Requeue { ids: Vec<String> },
}

impl Config {
    /// Logging and shutdown settings, for the start-up path.
    pub fn runtime(&self) -> &telemetry::config::RuntimeArgs {
        &self.process.runtime
    }

    /// Checks settings that clap cannot, naming the setting at fault.
    pub fn validate(&mut self) -> Result<(), String> {
        if self.processing_timeout < Duration::from_secs(2) {
            return Err("MQ_PROCESSING_TIMEOUT must be at least 2s (it is the lease TTL)".into());
        }
        if self.dedupe_window < Duration::from_secs(60) {
            return Err("DEDUPE_WINDOW must be at least 60s".into());
        }
        if self.id.is_empty() {
            self.id = telemetry::cluster::process_id();
        }
        let s = &self.storage;
        if let Budget::Bytes(b) = s.budget {
            if b > s.quota_bytes {
                return Err(format!(
                    "STORAGE_BUDGET ({b} bytes) is larger than ETCD_QUOTA_BYTES ({} bytes)",
                    s.quota_bytes
                ));
            }
        }
        if s.fold_window < Duration::from_secs(60) || s.fold_window > Duration::from_secs(86_400) {
            return Err(format!(
                "STORAGE_FOLD_WINDOW must be between 1m and 24h, got {:?}",
                s.fold_window
            ));
        }
        if s.check_interval < Duration::from_millis(100) {
            return Err("STORAGE_CHECK_INTERVAL must be at least 100ms".into());
        }
        if self.id.contains('/') {
            return Err("COLLECTOR_ID must not contain '/'".into());
        }
        Ok(())
    }

    /// Defaults for tests and tools.
    pub fn for_tests(endpoints: Vec<String>, prefix: &str) -> Self {
        let mut c = Config::parse_from(["collector", "--admin-listen", ""]);
        c.process.etcd = EtcdArgs::new(endpoints, prefix);
        c.processing_timeout = Duration::from_secs(3);
        c.rescan_interval = Duration::from_secs(1);
        c.process.runtime.etcd_startup_timeout = Duration::ZERO;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_a_share_or_a_size() {
        assert_eq!(parse_budget("80%"), Ok(Budget::Share(0.8)));
        assert_eq!(parse_budget("1.5GiB"), Ok(Budget::Bytes(1_610_612_736)));
        assert_eq!(Budget::Share(0.8).bytes(1000), 800);
        assert_eq!(Budget::Bytes(5000).bytes(1000), 1000);
        for bad in ["0%", "120%", "x%", "lots", "10"] {
            assert!(parse_budget(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_size("2GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("33554432"), Ok(32 * 1024 * 1024));
    }

    #[test]
    fn a_budget_above_the_quota_is_refused() {
        let mut c = Config::parse_from([
            "collector",
            "--etcd-quota-bytes",
            "32MiB",
            "--storage-budget",
            "64MiB",
        ]);
        let err = c.validate().unwrap_err();
        assert!(err.contains("STORAGE_BUDGET"), "{err}");
    }
}
