//! A call's label combination ("series"), bounded once and shared by every output.
//!
//! Model names come from clients, so their values pass the [`LabelGuard`]
//! before any output sees them. Looking up and hashing ten label sets per call
//! was a tenth of the proxy's CPU (issue 6), so each distinct combination is
//! kept as a [`Series`]: found under one read lock per call, it carries the
//! bounded values and, per output, a slot where that output keeps what it built
//! for these values (metric children, OTel attributes) on first use. The slots
//! are typed by the output that owns them, so this module knows no backend.

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock, RwLock};

use super::labels::LabelGuard;
use super::names::{label, value};
use crate::call::Call;
use crate::genai::attribution::Dimension;
use crate::genai::provider::Provider;
use crate::genai::request::Operation;

/// Most distinct label combinations whose series are kept ready; past it a call's
/// series is built for that call only (client-chosen model names can't grow it).
const SERIES_CACHE_MAX: usize = 4096;

/// Longest raw values (summed) a cached series keeps: model names are short, and a
/// client sending huge ones shouldn't park them in memory.
const SERIES_KEY_MAX_BYTES: usize = 512;

/// The client-controlled label values of one call, bounded once and shared by
/// every output.
#[derive(Debug, Clone)]
pub struct BoundedLabels {
    pub model: String,
    /// Configured per route, not client-controlled: not bounded.
    pub provider: Provider,
    pub request_model: String,
    pub response_model: Option<String>,
    pub server_address: String,
    pub error_type: Option<String>,
    /// `--metric-dimensions` labels and their bounded values (`none` when absent),
    /// for the lab's three counters; empty unless opted in.
    pub dimensions: Vec<(&'static str, String)>,
}

impl BoundedLabels {
    /// The lab's `status` label.
    pub fn status(&self) -> &'static str {
        if self.error_type.is_some() {
            value::STATUS_ERROR
        } else {
            value::STATUS_SUCCESS
        }
    }
}

/// The raw values that decide a call's labels.
#[derive(Debug, PartialEq, Eq)]
struct SeriesKey {
    operation: Option<Operation>,
    provider: Provider,
    request_model: Option<String>,
    response_model: Option<String>,
    server_address: String,
    error_type: Option<String>,
    dimensions: Vec<Option<String>>,
}

impl SeriesKey {
    fn of(call: &Call, error_type: Option<&str>, dims: &[Option<&str>]) -> SeriesKey {
        SeriesKey {
            dimensions: dims.iter().map(|d| d.map(str::to_owned)).collect(),
            operation: call.operation,
            provider: call.provider.clone(),
            request_model: call.request.model.clone(),
            response_model: call.response.model.clone(),
            server_address: call.server_address.clone(),
            error_type: error_type.map(str::to_owned),
        }
    }

