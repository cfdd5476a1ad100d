//! A scripted upstream on raw TCP: it records every request it receives and
//! answers with exactly the bytes a test scripts — including the ones a real
//! HTTP server library would refuse to produce (heads of 80 KiB, gzip that
//! nobody asked for, bombs, streams that pause on a gate the test opens).
//! Every response is sent with `connection: close` and the socket is closed
//! after it, so one recorded request is one connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Longest a [`Step::Gate`] waits for the test before going on anyway.
pub const GATE_CAP: Duration = Duration::from_secs(30);

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target (path and query) as sent.
    pub target: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// True when the body asks for stream usage (`stream_options.include_usage: true`).
    pub fn asks_for_usage(&self) -> bool {
        self.json()["stream_options"]["include_usage"] == true
    }
}

/// One step of a scripted answer.
pub enum Step {
    Send(Bytes),
    /// The same bytes, this many times.
    Repeat(Bytes, usize),
    Sleep(Duration),
    /// Waits until the test calls `notify_one` (or [`GATE_CAP`]).
    Gate(Arc<Notify>),
}

type Handler = dyn Fn(&Recorded) -> Vec<Step> + Send + Sync;

pub struct Upstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Listens on a free port; `answer` scripts the reply to each request.
    pub async fn start(
        answer: impl Fn(&Recorded) -> Vec<Step> + Send + Sync + 'static,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(answer);
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(serve(s, handler, recorded));
            }
        });
        Upstream {
            addr,
            requests,
            task,
        }
    }

    /// `http://ADDR`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

