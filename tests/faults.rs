//! Bad input and broken peers: clear errors, nothing lost, no panic.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::*;
use tokentap::app;
use tokentap::config::{Config, Upstream};

fn error_code(r: &Reply) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("OpenAI-shaped JSON error");
    assert!(v["error"]["message"].is_string(), "message in {v}");
    assert!(v["error"].get("param").is_some(), "param in {v}");
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_a_502_json_error() {
    // a port that was just free: nothing listens there
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let cfg =
        Config::for_upstream(Upstream::parse(&format!("http://127.0.0.1:{port}")).expect("url"));
    let proxy = app::start(cfg).await.expect("starts");
    let r = post_json(
        &proxy.url(),
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(error_code(&r), "connection_error");
    let page = metrics(&proxy.url()).await;
    assert_eq!(
        sum(
            &page,
            "llm_requests_total",
            &[("status", "error"), ("model", "gpt-4o-mini")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &page,
            "gen_ai_client_operation_duration_seconds_count",
            &[("error_type", "connection_error")]
        ),
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_passes_through_and_counts_as_error() {
    let s = Stack::start().await;
    let body = r#"{"model":"demo-error-429","messages":[{"role":"user","content":"hi"}]}"#;
    let direct = post_json(&s.direct(), "/v1/chat/completions", body).await;
    let via = post_json(&s.via(), "/v1/chat/completions", body).await;
    assert_eq!(via.status, 429);
    assert_eq!(
        via.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"7"[..])
    );
    assert_same(&direct, &via);
    let page = s.metrics().await;
    assert_eq!(
        sum(&page, "llm_requests_total", &[("status", "error")]),
        1.0
    );
    assert_eq!(
        sum(
            &page,
            "gen_ai_client_operation_duration_seconds_count",
            &[("error_type", "rate_limit_exceeded")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_error_without_code_uses_its_type() {
    let s = Stack::start().await;
    let via = post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"demo-error-500","messages":[]}"#,
    )
    .await;
    assert_eq!(via.status, 500);
    let page = s.metrics().await;
    assert_eq!(
        sum(
            &page,
            "gen_ai_client_operation_duration_seconds_count",
            &[("error_type", "server_error")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_leaving_mid_stream_is_recorded_as_cancelled() {
    let s = Stack::start().await;
    let mut body = open_hung_stream(&s.via()).await;
    let first = body.frame().await.expect("a frame").expect("ok frame");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop(body); // the client goes away while the upstream still streams
    let recorded = eventually(async || {
        let page = s.metrics().await;
        sum(
            &page,
            "gen_ai_client_operation_duration_seconds_count",
            &[("error_type", "cancelled")],
        ) == 1.0
    })
    .await;
    assert!(recorded, "cancelled call recorded:\n{}", s.metrics().await);
    // and tokentap keeps serving
    let ok = post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"still there?"}]}"#,
    )
    .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn non_json_request_is_forwarded_unchanged() {
    let s = Stack::start().await;
    let body = Bytes::from_static(b"model=gpt-4o&messages=hello");
    let h = [("content-type", "application/x-www-form-urlencoded")];
    let direct = send(
        &s.direct(),
        "POST",
        "/v1/chat/completions",
        &h,
        body.clone(),
    )
    .await;
    let via = send(&s.via(), "POST", "/v1/chat/completions", &h, body).await;
    assert_eq!(
        direct.status, 400,
        "the upstream, not tokentap, judges the request"
    );
    assert_same(&direct, &via);
    let page = s.metrics().await;
    assert_eq!(
        sum(
            &page,
            "tokentap_parse_errors_total",
            &[("reason", "invalid_json")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &page,
            "llm_requests_total",
            &[("model", "unknown"), ("status", "error")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_upstream_json_and_sse_pass_through_and_are_counted() {
    let s = Stack::start().await;
    let bad_json = r#"{"model":"demo-malformed-json","messages":[{"role":"user","content":"hi"}]}"#;
    let direct = post_json(&s.direct(), "/v1/chat/completions", bad_json).await;
    let via = post_json(&s.via(), "/v1/chat/completions", bad_json).await;
    assert_same(&direct, &via);
    let bad_sse = r#"{"model":"demo-broken-sse","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let direct = post_json(&s.direct(), "/v1/chat/completions", bad_sse).await;
    let via = post_json(&s.via(), "/v1/chat/completions", bad_sse).await;
    assert!(String::from_utf8_lossy(&direct.body).contains("{not json}"));
    assert_same(&direct, &via);
    let page = s.metrics().await;
    assert_eq!(
        sum(
            &page,
            "tokentap_parse_errors_total",
            &[("reason", "invalid_json")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &page,
            "tokentap_parse_errors_total",
            &[("reason", "invalid_sse")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_body_is_413_before_forwarding() {
    let s = Stack::start_with(|c| c.max_body = 1024).await;
    let big = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4096)
    );
    let r = post_json(&s.via(), "/v1/chat/completions", &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(error_code(&r), "request_too_large");
    // also without a content-length (chunked upload)
    let stream =
        futures_util::stream::iter((0..8).map(|_| {
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'a'; 512])))
        }));
    let req = http::Request::post(format!("{}/v1/chat/completions", s.via()))
        .body(http_body_util::StreamBody::new(stream))
        .expect("req");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let resp = client.request(req).await.expect("response");
    assert_eq!(resp.status(), 413);
    let small = post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
    .await;
    assert_eq!(small.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_a_504_and_hung_stream_ends() {
    let s = Stack::start_with(|c| c.read_timeout = Duration::from_millis(300)).await;
    let r = post_json(
        &s.via(),
        "/v1/chat/completions",
        r#"{"model":"demo-slow-3000","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(error_code(&r), "timeout");
    // a stream that goes quiet after starting is cut, and recorded as a timeout
    let body = open_hung_stream(&s.via()).await;
    let collected = body.collect().await;
    assert!(
        collected.is_err(),
        "the client sees the stream break, not a clean end"
    );
    let page = s.metrics().await;
    assert_eq!(
        sum(
            &page,
            "gen_ai_client_operation_duration_seconds_count",
            &[("error_type", "timeout")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_in_the_labs_shape() {
    let s = Stack::start().await;
    let r = send(&s.via(), "GET", "/health", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"status":"healthy","service":"tokentap"})
    );
}

/// A one-shot raw HTTP/1.1 upstream: reads a request, answers `response`, closes.
async fn raw_upstream(response: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // the head, then as many body bytes as it declares
                loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let _ = sock.write_all(&response).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// Upstream read buffers are capped (so pooled connections don't keep grown buffers):
/// a multi-megabyte body still arrives byte for byte; a head up to 64 KiB passes
/// (issue 11: an 8 KiB cap made a 502 of a call the upstream had run and billed), and
/// one over it is a clear 502 with code `upstream_header_too_large`.
#[tokio::test(flavor = "multi_thread")]
async fn big_bodies_pass_and_oversized_response_heads_are_a_502() {
    let words = "tokens ".repeat(3 * 1024 * 1024 / 7);
    let body = format!(
        r#"{{"id":"x","object":"chat.completion","model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"{words}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}}}"#
    );
    let mut ok = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-big: {}\r\n\r\n",
        body.len(),
        "h".repeat(4000)
    )
    .into_bytes();
    ok.extend_from_slice(body.as_bytes());
    let cfg = Config::for_upstream(Upstream::parse(&raw_upstream(ok).await).expect("url"));
    let proxy = app::start(cfg).await.expect("starts");
    let r = post_json(
        &proxy.url(),
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body.as_bytes(), "the body, byte for byte");
    assert_eq!(r.headers["x-big"].len(), 4000);
    let page = metrics(&proxy.url()).await;
    assert_eq!(
        sum(&page, "llm_tokens_used_total", &[("type", "completion")]),
        5.0,
        "usage read from the end of the big body"
    );
    proxy.shutdown().await;

    let big_head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nx-big: {}\r\n\r\n{{}}",
        "h".repeat(16 * 1024)
    );
    let cfg = Config::for_upstream(
        Upstream::parse(&raw_upstream(big_head.into_bytes()).await).expect("url"),
    );
    let proxy = app::start(cfg).await.expect("starts");
    let r = post_json(
        &proxy.url(),
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "a 16 KiB head passes");
    assert_eq!(r.headers["x-big"].len(), 16 * 1024);
    assert_eq!(&r.body[..], b"{}");
    proxy.shutdown().await;

    let huge = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nx-huge: {}\r\n\r\n{{}}",
        "h".repeat(70 * 1024)
    );
    let cfg =
        Config::for_upstream(Upstream::parse(&raw_upstream(huge.into_bytes()).await).expect("url"));
    let proxy = app::start(cfg).await.expect("starts");
    let r = post_json(
        &proxy.url(),
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(error_code(&r), "upstream_header_too_large");
    proxy.shutdown().await;
}

/// An upstream that streams a whole chat completion, `[DONE]` included, and then
/// keeps the body open (its end would come in a later read).
async fn done_then_hang_upstream() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = sock.read(&mut buf).await;
                let events = concat!(
                    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n",
                    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
                    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
                    "data: [DONE]\n\n",
                );
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let chunk = format!("{:x}\r\n{events}\r\n", events.len());
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(chunk.as_bytes()).await;
                // the terminating chunk never comes
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    format!("http://{addr}")
}

/// The official Python SDK stops reading at `data: [DONE]` and closes: a stream
/// whose `[DONE]` went through is complete, not cancelled, whenever its body ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_after_done_completed_the_call() {
    let cfg = Config::for_upstream(Upstream::parse(&done_then_hang_upstream().await).expect("url"));
    let proxy = app::start(cfg).await.expect("starts");
    let req = http::Request::post(format!("{}/v1/chat/completions", proxy.url()))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from_static(
            br#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        )))
        .expect("request");
    let resp = http_client().request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: [DONE]") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a frame in time")
            .expect("a frame")
            .expect("ok frame");
        if let Some(d) = frame.data_ref() {
            seen.extend_from_slice(d);
        }
    }
    drop(body); // as the SDK does after [DONE]
    let url = proxy.url();
    let recorded = eventually(async || {
        let page = metrics(&url).await;
        sum(&page, "llm_requests_total", &[]) == 1.0
    })
    .await;
    let page = metrics(&proxy.url()).await;
    assert!(recorded, "the call was recorded:\n{page}");
    assert_eq!(
        sum(&page, "llm_requests_total", &[("status", "success")]),
        1.0,
        "{page}"
    );
    assert_eq!(
        sum(&page, "llm_tokens_used_total", &[("type", "total")]),
        4.0
    );
    proxy.shutdown().await;
}
