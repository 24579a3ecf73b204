//! What DCGM's two formats (its CSV export and dcgm-exporter's `/metrics`) share: the sentinel
//! values that mean "no reading", and Prometheus-style label blocks.

use std::collections::HashMap;

/// DCGM reports a field it could not read as a sentinel: int32 and int64 "blank" values
/// just below their type's maximum, and 2^47 (≈1.4e14) for floating-point fields. None of
/// them is a reading.
pub fn is_dcgm_blank(v: f64) -> bool {
    const FP64_BLANK: f64 = 140_737_488_355_328.0;
    const INT32_BLANK: f64 = 2_147_483_632.0;
    const INT64_BLANK: f64 = 9_223_372_036_854_775_792.0;
    (FP64_BLANK..=FP64_BLANK + 16.0).contains(&v)
        || (INT32_BLANK..=2_147_483_647.0).contains(&v)
        || (INT64_BLANK - 1024.0..=9_223_372_036_854_775_808.0).contains(&v)
}

/// Parses Prometheus-style labels: `a="x",b="y \"quoted\""`.
///
/// Written by hand because the label block is a fragment, not a whole exposition line, and the
/// grammar is ten lines long; the dcgm-exporter source uses a full parser for whole scrapes.
pub fn parse_labels(raw: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    let mut chars = raw.trim().chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',' | ' ')) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(format!("label {name:?} has no quoted value"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => return Err(format!("label {name:?} ends inside an escape")),
                },
                Some(c) => value.push(c),
                None => return Err(format!("label {name:?} has an unterminated value")),
            }
        }
        out.insert(name.trim().to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_handle_escapes() {
        let l = parse_labels(r#"a="x \"y\"",b="1\\2""#).unwrap();
        assert_eq!(l["a"], "x \"y\"");
        assert_eq!(l["b"], "1\\2");
        assert!(parse_labels(r#"a="open"#).is_err());
    }
}
