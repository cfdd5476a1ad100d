//! `/api/summary`: totals by model over a window, with latency percentiles.
//!
//! Counts, tokens and cost since start come from running totals, so they stay
//! exact after the ring has forgotten old calls; a shorter window, and every
//! percentile, can only be computed from the calls still in the ring, and the
//! answer says (`complete`) whether the ring still held all of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{Entry, Live, Totals, rfc3339};

/// What `?window=` names: the last `Duration`, or everything since start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Window {
    Last(Duration),
    SinceStart,
}

impl Window {
    /// `5m`, `1h`, any duration (`30s`), or `all`; absent means `5m`.
    pub(crate) fn parse(s: Option<&str>) -> Result<Window, String> {
        match s.map(str::trim) {
            None | Some("") => Ok(Window::Last(Duration::from_secs(300))),
            Some("all" | "start") => Ok(Window::SinceStart),
            Some(s) => match crate::config::parse_positive_duration(s) {
                Ok(d) => Ok(Window::Last(d)),
                Err(e) => Err(format!("window: {e}, or all")),
            },
        }
    }
}

#[derive(Debug, Serialize)]
struct ModelSummary {
    model: String,
    #[serde(flatten)]
    totals: Totals,
    duration_p50_seconds: Option<f64>,
    duration_p95_seconds: Option<f64>,
    time_to_first_chunk_p50_seconds: Option<f64>,
    time_to_first_chunk_p95_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    window_seconds: Option<f64>,
    /// When tokentap started (the start of the `all` window).
    started: String,
    /// The ring still held every call of the window (percentiles and a short
    /// window's totals are over the calls it holds).
    complete: bool,
    #[serde(flatten)]
    totals: Totals,
    models: Vec<ModelSummary>,
}

/// The summary of `live` over `window`, as of `now`.
pub(crate) fn summarize(live: &Live, window: Window, now: SystemTime) -> Summary {
    let (ring, since_start, recorded) = live.snapshot();
    let (from, window_seconds) = match window {
        Window::Last(d) => (
            now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH),
            Some(d),
        ),
        Window::SinceStart => (live.started(), None),
    };
    let held: Vec<&Arc<Entry>> = ring.iter().filter(|e| e.at >= from).collect();
    // calls were evicted, and the oldest kept one is inside the window: some may be missing
    let evicted = recorded > ring.len() as u64;
    let complete = !evicted || ring.first().is_some_and(|oldest| oldest.at < from);
    let mut groups: BTreeMap<&str, Vec<&Arc<Entry>>> = BTreeMap::new();
    for e in &held {
        groups.entry(e.model_label.as_str()).or_default().push(e);
    }
    let totals_by_model: BTreeMap<String, Totals> = match window {
        Window::SinceStart => since_start,
        Window::Last(_) => groups
            .iter()
            .map(|(m, es)| {
                let mut t = Totals::default();
                es.iter().for_each(|e| t.add(e));
                ((*m).to_owned(), t)
            })
            .collect(),
    };
    let mut totals = Totals::default();
    let models = totals_by_model
        .into_iter()
        .map(|(model, t)| {
            totals.merge(&t);
            let es = groups.get(model.as_str()).map_or(&[][..], Vec::as_slice);
            let durations: Vec<f64> = es.iter().map(|e| e.duration).collect();
            let ttfcs: Vec<f64> = es.iter().filter_map(|e| e.time_to_first_chunk).collect();
            ModelSummary {
                totals: t,
                duration_p50_seconds: percentile(durations.clone(), 0.50),
                duration_p95_seconds: percentile(durations, 0.95),
                time_to_first_chunk_p50_seconds: percentile(ttfcs.clone(), 0.50),
                time_to_first_chunk_p95_seconds: percentile(ttfcs, 0.95),
                model,
            }
        })
        .collect();
    Summary {
        window_seconds: window_seconds.map(|d| d.as_secs_f64()),
        started: rfc3339(live.started()),
        complete,
        totals,
        models,
    }
}

/// The nearest-rank `p` percentile (an observed value, never interpolated).
fn percentile(mut v: Vec<f64>, p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = (p * v.len() as f64).ceil() as usize;
    v.get(rank.saturating_sub(1)).copied()
}

impl Totals {
    fn merge(&mut self, o: &Totals) {
        self.calls += o.calls;
        self.errors += o.errors;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cost_usd += o.cost_usd;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(v.clone(), 0.5), Some(50.0));
        assert_eq!(percentile(v, 0.95), Some(95.0));
        assert_eq!(percentile(vec![3.0], 0.95), Some(3.0));
        assert_eq!(percentile(Vec::new(), 0.5), None);
    }

    #[test]
    fn windows_parse() {
        assert_eq!(
            Window::parse(Some("5m")),
            Ok(Window::Last(Duration::from_secs(300)))
        );
        assert_eq!(Window::parse(Some("all")), Ok(Window::SinceStart));
        assert_eq!(
            Window::parse(None),
            Ok(Window::Last(Duration::from_secs(300)))
        );
        assert!(Window::parse(Some("soon")).is_err());
        assert!(Window::parse(Some("0s")).is_err());
    }
}
