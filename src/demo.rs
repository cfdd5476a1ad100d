//! The demo upstream: a deterministic, offline stand-in for the OpenAI API.
//!
//! `tokentap --demo` and the integration tests need an upstream to proxy to,
//! but the real API needs a key, network access and money, and never answers
//! the same way twice. This module serves the handful of OpenAI endpoints the
//! proxy understands with responses shaped like the real ones (field order,
//! SSE framing, the `stream_options.include_usage` rules, token accounting)
//! that are nevertheless a pure function of the request, so the demo works on
//! a laptop in a train and tests can assert on exact bytes.
//!
//! Special model names inject the failures a proxy has to survive: rate
//! limits, server errors, truncated JSON, broken SSE, slow and hanging
//! upstreams. See [`DemoUpstream`] for the routes and the fault models.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// `created` / `created_at` of every generated object.
const CREATED: u64 = 1_750_000_000;
const SYSTEM_FINGERPRINT: &str = "fp_demo0001";
const SERVICE_TIER: &str = "default";
const DONE: &[u8] = b"data: [DONE]\n\n";

/// Models listed by `GET /v1/models`. Any model name is accepted by the model routes.
const MODELS: &[&str] = &[
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-5",
    "gpt-5-mini",
    "o4-mini",
    "text-embedding-3-small",
];

/// Reply bodies; every one carries at least one multi-byte UTF-8 character so
/// that streamed text exercises UTF-8 handling across chunk boundaries.
const SENTENCES: &[&str] = &[
    "Every request leaves a trace — latency, tokens and cost — so a slow call stops being a mystery and becomes a span you can read.",
    "Metrics tell you that something changed, traces tell you where, and logs tell you why; together they make for a café-quiet on-call shift.",
    "A token counted at the proxy is a token you can budget, alert on and explain to finance → no spreadsheet archaeology required.",
    "Percentiles matter more than averages: the p99 is where users live when the model is busy, so watch it closely… and often.",
    "Streaming feels faster because the first token arrives early; measuring time-to-first-token separately keeps that impression honest — naïve averages hide it.",
    "Cached prompt tokens cost less, so a dashboard showing the cache hit ratio often pays for itself within a week — sometimes sooner.",
    "Sampling keeps tracing affordable, but errors and slow requests deserve to be kept every time; that is the résumé of a good tail-based policy.",
    "Good observability is boring: the graphs are flat, the alerts are quiet and the engineer on call finishes a crème brûlée in peace.",
];

/// Argument fragments streamed for the canned weather tool call.
const TOOL_ARGUMENT_PIECES: &[&str] = &["{\"", "location", "\":\"", "Madrid", "\"}"];

/// Tunables of the demo upstream.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Delay between streamed chunks (default 30ms in --demo; tests use 0).
    pub chunk_delay: Duration,
    /// Delay before the response headers of any model call (simulated latency; default 0).
    pub first_byte_delay: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            chunk_delay: Duration::from_millis(30),
            first_byte_delay: Duration::ZERO,
        }
    }
}

/// A running simulated OpenAI API server.
///
/// Routes: `POST /v1/chat/completions`, `POST /v1/completions`,
/// `POST /v1/responses`, `POST /v1/embeddings`, `GET /v1/models` and
/// `GET /v1/models/{id}`; anything else is a 404 in OpenAI's format.
///
/// Fault models (the request's `model`, on the `POST` routes):
/// `demo-error-429`, `demo-error-500`, `demo-malformed-json`,
/// `demo-slow-<ms>`, and on the streaming routes (chat, completions,
/// responses; they stream even without `"stream": true`) `demo-broken-sse`
/// and `demo-hang-stream`.
///
/// Serving stops when [`DemoUpstream::shutdown`] is called or the value is dropped.
pub struct DemoUpstream {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
    #[cfg(test)]
    live_streams: Arc<AtomicUsize>,
}

impl DemoUpstream {
    /// Binds 127.0.0.1:0 (or the given address) and serves in a tokio task until dropped or shut down.
    pub async fn start(addr: SocketAddr, opts: DemoOptions) -> std::io::Result<DemoUpstream> {
        let listener = crate::server::listen(addr)?;
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let live_streams = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(State {
            opts,
            shutdown: shutdown_rx.clone(),
            live_streams: Arc::clone(&live_streams),
        });
        let accept_task = tokio::spawn(accept_loop(listener, state, shutdown_rx));
        Ok(DemoUpstream {
            addr,
            shutdown,
            accept_task,
            #[cfg(test)]
            live_streams,
        })
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// "http://127.0.0.1:PORT" (no trailing slash, no /v1)
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Stop accepting connections; open connections finish their in-flight
    /// requests and close. Also done on drop.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        self.accept_task.abort();
    }
}

impl Drop for DemoUpstream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct State {
    opts: DemoOptions,
    shutdown: watch::Receiver<bool>,
    /// Number of stream-generating tasks alive (lets tests observe that a
    /// client disconnect stops generation).
    live_streams: Arc<AtomicUsize>,
}

/// Resolves once shutdown was requested (or the upstream is gone).
async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No `date` header: identical requests get byte-identical responses.
    builder.http1().auto_date_header(false);
    builder.http2().auto_date_header(false);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown_requested(&mut shutdown) => return,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(
                    stream,
                    Arc::clone(&builder),
                    Arc::clone(&state),
                ));
            }
            Err(err) => {
                // Typically fd exhaustion; back off instead of spinning.
                tracing::debug!(error = %err, "demo upstream: accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<State>,
) {
    let mut shutdown = state.shutdown.clone();
    let service = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(req, state).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "demo upstream: connection ended with an error");
            }
        }
        () = shutdown_requested(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

// ---------------------------------------------------------------------------
// Response body

/// Either a complete buffer or a stream of SSE events fed by a generator task
/// (also the load benchmark's mock upstream body).
pub enum DemoBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl Body for DemoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            DemoBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            DemoBody::Channel(rx) => rx.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, DemoBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DemoBody::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            DemoBody::Full(None) => SizeHint::with_exact(0),
            DemoBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// Counts a generator task as alive for as long as it exists.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(counter))
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sends `events` with `delay` between consecutive ones. Stops as soon as the
/// receiving body is dropped (client gone). With `hang`, keeps the stream open
/// after the events until the client leaves or the server shuts down.
fn spawn_stream(
    events: Vec<Bytes>,
    delay: Duration,
    hang: bool,
    state: &State,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(8);
    let guard = LiveGuard::new(&state.live_streams);
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let _guard = guard;
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = tx.closed() => return,
                }
            }
            if tx.send(event).await.is_err() {
                return;
            }
        }
        if hang {
            tokio::select! {
                () = tx.closed() => {}
                () = shutdown_requested(&mut shutdown) => {}
            }
        }
    });
    rx
}

// ---------------------------------------------------------------------------
// Request dispatch

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Responses,
    Embeddings,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }
}

/// What a model route decided to answer, before it is turned into HTTP.
struct Outcome {
    status: StatusCode,
    request_hash: u64,
    payload: Payload,
    retry_after: bool,
    extra_delay: Duration,
}

enum Payload {
    Json(Vec<u8>),
    Stream { events: Vec<Bytes>, hang: bool },
}

impl Outcome {
    fn json(status: StatusCode, request_hash: u64, body: Vec<u8>) -> Self {
        Self {
            status,
            request_hash,
            payload: Payload::Json(body),
            retry_after: false,
            extra_delay: Duration::ZERO,
        }
    }

    fn error(request_hash: u64, err: &ApiError) -> Self {
        Self::json(err.status, request_hash, err.to_json())
    }
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Response<DemoBody> {
    let gzip = accepts_gzip(req.headers());
    let method = req.method().clone();
    let endpoint = match (&method, req.uri().path()) {
        (&Method::POST, "/v1/chat/completions") => Endpoint::Chat,
        (&Method::POST, "/v1/completions") => Endpoint::Completions,
        (&Method::POST, "/v1/responses") => Endpoint::Responses,
        (&Method::POST, "/v1/embeddings") => Endpoint::Embeddings,
        (_, path) => return other_route(&method, path, req.uri().query(), gzip),
    };
    let outcome = match req.into_body().collect().await {
        Ok(body) => model_call(endpoint, &body.to_bytes()),
        Err(err) => {
            let hash = Fnv::new().str(endpoint.path()).finish();
            let msg = format!("Could not read the request body: {err}");
            Outcome::error(hash, &ApiError::invalid(msg, None))
        }
    };
    let delay = state.opts.first_byte_delay + outcome.extra_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    render(outcome, &state, gzip)
}

fn render(outcome: Outcome, state: &State, gzip: bool) -> Response<DemoBody> {
    let mut response = match outcome.payload {
        Payload::Json(body) => json_response(outcome.status, body, outcome.request_hash, gzip),
        Payload::Stream { events, hang } => {
            let rx = spawn_stream(events, state.opts.chunk_delay, hang, state);
            let mut response = Response::new(DemoBody::Channel(rx));
            *response.status_mut() = outcome.status;
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            insert_request_id(headers, outcome.request_hash);
            response
        }
    };
    if outcome.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("7"));
    }
    response
}

