//! The sessions: raw tokio sockets, the handshake, masked client frames, and a
//! clock reading on every arrival.
//!
//! All sessions are opened first (at most [`CONNECTING`] handshakes at a time: the
//! connection storm is not what is measured), each waits for `session.created`; then
//! every session sends `response.create`, the sends spread evenly over one gap so
//! that all responses run at once while their deltas are not due in lockstep. Each
//! server event's latency is its arrival (`CLOCK_REALTIME`, read once per socket read,
//! before parsing) minus the `t_ns` the mock stamped just before writing it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use crate::{mock, ws};

/// Handshakes in flight at once.
const CONNECTING: usize = 64;
/// Longest wait for any single read: a stuck session fails instead of hanging the run.
const READ_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait for every session to be open.
const OPEN_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub sessions: usize,
    pub events: usize,
    pub gap: Duration,
}

impl Plan {
    /// Server events per response: `response.created`, the deltas, `response.done`.
    pub fn frames_per_response(&self) -> usize {
        self.events + 2
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub opened: usize,
    /// Sessions that got every event of their response, in order, then closed cleanly.
    pub completed: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// One-way latency of every response event received, µs.
    pub frame_us: Vec<u32>,
    /// Events stamped later than they arrived (clock steps); counted as 0 µs.
    pub negative: usize,
    /// Connect to `101` received, µs.
    pub upgrade_us: Vec<u32>,
    /// From the first `response.create` to the last session closed.
    pub response_phase: Duration,
}

impl Outcome {
    fn fail(&mut self, e: String) {
        self.failed += 1;
        self.first_error.get_or_insert(e);
    }
}

/// What one session measured.
struct Session {
    frame_us: Vec<u32>,
    negative: usize,
}

/// Runs `plan.sessions` concurrent sessions against `addr`; `at_start` is called once
/// all are open, just before the first `response.create`.
pub async fn run(addr: SocketAddr, plan: Plan, at_start: impl FnOnce()) -> Outcome {
    let n = plan.sessions;
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<Result<u32, String>>();
    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let gate = gate.clone();
        let opened = opened_tx.clone();
        let mut start = start_rx.clone();
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await;
            let began = Instant::now();
            let open = timeout(READ_LIMIT * 2, open(addr, i)).await;
            drop(permit);
            let (mut s, mut buf) = match open {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    let _ = opened.send(Err(e.clone()));
                    return Err(e);
                }
                Err(_) => {
                    let e = "handshake timed out".to_owned();
                    let _ = opened.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let _ = opened.send(Ok(crate::stats::micros(began.elapsed())));
            let at = match start.wait_for(Option::is_some).await {
                Ok(at) => (*at).unwrap_or_else(Instant::now),
                Err(_) => return Err("the run was abandoned".to_owned()),
            };
            let offset = plan.gap.mul_f64(i as f64 / n.max(1) as f64);
            tokio::time::sleep_until(at + offset).await;
            respond(&mut s, &mut buf, i, plan).await
        });
    }
    drop(opened_tx);
    let mut out = Outcome::default();
    let deadline = Instant::now() + OPEN_LIMIT;
    let mut answered = 0;
    while answered < n {
        match tokio::time::timeout_at(deadline, opened_rx.recv()).await {
            Ok(Some(Ok(us))) => {
                out.opened += 1;
                out.upgrade_us.push(us);
            }
            Ok(Some(Err(_))) => {}
            Ok(None) | Err(_) => break,
        }
        answered += 1;
    }
    at_start();
    let started = Instant::now();
    start_tx.send_replace(Some(started));
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(s)) => {
                out.completed += 1;
                out.frame_us.extend(s.frame_us);
                out.negative += s.negative;
            }
            Ok(Err(e)) => out.fail(e),
            Err(e) => out.fail(format!("session task: {e}")),
        }
    }
    out.response_phase = started.elapsed();
    out
}

