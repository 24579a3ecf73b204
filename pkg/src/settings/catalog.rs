//! Which settings can change while the pipeline runs, and what a valid value of each is.
//!
//! A value is JSON (what `PUT /api/v1/config/{key}` takes and what etcd holds), checked here
//! before it is stored; processes check it again when they read it, since anyone with etcd
//! access can write the key directly.

use serde_json::Value;

/// A setting's name, as the contract spells it.
pub const INGESTION_ENABLED: &str = "ingestion.enabled";
/// Records per second a streamer publishes (0: unlimited).
pub const STREAM_RATE: &str = "stream.rate";
/// Whether a deep queue slows streamers down.
pub const THROTTLE_ENABLED: &str = "throttle.enabled";
/// Queue depth, in messages, above which streamers slow down.
pub const THROTTLE_MAX_QUEUE_DEPTH: &str = "throttle.max_queue_depth";
/// Fraction of its rate a streamer keeps while the queue is deep.
pub const THROTTLE_RATE: &str = "throttle.rate";
/// The tracing filter of every process (`info`, `debug`, `collector=debug,info`, …).
pub const LOG_LEVEL: &str = "log.level";
/// Alert rules, evaluated as samples are stored.
pub const ALERTS_RULES: &str = "alerts.rules";
/// Derived metrics, computed as samples are stored.
pub const DERIVED_METRICS: &str = "derived.metrics";

/// One live setting.
#[derive(Debug)]
pub struct Spec {
    /// Its name.
    pub name: &'static str,
    /// What it does, for `config list` and the API.
    pub help: &'static str,
    /// The default when neither a flag nor etcd gives one.
    pub default: fn() -> Value,
    check: fn(&Value) -> Result<(), String>,
}

/// Every live setting.
pub const SPECS: &[Spec] = &[
    Spec {
        name: INGESTION_ENABLED,
        help: "the kill switch: false stops publishing and claiming, holding the input",
        default: || Value::Bool(true),
        check: boolean,
    },
    Spec {
        name: STREAM_RATE,
        help: "records per second each streamer publishes; 0 is unlimited",
        default: || Value::from(0.0),
        check: |v| non_negative(v, f64::MAX),
    },
    Spec {
        name: THROTTLE_ENABLED,
        help: "slow streamers down while the queue is deeper than throttle.max_queue_depth",
        default: || Value::Bool(false),
        check: boolean,
    },
    Spec {
        name: THROTTLE_MAX_QUEUE_DEPTH,
        help: "queue depth (messages) above which throttling applies",
        default: || Value::from(1000),
        check: whole,
    },
    Spec {
        name: THROTTLE_RATE,
        help: "fraction of its rate (0.0 to 1.0) a streamer keeps while throttled",
        default: || Value::from(0.1),
        check: |v| non_negative(v, 1.0),
    },
    Spec {
        name: LOG_LEVEL,
        help: "tracing filter, as RUST_LOG takes it (info, debug, collector=debug,info)",
        default: || Value::from("info"),
        check: log_filter,
    },
    Spec {
        name: ALERTS_RULES,
        help: "alert rules: [{name, metric, op, threshold, for}], evaluated on stored samples",
        default: default_alert_rules,
        check: |v| crate::rules::Rule::parse_all(v).map(|_| ()),
    },
    Spec {
        name: DERIVED_METRICS,
        help: "derived metrics: [{name, expr}], arithmetic over one GPU's metrics at one instant",
        default: || Value::Array(Vec::new()),
        check: |v| crate::rules::Derived::parse(v).map(|_| ()),
    },
];

/// Rules for H100s (80 GB SXM, 700 W): the GPU and its HBM3 near their slowdown
/// temperatures, any XID error, and power within 5% of the board limit for five minutes.
fn default_alert_rules() -> Value {
    serde_json::json!([
        {"name": "gpu_temp_high", "metric": "DCGM_FI_DEV_GPU_TEMP", "op": ">", "threshold": 85, "for": "2m"},
        {"name": "memory_temp_high", "metric": "DCGM_FI_DEV_MEMORY_TEMP", "op": ">", "threshold": 95, "for": "2m"},
        {"name": "xid_errors", "metric": "DCGM_FI_DEV_XID_ERRORS", "op": "!=", "threshold": 0, "for": "0s"},
        {"name": "power_near_limit", "metric": "DCGM_FI_DEV_POWER_USAGE", "op": ">", "threshold": 665, "for": "5m"},
    ])
}

