//! The live view's `attributes` are the exported span's attributes, exactly:
//! one builder feeds both (built once per call and shared), so the page's
//! details and the trace in a backend cannot disagree — with content capture,
//! streams and errors included.

mod support;

use bytes::Bytes;
use opentelemetry::{Array, Value};
use support::*;

/// A span attribute as the live view's JSON writes it.
fn json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Bool(b) => J::Bool(*b),
        Value::I64(i) => J::from(*i),
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::String(s) => J::String(s.as_str().to_owned()),
        Value::Array(Array::String(v)) => {
            v.iter().map(|s| J::String(s.as_str().to_owned())).collect()
        }
        Value::Array(Array::I64(v)) => v.iter().map(|i| J::from(*i)).collect(),
        other => panic!("unexpected attribute type {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_views_attributes_are_the_spans() {
    let (s, spans) = Stack::start_traced(|c| c.capture_content = true).await;
    let base = s.via();
    let bodies = [
        r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"what is a span?"}],"temperature":0.2,"stop":["\n\n"]}"#,
        r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"stream it"}]}"#,
        r#"{"model":"demo-error-429","messages":[{"role":"user","content":"fail"}]}"#,
    ];
    for b in bodies {
        post_json(&base, "/v1/chat/completions", b).await;
    }
    assert!(
        eventually(async || spans.get_finished_spans().map_or(0, |v| v.len()) == bodies.len())
            .await,
        "one span per call"
    );
    let r = send(&base, "GET", "/api/calls", &[], Bytes::new()).await;
    let calls: Vec<serde_json::Value> = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(calls.len(), bodies.len());
    for span in spans.get_finished_spans().expect("spans") {
        let id = span.span_context.span_id().to_string();
        let call = calls
            .iter()
            .find(|c| c["span_id"] == id.as_str())
            .unwrap_or_else(|| panic!("span {id} is listed"));
        assert_eq!(call["trace_id"], span.span_context.trace_id().to_string());
        let from_span: serde_json::Map<String, serde_json::Value> = span
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str().to_owned(), json(&kv.value)))
            .collect();
        let listed = call["attributes"].as_object().expect("attributes");
        assert_eq!(listed, &from_span, "span {}", span.name);
        // content capture on: the prompt is among them, in both
        assert!(listed.contains_key("gen_ai.input.messages"), "{listed:?}");
    }
}
