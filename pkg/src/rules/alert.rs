//! Alert rules (`alerts.rules`) and the life of one alert: a rule on one GPU goes pending when
//! its condition first holds, fires once it has held for the rule's `for`, and resolves when it
//! stops holding. Time is the samples' own, never a wall clock, so that a replay or a late
//! batch evaluates the same way as the live stream did.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::{format_timestamp, parse_timestamp};

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `==`
    #[serde(rename = "==")]
    Eq,
    /// `!=`
    #[serde(rename = "!=")]
    Ne,
}

impl Cmp {
    /// Whether `value cmp threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Cmp::Gt => value > threshold,
            Cmp::Ge => value >= threshold,
            Cmp::Lt => value < threshold,
            Cmp::Le => value <= threshold,
            Cmp::Eq => value == threshold,
            Cmp::Ne => value != threshold,
        }
    }
}

/// One rule as the configuration holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The alert's name.
    pub name: String,
    /// The metric (a device or derived metric).
    pub metric: String,
    /// The comparison.
    pub op: Cmp,
    /// What the value is compared with.
    pub threshold: f64,
    /// How long the condition must hold before the alert fires (`2m`; default `0s`).
    #[serde(rename = "for", default = "zero")]
    pub hold: String,
}

fn zero() -> String {
    "0s".into()
}

impl Rule {
    /// Parses and checks the setting's value: unique metric-like names, a finite threshold, a
    /// duration for `for`.
    pub fn parse_all(value: &Value) -> Result<Vec<Rule>, String> {
        let rules: Vec<Rule> = serde_json::from_value(value.clone()).map_err(|e| {
            format!(r#"must be a list of {{"name", "metric", "op" (>, >=, <, <=, ==, !=), "threshold", "for"}}: {e}"#)
        })?;
        for (i, r) in rules.iter().enumerate() {
            super::check_name(&r.name)?;
            super::check_name(&r.metric).map_err(|e| format!("{}: metric {e}", r.name))?;
            if !r.threshold.is_finite() {
                return Err(format!("{}: threshold must be a finite number", r.name));
            }
            crate::config::parse_duration(&r.hold)
                .map_err(|e| format!("{}: for {:?}: {e}", r.name, r.hold))?;
            if rules[..i].iter().any(|o| o.name == r.name) {
                return Err(format!("{:?} is defined twice", r.name));
            }
        }
        Ok(rules)
    }

    /// How long the condition must hold ([`Rule::parse_all`] checked it).
    pub fn hold(&self) -> Duration {
        crate::config::parse_duration(&self.hold).unwrap_or_default()
    }
}

/// Where an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The condition holds, not yet for the rule's `for`.
    Pending,
    /// The condition has held for `for`.
    Firing,
    /// It fired, then stopped holding.
    Resolved,
}

/// One rule's alert on one GPU, as etcd keeps it and the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    /// The rule's name.
    pub rule: String,
    /// What it watches.
    pub metric: String,
    /// The comparison and threshold, as set when the alert began.
    pub op: String,
    /// The threshold.
    pub threshold: f64,
    /// The rule's `for`.
    #[serde(rename = "for")]
    pub hold: String,
    /// The GPU.
    pub hostname: String,
    /// Its index on the host.
    pub gpu_id: String,
    /// Its UUID.
    pub uuid: String,
    /// Where it is.
    pub state: State,
    /// The value of the sample that moved it last.
    pub value: f64,
    /// When the condition began to hold (RFC 3339).
    pub started_at: String,
    /// When it fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<String>,
    /// When it resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// The time of the newest sample that moved it (Unix ns): older samples do not move it.
    pub sample_unix_nano: i64,
}

/// One sample, as alert evaluation sees it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// The GPU's host.
    pub hostname: &'a str,
    /// Its index.
    pub gpu_id: &'a str,
    /// Its UUID.
    pub uuid: &'a str,
    /// When (Unix ns).
    pub at: i64,
    /// The value.
    pub value: f64,
}

/// What a sample does to an alert.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The alert is now this (pending, firing or resolved). `notify` says it just fired or
    /// resolved: a transition the webhook hears about.
    Put {
        /// The new state.
        alert: Alert,
        /// Whether to notify.
        notify: bool,
    },
    /// A pending alert whose condition stopped holding before it fired: it is gone.
    Clear(Alert),
}

