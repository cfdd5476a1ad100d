//! Bounded label values.
//!
//! Model names come from clients, so a client sending random names could
//! otherwise create unbounded series and take Prometheus down. Each label
//! name admits `--max-label-values` distinct values (across all metrics) of
//! at most `--max-label-length` bytes (a longer one is `other`: one 1 MiB
//! model name repeated on every bucket line once made `/metrics` 130 MB);
//! later newcomers fold into `other`. Admitted values are looked up under a
//! read lock, so the common case never contends.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use super::names::value::OTHER;

#[derive(Debug)]
pub struct LabelGuard {
    max: usize,
    max_len: usize,
    seen: RwLock<HashMap<&'static str, HashSet<String>>>,
}

impl LabelGuard {
    pub fn new(max: usize, max_len: usize) -> Self {
        LabelGuard {
            max,
            max_len,
            seen: RwLock::new(HashMap::new()),
        }
    }

    /// `value` if admitted for `label`, else `other`.
    pub fn bound(&self, label: &'static str, value: &str) -> String {
        if value == OTHER || value.len() > self.max_len {
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
        let g = LabelGuard::new(2, 128);
        assert_eq!(g.bound("model", "a"), "a");
        assert_eq!(g.bound("model", "b"), "b");
        assert_eq!(g.bound("model", "c"), "other");
        assert_eq!(g.bound("model", "a"), "a");
        assert_eq!(g.bound("model", "other"), "other");
        assert_eq!(g.bound("server_address", "c"), "c");
    }

    #[test]
    fn long_values_are_other_and_take_no_slot() {
        let g = LabelGuard::new(2, 4);
        assert_eq!(g.bound("model", &"m".repeat(5)), "other");
        assert_eq!(g.bound("model", "abcd"), "abcd");
        assert_eq!(g.bound("model", "efgh"), "efgh");
    }
}
