//! Rules over stored samples, declared in the live configuration: derived metrics
//! (`derived.metrics`) and alerts (`alerts.rules`). The configuration checks them with these
//! parsers before they are stored; the collector that evaluates them (docs/insight.md) and the
//! gateway that shows alerts share the types.

pub mod alert;
pub mod derived;
pub mod expr;

pub use alert::{Alert, Rule};
pub use derived::Derived;

/// A metric-like name: letters, digits and `_`, not starting with a digit. It becomes part of
/// a metric's name, and of an alert's etcd key.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a metric name (letters, digits and _, up to 128)"
        ))
    }
}
