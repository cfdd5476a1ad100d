//! WebSocket upgrades through tokentap (SPEC §10, first bullet): the handshake is
//! forwarded with its upgrade headers, the `101` comes back with its headers and
//! `traceresponse`, and frames then pass byte for byte both ways — compared here
//! as the exact bytes each end sent and the other received. An open tunnel holds
//! its `--max-connections` slot, and SIGTERM closes it at once with `1001` to
//! both sides.
//!
//! The upstream is a small WebSocket echo server written on raw tokio sockets,
//! so every byte it received and sent is known.

#[path = "support/blackbox/mod.rs"]
mod blackbox;
mod support;
#[path = "support/tls.rs"]
mod tls;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokentap::config::{Config, Upstream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound on any single wait (a hang fails the test instead of blocking it).
const DEADLINE: Duration = Duration::from_secs(30);

/// The RFC 6455 §1.3 example key and its accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// What the echo server saw on one connection.
#[derive(Default, Clone, Debug)]
struct Seen {
    /// The protocol agreed by ALPN (TLS only).
    alpn: Option<Vec<u8>>,
    head: String,
    /// Every byte after the request head.
    received: Vec<u8>,
    /// Every byte sent after the response head.
    sent: Vec<u8>,
}

/// A WebSocket echo server: answers the handshake (`/refuse` gets a `403`, a
/// request without `Upgrade: websocket` a plain `200`), then echoes each frame
/// unmasked with the same first byte (ping → pong), and answers a close with the
/// same close and hangs up.
struct Echo {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>>,
}

impl Echo {
    async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>> = Arc::default();
        let all = conns.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let seen = Arc::new(Mutex::new(Seen::default()));
                all.lock().unwrap().push(seen.clone());
                tokio::spawn(echo(s, seen));
            }
        });
        Echo { addr, conns }
    }

    /// The same server behind TLS with `config` (its ALPN offer included).
    async fn start_tls(config: Arc<rustls::ServerConfig>) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>> = Arc::default();
        let all = conns.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(s).await else {
                    continue;
                };
                let seen = Arc::new(Mutex::new(Seen {
                    alpn: tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec),
                    ..Seen::default()
                }));
                all.lock().unwrap().push(seen.clone());
                tokio::spawn(echo(tls, seen));
            }
        });
        Echo { addr, conns }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn conn(&self, i: usize) -> Seen {
        self.conns.lock().unwrap()[i].lock().unwrap().clone()
    }
}

