//! Which revision to compact to, so that `STORAGE_HISTORY` of history stays.
//!
//! etcd compacts by revision, not by time, so the maintainer notes the current revision every
//! round and compacts to the newest one noted at least `STORAGE_HISTORY` ago.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Revisions seen, oldest first.
#[derive(Debug)]
pub(super) struct History {
    keep: Duration,
    seen: VecDeque<(Instant, i64)>,
}

impl History {
    pub(super) fn new(keep: Duration) -> Self {
        Self {
            keep,
            seen: VecDeque::new(),
        }
    }

    /// Notes that `revision` was current at `now`.
    pub(super) fn note(&mut self, now: Instant, revision: i64) {
        if self.seen.back().is_none_or(|&(_, r)| r < revision) {
            self.seen.push_back((now, revision));
        }
    }

    /// The newest revision noted at least `keep` before `now`, forgetting older ones.
    pub(super) fn due(&mut self, now: Instant) -> Option<i64> {
        let mut due = None;
        while let Some(&(at, rev)) = self.seen.front() {
            if now.duration_since(at) < self.keep {
                break;
            }
            due = Some(rev);
            self.seen.pop_front();
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keeps_the_configured_history() {
        let mut h = History::new(Duration::from_secs(600));
        let t0 = Instant::now();
        h.note(t0, 100);
        h.note(t0 + Duration::from_secs(300), 200);
        h.note(t0 + Duration::from_secs(700), 300);
        assert_eq!(h.due(t0 + Duration::from_secs(599)), None);
        assert_eq!(h.due(t0 + Duration::from_secs(600)), Some(100));
        assert_eq!(h.due(t0 + Duration::from_secs(950)), Some(200));
        assert_eq!(h.due(t0 + Duration::from_secs(1299)), None);
        assert_eq!(h.due(t0 + Duration::from_secs(1300)), Some(300));
    }
}
