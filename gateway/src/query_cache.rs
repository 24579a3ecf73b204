//! Serialized telemetry pages, reused while the data under them is unchanged.
//!
//! Dashboards poll the same queries over and over, and each one costs an etcd range read plus
//! decoding and serializing up to `limit` records; most of them return what the last one did.
//! A page is cached with the etcd revision it was read at and the GPUs it covers. The
//! gateway's single watch on stored telemetry ([`crate::live`]) reports every put and delete
//! to [`QueryCache::saw_write`]; a page is served from the cache only while none of its GPUs
//! has been written after the page's revision, the watch is connected, and the page is younger
//! than `QUERY_CACHE_TTL` (the bound on staleness should the watch fall behind). A hit is
//! therefore what a serializable read a few milliseconds earlier would have returned.
//!
//! Pages that follow a cursor are pinned to an older revision and never cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;

/// One cached page.
struct Page {
    revision: i64,
    /// The GPUs' key prefixes the page was read from, in the order the query resolved them.
    gpus: Vec<String>,
    body: Bytes,
}

/// Disabled (`QUERY_CACHE_MB=0`) it caches nothing and every lookup misses.
#[derive(Clone)]
pub struct QueryCache {
    pages: Option<moka::sync::Cache<String, Arc<Page>>>,
    /// Latest revision the watch has seen written under each GPU's key prefix.
    writes: Arc<Mutex<HashMap<String, i64>>>,
    /// Whether the watch is connected and has missed nothing since it (re)started.
    live: Arc<AtomicBool>,
}

impl QueryCache {
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        let pages = (max_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &String, p: &Arc<Page>| {
                    u32::try_from(k.len() + p.body.len()).unwrap_or(u32::MAX)
                })
                .time_to_live(ttl)
                .build()
        });
        Self {
            pages,
            writes: Arc::default(),
            live: Arc::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.pages.is_some()
    }

    /// The body cached for `key`, if it is still what the query would read now.
    pub fn get(&self, key: &str, gpus: &[String]) -> Option<Bytes> {
        let pages = self.pages.as_ref()?;
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let page = pages.get(key)?;
        let writes = self.writes.lock().unwrap();
        let fresh = page.gpus == gpus
            && gpus
                .iter()
                .all(|g| writes.get(g).is_none_or(|&w| w <= page.revision));
        drop(writes);
        if fresh {
            metrics::counter!("query_cache_hits").increment(1);
            Some(page.body.clone())
        } else {
            pages.invalidate(key);
            None
        }
    }

    pub fn put(&self, key: String, revision: i64, gpus: Vec<String>, body: Bytes) {
        let Some(pages) = &self.pages else { return };
        metrics::counter!("query_cache_misses").increment(1);
        if self.live.load(Ordering::Acquire) {
            pages.insert(
                key,
                Arc::new(Page {
                    revision,
                    gpus,
                    body,
                }),
            );
        }
    }

    /// The watch saw a put or delete at `revision` under the GPU prefix `gpu`.
    pub fn saw_write(&self, gpu: &str, revision: i64) {
        if self.pages.is_none() {
            return;
        }
        let mut writes = self.writes.lock().unwrap();
        match writes.get_mut(gpu) {
            Some(w) => *w = (*w).max(revision),
            None => {
                writes.insert(gpu.to_string(), revision);
            }
        }
    }

    /// The watch is connected from a revision with nothing missed before it.
    pub fn watch_live(&self) {
        self.live.store(true, Ordering::Release);
    }

    /// The watch is down, or missed events: serve nothing cached until it is live again.
    pub fn watch_lost(&self, missed_events: bool) {
        self.live.store(false, Ordering::Release);
        if missed_events {
            if let Some(pages) = &self.pages {
                pages.invalidate_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> QueryCache {
        let c = QueryCache::new(1 << 20, Duration::from_secs(3600));
        c.watch_live();
        c
    }

    #[test]
    fn a_write_after_the_page_invalidates_it() {
        let c = cache();
        let gpus = vec!["h/0/".to_string(), "h2/0/".to_string()];
        c.put("q".into(), 10, gpus.clone(), Bytes::from_static(b"page"));
        assert_eq!(c.get("q", &gpus).as_deref(), Some(&b"page"[..]));
        c.saw_write("h/0/", 10); // the page already holds it
        assert!(c.get("q", &gpus).is_some());
        c.saw_write("h/1/", 11); // another GPU
        assert!(c.get("q", &gpus).is_some());
        c.saw_write("h2/0/", 11);
        assert!(c.get("q", &gpus).is_none());
    }

    #[test]
    fn a_write_seen_before_the_insert_still_counts() {
        // The read happened at revision 10; the watch delivered revision 11 before the insert.
        let c = cache();
        let gpus = vec!["h/0/".to_string()];
        c.saw_write("h/0/", 11);
        c.put("q".into(), 10, gpus.clone(), Bytes::from_static(b"old"));
        assert!(c.get("q", &gpus).is_none());
    }

    #[test]
    fn nothing_is_served_while_the_watch_is_down() {
        let c = cache();
        let gpus = vec!["h/0/".to_string()];
        c.put("q".into(), 10, gpus.clone(), Bytes::from_static(b"page"));
        c.watch_lost(false);
        assert!(c.get("q", &gpus).is_none());
        c.watch_live();
        assert!(c.get("q", &gpus).is_some());
        c.watch_lost(true);
        c.watch_live();
        assert!(c.get("q", &gpus).is_none(), "missed events drop every page");
    }

    #[test]
    fn a_different_resolution_misses() {
        // A GPU index that now resolves to one more host must not reuse the old page.
        let c = cache();
        c.put(
            "0".into(),
            10,
            vec!["a/0/".into()],
            Bytes::from_static(b"p"),
        );
        assert!(c.get("0", &["a/0/".into(), "b/0/".into()]).is_none());
    }

    #[test]
    fn disabled_caches_nothing() {
        let c = QueryCache::new(0, Duration::from_secs(1));
        c.watch_live();
        c.put("q".into(), 1, vec![], Bytes::from_static(b"p"));
        assert!(!c.enabled());
        assert!(c.get("q", &[]).is_none());
    }
}