    fn len(&self) -> usize {
        self.request_model.as_ref().map_or(0, String::len)
            + self.response_model.as_ref().map_or(0, String::len)
            + self.server_address.len()
            + self.error_type.as_ref().map_or(0, String::len)
            + self
                .dimensions
                .iter()
                .map(|d| d.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }

    fn matches(&self, call: &Call, error_type: Option<&str>, dims: &[Option<&str>]) -> bool {
        self.operation == call.operation
            && self.provider == call.provider
            && self.request_model.as_deref() == call.request.model.as_deref()
            && self.response_model.as_deref() == call.response.model.as_deref()
            && self.server_address == call.server_address
            && self.error_type.as_deref() == error_type
            && self.dimensions.len() == dims.len()
            && self
                .dimensions
                .iter()
                .zip(dims)
                .all(|(a, b)| a.as_deref() == *b)
    }
}

/// What an output keeps per series, made on first use.
type SlotValue = OnceLock<Box<dyn Any + Send + Sync>>;

/// One label combination: its bounded values and each output's slot, shared by
/// every call with the same values.
#[derive(Debug)]
pub struct Series {
    key: SeriesKey,
    pub labels: BoundedLabels,
    slots: Box<[SlotValue]>,
}

/// An output's slot in every [`Series`] of one [`SeriesCache`], holding a `T`.
#[derive(Debug)]
pub struct Slot<T> {
    index: usize,
    _holds: PhantomData<fn() -> T>,
}

impl Series {
    /// What the owner of `slot` keeps for this series: made (`T::default()`) on
    /// first use and shared by later calls. A slot taken from another cache (a
    /// mistake) gets a fresh value for this call: nothing recorded is lost.
    pub fn slot<T: Default + Clone + Send + Sync + 'static>(&self, slot: &Slot<T>) -> Cow<'_, T> {
        self.slots
            .get(slot.index)
            .and_then(|s| s.get_or_init(|| Box::new(T::default())).downcast_ref::<T>())
            .map_or_else(|| Cow::Owned(T::default()), Cow::Borrowed)
    }
}

/// The series of recent label combinations, and the guard bounding their values.
#[derive(Debug)]
pub struct SeriesCache {
    guard: LabelGuard,
    /// `--metric-dimensions`, each with its label name.
    dimensions: Vec<(Dimension, &'static str)>,
    series: RwLock<HashMap<u64, Arc<Series>>>,
    hasher: RandomState,
    slots: usize,
}

impl SeriesCache {
    /// Each label name admits `max_label_values` distinct values of at most
    /// `max_label_length` bytes (see [`LabelGuard`]).
    pub fn new(max_label_values: usize, max_label_length: usize) -> SeriesCache {
        SeriesCache {
            guard: LabelGuard::new(max_label_values, max_label_length),
            dimensions: Vec::new(),
            series: RwLock::new(HashMap::new()),
            hasher: RandomState::new(),
            slots: 0,
        }
    }

    /// Adds the opt-in attribution labels (`--metric-dimensions`) to the lab's counters.
    pub fn with_dimensions(mut self, dimensions: &[Dimension]) -> SeriesCache {
        self.dimensions = dimensions
            .iter()
            // configured once at start, a handful at most: their names live as long as the process
            .map(|d| (d.clone(), &*Box::leak(d.label().into_boxed_str())))
            .collect();
        self
    }

    /// A new slot in every series, for one output; taken while the outputs are
    /// built, before the first call.
    pub fn slot<T>(&mut self) -> Slot<T> {
        self.slots += 1;
        Slot {
            index: self.slots - 1,
            _holds: PhantomData,
        }
    }

    /// The series of `call`: its label values bounded, from the cache when these
    /// values were seen before. `error_type`: `call.error_type()`, which the caller
    /// has at hand.
    pub fn series(&self, call: &Call, error_type: Option<&str>) -> Arc<Series> {
        let dims: Vec<Option<&str>> = self
            .dimensions
            .iter()
            .map(|(d, _)| d.value(&call.who))
            .collect();
        let hash = self.hasher.hash_one((
            call.operation,
            call.provider.as_str(),
            call.request.model.as_deref(),
            call.response.model.as_deref(),
            call.server_address.as_str(),
            error_type,
            &dims,
        ));
        // one read lock per call; a full cache is never write-locked again
        let mut room = false;
        if let Ok(cache) = self.series.read() {
            if let Some(s) = cache.get(&hash) {
                if s.key.matches(call, error_type, &dims) {
                    return s.clone();
                }
            }
            room = cache.len() < SERIES_CACHE_MAX;
        }
        let series = Arc::new(Series {
            key: SeriesKey::of(call, error_type, &dims),
            labels: self.bound(call, error_type, &dims),
            slots: (0..self.slots).map(|_| OnceLock::new()).collect(),
        });
        if room && series.key.len() <= SERIES_KEY_MAX_BYTES {
            if let Ok(mut cache) = self.series.write() {
                if cache.len() < SERIES_CACHE_MAX {
                    cache.entry(hash).or_insert_with(|| series.clone());
                }
            }
        }
        series
    }