async fn serve(mut s: TcpStream, handler: Arc<Handler>, recorded: Arc<Mutex<Vec<Recorded>>>) {
    let Some(req) = read_request(&mut s).await else {
        return;
    };
    if let Ok(mut r) = recorded.lock() {
        r.push(req.clone());
    }
    for step in handler(&req) {
        let ok = match step {
            Step::Send(b) => s.write_all(&b).await.is_ok(),
            Step::Repeat(b, n) => {
                let mut ok = true;
                for _ in 0..n {
                    if s.write_all(&b).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                ok
            }
            Step::Sleep(d) => {
                tokio::time::sleep(d).await;
                true
            }
            Step::Gate(n) => {
                let _ = tokio::time::timeout(GATE_CAP, n.notified()).await;
                true
            }
        };
        if !ok {
            return;
        }
    }
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

/// Reads one request (head up to 1 MiB; content-length or chunked body).
async fn read_request(s: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        loop {
            if let Some(b) = complete_chunked(&rest) {
                break b;
            }
            let n = s.read(&mut tmp).await.ok()?;
            if n == 0 {
                return None;
            }
            rest.extend_from_slice(&tmp[..n]);
        }
    } else {
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        while rest.len() < len {
            let n = s.read(&mut tmp).await.ok()?;
            if n == 0 {
                return None;
            }
            rest.extend_from_slice(&tmp[..n]);
        }
        rest.truncate(len);
        rest
    };
    Some(Recorded {
        method,
        target,
        headers,
        body: Bytes::from(body),
    })
}

/// The decoded body once `b` holds a complete chunked body.
fn complete_chunked(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return b.windows(2).any(|w| w == b"\r\n").then_some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// A response head: `HTTP/1.1 {status}`, the given headers, `connection: close`.
pub fn head(status: u16, headers: &[(&str, &str)]) -> Bytes {
    let mut h = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("connection: close\r\n\r\n");
    Bytes::from(h)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Status",
    }
}

/// A complete response with a `content-length` body.
pub fn full(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Vec<Step> {
    let body = body.into();
    let len = body.len().to_string();
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("content-length", &len));
    vec![Step::Send(head(status, &all)), Step::Send(body)]
}

/// A JSON response.
pub fn json(status: u16, body: &str) -> Vec<Step> {
    full(
        status,
        &[("content-type", "application/json")],
        body.to_owned(),
    )
}

/// One chunk of a chunked body.
pub fn chunk(data: &[u8]) -> Bytes {
    let mut b = format!("{:x}\r\n", data.len()).into_bytes();
    b.extend_from_slice(data);
    b.extend_from_slice(b"\r\n");
    Bytes::from(b)
}

/// The end of a chunked body.
pub fn last_chunk() -> Bytes {
    Bytes::from_static(b"0\r\n\r\n")
}

/// The head of a chunked SSE response.
pub fn sse_head(extra: &[(&str, &str)]) -> Bytes {
    let mut all = vec![
        ("content-type", "text/event-stream; charset=utf-8"),
        ("transfer-encoding", "chunked"),
        ("x-request-id", "req_test_upstream"),
    ];
    all.extend_from_slice(extra);
    head(200, &all)
}

/// The SSE events of a chat completion stream the way the API sends them: with
/// `usage` asked for, `"usage":null` ends every chunk and a usage-only chunk
/// comes before `[DONE]`. Without, neither.
pub fn chat_stream_events(model: &str, with_usage: bool, usage: (u64, u64)) -> Vec<String> {
    let null = if with_usage { r#","usage":null"# } else { "" };
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-t1\",\"object\":\"chat.completion.chunk\",\"created\":1750000000,\"model\":\"{model}\",\"system_fingerprint\":\"fp_t\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]{null}}}\n\n"
        )
    };
    let mut events = vec![
        chunk(
            r#"{"role":"assistant","content":"","refusal":null}"#,
            "null",
        ),
        chunk(r#"{"content":"Hello"}"#, "null"),
        chunk(r#"{"content":" there"}"#, "null"),
        chunk("{}", r#""stop""#),
    ];
    if with_usage {
        let (p, c) = usage;
        events.push(format!(
            "data: {{\"id\":\"chatcmpl-t1\",\"object\":\"chat.completion.chunk\",\"created\":1750000000,\"model\":\"{model}\",\"system_fingerprint\":\"fp_t\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0}}}}}}\n\n",
            p + c
        ));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

/// A non-stream chat completion body with the given raw `usage` JSON and extra members.
pub fn chat_completion(model: &str, usage_json: &str, extra: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-t2","object":"chat.completion","created":1750000000,"model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hi.","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{usage_json}{extra}}}"#
    )
}

/// `events` gzip-compressed as a stream: one piece per event (sync-flushed, so
/// each decodes as soon as it arrives), then the gzip trailer.
pub fn gzip_pieces(events: &[String]) -> Vec<Bytes> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut pieces = Vec::new();
    for e in events {
        enc.write_all(e.as_bytes()).expect("compress");
        enc.flush().expect("sync flush");
        pieces.push(Bytes::from(std::mem::take(enc.get_mut())));
    }
    pieces.push(Bytes::from(enc.finish().expect("gzip trailer")));
    pieces.retain(|p| !p.is_empty());
    pieces
}

/// A valid single-member gzip body that inflates to `prefix` followed by
/// `mib` MiB of `fill` (about 1 KiB per MiB compressed). Built from one
/// compressed MiB repeated: a full flush leaves each repetition byte-aligned
/// and free of references to earlier data; the CRC of the whole is combined
/// arithmetically instead of hashing every inflated byte.
pub fn gzip_bomb(prefix: &[u8], fill: u8, mib: usize) -> Bytes {
    use flate2::{Compress, Compression, FlushCompress};
    let segment = vec![fill; 1 << 20];
    let mut c = Compress::new(Compression::best(), false);
    let mut p = Vec::with_capacity(prefix.len() + 1024);
    c.compress_vec(prefix, &mut p, FlushCompress::Full)
        .expect("deflate prefix");
    let mut s = Vec::with_capacity(64 * 1024);
    c.compress_vec(&segment, &mut s, FlushCompress::Full)
        .expect("deflate segment");
    let mut s2 = Vec::with_capacity(64 * 1024);
    c.compress_vec(&segment, &mut s2, FlushCompress::Full)
        .expect("deflate segment");
    assert_eq!(
        s, s2,
        "a full-flushed segment compresses the same every time"
    );

    let mut crc = flate2::Crc::new();
    crc.update(prefix);
    let mut seg_crc = flate2::Crc::new();
    seg_crc.update(&segment);
    let mut total = crc.sum();
    for _ in 0..mib {
        total = crc32_combine(total, seg_crc.sum(), segment.len() as u64);
    }
    // the arithmetic agrees with hashing on a small case
    let mut check = flate2::Crc::new();
    check.update(prefix);
    check.update(&segment);
    check.update(&segment);
    let two = crc32_combine(
        crc32_combine(crc.sum(), seg_crc.sum(), 1 << 20),
        seg_crc.sum(),
        1 << 20,
    );
    assert_eq!(check.sum(), two, "crc32_combine");

    let mut out = Vec::with_capacity(10 + p.len() + s.len() * mib + 10);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    out.extend_from_slice(&p);
    for _ in 0..mib {
        out.extend_from_slice(&s);
    }
    out.extend_from_slice(&[0x03, 0x00]); // an empty final block
    out.extend_from_slice(&total.to_le_bytes());
    let isize = (prefix.len() as u64 + ((mib as u64) << 20)) as u32; // mod 2^32, as gzip says
    out.extend_from_slice(&isize.to_le_bytes());
    Bytes::from(out)
}

/// CRC-32 of `A ‖ B` from the CRCs of `A` and `B` (`len_b` bytes): the CRC of
/// `A` advanced over `len_b` zero bytes, which is multiplication by
/// x^(8·len_b) modulo the CRC polynomial, xor the CRC of `B`.
fn crc32_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    gf2_mul(crc_a, x_pow_8n(len_b)) ^ crc_b
}

/// The CRC-32 polynomial in reflected bit order (bit 31 is x^0).
const CRC_POLY: u32 = 0xedb8_8320;

/// Product of two polynomials modulo the CRC polynomial (reflected order).
fn gf2_mul(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    for i in 0..32 {
        if a & (1 << (31 - i)) != 0 {
            product ^= b;
        }
        // b · x
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC_POLY
        } else {
            b >> 1
        };
    }
    product
}

/// x^(8n) modulo the CRC polynomial, by squaring.
fn x_pow_8n(mut n: u64) -> u32 {
    let mut result = 1u32 << 31; // x^0
    let mut base = 1u32 << (31 - 8); // x^8
    while n > 0 {
        if n & 1 == 1 {
            result = gf2_mul(result, base);
        }
        base = gf2_mul(base, base);
        n >>= 1;
    }
    result
}
