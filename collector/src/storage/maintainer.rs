//! One maintainer's rounds: look at every member, compact, expire, defragment, disarm, and
//! publish what it saw (the thresholds are `telemetry::storage`'s).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{CompactionOptions, PutOptions, Txn, TxnOp};
use telemetry::etcd::{Context, EtcdError};
use telemetry::storage::{self as marks, StorageStatus};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fold::{Folded, Folder};
use super::history::History;
use super::members::{self, MemberStatus, Members};
use super::{expire, policy, retention, Leadership, Windows};
use crate::Shared;

/// The same member is defragmented at most this often, unless its file nears the quota.
const DEFRAG_EVERY: Duration = Duration::from_secs(60);
/// Without pressure, history is compacted at most this often.
const COMPACT_EVERY: Duration = Duration::from_secs(10);
/// One round folds for at most this long, so that it still watches the space.
const FOLD_FOR: Duration = Duration::from_secs(5);

pub(super) struct Maintainer {
    shared: Arc<Shared>,
    leader: Leadership,
    members: Members,
    history: History,
    compacted: i64,
    last_compaction: Option<Instant>,
    last_defrag: HashMap<u64, Instant>,
    /// Each GPU's newest raw revision at the last fold pass (see `fold::Folder::quiet`).
    quiet: HashMap<String, i64>,
    last_sweep: Option<Instant>,
    status: StorageStatus,
}

/// Why a round ended early.
enum Stop {
    /// Another collector leads now (or our lease is gone).
    Deposed,
    /// etcd failed; the next round tries again.
    Etcd(EtcdError),
}

impl From<EtcdError> for Stop {
    fn from(e: EtcdError) -> Self {
        Stop::Etcd(e)
    }
}

impl Maintainer {
    pub(super) fn new(shared: Arc<Shared>, leader: Leadership) -> Self {
        let status = StorageStatus {
            maintainer: shared.cfg.id.clone(),
            ..Default::default()
        };
        Self {
            members: Members::new(
                shared
                    .cfg
                    .storage
                    .maintenance_etcd(&shared.cfg.process.etcd),
            ),
            history: History::new(shared.cfg.storage.history),
            compacted: 0,
            last_compaction: None,
            last_defrag: HashMap::new(),
            quiet: HashMap::new(),
            last_sweep: None,
            status,
            shared,
            leader,
        }
    }