fn json_response(
    status: StatusCode,
    body: Vec<u8>,
    request_hash: u64,
    gzip: bool,
) -> Response<DemoBody> {
    let compressed = if gzip { gzip_bytes(&body) } else { None };
    let is_gzip = compressed.is_some();
    let body = compressed.unwrap_or(body);
    let len = body.len();
    let mut response = Response::new(DemoBody::Full(Some(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if is_gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    insert_request_id(headers, request_hash);
    response
}

fn insert_request_id(headers: &mut HeaderMap, hash: u64) {
    if let Ok(value) = HeaderValue::try_from(format!("req_demo{hash:016x}")) {
        headers.insert("x-request-id", value);
    }
}

/// True when `accept-encoding` lists gzip with a non-zero quality.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            coding.eq_ignore_ascii_case("gzip") && !refused
        })
}

fn gzip_bytes(data: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).ok()?;
    encoder.finish().ok()
}

/// `GET /v1/models`, `GET /v1/models/{id}` and the 404 for everything else.
fn other_route(method: &Method, path: &str, query: Option<&str>, gzip: bool) -> Response<DemoBody> {
    let hash = Fnv::new()
        .str(method.as_str())
        .str(" ")
        .str(path)
        .str("?")
        .str(query.unwrap_or(""))
        .finish();
    if method == Method::GET {
        if path == "/v1/models" {
            let list = ModelList {
                object: "list",
                data: MODELS.iter().map(|id| ModelObject::new(id)).collect(),
            };
            return json_response(StatusCode::OK, to_json(&list), hash, gzip);
        }
        if let Some(id) = path.strip_prefix("/v1/models/").filter(|id| !id.is_empty()) {
            if let Some(known) = MODELS.iter().find(|m| **m == id) {
                return json_response(
                    StatusCode::OK,
                    to_json(&ModelObject::new(known)),
                    hash,
                    gzip,
                );
            }
            let err = ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("The model '{id}' does not exist"),
                kind: "invalid_request_error",
                param: Some("model"),
                code: Some("model_not_found"),
            };
            return json_response(err.status, err.to_json(), hash, gzip);
        }
    }
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    let err = ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "Unknown request URL: {method} {path}{query}. Please check the URL for typos, \
             or see the docs at https://platform.openai.com/docs/api-reference/."
        ),
        kind: "invalid_request_error",
        param: None,
        code: Some("unknown_url"),
    };
    json_response(err.status, err.to_json(), hash, gzip)
}

/// Stream faults apply to the routes that can stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamFault {
    None,
    Broken,
    Hang,
}

fn model_call(endpoint: Endpoint, raw: &[u8]) -> Outcome {
    // Only error paths need a hash of the raw body; skip it for (possibly huge) valid requests.
    let raw_hash = || Fnv::new().str(endpoint.path()).bytes(raw).finish();
    let value: Value = match serde_json::from_slice(raw) {
        Ok(value) => value,
        Err(err) => {
            let msg = format!(
                "We could not parse the JSON body of your request ({err}). \
                 The OpenAI API expects a JSON payload."
            );
            return Outcome::error(raw_hash(), &ApiError::invalid(msg, None));
        }
    };
    let Some(obj) = value.as_object() else {
        let msg = "The request body must be a JSON object.".to_owned();
        return Outcome::error(raw_hash(), &ApiError::invalid(msg, None));
    };
    let model = match obj.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.as_str(),
        _ => {
            let msg = "you must provide a model parameter".to_owned();
            return Outcome::error(raw_hash(), &ApiError::invalid(msg, Some("model")));
        }
    };

    let fault_hash = Fnv::new().str(model).finish();
    let mut fault = StreamFault::None;
    match model {
        "demo-error-429" => {
            let err = ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: "Rate limit reached for demo".to_owned(),
                kind: "requests",
                param: None,
                code: Some("rate_limit_exceeded"),
            };
            let mut outcome = Outcome::error(fault_hash, &err);
            outcome.retry_after = true;
            return outcome;
        }
        "demo-error-500" => {
            let err = ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: "The server had an error".to_owned(),
                kind: "server_error",
                param: None,
                code: None,
            };
            return Outcome::error(fault_hash, &err);
        }
        "demo-malformed-json" => {
            let body = br#"{"id":"chatcmpl-broken","choices":["#.to_vec();
            return Outcome::json(StatusCode::OK, fault_hash, body);
        }
        "demo-broken-sse" => fault = StreamFault::Broken,
        "demo-hang-stream" => fault = StreamFault::Hang,
        _ => {}
    }
    let extra_delay = model
        .strip_prefix("demo-slow-")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();

    let force_stream = fault != StreamFault::None;
    let generated = match endpoint {
        Endpoint::Chat => chat(obj, model, force_stream),
        Endpoint::Completions => completions(obj, model, force_stream),
        Endpoint::Responses => responses(obj, model, force_stream),
        Endpoint::Embeddings => embeddings(obj, model),
    };
    let (request_hash, payload) = match generated {
        Ok(generated) => generated,
        Err(err) => return Outcome::error(raw_hash(), &err),
    };
    let payload = match (payload, fault) {
        (Payload::Stream { events, .. }, StreamFault::Broken) => Payload::Stream {
            events: break_stream(events),
            hang: false,
        },
        (Payload::Stream { mut events, .. }, StreamFault::Hang) => {
            events.truncate(1);
            Payload::Stream { events, hang: true }
        }
        (payload, _) => payload,
    };
    Outcome {
        status: StatusCode::OK,
        request_hash,
        payload,
        retry_after: false,
        extra_delay,
    }
}

/// Two valid events, an unparseable one, one more valid event, then `[DONE]`.
fn break_stream(events: Vec<Bytes>) -> Vec<Bytes> {
    let mut valid = events.into_iter().filter(|e| e.as_ref() != DONE);
    let mut out: Vec<Bytes> = valid.by_ref().take(2).collect();
    out.push(Bytes::from_static(b"data: {not json}\n\n"));
    out.extend(valid.next());
    out.push(Bytes::from_static(DONE));
    out
}

// ---------------------------------------------------------------------------
// Errors

struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(message: String, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    fn to_json(&self) -> Vec<u8> {
        to_json(&ErrorEnvelope {
            error: ErrorBody {
                message: &self.message,
                kind: self.kind,
                param: self.param,
                code: self.code,
            },
        })
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

// ---------------------------------------------------------------------------
// Shared request reading and text generation

/// FNV-1a, 64 bit: tiny, stable across platforms and Rust versions.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(mut self, data: &[u8]) -> Self {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    fn finish(self) -> u64 {
        self.0
    }
}

/// splitmix64 finaliser: spreads the bits of a hash (or a hash plus a salt).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Number of whitespace-separated words; same result as `split_whitespace().count()`
/// but with a byte-level fast path, since prompts can be tens of megabytes.
fn words(text: &str) -> u64 {
    let mut count = 0;
    let mut in_word = false;
    for (i, &b) in text.as_bytes().iter().enumerate() {
        let space = if b.is_ascii() {
            matches!(b, b'\t'..=b'\r' | b' ')
        } else if b >= 0xc0 {
            // Lead byte of a multi-byte character: classify the whole character.
            text.get(i..)
                .and_then(|rest| rest.chars().next())
                .is_some_and(char::is_whitespace)
        } else {
            // Continuation byte: belongs to the character already classified.
            continue;
        };
        if space {
            in_word = false;
        } else if !in_word {
            in_word = true;
            count += 1;
        }
    }
    count
}

/// Splits text into "tokens": each word together with the whitespace after it.
fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut after_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            after_space = true;
        } else if after_space {
            out.push(text[start..i].to_owned());
            start = i;
            after_space = false;
        }
    }
    if start < text.len() {
        out.push(text[start..].to_owned());
    }
    out
}