async fn read_head(s: &mut (impl AsyncRead + Unpin)) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
            return (head, buf[i + 4..].to_vec());
        }
        let n = s.read(&mut chunk).await.expect("read head");
        assert!(n > 0, "closed before a complete head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn echo(mut s: impl AsyncRead + AsyncWrite + Unpin, seen: Arc<Mutex<Seen>>) {
    let (head, mut buf) = read_head(&mut s).await;
    seen.lock().unwrap().head = head.clone();
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    let upgrade = header(&head, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    if path == "/refuse" || !upgrade {
        let (status, body) = if upgrade {
            ("403 Forbidden", "no sockets here")
        } else {
            ("200 OK", "plain answer")
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nx-echo: yes\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(reply.as_bytes()).await;
        return;
    }
    let key = header(&head, "sec-websocket-key").unwrap_or("");
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nx-echo: yes\r\n",
        accept(key)
    );
    if let Some(p) = header(&head, "sec-websocket-protocol") {
        resp.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    if header(&head, "sec-websocket-extensions").is_some() {
        resp.push_str("Sec-WebSocket-Extensions: permessage-deflate\r\n");
    }
    resp.push_str("\r\n");
    s.write_all(resp.as_bytes()).await.expect("101");
    seen.lock().unwrap().received.extend_from_slice(&buf);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some((first, payload, used)) = parse_frame(&buf) {
            buf.drain(..used);
            let opcode = first & 0x0f;
            let first = if opcode == 0x9 {
                (first & 0xf0) | 0xA
            } else {
                first
            };
            let out = frame(first, &payload, None);
            s.write_all(&out).await.expect("echo");
            seen.lock().unwrap().sent.extend_from_slice(&out);
            if opcode == 0x8 {
                let _ = s.shutdown().await;
                return;
            }
        }
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        seen.lock().unwrap().received.extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)).
fn accept(key: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    base64(d.as_ref())
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One frame: first byte `first`, `payload`, masked with `mask` when given.
fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![first];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => f.push(m | n as u8),
        n @ 126..=65535 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// The first whole frame of `buf`: (first byte, unmasked payload, bytes used).
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let key = if masked {
        let k: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(k)
    } else {
        None
    };
    let end = at + usize::try_from(len).ok()?;
    let mut payload = buf.get(at..end)?.to_vec();
    if let Some(k) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    Some((buf[0], payload, end))
}

/// A WebSocket client connection through tokentap at `addr`, handshake done.
struct Client {
    s: TcpStream,
    head: String,
    /// Bytes read past the head (frames).
    buf: Vec<u8>,
}

fn handshake(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\n\
         X-Hop: secret-hop\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: realtime\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
}

impl Client {
    async fn open(addr: SocketAddr, path: &str) -> Client {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(handshake(path).as_bytes()).await.expect("send");
        let (head, buf) = tokio::time::timeout(DEADLINE, read_head(&mut s))
            .await
            .expect("handshake answered");
        Client { s, head, buf }
    }

    fn status(&self) -> u16 {
        self.head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Reads exactly `n` frame bytes.
    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut chunk = vec![0u8; 64 * 1024];
        while self.buf.len() < n {
            let r = tokio::time::timeout(DEADLINE, self.s.read(&mut chunk))
                .await
                .expect("bytes within the deadline")
                .expect("read");
            assert!(r > 0, "closed after {} of {n} bytes", self.buf.len());
            self.buf.extend_from_slice(&chunk[..r]);
        }
        self.buf.drain(..n).collect()
    }

    /// Everything until the connection closes.
    async fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.buf);
        tokio::time::timeout(DEADLINE, self.s.read_to_end(&mut rest))
            .await
            .expect("closed within the deadline")
            .expect("read");
        rest
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_pass_byte_for_byte_and_the_101_keeps_its_headers() {
    let echo = Echo::start().await;
    let cfg = Config::for_upstream(Upstream::parse(&echo.url()).expect("url"));
    let (proxy, spans) = support::start_traced_proxy(cfg).await;

    let mut c = Client::open(proxy.addr, "/v1/realtime?model=gpt-realtime").await;
    assert_eq!(c.status(), 101, "{}", c.head);
    assert_eq!(header(&c.head, "sec-websocket-accept"), Some(ACCEPT));
    assert_eq!(header(&c.head, "upgrade"), Some("websocket"));
    assert_eq!(header(&c.head, "sec-websocket-protocol"), Some("realtime"));
    assert_eq!(
        header(&c.head, "sec-websocket-extensions"),
        Some("permessage-deflate")
    );
    assert_eq!(header(&c.head, "x-echo"), Some("yes"));
    let traceresponse = header(&c.head, "traceresponse")
        .expect("traceresponse on the 101")
        .to_owned();

    // the upstream got the upgrade headers, the span's traceparent, and no other hop-by-hop header
    let up = echo.conn(0).head;
    assert!(
        up.starts_with("GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\n"),
        "{up}"
    );
    assert_eq!(header(&up, "upgrade"), Some("websocket"));
    assert!(
        header(&up, "connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "{up}"
    );
    assert_eq!(header(&up, "sec-websocket-key"), Some(KEY));
    assert_eq!(header(&up, "sec-websocket-version"), Some("13"));
    assert_eq!(header(&up, "sec-websocket-protocol"), Some("realtime"));
    assert_eq!(
        header(&up, "sec-websocket-extensions"),
        Some("permessage-deflate; client_max_window_bits")
    );
    assert_eq!(header(&up, "x-hop"), None, "{up}");
    // the Realtime session's span: upstream as the parent, back as traceresponse
    let traceparent = header(&up, "traceparent").expect("traceparent upstream");
    let trace_id = traceparent.split('-').nth(1).expect("trace id").to_owned();
    let span_id = traceparent.split('-').nth(2).expect("span id").to_owned();
    assert_eq!(traceresponse.split('-').nth(1), Some(trace_id.as_str()));
    assert_eq!(traceresponse.split('-').nth(2), Some(span_id.as_str()));

    // text, binary (64-bit length), a "compressed" frame (RSV1), fragments, ping, close with a code
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let frames = vec![
        frame(0x81, b"{\"type\":\"response.create\"}", Some([1, 2, 3, 4])),
        frame(0x82, &big, Some([9, 8, 7, 6])),
        frame(
            0xC1,
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
            Some([5, 5, 5, 5]),
        ),
        frame(0x01, b"frag", Some([0, 0, 0, 1])),
        frame(0x80, b"ment", Some([0, 0, 1, 0])),
        frame(0x89, b"are you there", Some([0xaa, 0xbb, 0xcc, 0xdd])),
    ];
    let mut sent = Vec::new();
    let mut got = Vec::new();
    for f in &frames {
        c.s.write_all(f).await.expect("send frame");
        sent.extend_from_slice(f);
        // the echo's answer is the same payload unmasked: 4 bytes of mask less
        let (first, payload, _) = parse_frame(f).expect("own frame");
        let first = if first & 0x0f == 0x9 {
            (first & 0xf0) | 0xA
        } else {
            first
        };
        let want = frame(first, &payload, None);
        let answer = c.read_exact(want.len()).await;
        assert_eq!(answer, want);
        got.extend_from_slice(&answer);
    }
    let mut close_payload = 4000u16.to_be_bytes().to_vec();
    close_payload.extend_from_slice(b"bye");
    let close = frame(0x88, &close_payload, Some([3, 1, 4, 1]));
    c.s.write_all(&close).await.expect("close");
    sent.extend_from_slice(&close);
    got.extend(c.read_to_end().await);
    drop(c); // a client closes its side once the server has

    let seen = echo.conn(0);
    assert_eq!(
        seen.received, sent,
        "the upstream received exactly the client's bytes"
    );
    assert_eq!(
        got, seen.sent,
        "the client received exactly the upstream's bytes"
    );
    let (first, payload, _) = parse_frame(&got[got.len() - 7..]).expect("close frame");
    assert_eq!((first, &payload[..2]), (0x88, &4000u16.to_be_bytes()[..]));

    // one span for the session, ended when it closed: status 101, the span sent upstream
    assert!(
        support::eventually(async || !spans.get_finished_spans().unwrap().is_empty()).await,
        "the session's span"
    );
    let done = spans.get_finished_spans().unwrap();
    assert_eq!(done.len(), 1);
    let span = &done[0];
    assert_eq!(span.name, "realtime gpt-realtime");
    assert_eq!(span.span_context.trace_id().to_string(), trace_id);
    assert_eq!(span.span_context.span_id().to_string(), span_id);
    assert_eq!(status(span).as_deref(), Some("101"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_upstream_offering_h2_gets_the_upgrade_over_http1() {
    let pki = tls::Pki::new();
    let echo = Echo::start_tls(pki.server_config(false, &[b"h2".as_slice(), b"http/1.1"])).await;
    let url = format!("https://localhost:{}", echo.addr.port());
    let mut cfg = Config::for_upstream(Upstream::parse(&url).expect("url"));
    cfg.upstream_ca =
        Some(tokentap::tls::CaCerts::load(std::path::Path::new(&pki.file("ca.pem"))).expect("ca"));
    let proxy = tokentap::app::start(cfg).await.expect("starts");

    let mut c = Client::open(proxy.addr, "/v1/realtime").await;
    assert_eq!(c.status(), 101, "{}", c.head);
    assert_eq!(header(&c.head, "sec-websocket-accept"), Some(ACCEPT));
    // no h2 by ALPN (the HTTP/1-only client offers no ALPN: HTTP/1.1 by default)
    let alpn = echo.conn(0).alpn;
    assert!(
        alpn.is_none() || alpn.as_deref() == Some(b"http/1.1"),
        "{alpn:?}"
    );
    let hello = frame(0x81, b"over tls", Some([4, 3, 2, 1]));
    c.s.write_all(&hello).await.expect("send");
    assert_eq!(c.read_exact(10).await, frame(0x81, b"over tls", None));
    assert_eq!(echo.conn(0).received, hello);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn other_upgrades_and_refused_handshakes_pass_as_plain_requests() {
    let echo = Echo::start().await;
    let cfg = Config::for_upstream(Upstream::parse(&echo.url()).expect("url"));
    let proxy = tokentap::app::start(cfg).await.expect("starts");

    // a non-WebSocket upgrade the upstream declines: a normal request and answer
    let r = support::send(
        &proxy.url(),
        "GET",
        "/v1/models",
        &[("upgrade", "foo/1"), ("connection", "upgrade")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "plain answer");
    assert_eq!(
        r.headers.get("x-echo").map(|v| v.as_bytes()),
        Some(&b"yes"[..])
    );

    // a WebSocket handshake the upstream refuses: its answer, unchanged
    let mut c = Client::open(proxy.addr, "/refuse").await;
    assert_eq!(c.status(), 403, "{}", c.head);
    assert!(header(&c.head, "traceresponse").is_some());
    let len: usize = header(&c.head, "content-length")
        .expect("length")
        .parse()
        .expect("n");
    assert_eq!(c.read_exact(len).await, b"no sockets here");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_tunnel_holds_its_connection_slot() {
    let echo = Echo::start().await;
    let mut cfg = Config::for_upstream(Upstream::parse(&echo.url()).expect("url"));
    cfg.max_connections = 1;
    let proxy = tokentap::app::start(cfg).await.expect("starts");

    let mut c = Client::open(proxy.addr, "/ws").await;
    assert_eq!(c.status(), 101, "{}", c.head);
    // the tunnel works (the connection's HTTP part is over: hyper handed the socket on)
    let ping = frame(0x81, b"still here", Some([1, 1, 1, 1]));
    c.s.write_all(&ping).await.expect("send");
    assert_eq!(c.read_exact(12).await, frame(0x81, b"still here", None));

    // a second connection is not served while the tunnel is open…
    let mut second = TcpStream::connect(proxy.addr)
        .await
        .expect("queued by the kernel");
    second
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut buf = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(early.is_err(), "served while the only slot was a tunnel's");

    // …and is once the tunnel closes
    c.s.write_all(&frame(0x88, &1000u16.to_be_bytes(), Some([2, 2, 2, 2])))
        .await
        .expect("close");
    c.read_to_end().await;
    drop(c); // a client closes its side once the server has
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, second.read_to_end(&mut answer))
        .await
        .expect("served after the tunnel closed")
        .expect("read");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_tunnels_with_1001_and_exits_promptly() {
    let echo = Echo::start().await;
    let receiver = support::otlp::Receiver::grpc().await;
    let mut child = blackbox::child::command()
        .args(["--listen", "127.0.0.1:0", "--upstream", &echo.url()])
        .env("OTEL_TRACES_EXPORTER", "otlp")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        // were tunnels held for the grace period, the exit below would not come
        .args(["--shutdown-grace", "3600s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tokentap spawns");
    let stdout = child.stdout.take().expect("stdout");
    let url = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let url = lines
            .find_map(|l| {
                l.ok()?
                    .strip_prefix("tokentap listening on ")
                    .map(str::to_owned)
            })
            .expect("banner");
        // keep draining so the pipe never fills
        std::thread::spawn(move || for _ in lines {});
        url
    })
    .await
    .expect("banner read");
    let addr: SocketAddr = url.trim_start_matches("http://").parse().expect("addr");

    let mut c = Client::open(addr, "/v1/realtime?model=gpt-realtime").await;
    assert_eq!(c.status(), 101, "{}", c.head);
    let hello = frame(0x81, b"hello", Some([7, 7, 7, 7]));
    c.s.write_all(&hello).await.expect("send");
    assert_eq!(c.read_exact(7).await, frame(0x81, b"hello", None));

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());

    // the client gets a 1001 close frame, then the end of the connection
    assert_eq!(c.read_to_end().await, [0x88, 0x02, 0x03, 0xE9]);
    // the upstream got, after the client's frame, a masked close with 1001
    let mut upstream_close = None;
    for _ in 0..400 {
        let seen = echo.conn(0);
        if seen.received.len() > hello.len() {
            upstream_close = Some(seen.received[hello.len()..].to_vec());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rest = upstream_close.expect("a close frame reached the upstream");
    assert_eq!(echo.conn(0).received[..hello.len()], hello[..]);
    assert_eq!(rest[1] & 0x80, 0x80, "masked, as a client's frame");
    let (first, payload, used) = parse_frame(&rest).expect("one whole frame");
    assert_eq!((first, payload, used), (0x88, vec![0x03, 0xE9], rest.len()));

    let mut status = None;
    for _ in 0..600 {
        if let Some(s) = child.try_wait().expect("wait") {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("tokentap did not exit after SIGTERM with a tunnel open");
    };
    assert_eq!(status.code(), Some(0));

    // the session's span was ended and flushed before the exit
    let trace_id = header(&c.head, "traceresponse")
        .and_then(|t| t.split('-').nth(1))
        .expect("traceresponse")
        .to_owned();
    let spans = receiver.spans();
    let span = spans
        .iter()
        .find(|s| s.trace_id == trace_id)
        .unwrap_or_else(|| panic!("the session's span among {spans:?}"));
    assert_eq!(span.name, "realtime gpt-realtime");
    assert_eq!(span.int("http.response.status_code"), Some(101));
}

/// A `response.done` with usage, as a Realtime server sends it.
fn response_done(id: &str, input: u64, output: u64) -> Vec<u8> {
    format!(
        r#"{{"type":"response.done","response":{{"id":"{id}","status":"completed","usage":{{"total_tokens":{},"input_tokens":{input},"output_tokens":{output}}}}}}}"#,
        input + output
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_in_a_realtime_session_flows_unchanged_and_only_degrades_observation() {
    // the echo server sends back what the client sends: the client writes the server's events
    let echo = Echo::start().await;
    let cfg = Config::for_upstream(Upstream::parse(&echo.url()).expect("url"));
    let (proxy, spans) = support::start_traced_proxy(cfg).await;
    let mut c = Client::open(proxy.addr, "/v1/realtime?model=gpt-realtime").await;
    assert_eq!(c.status(), 101, "{}", c.head);

    let mask = Some([0x11, 0x22, 0x33, 0x44]);
    let oversized = vec![b'x'; 5 << 20]; // past the 4 MiB message cap
    let frames = [
        frame(0x81, &response_done("resp_1", 7, 3), mask),
        frame(0x81, b"{not json", mask),
        frame(0x81, br#"{"type":"some.future.event","x":1}"#, mask),
        frame(0x81, &oversized, mask),
        frame(0x81, &response_done("resp_2", 5, 2), mask),
        // a reserved opcode: the framing is broken, observation stops, bytes still flow
        frame(0x83, b"reserved", mask),
        frame(0x81, &response_done("resp_3", 100, 100), mask),
    ];
    let mut sent = Vec::new();
    let mut got = Vec::new();
    for f in &frames {
        c.s.write_all(f).await.expect("send frame");
        sent.extend_from_slice(f);
        let (first, payload, _) = parse_frame(f).expect("own frame");
        let want = frame(first, &payload, None);
        let answer = c.read_exact(want.len()).await;
        assert!(answer == want, "frame {first:#x} came back changed");
        got.extend_from_slice(&answer);
    }
    let close = frame(0x88, &1000u16.to_be_bytes(), mask);
    c.s.write_all(&close).await.expect("close");
    sent.extend_from_slice(&close);
    got.extend(c.read_to_end().await);
    drop(c);
    let seen = echo.conn(0);
    assert!(seen.received == sent, "the upstream got the client's bytes");
    assert!(got == seen.sent, "the client got the upstream's bytes");

    // the two turns before the break are metered exactly; the one after is not seen
    let base = format!("http://{}", proxy.addr);
    assert!(
        support::eventually(async || {
            let page = support::metrics(&base).await;
            support::sum(&page, "tokentap_parse_errors_total", &[]) >= 3.0
        })
        .await
    );
    let page = support::metrics(&base).await;
    let model = [("model", "gpt-realtime")];
    assert_eq!(support::sum(&page, "llm_requests_total", &model), 2.0);
    let tokens = |t| support::sum(&page, "llm_tokens_used_total", &[model[0], ("type", t)]);
    assert_eq!((tokens("prompt"), tokens("completion")), (12.0, 5.0));
    for reason in ["invalid_json", "too_large", "invalid_websocket"] {
        assert_eq!(
            support::sum(&page, "tokentap_parse_errors_total", &[("reason", reason)]),
            1.0,
            "{reason}\n{page}"
        );
    }
    let names: Vec<String> = spans
        .get_finished_spans()
        .unwrap()
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == "chat gpt-realtime").count(),
        2,
        "{names:?}"
    );
    proxy.shutdown().await;
}

/// A span's `http.response.status_code`, as text.
fn status(span: &opentelemetry_sdk::trace::SpanData) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == "http.response.status_code")
        .map(|kv| kv.value.to_string())
}

/// Spans kept past the provider's shutdown (the in-memory exporter forgets them then).
#[derive(Debug, Clone, Default)]
struct Kept(Arc<Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanExporter for Kept {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.lock().expect("spans").extend(batch);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_open_at_shutdown_is_recorded_before_the_flush() {
    let echo = Echo::start().await;
    let cfg = Config::for_upstream(Upstream::parse(&echo.url()).expect("url"));
    let kept = Kept::default();
    let proxy = support::start_exporting_proxy(cfg, kept.clone()).await;
    let mut c = Client::open(proxy.addr, "/ws").await;
    assert_eq!(c.status(), 101, "{}", c.head);
    let ping = frame(0x81, b"still here", Some([1, 1, 1, 1]));
    c.s.write_all(&ping).await.expect("send");
    assert_eq!(c.read_exact(12).await, frame(0x81, b"still here", None));
    // the tunnel is open when the stop comes: closed with 1001, then recorded (after the
    // relay, by the recorder's task) and flushed before shutdown returns, with no wait here
    proxy.shutdown().await;
    let done = kept.0.lock().expect("spans").clone();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(status(&done[0]).as_deref(), Some("101"));
    drop(c);
}
