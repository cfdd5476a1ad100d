//! The live view's memory: the last `--recent-calls` model calls, kept in
//! process so `/ui` and `/api/*` can show traffic without a collector.
//!
//! It is one more output of the recorder ([`CallSink`]), so a call appears
//! here exactly when (and as) every other signal records it. Each call keeps
//! the attributes of the same builder the span uses (`spans::attributes`),
//! so the page's details and the exported span cannot disagree. Its JSON is
//! written when somebody reads it, not when the call ends: serializing every
//! call on the call's own path cost a third of a proxied call's CPU in the
//! closed-loop benchmark, for pages that are mostly never opened. Recording
//! takes one short lock (a ring push and a totals update) and a broadcast
//! that never waits: a slow live-view client skips calls, traffic never
//! waits for it.
//!
//! - `api`: the HTTP side (`/ui`, its assets, `/api/calls`, `/api/calls/stream`, `/api/summary`)
//! - `summary`: totals and percentiles over a window

pub(crate) mod api;
mod summary;

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry::{Array, KeyValue, Value};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::call::Call;
use crate::telemetry::bounded;
use crate::telemetry::sink::{CallSink, Recorded};
use crate::telemetry::spans;

/// Calls a live-view subscriber may fall behind by before it skips some.
const STREAM_BACKLOG: usize = 1024;

/// One recorded call: what filters and summaries read, and its JSON object.
#[derive(Debug)]
pub(crate) struct Entry {
    /// When the call ended.
    pub(crate) at: SystemTime,
    pub(crate) model: Option<String>,
    /// The model as metrics label it (bounded: rare names may be `other`), for grouping.
    pub(crate) model_label: String,
    pub(crate) provider: String,
    pub(crate) error: bool,
    pub(crate) project: Option<String>,
    pub(crate) key_id: Option<String>,
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) cost: Option<f64>,
    pub(crate) duration: f64,
    pub(crate) time_to_first_chunk: Option<f64>,
    /// The rest of what the API shows (SPEC §13), serialized on read.
    shown: Shown,
}

/// The fields only the JSON object needs.
#[derive(Debug)]
struct Shown {
    operation: &'static str,
    response_model: Option<String>,
    http_status: Option<u16>,
    error_type: Option<String>,
    trace: Option<(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)>,
    attributes: Vec<KeyValue>,
}

impl Entry {
    /// The call as the API shows it (SPEC §13).
    pub(crate) fn json(&self) -> Bytes {
        let shown = &self.shown;
        let object = CallJson {
            time: rfc3339(self.at),
            operation: shown.operation,
            model: self.model.as_deref().map(Cow::Borrowed),
            response_model: shown.response_model.as_deref().map(Cow::Borrowed),
            provider: &self.provider,
            status: if self.error { "error" } else { "success" },
            http_status: shown.http_status,
            error_type: shown.error_type.as_deref().map(Cow::Borrowed),
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_usd: self.cost,
            duration_seconds: self.duration,
            time_to_first_chunk_seconds: self.time_to_first_chunk,
            project: self.project.clone(),
            key_id: self.key_id.clone(),
            trace_id: shown.trace.map(|(t, _)| t.to_string()),
            span_id: shown.trace.map(|(_, s)| s.to_string()),
            attributes: Attributes(&shown.attributes),
        };
        // every value is plain data: a failure would be a bug, shown as an empty object
        Bytes::from(serde_json::to_vec(&object).unwrap_or_else(|_| b"{}".to_vec()))
    }
}

/// Totals of every call since start, per (bounded) model: exact even after
/// the ring has forgotten the calls.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cost_usd: f64,
}

impl Totals {
    fn add(&mut self, e: &Entry) {
        self.calls += 1;
        self.errors += u64::from(e.error);
        self.input_tokens += e.input_tokens.unwrap_or(0);
        self.output_tokens += e.output_tokens.unwrap_or(0);
        self.cost_usd += e.cost.unwrap_or(0.0);
    }
}

#[derive(Debug, Default)]
struct Inner {
    ring: VecDeque<Arc<Entry>>,
    since_start: BTreeMap<String, Totals>,
    /// Calls ever recorded (also the SSE event id).
    recorded: u64,
}

/// The ring of recent calls and the feed of new ones.
#[derive(Debug)]
pub struct Live {
    capacity: usize,
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Entry>>,
    started: SystemTime,
}