/// Connects, upgrades and reads `session.created`; returns the socket and any bytes
/// read past it.
async fn open(addr: SocketAddr, i: usize) -> Result<(TcpStream, Vec<u8>), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
    nonce[8..].copy_from_slice(&ws::now_ns().to_be_bytes());
    let key = ws::base64(&nonce);
    let req = format!(
        "GET /v1/realtime?model={} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        mock::MODEL
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("handshake write: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let end = loop {
        if let Some(end) = ws::head_end(&buf) {
            break end;
        }
        read_more(&mut s, &mut buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    if !head.starts_with("HTTP/1.1 101") {
        let status = head.lines().next().unwrap_or("");
        return Err(format!("upgrade refused: {status}"));
    }
    if ws::header(&head, "sec-websocket-accept") != Some(ws::accept(&key).as_str()) {
        return Err("wrong Sec-WebSocket-Accept".to_owned());
    }
    loop {
        if let Some((_, payload, used)) = ws::parse(&buf) {
            buf.drain(..used);
            let event: Event<'_> = serde_json::from_slice(&payload)
                .map_err(|e| format!("first event is not JSON: {e}"))?;
            if event.kind != "session.created" {
                return Err(format!(
                    "first event is {}, not session.created",
                    event.kind
                ));
            }
            return Ok((s, buf));
        }
        read_more(&mut s, &mut buf).await?;
    }
}

/// Reads once more into `buf`; the end of the stream is an error.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 16 * 1024];
    let n = timeout(READ_LIMIT, s.read(&mut chunk))
        .await
        .map_err(|_| format!("nothing received for {READ_LIMIT:?}"))?
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed early".to_owned());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// The fields of a server event the client reads.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    t_ns: u64,
}

/// Sends `response.create`, reads and times every event up to `response.done`,
/// then closes (close frame, waits for the server's close and the end of the stream).
async fn respond(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    i: usize,
    plan: Plan,
) -> Result<Session, String> {
    let mask = (i as u32).wrapping_mul(0x9E37_79B9).to_be_bytes();
    let create = format!(
        r#"{{"type":"response.create","event_id":"evt_client_{i}","response":{{"output_modalities":["text"],"metadata":{{"events":"{}","gap_ms":"{}"}}}}}}"#,
        plan.events,
        plan.gap.as_millis()
    );
    s.write_all(&ws::frame(ws::TEXT, create.as_bytes(), Some(mask)))
        .await
        .map_err(|e| format!("response.create: {e}"))?;
    let want = plan.frames_per_response();
    let mut got = Session {
        frame_us: Vec::with_capacity(want),
        negative: 0,
    };
    let mut arrived = ws::now_ns();
    let mut done = false;
    while !done {
        while let Some((first, payload, used)) = ws::parse(buf) {
            buf.drain(..used);
            if first & ws::OPCODE != 0x1 {
                return Err(format!("unexpected frame opcode {:#x}", first & ws::OPCODE));
            }
            let event: Event<'_> =
                serde_json::from_slice(&payload).map_err(|e| format!("event: {e}"))?;
            let n = got.frame_us.len();
            let expected = match n {
                0 => "response.created",
                n if n <= plan.events => "response.output_text.delta",
                _ => "response.done",
            };
            if event.kind != expected {
                return Err(format!("event {n} is {}, expected {expected}", event.kind));
            }
            let us = if arrived >= event.t_ns {
                u32::try_from((arrived - event.t_ns) / 1000).unwrap_or(u32::MAX)
            } else {
                got.negative += 1;
                0
            };
            got.frame_us.push(us);
            if event.kind == "response.done" {
                done = true;
                break;
            }
        }
        if !done {
            read_more(s, buf).await?;
            arrived = ws::now_ns();
        }
    }
    if got.frame_us.len() != want {
        return Err(format!("{} events, expected {want}", got.frame_us.len()));
    }
    let close = ws::frame(ws::CLOSE, &1000u16.to_be_bytes(), Some(mask));
    s.write_all(&close)
        .await
        .map_err(|e| format!("close: {e}"))?;
    // The server's close, then the end of the stream.
    let mut closed = false;
    loop {
        if let Some((first, _, used)) = ws::parse(buf) {
            buf.drain(..used);
            closed |= first & ws::OPCODE == 0x8;
            continue;
        }
        match read_more(s, buf).await {
            Ok(()) => {}
            Err(_) if closed => return Ok(got),
            Err(e) => return Err(format!("closing: {e}")),
        }
    }
}
