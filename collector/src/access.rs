//! Least-privilege etcd roles for the three processes, and `collector etcd-auth`, which
//! creates them with their users and turns etcd's authentication on (docs/security.md).
//!
//! Each role is limited to the pipeline's prefix. etcd checks a range read against a single
//! grant, so a role that reads wide ranges (the collector's and gateway's scans) reads the
//! whole prefix; writes are granted area by area.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use etcd_client::{Client, Permission, RoleRevokePermissionOptions, UserAddOptions};
use rand::distr::{Alphanumeric, SampleString as _};
use telemetry::cluster::Role;
use telemetry::keys::Keys;

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Range reads, watches and compares.
    Read,
    /// Reads, puts, deletes, and keeping alive leases attached to the keys.
    ReadWrite,
}

/// One permission: every key starting with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The key prefix.
    pub prefix: String,
    /// What it allows.
    pub perm: Perm,
}

fn rw(prefix: String) -> Grant {
    Grant {
        prefix,
        perm: Perm::ReadWrite,
    }
}

fn r(prefix: String) -> Grant {
    Grant {
        prefix,
        perm: Perm::Read,
    }
}

/// The grants of one process's role.
pub fn grants(role: Role, keys: &Keys) -> Vec<Grant> {
    let member = |role: Role| keys.area(&format!("cluster/{}", role.as_str()));
    match role {
        // Publishes into the queue and reads its depth; agrees on the partition count;
        // follows the live configuration; checks push tokens.
        Role::Streamer => vec![
            rw(keys.queue_root()),
            rw(keys.area("queue/meta")),
            rw(member(Role::Streamer)),
            r(keys.config_root()),
            r(keys.tokens_root()),
            // Whether storage is full: the streamer pauses rather than fill etcd.
            r(keys.storage_status()),
        ],
        // Claims, commits, dead-letters, stores, folds, expires, evaluates rules, elects its
        // maintainer; reads everything, the configuration included, but never writes it.
        Role::Collector => {
            let mut g = vec![r(keys.all())];
            for area in [
                "queue",
                "collectors",
                "trace",
                "leases",
                "telemetry",
                "storage",
                "alerts",
                "audit",
            ] {
                g.push(rw(keys.area(area)));
            }
            g.push(rw(member(Role::Collector)));
            g
        }
        // Reads and watches everything it serves; writes the configuration, API tokens, the
        // audit log and its own membership.
        Role::Gateway => vec![
            r(keys.all()),
            rw(keys.config_root()),
            rw(keys.tokens_root()),
            rw(keys.audit_root()),
            rw(member(Role::Gateway)),
        ],
    }
}

/// How `collector etcd-auth` sets etcd up.
#[derive(clap::Args, Debug, Clone)]
pub struct SetupArgs {
    /// Directory of the password files: `root.password` and `<user>.password`, created
    /// (mode 0600) with a random password when missing, and used as they are otherwise.
    #[arg(long, default_value = "secrets")]
    pub secrets_dir: PathBuf,

    /// Users and roles are named `<names>-streamer`, `<names>-collector`, `<names>-gateway`.
    #[arg(long, default_value = "telemetry")]
    pub names: String,

    /// Users without passwords: each process logs in with a client certificate whose common
    /// name is its user's name (ETCD_CERT_FILE), and root with a certificate for `root`.
    #[arg(long)]
    pub cert_users: bool,

    /// Create the roles and users but leave authentication off.
    #[arg(long)]
    pub no_enable: bool,

    /// Accepted for scripts written for the previous release, which gave the collector etcd's
    /// root role unless this was set: the collector now always gets its prefix role only.
    #[arg(long, hide = true)]
    pub strict_collector: bool,
}

