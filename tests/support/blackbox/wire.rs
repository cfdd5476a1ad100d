//! Clients at the wire: raw TCP for malformed or slow input, hyper's
//! connection-level HTTP/1.1 and h2c clients (one fresh connection per call, so
//! no pool hides what a connection limit does), and a small reader of the
//! Prometheus text page. Every wait is bounded.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::child::Tokentap;

/// The generous deadline of "answers within its usual time" (a loaded CI box included).
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// Upper bound on any one exchange that is not itself under test (a debug build
/// sharing two cores with other suites can be slow, never stuck).
pub const IO_DEADLINE: Duration = Duration::from_secs(60);

/// Awaits `fut` or panics naming `what` after `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {limit:?}"),
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", self.text()))
    }

    /// Asserts an OpenAI-shaped error `{"error":{"message","type","param","code"}}` with `code`.
    pub fn assert_openai_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "status; body: {}",
            self.text()
        );
        let v = self.json();
        let e = &v["error"];
        assert!(e.is_object(), "OpenAI-shaped error body: {v}");
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "message: {v}"
        );
        assert!(e["type"].is_string(), "type: {v}");
        assert!(e.get("param").is_some(), "param member: {v}");
        assert_eq!(e["code"], code, "error.code: {v}");
    }
}

/// Opens a fresh HTTP/1.1 connection to `addr` and sends `req`; the body is left to stream.
pub async fn open(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Incoming> {
    within(IO_DEADLINE, "response head", async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        send.send_request(req).await.expect("response")
    })
    .await
}

/// Reads a streaming body to its end (bounded by `limit`).
pub async fn collect(body: Incoming, limit: Duration) -> Bytes {
    within(limit, "response body", async {
        body.collect().await.expect("body").to_bytes()
    })
    .await
}

/// One request on a fresh HTTP/1.1 connection, body collected.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let resp = open(addr, req).await;
    let (parts, body) = resp.into_parts();
    let body = collect(body, IO_DEADLINE).await;
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "tokentap.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).expect("request")
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, request("GET", path, &[], Bytes::new())).await
}

pub async fn post_json(addr: SocketAddr, path: &str, json: impl Into<Bytes>) -> Reply {
    send(
        addr,
        request(
            "POST",
            path,
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer sk-test"),
            ],
            json,
        ),
    )
    .await
}

/// A well-behaved chat completion request body.
pub const NORMAL_CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Are you still there?"}]}"#;

/// A well-behaved streamed chat completion request body.
pub const NORMAL_STREAM: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Stream to me."}]}"#;

/// `/health` answers healthy and a normal chat completion made with a real SDK
/// (async-openai) succeeds, each within [`ANSWER_DEADLINE`] — what "still
/// serving" means after an attack.
pub async fn assert_serves(tt: &mut Tokentap) {
    use async_openai::types::chat::{
        ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
    };
    tt.assert_running();
    let addr = tt.addr;
    let health = within(
        ANSWER_DEADLINE,
        "/health after the scenario",
        get(addr, "/health"),
    )
    .await;
    assert_eq!(health.status, StatusCode::OK, "/health: {}", health.text());
    assert_eq!(health.json()["status"], "healthy");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = async_openai::Client::with_config(
        async_openai::config::OpenAIConfig::new()
            .with_api_base(format!("http://{addr}/v1"))
            .with_api_key("sk-test-key"),
    );
    let req = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Are you still there?")
            .build()
            .expect("message")
            .into()])
        .build()
        .expect("request");
    let chat = within(
        ANSWER_DEADLINE,
        "a normal chat completion (async-openai) after the scenario",
        client.chat().create(req),
    )
    .await
    .expect("a normal chat completion after the scenario");
    assert!(
        chat.choices[0]
            .message
            .content
            .as_deref()
            .is_some_and(|c| !c.is_empty()),
        "{chat:?}"
    );
    assert!(chat.usage.is_some_and(|u| u.total_tokens > 0), "usage");
    drop(client);
    tt.assert_running();
}

/// The `/metrics` page.
pub async fn metrics(addr: SocketAddr) -> String {
    let r = within(ANSWER_DEADLINE, "/metrics", get(addr, "/metrics")).await;
    assert_eq!(r.status, StatusCode::OK);
    r.text()
}

/// One sample line of the text exposition: name, labels, value.
pub type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the sample lines of a Prometheus text page (comments skipped).
pub fn samples(page: &str) -> Vec<Sample> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(sample)
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, after) = labels(&line[open + 1..])?;
            (&line[..open], labels, after)
        }
        None => {
            let (n, r) = line.split_once(' ')?;
            (n, BTreeMap::new(), r)
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name.to_owned(), labels, value))
}

/// `k="v",…}` → the labels and what follows the closing brace.
fn labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((out, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        let quoted = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.insert(key, value);
        rest = &quoted[end + 1..];
    }
}

