//! Derived metrics (`derived.metrics`): named expressions over one GPU's metrics at one
//! instant, computed in dependency order, so that one may read another.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::expr::Expr;

/// One definition as the configuration holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The metric's name.
    pub name: String,
    /// What it is computed from.
    pub expr: String,
}

/// A derived metric ready to compute.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Its name.
    pub name: String,
    /// Its expression.
    pub expr: Expr,
    /// The device metrics it needs, directly or through other derived metrics: a sample group
    /// holding all of them can compute it.
    pub inputs: BTreeSet<String>,
}

/// Every derived metric, in an order where each comes after those it reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Derived {
    /// The metrics, dependencies first.
    pub metrics: Vec<Metric>,
}

/// What a device metric's name starts with: any other name in an expression must be a derived
/// metric of the same list.
pub const DEVICE_PREFIX: &str = "DCGM_FI_";

impl Derived {
    /// Parses and checks the setting's value: names are metric-like and new, every name an
    /// expression reads is a DCGM field or another derived metric, and no metric depends on
    /// itself, directly or not.
    pub fn parse(value: &Value) -> Result<Derived, String> {
        let defs: Vec<Definition> = serde_json::from_value(value.clone())
            .map_err(|e| format!(r#"must be a list of {{"name": ..., "expr": ...}}: {e}"#))?;
        let mut parsed: BTreeMap<String, Expr> = BTreeMap::new();
        for d in &defs {
            super::check_name(&d.name)?;
            if d.name.starts_with("DCGM_") {
                return Err(format!(
                    "{:?}: a derived metric may not take a DCGM name",
                    d.name
                ));
            }
            let expr = Expr::parse(&d.expr).map_err(|e| format!("{}: {e}", d.name))?;
            if parsed.insert(d.name.clone(), expr).is_some() {
                return Err(format!("{:?} is defined twice", d.name));
            }
        }
        for (name, expr) in &parsed {
            if let Some(unknown) = expr
                .metrics()
                .into_iter()
                .find(|m| !m.starts_with(DEVICE_PREFIX) && !parsed.contains_key(*m))
            {
                return Err(format!(
                    "{name}: unknown name {unknown:?} (a device metric starts with {DEVICE_PREFIX}; a derived one must be defined in the same list)"
                ));
            }
        }
        let order = dependency_order(&parsed)?;
        let mut metrics: Vec<Metric> = Vec::with_capacity(order.len());
        for name in order {
            let expr = parsed[&name].clone();
            let mut inputs = BTreeSet::new();
            for m in expr.metrics() {
                match metrics.iter().find(|d| d.name == m) {
                    Some(d) => inputs.extend(d.inputs.iter().cloned()),
                    None => {
                        inputs.insert(m.to_string());
                    }
                }
            }
            metrics.push(Metric { name, expr, inputs });
        }
        Ok(Derived { metrics })
    }

    /// Whether nothing is defined.
    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    /// Whether `metric` is an input of some derived metric.
    pub fn reads(&self, metric: &str) -> bool {
        self.metrics.iter().any(|d| d.inputs.contains(metric))
    }
}

/// Names in an order where each comes after what it reads; a cycle is named.
fn dependency_order(parsed: &BTreeMap<String, Expr>) -> Result<Vec<String>, String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        parsed: &BTreeMap<String, Expr>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<(), String> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let from = path.iter().position(|p| p == name).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(name.to_string());
                return Err(format!("a cycle: {}", cycle.join(" -> ")));
            }
            None => {}
        }
        marks.insert(name.to_string(), Mark::Visiting);
        path.push(name.to_string());
        for m in parsed[name].metrics() {
            if parsed.contains_key(m) {
                visit(m, parsed, marks, path, out)?;
            }
        }
        path.pop();
        marks.insert(name.to_string(), Mark::Done);
        out.push(name.to_string());
        Ok(())
    }
    let mut marks = BTreeMap::new();
    let mut out = Vec::with_capacity(parsed.len());
    for name in parsed.keys() {
        visit(name, parsed, &mut marks, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_chain_is_ordered_by_dependency() {
        let d = Derived::parse(&json!([
            {"name": "mem_free_pct", "expr": "100 - mem_used_pct"},
            {"name": "mem_used_pct", "expr": "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) * 100"},
        ]))
        .unwrap();
        let names: Vec<_> = d.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["mem_used_pct", "mem_free_pct"]);
        let inputs: Vec<_> = d.metrics[1].inputs.iter().map(String::as_str).collect();
        assert_eq!(inputs, ["DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED"]);
        assert!(d.reads("DCGM_FI_DEV_FB_FREE"));
        assert!(!d.reads("DCGM_FI_DEV_GPU_TEMP"));
    }

    #[test]
    fn cycles_unknown_names_and_bad_shapes_are_refused() {
        for (value, says) in [
            (
                json!([{"name": "a", "expr": "b + 1"}, {"name": "b", "expr": "a * 2"}]),
                "a cycle: a -> b -> a",
            ),
            (json!([{"name": "a", "expr": "a + 1"}]), "a cycle: a -> a"),
            (
                json!([{"name": "a", "expr": "DCGM_FI_DEV_GPU_TEMP + nope"}]),
                "unknown name \"nope\"",
            ),
            (
                json!([{"name": "a", "expr": "1"}, {"name": "a", "expr": "2"}]),
                "defined twice",
            ),
            (
                json!([{"name": "DCGM_FI_X", "expr": "1"}]),
                "may not take a DCGM name",
            ),
            (json!([{"name": "a b", "expr": "1"}]), "not a metric name"),
            (json!([{"name": "a", "expr": "1 +"}]), "a: "),
            (json!({"name": "a"}), "must be a list"),
            (
                json!([{"name": "a", "expr": "1", "x": 1}]),
                "must be a list",
            ),
        ] {
            let e = Derived::parse(&value).unwrap_err();
            assert!(e.contains(says), "{value}: {e}");
        }
        assert!(Derived::parse(&json!([])).unwrap().is_empty());
    }
}
