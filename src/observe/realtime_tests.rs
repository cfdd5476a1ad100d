//! Scripted sessions: frames built here, split anywhere, spans in memory.

use std::collections::HashMap;

use flate2::{Compress, Compression, FlushCompress};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

use super::*;
use crate::genai::pricing::PriceTable;
use crate::telemetry::metrics::Format;
use crate::telemetry::otel::Providers;
use crate::telemetry::{RecorderOptions, Telemetry};

struct Rig {
    telemetry: Telemetry,
    spans: InMemorySpanExporter,
}

impl Rig {
    fn new() -> Rig {
        let spans = InMemorySpanExporter::default();
        let e = spans.clone();
        let telemetry = Telemetry::with_providers(
            RecorderOptions {
                pricing: PriceTable::default(),
                max_label_values: 100,
                max_label_length: 200,
                metric_dimensions: Vec::new(),
                recent_calls: 1000,
            },
            move |_| {
                Ok(Providers::tracing_only(
                    SdkTracerProvider::builder().with_simple_exporter(e).build(),
                ))
            },
        )
        .expect("telemetry");
        Rig { telemetry, spans }
    }

    fn observer(&self, parent: &Context, query: Option<&str>) -> RealtimeObserver {
        RealtimeObserver::new(
            self.telemetry.recorder.clone(),
            parent,
            Provider::default(),
            "api.openai.com".to_owned(),
            443,
            "/v1/realtime",
            query,
        )
    }

    fn spans(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().expect("spans")
    }

    fn page(&self) -> String {
        self.telemetry
            .recorder
            .metrics
            .encode(Format::PrometheusText)
            .expect("page")
    }

    /// The value of the sample `name{labels…}` whose labels include every one of `with`.
    fn sample(&self, name: &str, with: &[&str]) -> Option<f64> {
        self.page().lines().find_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let ok = (series == name || series.starts_with(&format!("{name}{{")))
                && with.iter().all(|w| series.contains(w));
            ok.then(|| v.parse().ok()).flatten()
        })
    }
}

fn remote_parent() -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("id"),
        SpanId::from_hex("00f067aa0ba902b7").expect("id"),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// One whole frame; `rsv1` marks a compressed message; client frames are masked.
fn frame(opcode: u8, rsv1: bool, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    crate::websocket::test_frame(true, rsv1, opcode, mask, payload)
}

/// Text messages as one direction's bytes, compressed with context takeover when `deflate`.
fn stream(msgs: &[&str], deflate: bool, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::new();
    for m in msgs {
        if deflate {
            let mut z = Vec::with_capacity(m.len() + 64);
            c.compress_vec(m.as_bytes(), &mut z, FlushCompress::Sync)
                .expect("compress");
            z.truncate(z.len() - 4);
            out.extend(frame(1, true, mask, &z));
        } else {
            out.extend(frame(1, false, mask, m.as_bytes()));
        }
    }
    out
}

const SESSION: &str = r#"{"type":"session.created","event_id":"event_1","session":{"id":"sess_1","object":"realtime.session","model":"gpt-4o-realtime-preview-2024-12-17","modalities":["text","audio"],"voice":"alloy"}}"#;
const CREATED: &str =
    r#"{"type":"response.created","response":{"id":"resp_1","status":"in_progress","output":[]}}"#;
const TRANSCRIPT: &str = r#"{"type":"response.audio_transcript.delta","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"Hello"}"#;
const AUDIO: &str = r#"{"type":"response.audio.delta","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"UklGRiQAAABXQVZFZm10IBAAAAABAAEA"}"#;
/// input 300 = text 80 + audio 220, cached 100 = text 20 + audio 80; output 120 = text 20 + audio 100.
const DONE_1: &str = r#"{"type":"response.done","event_id":"event_9","response":{"object":"realtime.response","id":"resp_1","status":"completed","status_details":null,"output":[{"id":"item_1","type":"message","role":"assistant","content":[{"type":"audio","transcript":"Hello"}]}],"usage":{"total_tokens":420,"input_tokens":300,"output_tokens":120,"input_token_details":{"cached_tokens":100,"text_tokens":80,"audio_tokens":220,"cached_tokens_details":{"text_tokens":20,"audio_tokens":80}},"output_token_details":{"text_tokens":20,"audio_tokens":100}}}}"#;
/// GA names; input 50 text; output 30 = text 10 + audio 20.
const GA_DELTA: &str =
    r#"{"type":"response.output_audio_transcript.delta","response_id":"resp_2","delta":"Bye"}"#;