/// The lines of `page` about metric `name` (at most 4 KiB of them), for messages.
pub fn grep(page: &str, name: &str) -> String {
    let mut out = String::new();
    for l in page.lines().filter(|l| l.contains(name)) {
        if out.len() + l.len() > 4096 {
            out.push_str("…\n");
            break;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Sum of the samples named `name` whose labels include all of `want`.
pub fn sum(page: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(page)
        .into_iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Polls `/metrics` until `ok(page)` holds (a call is recorded when its body
/// ends, a moment after the client read the last byte); returns the last page.
pub async fn metrics_until(addr: SocketAddr, ok: impl Fn(&str) -> bool) -> String {
    let mut page = String::new();
    for _ in 0..100 {
        page = metrics(addr).await;
        if ok(&page) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    page
}

/// Reads from `s` until the peer closes (EOF or reset) or `limit` passes.
/// `Ok(bytes)` when it closed, `Err(bytes)` when it was still open.
pub async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return Err(got),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes `bytes` on a fresh connection and reads what comes back until the
/// server closes (the request should carry `connection: close`).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = within(ANSWER_DEADLINE, "connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let _ = s.write_all(bytes).await;
    match read_until_closed(&mut s, ANSWER_DEADLINE).await {
        Ok(b) => b,
        Err(b) => panic!(
            "no complete answer to a raw request; got so far: {:?}",
            String::from_utf8_lossy(&b)
        ),
    }
}

/// A parsed raw HTTP/1.1 response (content-length or chunked body).
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Parses the first response in `raw`; `None` if it is not one.
pub fn parse_response(raw: &[u8]) -> Option<RawResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some((_, n)) = headers.iter().find(|(k, _)| k == "content-length") {
        rest.get(..n.parse::<usize>().ok()?)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..eol])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// An h2c (prior knowledge) connection to `addr`; the handle is cheap to clone.
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    within(ANSWER_DEADLINE, "h2c handshake", async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        send
    })
    .await
}

/// Reads from `s` until one complete response is in (or the peer closes, or
/// `limit` passes): `Some` with the response, `None` if none came.
pub async fn read_one_response(s: &mut TcpStream, limit: Duration) -> Option<RawResponse> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let until = tokio::time::Instant::now() + limit;
    loop {
        if let Some(r) = parse_complete(&got) {
            return Some(r);
        }
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return parse_response(&got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A response whose body is complete by its own framing (length or chunks).
fn parse_complete(raw: &[u8]) -> Option<RawResponse> {
    let r = parse_response(raw)?;
    let framed = r.header("content-length").is_some()
        || r.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    framed.then_some(r)
}

/// Still running, `/health` healthy and `/metrics` served, each within
/// [`ANSWER_DEADLINE`] (for tokentaps in front of a scripted upstream, which
/// may not answer a normal call).
pub async fn assert_alive(tt: &mut Tokentap) {
    tt.assert_running();
    let health = within(ANSWER_DEADLINE, "/health", get(tt.addr, "/health")).await;
    assert_eq!(health.status, StatusCode::OK, "/health: {}", health.text());
    metrics(tt.addr).await;
    tt.assert_running();
}

/// Writes `req` on a fresh connection while reading the answer (tokentap may
/// answer and close before the request is fully written); the status of the
/// answer, or `None` if it only closed.
pub async fn send_raw(addr: SocketAddr, req: Vec<u8>) -> Option<u16> {
    let mut s = within(ANSWER_DEADLINE, "connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (mut r, mut w) = s.split();
    let write = async {
        let _ = w.write_all(&req).await;
        // then keep reading until the answer is complete or the connection closes
        std::future::pending::<()>().await;
    };
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        while parse_complete(&got).is_none() {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    within(Duration::from_secs(30), "an answer or a close", async {
        tokio::select! {
            () = write => {}
            () = read => {}
        }
    })
    .await;
    if got.is_empty() {
        return None;
    }
    let r = parse_response(&got)
        .unwrap_or_else(|| panic!("not an HTTP response: {:?}", String::from_utf8_lossy(&got)));
    Some(r.status)
}

/// The bytes of a `POST` of a JSON `body` (with `content-length`, or chunked in
/// 1 MiB chunks), `connection: close`.
pub fn raw_post(path: &str, body: &[u8], chunked: bool) -> Vec<u8> {
    let framing = if chunked {
        "transfer-encoding: chunked".to_owned()
    } else {
        format!("content-length: {}", body.len())
    };
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: tokentap.test\r\ncontent-type: application/json\r\n{framing}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    if chunked {
        for piece in body.chunks(1 << 20) {
            raw.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            raw.extend_from_slice(piece);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
    } else {
        raw.extend_from_slice(body);
    }
    raw
}