/// Moves `prev` (the alert of `rule` on the sample's GPU, if any) by one sample. `None`: no
/// change, including for a sample no newer than the one that moved it last.
pub fn step(rule: &Rule, prev: Option<&Alert>, s: Sample<'_>) -> Option<Change> {
    if prev.is_some_and(|p| s.at <= p.sample_unix_nano) {
        return None;
    }
    let holds = rule.op.holds(s.value, rule.threshold);
    let at = format_timestamp(s.at);
    let begin = |state| Alert {
        rule: rule.name.clone(),
        metric: rule.metric.clone(),
        op: serde_json::to_value(rule.op)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        threshold: rule.threshold,
        hold: rule.hold.clone(),
        hostname: s.hostname.to_string(),
        gpu_id: s.gpu_id.to_string(),
        uuid: s.uuid.to_string(),
        state,
        value: s.value,
        started_at: at.clone(),
        fired_at: None,
        resolved_at: None,
        sample_unix_nano: s.at,
    };
    let held_long_enough = |since: &str| {
        parse_timestamp(since)
            .is_ok_and(|t| s.at.saturating_sub(t) >= rule.hold().as_nanos() as i64)
    };
    let fire = |mut a: Alert| {
        a.state = State::Firing;
        a.fired_at = Some(at.clone());
        a.value = s.value;
        a.sample_unix_nano = s.at;
        Change::Put {
            alert: a,
            notify: true,
        }
    };
    match (prev.map(|p| p.state), holds) {
        (None | Some(State::Resolved), true) => {
            let a = begin(State::Pending);
            if rule.hold().is_zero() {
                Some(fire(a))
            } else {
                Some(Change::Put {
                    alert: a,
                    notify: false,
                })
            }
        }
        (Some(State::Pending), true) => {
            let p = prev?;
            held_long_enough(&p.started_at).then(|| fire(p.clone()))
        }
        (Some(State::Pending), false) => Some(Change::Clear(prev?.clone())),
        (Some(State::Firing), false) => {
            let mut a = prev?.clone();
            a.state = State::Resolved;
            a.resolved_at = Some(at);
            a.value = s.value;
            a.sample_unix_nano = s.at;
            Some(Change::Put {
                alert: a,
                notify: true,
            })
        }
        (Some(State::Firing), true) | (None | Some(State::Resolved), false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SEC: i64 = 1_000_000_000;

    fn rule(hold: &str) -> Rule {
        Rule::parse_all(&json!([{"name": "gpu_hot", "metric": "DCGM_FI_DEV_GPU_TEMP", "op": ">", "threshold": 85, "for": hold}]))
            .unwrap()
            .remove(0)
    }

    fn sample(at: i64, value: f64) -> Sample<'static> {
        Sample {
            hostname: "h",
            gpu_id: "0",
            uuid: "GPU-1",
            at: 1_752_000_000 * SEC + at * SEC,
            value,
        }
    }

    /// Runs samples through `step`, returning the states passed and whether each notified.
    fn run(rule: &Rule, samples: &[(i64, f64)]) -> Vec<(Option<State>, bool)> {
        let mut now: Option<Alert> = None;
        let mut out = Vec::new();
        for &(at, v) in samples {
            match step(rule, now.as_ref(), sample(at, v)) {
                Some(Change::Put { alert, notify }) => {
                    out.push((Some(alert.state), notify));
                    now = Some(alert);
                }
                Some(Change::Clear(_)) => {
                    out.push((None, false));
                    now = None;
                }
                None => {}
            }
        }
        out
    }

    #[test]
    fn a_ramp_goes_pending_firing_resolved() {
        let r = rule("2m");
        let got = run(
            &r,
            &[
                (0, 80.0),
                (10, 86.0),
                (70, 90.0),
                (130, 91.0),
                (140, 92.0),
                (150, 70.0),
                (160, 60.0),
            ],
        );
        assert_eq!(
            got,
            [
                (Some(State::Pending), false),
                (Some(State::Firing), true),
                (Some(State::Resolved), true),
            ]
        );
    }

    #[test]
    fn a_short_spike_clears_without_firing_and_old_samples_move_nothing() {
        let r = rule("2m");
        assert_eq!(
            run(&r, &[(0, 90.0), (60, 80.0), (30, 95.0)]),
            [
                (Some(State::Pending), false),
                (None, false),
                (Some(State::Pending), false)
            ],
            "a cleared alert has no newest sample left"
        );
        let mut pending = None;
        if let Some(Change::Put { alert, .. }) = step(&r, None, sample(100, 90.0)) {
            pending = Some(alert);
        }
        assert_eq!(step(&r, pending.as_ref(), sample(50, 10.0)), None);
    }

    #[test]
    fn zero_for_fires_at_once_and_refires_after_resolving() {
        let r = rule("0s");
        assert_eq!(
            run(&r, &[(0, 90.0), (10, 50.0), (20, 99.0)]),
            [
                (Some(State::Firing), true),
                (Some(State::Resolved), true),
                (Some(State::Firing), true),
            ]
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        for (value, says) in [
            (
                json!([{"name": "a", "metric": "m", "op": "=>", "threshold": 1}]),
                "must be a list",
            ),
            (
                json!([{"name": "a", "metric": "m", "op": ">", "threshold": "hot"}]),
                "must be a list",
            ),
            (
                json!([{"name": "a", "metric": "m", "op": ">", "threshold": 1, "for": "soon"}]),
                "for \"soon\"",
            ),
            (
                json!([{"name": "a", "metric": "m m", "op": ">", "threshold": 1}]),
                "metric",
            ),
            (
                json!([{"name": "a", "metric": "m", "op": ">", "threshold": 1}, {"name": "a", "metric": "n", "op": "<", "threshold": 1}]),
                "defined twice",
            ),
        ] {
            let e = Rule::parse_all(&value).unwrap_err();
            assert!(e.contains(says), "{value}: {e}");
        }
    }
}