/// Creates or updates the roles and users, then enables authentication. Returns what it did,
/// one line each. Running it again brings the roles back to exactly [`grants`].
pub async fn setup(client: &Client, keys: &Keys, args: &SetupArgs) -> anyhow::Result<Vec<String>> {
    let mut c = client.clone();
    let mut done = Vec::new();
    if !args.cert_users {
        std::fs::create_dir_all(&args.secrets_dir)
            .with_context(|| format!("cannot create {}", args.secrets_dir.display()))?;
    }
    let roles = c
        .role_list()
        .await
        .context("list etcd roles")?
        .roles()
        .to_vec();
    let users = c
        .user_list()
        .await
        .context("list etcd users")?
        .users()
        .to_vec();
    if !roles.iter().any(|r| r == "root") {
        c.role_add("root").await.context("add role root")?;
    }
    add_user(
        &mut c,
        args,
        "root",
        users.iter().any(|u| u == "root"),
        &mut done,
    )
    .await?;
    c.user_grant_role("root", "root")
        .await
        .context("grant root to root")?;

    for role in [Role::Streamer, Role::Collector, Role::Gateway] {
        let name = format!("{}-{}", args.names, role.as_str());
        if roles.contains(&name) {
            for p in c
                .role_get(name.as_str())
                .await
                .context("read a role")?
                .permissions()
            {
                let opts = RoleRevokePermissionOptions::new().with_range_end(p.range_end());
                c.role_revoke_permission(name.as_str(), p.key(), Some(opts))
                    .await
                    .context("revoke an old grant")?;
            }
        } else {
            c.role_add(name.as_str()).await.context("add a role")?;
        }
        for g in grants(role, keys) {
            let p = match g.perm {
                Perm::Read => Permission::read(g.prefix.as_str()),
                Perm::ReadWrite => Permission::read_write(g.prefix.as_str()),
            };
            c.role_grant_permission(name.as_str(), p.with_prefix())
                .await
                .with_context(|| format!("grant {} to {name}", g.prefix))?;
            let perm = if g.perm == Perm::Read {
                "read"
            } else {
                "readwrite"
            };
            done.push(format!("role {name}: {perm} {}*", g.prefix));
        }
        add_user(&mut c, args, &name, users.contains(&name), &mut done).await?;
        c.user_grant_role(name.as_str(), name.as_str())
            .await
            .context("grant a role")?;
        if role == Role::Collector {
            // The previous release gave the collector root (its retention leases needed it):
            // take it back, so that a re-run leaves least privilege.
            if c.user_revoke_role(name.as_str(), "root").await.is_ok() {
                done.push(format!("user {name}: etcd's root role taken back"));
            }
        }
    }
    // etcd lets only its root role compact, defragment and disarm alarms: a user of its own,
    // which only the maintainer's maintenance calls log in as (ETCD_MAINTENANCE_USERNAME).
    let maintenance = format!("{}-maintenance", args.names);
    add_user(
        &mut c,
        args,
        &maintenance,
        users.contains(&maintenance),
        &mut done,
    )
    .await?;
    c.user_grant_role(maintenance.as_str(), "root")
        .await
        .context("grant root for maintenance")?;
    if !args.no_enable {
        c.auth_enable().await.context("enable authentication")?;
        done.push("authentication enabled".into());
    }
    Ok(done)
}

async fn add_user(
    c: &mut Client,
    args: &SetupArgs,
    name: &str,
    exists: bool,
    done: &mut Vec<String>,
) -> anyhow::Result<()> {
    if args.cert_users {
        if !exists {
            let opts = UserAddOptions::new().with_no_pwd();
            c.user_add(name, "", Some(opts))
                .await
                .context("add a user")?;
        }
        done.push(format!(
            "user {name}: logs in with a certificate for CN={name}"
        ));
        return Ok(());
    }
    let file = args.secrets_dir.join(format!("{name}.password"));
    let password = password_in(&file)?;
    if exists {
        c.user_change_password(name, password.as_str())
            .await
            .context("set a password")?;
    } else {
        c.user_add(name, password.as_str(), None)
            .await
            .context("add a user")?;
    }
    done.push(format!("user {name}: password in {}", file.display()));
    Ok(())
}

/// The password kept in `file`, written first (mode 0600) with 32 random letters and digits.
fn password_in(file: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(file) {
        Ok(s) if !s.trim_end().is_empty() => return Ok(s.trim_end().to_string()),
        Ok(_) => anyhow::bail!("{} is empty", file.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
    let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create {}", file.display()))?;
    writeln!(f, "{password}").with_context(|| format!("cannot write {}", file.display()))?;
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grant_stays_under_the_prefix_and_only_the_gateway_writes_the_configuration() {
        let keys = Keys::new("/p");
        for role in [Role::Streamer, Role::Collector, Role::Gateway] {
            let g = grants(role, &keys);
            assert!(g.iter().all(|g| g.prefix.starts_with("/p/")), "{g:?}");
            let writes_config = g
                .iter()
                .any(|g| g.perm == Perm::ReadWrite && keys.config_root().starts_with(&g.prefix));
            assert_eq!(writes_config, role == Role::Gateway, "{role:?}");
        }
        let streamer = grants(Role::Streamer, &keys);
        assert!(!streamer
            .iter()
            .any(|g| keys.data_root().starts_with(&g.prefix)));
        let reads = |key: String| streamer.iter().any(|g| key.starts_with(&g.prefix));
        assert!(reads(keys.storage_status()) && reads(keys.config("stream.rate")));
    }
}
