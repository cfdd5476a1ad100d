//! One CLIENT span per proxied request, and W3C trace context in and out.
//!
//! The span starts when the request arrives (so its context can go upstream
//! in `traceparent`) and gets its attributes only when the call ends, from
//! the finished [`Call`] — the same record metrics come from, so spans and
//! metrics never disagree. Building attributes once at the end also keeps
//! the request path free of that work.

use std::cell::Ref;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, Tracer};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracer;

use super::bounded;
use super::names::attr;
use super::sink::{CallSink, Recorded};
use crate::call::Call;
use crate::genai::attribution::Attribution;
use crate::hex;

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return; // no empty `tracestate:` the caller never sent
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Built once: building one hashes its field names (it showed in the per-call profile).
static PROPAGATOR: std::sync::LazyLock<TextMapCompositePropagator> =
    std::sync::LazyLock::new(|| {
        TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ])
    });

/// The caller's context (`traceparent`, `tracestate`, `baggage`), or an empty one.
pub fn extract(headers: &HeaderMap) -> Context {
    if !headers.contains_key("traceparent") && !headers.contains_key("baggage") {
        return Context::new();
    }
    PROPAGATOR.extract_with_context(&Context::new(), &HeaderExtractor(headers))
}

/// Writes `cx`'s span as `traceparent`/`tracestate` into upstream headers, as
/// `TraceContextPropagator` would (only the sampled flag goes out), without its `format!`.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    let flags = sc.trace_flags() & TraceFlags::SAMPLED;
    headers.insert(TRACEPARENT, traceparent(sc, flags.to_u8()));
    HeaderInjector(headers).set("tracestate", sc.trace_state().header());
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// `00-{trace id}-{span id}-{flags}` in lower-case hex (W3C Trace Context).
fn traceparent(sc: &SpanContext, flags: u8) -> HeaderValue {
    let mut out = *b"00-________________________________-________________-__";
    hex::write_lower(&mut out[3..35], &sc.trace_id().to_bytes());
    hex::write_lower(&mut out[36..52], &sc.span_id().to_bytes());
    hex::write_lower(&mut out[53..], &[flags]);
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(""))
}

/// `traceresponse` (W3C Trace Context level 2) for `cx`'s span.
pub fn traceresponse(cx: &Context) -> Option<HeaderValue> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| traceparent(sc, sc.trace_flags().to_u8()))
}

/// Span name (the README, Traces): `{operation} {model}` for model calls, the method otherwise.
pub fn span_name(call: &Call) -> String {
    match (call.operation, call.request.model.as_deref()) {
        (Some(op), Some(model)) => {
            // spelled out, not `format!`: the formatter was ~1k instructions a call
            let (op, model) = (op.name(), bounded::cut(model));
            let mut name = String::with_capacity(op.len() + 1 + model.len());
            name.push_str(op);
            name.push(' ');
            name.push_str(&model);
            name
        }
        (Some(op), None) => op.name().to_owned(),
        (None, _) => call.method.clone(),
    }
}

/// Starts the CLIENT span of `call` under `parent`, timed from `start`.
pub fn start(tracer: &SdkTracer, parent: &Context, call: &Call, start: SystemTime) -> Context {
    let span = tracer
        .span_builder(span_name(call))
        .with_kind(SpanKind::Client)
        .with_start_time(start)
        .start_with_context(tracer, parent);
    parent.with_span(span)
}

/// Who made the call (SPEC §11): project, organization, key id, user, the
/// allow-listed baggage entries, and the agent's conversation.
pub fn attribution(a: &mut Vec<KeyValue>, who: &Attribution, conversation_id: Option<&str>) {
    let fields = [
        (attr::OPENAI_PROJECT, who.project.as_deref()),
        (attr::OPENAI_ORGANIZATION, who.organization.as_deref()),
        (attr::TOKENTAP_KEY_ID, who.key_id.as_deref()),
        (attr::USER_ID, who.user.as_deref()),
        (attr::GEN_AI_CONVERSATION_ID, conversation_id),
    ];
    a.extend(
        fields
            .into_iter()
            .filter_map(|(k, v)| Some(KeyValue::new(k, shared(v?)))),
    );
    a.extend(
        who.baggage
            .iter()
            .map(|(k, v)| KeyValue::new(Arc::<str>::from(k.as_str()), shared(v))),
    );
}

