//! Reading and writing the configuration keys.

use etcd_client::{Client, GetOptions};
use serde_json::Value;

use super::catalog::{self, Invalid};
use crate::etcd::{Context, EtcdError};
use crate::keys::Keys;

/// One configuration key as etcd holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The setting's name.
    pub name: String,
    /// Its value (`null`: unset), or why it cannot be used.
    pub value: Result<Value, String>,
    /// The key's mod revision.
    pub revision: i64,
}

/// Every configuration key, and the revision they were read at.
pub async fn list(client: &Client, keys: &Keys) -> Result<(Vec<Stored>, i64), EtcdError> {
    let root = keys.config_root();
    let resp = client
        .kv_client()
        .get(root.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .ctx("read configuration")?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    Ok((parse_all(&root, resp.kvs()), revision))
}

/// [`parse`] of every key read under `root`.
pub(super) fn parse_all(root: &str, kvs: &[etcd_client::KeyValue]) -> Vec<Stored> {
    kvs.iter()
        .filter_map(|kv| parse(root, kv.key(), kv.value(), kv.mod_revision()))
        .collect()
}

/// A configuration key's name and checked value; `None` for a key that is not under `root`.
pub(super) fn parse(root: &str, key: &[u8], value: &[u8], revision: i64) -> Option<Stored> {
    let name = std::str::from_utf8(key)
        .ok()?
        .strip_prefix(root)?
        .to_string();
    let value = serde_json::from_slice::<Value>(value)
        .map_err(|e| format!("not JSON: {e}"))
        .and_then(|v| {
            catalog::check(&name, &v)
                .map(|()| v)
                .map_err(|e| e.to_string())
        });
    Some(Stored {
        name,
        value,
        revision,
    })
}

/// Why a value was not set.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// The value or key is refused.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// etcd did not take it.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// Checks and stores `value` for `name` (`null` unsets it); returns the key's new revision.
pub async fn set(client: &Client, keys: &Keys, name: &str, value: &Value) -> Result<i64, SetError> {
    catalog::check(name, value)?;
    let resp = client
        .kv_client()
        .put(keys.config(name), value.to_string(), None)
        .await
        .ctx("write configuration")?;
    Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
}