/// The text of a message `content`: a string, or the text parts concatenated.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| match part {
                Value::String(s) => Some(s.as_str()),
                Value::Object(part) => part.get("text").and_then(Value::as_str),
                _ => None,
            })
            .collect(),
        _ => String::new(),
    }
}

/// Accumulates the prompt: the request hash (model + message contents),
/// prompt tokens (3 + per message 4 + words) and the last user message.
struct Prompt {
    fnv: Fnv,
    tokens: u64,
    last_user: String,
    last_user_words: u64,
}

impl Prompt {
    fn new(model: &str) -> Self {
        Self {
            fnv: Fnv::new().str(model),
            tokens: 3,
            last_user: String::new(),
            last_user_words: 0,
        }
    }

    fn message(&mut self, role: &str, text: String) {
        let count = words(&text);
        self.fnv = self.fnv.str(&text);
        self.tokens += 4 + count;
        if role == "user" {
            self.last_user = text;
            self.last_user_words = count;
        }
    }

    fn hash(&self) -> u64 {
        self.fnv.finish()
    }
}

/// One generated choice.
struct Generation {
    pieces: Vec<String>,
    finish_reason: &'static str,
    tool_call: Option<ToolCallInfo>,
}

struct ToolCallInfo {
    id: String,
    name: String,
}

impl Generation {
    /// "You said N words. " and one of the canned sentences, picked by hash and choice.
    fn text(said: u64, hash: u64, choice: u32, limit: Option<usize>) -> Self {
        let noun = if said == 1 { "word" } else { "words" };
        let pick = (mix(hash) as usize).wrapping_add(choice as usize) % SENTENCES.len();
        let sentence = SENTENCES.get(pick).copied().unwrap_or_default();
        let reply = format!("You said {said} {noun}. {sentence}");
        Self::limited(pieces(&reply), "stop", None, limit)
    }

    fn tool(name: &str, hash: u64, choice: u32, limit: Option<usize>) -> Self {
        let salt = mix(hash ^ 0x7f4a_11c0) ^ u64::from(choice);
        let info = ToolCallInfo {
            id: format!("call_demo{:016x}", mix(salt)),
            name: name.to_owned(),
        };
        let args = TOOL_ARGUMENT_PIECES
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        Self::limited(args, "tool_calls", Some(info), limit)
    }

    fn limited(
        mut pieces: Vec<String>,
        finish_reason: &'static str,
        tool_call: Option<ToolCallInfo>,
        limit: Option<usize>,
    ) -> Self {
        let truncated = limit.is_some_and(|max| max < pieces.len());
        if let Some(max) = limit {
            pieces.truncate(max);
        }
        Self {
            pieces,
            finish_reason: if truncated { "length" } else { finish_reason },
            tool_call,
        }
    }

    fn text_so_far(&self) -> String {
        self.pieces.concat()
    }

    fn tokens(&self) -> u64 {
        self.pieces.len() as u64
    }
}

fn cached_tokens(prompt_tokens: u64) -> u64 {
    if prompt_tokens >= 1024 {
        prompt_tokens / 2 / 128 * 128
    } else {
        0
    }
}

fn reasoning_tokens(model: &str, completion_tokens: u64) -> u64 {
    if model.starts_with('o') || model.starts_with("gpt-5") {
        completion_tokens / 4
    } else {
        0
    }
}

fn flag(obj: &Map<String, Value>, key: &'static str) -> Result<bool, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(
            format!("Invalid type for '{key}': expected a boolean."),
            Some(key),
        )),
    }
}

fn include_usage(obj: &Map<String, Value>) -> bool {
    obj.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn choice_count(obj: &Map<String, Value>) -> Result<u32, ApiError> {
    match obj.get("n") {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=128).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::invalid(
                    "Invalid 'n': expected an integer between 1 and 128.".to_owned(),
                    Some("n"),
                )
            }),
    }
}

/// The first of `keys` that is set, as a token limit.
fn token_limit(obj: &Map<String, Value>, keys: &[&'static str]) -> Result<Option<usize>, ApiError> {
    for &key in keys {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => {
                return match v.as_u64() {
                    Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
                    None => Err(ApiError::invalid(
                        format!("Invalid '{key}': expected a non-negative integer."),
                        Some(key),
                    )),
                };
            }
        }
    }
    Ok(None)
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

fn sse_data<T: Serialize>(value: &T) -> Bytes {
    let json = to_json(value);
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn sse_event<T: Serialize>(kind: &str, value: &T) -> Bytes {
    let json = to_json(value);
    let mut out = Vec::with_capacity(json.len() + kind.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Interleaves per-choice event lists round-robin, tagging each with its choice index.
fn round_robin<T>(lanes: Vec<Vec<T>>) -> Vec<(u32, T)> {
    let mut lanes: Vec<_> = lanes.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for (index, lane) in (0u32..).zip(lanes.iter_mut()) {
            if let Some(item) = lane.next() {
                out.push((index, item));
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

const NO_ANNOTATIONS: &[()] = &[];

// ---------------------------------------------------------------------------
// POST /v1/chat/completions

#[derive(Serialize, Clone, Copy)]
struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptTokensDetails,
    completion_tokens_details: CompletionTokensDetails,
}

#[derive(Serialize, Clone, Copy)]
struct PromptTokensDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct CompletionTokensDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

impl ChatUsage {
    fn new(model: &str, prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached_tokens(prompt_tokens),
                audio_tokens: 0,
            },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: reasoning_tokens(model, completion_tokens),
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
        }
    }
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChatChoice<'a>>,
    usage: ChatUsage,
    service_tier: &'static str,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    refusal: Option<()>,
    annotations: &'static [()],
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall<'a>,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    arguments: String,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    service_tier: &'static str,
    system_fingerprint: &'static str,
    choices: Vec<ChunkChoice<'a>>,
    /// Absent without `include_usage`; `null` on every chunk but the last with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<ChatUsage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Delta<'a> {
    Role {
        role: &'static str,
        content: &'static str,
        refusal: Option<()>,
    },
    Content {
        content: &'a str,
    },
    ToolStart {
        tool_calls: [ToolCallStart<'a>; 1],
    },
    ToolArguments {
        tool_calls: [ToolArgumentsDelta<'a>; 1],
    },
    Empty {},
}

#[derive(Serialize)]
struct ToolCallStart<'a> {
    index: u32,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionStart<'a>,
}

#[derive(Serialize)]
struct FunctionStart<'a> {
    name: &'a str,
    arguments: &'static str,
}

#[derive(Serialize)]
struct ToolArgumentsDelta<'a> {
    index: u32,
    function: ArgumentsFragment<'a>,
}

#[derive(Serialize)]
struct ArgumentsFragment<'a> {
    arguments: &'a str,
}

/// The tool to "call": the first tool's name, when the last user message asks about the weather.
fn weather_tool(obj: &Map<String, Value>, last_user: &str) -> Option<String> {
    let first = obj.get("tools")?.as_array()?.first()?;
    if obj.get("tool_choice").and_then(Value::as_str) == Some("none")
        || !last_user.to_lowercase().contains("weather")
    {
        return None;
    }
    let name = first
        .pointer("/function/name")
        .or_else(|| first.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("get_weather");
    Some(name.to_owned())
}

fn chat(
    obj: &Map<String, Value>,
    model: &str,
    force_stream: bool,
) -> Result<(u64, Payload), ApiError> {
    let Some(messages) = obj.get("messages").and_then(Value::as_array) else {
        let msg = "Missing required parameter: 'messages'.".to_owned();
        return Err(ApiError::invalid(msg, Some("messages")));
    };
    let mut prompt = Prompt::new(model);
    for message in messages {
        let Some(message) = message.as_object() else {
            let msg = "Invalid type for 'messages': expected an array of objects.".to_owned();
            return Err(ApiError::invalid(msg, Some("messages")));
        };
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        prompt.message(role, content_text(message.get("content")));
    }
    let stream = force_stream || flag(obj, "stream")?;
    let n = choice_count(obj)?;
    let limit = token_limit(obj, &["max_completion_tokens", "max_tokens"])?;
    let tool = weather_tool(obj, &prompt.last_user);
    let hash = prompt.hash();
    let generations: Vec<Generation> = (0..n)
        .map(|i| match &tool {
            Some(name) => Generation::tool(name, hash, i, limit),
            None => Generation::text(prompt.last_user_words, hash, i, limit),
        })
        .collect();
    let completion_tokens = generations.iter().map(Generation::tokens).sum();
    let usage = ChatUsage::new(model, prompt.tokens, completion_tokens);
    let id = format!("chatcmpl-demo{hash:016x}");

    if !stream {
        let choices = (0u32..)
            .zip(&generations)
            .map(|(index, g)| ChatChoice {
                index,
                message: AssistantMessage {
                    role: "assistant",
                    content: g.tool_call.is_none().then(|| g.text_so_far()),
                    tool_calls: g.tool_call.as_ref().map(|t| {
                        vec![ToolCall {
                            id: &t.id,
                            kind: "function",
                            function: FunctionCall {
                                name: &t.name,
                                arguments: g.text_so_far(),
                            },
                        }]
                    }),
                    refusal: None,
                    annotations: NO_ANNOTATIONS,
                },
                logprobs: None,
                finish_reason: g.finish_reason,
            })
            .collect();
        let body = ChatCompletion {
            id: &id,
            object: "chat.completion",
            created: CREATED,
            model,
            choices,
            usage,
            service_tier: SERVICE_TIER,
            system_fingerprint: SYSTEM_FINGERPRINT,
        };
        return Ok((hash, Payload::Json(to_json(&body))));
    }

    let with_usage = include_usage(obj);
    let chunk = |choices: Vec<ChunkChoice<'_>>, usage: Option<Option<ChatUsage>>| {
        sse_data(&ChatChunk {
            id: &id,
            object: "chat.completion.chunk",
            created: CREATED,
            model,
            service_tier: SERVICE_TIER,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage,
        })
    };
    let lanes = generations.iter().map(chat_deltas).collect();
    let mut events: Vec<Bytes> = round_robin(lanes)
        .into_iter()
        .map(|(index, (delta, finish_reason))| {
            let choice = ChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason,
            };
            chunk(vec![choice], with_usage.then_some(None))
        })
        .collect();
    if with_usage {
        events.push(chunk(Vec::new(), Some(Some(usage))));
    }
    events.push(Bytes::from_static(DONE));
    Ok((
        hash,
        Payload::Stream {
            events,
            hang: false,
        },
    ))
}

/// The deltas of one choice: role, content (or tool call) pieces, finish.
fn chat_deltas(g: &Generation) -> Vec<(Delta<'_>, Option<&'static str>)> {
    let mut out = vec![(
        Delta::Role {
            role: "assistant",
            content: "",
            refusal: None,
        },
        None,
    )];
    if let Some(tool) = &g.tool_call {
        let start = ToolCallStart {
            index: 0,
            id: &tool.id,
            kind: "function",
            function: FunctionStart {
                name: &tool.name,
                arguments: "",
            },
        };
        out.push((
            Delta::ToolStart {
                tool_calls: [start],
            },
            None,
        ));
        for piece in &g.pieces {
            let fragment = ToolArgumentsDelta {
                index: 0,
                function: ArgumentsFragment { arguments: piece },
            };
            out.push((
                Delta::ToolArguments {
                    tool_calls: [fragment],
                },
                None,
            ));
        }
    } else {
        for piece in &g.pieces {
            out.push((Delta::Content { content: piece }, None));
        }
    }
    out.push((Delta::Empty {}, Some(g.finish_reason)));
    out
}

// ---------------------------------------------------------------------------
// POST /v1/completions (legacy)

#[derive(Serialize, Clone, Copy)]
struct TextUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct TextCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<TextChoice<'a>>,
    usage: TextUsage,
}

