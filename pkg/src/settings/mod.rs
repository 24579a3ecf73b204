//! Live configuration: settings kept in etcd under `{prefix}/config/{name}`, followed by every
//! process and applied without a restart.
//!
//! Each process starts from its own values (flags, environment, defaults) and overlays what
//! etcd holds; [`Settings`] hands out the effective values and tells its users when they
//! change. A value is JSON and is checked ([`catalog::check`]) before it is stored, by the
//! gateway's `PUT /api/v1/config/{key}` and `collector config set`; a process that reads an
//! invalid one anyway (written around those doors) keeps what it had, says so, and counts it
//! (`config_rejected`). Unsetting a key stores `null` rather than deleting it, so the newest
//! mod revision under the prefix is always the latest change, which is what members report
//! as applied.

pub mod catalog;
mod follow;
mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

pub use catalog::Invalid;
pub use follow::{follow, overlay};
pub use store::{list, set, SetError, Stored};

/// Where an effective value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The built-in default.
    Default,
    /// A flag or environment variable given at start-up.
    Flag,
    /// A value set in etcd, which overrides both.
    Etcd,
}

/// One setting's effective value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Effective {
    /// The value.
    pub value: Value,
    /// Where it comes from.
    pub source: Source,
    /// The mod revision of its etcd key, when etcd gives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// Every setting's effective value, and the newest configuration change applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// The newest mod revision under the configuration prefix (0: nothing was ever set).
    pub revision: i64,
    /// Each setting by name.
    pub values: BTreeMap<&'static str, Effective>,
}

impl Snapshot {
    /// The start-up values: `startup` where the process was given one, else the defaults.
    pub fn at_startup(startup: &[(&'static str, Value)]) -> Self {
        let values = catalog::SPECS
            .iter()
            .map(|s| {
                let default = (s.default)();
                let given = startup.iter().find(|(k, _)| *k == s.name).map(|(_, v)| v);
                let e = match given {
                    Some(v) if *v != default => Effective {
                        value: v.clone(),
                        source: Source::Flag,
                        revision: None,
                    },
                    _ => Effective {
                        value: default,
                        source: Source::Default,
                        revision: None,
                    },
                };
                (s.name, e)
            })
            .collect();
        Self {
            revision: 0,
            values,
        }
    }

    /// The value of `name` (a catalog name).
    pub fn value(&self, name: &str) -> &Value {
        self.values.get(name).map_or(&Value::Null, |e| &e.value)
    }

    /// `name` as a boolean (false when it is not one, which checked values always are).
    pub fn bool(&self, name: &str) -> bool {
        self.value(name).as_bool().unwrap_or(false)
    }

    /// `name` as a number.
    pub fn f64(&self, name: &str) -> f64 {
        self.value(name).as_f64().unwrap_or(0.0)
    }

    /// Whether ingestion is on (the kill switch).
    pub fn ingestion_enabled(&self) -> bool {
        self.bool(catalog::INGESTION_ENABLED)
    }
}

/// A process's live settings: the current [`Snapshot`], and a way to wait for the next.
#[derive(Debug, Clone)]
pub struct Settings {
    rx: watch::Receiver<Arc<Snapshot>>,
}

impl Settings {
    /// Settings that never change from `snapshot` (tests, and processes told not to follow).
    pub fn fixed(snapshot: Snapshot) -> Self {
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        // Keep the channel open: a closed one would make `changed` return at once, forever.
        std::mem::forget(tx);
        Self { rx }
    }

    /// The effective values now.
    pub fn now(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }

    /// Waits until ingestion is on (at once when it is).
    pub async fn ingestion_on(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|s| s.ingestion_enabled()).await;
    }
}

/// Keeps `/ready` and the log in step with the kill switch until `stop` fires: a process that
/// cannot do its work because ingestion is off is not ready, and says why.
pub async fn report_ingestion(
    settings: Settings,
    readiness: crate::admin::Readiness,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut rx = settings.subscribe();
    let mut was_on = true;
    loop {
        let on = rx.borrow_and_update().ingestion_enabled();
        if on {
            readiness.clear("ingestion");
        } else {
            readiness.block(
                "ingestion",
                "ingestion is switched off (live setting ingestion.enabled=false)",
            );
        }
        match (was_on, on) {
            (true, false) => {
                tracing::warn!("ingestion switched off: holding input, taking no new work")
            }
            (false, true) => tracing::info!("ingestion switched on again"),
            _ => {}
        }
        was_on = on;
        tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}
