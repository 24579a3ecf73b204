//! `collector config list|get|set|unset`: the live configuration for scripts, next to `dlq`.

use std::process::ExitCode;

use etcd_client::Client;
use serde_json::{json, Value};
use telemetry::keys::Keys;
use telemetry::settings::{self, catalog, SetError, Snapshot};

use crate::config::ConfigAction;

/// Who runs the command and how long its audit entries are kept.
#[derive(Debug, Clone)]
pub struct Audit {
    /// How the audit log names the caller.
    pub actor: String,
    /// `AUDIT_RETENTION`.
    pub retention: std::time::Duration,
}

/// Runs one action; a refused value is a bad setting (exit 2), an etcd failure an error.
pub async fn run(
    client: &Client,
    keys: &Keys,
    action: &ConfigAction,
    audit: &Audit,
) -> anyhow::Result<ExitCode> {
    match action {
        ConfigAction::List => {
            for (key, v) in effective(client, keys).await?.values {
                println!(
                    "{}",
                    json!({"key": key, "value": v.value, "source": v.source, "revision": v.revision})
                );
            }
        }
        ConfigAction::Get { key } => {
            catalog::check(key, &Value::Null)?;
            println!("{}", effective(client, keys).await?.value(key));
        }
        ConfigAction::Set { key, value } => {
            // JSON when it parses; otherwise the word itself (`config set log.level debug`).
            let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value.as_str()));
            return store(client, keys, key, &value, audit).await;
        }
        ConfigAction::Unset { key } => return store(client, keys, key, &Value::Null, audit).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn store(
    client: &Client,
    keys: &Keys,
    key: &str,
    value: &Value,
    audit: &Audit,
) -> anyhow::Result<ExitCode> {
    match settings::set(client, keys, key, value).await {
        Ok(revision) => {
            let detail = json!({"key": key, "value": value, "revision": revision});
            telemetry::audit::record(
                client,
                keys,
                audit.retention,
                &audit.actor,
                "config.set",
                detail,
            )
            .await?;
            println!("{key} = {value} (revision {revision})");
            Ok(ExitCode::SUCCESS)
        }
        Err(SetError::Invalid(e)) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        Err(SetError::Etcd(e)) => Err(e.into()),
    }
}

/// What etcd holds over the defaults (this command has no flags of its own to show).
async fn effective(client: &Client, keys: &Keys) -> anyhow::Result<Snapshot> {
    let (stored, _) = settings::list(client, keys).await?;
    Ok(settings::overlay(Snapshot::at_startup(&[]), stored))
}
