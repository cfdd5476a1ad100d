//! OTLP trace export requests written straight from the SDK's spans.
//!
//! The OTLP crate converts each batch into the protobuf crate's structs (a `String` for every
//! attribute key and value), encodes them, computing each nested length again at every level,
//! and drops them: about 50k instructions a span, the largest part of a proxied call. The
//! bytes here are the same message, `ExportTraceServiceRequest`, written in one pass per span
//! from the borrowed spans. Fields holding their default value are left out, as protobuf
//! encoders do; `oneof` members and present messages are always written.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

const VARINT: u32 = 0;
const I64: u32 = 1;
const LEN: u32 = 2;
const I32: u32 = 5;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from((field << 3) | wire));
}

/// Bytes a length-delimited field of `len` bytes takes (all field numbers here are < 16).
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn bytes_if_any(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        bytes(out, field, b);
    }
}

fn uint_if_any(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(out, field, VARINT);
        varint(out, v);
    }
}

fn fixed64_if_any(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(out, field, I64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed32_if_any(out: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(out, field, I32);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Writes a nested message: `body` writes it into `scratch`, which is then copied in.
fn message(out: &mut Vec<u8>, field: u32, scratch: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    scratch.clear();
    body(scratch);
    bytes(out, field, scratch);
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Length of an `AnyValue` holding `v`.
fn any_len(v: &Value) -> usize {
    match v {
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        Value::String(s) => field_len(s.as_str().len()),
        Value::Array(a) => field_len(array_len(a)),
        _ => 0,
    }
}

fn array_len(a: &Array) -> usize {
    match a {
        Array::Bool(v) => v.len() * field_len(2),
        Array::I64(v) => v.iter().map(|i| field_len(1 + varint_len(*i as u64))).sum(),
        Array::F64(v) => v.len() * field_len(9),
        Array::String(v) => v
            .iter()
            .map(|s| field_len(field_len(s.as_str().len())))
            .sum(),
        _ => 0,
    }
}

/// The body of an `AnyValue`: the one member of its `oneof` (`{}` for a kind it lacks).
fn any(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => {
            tag(out, 2, VARINT);
            out.push(u8::from(*b));
        }
        Value::I64(i) => {
            tag(out, 3, VARINT);
            varint(out, *i as u64);
        }
        Value::F64(x) => {
            tag(out, 4, I64);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Value::String(s) => bytes(out, 1, s.as_str().as_bytes()),
        Value::Array(a) => {
            tag(out, 5, LEN);
            varint(out, array_len(a) as u64);
            let mut each = |v: &Value| {
                tag(out, 1, LEN);
                varint(out, any_len(v) as u64);
                any(out, v);
            };
            match a {
                Array::Bool(v) => v.iter().for_each(|b| each(&Value::Bool(*b))),
                Array::I64(v) => v.iter().for_each(|i| each(&Value::I64(*i))),
                Array::F64(v) => v.iter().for_each(|x| each(&Value::F64(*x))),
                // written as the `AnyValue` of a string, without making one
                Array::String(v) => v.iter().for_each(|s| {
                    let b = s.as_str().as_bytes();
                    tag(out, 1, LEN);
                    varint(out, field_len(b.len()) as u64);
                    bytes(out, 1, b);
                }),
                _ => {}
            }
        }
        _ => {}
    }
}

/// `KeyValue`s as repeated field `field`.
fn attributes<'a>(
    out: &mut Vec<u8>,
    field: u32,
    kvs: impl IntoIterator<Item = (&'a str, &'a Value)>,
) {
    for (k, v) in kvs {
        let value_len = any_len(v);
        let key_len = if k.is_empty() { 0 } else { field_len(k.len()) };
        tag(out, field, LEN);
        varint(out, (key_len + field_len(value_len)) as u64);
        bytes_if_any(out, 1, k.as_bytes());
        tag(out, 2, LEN);
        varint(out, value_len as u64);
        any(out, v);
    }
}

fn pairs(kvs: &[KeyValue]) -> impl Iterator<Item = (&str, &Value)> {
    kvs.iter().map(|kv| (kv.key.as_str(), &kv.value))
}

/// Span and link flags: the trace flags, and that the remote bit is known.
fn flags(remote: bool, cx: &SpanContext) -> u32 {
    u32::from(cx.trace_flags().to_u8()) | 0x100 | if remote { 0x200 } else { 0 }
}

fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn span(out: &mut Vec<u8>, s: &SpanData, scratch: &mut Vec<u8>) {
    let cx = &s.span_context;
    bytes(out, 1, &cx.trace_id().to_bytes());
    bytes(out, 2, &cx.span_id().to_bytes());
    bytes_if_any(out, 3, cx.trace_state().header().as_bytes());
    if s.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes(out, 4, &s.parent_span_id.to_bytes());
    }
    bytes_if_any(out, 5, s.name.as_bytes());
    uint_if_any(out, 6, kind(&s.span_kind));
    fixed64_if_any(out, 7, nanos(s.start_time));
    fixed64_if_any(out, 8, nanos(s.end_time));
    attributes(out, 9, pairs(&s.attributes));
    uint_if_any(out, 10, u64::from(s.dropped_attributes_count));
    for e in s.events.iter() {
        message(out, 11, scratch, |m| {
            fixed64_if_any(m, 1, nanos(e.timestamp));
            bytes_if_any(m, 2, e.name.as_bytes());
            attributes(m, 3, pairs(&e.attributes));
            uint_if_any(m, 4, u64::from(e.dropped_attributes_count));
        });
    }
    uint_if_any(out, 12, u64::from(s.events.dropped_count));
    for l in s.links.iter() {
        message(out, 13, scratch, |m| {
            let lc = &l.span_context;
            bytes(m, 1, &lc.trace_id().to_bytes());
            bytes(m, 2, &lc.span_id().to_bytes());
            bytes_if_any(m, 3, lc.trace_state().header().as_bytes());
            attributes(m, 4, pairs(&l.attributes));
            uint_if_any(m, 5, u64::from(l.dropped_attributes_count));
            fixed32_if_any(m, 6, flags(lc.is_remote(), lc));
        });
    }
    uint_if_any(out, 14, u64::from(s.links.dropped_count));
    message(out, 15, scratch, |m| {
        let (code, text) = match &s.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        bytes_if_any(m, 2, text.as_bytes());
        uint_if_any(m, 3, code);
    });
    fixed32_if_any(out, 16, flags(s.parent_span_is_remote, cx));
}

fn scope(out: &mut Vec<u8>, s: &InstrumentationScope) {
    bytes_if_any(out, 1, s.name().as_bytes());
    bytes_if_any(out, 2, s.version().unwrap_or_default().as_bytes());
    attributes(
        out,
        3,
        s.attributes().map(|kv| (kv.key.as_str(), &kv.value)),
    );
}

/// The `Resource` message of `r`, written once and copied into every request.
pub(crate) fn resource(r: &Resource) -> (Vec<u8>, String) {
    let mut out = Vec::new();
    attributes(&mut out, 1, r.iter().map(|(k, v)| (k.as_str(), v)));
    (out, r.schema_url().unwrap_or_default().to_owned())
}

/// An `ExportTraceServiceRequest` of `spans` under `resource` (from [`resource`]), spans
/// grouped by instrumentation scope in the order the scopes first appear.
#[cfg(test)]
pub(crate) fn request(resource: &(Vec<u8>, String), spans: &[SpanData]) -> Vec<u8> {
    request_paced(resource, spans, usize::MAX, || {})
}

/// [`request`], calling `pace` after every `every` spans written (the exporter lets
/// requests sharing its core run there: `OtlpSpans::export`).
pub(crate) fn request_paced(
    resource: &(Vec<u8>, String),
    spans: &[SpanData],
    every: usize,
    mut pace: impl FnMut(),
) -> Vec<u8> {
    let mut scopes: Vec<(&InstrumentationScope, Vec<&SpanData>)> = Vec::new();
    for s in spans {
        match scopes
            .iter_mut()
            .find(|(sc, _)| **sc == s.instrumentation_scope)
        {
            Some((_, v)) => v.push(s),
            None => scopes.push((&s.instrumentation_scope, vec![s])),
        }
    }
    let (mut one, mut scratch) = (Vec::new(), Vec::new());
    let mut written = 0usize;
    let bodies: Vec<Vec<u8>> = scopes
        .into_iter()
        .map(|(sc, group)| {
            let mut ss = Vec::new();
            message(&mut ss, 1, &mut scratch, |m| scope(m, sc));
            for s in group {
                one.clear();
                span(&mut one, s, &mut scratch);
                bytes(&mut ss, 2, &one);
                written += 1;
                if written % every == 0 {
                    pace();
                }
            }
            bytes_if_any(&mut ss, 3, sc.schema_url().unwrap_or_default().as_bytes());
            ss
        })
        .collect();
    // the `ResourceSpans` is written straight into the request: its length is known by now
    let schema = resource.1.as_bytes();
    let len = field_len(resource.0.len())
        + bodies.iter().map(|b| field_len(b.len())).sum::<usize>()
        + if schema.is_empty() {
            0
        } else {
            field_len(schema.len())
        };
    let mut out = Vec::with_capacity(len + 8);
    tag(&mut out, 1, LEN);
    varint(&mut out, len as u64);
    bytes(&mut out, 1, &resource.0);
    for b in &bodies {
        bytes(&mut out, 2, b);
    }
    bytes_if_any(&mut out, 3, schema);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry::{Array, StringValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    fn cx(t: u128, s: u64, flags: u8, remote: bool, state: &str) -> SpanContext {
        let state = if state.is_empty() {
            TraceState::NONE
        } else {
            TraceState::from_key_value([("v", state)]).expect("state")
        };
        SpanContext::new(
            TraceId::from(t),
            SpanId::from(s),
            TraceFlags::new(flags),
            remote,
            state,
        )
    }

    fn every_value() -> Vec<KeyValue> {
        vec![
            KeyValue::new("s", "text"),
            KeyValue::new("empty", ""),
            KeyValue::new("shared", Value::from(std::sync::Arc::<str>::from("rc"))),
            KeyValue::new("i", 42i64),
            KeyValue::new("neg", -7i64),
            KeyValue::new("zero", 0i64),
            KeyValue::new("f", 0.25f64),
            KeyValue::new("t", true),
            KeyValue::new("no", false),
            KeyValue::new(
                "as",
                Value::Array(Array::String(vec![
                    StringValue::from("a"),
                    StringValue::from(""),
                ])),
            ),
            KeyValue::new("ai", Value::Array(Array::I64(vec![1, -1, 0]))),
            KeyValue::new("af", Value::Array(Array::F64(vec![1.5]))),
            KeyValue::new("ab", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("none", Value::Array(Array::String(Vec::new()))),
            KeyValue::new("", "empty key"),
        ]
    }

    pub(crate) fn span(n: u64, scope: &InstrumentationScope) -> SpanData {
        let t0 = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789 + n);
        let mut events = SpanEvents::default();
        let mut links = SpanLinks::default();
        if n % 2 == 0 {
            events.events.push(Event::new("ev", t0, every_value(), 2));
            events.dropped_count = 1;
            links
                .links
                .push(Link::new(cx(9, 9, 1, true, "l"), every_value(), 3));
            links.dropped_count = 4;
        }
        SpanData {
            span_context: cx(
                u128::from(n) << 64 | 5,
                n + 1,
                (n % 2) as u8,
                false,
                if n % 3 == 0 { "st" } else { "" },
            ),
            parent_span_id: if n % 2 == 0 {
                SpanId::INVALID
            } else {
                SpanId::from(77)
            },
            parent_span_is_remote: n % 4 == 1,
            span_kind: [
                SpanKind::Client,
                SpanKind::Server,
                SpanKind::Internal,
                SpanKind::Producer,
                SpanKind::Consumer,
            ][(n % 5) as usize]
                .clone(),
            name: Cow::Owned(format!("chat m{n}")),
            start_time: t0,
            end_time: t0 + Duration::from_millis(n),
            attributes: every_value(),
            dropped_attributes_count: (n % 3) as u32,
            events,
            links,
            status: match n % 3 {
                0 => Status::Unset,
                1 => Status::Ok,
                _ => Status::error("timeout"),
            },
            instrumentation_scope: scope.clone(),
        }
    }

    #[test]
    fn requests_decode_to_what_the_otlp_crate_builds() {
        let tokentap = InstrumentationScope::builder("tokentap")
            .with_version("1.2.3")
            .build();
        let other = InstrumentationScope::builder("other")
            .with_schema_url("https://schema")
            .with_attributes([KeyValue::new("k", "v")])
            .build();
        let spans: Vec<SpanData> = (0..12)
            .map(|n| span(n, if n % 4 == 3 { &other } else { &tokentap }))
            .collect();
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "tokentap"),
                KeyValue::new("team", "o11y"),
            ])
            .with_schema_url([], "https://resource-schema")
            .build();
        let ours = request(&super::resource(&resource), &spans);
        let decoded = ExportTraceServiceRequest::decode(ours.as_slice()).expect("valid protobuf");
        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans.clone(),
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        assert_eq!(decoded, theirs);
        // byte for byte too: the same fields, in the same order, as prost writes them
        assert_eq!(ours, theirs.encode_to_vec());
        // paced, across both scopes: the same bytes, and a pause after every `every` spans
        for every in [1, 5, 12, 13] {
            let mut paused = 0;
            let paced = request_paced(&super::resource(&resource), &spans, every, || paused += 1);
            assert_eq!(paced, ours, "every {every}");
            assert_eq!(paused, spans.len() / every, "every {every}");
        }
    }
}