#[derive(Serialize)]
struct TextChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    choices: Vec<TextChoice<'a>>,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<TextUsage>>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// The legacy `prompt`: a string, an array of strings (the first is used) or token arrays.
/// Returns the text, its token count and the request hash.
fn legacy_prompt(model: &str, prompt: Option<&Value>) -> Result<(String, u64, u64), ApiError> {
    let fnv = Fnv::new().str(model);
    let from_text = |text: &str| (text.to_owned(), words(text), fnv.str(text).finish());
    let from_tokens = |tokens: &[Value]| {
        let hash = tokens
            .iter()
            .fold(fnv, |h, t| h.str(&t.to_string()).str(" "))
            .finish();
        (String::new(), tokens.len() as u64, hash)
    };
    let is_tokens = |items: &[Value]| items.iter().all(Value::is_u64);
    match prompt {
        None | Some(Value::Null) => Ok(from_text("")),
        Some(Value::String(s)) => Ok(from_text(s)),
        Some(Value::Array(items)) => match items.first() {
            None => Ok(from_text("")),
            Some(Value::String(s)) => Ok(from_text(s)),
            Some(Value::Array(tokens)) if is_tokens(tokens) => Ok(from_tokens(tokens)),
            Some(Value::Number(_)) if is_tokens(items) => Ok(from_tokens(items)),
            Some(_) => Err(ApiError::invalid(
                "Invalid 'prompt': expected a string, an array of strings or token arrays."
                    .to_owned(),
                Some("prompt"),
            )),
        },
        Some(_) => Err(ApiError::invalid(
            "Invalid type for 'prompt': expected a string or an array.".to_owned(),
            Some("prompt"),
        )),
    }
}

fn completions(
    obj: &Map<String, Value>,
    model: &str,
    force_stream: bool,
) -> Result<(u64, Payload), ApiError> {
    let (text, prompt_tokens, hash) = legacy_prompt(model, obj.get("prompt"))?;
    let stream = force_stream || flag(obj, "stream")?;
    let n = choice_count(obj)?;
    let limit = token_limit(obj, &["max_tokens"])?;
    let said = words(&text);
    let generations: Vec<Generation> = (0..n)
        .map(|i| Generation::text(said, hash, i, limit))
        .collect();
    let completion_tokens: u64 = generations.iter().map(Generation::tokens).sum();
    let usage = TextUsage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    };
    let id = format!("cmpl-demo{hash:016x}");

    if !stream {
        let texts: Vec<String> = generations.iter().map(Generation::text_so_far).collect();
        let choices = (0u32..)
            .zip(generations.iter().zip(&texts))
            .map(|(index, (g, text))| TextChoice {
                text,
                index,
                logprobs: None,
                finish_reason: Some(g.finish_reason),
            })
            .collect();
        let body = TextCompletion {
            id: &id,
            object: "text_completion",
            created: CREATED,
            model,
            choices,
            usage,
        };
        return Ok((hash, Payload::Json(to_json(&body))));
    }

    let with_usage = include_usage(obj);
    let chunk = |choices: Vec<TextChoice<'_>>, usage: Option<Option<TextUsage>>| {
        sse_data(&TextChunk {
            id: &id,
            object: "text_completion",
            created: CREATED,
            choices,
            model,
            usage,
        })
    };
    let lanes = generations
        .iter()
        .map(|g| {
            let mut lane: Vec<(&str, Option<&'static str>)> =
                g.pieces.iter().map(|p| (p.as_str(), None)).collect();
            lane.push(("", Some(g.finish_reason)));
            lane
        })
        .collect();
    let mut events: Vec<Bytes> = round_robin(lanes)
        .into_iter()
        .map(|(index, (text, finish_reason))| {
            let choice = TextChoice {
                text,
                index,
                logprobs: None,
                finish_reason,
            };
            chunk(vec![choice], with_usage.then_some(None))
        })
        .collect();
    if with_usage {
        events.push(chunk(Vec::new(), Some(Some(usage))));
    }
    events.push(Bytes::from_static(DONE));
    Ok((
        hash,
        Payload::Stream {
            events,
            hang: false,
        },
    ))
}

// ---------------------------------------------------------------------------
// POST /v1/responses

#[derive(Serialize, Clone, Copy)]
struct ResponseUsage {
    input_tokens: u64,
    input_tokens_details: InputTokensDetails,
    output_tokens: u64,
    output_tokens_details: OutputTokensDetails,
    total_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct InputTokensDetails {
    cached_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct OutputTokensDetails {
    reasoning_tokens: u64,
}

#[derive(Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    incomplete_details: Option<IncompleteDetails>,
    model: &'a str,
    output: Vec<OutputMessage<'a>>,
    usage: Option<ResponseUsage>,
    service_tier: &'static str,
}

#[derive(Serialize)]
struct IncompleteDetails {
    reason: &'static str,
}

#[derive(Serialize)]
struct OutputMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    status: &'static str,
    role: &'static str,
    content: Vec<OutputText<'a>>,
}