const DONE_2: &str = r#"{"type":"response.done","response":{"id":"resp_2","status":"completed","output":[],"usage":{"total_tokens":80,"input_tokens":50,"output_tokens":30,"input_token_details":{"cached_tokens":0,"text_tokens":50,"audio_tokens":0},"output_token_details":{"text_tokens":10,"audio_tokens":20}}}}"#;

fn attrs(s: &SpanData) -> HashMap<String, Value> {
    s.attributes
        .iter()
        .map(|kv| (kv.key.as_str().to_owned(), kv.value.clone()))
        .collect()
}

fn int(a: &HashMap<String, Value>, k: &str) -> i64 {
    match a.get(k) {
        Some(Value::I64(i)) => *i,
        other => panic!("{k}: {other:?}"),
    }
}

fn string(a: &HashMap<String, Value>, k: &str) -> String {
    match a.get(k) {
        Some(Value::String(s)) => s.as_str().to_owned(),
        other => panic!("{k}: {other:?}"),
    }
}

fn float(a: &HashMap<String, Value>, k: &str) -> f64 {
    match a.get(k) {
        Some(Value::F64(x)) => *x,
        other => panic!("{k}: {other:?}"),
    }
}

/// Cost of DONE_1 at gpt-4o-realtime-preview-2024-12-17 (USD per 1M): uncached text
/// 60 × 5 + uncached audio 140 × 40 + cached text 20 × 2.50 + cached audio 80 × 2.50
/// + text out 20 × 20 + audio out 100 × 80 = 14550.
const COST_1: f64 = 0.01455;
/// DONE_2: text in 50 × 5 + text out 10 × 20 + audio out 20 × 80 = 2050.
const COST_2: f64 = 0.00205;

