//! `gateway token create|list|revoke`: API tokens managed from the command line, each change
//! written to the audit log.

use std::process::ExitCode;

use serde_json::json;
use telemetry::auth::{self, TokenRecord};
use telemetry::keys::Keys;

use crate::config::{Config, TokenAction};

/// Runs one token command against the etcd of `cfg`.
pub async fn run(cfg: &Config, action: &TokenAction) -> anyhow::Result<ExitCode> {
    let client = telemetry::etcd::connect(&cfg.etcd).await?;
    let keys = Keys::new(&cfg.etcd.prefix);
    let actor = telemetry::audit::cli_actor(cfg.etcd.security.username.as_deref());
    let retention = cfg.runtime.audit_retention;
    match action {
        TokenAction::Create { role, name } => {
            let (t, secret) = auth::create(&client, &keys, *role, name).await?;
            let detail = json!({"id": t.id, "name": t.name, "role": t.role});
            telemetry::audit::record(&client, &keys, retention, &actor, "token.create", detail)
                .await?;
            eprintln!(
                "created token {} ({}); its secret is shown only now:",
                t.id,
                t.role.as_str()
            );
            println!("{secret}");
        }
        TokenAction::List => {
            for t in auth::list(&client, &keys).await? {
                println!("{}", listed(&t));
            }
        }
        TokenAction::Revoke { id } => match auth::revoke(&client, &keys, id).await? {
            Some(t) => {
                let detail = json!({"id": t.id, "name": t.name, "role": t.role});
                telemetry::audit::record(&client, &keys, retention, &actor, "token.revoke", detail)
                    .await?;
                println!("revoked token {} ({})", t.id, t.role.as_str());
            }
            None => {
                eprintln!("error: no token with id {id}");
                return Ok(ExitCode::from(1));
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// A token as `token list` prints it: everything but its hash.
fn listed(t: &TokenRecord) -> serde_json::Value {
    json!({"id": t.id, "name": t.name, "role": t.role, "created_unix_ms": t.created_unix_ms})
}