#[derive(Serialize)]
struct OutputText<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    annotations: &'static [()],
}

#[derive(Serialize)]
struct ResponseEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    response: &'a ResponseObject<'a>,
}

#[derive(Serialize)]
struct OutputItemEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    output_index: u32,
    item: &'a OutputMessage<'a>,
}

#[derive(Serialize)]
struct ContentPartEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    part: OutputText<'a>,
}

#[derive(Serialize)]
struct TextDeltaEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    delta: &'a str,
}

#[derive(Serialize)]
struct TextDoneEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    text: &'a str,
}

fn output_message<'a>(
    id: &'a str,
    status: &'static str,
    text: Option<&'a str>,
) -> OutputMessage<'a> {
    OutputMessage {
        kind: "message",
        id,
        status,
        role: "assistant",
        content: text.map(output_text).into_iter().collect(),
    }
}

fn output_text(text: &str) -> OutputText<'_> {
    OutputText {
        kind: "output_text",
        text,
        annotations: NO_ANNOTATIONS,
    }
}

fn responses_prompt(obj: &Map<String, Value>, model: &str) -> Result<Prompt, ApiError> {
    let mut prompt = Prompt::new(model);
    if let Some(instructions) = obj.get("instructions").and_then(Value::as_str) {
        prompt.message("system", instructions.to_owned());
    }
    let invalid = || {
        ApiError::invalid(
            "Invalid 'input': expected a string or an array of input items.".to_owned(),
            Some("input"),
        )
    };
    match obj.get("input") {
        Some(Value::String(text)) => prompt.message("user", text.clone()),
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(text) => prompt.message("user", text.clone()),
                    Value::Object(item) => {
                        let role = item.get("role").and_then(Value::as_str).unwrap_or("");
                        let content = item.get("content").or_else(|| item.get("output"));
                        prompt.message(role, content_text(content));
                    }
                    _ => return Err(invalid()),
                }
            }
        }
        None | Some(Value::Null) => {
            let msg = "Missing required parameter: 'input'.".to_owned();
            return Err(ApiError::invalid(msg, Some("input")));
        }
        Some(_) => return Err(invalid()),
    }
    Ok(prompt)
}

fn responses(
    obj: &Map<String, Value>,
    model: &str,
    force_stream: bool,
) -> Result<(u64, Payload), ApiError> {
    let prompt = responses_prompt(obj, model)?;
    let stream = force_stream || flag(obj, "stream")?;
    let limit = token_limit(obj, &["max_output_tokens"])?;
    let hash = prompt.hash();
    let generation = Generation::text(prompt.last_user_words, hash, 0, limit);
    let text = generation.text_so_far();
    let incomplete = generation.finish_reason == "length";
    let output_tokens = generation.tokens();
    let usage = ResponseUsage {
        input_tokens: prompt.tokens,
        input_tokens_details: InputTokensDetails {
            cached_tokens: cached_tokens(prompt.tokens),
        },
        output_tokens,
        output_tokens_details: OutputTokensDetails {
            reasoning_tokens: reasoning_tokens(model, output_tokens),
        },
        total_tokens: prompt.tokens + output_tokens,
    };
    let id = format!("resp_demo{hash:016x}");
    let msg_id = format!("msg_demo{:016x}", mix(hash ^ 0x006d_7367));
    let (status, item_status) = if incomplete {
        ("incomplete", "incomplete")
    } else {
        ("completed", "completed")
    };
    let done_item = output_message(&msg_id, item_status, Some(&text));
    let finished = ResponseObject {
        id: &id,
        object: "response",
        created_at: CREATED,
        status,
        incomplete_details: incomplete.then_some(IncompleteDetails {
            reason: "max_output_tokens",
        }),
        model,
        output: vec![output_message(&msg_id, item_status, Some(&text))],
        usage: Some(usage),
        service_tier: SERVICE_TIER,
    };
    if !stream {
        return Ok((hash, Payload::Json(to_json(&finished))));
    }

    let started = ResponseObject {
        id: &id,
        object: "response",
        created_at: CREATED,
        status: "in_progress",
        incomplete_details: None,
        model,
        output: Vec::new(),
        usage: None,
        service_tier: SERVICE_TIER,
    };
    let new_item = output_message(&msg_id, "in_progress", None);
    let mut seq = 0u64;
    let mut next = || {
        seq += 1;
        seq - 1
    };
    let mut events = Vec::with_capacity(generation.pieces.len() + 8);
    for kind in ["response.created", "response.in_progress"] {
        let event = ResponseEvent {
            kind,
            sequence_number: next(),
            response: &started,
        };
        events.push(sse_event(kind, &event));
    }
    let kind = "response.output_item.added";
    let event = OutputItemEvent {
        kind,
        sequence_number: next(),
        output_index: 0,
        item: &new_item,
    };
    events.push(sse_event(kind, &event));
    let part_event = |kind: &'static str, sequence_number: u64, text: &str| {
        let event = ContentPartEvent {
            kind,
            sequence_number,
            item_id: &msg_id,
            output_index: 0,
            content_index: 0,
            part: output_text(text),
        };
        sse_event(kind, &event)
    };
    events.push(part_event("response.content_part.added", next(), ""));
    for piece in &generation.pieces {
        let kind = "response.output_text.delta";
        let event = TextDeltaEvent {
            kind,
            sequence_number: next(),
            item_id: &msg_id,
            output_index: 0,
            content_index: 0,
            delta: piece,
        };
        events.push(sse_event(kind, &event));
    }
    let kind = "response.output_text.done";
    let event = TextDoneEvent {
        kind,
        sequence_number: next(),
        item_id: &msg_id,
        output_index: 0,
        content_index: 0,
        text: &text,
    };
    events.push(sse_event(kind, &event));
    events.push(part_event("response.content_part.done", next(), &text));
    let kind = "response.output_item.done";
    let event = OutputItemEvent {
        kind,
        sequence_number: next(),
        output_index: 0,
        item: &done_item,
    };
    events.push(sse_event(kind, &event));
    let kind = if incomplete {
        "response.incomplete"
    } else {
        "response.completed"
    };
    let event = ResponseEvent {
        kind,
        sequence_number: next(),
        response: &finished,
    };
    events.push(sse_event(kind, &event));
    Ok((
        hash,
        Payload::Stream {
            events,
            hang: false,
        },
    ))
}

// ---------------------------------------------------------------------------
// POST /v1/embeddings

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: u32,
    embedding: EmbeddingVector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

enum EmbeddingInput<'a> {
    Text(&'a str),
    Tokens(&'a [Value]),
}

impl EmbeddingInput<'_> {
    fn tokens(&self) -> u64 {
        match self {
            EmbeddingInput::Text(text) => words(text),
            EmbeddingInput::Tokens(tokens) => tokens.len() as u64,
        }
    }

    fn feed(&self, fnv: Fnv) -> Fnv {
        match self {
            EmbeddingInput::Text(text) => fnv.str(text),
            EmbeddingInput::Tokens(tokens) => tokens
                .iter()
                .fold(fnv, |h, t| h.str(&t.to_string()).str(" ")),
        }
    }
}

const MAX_EMBEDDING_INPUTS: usize = 2048;

fn embedding_inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput<'_>>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "'$.input' is invalid: expected a non-empty string, an array of non-empty strings, \
             a token array or an array of token arrays."
                .to_owned(),
            Some("input"),
        )
    };
    let is_tokens = |items: &[Value]| !items.is_empty() && items.iter().all(Value::is_u64);
    match input {
        Some(Value::String(text)) if !text.is_empty() => Ok(vec![EmbeddingInput::Text(text)]),
        Some(Value::Array(items)) if is_tokens(items) => Ok(vec![EmbeddingInput::Tokens(items)]),
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_EMBEDDING_INPUTS => {
            items
                .iter()
                .map(|item| match item {
                    Value::String(text) if !text.is_empty() => Ok(EmbeddingInput::Text(text)),
                    Value::Array(tokens) if is_tokens(tokens) => Ok(EmbeddingInput::Tokens(tokens)),
                    _ => Err(invalid()),
                })
                .collect()
        }
        _ => Err(invalid()),
    }
}

