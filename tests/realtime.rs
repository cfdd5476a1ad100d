//! Realtime sessions observed through the real binary (SPEC §10): a Python
//! `websockets` client (compression on, as by default) talks to `--demo`'s
//! Realtime endpoint through tokentap's tunnel, and what the client received
//! is compared with the spans tokentap exported over OTLP and its `/metrics`.

#[path = "support/blackbox/mod.rs"]
mod blackbox;
mod support;

use std::time::Duration;

use blackbox::child::Tokentap;
use serde_json::Value;
use support::otlp::{Receiver, Span};
use support::python::run_python;

/// gpt-realtime's built-in rates (USD per 1M tokens): text in, cached in, out; audio in, cached in, out.
const TEXT: (f64, f64, f64) = (4.0, 0.40, 16.0);
const AUDIO: (f64, f64, f64) = (32.0, 0.40, 64.0);

fn n(v: &Value, path: &[&str]) -> i64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_i64()
        .unwrap_or_else(|| panic!("{path:?} in {v}"))
}

/// One turn's cost, by hand from the usage the client received.
fn cost(usage: &Value) -> f64 {
    let cached = n(usage, &["input_token_details", "cached_tokens"]);
    let cached_audio = n(
        usage,
        &[
            "input_token_details",
            "cached_tokens_details",
            "audio_tokens",
        ],
    );
    let audio_in = n(usage, &["input_token_details", "audio_tokens"]) - cached_audio;
    let text_in = n(usage, &["input_tokens"]) - cached - audio_in;
    let audio_out = n(usage, &["output_token_details", "audio_tokens"]);
    let text_out = n(usage, &["output_tokens"]) - audio_out;
    (text_in as f64 * TEXT.0
        + (cached - cached_audio) as f64 * TEXT.1
        + text_out as f64 * TEXT.2
        + audio_in as f64 * AUDIO.0
        + cached_audio as f64 * AUDIO.1
        + audio_out as f64 * AUDIO.2)
        / 1e6
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1e-6)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_session_gets_a_span_and_one_metered_call_per_response() {
    let receiver = Receiver::http().await;
    let endpoint = receiver.endpoint();
    let tt = Tokentap::start_with(
        &["--demo", "--demo-chunk-delay", "0ms"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let url = format!(
        "{}/v1/realtime?model=gpt-realtime",
        tt.url().replace("http://", "ws://")
    );
    let out = run_python("tests/python/realtime_session.py", vec![url], Vec::new()).await;
    let got: Value = serde_json::from_str(out.trim()).expect("the script prints JSON");
    assert!(
        got["extensions"]
            .as_str()
            .is_some_and(|e| e.contains("permessage-deflate")),
        "{got}"
    );
    let turns = got["turns"].as_array().expect("turns");
    assert_eq!(turns.len(), 2);
    let audio_out = n(
        &turns[1]["usage"],
        &["output_token_details", "audio_tokens"],
    );
    assert!(audio_out > 0, "the second turn speaks: {got}");

    // the session's span is the one traceresponse named, kind CLIENT
    let tr: Vec<&str> = got["traceresponse"]
        .as_str()
        .expect("traceresponse")
        .split('-')
        .collect();
    let (trace_id, span_id) = (tr[1].to_owned(), tr[2].to_owned());
    let found = receiver
        .wait_for(Duration::from_secs(20), |r| {
            r.spans().iter().any(|s| s.span_id == span_id)
                && r.spans()
                    .iter()
                    .filter(|s| s.parent_span_id == span_id)
                    .count()
                    == 2
        })
        .await;
    let spans = receiver.spans();
    assert!(found, "session and turn spans: {spans:#?}");
    let session: &Span = spans
        .iter()
        .find(|s| s.span_id == span_id)
        .expect("session");
    assert_eq!(session.trace_id, trace_id);
    assert_eq!(session.name, "realtime gpt-realtime");
    assert_eq!(session.kind, 3);
    assert_eq!(session.str("openai.api.type"), Some("realtime"));
    let key_id = tokentap::genai::attribution::key_id("sk-demo");
    assert_eq!(session.str("tokentap.key_id"), Some(key_id.as_str()));
    assert_eq!(session.int("http.response.status_code"), Some(101));
    let sum = |path: &[&str]| turns.iter().map(|t| n(&t["usage"], path)).sum::<i64>();
    assert_eq!(
        session.int("gen_ai.usage.input_tokens"),
        Some(sum(&["input_tokens"]))
    );
    assert_eq!(
        session.int("gen_ai.usage.output_tokens"),
        Some(sum(&["output_tokens"]))
    );
    let total_cost: f64 = turns.iter().map(|t| cost(&t["usage"])).sum();
    let session_cost = session.double("llm.cost.usd").expect("session cost");
    assert!(
        close(session_cost, total_cost),
        "{session_cost} vs {total_cost}"
    );

    // one `chat` child per response.done, carrying that response exactly
    for turn in turns {
        let id = turn["id"].as_str().expect("id");
        let span = spans
            .iter()
            .find(|s| s.str("gen_ai.response.id") == Some(id))
            .unwrap_or_else(|| panic!("a span for {id} among {spans:#?}"));
        let u = &turn["usage"];
        assert_eq!(span.parent_span_id, span_id);
        assert_eq!(span.trace_id, trace_id);
        assert_eq!(span.name, "chat gpt-realtime");
        assert_eq!(span.str("gen_ai.operation.name"), Some("chat"));
        // attributed to the key that opened the session (SPEC §11)
        assert_eq!(span.str("tokentap.key_id"), Some(key_id.as_str()));
        assert_eq!(
            span.int("gen_ai.usage.input_tokens"),
            Some(n(u, &["input_tokens"]))
        );
        assert_eq!(
            span.int("gen_ai.usage.output_tokens"),
            Some(n(u, &["output_tokens"]))
        );
        assert_eq!(
            span.int("gen_ai.usage.cache_read.input_tokens"),
            Some(n(u, &["input_token_details", "cached_tokens"]))
        );
        assert_eq!(
            span.int("openai.usage.input_audio_tokens"),
            Some(n(u, &["input_token_details", "audio_tokens"]))
        );
        assert_eq!(
            span.int("openai.usage.output_audio_tokens"),
            Some(n(u, &["output_token_details", "audio_tokens"]))
        );
        let c = span.double("llm.cost.usd").expect("turn cost");
        assert!(close(c, cost(u)), "{c} vs {}", cost(u));
    }

    // the metrics count each response as one call, tokens and cost exact
    let page = support::metrics(&tt.url()).await;
    let labels = [("model", "gpt-realtime"), ("status", "success")];
    assert_eq!(support::sum(&page, "llm_requests_total", &labels), 2.0);
    let tokens = |t| {
        let mut l = labels.to_vec();
        l.push(("type", t));
        support::sum(&page, "llm_tokens_used_total", &l)
    };
    assert_eq!(tokens("prompt"), sum(&["input_tokens"]) as f64);
    assert_eq!(tokens("completion"), sum(&["output_tokens"]) as f64);
    let metric_cost = support::sum(&page, "llm_cost_usd_total", &labels);
    assert!(
        close(metric_cost, total_cost),
        "{metric_cost} vs {total_cost}"
    );
    assert_eq!(
        support::sum(
            &page,
            "gen_ai_client_operation_time_to_first_chunk_seconds_count",
            &[("gen_ai_request_model", "gpt-realtime")]
        ),
        2.0
    );
    assert_eq!(support::sum(&page, "tokentap_parse_errors_total", &[]), 0.0);
}
