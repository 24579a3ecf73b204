//! Following a key range in etcd: the one watch loop of the pipeline.
//!
//! A watch ends for many reasons (a broken stream, a leader change, etcd cancelling it because
//! its start revision was compacted). [`follow`] restarts it, resuming right after the last
//! event it handled. When etcd has compacted past that revision, history is gone: the
//! [`Follower`] is told (`compacted`), re-reads what it needs, and says where to watch from
//! (the read's revision + 1). Compaction is recognised by the response's compact revision, not
//! by an error's text.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, WatchOptions, WatchResponse};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::shutdown::or_cancel;

/// Whether to keep following after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep watching.
    Continue,
    /// Stop: [`follow`] returns.
    Stop,
}

/// One user of a watch: what to do before each (re)start, and with each response.
pub trait Follower: Send {
    /// Called before every start of the watch. `resume` is the revision right after the last
    /// event handled (`None` before the first start); `compacted` says etcd compacted past it,
    /// so whatever happened since is lost to the watch and must be read instead. Returns the
    /// revision to watch from, or `None` for "from now".
    fn resume(
        &mut self,
        client: &Client,
        resume: Option<i64>,
        compacted: bool,
    ) -> impl Future<Output = Result<Option<i64>, etcd_client::Error>> + Send;

    /// Handles one response: its events, or the notice that the watch was created.
    fn handle(&mut self, resp: &WatchResponse) -> Flow;

    /// Called when a watch ends, before it is restarted.
    fn ended(&mut self) {}
}

/// Follows `key` (with `options`, e.g. a prefix) until `stop` fires or the follower stops.
pub async fn follow<F: Follower>(
    client: Client,
    key: String,
    options: WatchOptions,
    mut follower: F,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut next: Option<i64> = None;
    let mut compacted = false;
    while !stop.is_cancelled() {
        let start = match or_cancel(&stop, follower.resume(&client, next, compacted)).await {
            None => return,
            Some(Ok(start)) => start,
            Some(Err(e)) => {
                tracing::debug!(%key, error = %e, "cannot resume the watch yet");
                or_cancel(&stop, tokio::time::sleep(backoff.next_delay())).await;
                continue;
            }
        };
        compacted = false;
        let mut opts = options.clone();
        if let Some(rev) = start {
            opts = opts.with_start_revision(rev);
            next = Some(rev);
        }
        let mut watcher = client.watch_client();
        let mut stream = match or_cancel(&stop, watcher.watch(key.as_str(), Some(opts))).await {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                tracing::debug!(%key, error = %e, "watch failed to start");
                if crate::etcd::is_auth_error(&e) {
                    crate::etcd::renew_login(&client).await;
                }
                or_cancel(&stop, tokio::time::sleep(backoff.next_delay())).await;
                continue;
            }
        };
        backoff.reset();
        loop {
            let Some(msg) = or_cancel(&stop, stream.message()).await else {
                return;
            };
            match msg {
                Ok(Some(resp)) if resp.canceled() => {
                    compacted = resp.compact_revision() > 0;
                    tracing::info!(
                        %key,
                        compact_revision = resp.compact_revision(),
                        reason = resp.cancel_reason(),
                        "watch cancelled by etcd; resuming"
                    );
                    if !compacted {
                        // Not a compaction: etcd refused the watch's token (expired, or etcd
                        // restarted and forgot it) or its permission. A new token cures the
                        // first; the pause keeps the second from spinning.
                        crate::etcd::renew_login(&client).await;
                        or_cancel(&stop, tokio::time::sleep(backoff.next_delay())).await;
                    }
                    break;
                }
                Ok(Some(resp)) => {
                    let last = resp
                        .events()
                        .iter()
                        .filter_map(|e| e.kv())
                        .map(|kv| kv.mod_revision())
                        .max();
                    if let Some(rev) = last {
                        next = Some(next.map_or(rev + 1, |n| n.max(rev + 1)));
                    }
                    if follower.handle(&resp) == Flow::Stop {
                        return;
                    }
                }
                Err(e) if crate::etcd::is_auth_error(&e) => {
                    crate::etcd::renew_login(&client).await;
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        follower.ended();
    }
}