impl Live {
    /// A ring of `capacity` calls (at least one).
    pub fn new(capacity: usize) -> Live {
        let capacity = capacity.clamp(1, crate::config::MAX_RECENT_CALLS);
        Live {
            capacity,
            inner: Mutex::new(Inner {
                ring: VecDeque::with_capacity(capacity.min(4096)),
                ..Inner::default()
            }),
            events: broadcast::channel(STREAM_BACKLOG).0,
            started: SystemTime::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // a panic elsewhere while holding it leaves consistent data (pushes are atomic)
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The recent calls, newest first.
    pub(crate) fn newest_first(&self) -> Vec<Arc<Entry>> {
        self.lock().ring.iter().rev().cloned().collect()
    }

    /// A feed of calls recorded from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.events.subscribe()
    }

    /// Everything a summary needs, taken under one lock: the ring (oldest
    /// first), the totals since start, and how many calls were ever recorded.
    pub(crate) fn snapshot(&self) -> (Vec<Arc<Entry>>, BTreeMap<String, Totals>, u64) {
        let inner = self.lock();
        (
            inner.ring.iter().cloned().collect(),
            inner.since_start.clone(),
            inner.recorded,
        )
    }

    pub(crate) fn started(&self) -> SystemTime {
        self.started
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn push(&self, entry: Entry) {
        let entry = Arc::new(entry);
        {
            let mut inner = self.lock();
            if inner.ring.len() == self.capacity {
                inner.ring.pop_front();
            }
            inner.ring.push_back(entry.clone());
            inner.recorded += 1;
            match inner.since_start.get_mut(&entry.model_label) {
                Some(t) => t.add(&entry),
                None => {
                    let mut t = Totals::default();
                    t.add(&entry);
                    inner.since_start.insert(entry.model_label.clone(), t);
                }
            }
        }
        // no subscriber is not an error; a full channel drops the oldest for laggards
        let _ = self.events.send(entry);
    }
}

impl CallSink for Live {
    fn record(&self, call: &Call, r: &Recorded) {
        let Some(op) = call.operation else {
            return; // not a model call: not in llm_requests_total, not here either
        };
        let at = call.ended.unwrap_or_else(SystemTime::now);
        let attributes = spans::shared_attributes(call, r);
        let usage = call.usage();
        let entry = Entry {
            at,
            // client-chosen strings are cut as on the span: a ring of huge names can't grow
            model: call.model().map(|m| bounded::cut(m).into_owned()),
            model_label: r.series.labels.model.clone(),
            provider: call.provider.as_str().to_owned(),
            error: r.error_type.is_some(),
            // the same values the span's attributes carry (`spans::attribution`)
            project: call.who.project.clone(),
            key_id: call.who.key_id.clone(),
            input_tokens: usage.map(|u| u.input_tokens),
            output_tokens: usage.map(|u| u.output_tokens),
            cost: call.cost,
            duration: call.duration.as_secs_f64(),
            time_to_first_chunk: ttfc(call),
            shown: Shown {
                operation: op.name(),
                response_model: call
                    .response
                    .model
                    .as_deref()
                    .map(|m| bounded::cut(m).into_owned()),
                http_status: call.status,
                error_type: r
                    .error_type
                    .as_deref()
                    .map(|e| bounded::cut(e).into_owned()),
                trace: r
                    .span
                    .is_valid()
                    .then(|| (r.span.trace_id(), r.span.span_id())),
                attributes: attributes.to_vec(),
            },
        };
        self.push(entry);
    }
}

/// Time to first chunk, for streams (as the span's attribute).
fn ttfc(call: &Call) -> Option<f64> {
    call.streamed
        .then_some(call.time_to_first_chunk)
        .flatten()
        .map(|d| d.as_secs_f64())
}

/// One call as `/api/calls` and the stream show it; the names are SPEC §13's.
#[derive(Serialize)]
struct CallJson<'a> {
    time: String,
    operation: &'static str,
    model: Option<Cow<'a, str>>,
    response_model: Option<Cow<'a, str>>,
    provider: &'a str,
    status: &'static str,
    http_status: Option<u16>,
    error_type: Option<Cow<'a, str>>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cost_usd: Option<f64>,
    duration_seconds: f64,
    time_to_first_chunk_seconds: Option<f64>,
    project: Option<String>,
    key_id: Option<String>,
    trace_id: Option<String>,
    span_id: Option<String>,
    attributes: Attributes<'a>,
}

/// The span's attributes as one JSON object, in the order the span gets them,
/// written straight from the attribute list (no intermediate JSON tree).
struct Attributes<'a>(&'a [KeyValue]);

impl Serialize for Attributes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for kv in self.0 {
            m.serialize_entry(kv.key.as_str(), &AttributeValue(&kv.value))?;
        }
        m.end()
    }
}

/// An attribute value as JSON (non-finite numbers, which JSON lacks, as `null`).
struct AttributeValue<'a>(&'a Value);

impl Serialize for AttributeValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let finite = |f: &f64| f.is_finite().then_some(*f);
        match self.0 {
            Value::Bool(b) => s.serialize_bool(*b),
            Value::I64(i) => s.serialize_i64(*i),
            Value::F64(f) => finite(f).serialize(s),
            Value::String(v) => s.serialize_str(v.as_str()),
            Value::Array(Array::Bool(v)) => v.serialize(s),
            Value::Array(Array::I64(v)) => v.serialize(s),
            Value::Array(Array::F64(v)) => s.collect_seq(v.iter().map(finite)),
            Value::Array(Array::String(v)) => s.collect_seq(v.iter().map(|x| x.as_str())),
            other => s.collect_str(other),
        }
    }
}

/// `2026-12-01T10:00:00.123Z` (RFC 3339, UTC, milliseconds).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_083_200_123); // 2026-12-01
        assert_eq!(rfc3339(t), "2026-12-01T00:00:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661); // 2000-02-29 01:01:01
        assert_eq!(rfc3339(leap), "2000-02-29T01:01:01.000Z");
    }

    #[test]
    fn attributes_become_one_json_object_in_their_order() {
        let kvs = [
            KeyValue::new("z", f64::NAN),
            KeyValue::new("b", 3_i64),
            KeyValue::new("a", "x\"y"),
            KeyValue::new(
                "s",
                Value::Array(Array::String(vec!["stop".into(), "length".into()])),
            ),
            KeyValue::new("f", Value::Array(Array::F64(vec![0.5, f64::INFINITY]))),
            KeyValue::new("t", true),
        ];
        let json = serde_json::to_string(&Attributes(&kvs)).expect("serializes");
        assert_eq!(
            json,
            r#"{"z":null,"b":3,"a":"x\"y","s":["stop","length"],"f":[0.5,null],"t":true}"#
        );
    }
}
