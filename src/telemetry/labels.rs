//! Bounded label values.
//!
//! Model names come from clients, so a client sending random names could
//! otherwise create unbounded series and take Prometheus down. Each label
//! name admits `--max-label-values` distinct values (across all metrics);
//! later newcomers fold into `other`. Admitted values are looked up under a
//! read lock, so the common case never contends.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use super::names::value::OTHER;

#[derive(Debug)]
pub struct LabelGuard {
    max: usize,
    seen: RwLock<HashMap<&'static str, HashSet<String>>>,
}

impl LabelGuard {
    pub fn new(max: usize) -> Self {
        LabelGuard {
            max,
            seen: RwLock::new(HashMap::new()),
        }
    }

    /// `value` if admitted for `label`, else `other`.
    pub fn bound(&self, label: &'static str, value: &str) -> String {
        if value == OTHER {
            return OTHER.to_owned();
        }
        if let Ok(seen) = self.seen.read() {
            if let Some(set) = seen.get(label) {
                if set.contains(value) {
                    return value.to_owned();
                }
                if set.len() >= self.max {
                    return OTHER.to_owned();
                }
            }
        }
        let Ok(mut seen) = self.seen.write() else {
            return OTHER.to_owned();
        };
        let set = seen.entry(label).or_default();
        if set.contains(value) || set.len() < self.max {
            set.insert(value.to_owned());
            value.to_owned()
        } else {
            OTHER.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_past_cap_per_label_name() {
        let g = LabelGuard::new(2);
        assert_eq!(g.bound("model", "a"), "a");
        assert_eq!(g.bound("model", "b"), "b");
        assert_eq!(g.bound("model", "c"), "other");
        assert_eq!(g.bound("model", "a"), "a");
        assert_eq!(g.bound("model", "other"), "other");
        assert_eq!(g.bound("server_address", "c"), "c");
    }
}
