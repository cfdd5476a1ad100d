//! The client gets exactly what the upstream sent: same status, headers and bytes,
//! checked against a direct request to the same upstream.

mod support;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use bytes::Bytes;
use futures_util::StreamExt;
use support::*;

fn openai(base: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{base}/v1"))
            .with_api_key("sk-test-key"),
    )
}

fn chat_request(model: &str, text: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content(text)
            .build()
            .expect("message")
            .into()])
        .build()
        .expect("request")
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"What is OpenTelemetry and why does it matter?"}]}"#;
const CHAT_STREAM: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Explain tracing in one paragraph, please."}]}"#;

#[tokio::test(flavor = "multi_thread")]
async fn non_stream_raw_is_byte_identical() {
    let s = Stack::start().await;
    let direct = post_json(&s.direct(), "/v1/chat/completions", CHAT).await;
    let via = post_json(&s.via(), "/v1/chat/completions", CHAT).await;
    assert_eq!(direct.status, 200);
    assert_same(&direct, &via);
}

#[tokio::test(flavor = "multi_thread")]
async fn async_openai_client_sees_the_same_completion() {
    install_crypto();
    let s = Stack::start().await;
    let req = chat_request("gpt-4o-mini", "Hello through the proxy");
    let direct = openai(&s.direct())
        .chat()
        .create(req.clone())
        .await
        .expect("direct");
    let via = openai(&s.via())
        .chat()
        .create(req)
        .await
        .expect("via tokentap");
    assert_eq!(direct, via);
    let usage = via.usage.expect("usage");
    let page = s.metrics().await;
    assert_eq!(
        sum(&page, "llm_tokens_used_total", &[("type", "prompt")]),
        f64::from(usage.prompt_tokens)
    );
    assert_eq!(
        sum(&page, "llm_tokens_used_total", &[("type", "completion")]),
        f64::from(usage.completion_tokens)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn async_openai_stream_through_the_proxy() {
    install_crypto();
    let s = Stack::start().await;
    let mut req = chat_request("gpt-4o-mini", "Stream me a short answer");
    req.stream = Some(true);
    let collect = |base: String, req: CreateChatCompletionRequest| async move {
        let mut stream = openai(&base)
            .chat()
            .create_stream(req)
            .await
            .expect("stream");
        let mut text = String::new();
        let mut usage_chunks = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("chunk");
            usage_chunks += usize::from(chunk.usage.is_some());
            for c in chunk.choices {
                text.push_str(c.delta.content.as_deref().unwrap_or(""));
            }
        }
        (text, usage_chunks)
    };
    let (direct_text, direct_usage) = collect(s.direct(), req.clone()).await;
    let (via_text, via_usage) = collect(s.via(), req).await;
    assert!(!direct_text.is_empty());
    assert_eq!(direct_text, via_text);
    // the client did not ask for usage, so it must not see the chunk tokentap asked for
    assert_eq!((direct_usage, via_usage), (0, 0));
    // the call is recorded when tokentap sees the body end, which can trail the
    // client reading `[DONE]`
    assert!(
        eventually(async || {
            sum(
                &s.metrics().await,
                "llm_tokens_used_total",
                &[("type", "completion")],
            ) > 0.0
        })
        .await,
        "completion tokens recorded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_without_include_usage_is_byte_identical_and_metered_exactly() {
    let s = Stack::start().await;
    let direct = post_json(&s.direct(), "/v1/chat/completions", CHAT_STREAM).await;
    let via = post_json(&s.via(), "/v1/chat/completions", CHAT_STREAM).await;
    assert_eq!(direct.status, 200);
    assert!(
        !direct.body.windows(7).any(|w| w == b"\"usage\""),
        "upstream sent no usage"
    );
    assert_same(&direct, &via);

    // the exact counts, as the upstream reports them when asked
    let with_usage = CHAT_STREAM.replacen(
        "\"stream\":true",
        "\"stream\":true,\"stream_options\":{\"include_usage\":true}",
        1,
    );
    let asked = post_json(&s.direct(), "/v1/chat/completions", &with_usage).await;
    let text = String::from_utf8(asked.body.to_vec()).expect("utf8");
    let usage_line = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(d).expect("json chunk"))
        .find(|v| v["usage"].is_object())
        .expect("usage chunk");
    let u = &usage_line["usage"];
    let page = s.metrics().await;
    assert_eq!(
        sum(&page, "llm_tokens_used_total", &[("type", "prompt")]),
        u["prompt_tokens"].as_f64().expect("n")
    );
    assert_eq!(
        sum(&page, "llm_tokens_used_total", &[("type", "completion")]),
        u["completion_tokens"].as_f64().expect("n")
    );
    assert_eq!(
        sum(&page, "llm_tokens_used_total", &[("type", "total")]),
        u["total_tokens"].as_f64().expect("n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_that_asked_for_usage_is_untouched() {
    let s = Stack::start().await;
    let body = CHAT_STREAM.replacen(
        "\"stream\":true",
        "\"stream\":true,\"stream_options\":{\"include_usage\":true}",
        1,
    );
    let direct = post_json(&s.direct(), "/v1/chat/completions", &body).await;
    let via = post_json(&s.via(), "/v1/chat/completions", &body).await;
    assert!(direct.body.windows(13).any(|w| w == b"\"usage\":{\"pro"));
    assert_same(&direct, &via);
}

#[tokio::test(flavor = "multi_thread")]
async fn injection_off_forwards_as_is_and_records_no_tokens() {
    let s = Stack::start_with(|c| c.usage_injection = false).await;
    let direct = post_json(&s.direct(), "/v1/chat/completions", CHAT_STREAM).await;
    let via = post_json(&s.via(), "/v1/chat/completions", CHAT_STREAM).await;
    assert_same(&direct, &via);
    let page = s.metrics().await;
    assert_eq!(
        sum(&page, "llm_requests_total", &[("status", "success")]),
        1.0
    );
    assert_eq!(
        sum(&page, "llm_tokens_used_total", &[]),
        0.0,
        "no estimate in place of usage"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_body_passes_compressed_and_is_observed() {
    let s = Stack::start().await;
    let h = [
        ("content-type", "application/json"),
        ("accept-encoding", "gzip, deflate"),
    ];
    let direct = send(
        &s.direct(),
        "POST",
        "/v1/chat/completions",
        &h,
        Bytes::from_static(CHAT.as_bytes()),
    )
    .await;
    let via = send(
        &s.via(),
        "POST",
        "/v1/chat/completions",
        &h,
        Bytes::from_static(CHAT.as_bytes()),
    )
    .await;
    assert_eq!(
        direct.headers.get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    assert_eq!(&direct.body[..2], &[0x1f, 0x8b], "gzip magic");
    assert_same(&direct, &via);
    let page = s.metrics().await;
    assert!(
        sum(&page, "llm_tokens_used_total", &[("type", "prompt")]) > 0.0,
        "usage read through gzip"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_endpoint_with_query_is_byte_identical() {
    let s = Stack::start().await;
    let path = "/v1/some/unknown/endpoint?limit=3&order=desc&q=caf%C3%A9";
    let direct = send(
        &s.direct(),
        "GET",
        path,
        &[("authorization", "Bearer sk-test")],
        Bytes::new(),
    )
    .await;
    let via = send(
        &s.via(),
        "GET",
        path,
        &[("authorization", "Bearer sk-test")],
        Bytes::new(),
    )
    .await;
    assert_eq!(direct.status, 404);
    assert!(
        String::from_utf8_lossy(&direct.body).contains("limit=3&order=desc"),
        "query reached upstream"
    );
    assert_same(&direct, &via);
    let page = s.metrics().await;
    assert_eq!(
        sum(&page, "llm_requests_total", &[]),
        0.0,
        "not a model call"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_mib_request_body_is_forwarded() {
    let s = Stack::start().await;
    let words = "observability ".repeat(8 * 1024 * 1024 / 14);
    let body =
        format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{words}"}}]}}"#);
    assert!(body.len() >= 8 << 20);
    let direct = post_json(&s.direct(), "/v1/chat/completions", &body).await;
    let via = post_json(&s.via(), "/v1/chat/completions", &body).await;
    assert_eq!(direct.status, 200);
    assert_same(&direct, &via);
    let v: serde_json::Value = serde_json::from_slice(&via.body).expect("json");
    let prompt = v["usage"]["prompt_tokens"].as_f64().expect("prompt tokens");
    assert!(
        prompt > 500_000.0,
        "the whole body reached the upstream: {prompt}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_and_embeddings_pass_through_and_are_metered() {
    let s = Stack::start().await;
    for (path, body) in [
        (
            "/v1/responses",
            r#"{"model":"gpt-5-mini","input":"Say hello","stream":true}"#,
        ),
        (
            "/v1/responses",
            r#"{"model":"gpt-5-mini","input":"Say hello"}"#,
        ),
        (
            "/v1/embeddings",
            r#"{"model":"text-embedding-3-small","input":["a b c","d e"]}"#,
        ),
        (
            "/v1/completions",
            r#"{"model":"gpt-3.5-turbo-instruct","prompt":"Once upon","stream":true}"#,
        ),
    ] {
        let direct = post_json(&s.direct(), path, body).await;
        let via = post_json(&s.via(), path, body).await;
        assert_eq!(direct.status, 200, "{path} {body}");
        assert_same(&direct, &via);
    }
    let page = s.metrics().await;
    assert_eq!(
        sum(&page, "llm_requests_total", &[("status", "success")]),
        4.0
    );
    assert_eq!(
        sum(
            &page,
            "gen_ai_client_operation_duration_seconds_count",
            &[("gen_ai_operation_name", "embeddings")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &page,
            "gen_ai_client_operation_duration_seconds_count",
            &[("gen_ai_operation_name", "chat")]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &page,
            "gen_ai_client_operation_duration_seconds_count",
            &[("gen_ai_operation_name", "text_completion")]
        ),
        1.0
    );
    // every call reported usage, including the legacy stream that did not ask for it
    assert_eq!(
        sum(
            &page,
            "gen_ai_client_token_usage_count",
            &[("gen_ai_token_type", "input")]
        ),
        4.0
    );
    assert_eq!(
        sum(
            &page,
            "gen_ai_client_operation_time_to_first_chunk_seconds_count",
            &[]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_client_is_served() {
    let s = Stack::start().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{}/v1/chat/completions", s.via()))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from_static(
            CHAT.as_bytes(),
        )))
        .expect("request");
    let resp = client.request(req).await.expect("h2c response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let direct = post_json(&s.direct(), "/v1/chat/completions", CHAT).await;
    assert_eq!(body, direct.body);
}
