//! Attribution (SPEC §11): who made each call, on its span and — opted in — on the
//! lab's counters, read from the request's headers, key, body and baggage; the key
//! itself never reaches telemetry.

#[path = "support/blackbox/mod.rs"]
mod blackbox;
mod support;

use std::collections::HashMap;
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use bytes::Bytes;
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use serde_json::json;
use support::*;
use tokentap::genai::attribution::Dimension;

const KEY: &str = "sk-attribution-secret-0123456789abcdef";

/// `tokentap key-id` of [`KEY`], computed independently: `printf %s "$KEY" | sha256sum | cut -c1-12`.
fn sha256_prefix(key: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn attrs(s: &SpanData) -> HashMap<String, String> {
    s.attributes
        .iter()
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}

/// The finished span whose `url.path` is `path` (waiting for it); panics on more than one.
async fn span_for(spans: &InMemorySpanExporter, path: &str) -> HashMap<String, String> {
    let has = |s: &SpanData| {
        s.attributes
            .iter()
            .any(|kv| kv.key.as_str() == "url.path" && kv.value == Value::from(path.to_owned()))
    };
    assert!(
        eventually(async || spans.get_finished_spans().unwrap().iter().any(has)).await,
        "a span for {path}"
    );
    let done = spans.get_finished_spans().unwrap();
    let found: Vec<_> = done.iter().filter(|s| has(s)).collect();
    assert_eq!(found.len(), 1, "one span for {path}");
    attrs(found[0])
}

fn openai(base: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{base}/v1"))
            .with_api_key(KEY)
            .with_project_id("proj_alpha")
            .with_org_id("org-acme"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_spans_carry_project_organization_key_id_and_user_from_a_real_client() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (s, spans) = Stack::start_traced(|_| {}).await;
    let req = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .user("end-user-7")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("who am I?")
            .build()
            .expect("message")
            .into()])
        .build()
        .expect("request");
    openai(&s.via()).chat().create(req).await.expect("chat");
    let a = span_for(&spans, "/v1/chat/completions").await;
    assert_eq!(a["openai.project"], "proj_alpha");
    assert_eq!(a["openai.organization"], "org-acme");
    assert_eq!(a["tokentap.key_id"], sha256_prefix(KEY));
    assert_eq!(a["user.id"], "end-user-7");
    assert!(
        a.values().all(|v| !v.contains(KEY)),
        "the key is on the span: {a:?}"
    );

    let emb = CreateEmbeddingRequestArgs::default()
        .model("text-embedding-3-small")
        .input("hello")
        .user("embedder-1")
        .build()
        .expect("request");
    openai(&s.via())
        .embeddings()
        .create(emb)
        .await
        .expect("embeddings");
    let e = span_for(&spans, "/v1/embeddings").await;
    assert_eq!(e["user.id"], "embedder-1");
    assert_eq!(e["openai.project"], "proj_alpha");
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_prefer_safety_identifier_azure_keys_count_and_only_listed_baggage_is_kept() {
    let (s, spans) = Stack::start_traced(|c| {
        c.baggage_keys = vec!["team".into(), "app.tier".into()];
    })
    .await;
    let body = json!({"model": "gpt-5-mini", "input": "hi", "user": "old-style", "safety_identifier": "sid-42"});
    let r = send(
        &s.via(),
        "POST",
        "/v1/responses",
        &[
            ("content-type", "application/json"),
            ("api-key", KEY),
            ("baggage", "team=search%20infra;ttl=1, secret=do-not-record"),
            ("baggage", "app.tier=gold"),
        ],
        Bytes::from(body.to_string()),
    )
    .await;
    assert_eq!(r.status, 200);
    let a = span_for(&spans, "/v1/responses").await;
    assert_eq!(a["user.id"], "sid-42");
    assert_eq!(a["tokentap.key_id"], sha256_prefix(KEY));
    assert_eq!(a["team"], "search infra");
    assert_eq!(a["app.tier"], "gold");
    assert!(!a.contains_key("secret"), "{a:?}");
    assert!(!a.contains_key("openai.project"), "no header, no attribute");

    // a request without any of it gets none of the attributes
    let plain = send(
        &s.via(),
        "POST",
        "/v1/embeddings",
        &[("content-type", "application/json")],
        Bytes::from(r#"{"model":"text-embedding-3-small","input":"x"}"#),
    )
    .await;
    assert_eq!(plain.status, 200);
    let p = span_for(&spans, "/v1/embeddings").await;
    for k in [
        "openai.project",
        "openai.organization",
        "tokentap.key_id",
        "user.id",
        "team",
    ] {
        assert!(!p.contains_key(k), "{k} in {p:?}");
    }
}

/// A chat call through `base` as `project` with `key`; returns the usage it reported.
async fn chat_as(base: &str, project: Option<&str>, key: &str) -> (u64, u64) {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    if let Some(p) = project {
        headers.push(("openai-project", p));
    }
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"count my tokens please"}]}"#;
    let r = send(
        base,
        "POST",
        "/v1/chat/completions",
        &headers,
        Bytes::from(body),
    )
    .await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let u = &v["usage"];
    (
        u["prompt_tokens"].as_u64().expect("prompt"),
        u["completion_tokens"].as_u64().expect("completion"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_are_absent_by_default() {
    let s = Stack::start().await;
    chat_as(&s.via(), Some("proj_alpha"), KEY).await;
    let page = s.metrics().await;
    for (name, labels, _) in parse_metrics(&page) {
        if name.starts_with("llm_") {
            for l in ["project", "organization", "key_id", "user"] {
                assert!(!labels.contains_key(l), "{name} has {l}: {labels:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn opted_in_labels_are_exact_fold_past_the_caps_and_costs_add_up() {
    let s = Stack::start_with(|c| {
        c.metric_dimensions = vec![Dimension::Project, Dimension::KeyId];
        c.max_label_values = 3;
        c.max_label_length = 16;
    })
    .await;
    // gpt-4o-mini: USD 0.15 in / 0.60 out per 1M tokens (no cached tokens here)
    let cost = |(i, o): (u64, u64)| (i as f64 * 0.15 + o as f64 * 0.60) / 1e6;
    let mut by_project: HashMap<&str, (f64, f64)> = HashMap::new();
    let calls: [(Option<&str>, &str); 8] = [
        (Some("proj_alpha"), "sk-a"),
        (Some("proj_alpha"), "sk-b"),
        (Some("proj_beta"), "sk-a"),
        (None, "sk-a"),
        (Some("proj_gamma"), "sk-c"),
        // past --max-label-values (3: alpha, beta, gamma): folds into other
        (Some("proj_delta"), "sk-d"),
        // past --max-label-length (16 bytes)
        (Some("proj_with_a_very_long_name"), "sk-a"),
        (Some("proj_alpha"), "sk-a"),
    ];
    for (project, key) in calls {
        let usage = chat_as(&s.via(), project, key).await;
        let label = match project {
            None => "none",
            Some("proj_delta" | "proj_with_a_very_long_name") => "other",
            Some(p) => p,
        };
        let e = by_project.entry(label).or_default();
        e.0 += 1.0;
        e.1 += cost(usage);
    }
    let page = s.metrics().await;
    let model = ("model", "gpt-4o-mini");
    for (label, (n, usd)) in &by_project {
        let want = [model, ("project", *label)];
        assert_eq!(sum(&page, "llm_requests_total", &want), *n, "{label}");
        let got = sum(&page, "llm_cost_usd_total", &want);
        assert!((got - usd).abs() < 1e-12, "{label}: {got} vs {usd}");
    }
    assert_eq!(
        sum(&page, "llm_requests_total", &[model]),
        calls.len() as f64
    );
    // key ids: the first three keys admitted, sk-d folds
    let id = |k: &str| sha256_prefix(k);
    let keyed = |k: &str| sum(&page, "llm_requests_total", &[model, ("key_id", &id(k))]);
    assert_eq!(
        (keyed("sk-a"), keyed("sk-b"), keyed("sk-c")),
        (5.0, 1.0, 1.0)
    );
    assert_eq!(
        sum(&page, "llm_requests_total", &[("key_id", "other")]),
        1.0
    );
    // tokens carry the labels too; the histograms and GenAI metrics do not
    assert!(
        sum(
            &page,
            "llm_tokens_used_total",
            &[("project", "proj_beta"), ("type", "total")]
        ) > 0.0
    );
    for (name, labels, _) in parse_metrics(&page) {
        if name.starts_with("gen_ai_") || name.starts_with("llm_request_duration") {
            assert!(!labels.contains_key("project"), "{name}: {labels:?}");
        }
    }
}

#[test]
fn key_id_prints_the_fingerprint_and_bad_dimensions_are_config_errors() {
    use std::io::Write;
    let mut child = blackbox::child::command()
        .arg("key-id")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{KEY}\n").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("key-id runs");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        sha256_prefix(KEY)
    );

    for args in [
        &["--metric-dimensions", "team"][..],
        &["--metric-dimensions", "project,project"],
        &["--baggage-keys", "model", "--metric-dimensions", "model"],
        &["--baggage-keys", "a b"],
    ] {
        let exit = blackbox::child::run_to_exit(args, &[]);
        assert_eq!(exit.code, Some(2), "{args:?}: {exit:?}");
        assert_eq!(exit.stderr.trim().lines().count(), 1, "{args:?}: {exit:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_appears_in_no_span_log_metric_or_output() {
    let receiver = support::otlp::Receiver::http().await;
    let endpoint = receiver.endpoint();
    let tt = blackbox::child::Tokentap::start_with(
        &[
            "--demo",
            "--demo-chunk-delay",
            "0ms",
            "--metric-dimensions",
            "project,key_id,user",
            "--log-format",
            "json",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_LOGS_EXPORTER", "otlp"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("TOKENTAP_LOG", "debug"),
        ],
    );
    let base = tt.url();
    chat_as(&base, Some("proj_alpha"), KEY).await;
    let stream =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    for (header, value) in [
        ("authorization", format!("Bearer {KEY}")),
        ("api-key", KEY.to_owned()),
    ] {
        let r = send(
            &base,
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                (header, value.as_str()),
            ],
            Bytes::from(stream),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let id = sha256_prefix(KEY);
    assert!(
        receiver
            .wait_for(Duration::from_secs(20), |r| {
                r.spans()
                    .iter()
                    .filter(|s| s.str("tokentap.key_id") == Some(id.as_str()))
                    .count()
                    == 3
                    && !r.logs().is_empty()
                    && r.metric_names().iter().any(|n| n == "llm_requests_total")
            })
            .await,
        "spans with the key id, logs and metrics arrive"
    );
    let page = support::metrics(&base).await;
    assert!(
        page.contains(&format!("key_id=\"{id}\"")),
        "the id labels the counters"
    );
    let exported = receiver.raw_bytes_seen();
    let secret = KEY.as_bytes();
    assert!(
        !exported.windows(secret.len()).any(|w| w == secret),
        "the key was exported over OTLP"
    );
    assert!(!page.contains(KEY), "the key is on /metrics");
    assert!(!tt.stderr().contains(KEY), "the key is in the log");
    assert!(!tt.stdout().contains(KEY), "the key is on stdout");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_view_lists_each_calls_project_and_key_id() {
    let s = Stack::start().await;
    chat_as(&s.via(), Some("proj_alpha"), KEY).await;
    chat_as(&s.via(), None, "sk-other").await;
    let r = send(&s.via(), "GET", "/api/calls", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    let calls: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let calls = calls.as_array().expect("array");
    assert_eq!(calls.len(), 2);
    // newest first
    assert_eq!(calls[0]["project"], serde_json::Value::Null);
    assert_eq!(calls[0]["key_id"], sha256_prefix("sk-other"));
    assert_eq!(calls[1]["project"], "proj_alpha");
    assert_eq!(calls[1]["key_id"], sha256_prefix(KEY));
    assert_eq!(calls[1]["attributes"]["openai.project"], "proj_alpha");
}