    /// Rounds until `leading` fires or another collector leads.
    pub(super) async fn run(mut self, leading: CancellationToken) {
        let interval = self.shared.cfg.storage.check_interval;
        loop {
            let pressed = tokio::select! {
                r = self.round() => r,
                _ = leading.cancelled() => return,
            };
            let wait = match pressed {
                Ok(true) => interval / 4,
                Ok(false) => interval,
                Err(Stop::Deposed) => return,
                Err(Stop::Etcd(e)) if telemetry::etcd::is_auth_error(&e.source) => {
                    ::metrics::counter!("storage_maintenance_refused").increment(1);
                    tracing::error!(
                        error = %e,
                        "etcd refused storage maintenance: compaction, defragmentation and \
                         disarming alarms need etcd's root role; set ETCD_MAINTENANCE_USERNAME \
                         and ETCD_MAINTENANCE_PASSWORD_FILE (docs/security.md)"
                    );
                    interval
                }
                Err(Stop::Etcd(e)) => {
                    tracing::warn!(error = %e, "storage maintenance round failed; retrying");
                    interval
                }
            };
            if telemetry::shutdown::or_cancel(&leading, tokio::time::sleep(wait))
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// Without an election (see [`Leadership::Emergency`]): rounds while the alarm lasts.
    pub(super) async fn recover(mut self, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            match members::alarmed(&self.shared.client).await {
                Ok(a) if a.is_empty() => return,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read etcd's alarms"),
            }
            if let Err(Stop::Etcd(e)) = self.round().await {
                tracing::warn!(error = %e, "storage recovery round failed; retrying");
            }
            let wait = self.shared.cfg.storage.check_interval;
            telemetry::shutdown::or_cancel(stop, tokio::time::sleep(wait)).await;
        }
    }

    /// One round; `Ok(true)` when space is short (the next round comes sooner).
    async fn round(&mut self) -> Result<bool, Stop> {
        let mut seen = self.look().await?;
        let (budget, quota) = (self.status.budget_bytes, self.status.quota_bytes);
        let alarmed = members::alarmed(&self.shared.client).await?;
        let short = |s: &Sizes, f: f64| s.in_use as f64 >= f * budget as f64;
        let now = Instant::now();
        let folding = alarmed.is_empty() && self.shared.cfg.storage.fold;
        let mut folded = None;
        if !alarmed.is_empty() || short(&seen, marks::COMPACT_NOW) {
            self.compact(seen.revision, "space is short").await?;
            seen = self.look().await?;
            let mut expire_at = marks::EXPIRE_AT;
            if folding && short(&seen, expire_at) {
                // Folding frees most of a raw sample's space, and loses nothing: first fold what
                // is closed, and expire only if that made no progress, or the store is still
                // over the budget itself (writers are held back from there on).
                let done = self.fold().await?;
                if done.chunks > 0 {
                    let now_rev = self.look().await?.revision;
                    self.compact(now_rev, "after folding").await?;
                    seen = self.look().await?;
                    expire_at = 1.0;
                }
                folded = Some(done);
            }
            if short(&seen, expire_at) || !alarmed.is_empty() && short(&seen, marks::EXPIRE_TO) {
                self.expire(&seen).await?;
                let now_rev = self.look().await?.revision;
                self.compact(now_rev, "after expiry").await?;
                seen = self.look().await?;
            }
        } else if let Some(rev) = self.history.due(now) {
            if self
                .last_compaction
                .is_none_or(|t| t.elapsed() >= COMPACT_EVERY)
            {
                self.compact(rev, "STORAGE_HISTORY").await?;
            }
        }
        self.sweep().await?;
        if folding && folded.is_none() {
            folded = Some(self.fold().await?);
        }
        // More is left to fold, and folding makes progress: come back sooner.
        let behind = folded.is_some_and(|d| d.deferred > 0 && d.chunks > 0);
        self.defragment(&seen, &alarmed).await?;
        if !alarmed.is_empty() {
            seen = self.look().await?;
            self.disarm(&seen, &alarmed).await?;
        }
        self.publish(&seen).await?;
        Ok(short(&seen, marks::COMPACT_NOW)
            || behind
            || !alarmed.is_empty()
            || seen.file as f64 >= marks::FILE_LIMIT * quota as f64)
    }

    /// Reads every member, notes the revision, and updates the figures.
    async fn look(&mut self) -> Result<Sizes, Stop> {
        let all = self.members.statuses(&self.shared.client).await?;
        let cfg = &self.shared.cfg.storage;
        let reported = all
            .iter()
            .map(|m| m.reported_quota)
            .filter(|q| *q > 0)
            .min();
        let quota = match reported {
            Some(q) if (q as u64) < cfg.quota_bytes => q as u64,
            _ => cfg.quota_bytes,
        };
        let budget = cfg.budget.bytes(quota);
        let sizes = Sizes {
            file: all.iter().map(|m| m.db_size).max().unwrap_or(0),
            in_use: all.iter().map(|m| m.in_use).max().unwrap_or(0),
            revision: all.iter().map(|m| m.revision).max().unwrap_or(0),
            members: all,
        };
        self.history.note(Instant::now(), sizes.revision);
        self.status.quota_bytes = quota as i64;
        self.status.budget_bytes = budget as i64;
        self.status.db_size_bytes = sizes.file;
        self.status.db_size_in_use_bytes = sizes.in_use;
        ::metrics::gauge!("etcd_db_size_bytes").set(sizes.file as f64);
        ::metrics::gauge!("etcd_db_size_in_use_bytes").set(sizes.in_use as f64);
        ::metrics::gauge!("storage_budget_bytes").set(budget as f64);
        ::metrics::gauge!("etcd_quota_bytes").set(quota as f64);
        Ok(sizes)
    }

    async fn still_leading(&self) -> Result<(), Stop> {
        match self.leader.holds(&self.shared).await? {
            true => Ok(()),
            false => Err(Stop::Deposed),
        }
    }

    /// Compacts history up to `revision` and waits until the space is free.
    async fn compact(&mut self, revision: i64, why: &'static str) -> Result<(), Stop> {
        if revision <= self.compacted {
            return Ok(());
        }
        self.still_leading().await?;
        let opts = CompactionOptions::new().with_physical();
        match self
            .members
            .admin()
            .await?
            .compact(revision, Some(opts))
            .await
            .ctx("compact")
        {
            Ok(_) => {}
            // Compacted already (by an operator, or etcd's own auto-compaction): fine.
            Err(e) if e.is_compacted() => {}
            Err(e) => return Err(e.into()),
        }
        tracing::debug!(revision, why, "compacted etcd history");
        self.compacted = revision;
        self.last_compaction = Some(Instant::now());
        self.status.compacted_revision = revision;
        self.status.compactions += 1;
        ::metrics::counter!("compactions").increment(1);
        Ok(())
    }

    /// Expires the oldest samples, a share of the stored span as large as the share of the
    /// space to free.
    async fn expire(&mut self, seen: &Sizes) -> Result<(), Stop> {
        let share = policy::expiry_share(seen.in_use, self.status.budget_bytes);
        let fence = self.leader.fence();
        let Some(done) =
            expire::oldest(&self.shared.client, &self.shared.keys, &fence, share).await?
        else {
            return Err(Stop::Deposed);
        };
        if done.samples > 0 {
            self.status.samples_expired_budget += done.samples;
            ::metrics::counter!("samples_expired", "reason" => "budget").increment(done.samples);
            tracing::warn!(
                samples = done.samples,
                from = ?done.from,
                before = ?done.before,
                in_use = seen.in_use,
                budget = self.status.budget_bytes,
                "storage over STORAGE_BUDGET: expired the oldest samples"
            );
        }
        Ok(())
    }

    /// Deletes what retention no longer keeps, once per [`retention::every`].
    async fn sweep(&mut self) -> Result<(), Stop> {
        let cfg = &self.shared.cfg;
        let due = self
            .last_sweep
            .is_none_or(|t| t.elapsed() >= retention::every(cfg.retention));
        if !due || matches!(self.leader, Leadership::Emergency) {
            return Ok(());
        }
        let fence = self.leader.fence();
        let (keys, client) = (&self.shared.keys, &self.shared.client);
        let kept = (cfg.retention, cfg.message_state_ttl);
        let published = self.shared.cutoff.get();
        let Some(done) = retention::sweep(client, keys, &fence, kept, published).await? else {
            return Err(Stop::Deposed);
        };
        self.last_sweep = Some(Instant::now());
        self.shared.cutoff.learn(done.cutoff);
        self.status.retention_cutoff_unix_nano = done.cutoff;
        if done.samples > 0 {
            self.status.samples_expired_retention += done.samples;
            ::metrics::counter!("samples_expired", "reason" => "retention").increment(done.samples);
            tracing::info!(
                samples = done.samples,
                before = %telemetry::record::format_timestamp(done.cutoff),
                "expired samples older than TELEMETRY_RETENTION"
            );
        }
        if done.gpus_forgotten + done.invalid + done.states > 0 {
            tracing::debug!(
                gpus = done.gpus_forgotten,
                invalid = done.invalid,
                states = done.states,
                "expired registry entries, invalid entries and message states"
            );
        }
        Ok(())
    }

    /// Folds closed windows for at most [`FOLD_FOR`].
    async fn fold(&mut self) -> Result<Folded, Stop> {
        if matches!(self.leader, Leadership::Emergency) {
            return Ok(Folded::default());
        }
        let cfg = &self.shared.cfg.storage;
        let after = i64::try_from(cfg.fold_after.as_nanos()).unwrap_or(i64::MAX);
        let fence = self.leader.fence();
        let mut folder = Folder {
            client: &self.shared.client,
            keys: &self.shared.keys,
            fence: &fence,
            windows: Windows::new(cfg.fold_window),
            closed_before: telemetry::record::now_nanos().saturating_sub(after),
            expiring_by: self.shared.cutoff.get(),
            quiet: &mut self.quiet,
        };
        let done = folder.pass(Instant::now() + FOLD_FOR).await?;
        if done.chunks > 0 {
            self.status.samples_folded += done.samples;
            self.status.chunks_written += done.chunks;
            ::metrics::counter!("samples_folded").increment(done.samples);
            ::metrics::counter!("chunks_written").increment(done.chunks);
            tracing::debug!(
                samples = done.samples,
                chunks = done.chunks,
                deferred = done.deferred,
                "folded closed windows"
            );
        }
        Ok(done)
    }

    /// Defragments at most one member a round: one whose alarm is raised, whose file nears
    /// the quota, or that has a quarter of its file free (and is large enough to matter).
    async fn defragment(&mut self, seen: &Sizes, alarmed: &[u64]) -> Result<(), Stop> {
        let (quota, budget) = (self.status.quota_bytes, self.status.budget_bytes);
        let pick = seen.members.iter().find(|m| {
            let rested = self
                .last_defrag
                .get(&m.id)
                .is_none_or(|t| t.elapsed() >= DEFRAG_EVERY);
            policy::worth_defragmenting(m, alarmed.contains(&m.id), rested, quota, budget)
        });
        let Some(m) = pick else { return Ok(()) };
        self.still_leading().await?;
        let started = Instant::now();
        self.members.defragment(m.id).await?;
        self.last_defrag.insert(m.id, Instant::now());
        self.status.defrags += 1;
        ::metrics::counter!("defrags").increment(1);
        tracing::info!(member = %m.name, file = m.db_size, in_use = m.in_use, took = ?started.elapsed(), "defragmented an etcd member");
        Ok(())
    }

    /// Disarms the NOSPACE alarm once every member's file leaves a twentieth of the quota.
    /// That is not the budget: the collectors need room to commit what is queued (a commit
    /// writes before its message is deleted), and their commits are what lets the queue,
    /// and then the oldest samples, be freed. Streamers stay paused until in use is under
    /// the budget ([`marks::Pressure::Full`]).
    async fn disarm(&mut self, seen: &Sizes, alarmed: &[u64]) -> Result<(), Stop> {
        if !policy::may_disarm(&seen.members, self.status.quota_bytes) {
            return Ok(());
        }
        self.still_leading().await?;
        for &member in alarmed {
            let admin = self.members.admin().await?;
            members::disarm(&admin, member).await?;
        }
        tracing::warn!(
            file = seen.file,
            in_use = seen.in_use,
            "etcd's NOSPACE alarm disarmed: writes are accepted again"
        );
        Ok(())
    }

    /// Publishes the figures for every process (fenced; skipped while etcd refuses writes).
    async fn publish(&mut self, seen: &Sizes) -> Result<(), Stop> {
        self.status.db_size_bytes = seen.file;
        self.status.db_size_in_use_bytes = seen.in_use;
        self.status.updated_unix_ms = telemetry::record::now_millis();
        let json = serde_json::to_vec(&self.status).unwrap_or_default();
        let put = TxnOp::put(self.shared.keys.storage_status(), json, None::<PutOptions>);
        if matches!(self.leader, Leadership::Emergency) {
            return Ok(());
        }
        let txn = Txn::new().when(self.leader.fence()).and_then([put]);
        match self
            .shared
            .client
            .kv_client()
            .txn(txn)
            .await
            .ctx("publish storage status")
        {
            Ok(r) if r.succeeded() => Ok(()),
            Ok(_) => Err(Stop::Deposed),
            Err(e) if telemetry::storage::is_no_space(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The largest member's figures, and each member's.
struct Sizes {
    file: i64,
    in_use: i64,
    revision: i64,
    members: Vec<MemberStatus>,
}