#[test]
fn each_turn_is_a_call_and_the_session_sums_them() {
    let msgs = [
        SESSION, CREATED, TRANSCRIPT, AUDIO, TRANSCRIPT, DONE_1, CREATED, GA_DELTA, DONE_2,
    ];
    for deflate in [false, true] {
        let bytes = stream(&msgs, deflate, None);
        for split in [1, 5, 64, bytes.len()] {
            let rig = Rig::new();
            let parent = remote_parent();
            let mut obs = rig.observer(&parent, Some("model=gpt-4o-realtime-preview-2024-12-17"));
            let session_id = obs.context().span().span_context().span_id();
            assert!(obs.context().span().span_context().is_valid());
            obs.upgraded(deflate.then_some("permessage-deflate; client_max_window_bits"));
            for piece in bytes.chunks(split) {
                obs.server_bytes(piece);
            }
            // the second transcript delta was known by its shape (realtime_shape)
            assert_eq!(obs.deltas.hits.get(), 1);
            // each turn was recorded as it ended; the session span is still open
            let spans = rig.spans();
            assert_eq!(spans.len(), 2, "deflate {deflate} split {split}");
            obs.closed(SessionEnd::Closed);
            let spans = rig.spans();
            assert_eq!(spans.len(), 3);
            let (chats, sessions): (Vec<_>, Vec<_>) = spans
                .iter()
                .partition(|s| s.name == "chat gpt-4o-realtime-preview-2024-12-17");
            assert_eq!(chats.len(), 2);
            let session = sessions[0];
            assert_eq!(session.name, "realtime gpt-4o-realtime-preview-2024-12-17");
            assert_eq!(session.span_kind, SpanKind::Client);
            assert_eq!(
                session.parent_span_id,
                SpanId::from_hex("00f067aa0ba902b7").expect("id")
            );
            assert_eq!(session.span_context.span_id(), session_id);
            let s = attrs(session);
            assert_eq!(string(&s, "openai.api.type"), "realtime");
            assert_eq!(int(&s, "gen_ai.usage.input_tokens"), 350);
            assert_eq!(int(&s, "gen_ai.usage.output_tokens"), 150);
            assert_eq!(int(&s, "gen_ai.usage.cache_read.input_tokens"), 100);
            assert_eq!(int(&s, "openai.usage.input_audio_tokens"), 220);
            assert_eq!(int(&s, "openai.usage.output_audio_tokens"), 120);
            assert_eq!(
                string(&s, "gen_ai.response.model"),
                "gpt-4o-realtime-preview-2024-12-17"
            );
            assert!(!s.contains_key("error.type"));
            assert!((float(&s, "llm.cost.usd") - (COST_1 + COST_2)).abs() < 1e-12);

            for c in &chats {
                assert_eq!(c.parent_span_id, session_id);
                assert_eq!(c.span_context.trace_id(), session.span_context.trace_id());
                assert_eq!(c.span_kind, SpanKind::Client);
            }
            let by_id = |id: &str| {
                chats
                    .iter()
                    .map(|c| attrs(c))
                    .find(|a| string(a, "gen_ai.response.id") == id)
                    .expect("turn span")
            };
            let one = by_id("resp_1");
            assert_eq!(int(&one, "gen_ai.usage.input_tokens"), 300);
            assert_eq!(int(&one, "gen_ai.usage.output_tokens"), 120);
            assert_eq!(int(&one, "gen_ai.usage.cache_read.input_tokens"), 100);
            assert_eq!(int(&one, "openai.usage.input_audio_tokens"), 220);
            assert_eq!(int(&one, "openai.usage.output_audio_tokens"), 100);
            assert_eq!(string(&one, "gen_ai.operation.name"), "chat");
            assert_eq!(string(&one, "openai.api.type"), "realtime");
            assert!((float(&one, "llm.cost.usd") - COST_1).abs() < 1e-12);
            assert!(one.contains_key("gen_ai.response.time_to_first_chunk"));
            match one.get("gen_ai.response.finish_reasons") {
                Some(Value::Array(a)) => assert_eq!(a.to_string(), "[\"completed\"]"),
                other => panic!("{other:?}"),
            }
            let two = by_id("resp_2");
            assert_eq!(int(&two, "openai.usage.output_audio_tokens"), 20);
            assert!((float(&two, "llm.cost.usd") - COST_2).abs() < 1e-12);

            let model = "model=\"gpt-4o-realtime-preview-2024-12-17\"";
            assert_eq!(
                rig.sample("llm_requests_total", &[model, "status=\"success\""]),
                Some(2.0)
            );
            let cost = rig.sample("llm_cost_usd_total", &[model]).expect("cost");
            assert!((cost - (COST_1 + COST_2)).abs() < 1e-12, "{cost}");
            assert_eq!(rig.sample("tokentap_parse_errors_total", &[]), None);
        }
    }
}

#[test]
fn failed_and_cancelled_turns_are_errors() {
    let failed = r#"{"type":"response.done","response":{"id":"resp_f","status":"failed","status_details":{"type":"failed","error":{"type":"server_error","code":"rate_limit_exceeded"}},"usage":{"total_tokens":10,"input_tokens":10,"output_tokens":0}}}"#;
    let cancelled = r#"{"type":"response.done","response":{"id":"resp_c","status":"cancelled","status_details":{"type":"cancelled","reason":"turn_detected"},"usage":{"total_tokens":12,"input_tokens":10,"output_tokens":2}}}"#;
    let rig = Rig::new();
    let mut obs = rig.observer(&Context::new(), Some("model=gpt-realtime"));
    obs.upgraded(None);
    obs.server_bytes(&stream(&[failed, cancelled], false, None));
    obs.closed(SessionEnd::Shutdown);
    let spans = rig.spans();
    let turn = |id: &str| {
        spans
            .iter()
            .map(attrs)
            .find(|a| {
                a.get("gen_ai.response.id")
                    .is_some_and(|v| v.as_str() == id)
            })
            .expect("turn")
    };
    assert_eq!(string(&turn("resp_f"), "error.type"), "rate_limit_exceeded");
    assert_eq!(string(&turn("resp_c"), "error.type"), "cancelled");
    assert_eq!(
        rig.sample(
            "llm_requests_total",
            &["model=\"gpt-realtime\"", "status=\"error\""]
        ),
        Some(2.0)
    );
    // the session itself ended well (shutdown is not an error)
    let session = spans
        .iter()
        .find(|s| s.name == "realtime gpt-realtime")
        .expect("session");
    assert!(!attrs(session).contains_key("error.type"));
    assert_eq!(int(&attrs(session), "gen_ai.usage.input_tokens"), 20);
}