/// A deterministic unit vector: xorshift64* seeded by the hash, then normalised.
fn embedding_vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = mix(seed) | 1;
    let raw: Vec<f64> = (0..dimensions)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let x = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
    let norm = if norm > 0.0 { norm } else { 1.0 };
    raw.iter().map(|v| (v / norm) as f32).collect()
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn embeddings(obj: &Map<String, Value>, model: &str) -> Result<(u64, Payload), ApiError> {
    let inputs = embedding_inputs(obj.get("input"))?;
    let native: u64 = if model.contains("large") { 3072 } else { 1536 };
    let dimensions = match obj.get("dimensions") {
        None | Some(Value::Null) => native,
        Some(v) => v
            .as_u64()
            .filter(|d| (1..=native).contains(d))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("Invalid 'dimensions': expected an integer between 1 and {native}."),
                    Some("dimensions"),
                )
            })?,
    };
    let dimensions = usize::try_from(dimensions).unwrap_or(1536);
    let as_base64 = match obj.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            let msg = "Invalid 'encoding_format': expected 'float' or 'base64'.".to_owned();
            return Err(ApiError::invalid(msg, Some("encoding_format")));
        }
    };
    let hash = inputs
        .iter()
        .fold(Fnv::new().str(model), |fnv, input| input.feed(fnv))
        .finish();
    let data = (0u32..)
        .zip(&inputs)
        .map(|(index, input)| {
            let vector = embedding_vector(input.feed(Fnv::new().str(model)).finish(), dimensions);
            let embedding = if as_base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64(&bytes))
            } else {
                EmbeddingVector::Float(vector)
            };
            Embedding {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let prompt_tokens = inputs.iter().map(EmbeddingInput::tokens).sum();
    let body = EmbeddingList {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    Ok((hash, Payload::Json(to_json(&body))))
}

// ---------------------------------------------------------------------------
// GET /v1/models

#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelObject>,
}

#[derive(Serialize)]
struct ModelObject {
    id: &'static str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

impl ModelObject {
    fn new(id: &'static str) -> Self {
        Self {
            id,
            object: "model",
            created: CREATED,
            owned_by: "system",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use std::io::Read as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn upstream() -> DemoUpstream {
        let opts = DemoOptions {
            chunk_delay: Duration::ZERO,
            first_byte_delay: Duration::ZERO,
        };
        DemoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), opts)
            .await
            .unwrap()
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Reply {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }

        fn text(&self) -> &str {
            std::str::from_utf8(&self.body).unwrap()
        }

        fn header(&self, name: &str) -> &str {
            self.headers.get(name).unwrap().to_str().unwrap()
        }
    }

