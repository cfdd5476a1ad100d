//! `--baggage-keys` and `--metric-dimensions`, checked once at start.
//!
//! Each metric dimension multiplies series, and a baggage key becomes both a
//! span attribute and (opted in) a label, so both lists are refused at start
//! when they are malformed or would clash with the labels the lab's queries
//! rely on, rather than quietly producing odd series later.

use crate::genai::attribution::Dimension;

/// `--baggage-keys`: W3C baggage keys (tokens), without duplicates.
pub(super) fn check_baggage_keys(keys: Vec<String>) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for k in keys.into_iter().map(|k| k.trim().to_owned()) {
        let token = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_graphic() && !b"\"(),/:;<=>?@[\\]{}".contains(&b));
        if !token {
            return Err(format!("--baggage-keys: {k:?} is not a baggage key"));
        }
        if !out.contains(&k) {
            out.push(k);
        }
    }
    Ok(out)
}

/// `--metric-dimensions`: known names or listed baggage keys, each label once,
/// none clashing with the lab's own labels.
pub(super) fn check_dimensions(
    names: &[String],
    baggage_keys: &[String],
) -> Result<Vec<Dimension>, String> {
    const TAKEN: [&str; 4] = ["model", "provider", "status", "type"];
    let mut out: Vec<Dimension> = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let d = Dimension::parse(name, baggage_keys)
            .map_err(|e| format!("--metric-dimensions: {e}"))?;
        let label = d.label();
        if TAKEN.contains(&label.as_str()) {
            return Err(format!(
                "--metric-dimensions: {name:?} would be the label {label:?}, which llm_* metrics already have"
            ));
        }
        if out.iter().any(|o| o.label() == label) {
            return Err(format!(
                "--metric-dimensions: the label {label:?} is named twice"
            ));
        }
        out.push(d);
    }
    Ok(out)
}