/// The spec of `name`.
pub fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

/// Why a value cannot be set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    /// No such setting.
    #[error("no live setting {0:?} (known: {known})", known = SPECS.iter().map(|s| s.name).collect::<Vec<_>>().join(", "))]
    UnknownKey(String),
    /// Not a value this setting takes.
    #[error("{key}: {reason}")]
    BadValue {
        /// The setting.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
}

/// Checks `value` for setting `key`. `null` is valid for every key: it means "no override".
pub fn check(key: &str, value: &Value) -> Result<(), Invalid> {
    let spec = spec(key).ok_or_else(|| Invalid::UnknownKey(key.to_string()))?;
    if value.is_null() {
        return Ok(());
    }
    (spec.check)(value).map_err(|reason| Invalid::BadValue {
        key: key.to_string(),
        reason,
    })
}

fn boolean(v: &Value) -> Result<(), String> {
    v.as_bool()
        .map(|_| ())
        .ok_or_else(|| format!("must be true or false, got {v}"))
}

fn non_negative(v: &Value, max: f64) -> Result<(), String> {
    match v.as_f64() {
        Some(x) if x.is_finite() && (0.0..=max).contains(&x) => Ok(()),
        _ if max < f64::MAX => Err(format!("must be a number from 0 to {max}, got {v}")),
        _ => Err(format!("must be a number, 0 or more, got {v}")),
    }
}

fn whole(v: &Value) -> Result<(), String> {
    v.as_i64()
        .filter(|n| *n >= 0)
        .map(|_| ())
        .ok_or_else(|| format!("must be a whole number, 0 or more, got {v}"))
}

fn log_filter(v: &Value) -> Result<(), String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("must be a string, got {v}"))?;
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| ())
        .map_err(|e| format!("{s:?} is not a tracing filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_checked_before_they_are_stored() {
        assert!(check(INGESTION_ENABLED, &json!(false)).is_ok());
        assert!(check(STREAM_RATE, &json!(250.5)).is_ok());
        assert!(check(THROTTLE_RATE, &json!(1)).is_ok());
        assert!(check(THROTTLE_MAX_QUEUE_DEPTH, &json!(0)).is_ok());
        assert!(check(LOG_LEVEL, &json!("collector=debug,info")).is_ok());
        assert!(check(STREAM_RATE, &Value::Null).is_ok(), "null unsets");
        assert!(check(
            DERIVED_METRICS,
            &json!([{"name": "pct", "expr": "DCGM_FI_DEV_FB_USED / 800"}])
        )
        .is_ok());
        assert!(check(ALERTS_RULES, &json!([])).is_ok());
        for (key, bad) in [
            (INGESTION_ENABLED, json!("no")),
            (INGESTION_ENABLED, json!(0)),
            (STREAM_RATE, json!(-1)),
            (STREAM_RATE, json!("fast")),
            (THROTTLE_RATE, json!(1.5)),
            (THROTTLE_MAX_QUEUE_DEPTH, json!(2.5)),
            (THROTTLE_MAX_QUEUE_DEPTH, json!(-3)),
            (LOG_LEVEL, json!("[[[")),
            (LOG_LEVEL, json!(3)),
            (DERIVED_METRICS, json!([{"name": "a", "expr": "a"}])),
            (
                ALERTS_RULES,
                json!([{"name": "a", "metric": "m", "op": "~", "threshold": 1}]),
            ),
        ] {
            assert!(
                matches!(check(key, &bad), Err(Invalid::BadValue { .. })),
                "{key} = {bad}"
            );
        }
        assert_eq!(
            check("ingestion.enable", &json!(true)),
            Err(Invalid::UnknownKey("ingestion.enable".into()))
        );
    }

    #[test]
    fn every_default_is_valid() {
        for s in SPECS {
            assert!(check(s.name, &(s.default)()).is_ok(), "{}", s.name);
        }
    }
}