    fn bound(&self, call: &Call, error_type: Option<&str>, dims: &[Option<&str>]) -> BoundedLabels {
        let g = &self.guard;
        BoundedLabels {
            dimensions: self
                .dimensions
                .iter()
                .zip(dims)
                // `none` (no value) is a fixed value, like `other`: it takes no slot
                .map(|((_, label), v)| {
                    let bounded = v.map_or_else(|| value::NONE.to_owned(), |v| g.bound(label, v));
                    (*label, bounded)
                })
                .collect(),
            model: g.bound(
                label::MODEL,
                call.request.model.as_deref().unwrap_or(value::UNKNOWN),
            ),
            provider: call.provider.clone(),
            request_model: g.bound(
                label::GEN_AI_REQUEST_MODEL,
                call.request.model.as_deref().unwrap_or(value::UNKNOWN),
            ),
            response_model: call
                .response
                .model
                .as_deref()
                .map(|m| g.bound(label::GEN_AI_RESPONSE_MODEL, m)),
            server_address: g.bound(label::SERVER_ADDRESS, &call.server_address),
            error_type: error_type.map(|e| g.bound(label::ERROR_TYPE, e)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::call::Outcome;
    use crate::genai::request::RequestFacts;

    /// A chat call to `model` (the other telemetry tests use it too).
    pub(crate) fn chat(model: &str) -> Call {
        let request = RequestFacts {
            model: Some(model.to_owned()),
            ..RequestFacts::default()
        };
        Call::new(
            Some(Operation::ChatCompletions),
            request,
            "POST".into(),
            "/v1/chat/completions".into(),
            Provider::default(),
            "api.openai.com".into(),
            443,
        )
    }

    #[test]
    fn calls_with_the_same_labels_share_a_series_and_others_do_not() {
        let m = SeriesCache::new(100, 1024);
        let a = m.series(&chat("gpt-4o"), None);
        let b = m.series(&chat("gpt-4o"), None);
        assert!(Arc::ptr_eq(&a, &b));
        let mut failed = chat("gpt-4o");
        failed.outcome = Outcome::Cancelled;
        let c = m.series(&failed, failed.error_type().as_deref());
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.labels.error_type.as_deref(), Some("cancelled"));
        let d = m.series(&chat("gpt-4o-mini"), None);
        assert_eq!(d.labels.model, "gpt-4o-mini");
        // a model name too long to cache still gets its (bounded) labels
        let long = "m".repeat(SERIES_KEY_MAX_BYTES + 1);
        let e = m.series(&chat(&long), None);
        let f = m.series(&chat(&long), None);
        assert!(!Arc::ptr_eq(&e, &f));
        assert_eq!(e.labels.model, long);
    }

    #[test]
    fn a_slot_is_kept_per_series_and_a_foreign_slot_is_not() {
        let mut m = SeriesCache::new(100, 1024);
        let counts: Slot<Arc<OnceLock<u32>>> = m.slot();
        let names: Slot<String> = m.slot();
        let s = m.series(&chat("gpt-4o"), None);
        let kept = s.slot(&counts);
        assert!(matches!(kept, Cow::Borrowed(_)));
        kept.get_or_init(|| 7);
        // the same series, found again, has the value of the first call
        let again = m.series(&chat("gpt-4o"), None);
        assert_eq!(again.slot(&counts).get(), Some(&7));
        assert_eq!(*again.slot(&names), "");
        // another series starts empty
        assert_eq!(
            m.series(&chat("gpt-4o-mini"), None).slot(&counts).get(),
            None
        );
        // a slot taken from another cache: a fresh value, never the wrong type
        let mut other = SeriesCache::new(100, 1024);
        let _first: Slot<String> = other.slot();
        let foreign: Slot<Arc<OnceLock<u32>>> = other.slot();
        let fresh = s.slot(&foreign);
        assert!(matches!(fresh, Cow::Owned(_)));
        assert_eq!(fresh.get(), None);
    }
}
