//! Decoded chunks, shared by the reads of one process.
//!
//! Reading a page of folded data decompresses the whole chunk and hashes every returned sample
//! (its content hash is its key suffix and its id). Readers of the same window repeat that
//! work: a dashboard's panels and its refreshes read the latest windows of the same GPUs. Each
//! read still fetches the chunk's bytes from etcd at its own revision, so the cache cannot
//! serve anything stale: it maps a chunk key to the bytes it last decoded, and an entry is used
//! only when the bytes just read are those bytes (a comparison, not a revision: revisions
//! restart with a new etcd cluster, bytes do not lie).

use std::sync::Arc;

use etcd_client::KeyValue;

use super::chunk::{ChunkError, Decoded};

struct Entry {
    bytes: Vec<u8>,
    decoded: Arc<Decoded>,
}

/// A bounded cache of decoded chunks; with no memory it decodes every time.
#[derive(Clone)]
pub struct Chunks {
    cache: Option<moka::sync::Cache<Vec<u8>, Arc<Entry>>>,
}

impl Chunks {
    /// A cache holding about `max_bytes` of decoded chunks; 0 turns it off.
    pub fn new(max_bytes: u64) -> Self {
        let cache = (max_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &Vec<u8>, e: &Arc<Entry>| {
                    let w = k.len() + e.bytes.len() + e.decoded.weight();
                    u32::try_from(w).unwrap_or(u32::MAX)
                })
                .build()
        });
        Self { cache }
    }

    /// The chunk `kv` holds, decoded.
    pub fn decoded(&self, kv: &KeyValue) -> Result<Arc<Decoded>, ChunkError> {
        self.decode(kv.key(), kv.value())
    }

    /// The chunk `bytes` read at `key`, decoded.
    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<Arc<Decoded>, ChunkError> {
        let Some(cache) = &self.cache else {
            return Decoded::new(bytes).map(Arc::new);
        };
        if let Some(e) = cache.get(key) {
            if e.bytes == bytes {
                metrics::counter!("chunk_cache_hits").increment(1);
                return Ok(e.decoded.clone());
            }
        }
        metrics::counter!("chunk_cache_misses").increment(1);
        let decoded = Arc::new(Decoded::new(bytes)?);
        let entry = Entry {
            bytes: bytes.to_vec(),
            decoded: decoded.clone(),
        };
        cache.insert(key.to_vec(), Arc::new(entry));
        Ok(decoded)
    }
}

impl std::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunks")
            .field("enabled", &self.cache.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chunk::fold;
    use telemetry_proto::TelemetryRecord;

    fn chunk(values: &[f64]) -> Vec<u8> {
        let records: Vec<TelemetryRecord> = values
            .iter()
            .enumerate()
            .map(|(i, &value)| TelemetryRecord {
                hostname: "h".into(),
                gpu_id: "0".into(),
                uuid: "GPU-1".into(),
                metric: "DCGM_FI_DEV_GPU_TEMP".into(),
                timestamp_unix_nano: i as i64 * 10_000_000_000,
                value,
                ..Default::default()
            })
            .collect();
        fold(&records).unwrap()
    }

    #[test]
    fn a_decoded_chunk_is_shared_only_for_the_same_bytes() {
        let cache = Chunks::new(1 << 20);
        let (a, b) = (chunk(&[1.0, 2.0]), chunk(&[1.0, 3.0]));
        let first = cache.decode(b"k", &a).unwrap();
        let again = cache.decode(b"k", &a).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same bytes are decoded once"
        );
        // The key was refolded (a late sample merged): the cached copy must not answer.
        let refolded = cache.decode(b"k", &b).unwrap();
        assert_eq!(refolded.value(1), 3.0);
        assert!(!Arc::ptr_eq(&first, &refolded));
        // Hashes computed through one reader are there for the next.
        assert_eq!(first.identified(0), again.identified(0));
    }

    #[test]
    fn without_memory_every_read_decodes() {
        let cache = Chunks::new(0);
        let a = chunk(&[1.0]);
        let (x, y) = (
            cache.decode(b"k", &a).unwrap(),
            cache.decode(b"k", &a).unwrap(),
        );
        assert!(!Arc::ptr_eq(&x, &y));
        assert!(cache.decode(b"k", b"not a chunk").is_err());
    }
}