/// A string value whose clones share it: the live view keeps a copy of every call's
/// attributes besides the span's, and a clone of an owned string is an allocation.
fn shared(s: &str) -> Value {
    Value::from(Arc::<str>::from(s))
}

fn strings(v: &[String]) -> Value {
    Value::Array(Array::String(
        v.iter()
            .map(|s| StringValue::from(Arc::<str>::from(s.as_str())))
            .collect(),
    ))
}

/// Everything the finished call reveals, as span attributes; `error_type` is
/// `call.error_type()`.
pub fn attributes(call: &Call, error_type: Option<&str>) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(32);
    let req = &call.request;
    let resp = &call.response;
    if let Some(op) = call.operation {
        a.push(KeyValue::new(attr::GEN_AI_OPERATION_NAME, op.name()));
        a.push(KeyValue::new(
            attr::GEN_AI_PROVIDER_NAME,
            shared(call.provider.as_str()),
        ));
        a.push(KeyValue::new(attr::OPENAI_API_TYPE, op.api_type()));
        if let Some(m) = &req.model {
            a.push(KeyValue::new(attr::GEN_AI_REQUEST_MODEL, shared(m)));
        }
        a.push(KeyValue::new(attr::GEN_AI_REQUEST_STREAM, req.stream));
        let floats = [
            (attr::GEN_AI_REQUEST_TEMPERATURE, req.temperature),
            (attr::GEN_AI_REQUEST_TOP_P, req.top_p),
            (
                attr::GEN_AI_REQUEST_FREQUENCY_PENALTY,
                req.frequency_penalty,
            ),
            (attr::GEN_AI_REQUEST_PRESENCE_PENALTY, req.presence_penalty),
        ];
        a.extend(
            floats
                .into_iter()
                .filter_map(|(k, v)| Some(KeyValue::new(k, v?))),
        );
        let ints = [
            (attr::GEN_AI_REQUEST_MAX_TOKENS, req.max_tokens),
            (attr::GEN_AI_REQUEST_SEED, req.seed),
            (attr::GEN_AI_REQUEST_CHOICE_COUNT, req.choice_count),
        ];
        a.extend(
            ints.into_iter()
                .filter_map(|(k, v)| Some(KeyValue::new(k, v?))),
        );
        if !req.stop_sequences.is_empty() {
            a.push(KeyValue::new(
                attr::GEN_AI_REQUEST_STOP_SEQUENCES,
                strings(&req.stop_sequences),
            ));
        }
        if !req.encoding_formats.is_empty() {
            a.push(KeyValue::new(
                attr::GEN_AI_REQUEST_ENCODING_FORMATS,
                strings(&req.encoding_formats),
            ));
        }
        if let Some(t) = req.output_type {
            a.push(KeyValue::new(attr::GEN_AI_OUTPUT_TYPE, t));
        }
        if let Some(t) = &req.service_tier {
            a.push(KeyValue::new(attr::OPENAI_REQUEST_SERVICE_TIER, shared(t)));
        }
        let strs = [
            (attr::GEN_AI_RESPONSE_ID, &resp.id),
            (attr::GEN_AI_RESPONSE_MODEL, &resp.model),
            (attr::OPENAI_RESPONSE_SERVICE_TIER, &resp.service_tier),
            (
                attr::OPENAI_RESPONSE_SYSTEM_FINGERPRINT,
                &resp.system_fingerprint,
            ),
        ];
        a.extend(
            strs.into_iter()
                .filter_map(|(k, v)| Some(KeyValue::new(k, shared(v.as_deref()?)))),
        );
        if !resp.finish_reasons.is_empty() {
            a.push(KeyValue::new(
                attr::GEN_AI_RESPONSE_FINISH_REASONS,
                strings(&resp.finish_reasons),
            ));
        }
        if call.streamed {
            if let Some(t) = call.time_to_first_chunk {
                a.push(KeyValue::new(
                    attr::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK,
                    t.as_secs_f64(),
                ));
            }
        }
        if let Some(u) = &resp.usage {
            a.push(KeyValue::new(
                attr::GEN_AI_USAGE_INPUT_TOKENS,
                u.input_tokens as i64,
            ));
            a.push(KeyValue::new(
                attr::GEN_AI_USAGE_OUTPUT_TOKENS,
                u.output_tokens as i64,
            ));
            if let Some(c) = u.cached_input_tokens {
                a.push(KeyValue::new(
                    attr::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
                    c as i64,
                ));
            }
            if let Some(r) = u.reasoning_tokens {
                a.push(KeyValue::new(
                    attr::GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
                    r as i64,
                ));
            }
            let split = [
                (attr::OPENAI_USAGE_INPUT_AUDIO_TOKENS, u.details.input_audio),
                (
                    attr::OPENAI_USAGE_OUTPUT_AUDIO_TOKENS,
                    u.details.output_audio,
                ),
                (attr::OPENAI_USAGE_INPUT_IMAGE_TOKENS, u.details.input_image),
                (
                    attr::OPENAI_USAGE_OUTPUT_IMAGE_TOKENS,
                    u.details.output_image,
                ),
            ];
            a.extend(
                split
                    .into_iter()
                    .filter_map(|(k, v)| Some(KeyValue::new(k, v? as i64))),
            );
        }
        if let Some(d) = resp.embedding_dimensions {
            a.push(KeyValue::new(
                attr::GEN_AI_EMBEDDINGS_DIMENSION_COUNT,
                d as i64,
            ));
        }
        if let Some(c) = call.cost {
            a.push(KeyValue::new(attr::LLM_COST_USD, c));
        }
        if call.usage_injected {
            a.push(KeyValue::new(attr::TOKENTAP_USAGE_INJECTED, true));
        }
    }
    attribution(&mut a, &call.who, call.conversation_id.as_deref());
    a.push(KeyValue::new(
        attr::SERVER_ADDRESS,
        shared(&call.server_address),
    ));
    a.push(KeyValue::new(
        attr::SERVER_PORT,
        i64::from(call.server_port),
    ));
    a.push(KeyValue::new(
        attr::HTTP_REQUEST_METHOD,
        shared(&call.method),
    ));
    a.push(KeyValue::new(attr::URL_PATH, shared(&call.path)));
    if let Some(s) = call.status {
        a.push(KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(s)));
    }
    if let Some(id) = &call.request_id {
        a.push(KeyValue::new(
            attr::HTTP_RESPONSE_HEADER_X_REQUEST_ID,
            strings(std::slice::from_ref(id)),
        ));
    }
    if let Some(e) = error_type {
        a.push(KeyValue::new(attr::ERROR_TYPE, shared(e)));
    }
    // identifiers from the wire are cut here; captured content keeps its own cap
    bound_identifiers(&mut a);
    if let Some(c) = &call.content {
        if let Some(s) = &c.system_instructions {
            a.push(KeyValue::new(attr::GEN_AI_SYSTEM_INSTRUCTIONS, s.clone()));
        }
        if let Some(s) = &c.input_messages {
            a.push(KeyValue::new(attr::GEN_AI_INPUT_MESSAGES, s.clone()));
        }
        if let Some(s) = &c.output_messages {
            a.push(KeyValue::new(attr::GEN_AI_OUTPUT_MESSAGES, s.clone()));
        }
    }
    a
}

