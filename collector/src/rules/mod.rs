//! Rule evaluation: derived metrics and alerts, computed from stored samples by the elected
//! storage maintainer (docs/insight.md).
//!
//! The evaluator follows the data prefix with one watch, so the commit path pays nothing for
//! rules. Evaluation is pure and in memory ([`Evaluator::observe`]); what it decides (derived
//! samples to store, alert changes, webhook events) is written by [`flush`] every
//! [`FLUSH_EVERY`], in Txns fenced by the leader key, together with the revision evaluated
//! through. A new leader loads the alerts and resumes from that revision: samples it sees
//! again move nothing (an alert ignores samples no newer than the one that moved it last, and
//! a derived sample is deduplicated by its content like any other), so a transition is
//! written exactly once whoever evaluates it.
//!
//! Derived samples go through the queue like any pushed record: the collectors validate,
//! dedupe and store them, and their stored copies come back through the watch, where alerts
//! on derived metrics see them.

mod buckets;
mod flush;
mod groups;
mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, GetOptions, WatchOptions};
use telemetry::keys::Keys;
use telemetry::proto::TelemetryRecord;
use telemetry::rules::alert::{step, Change, Sample};
use telemetry::rules::{Alert, Derived, Rule};
use telemetry::settings::{catalog, Settings};
use tokio_util::sync::CancellationToken;

use crate::storage::Leadership;
use crate::Shared;
use groups::Groups;

/// How often decisions are written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Evaluates rules while `leading` holds (the maintainer's leadership).
pub(crate) async fn run(shared: Arc<Shared>, leader: Leadership, leading: CancellationToken) {
    let Leadership::Elected { .. } = leader else {
        return;
    };
    let evaluator = Arc::new(Mutex::new(Evaluator::new(
        shared.keys.clone(),
        shared.settings.clone(),
    )));
    let follower = Follower {
        evaluator: evaluator.clone(),
        keys: shared.keys.clone(),
    };
    let watch = telemetry::watch::follow(
        shared.client.clone(),
        shared.keys.data_root(),
        WatchOptions::new().with_prefix(),
        follower,
        leading.clone(),
    );
    let writer = flush::run(shared.clone(), leader, evaluator, leading.clone());
    match &shared.cfg.alert_webhook_url {
        Some(url) => {
            let deliver = webhook::run(shared.clone(), url.clone(), leading.clone());
            tokio::join!(watch, writer, deliver);
        }
        None => {
            tokio::join!(watch, writer);
        }
    }
}

/// What evaluation has decided and not yet written.
#[derive(Default)]
pub(crate) struct Decided {
    pub(crate) derived: Vec<TelemetryRecord>,
    /// Alert changes by key, in the order they happened.
    pub(crate) changes: Vec<(String, Change)>,
}

impl Decided {
    fn is_empty(&self) -> bool {
        self.derived.is_empty() && self.changes.is_empty()
    }
}

/// The evaluator's memory: the rules in force, every alert, the groups waiting.
pub(crate) struct Evaluator {
    keys: Keys,
    settings: Settings,
    config_revision: Option<i64>,
    derived: Derived,
    rules: Vec<Rule>,
    alerts: HashMap<String, Alert>,
    groups: Groups,
    decided: Decided,
    /// The newest revision observed.
    through: i64,
}

impl Evaluator {
    fn new(keys: Keys, settings: Settings) -> Self {
        Self {
            keys,
            settings,
            config_revision: None,
            derived: Derived::default(),
            rules: Vec::new(),
            alerts: HashMap::new(),
            groups: Groups::default(),
            decided: Decided::default(),
            through: 0,
        }
    }

    /// Takes up the rules in force when the configuration changed. A value that no longer
    /// parses (written around the checks) keeps the previous rules; the settings follower has
    /// already logged and counted it.
    fn refresh_rules(&mut self) {
        let now = self.settings.now();
        if self.config_revision == Some(now.revision) {
            return;
        }
        self.config_revision = Some(now.revision);
        if let Ok(d) = Derived::parse(now.value(catalog::DERIVED_METRICS)) {
            if d != self.derived {
                self.groups.clear();
                self.derived = d;
            }
        }
        if let Ok(r) = Rule::parse_all(now.value(catalog::ALERTS_RULES)) {
            self.rules = r;
        }
    }

