//! The fast mock OpenAI upstream every target is measured against.
//!
//! The harness runs it as a child process (`<harness> --mock-upstream PORT`, pinned with
//! the proxies) so that its CPU time is accounted like the proxies' and never competes
//! with the load generator. One current-thread tokio runtime, HTTP/1.1 with keep-alive:
//!
//! - `POST /v1/chat/completions` → a fixed ~650-byte `chat.completion` with usage;
//! - the same with `"stream":true` → [`CHUNKS`] `chat.completion.chunk` events
//!   [`CHUNK_INTERVAL`] apart on a fixed schedule (the first at once), then `data: [DONE]`.
//!   With `stream_options.include_usage` every chunk carries `"usage":null` and a
//!   usage-only chunk precedes `[DONE]`, as OpenAI does — tokentap asks for it on the
//!   client's behalf and strips it again, so honouring it exercises that path;
//! - anything else → `404`.
//!
//! It prints `mock-upstream listening on PORT` once ready and exits when its stdin
//! closes, so it never outlives the harness even if the harness is killed.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokentap::demo::DemoBody;
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Content chunks per stream (the first carries the role, the last the finish reason).
pub const CHUNKS: usize = 50;
/// Pause between two consecutive chunks.
pub const CHUNK_INTERVAL: Duration = Duration::from_millis(20);
/// The line the mock prints once it accepts connections, followed by its port.
pub const READY: &str = "mock-upstream listening on ";

const COMPLETION: &str = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"OpenTelemetry is an observability framework: traces, metrics, logs.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":18,"completion_tokens":24,"total_tokens":42,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_06737a9306"}"#;

const CHUNK_HEAD: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":"#;

const WORDS: [&str; 8] = [
    " Open",
    "Telemetry",
    " is",
    " an",
    " observability",
    " framework",
    " for",
    " traces,",
];

/// Runs the mock upstream until stdin closes. Blocks.
pub fn run(port: u16) -> crate::Result<()> {
    crate::procs::exit_when_stdin_closes()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(port))
}

async fn serve(port: u16) -> crate::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    // 1,000 streams arrive at once through the proxies: a deep accept queue.
    let listener = socket.listen(4096)?;
    let canned = Arc::new(Canned::new());
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY}{}", listener.local_addr()?.port())?;
        out.flush()?;
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("mock upstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let canned = canned.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, canned.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Every response body, built once.
struct Canned {
    completion: Bytes,
    not_found: Bytes,
    /// The stream a client that did not ask for usage gets; the last item ends with `[DONE]`.
    plain: Vec<Bytes>,
    /// The stream with `include_usage`: `"usage":null` members and the usage-only chunk.
    with_usage: Vec<Bytes>,
}

impl Canned {
    fn new() -> Canned {
        Canned {
            completion: Bytes::from_static(COMPLETION.as_bytes()),
            not_found: Bytes::from_static(
                br#"{"error":{"message":"mock upstream: unknown route","type":"invalid_request_error","param":null,"code":"unknown_url"}}"#,
            ),
            plain: stream_chunks(false),
            with_usage: stream_chunks(true),
        }
    }
}

fn stream_chunks(include_usage: bool) -> Vec<Bytes> {
    let usage_null = if include_usage {
        r#","usage":null"#
    } else {
        ""
    };
    (0..CHUNKS)
        .map(|k| {
            let (delta, finish) = if k == 0 {
                (
                    r#"{"role":"assistant","content":"","refusal":null}"#.to_owned(),
                    "null",
                )
            } else if k == CHUNKS - 1 {
                ("{}".to_owned(), r#""stop""#)
            } else {
                (
                    format!(r#"{{"content":"{}"}}"#, WORDS[k % WORDS.len()]),
                    "null",
                )
            };
            let mut event = format!(
                "data: {CHUNK_HEAD}[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]{usage_null}}}\n\n"
            );
            if k == CHUNKS - 1 {
                if include_usage {
                    let completion_tokens = CHUNKS - 2;
                    let total = 18 + completion_tokens;
                    event.push_str(&format!(
                        "data: {CHUNK_HEAD}[],\"usage\":{{\"prompt_tokens\":18,\"completion_tokens\":{completion_tokens},\"total_tokens\":{total},\"prompt_tokens_details\":{{\"cached_tokens\":0,\"audio_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}}}}\n\n"
                    ));
                }
                event.push_str("data: [DONE]\n\n");
            }
            Bytes::from(event)
        })
        .collect()
}

async fn handle(
    req: Request<Incoming>,
    canned: Arc<Canned>,
) -> Result<Response<DemoBody>, Infallible> {
    if req.method() != Method::POST || req.uri().path() != "/v1/chat/completions" {
        return Ok(respond(
            StatusCode::NOT_FOUND,
            "application/json",
            DemoBody::Full(Some(canned.not_found.clone())),
        ));
    }
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(respond(
                StatusCode::BAD_REQUEST,
                "application/json",
                DemoBody::Full(Some(canned.not_found.clone())),
            ));
        }
    };
    let (stream, include_usage) = stream_flags(&body);
    if !stream {
        return Ok(respond(
            StatusCode::OK,
            "application/json",
            DemoBody::Full(Some(canned.completion.clone())),
        ));
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(pace(tx, canned, include_usage));
    let mut resp = respond(
        StatusCode::OK,
        "text/event-stream; charset=utf-8",
        DemoBody::Channel(rx.into()),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// `(stream, stream_options.include_usage)`; JSON is parsed only when `"stream"` occurs.
fn stream_flags(body: &[u8]) -> (bool, bool) {
    if memchr::memmem::find(body, b"\"stream\"").is_none() {
        return (false, false);
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (false, false);
    };
    let stream = v
        .get("stream")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    (stream, include_usage)
}

/// Sends the chunks on a fixed schedule (no drift): chunk `k` at `start + k × interval`.
async fn pace(tx: mpsc::Sender<Bytes>, canned: Arc<Canned>, include_usage: bool) {
    let start = Instant::now();
    let chunks = if include_usage {
        &canned.with_usage
    } else {
        &canned.plain
    };
    for (k, chunk) in chunks.iter().enumerate() {
        if k > 0 {
            tokio::time::sleep_until(start + CHUNK_INTERVAL * k as u32).await;
        }
        if tx.send(chunk.clone()).await.is_err() {
            return; // the client went away
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: DemoBody) -> Response<DemoBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("x-request-id", HeaderValue::from_static("req_bench"));
    resp
}