/// Most elements an array attribute keeps (stop sequences, finish reasons): a
/// client could otherwise send a million stop strings into one span.
const MAX_ARRAY: usize = 128;

/// Cuts every string (and string array element) in `a` to the identifier limit,
/// and arrays to [`MAX_ARRAY`] elements.
fn bound_identifiers(a: &mut [KeyValue]) {
    let limit = |s: &StringValue| bounded::cut(s.as_str()).len() < s.as_str().len();
    for kv in a {
        match &mut kv.value {
            Value::String(s) if limit(s) => {
                *s = StringValue::from(Arc::<str>::from(bounded::cut(s.as_str())));
            }
            Value::Array(Array::String(v)) => {
                v.truncate(MAX_ARRAY);
                for s in v.iter_mut().filter(|s| limit(s)) {
                    *s = StringValue::from(Arc::<str>::from(bounded::cut(s.as_str())));
                }
            }
            _ => {}
        }
    }
}

/// The call's span attributes, built once per call however many outputs
/// read them (the live view shows them; the span, last, takes them).
pub fn shared_attributes<'a>(call: &Call, r: &'a Recorded) -> Ref<'a, [KeyValue]> {
    if r.attributes.borrow().is_none() {
        let built = attributes(call, r.error_type.as_deref());
        *r.attributes.borrow_mut() = Some(built);
    }
    Ref::map(r.attributes.borrow(), |a| a.as_deref().unwrap_or_default())
}