#[test]
fn junk_is_counted_and_observation_degrades_without_panicking() {
    let rig = Rig::new();
    let mut obs = rig.observer(&Context::new(), Some("model=gpt-realtime"));
    obs.upgraded(None);
    let mut bytes = stream(
        &["not json", "{\"type\":\"response.done\",", "[1]"],
        false,
        None,
    );
    bytes.extend(frame(2, false, None, &[0, 1, 2])); // binary: ignored
    let mut big = String::from(r#"{"type":"response.audio.delta","delta":""#);
    big.push_str(&"A".repeat(MAX_MESSAGE));
    big.push_str("\"}");
    bytes.extend(stream(&[&big, DONE_2], false, None));
    for piece in bytes.chunks(1000) {
        obs.server_bytes(piece);
    }
    // the turn after the junk is still metered, and carries the failures
    assert_eq!(rig.spans().len(), 1);
    assert_eq!(
        rig.sample("tokentap_parse_errors_total", &["reason=\"invalid_json\""]),
        Some(1.0)
    );
    assert_eq!(
        rig.sample("tokentap_parse_errors_total", &["reason=\"too_large\""]),
        Some(1.0)
    );
    // broken framing: a reserved opcode; nothing after it is read
    obs.server_bytes(&[0x83, 0x00]);
    obs.server_bytes(&stream(&[DONE_2], false, None));
    obs.server_bytes(&[0xff; 64]);
    obs.client_bytes(&[0xff; 64]);
    obs.closed(SessionEnd::Closed);
    obs.closed(SessionEnd::Closed);
    assert_eq!(
        rig.sample(
            "tokentap_parse_errors_total",
            &["reason=\"invalid_websocket\""]
        ),
        Some(1.0)
    );
    let spans = rig.spans();
    assert_eq!(spans.len(), 2, "one turn and the session");
    let session = spans
        .iter()
        .find(|s| s.name == "realtime gpt-realtime")
        .expect("session");
    assert_eq!(int(&attrs(session), "gen_ai.usage.output_tokens"), 30);
}

#[test]
fn an_observer_can_move_to_the_tunnels_task() {
    fn send<T: Send + 'static>() {}
    send::<RealtimeObserver>();
}

#[test]
fn random_bytes_never_panic() {
    let rig = Rig::new();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..50 {
        let mut obs = rig.observer(&Context::new(), None);
        obs.upgraded(Some("permessage-deflate"));
        for _ in 0..20 {
            let piece: Vec<u8> = (0..97)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            obs.server_bytes(&piece);
            obs.client_bytes(&piece);
        }
    }
    // every session span ended when its observer was dropped
    assert_eq!(
        rig.spans().iter().filter(|s| s.name == "realtime").count(),
        50
    );
}

#[test]
fn time_to_first_chunk_counts_from_the_clients_response_create() {
    let rig = Rig::new();
    let mut obs = rig.observer(&Context::new(), Some("model=gpt-realtime"));
    obs.upgraded(Some("permessage-deflate; server_no_context_takeover"));
    let mask = Some([1, 2, 3, 4]);
    let audio = format!(
        r#"{{"type":"input_audio_buffer.append","audio":"{}"}}"#,
        "B".repeat(5000)
    );
    obs.client_bytes(&stream(
        &[&audio, r#"{"type":"response.create","response":{}}"#],
        true,
        mask,
    ));
    assert!(
        obs.turn.started.is_some(),
        "a response.create starts the turn"
    );
    obs.server_bytes(&stream(&[GA_DELTA, DONE_2], false, None));
    assert!(obs.turn.started.is_none(), "the turn ended");
    drop(obs);
    let spans = rig.spans();
    let chat = spans
        .iter()
        .find(|s| s.name == "chat gpt-realtime")
        .expect("chat");
    assert!(float(&attrs(chat), "gen_ai.response.time_to_first_chunk") >= 0.0);
}

#[test]
fn events_that_arrive_in_one_read_share_its_time() {
    let rig = Rig::new();
    let mut obs = rig.observer(&Context::new(), Some("model=gpt-realtime"));
    obs.upgraded(None);
    obs.server_bytes(&stream(&[CREATED, GA_DELTA, GA_DELTA, DONE_2], false, None));
    drop(obs);
    // two deltas in one read: one gap, of nothing (not the time between their parses)
    let gaps = "gen_ai_client_operation_time_per_output_chunk_seconds";
    assert_eq!(rig.sample(&format!("{gaps}_count"), &[]), Some(1.0));
    assert_eq!(rig.sample(&format!("{gaps}_sum"), &[]), Some(0.0));
}

#[test]
fn the_model_comes_from_the_url_or_the_session() {
    assert_eq!(
        model_from_query(Some("model=gpt-realtime")),
        Some("gpt-realtime".to_owned())
    );
    assert_eq!(
        model_from_query(Some("api-version=2025-04-01-preview&deployment=my%20rt")),
        Some("my rt".to_owned())
    );
    assert_eq!(model_from_query(Some("model=&x=1")), None);
    assert_eq!(model_from_query(Some("%zz")), None);
    assert_eq!(model_from_query(None), None);
    assert!(is_realtime("/v1/realtime"));
    assert!(is_realtime("/openai/realtime/"));
    assert!(!is_realtime("/v1/realtime/sessions"));
    assert!(!is_realtime("/v1/chat/completions"));

    // no model in the URL: the span is renamed when the session names it
    let rig = Rig::new();
    let mut obs = rig.observer(&Context::new(), None);
    obs.server_bytes(&stream(&[SESSION, DONE_2], false, None));
    obs.closed(SessionEnd::Failed("connection_error"));
    let spans = rig.spans();
    let session = spans
        .iter()
        .find(|s| s.name == "realtime gpt-4o-realtime-preview-2024-12-17")
        .expect("renamed");
    assert_eq!(string(&attrs(session), "error.type"), "connection_error");
    assert!(
        spans
            .iter()
            .any(|s| s.name == "chat gpt-4o-realtime-preview-2024-12-17")
    );

    // the upstream refused the upgrade
    let mut refused = rig.observer(&Context::new(), Some("model=gpt-realtime"));
    refused.closed(SessionEnd::Refused(401));
    let spans = rig.spans();
    let last = spans
        .iter()
        .rfind(|s| s.name == "realtime gpt-realtime")
        .expect("span");
    let a = attrs(last);
    assert_eq!(string(&a, "error.type"), "401");
    assert_eq!(int(&a, "http.response.status_code"), 401);
}

#[tokio::test(flavor = "current_thread")]
async fn a_turn_is_recorded_once_the_relay_lets_go_and_dated_when_it_ended() {
    let rig = Rig::new();
    rig.telemetry.recorder.record_later();
    let parent = remote_parent();
    let mut obs = rig.observer(&parent, Some("model=gpt-4o-realtime-preview-2024-12-17"));
    obs.upgraded(None);
    obs.server_bytes(&stream(
        &[SESSION, CREATED, TRANSCRIPT, DONE_1],
        false,
        None,
    ));
    let ended = SystemTime::now();
    let requests = |rig: &Rig| rig.sample("llm_requests_total", &[]).unwrap_or(0.0);
    // the relay has not let go of the core: the turn waits, the frames went on
    assert_eq!(requests(&rig), 0.0);
    assert!(rig.spans().is_empty());
    std::thread::sleep(std::time::Duration::from_millis(30));
    crate::telemetry::later::yield_until(100, || requests(&rig) > 0.0).await;
    assert_eq!(requests(&rig), 1.0);
    let spans = rig.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "chat gpt-4o-realtime-preview-2024-12-17");
    // ended with the turn, not 30 ms later when it was recorded
    assert!(
        spans[0].end_time <= ended,
        "{:?} > {ended:?}",
        spans[0].end_time
    );
    obs.closed(SessionEnd::Closed);
    rig.telemetry.recorder.settle();
    assert_eq!(rig.spans().len(), 2, "the session span ends at its close");
}