    /// Evaluates one stored sample under the rules last refreshed.
    pub(crate) fn observe(&mut self, r: &TelemetryRecord, revision: i64) {
        self.through = self.through.max(revision);
        if !self.derived.is_empty() {
            let y = self.groups.add(&self.derived, r, revision);
            metrics::counter!("derived_computed").increment(y.records.len() as u64);
            metrics::counter!("derived_skipped").increment(y.skipped);
            self.decided.derived.extend(y.records);
        }
        for rule in self.rules.iter().filter(|rule| rule.metric == r.metric) {
            let key = self.keys.alert(&rule.name, &r.hostname, &r.gpu_id);
            let sample = Sample {
                hostname: &r.hostname,
                gpu_id: &r.gpu_id,
                uuid: &r.uuid,
                at: r.timestamp_unix_nano,
                value: r.value,
            };
            let Some(change) = step(rule, self.alerts.get(&key), sample) else {
                continue;
            };
            match &change {
                Change::Put { alert, .. } => {
                    let state = serde_json::to_value(alert.state).unwrap_or_default();
                    metrics::counter!("alert_transitions", "state" => state.as_str().unwrap_or_default().to_string()).increment(1);
                    self.alerts.insert(key.clone(), alert.clone());
                }
                Change::Clear(_) => {
                    self.alerts.remove(&key);
                }
            }
            self.decided.changes.push((key, change));
        }
    }

    /// Takes what was decided, and the revision that is then evaluated through: the newest
    /// observed, held back below any sample still waiting for a derived metric's other inputs.
    pub(crate) fn take(&mut self) -> (Decided, i64) {
        let skipped = self.groups.expire(&self.derived);
        metrics::counter!("derived_skipped").increment(skipped);
        let through = match self.groups.oldest_revision() {
            Some(waiting) => (waiting - 1).min(self.through),
            None => self.through,
        };
        (std::mem::take(&mut self.decided), through)
    }
}

/// The watch's side: decodes stored samples and hands them to the evaluator.
struct Follower {
    evaluator: Arc<Mutex<Evaluator>>,
    keys: Keys,
}

impl Follower {
    fn lock(&self) -> std::sync::MutexGuard<'_, Evaluator> {
        self.evaluator.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl telemetry::watch::Follower for Follower {
    async fn resume(
        &mut self,
        client: &Client,
        resume: Option<i64>,
        compacted: bool,
    ) -> Result<Option<i64>, etcd_client::Error> {
        let mut kv = client.kv_client();
        match (resume, compacted) {
            (None, _) => {
                let alerts = kv
                    .get(
                        self.keys.alerts_root(),
                        Some(GetOptions::new().with_prefix()),
                    )
                    .await?;
                let progress = kv.get(self.keys.rules_progress(), None).await?;
                let now = progress.header().map_or(0, |h| h.revision());
                let from = progress
                    .kvs()
                    .first()
                    .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse::<i64>().ok());
                let mut ev = self.lock();
                ev.alerts = alerts
                    .kvs()
                    .iter()
                    .filter_map(|kv| {
                        let alert = serde_json::from_slice::<Alert>(kv.value()).ok()?;
                        Some((kv.key_str().ok()?.to_string(), alert))
                    })
                    .collect();
                ev.through = from.unwrap_or(now);
                tracing::info!(
                    alerts = ev.alerts.len(),
                    from = ev.through + 1,
                    "evaluating rules on stored samples"
                );
                Ok(Some(ev.through + 1))
            }
            (Some(_), true) => {
                let now = kv.get(self.keys.rules_progress(), None).await?;
                let now = now.header().map_or(0, |h| h.revision());
                metrics::counter!("rules_gaps").increment(1);
                tracing::warn!(
                    through = self.lock().through,
                    now,
                    "etcd compacted past the samples not yet evaluated; evaluating from now on (STORAGE_HISTORY is shorter than the evaluator's hand-over)"
                );
                Ok(Some(now + 1))
            }
            (Some(rev), false) => Ok(Some(rev)),
        }
    }

    fn handle(&mut self, resp: &etcd_client::WatchResponse) -> telemetry::watch::Flow {
        let mut ev = self.lock();
        ev.refresh_rules();
        for e in resp.events() {
            if e.event_type() != etcd_client::EventType::Put {
                continue;
            }
            let Some(kv) = e.kv() else { continue };
            if let Some(r) = telemetry::store::decode(kv.value()) {
                ev.observe(&r, kv.mod_revision());
            }
        }
        telemetry::watch::Flow::Continue
    }
}
