//! One GenAI CLIENT span per proxied call, with the attributes the call reveals,
//! checked with the SDK's in-memory exporter; and W3C trace context in and out.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry::Value;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use support::*;
use tokentap::config::{Config, Upstream};

fn finished(spans: &InMemorySpanExporter) -> Vec<SpanData> {
    spans.get_finished_spans().expect("spans")
}

fn attrs(s: &SpanData) -> HashMap<String, Value> {
    s.attributes
        .iter()
        .map(|kv| (kv.key.as_str().to_owned(), kv.value.clone()))
        .collect()
}

fn str_attr(a: &HashMap<String, Value>, k: &str) -> String {
    match a.get(k) {
        Some(Value::String(s)) => s.as_str().to_owned(),
        other => panic!("{k}: {other:?}"),
    }
}

fn int_attr(a: &HashMap<String, Value>, k: &str) -> i64 {
    match a.get(k) {
        Some(Value::I64(i)) => *i,
        other => panic!("{k}: {other:?}"),
    }
}

async fn one_span(spans: &InMemorySpanExporter) -> SpanData {
    assert!(
        eventually(async || finished(spans).len() == 1).await,
        "one span: {:?}",
        finished(spans)
    );
    finished(spans).remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_span_carries_the_genai_attributes() {
    let (s, spans) = Stack::start_traced(|_| {}).await;
    let body = r#"{"model":"gpt-4o-mini","temperature":0.3,"top_p":0.9,"max_tokens":50,"seed":4,"stop":["END"],"messages":[{"role":"user","content":"Tell me about spans"}]}"#;
    let r = post_json(&s.via(), "/v1/chat/completions", body).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let span = one_span(&spans).await;
    assert_eq!(span.name, "chat gpt-4o-mini");
    assert_eq!(span.span_kind, SpanKind::Client);
    assert_eq!(span.status, Status::Unset);
    let a = attrs(&span);
    assert_eq!(str_attr(&a, "gen_ai.operation.name"), "chat");
    assert_eq!(str_attr(&a, "gen_ai.provider.name"), "openai");
    assert_eq!(str_attr(&a, "openai.api.type"), "chat_completions");
    assert_eq!(str_attr(&a, "gen_ai.request.model"), "gpt-4o-mini");
    assert_eq!(a.get("gen_ai.request.temperature"), Some(&Value::F64(0.3)));
    assert_eq!(a.get("gen_ai.request.top_p"), Some(&Value::F64(0.9)));
    assert_eq!(int_attr(&a, "gen_ai.request.max_tokens"), 50);
    assert_eq!(int_attr(&a, "gen_ai.request.seed"), 4);
    assert_eq!(a.get("gen_ai.request.stream"), Some(&Value::Bool(false)));
    assert!(matches!(
        a.get("gen_ai.request.stop_sequences"),
        Some(Value::Array(_))
    ));
    assert_eq!(
        str_attr(&a, "gen_ai.response.id"),
        v["id"].as_str().expect("id")
    );
    assert_eq!(
        str_attr(&a, "gen_ai.response.model"),
        v["model"].as_str().expect("model")
    );
    assert_eq!(
        str_attr(&a, "openai.response.system_fingerprint"),
        "fp_demo0001"
    );
    assert_eq!(str_attr(&a, "openai.response.service_tier"), "default");
    assert_eq!(
        int_attr(&a, "gen_ai.usage.input_tokens"),
        v["usage"]["prompt_tokens"].as_i64().expect("p")
    );
    assert_eq!(
        int_attr(&a, "gen_ai.usage.output_tokens"),
        v["usage"]["completion_tokens"].as_i64().expect("c")
    );
    assert!(matches!(
        a.get("gen_ai.response.finish_reasons"),
        Some(Value::Array(_))
    ));
    assert_eq!(str_attr(&a, "server.address"), "127.0.0.1");
    assert_eq!(int_attr(&a, "server.port"), i64::from(s.demo.addr().port()));
    assert_eq!(int_attr(&a, "http.response.status_code"), 200);
    assert_eq!(str_attr(&a, "http.request.method"), "POST");
    assert!(matches!(
        a.get("http.response.header.x-request-id"),
        Some(Value::Array(_))
    ));
    let cost = match a.get("llm.cost.usd") {
        Some(Value::F64(c)) => *c,
        other => panic!("cost {other:?}"),
    };
    let want = (v["usage"]["prompt_tokens"].as_f64().expect("p") * 0.15
        + v["usage"]["completion_tokens"].as_f64().expect("c") * 0.60)
        / 1e6;
    assert!((cost - want).abs() < 1e-15);
    assert!(!a.contains_key("error.type"));
    assert!(
        !a.contains_key("gen_ai.input.messages"),
        "no content without opt-in"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_span_has_time_to_first_chunk_and_exact_usage() {
    let (s, spans) = Stack::start_traced(|_| {}).await;
    let r = post_json(&s.via(), "/v1/chat/completions", r#"{"model":"gpt-4o-mini","stream":true,"n":2,"messages":[{"role":"user","content":"stream"}]}"#).await;
    assert_eq!(r.status, 200);
    let span = one_span(&spans).await;
    let a = attrs(&span);
    assert_eq!(a.get("gen_ai.request.stream"), Some(&Value::Bool(true)));
    assert_eq!(int_attr(&a, "gen_ai.request.choice.count"), 2);
    assert!(
        matches!(a.get("gen_ai.response.time_to_first_chunk"), Some(Value::F64(t)) if *t >= 0.0)
    );
    assert!(int_attr(&a, "gen_ai.usage.output_tokens") > 0);
    assert_eq!(a.get("tokentap.usage_injected"), Some(&Value::Bool(true)));
    match a.get("gen_ai.response.finish_reasons") {
        Some(Value::Array(opentelemetry::Array::String(v))) => assert_eq!(v.len(), 2),
        other => panic!("finish reasons {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_and_embeddings_spans() {
    let (s, spans) = Stack::start_traced(|_| {}).await;
    post_json(
        &s.via(),
        "/v1/responses",
        r#"{"model":"gpt-5-mini","input":"hi","stream":true}"#,
    )
    .await;
    post_json(
        &s.via(),
        "/v1/embeddings",
        r#"{"model":"text-embedding-3-small","input":"hi","dimensions":64}"#,
    )
    .await;
    post_json(&s.via(), "/v1/models", "").await;
    assert!(eventually(async || finished(&spans).len() == 3).await);
    let all = finished(&spans);
    let by_name: HashMap<String, &SpanData> = all.iter().map(|s| (s.name.to_string(), s)).collect();
    let r = attrs(by_name.get("chat gpt-5-mini").expect("responses span"));
    assert_eq!(str_attr(&r, "openai.api.type"), "responses");
    assert!(int_attr(&r, "gen_ai.usage.reasoning.output_tokens") > 0);
    assert!(r.contains_key("gen_ai.usage.cache_read.input_tokens"));
    let e = attrs(
        by_name
            .get("embeddings text-embedding-3-small")
            .expect("embeddings span"),
    );
    assert_eq!(str_attr(&e, "gen_ai.operation.name"), "embeddings");
    assert_eq!(int_attr(&e, "gen_ai.embeddings.dimension.count"), 64);
    // other endpoints: the HTTP client-span name, the path as an attribute
    let m = by_name.get("POST").expect("non-model span");
    assert_eq!(str_attr(&attrs(m), "url.path"), "/v1/models");
    assert!(!attrs(m).contains_key("gen_ai.operation.name"));
}

#[tokio::test(flavor = "multi_thread")]
async fn error_and_cancel_spans() {
    let (s, spans) = Stack::start_traced(|_| {}).await;
    post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"demo-error-429","messages":[]}"#,
    )
    .await;
    let span = one_span(&spans).await;
    assert!(matches!(span.status, Status::Error { .. }));
    let a = attrs(&span);
    assert_eq!(str_attr(&a, "error.type"), "rate_limit_exceeded");
    assert_eq!(int_attr(&a, "http.response.status_code"), 429);

    // the client leaves mid-stream
    spans.reset();
    let mut body = open_hung_stream(&s.via()).await;
    body.frame().await.expect("frame").expect("ok");
    drop(body);
    let span = one_span(&spans).await;
    assert_eq!(str_attr(&attrs(&span), "error.type"), "cancelled");
    assert!(matches!(span.status, Status::Error { .. }));

    // tokentap's own 502
    spans.reset();
    let cfg = Config::for_upstream(Upstream::parse(&otlp::closed_port_endpoint()).expect("url"));
    let (proxy, spans2) = start_traced_proxy(cfg).await;
    let r = post_json(
        &proxy.url(),
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
    .await;
    assert_eq!(r.status, 502);
    assert!(
        r.headers.contains_key("traceresponse"),
        "local errors carry traceresponse too"
    );
    let span = one_span(&spans2).await;
    assert_eq!(str_attr(&attrs(&span), "error.type"), "connection_error");
}

/// An upstream that remembers the headers it received and answers a small chat completion.
async fn header_recording_upstream() -> (String, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        seen.lock().expect("lock").push(req.headers().clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(Bytes::from_static(
                                    br#"{"id":"c1","object":"chat.completion","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
                                )))
                                .expect("response"),
                        )
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_context_in_and_out() {
    let (upstream, seen) = header_recording_upstream().await;
    let (proxy, spans) = start_traced_proxy(Config::for_upstream(
        Upstream::parse(&upstream).expect("url"),
    ))
    .await;
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = send(
        &proxy.url(),
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            (
                "traceparent",
                &format!("00-{client_trace}-{client_span}-01"),
            ),
            ("tracestate", "vendor=abc"),
            ("baggage", "tenant=acme"),
        ],
        Bytes::from_static(br#"{"model":"gpt-4o-mini","messages":[]}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    let span = one_span(&spans).await;
    let sc = &span.span_context;
    // same trace, the client's span as parent
    assert_eq!(sc.trace_id().to_string(), client_trace);
    assert_eq!(span.parent_span_id.to_string(), client_span);
    // upstream got tokentap's span in traceparent, of the same trace; baggage passed on
    let headers = seen.lock().expect("lock").pop().expect("upstream request");
    let tp = headers["traceparent"].to_str().expect("ascii");
    assert_eq!(tp, format!("00-{client_trace}-{}-01", sc.span_id()));
    assert_eq!(headers["tracestate"], "vendor=abc");
    assert_eq!(headers["baggage"], "tenant=acme");
    // the client can find its trace
    let tr = r.headers["traceresponse"].to_str().expect("ascii");
    assert_eq!(tr, format!("00-{client_trace}-{}-01", sc.span_id()));

    // no caller context: a new trace
    spans.reset();
    let r = post_json(
        &proxy.url(),
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
    .await;
    let span = one_span(&spans).await;
    assert_ne!(span.span_context.trace_id().to_string(), client_trace);
    assert_eq!(span.parent_span_id, opentelemetry::trace::SpanId::INVALID);
    let tr = r.headers["traceresponse"].to_str().expect("ascii");
    assert!(tr.contains(&span.span_context.trace_id().to_string()));
    let up = seen.lock().expect("lock").pop().expect("upstream request");
    assert!(
        up["traceparent"]
            .to_str()
            .expect("ascii")
            .contains(&span.span_context.trace_id().to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn content_capture_is_opt_in_and_in_the_conventions_schema() {
    let (s, spans) = Stack::start_traced(|c| c.capture_content = true).await;
    post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"What is a span?"}]}"#,
    )
    .await;
    let span = one_span(&spans).await;
    let a = attrs(&span);
    let input: serde_json::Value =
        serde_json::from_str(&str_attr(&a, "gen_ai.input.messages")).expect("json");
    assert_eq!(
        input,
        serde_json::json!([{"role":"user","parts":[{"type":"text","content":"What is a span?"}]}])
    );
    let sys: serde_json::Value =
        serde_json::from_str(&str_attr(&a, "gen_ai.system_instructions")).expect("json");
    assert_eq!(sys[0]["content"], "Be brief.");
    let out: serde_json::Value =
        serde_json::from_str(&str_attr(&a, "gen_ai.output.messages")).expect("json");
    assert_eq!(out[0]["role"], "assistant");
    assert_eq!(out[0]["finish_reason"], "stop");
    assert!(
        out[0]["parts"][0]["content"]
            .as_str()
            .is_some_and(|t| t.split_whitespace().count() > 5),
        "assembled stream text: {out}"
    );
}