/// Sets `attributes` and the call's status on its span and ends it.
fn finish(
    cx: &Context,
    attributes: Vec<KeyValue>,
    error_type: Option<&str>,
    ended: Option<std::time::SystemTime>,
) {
    let span = cx.span();
    span.set_attributes(attributes);
    if let Some(e) = error_type {
        span.set_status(Status::error(bounded::cut(e).into_owned()));
    }
    match ended {
        Some(at) => span.end_with_timestamp(at),
        None => span.end(),
    }
}

/// The call's span as an output: finished with the call's attributes. Registered
/// last, so the span ends after every other output has seen the call.
#[derive(Debug)]
pub struct EndSpan;

impl CallSink for EndSpan {
    fn record(&self, call: &Call, r: &Recorded) {
        let Some(cx) = &call.trace else {
            return;
        };
        if !cx.span().is_recording() {
            return;
        }
        // built by an earlier output (the live view), or now
        let taken = r.attributes.borrow_mut().take();
        let attributes = taken.unwrap_or_else(|| attributes(call, r.error_type.as_deref()));
        finish(cx, attributes, r.error_type.as_deref(), call.ended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId, TraceState};

    #[test]
    fn ids_in_lower_hex_read_as_their_display() {
        let t = TraceId::from_bytes([0xab, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0xff]);
        let s = SpanId::from_bytes([0, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0xfe]);
        assert_eq!(crate::hex::lower(&t.to_bytes()), t.to_string());
        assert_eq!(crate::hex::lower(&s.to_bytes()), s.to_string());
    }

    #[test]
    fn traceparent_is_what_the_propagator_writes() {
        let state = TraceState::from_key_value([("vendor", "v1")]).expect("state");
        for (t, s, f) in [
            (1u128, 1u64, 1u8),
            (u128::MAX, u64::MAX, 0),
            (0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 3),
        ] {
            let sc = SpanContext::new(
                TraceId::from(t),
                SpanId::from(s),
                TraceFlags::new(f),
                true,
                state.clone(),
            );
            let cx = Context::new().with_remote_span_context(sc.clone());
            let mut ours = HeaderMap::new();
            inject(&cx, &mut ours);
            let mut theirs = HeaderMap::new();
            TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut theirs));
            assert_eq!(ours, theirs);
            let expected = format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), f);
            assert_eq!(traceresponse(&cx).expect("valid"), expected.as_str());
        }
        let mut none = HeaderMap::new();
        inject(&Context::new(), &mut none);
        assert!(none.is_empty() && traceresponse(&Context::new()).is_none());
    }
}
