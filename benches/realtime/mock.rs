//! The mock Realtime upstream both paths (direct and through tokentap) are measured against.
//!
//! The harness runs it as a child process (`<harness> --mock-upstream PORT`, pinned with
//! tokentap) so it never takes the client's core. One current-thread tokio runtime, one
//! task per connection, raw frames (no compression, nothing negotiated):
//!
//! - `GET /v1/realtime?...` with `Upgrade: websocket` → `101`, then `session.created`;
//! - each client text frame `response.create` → `response.created`, then the response's
//!   `response.output_text.delta` events on a fixed schedule (the first at once, then one
//!   every gap), then `response.done` with text-only usage. The count and the gap come from
//!   the request's `response.metadata` (`events`, `gap_ms`: metadata is a real field of
//!   `response.create`, a map of strings), so the harness's options reach the mock without
//!   changing the URL;
//! - a close frame → the same close frame back, then the connection ends.
//!
//! Every event carries `"t_ns"`, `CLOCK_REALTIME` in nanoseconds taken just before the
//! frame is written, so the client measures each frame's one-way latency from the moment
//! it left the mock, whatever the mock's own scheduling delays.
//!
//! It prints `mock-upstream listening on PORT` once ready and exits when its stdin
//! closes, so it never outlives the harness.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::ws;

/// The line the mock prints once it accepts connections, followed by its port.
pub const READY: &str = "mock-upstream listening on ";
/// The model the session reports (the client names the same one in the URL).
pub const MODEL: &str = "gpt-realtime";
/// Input tokens every response reports (output tokens: one per delta).
const INPUT_TOKENS: u64 = 12;

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
    // 1,000 sessions connect at once: a deep accept queue.
    let listener = socket.listen(4096)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY}{}", listener.local_addr()?.port())?;
        out.flush()?;
    }
    let mut conn = 0u64;
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
        conn += 1;
        tokio::spawn(async move {
            if let Err(e) = session(stream, conn).await {
                eprintln!("mock upstream: session {conn}: {e}");
            }
        });
    }
}

/// What the mock reads of a client event.
#[derive(Deserialize)]
struct ClientEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    response: Option<ResponseParams>,
}

#[derive(Deserialize)]
struct ResponseParams {
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    events: Option<String>,
    gap_ms: Option<String>,
}

async fn session(mut s: TcpStream, conn: u64) -> crate::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let end = loop {
        if let Some(end) = ws::head_end(&buf) {
            break end;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let path = head.split(' ').nth(1).unwrap_or("");
    let key = ws::header(&head, "sec-websocket-key");
    let (true, Some(key)) = (path.starts_with("/v1/realtime"), key) else {
        let body = "mock upstream: only WebSocket upgrades on /v1/realtime";
        let reply = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(reply.as_bytes()).await?;
        return Ok(());
    };
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        ws::accept(key)
    );
    s.write_all(reply.as_bytes()).await?;
    send(
        &mut s,
        "session.created",
        &format!(
            r#""session":{{"type":"realtime","object":"realtime.session","id":"sess_{conn}","model":"{MODEL}","output_modalities":["text"]}}"#
        ),
    )
    .await?;
    let mut responses = 0u64;
    loop {
        while let Some((first, payload, used)) = ws::parse(&buf) {
            buf.drain(..used);
            match first & ws::OPCODE {
                0x1 => {
                    let Ok(event) = serde_json::from_slice::<ClientEvent>(&payload) else {
                        continue;
                    };
                    if event.kind == "response.create" {
                        responses += 1;
                        let meta = event.response.and_then(|r| r.metadata);
                        let num = |v: Option<&String>, default: u64| {
                            v.and_then(|v| v.parse().ok()).unwrap_or(default)
                        };
                        let events = num(meta.as_ref().and_then(|m| m.events.as_ref()), 50);
                        let gap = num(meta.as_ref().and_then(|m| m.gap_ms.as_ref()), 20);
                        let id = format!("resp_{conn}_{responses}");
                        respond(&mut s, &id, events, Duration::from_millis(gap)).await?;
                    }
                }
                0x8 => {
                    s.write_all(&ws::frame(ws::CLOSE, &payload, None)).await?;
                    s.shutdown().await?;
                    return Ok(());
                }
                _ => {}
            }
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One model turn: `response.created`, `events` deltas `gap` apart, `response.done`.
async fn respond(s: &mut TcpStream, id: &str, events: u64, gap: Duration) -> crate::Result<()> {
    let item = format!("item_{id}");
    send(
        s,
        "response.created",
        &format!(
            r#""response":{{"object":"realtime.response","id":"{id}","status":"in_progress","status_details":null,"output":[],"usage":null}}"#
        ),
    )
    .await?;
    let start = Instant::now();
    let mut text = String::new();
    for i in 0..events {
        tokio::time::sleep_until(start + gap * u32::try_from(i).unwrap_or(u32::MAX)).await;
        let word = WORDS[i as usize % WORDS.len()];
        text.push_str(word);
        send(
            s,
            "response.output_text.delta",
            &format!(
                r#""response_id":"{id}","item_id":"{item}","output_index":0,"content_index":0,"delta":"{word}""#
            ),
        )
        .await?;
    }
    let total = INPUT_TOKENS + events;
    send(
        s,
        "response.done",
        &format!(
            r#""response":{{"object":"realtime.response","id":"{id}","status":"completed","status_details":null,"output":[{{"id":"{item}","object":"realtime.item","type":"message","status":"completed","role":"assistant","content":[{{"type":"output_text","text":"{text}"}}]}}],"usage":{{"total_tokens":{total},"input_tokens":{INPUT_TOKENS},"output_tokens":{events},"input_token_details":{{"text_tokens":{INPUT_TOKENS},"audio_tokens":0,"image_tokens":0,"cached_tokens":0,"cached_tokens_details":{{"text_tokens":0,"audio_tokens":0,"image_tokens":0}}}},"output_token_details":{{"text_tokens":{events},"audio_tokens":0}}}}}}"#
        ),
    )
    .await
}

/// Writes one server event (`type`, `event_id`, `t_ns`, then `rest`) as a text frame,
/// stamping `t_ns` as late as possible.
async fn send(s: &mut TcpStream, kind: &str, rest: &str) -> crate::Result<()> {
    let t_ns = ws::now_ns();
    let json = format!(r#"{{"type":"{kind}","event_id":"evt_{t_ns}","t_ns":{t_ns},{rest}}}"#);
    s.write_all(&ws::frame(ws::TEXT, json.as_bytes(), None))
        .await?;
    Ok(())
}