    async fn request(
        up: &DemoUpstream,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", up.base_url(), path))
            .header("content-type", "application/json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = client
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn post(up: &DemoUpstream, path: &str, body: &Value) -> Reply {
        request(
            up,
            Method::POST,
            path,
            &[],
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    /// The `data:` payloads of an SSE body, checking the framing on the way.
    fn data_events(body: &str) -> Vec<&str> {
        assert!(body.ends_with("\n\n"), "{body}");
        body.strip_suffix("\n\n")
            .unwrap()
            .split("\n\n")
            .map(|event| event.strip_prefix("data: ").unwrap())
            .collect()
    }

    fn chat_body(stream: bool, include_usage: Option<bool>) -> Value {
        let mut body = serde_json::json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello there, demo upstream!"}
            ],
            "stream": stream
        });
        if let Some(include) = include_usage {
            body["stream_options"] = serde_json::json!({ "include_usage": include });
        }
        body
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn chat_non_stream_usage_follows_the_word_rule() {
        let up = upstream().await;
        let reply = post(&up, "/v1/chat/completions", &chat_body(false, None)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(reply.header("content-length"), reply.body.len().to_string());
        let v = reply.json();
        let id = v["id"].as_str().unwrap();
        assert!(id.starts_with("chatcmpl-demo") && id.len() == "chatcmpl-demo".len() + 16);
        assert_eq!(
            reply.header("x-request-id"),
            id.replace("chatcmpl-demo", "req_demo")
        );
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["created"], 1_750_000_000);
        assert_eq!(v["model"], "gpt-4o-mini");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(content.starts_with("You said 4 words. "), "{content}");
        assert!(!content.is_ascii(), "reply must contain multi-byte UTF-8");
        let word_count = content.split_whitespace().count() as u64;
        assert!((15..=40).contains(&word_count), "{word_count} words");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let usage = &v["usage"];
        // 3 + (4 + 3 words) + (4 + 4 words)
        assert_eq!(usage["prompt_tokens"], 18);
        assert_eq!(usage["completion_tokens"], word_count);
        assert_eq!(usage["total_tokens"], 18 + word_count);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
        // Field order follows the real API.
        let text = reply.text();
        assert!(text.starts_with(r#"{"id":"chatcmpl-demo"#), "{text}");
        assert!(text.contains(r#""object":"chat.completion","created":1750000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"You said"#));
        assert!(text.contains(r#""refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":18,"#));
        assert!(text.ends_with(r#""service_tier":"default","system_fingerprint":"fp_demo0001"}"#));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn same_request_gives_identical_bytes() {
        let up = upstream().await;
        for body in [chat_body(false, None), chat_body(true, Some(true))] {
            let a = post(&up, "/v1/chat/completions", &body).await;
            let b = post(&up, "/v1/chat/completions", &body).await;
            assert_eq!(a.body, b.body);
            assert_eq!(a.headers, b.headers);
        }
        // Key order in the request does not matter, only its meaning.
        let reordered = br#"{"messages":[{"content":"You are terse.","role":"system"},{"content":"Hello there, demo upstream!","role":"user"}],"stream":false,"model":"gpt-4o-mini"}"#;
        let a = request(
            &up,
            Method::POST,
            "/v1/chat/completions",
            &[],
            &reordered[..],
        )
        .await;
        let b = post(&up, "/v1/chat/completions", &chat_body(false, None)).await;
        assert_eq!(a.body, b.body);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stream_with_include_usage() {
        let up = upstream().await;
        let reply = post(&up, "/v1/chat/completions", &chat_body(true, Some(true))).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), "text/event-stream");
        assert!(reply.headers.get("content-encoding").is_none());
        let events = data_events(reply.text());
        assert_eq!(*events.last().unwrap(), "[DONE]");
        let chunks: Vec<&str> = events[..events.len() - 1].to_vec();
        let (usage_chunk, choice_chunks) = chunks.split_last().unwrap();
        let mut content = String::new();
        let mut pieces = 0;
        for (i, chunk) in choice_chunks.iter().enumerate() {
            assert!(chunk.ends_with(r#","usage":null}"#), "{chunk}");
            let v: Value = serde_json::from_str(chunk).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            let delta = &v["choices"][0]["delta"];
            if i == 0 {
                assert_eq!(
                    delta,
                    &serde_json::json!({"role":"assistant","content":"","refusal":null})
                );
            } else if let Some(piece) = delta["content"].as_str() {
                content.push_str(piece);
                pieces += 1;
            }
        }
        let last: Value = serde_json::from_str(choice_chunks.last().unwrap()).unwrap();
        assert_eq!(last["choices"][0]["delta"], serde_json::json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        let usage: Value = serde_json::from_str(usage_chunk).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], pieces);
        assert_eq!(usage["usage"]["prompt_tokens"], 18);
        assert_eq!(usage["usage"]["total_tokens"], 18 + pieces);
        // The streamed text equals the non-streamed one, and so does the id.
        let plain = post(&up, "/v1/chat/completions", &chat_body(false, None))
            .await
            .json();
        assert_eq!(plain["choices"][0]["message"]["content"], content.as_str());
        assert_eq!(plain["id"], usage["id"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stream_without_include_usage_matches_modulo_usage() {
        let up = upstream().await;
        let with = post(&up, "/v1/chat/completions", &chat_body(true, Some(true))).await;
        for include in [None, Some(false)] {
            let without = post(&up, "/v1/chat/completions", &chat_body(true, include)).await;
            assert!(!without.text().contains("usage"), "{}", without.text());
            let mut events: Vec<String> = with
                .text()
                .split_inclusive("\n\n")
                .filter(|e| !e.contains(r#""choices":[],"usage":{"#))
                .map(|e| e.replace(r#","usage":null"#, ""))
                .collect();
            assert!(events.len() > 3);
            assert_eq!(events.concat(), without.text());
            events.clear();
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn n_choices_interleave_round_robin() {
        let up = upstream().await;
        let mut body = chat_body(true, Some(true));
        body["n"] = 2.into();
        let reply = post(&up, "/v1/chat/completions", &body).await;
        let events = data_events(reply.text());
        let chunks: Vec<Value> = events[..events.len() - 2]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let indices: Vec<u64> = chunks
            .iter()
            .map(|c| {
                assert_eq!(c["choices"].as_array().unwrap().len(), 1);
                c["choices"][0]["index"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(&indices[..4], &[0, 1, 0, 1]);
        let mut texts = [String::new(), String::new()];
        let mut finished = [false, false];
        for c in &chunks {
            let i = c["choices"][0]["index"].as_u64().unwrap() as usize;
            assert!(!finished[i]);
            if let Some(piece) = c["choices"][0]["delta"]["content"].as_str() {
                texts[i].push_str(piece);
            }
            finished[i] = c["choices"][0]["finish_reason"].is_string();
        }
        assert_eq!(finished, [true, true]);
        assert_ne!(texts[0], texts[1]);
        let usage: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
        let total: usize = texts.iter().map(|t| pieces(t).len()).sum();
        assert_eq!(usage["usage"]["completion_tokens"], total);
        // Non-stream: the same two texts.
        body["stream"] = false.into();
        let plain = post(&up, "/v1/chat/completions", &body).await.json();
        assert_eq!(plain["choices"][0]["message"]["content"], texts[0].as_str());
        assert_eq!(plain["choices"][1]["message"]["content"], texts[1].as_str());
        assert_eq!(plain["usage"]["completion_tokens"], total);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn max_tokens_truncates_with_length() {
        let up = upstream().await;
        let mut body = chat_body(false, None);
        body["max_completion_tokens"] = 3.into();
        let v = post(&up, "/v1/chat/completions", &body).await.json();
        assert_eq!(v["choices"][0]["message"]["content"], "You said 4 ");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 3);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn reasoning_and_cached_tokens() {
        let up = upstream().await;
        let long = "word ".repeat(1100);
        let body = serde_json::json!({
            "model": "gpt-5-mini",
            "messages": [{"role": "user", "content": long}]
        });
        let v = post(&up, "/v1/chat/completions", &body).await.json();
        let usage = &v["usage"];
        assert_eq!(usage["prompt_tokens"], 1107);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 512);
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert_eq!(
            usage["completion_tokens_details"]["reasoning_tokens"],
            completion / 4
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn weather_question_with_tools_calls_the_first_tool() {
        let up = upstream().await;
        let mut body = serde_json::json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "What's the Weather in Madrid?"}],
            "tools": [{"type": "function", "function": {"name": "get_forecast", "parameters": {}}}]
        });
        let v = post(&up, "/v1/chat/completions", &body).await.json();
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        let call = &choice["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_demo"));
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_forecast");
        assert_eq!(call["function"]["arguments"], r#"{"location":"Madrid"}"#);

        body["stream"] = true.into();
        let reply = post(&up, "/v1/chat/completions", &body).await;
        let events = data_events(reply.text());
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let start = &chunks[1]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(start["id"], call["id"]);
        assert_eq!(start["function"]["name"], "get_forecast");
        assert_eq!(start["function"]["arguments"], "");
        let args: String = chunks[2..]
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, r#"{"location":"Madrid"}"#);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn legacy_completions() {
        let up = upstream().await;
        let mut body = serde_json::json!({"model": "gpt-3.5-turbo-instruct", "prompt": ["Say something nice", "ignored"]});
        let reply = post(&up, "/v1/completions", &body).await;
        let v = reply.json();
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-demo"));
        assert_eq!(v["object"], "text_completion");
        let text = v["choices"][0]["text"].as_str().unwrap().to_owned();
        assert!(text.starts_with("You said 3 words. "));
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["usage"]["completion_tokens"], pieces(&text).len());

        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
        let reply = post(&up, "/v1/completions", &body).await;
        let events = data_events(reply.text());
        assert_eq!(*events.last().unwrap(), "[DONE]");
        let mut streamed = String::new();
        for e in &events[..events.len() - 2] {
            assert!(
                e.ends_with(r#""model":"gpt-3.5-turbo-instruct","usage":null}"#),
                "{e}"
            );
            let c: Value = serde_json::from_str(e).unwrap();
            streamed.push_str(c["choices"][0]["text"].as_str().unwrap());
        }
        assert_eq!(streamed, text);
        let usage: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"], v["usage"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn responses_non_stream_and_stream() {
        let up = upstream().await;
        let mut body = serde_json::json!({
            "model": "gpt-4.1",
            "instructions": "Be brief.",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Tell me about tracing"}]}]
        });
        let v = post(&up, "/v1/responses", &body).await.json();
        assert!(v["id"].as_str().unwrap().starts_with("resp_demo"));
        assert_eq!(v["status"], "completed");
        assert_eq!(v["created_at"], 1_750_000_000);
        let text = v["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(text.starts_with("You said 4 words. "));
        // 3 + (4 + 2) + (4 + 4)
        assert_eq!(v["usage"]["input_tokens"], 17);
        assert_eq!(v["usage"]["output_tokens"], pieces(&text).len());
        assert_eq!(v["usage"]["total_tokens"], 17 + pieces(&text).len());

        body["stream"] = true.into();
        let reply = post(&up, "/v1/responses", &body).await;
        assert_eq!(reply.header("content-type"), "text/event-stream");
        assert!(!reply.text().contains("[DONE]"));
        let events: Vec<(String, Value)> = reply
            .text()
            .strip_suffix("\n\n")
            .unwrap()
            .split("\n\n")
            .map(|e| {
                let (event, data) = e.split_once('\n').unwrap();
                let kind = event.strip_prefix("event: ").unwrap().to_owned();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], kind.as_str());
                (kind, data)
            })
            .collect();
        for (i, (_, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], i);
        }
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            &kinds[..4],
            &[
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ]
        );
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert!(events[0].1["response"]["usage"].is_null());
        let deltas: String = events
            .iter()
            .filter(|(k, _)| k == "response.output_text.delta")
            .map(|(_, d)| d["delta"].as_str().unwrap())
            .collect();
        assert_eq!(deltas, text);
        let (last_kind, last) = events.last().unwrap();
        assert_eq!(last_kind, "response.completed");
        assert_eq!(last["response"], v);
        assert_eq!(
            &kinds[kinds.len() - 4..kinds.len() - 1],
            &[
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done"
            ]
        );

        body["stream"] = false.into();
        body["max_output_tokens"] = 2.into();
        let v = post(&up, "/v1/responses", &body).await.json();
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(v["usage"]["output_tokens"], 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn embeddings_dimensions_and_formats() {
        let up = upstream().await;
        let body = serde_json::json!({"model": "text-embedding-3-small", "input": ["hello world", "one two three"]});
        let v = post(&up, "/v1/embeddings", &body).await.json();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][1]["index"], 1);
        let vector: Vec<f64> = v["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(vector.len(), 1536);
        let norm: f64 = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
        assert_eq!(
            v["usage"],
            serde_json::json!({"prompt_tokens": 5, "total_tokens": 5})
        );

        let body = serde_json::json!({"model": "text-embedding-3-large", "input": [[1, 2, 3, 4]]});
        let v = post(&up, "/v1/embeddings", &body).await.json();
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 3072);
        assert_eq!(v["usage"]["prompt_tokens"], 4);

        let body =
            serde_json::json!({"model": "text-embedding-3-small", "input": "hi", "dimensions": 8});
        let floats = post(&up, "/v1/embeddings", &body).await.json();
        assert_eq!(floats["data"][0]["embedding"].as_array().unwrap().len(), 8);
        let mut body = body;
        body["encoding_format"] = "base64".into();
        let b64 = post(&up, "/v1/embeddings", &body).await.json();
        let encoded = b64["data"][0]["embedding"].as_str().unwrap();
        let expected: Vec<u8> = floats["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|x| (x.as_f64().unwrap() as f32).to_le_bytes())
            .collect();
        assert_eq!(encoded, base64(&expected));
        assert_eq!(encoded.len(), 44);

        let bad = serde_json::json!({"model": "text-embedding-3-small", "input": ""});
        assert_eq!(
            post(&up, "/v1/embeddings", &bad).await.status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn base64_matches_reference_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(Fnv::new().finish(), 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv::new().str("a").finish(), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Fnv::new().str("foobar").finish(), 0x85944171f73967e8);
    }

    #[test]
    fn every_sentence_gives_a_reply_of_15_to_40_words_with_utf8() {
        for i in 0..SENTENCES.len() as u32 {
            let g = Generation::text(3, 0, i, None);
            let text = g.text_so_far();
            assert!((15..=40).contains(&g.pieces.len()), "{text}");
            assert!(!text.is_ascii(), "{text}");
        }
        assert_eq!(pieces("Hello  world.\n"), ["Hello  ", "world.\n"]);
    }

    #[test]
    fn word_count_matches_split_whitespace() {
        for text in [
            "",
            "   ",
            "one",
            " one  two\tthree\nfour\u{0b}five\r\n",
            "café — naïve\u{a0}x\u{3000}y\u{2028}z\u{85}w 日本語 テキスト",
            "\u{2003}lead and trail\u{2003}",
        ] {
            assert_eq!(
                words(text),
                text.split_whitespace().count() as u64,
                "{text:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn gzip_when_asked_for_json_only() {
        let up = upstream().await;
        let body = serde_json::to_vec(&chat_body(false, None)).unwrap();
        let plain = request(&up, Method::POST, "/v1/chat/completions", &[], body.clone()).await;
        let gz_headers = [("accept-encoding", "br, gzip;q=0.8")];
        let zipped = request(&up, Method::POST, "/v1/chat/completions", &gz_headers, body).await;
        assert_eq!(zipped.header("content-encoding"), "gzip");
        assert_eq!(
            zipped.header("content-length"),
            zipped.body.len().to_string()
        );
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&zipped.body[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, plain.body);

        let refused = [("accept-encoding", "gzip;q=0, identity")];
        let body = serde_json::to_vec(&chat_body(false, None)).unwrap();
        let reply = request(&up, Method::POST, "/v1/chat/completions", &refused, body).await;
        assert!(reply.headers.get("content-encoding").is_none());

        let gz = [("accept-encoding", "gzip")];
        let body = serde_json::to_vec(&chat_body(true, None)).unwrap();
        let stream = request(&up, Method::POST, "/v1/chat/completions", &gz, body).await;
        assert!(stream.headers.get("content-encoding").is_none());
        assert!(stream.text().ends_with("data: [DONE]\n\n"));

        let missing = request(&up, Method::GET, "/v1/nope", &gz, Bytes::new()).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.header("content-encoding"), "gzip");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn fault_models() {
        let up = upstream().await;
        let call = |model: &str, stream: bool| serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream});
        let reply = post(&up, "/v1/chat/completions", &call("demo-error-429", false)).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.header("retry-after"), "7");
        assert_eq!(
            reply.text(),
            r#"{"error":{"message":"Rate limit reached for demo","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
        );
        let reply = post(
            &up,
            "/v1/embeddings",
            &serde_json::json!({"model": "demo-error-500"}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            reply.text(),
            r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#
        );
        let reply = post(
            &up,
            "/v1/chat/completions",
            &call("demo-malformed-json", false),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(reply.text(), r#"{"id":"chatcmpl-broken","choices":["#);

        let reply = post(&up, "/v1/chat/completions", &call("demo-broken-sse", true)).await;
        assert_eq!(reply.header("content-type"), "text/event-stream");
        let events = data_events(reply.text());
        assert_eq!(events.len(), 5);
        assert_eq!(events[2], "{not json}");
        assert_eq!(events[4], "[DONE]");
        for e in [events[0], events[1], events[3]] {
            serde_json::from_str::<Value>(e).unwrap();
        }

        let started = std::time::Instant::now();
        let reply = post(&up, "/v1/chat/completions", &call("demo-slow-150", false)).await;
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(reply.json()["model"], "demo-slow-150");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn first_byte_delay_applies_to_model_calls() {
        let opts = DemoOptions {
            chunk_delay: Duration::ZERO,
            first_byte_delay: Duration::from_millis(100),
        };
        let up = DemoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), opts)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        post(&up, "/v1/chat/completions", &chat_body(false, None)).await;
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_requests_get_openai_shaped_errors() {
        let up = upstream().await;
        for body in [
            &b"{not json"[..],
            b"[1,2]",
            b"",
            br#"{"messages":[]}"#,
            br#"{"model":"m"}"#,
            br#"{"model":"m","messages":[1]}"#,
            br#"{"model":"m","messages":[],"n":0}"#,
        ] {
            let reply = request(&up, Method::POST, "/v1/chat/completions", &[], body).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(body)
            );
            let v = reply.json();
            assert_eq!(v["error"]["type"], "invalid_request_error");
            assert!(v["error"]["message"].is_string());
            assert!(v["error"]["code"].is_null());
            assert!(v["error"].as_object().unwrap().contains_key("param"));
        }
        let reply = request(&up, Method::POST, "/v1/responses", &[], &b"{\"model\":"[..]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(reply.json()["error"]["param"].is_null());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn unknown_path_404_includes_the_query() {
        let up = upstream().await;
        let reply = request(
            &up,
            Method::GET,
            "/v1/chat/completions?foo=bar&x=1",
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        let v = reply.json();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("Unknown request URL: GET /v1/chat/completions?foo=bar&x=1. "),
            "{msg}"
        );
        assert_eq!(v["error"]["code"], "unknown_url");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let reply = request(&up, Method::POST, "/chat/completions", &[], Bytes::new()).await;
        assert!(reply.text().contains("POST /chat/completions. "));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn models_list_and_lookup() {
        let up = upstream().await;
        let v = request(&up, Method::GET, "/v1/models", &[], Bytes::new())
            .await
            .json();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"].as_array().unwrap().len(), MODELS.len());
        assert_eq!(
            v["data"][0],
            serde_json::json!({"id":"gpt-4o-mini","object":"model","created":1750000000,"owned_by":"system"})
        );
        let one = request(&up, Method::GET, "/v1/models/o4-mini", &[], Bytes::new()).await;
        assert_eq!(
            one.text(),
            r#"{"id":"o4-mini","object":"model","created":1750000000,"owned_by":"system"}"#
        );
        let missing = request(&up, Method::GET, "/v1/models/nope", &[], Bytes::new()).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.json()["error"]["code"], "model_not_found");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn h2c_is_served() {
        let up = upstream().await;
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let body = serde_json::to_vec(&chat_body(true, Some(true))).unwrap();
        let req = Request::post(format!("{}/v1/chat/completions", up.base_url()))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let h1 = post(&up, "/v1/chat/completions", &chat_body(true, Some(true))).await;
        assert_eq!(body, h1.body);
    }

    async fn wait_for_no_streams(up: &DemoUpstream) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while up.live_streams.load(Ordering::SeqCst) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "stream task still alive"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a raw HTTP/1.1 request and reads until the first SSE event arrived.
    async fn open_stream(up: &DemoUpstream, body: &Value) -> tokio::net::TcpStream {
        let body = serde_json::to_vec(body).unwrap();
        let mut conn = tokio::net::TcpStream::connect(up.addr()).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: demo\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&body).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("\n\n")
            || !String::from_utf8_lossy(&seen).contains("data: ")
        {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            seen.extend_from_slice(&buf[..n]);
        }
        conn
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hang_stream_stops_when_the_client_goes_away() {
        let up = upstream().await;
        let body = serde_json::json!({"model": "demo-hang-stream", "messages": [{"role": "user", "content": "hi"}]});
        let mut conn = open_stream(&up, &body).await;
        // Nothing else arrives.
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await;
        assert!(read.is_err(), "hang stream sent more data");
        assert_eq!(up.live_streams.load(Ordering::SeqCst), 1);
        drop(conn);
        wait_for_no_streams(&up).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn slow_stream_stops_when_the_client_goes_away() {
        let opts = DemoOptions {
            chunk_delay: Duration::from_millis(200),
            first_byte_delay: Duration::ZERO,
        };
        let up = DemoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), opts)
            .await
            .unwrap();
        let conn = open_stream(&up, &chat_body(true, None)).await;
        assert_eq!(up.live_streams.load(Ordering::SeqCst), 1);
        drop(conn);
        wait_for_no_streams(&up).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn large_request_bodies_are_accepted() {
        let up = upstream().await;
        let filler = "a".repeat(64 * 1024 * 1024);
        let body = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{filler}"}}]}}"#
        );
        assert!(body.len() > 64 * 1024 * 1024);
        let reply = request(&up, Method::POST, "/v1/chat/completions", &[], body).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["usage"]["prompt_tokens"], 3 + 4 + 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn shutdown_stops_accepting() {
        let up = upstream().await;
        let addr = up.addr();
        assert_eq!(up.base_url(), format!("http://127.0.0.1:{}", addr.port()));
        up.shutdown();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
