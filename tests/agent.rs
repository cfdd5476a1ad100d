//! The lab's agent API on tokentap: the walk-through, validation, failures,
//! one trace per message, metrics, and serialised concurrent turns.

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use opentelemetry::trace::SpanKind;
use support::*;
use tokentap::config::{AgentModels, Secret};

/// An agent that may use any model (the tests ask for the demo's fault models).
async fn agent_stack() -> (Stack, opentelemetry_sdk::trace::InMemorySpanExporter) {
    Stack::start_traced(|c| {
        c.api_key = Some(Secret::new("sk-agent-test-key"));
        c.agent_models = Some(AgentModels::Any);
    })
    .await
}

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("json body ({e}): {:?}", String::from_utf8_lossy(&r.body)))
}

async fn chat(base: &str, body: &str) -> Reply {
    post_json(base, "/chat", body).await
}

async fn summary(base: &str, id: Option<&str>) -> serde_json::Value {
    let path = match id {
        Some(i) => format!("/conversation-summary?conversation_id={i}"),
        None => "/conversation-summary".to_owned(),
    };
    json(&send(base, "GET", &path, &[], Bytes::new()).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_labs_walk_through() {
    let (s, _) = agent_stack().await;
    let base = s.via();
    let r = post_json(&base, "/new-conversation", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        json(&r),
        serde_json::json!({"message": "New conversation started", "conversation_id": "default"})
    );

    let mut cost = 0.0;
    for (turn, text) in ["What is OpenTelemetry?", "And a span?", "Thanks!"]
        .iter()
        .enumerate()
    {
        let r = chat(
            &base,
            &format!(r#"{{"message": "{text}", "model": "gpt-4o-mini"}}"#),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let v = json(&r);
        assert_eq!(v["conversation_turn"], turn + 1);
        assert!(v["response"].as_str().is_some_and(|t| !t.is_empty()));
        let m = &v["metrics"];
        assert_eq!(m["model"], "gpt-4o-mini");
        let (p, c) = (
            m["prompt_tokens"].as_u64().expect("p"),
            m["completion_tokens"].as_u64().expect("c"),
        );
        assert_eq!(m["tokens_used"].as_u64(), Some(p + c));
        let want = (p as f64 * 0.15 + c as f64 * 0.60) / 1e6;
        assert!((m["cost_usd"].as_f64().expect("cost") - want).abs() < 1e-15);
        assert!(m["duration_seconds"].as_f64().is_some_and(|d| d >= 0.0));
        cost += want;
    }
    let sm = summary(&base, None).await;
    assert_eq!(
        sm,
        serde_json::json!({"total_messages": 6, "user_messages": 3, "assistant_messages": 3, "conversation_turns": 3})
    );
    // the history reached the model: the third prompt is longer than the first
    let page = s.metrics().await;
    assert_eq!(sum(&page, "agent_messages_total", &[("type", "user")]), 3.0);
    assert_eq!(
        sum(&page, "agent_messages_total", &[("type", "assistant")]),
        3.0
    );
    assert_eq!(
        sum(&page, "agent_conversations_total", &[("action", "start")]),
        1.0
    );
    assert_eq!(
        sum(
            &page,
            "llm_requests_total",
            &[("model", "gpt-4o-mini"), ("status", "success")]
        ),
        3.0
    );
    let recorded = sum(&page, "llm_cost_usd_total", &[]);
    assert!((recorded - cost).abs() < 1e-12, "{recorded} vs {cost}");

    // reset
    post_json(&base, "/new-conversation", "").await;
    assert_eq!(summary(&base, None).await["total_messages"], 0);

    // two isolated conversations
    for (id, n) in [("alice", 2), ("bob", 1)] {
        for _ in 0..n {
            let r = chat(
                &base,
                &format!(r#"{{"message": "hi", "conversation_id": "{id}"}}"#),
            )
            .await;
            assert_eq!(r.status, 200);
        }
    }
    assert_eq!(summary(&base, Some("alice")).await["total_messages"], 4);
    assert_eq!(summary(&base, Some("bob")).await["total_messages"], 2);
    assert_eq!(summary(&base, None).await["total_messages"], 0);
    let r = post_json(
        &base,
        "/new-conversation",
        r#"{"conversation_id": "alice"}"#,
    )
    .await;
    assert_eq!(json(&r)["conversation_id"], "alice");
    assert_eq!(summary(&base, Some("alice")).await["total_messages"], 0);
    assert_eq!(summary(&base, Some("bob")).await["total_messages"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_and_failures() {
    let (s, _) = agent_stack().await;
    let base = s.via();
    let r = chat(&base, "{not json").await;
    assert_eq!(r.status, 422);
    assert!(json(&r)["detail"].is_array());
    let r = chat(&base, r#"{"model": "gpt-4o-mini"}"#).await;
    assert_eq!(r.status, 422);
    assert_eq!(
        json(&r)["detail"][0]["loc"],
        serde_json::json!(["body", "message"])
    );
    assert_eq!(json(&r)["detail"][0]["type"], "missing");
    let r = chat(&base, r#"{"message": 42}"#).await;
    assert_eq!(r.status, 422);

    chat(&base, r#"{"message": "first"}"#).await;
    let before = summary(&base, None).await;
    let r = chat(
        &base,
        r#"{"message": "this one fails", "model": "demo-error-500"}"#,
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(
        json(&r)["detail"]
            .as_str()
            .is_some_and(|d| d.contains("500"))
    );
    assert_eq!(
        summary(&base, None).await,
        before,
        "conversation unchanged by a failure"
    );
    let page = s.metrics().await;
    assert_eq!(
        sum(
            &page,
            "llm_requests_total",
            &[("model", "demo-error-500"), ("status", "error")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_key_outside_demo_is_a_clear_503() {
    let s = Stack::start().await; // no OPENAI_API_KEY, not --demo
    let r = chat(&s.via(), r#"{"message": "hi"}"#).await;
    assert_eq!(r.status, 503);
    assert!(
        json(&r)["detail"]
            .as_str()
            .is_some_and(|d| d.contains("OPENAI_API_KEY"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_per_chat_with_three_nested_spans() {
    let (s, spans) = agent_stack().await;
    let r = chat(
        &s.via(),
        r#"{"message": "trace me", "model": "gpt-4o-mini"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(eventually(async || spans.get_finished_spans().expect("spans").len() == 3).await);
    let all = spans.get_finished_spans().expect("spans");
    let by: HashMap<String, _> = all.iter().map(|s| (s.name.to_string(), s)).collect();
    let api = by.get("api.chat").expect("api.chat");
    let process = by
        .get("agent.process_message")
        .expect("agent.process_message");
    let client = by.get("chat gpt-4o-mini").expect("chat span");
    assert_eq!(api.span_kind, SpanKind::Server);
    assert_eq!(process.span_kind, SpanKind::Internal);
    assert_eq!(client.span_kind, SpanKind::Client);
    let trace = api.span_context.trace_id();
    assert!(
        all.iter().all(|s| s.span_context.trace_id() == trace),
        "one trace"
    );
    assert_eq!(process.parent_span_id, api.span_context.span_id());
    assert_eq!(client.parent_span_id, process.span_context.span_id());
    let attr = |s: &opentelemetry_sdk::trace::SpanData, k: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.clone())
    };
    assert_eq!(
        attr(process, "agent.message.length"),
        Some(opentelemetry::Value::I64(8))
    );
    assert_eq!(
        attr(process, "agent.conversation.turn"),
        Some(opentelemetry::Value::I64(1))
    );
    assert_eq!(
        attr(process, "agent.conversation.total_messages"),
        Some(opentelemetry::Value::I64(2))
    );
    assert!(
        matches!(attr(process, "agent.response.length"), Some(opentelemetry::Value::I64(n)) if n > 0)
    );
    assert!(attr(client, "gen_ai.usage.input_tokens").is_some());
    // attribution (SPEC §11): the conversation, and the operator key's id (never the key)
    assert_eq!(
        attr(client, "gen_ai.conversation.id"),
        Some(opentelemetry::Value::from("default"))
    );
    assert_eq!(
        attr(client, "tokentap.key_id"),
        Some(opentelemetry::Value::from(
            tokentap::genai::attribution::key_id("sk-agent-test-key")
        ))
    );
    assert!(
        r.headers["traceresponse"]
            .to_str()
            .expect("ascii")
            .contains(&trace.to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_chats_on_one_conversation_stay_well_formed() {
    let (s, _) = agent_stack().await;
    let base = s.via();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let base = base.clone();
            tokio::spawn(async move {
                chat(&base, &format!(r#"{{"message": "message number {i}"}}"#)).await
            })
        })
        .collect();
    let mut turns = Vec::new();
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, 200);
        turns.push(json(&r)["conversation_turn"].as_u64().expect("turn"));
    }
    turns.sort();
    assert_eq!(
        turns,
        (1..=20).collect::<Vec<u64>>(),
        "each call saw the history of all before it"
    );
    assert_eq!(
        summary(&base, None).await,
        serde_json::json!({"total_messages": 40, "user_messages": 20, "assistant_messages": 20, "conversation_turns": 20})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_chat_sends_deltas_then_metrics() {
    let (s, _) = agent_stack().await;
    let r = chat(&s.via(), r#"{"message": "stream please", "stream": true}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let text = String::from_utf8(r.body.to_vec()).expect("utf8");
    let mut deltas = String::new();
    let mut done = None;
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let data = block
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("data line");
        let v: serde_json::Value = serde_json::from_str(data).expect("json event");
        if block.starts_with("event: done") {
            done = Some(v);
        } else {
            deltas.push_str(v["delta"].as_str().expect("delta"));
        }
    }
    let done = done.expect("final event");
    assert_eq!(done["response"].as_str(), Some(deltas.as_str()));
    assert_eq!(done["conversation_turn"], 1);
    assert!(
        done["metrics"]["completion_tokens"]
            .as_u64()
            .is_some_and(|c| c > 0)
    );
    assert_eq!(summary(&s.via(), None).await["total_messages"], 2);
}
