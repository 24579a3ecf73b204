//! API tokens: a random secret, shown once when created, and a record in etcd that holds only
//! the secret's SHA-256. A plain hash is enough (no salt, no slow KDF): the secret is 256 bits
//! of randomness, not a password, so there is nothing to guess from its hash.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions, WatchResponse,
};
use rand::distr::{Alphanumeric, SampleString as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::etcd::{Context, EtcdError};
use crate::keys::Keys;
use crate::watch::{Flow, Follower};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The telemetry API and the WebSocket.
    Read,
    /// Pushing records into a streamer.
    Ingest,
    /// Everything: also changing the configuration and requeueing dead letters.
    Admin,
}

impl Role {
    /// Whether a token of this role may do what needs `need`.
    pub fn allows(self, need: Role) -> bool {
        self == Role::Admin || self == need
    }

    /// Its name in records and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Ingest => "ingest",
            Role::Admin => "admin",
        }
    }
}

/// A token as stored: everything but its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    /// Its id (a ULID): what `token revoke` takes and the audit log names.
    pub id: String,
    /// A label for people.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was created (Unix milliseconds).
    pub created_unix_ms: i64,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
}

/// Hex SHA-256 of a secret.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates a token; returns its record and its secret, which is not stored anywhere.
pub async fn create(
    client: &Client,
    keys: &Keys,
    role: Role,
    name: &str,
) -> Result<(TokenRecord, String), EtcdError> {
    let secret = format!("tpk_{}", Alphanumeric.sample_string(&mut rand::rng(), 43));
    let record = TokenRecord {
        id: ulid::Ulid::new().to_string(),
        name: name.to_string(),
        role,
        created_unix_ms: crate::record::now_millis(),
        sha256: hash(&secret),
    };
    let key = keys.token(&record.id);
    let json = serde_json::to_vec(&record).unwrap_or_default();
    let txn = Txn::new()
        .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.as_str(), json, None)]);
    client.kv_client().txn(txn).await.ctx("create a token")?;
    Ok((record, secret))
}

/// Every token, oldest first.
pub async fn list(client: &Client, keys: &Keys) -> Result<Vec<TokenRecord>, EtcdError> {
    let resp = client
        .kv_client()
        .get(keys.tokens_root(), Some(GetOptions::new().with_prefix()))
        .await
        .ctx("list tokens")?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect())
}

/// Revokes a token; returns its record, or `None` when there is no such token.
pub async fn revoke(
    client: &Client,
    keys: &Keys,
    id: &str,
) -> Result<Option<TokenRecord>, EtcdError> {
    let resp = client
        .kv_client()
        .delete(
            keys.token(id),
            Some(etcd_client::DeleteOptions::new().with_prev_key()),
        )
        .await
        .ctx("revoke a token")?;
    Ok(resp
        .prev_kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

/// The tokens in force, by the hash of their secret, kept current by a watch: a revoked token
/// stops working as soon as its delete reaches each process.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: Arc<RwLock<HashMap<String, Arc<TokenRecord>>>>,
}

impl Tokens {
    /// Starts following the tokens under `keys` until `stop`.
    pub fn follow(client: Client, keys: &Keys, stop: CancellationToken) -> Self {
        let tokens = Self::default();
        let follower = Follow {
            tokens: tokens.clone(),
            root: keys.tokens_root(),
        };
        let root = keys.tokens_root();
        tokio::spawn(crate::watch::follow(
            client,
            root,
            WatchOptions::new().with_prefix(),
            follower,
            stop,
        ));
        tokens
    }

    /// The token whose secret this is.
    pub fn check(&self, secret: &str) -> Option<Arc<TokenRecord>> {
        self.by_hash.read().unwrap().get(&hash(secret)).cloned()
    }

    fn replace(&self, all: impl IntoIterator<Item = TokenRecord>) {
        let map = all
            .into_iter()
            .map(|t| (t.sha256.clone(), Arc::new(t)))
            .collect();
        *self.by_hash.write().unwrap() = map;
    }
}

struct Follow {
    tokens: Tokens,
    root: String,
}

impl Follower for Follow {
    /// Every (re)start reads the whole set, then watches from the read's revision + 1: a
    /// revocation missed while the watch was down is never missed for good.
    async fn resume(
        &mut self,
        client: &Client,
        _: Option<i64>,
        _: bool,
    ) -> Result<Option<i64>, etcd_client::Error> {
        let resp = client
            .kv_client()
            .get(self.root.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let all = resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok());
        self.tokens.replace(all);
        Ok(resp.header().map(|h| h.revision() + 1))
    }

    fn handle(&mut self, resp: &WatchResponse) -> Flow {
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let mut map = self.tokens.by_hash.write().unwrap();
            match ev.event_type() {
                EventType::Put => {
                    if let Ok(t) = serde_json::from_slice::<TokenRecord>(kv.value()) {
                        map.insert(t.sha256.clone(), Arc::new(t));
                    }
                }
                EventType::Delete => {
                    let id = String::from_utf8_lossy(kv.key());
                    let id = id.strip_prefix(self.root.as_str()).unwrap_or_default();
                    map.retain(|_, t| t.id != id);
                }
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_may_do_everything_and_the_others_only_their_own() {
        assert!(Role::Admin.allows(Role::Read) && Role::Admin.allows(Role::Ingest));
        assert!(Role::Read.allows(Role::Read) && !Role::Read.allows(Role::Admin));
        assert!(!Role::Ingest.allows(Role::Read) && !Role::Read.allows(Role::Ingest));
    }

    #[test]
    fn a_token_is_found_by_its_secret_only() {
        let t = Tokens::default();
        let rec = TokenRecord {
            id: "A".into(),
            name: "n".into(),
            role: Role::Read,
            created_unix_ms: 0,
            sha256: hash("s3cret"),
        };
        t.replace([rec]);
        assert_eq!(t.check("s3cret").map(|r| r.id.clone()), Some("A".into()));
        assert!(t.check("s3cret ").is_none() && t.check("").is_none());
    }
}
