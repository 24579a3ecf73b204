//! Time-bucket leases for resolved alerts and undelivered webhook events: everything written
//! in one bucket of time shares one lease, so they expire with a few leases.
//!
//! Only these few keys: etcd checks every key on a lease at each put with it, for any user
//! without its root role, so stored telemetry is expired by deletion instead
//! (`storage::retention`, docs/security.md).
//!
//! The lease of a bucket is recorded at `{prefix}/leases/{kind}/{bucket}` (itself under that
//! lease), created with a put-if-absent Txn, so all collectors share it instead of each
//! granting their own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

use telemetry::etcd::{Context, EtcdError};
use telemetry::keys::Keys;

pub(super) struct BucketLeases {
    client: Client,
    keys: Keys,
    kind: &'static str,
    width_secs: i64,
    ttl_secs: i64,
    cache: Mutex<HashMap<i64, i64>>,
}

impl BucketLeases {
    /// Leases for items that must live at least `keep`; buckets are `keep / 24` wide (at
    /// least a minute), so an item lives between `keep` and `keep + keep/24`.
    pub(super) fn new(client: Client, keys: Keys, kind: &'static str, keep: Duration) -> Self {
        let keep_secs = keep.as_secs().max(1) as i64;
        let width_secs = (keep_secs / 24).max(60);
        Self {
            client,
            keys,
            kind,
            width_secs,
            ttl_secs: keep_secs + width_secs,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn bucket_now(&self) -> i64 {
        chrono::Utc::now().timestamp().div_euclid(self.width_secs)
    }

    /// The lease to attach to an item written now.
    pub(super) async fn current(&self) -> Result<i64, EtcdError> {
        let bucket = self.bucket_now();
        if let Some(&id) = self.cache.lock().unwrap().get(&bucket) {
            return Ok(id);
        }
        let id = self.get_or_create(bucket).await?;
        let mut cache = self.cache.lock().unwrap();
        cache.retain(|b, _| *b >= bucket - 1);
        cache.insert(bucket, id);
        Ok(id)
    }

    /// Forgets `lease` after etcd said it no longer exists; the next [`Self::current`] reads
    /// the bucket's key again (gone with its lease) and grants a new one.
    pub(super) fn forget(&self, lease: i64) {
        self.cache.lock().unwrap().retain(|_, id| *id != lease);
    }

    async fn get_or_create(&self, bucket: i64) -> Result<i64, EtcdError> {
        let key = self.keys.bucket_lease(self.kind, bucket);
        let mut c = self.client.clone();
        if let Some(id) = parse_lease(
            c.get(key.as_str(), None)
                .await
                .ctx("read bucket lease")?
                .kvs()
                .first(),
        ) {
            return Ok(id);
        }
        let granted = c
            .lease_grant(self.ttl_secs, None)
            .await
            .ctx("grant bucket lease")?
            .id();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                granted.to_string(),
                Some(PutOptions::new().with_lease(granted)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = c.txn(txn).await.ctx("create bucket lease")?;
        if resp.succeeded() {
            return Ok(granted);
        }
        // Another collector won the race: use its lease and drop ours.
        let _ = c.lease_revoke(granted).await;
        resp.op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => parse_lease(g.kvs().first()),
                _ => None,
            })
            .ok_or_else(|| {
                EtcdError::new(
                    "create bucket lease",
                    etcd_client::Error::InvalidArgs("bucket lease vanished".into()),
                )
            })
    }
}

fn parse_lease(kv: Option<&etcd_client::KeyValue>) -> Option<i64> {
    kv.and_then(|kv| std::str::from_utf8(kv.value()).ok())
        .and_then(|s| s.parse().ok())
}
