//! The load generator: raw hyper HTTP/1.1 connections, one request at a time on each.
//!
//! Everything here runs on the harness's single-threaded runtime (core 0), except the
//! open-loop pacer: a thread that sleeps until 350 µs before each slot and spins the rest,
//! yielding the core to the runtime thread whenever that has responses to read
//! (tokio's timer has 1 ms granularity, too coarse for 500 µs slots, and a thread that
//! sleeps to the slot pays the vCPU wake-up latency).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use crate::mock::{CHUNK_INTERVAL, CHUNKS};
use crate::stats::micros;

type Sender = SendRequest<Full<Bytes>>;

const CHAT: &[u8] =
    br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"What is OpenTelemetry?"}]}"#;
/// No `stream_options`: through tokentap this takes the usage-injection path (the default).
const CHAT_STREAM: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"What is OpenTelemetry?"}],"stream":true}"#;

/// Longest a single non-streaming request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where requests go: the mock itself, nginx or tokentap.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    host: HeaderValue,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> crate::Result<Endpoint> {
        Ok(Endpoint {
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
        })
    }

    fn request(
        &self,
        method: Method,
        path: &'static str,
        body: &'static [u8],
    ) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::from_static(body)));
        *req.method_mut() = method;
        *req.uri_mut() = Uri::from_static(path);
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        if !body.is_empty() {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-bench-not-a-real-key"),
        );
        // attribution has a value to read (`--metric-dimensions project,key_id` runs)
        h.insert("openai-project", HeaderValue::from_static("proj_bench"));
        req
    }
}

async fn connect(addr: SocketAddr) -> crate::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One keep-alive connection, (re)connected lazily.
pub struct Conn {
    ep: Endpoint,
    sender: Option<Sender>,
}

impl Conn {
    pub fn new(ep: &Endpoint) -> Conn {
        Conn {
            ep: ep.clone(),
            sender: None,
        }
    }

    pub fn pool(ep: &Endpoint, n: usize) -> Vec<Conn> {
        (0..n).map(|_| Conn::new(ep)).collect()
    }

    /// Whether its connection is up (a call made and the peer has not closed it).
    pub fn is_open(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| !s.is_closed())
    }

    fn reset(&mut self) {
        self.sender = None;
    }

    /// Sends `req`, reads the whole body; `Ok(body)` only for `200`.
    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> crate::Result<Bytes> {
        if self.sender.as_ref().is_none_or(Sender::is_closed) {
            self.sender = Some(connect(self.ep.addr).await?);
        }
        let result = async {
            let sender = self.sender.as_mut().ok_or("no connection")?;
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            if status != StatusCode::OK {
                return Err(format!("status {status}").into());
            }
            Ok(body)
        }
        .await;
        if result.is_err() {
            self.reset();
        }
        result
    }

    /// One non-streaming chat completion.
    pub async fn chat(&mut self) -> crate::Result<()> {
        let req = self.ep.request(Method::POST, "/v1/chat/completions", CHAT);
        self.exchange(req).await.map(drop)
    }

    /// `GET path` → body text.
    pub async fn get_text(&mut self, path: &'static str) -> crate::Result<String> {
        let req = self.ep.request(Method::GET, path, b"");
        let body = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(req))
            .await
            .map_err(|_| format!("GET {path}: timed out"))??;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    ok: u64,
    errors: u64,
    late: u64,
    max_lag: Duration,
    unfinished: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, e: impl ToString) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        self.errors += other.errors;
        self.late += other.late;
        self.max_lag = self.max_lag.max(other.max_lag);
        self.unfinished += other.unfinished;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Scenario (i): every connection sends its next request as soon as the last one ended.
pub struct ClosedOutcome {
    pub latencies_us: Vec<u32>,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

pub async fn closed_loop(conns: Vec<Conn>, duration: Duration) -> (Vec<Conn>, ClosedOutcome) {
    let start = Instant::now();
    let end = start + duration;
    let mut set = JoinSet::new();
    for mut conn in conns {
        set.spawn(async move {
            let mut t = Tally::default();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                match tokio::time::timeout(REQUEST_TIMEOUT, conn.chat()).await {
                    Ok(Ok(())) => {
                        t.ok += 1;
                        t.latencies_us.push(micros(t0.elapsed()));
                    }
                    Ok(Err(e)) => {
                        t.error(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => {
                        conn.reset();
                        t.error("request timed out");
                    }
                }
            }
            (conn, t)
        });
    }
    let (conns, t) = join(set).await;
    let outcome = ClosedOutcome {
        latencies_us: t.latencies_us,
        ok: t.ok,
        errors: t.errors,
        first_error: t.first_error,
        elapsed: end - start,
    };
    (conns, outcome)
}

/// Scenario (ii): requests on a fixed schedule, latency from the *intended* send time.
pub struct OpenOutcome {
    /// From the scheduled send time to the end of the response (coordinated-omission corrected).
    pub latencies_us: Vec<u32>,
    pub scheduled: u64,
    pub ok: u64,
    pub errors: u64,
    /// Requests sent more than one interval after their slot (no idle connection in time).
    pub late: u64,
    pub max_lag_us: u32,
    /// Requests not answered (or not even sent) when the drain deadline passed.
    pub unfinished: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// How long before each slot the pacer stops sleeping and spins.
const SPIN_WINDOW: Duration = Duration::from_micros(350);
/// How long before each slot the pacer stops yielding the core while it spins.
const YIELD_UNTIL: Duration = Duration::from_micros(40);

pub async fn open_loop(
    conns: Vec<Conn>,
    rate: u32,
    duration: Duration,
    drain: Duration,
) -> (Vec<Conn>, OpenOutcome) {
    let scheduled = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let start = Instant::now() + Duration::from_millis(5);
    // The pacer is a thread of its own: it sleeps until SPIN_WINDOW before each slot
    // (tokio's timer is too coarse for 500 µs slots), then spins to the slot, so the
    // vCPU's wake-up latency is absorbed by the spin, and core 0 keeps idle time for
    // the OTLP receiver (which runs in the idle scheduling class there).
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            for i in 0..scheduled {
                let intended = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                if intended > now + SPIN_WINDOW {
                    std::thread::sleep(intended - now - SPIN_WINDOW);
                }
                // Yielding, then a bare spin: the harness's runtime thread shares this
                // core and reads the responses. A spinning thread is never woken, so the
                // kernel let it finish its slice while a response waited, and every
                // response slower than the sleep before the spin (~150 µs at 2,000/s)
                // was read only after the slot's send: latencies piled up at one slot
                // (docs/benchmarks.md, round seven). The last YIELD_UNTIL is spun bare, so
                // a yield never hands the slot itself to the idle-class OTLP receiver.
                while Instant::now() + YIELD_UNTIL < intended {
                    std::thread::yield_now();
                }
                while Instant::now() < intended {
                    std::hint::spin_loop();
                }
                if tx.send(intended).is_err() {
                    break;
                }
            }
        });
    let pacer = match pacer {
        Ok(p) => p,
        Err(e) => {
            return (
                conns,
                OpenOutcome {
                    latencies_us: Vec::new(),
                    scheduled,
                    ok: 0,
                    errors: 1,
                    late: 0,
                    max_lag_us: 0,
                    unfinished: scheduled,
                    first_error: Some(format!("cannot start the pacer thread: {e}")),
                    elapsed: duration,
                },
            );
        }
    };
    let rx = Arc::new(Mutex::new(rx));
    let deadline = tokio::time::Instant::from_std(start + duration + drain);
    let mut set = JoinSet::new();
    for mut conn in conns {
        let rx = rx.clone();
        set.spawn(async move {
            let mut t = Tally::default();
            loop {
                let next =
                    tokio::time::timeout_at(deadline, async { rx.lock().await.recv().await });
                let Ok(Some(intended)) = next.await else {
                    break;
                };
                let lag = Instant::now().saturating_duration_since(intended);
                if lag > interval {
                    t.late += 1;
                }
                t.max_lag = t.max_lag.max(lag);
                match tokio::time::timeout_at(deadline, conn.chat()).await {
                    Ok(Ok(())) => {
                        t.ok += 1;
                        t.latencies_us.push(micros(intended.elapsed()));
                    }
                    Ok(Err(e)) => t.error(e),
                    Err(_) => {
                        conn.reset();
                        t.unfinished += 1;
                        break;
                    }
                }
            }
            (conn, t)
        });
    }
    let (conns, mut t) = join(set).await;
    // Whatever is still queued was never sent: it counts as unfinished.
    {
        let mut rx = rx.lock().await;
        rx.close();
        while rx.try_recv().is_ok() {
            t.unfinished += 1;
        }
    }
    // the receiver is closed: the pacer's next send fails and it ends
    let _ = pacer.join();
    let outcome = OpenOutcome {
        latencies_us: t.latencies_us,
        scheduled,
        ok: t.ok,
        errors: t.errors,
        late: t.late,
        max_lag_us: micros(t.max_lag),
        unfinished: t.unfinished,
        first_error: t.first_error,
        elapsed: duration,
    };
    (conns, outcome)
}

async fn join(mut set: JoinSet<(Conn, Tally)>) -> (Vec<Conn>, Tally) {
    let mut conns = Vec::new();
    let mut total = Tally::default();
    while let Some(done) = set.join_next().await {
        match done {
            Ok((conn, t)) => {
                conns.push(conn);
                total.merge(t);
            }
            Err(e) => total.error(format!("load task failed: {e}")),
        }
    }
    (conns, total)
}

/// Scenario (iii): `n` streams on `n` fresh connections, all started within one chunk interval.
#[derive(Default)]
pub struct StreamsOutcome {
    pub started: usize,
    /// `200`, every chunk and `[DONE]`, no error.
    pub completed: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    /// Request sent → first body byte.
    pub ttfb_us: Vec<u32>,
    /// `(when the stream was due, after the round's start; its TTFB)` per stream with a first
    /// byte: where in a round's burst the slow first bytes are.
    pub ttfb_timeline_us: Vec<(u32, u32)>,
    /// Between consecutive chunk events as the client saw them (`CHUNKS - 1` per stream).
    pub gaps_us: Vec<u32>,
}

impl StreamsOutcome {
    fn error(&mut self, e: impl ToString) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    pub fn merge(&mut self, other: StreamsOutcome) {
        self.started += other.started;
        self.completed += other.completed;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.ttfb_us.extend(other.ttfb_us);
        self.ttfb_timeline_us.extend(other.ttfb_timeline_us);
        self.gaps_us.extend(other.gaps_us);
    }
}

struct StreamTrace {
    ttfb_us: Option<u32>,
    gaps_us: Vec<u32>,
    events: usize,
    done: bool,
}

pub async fn streams(ep: &Endpoint, n: usize, limit: Duration) -> StreamsOutcome {
    let mut out = StreamsOutcome {
        started: n,
        ..StreamsOutcome::default()
    };
    let deadline = tokio::time::Instant::now() + limit;
    let mut connecting = JoinSet::new();
    for _ in 0..n {
        let addr = ep.addr;
        connecting.spawn(async move { tokio::time::timeout(CONNECT_TIMEOUT, connect(addr)).await });
    }
    let mut senders = Vec::with_capacity(n);
    while let Some(r) = connecting.join_next().await {
        match r {
            Ok(Ok(Ok(sender))) => senders.push(sender),
            Ok(Ok(Err(e))) => out.error(format!("connect: {e}")),
            Ok(Err(_)) => out.error("connect timed out"),
            Err(e) => out.error(format!("connect task failed: {e}")),
        }
    }
    // All connections are open. Start the streams spread evenly over one chunk interval:
    // all are concurrent within 20 ms, and their chunks are not emitted in lockstep (a
    // single burst would make every stream's chunk k due at the same instant, and the
    // gaps would measure that artificial thundering herd, even with no proxy at all).
    let mut running = JoinSet::new();
    let start = tokio::time::Instant::now();
    let n_senders = senders.len().max(1) as u32;
    for (i, sender) in senders.into_iter().enumerate() {
        let ep = ep.clone();
        let fire_at = start + CHUNK_INTERVAL * i as u32 / n_senders;
        let due_us = micros(fire_at - start);
        running.spawn(async move {
            tokio::time::sleep_until(fire_at).await;
            let r = tokio::time::timeout_at(deadline, one_stream(sender, ep)).await;
            (due_us, r)
        });
    }
    while let Some(r) = running.join_next().await {
        match r {
            Ok((due_us, Ok(Ok(trace)))) => {
                if let Some(ttfb) = trace.ttfb_us {
                    out.ttfb_us.push(ttfb);
                    out.ttfb_timeline_us.push((due_us, ttfb));
                }
                out.gaps_us.extend(trace.gaps_us);
                if trace.done && trace.events == CHUNKS + 1 {
                    out.completed += 1;
                } else {
                    out.error(format!(
                        "incomplete stream: {} events, [DONE] {}",
                        trace.events,
                        if trace.done { "seen" } else { "missing" }
                    ));
                }
            }
            Ok((_, Ok(Err(e)))) => out.error(e),
            Ok((_, Err(_))) => out.error(format!("stream not finished within {limit:?}")),
            Err(e) => out.error(format!("stream task failed: {e}")),
        }
    }
    out
}

async fn one_stream(mut sender: Sender, ep: Endpoint) -> crate::Result<StreamTrace> {
    sender.ready().await?;
    let t0 = Instant::now();
    let resp = sender
        .send_request(ep.request(Method::POST, "/v1/chat/completions", CHAT_STREAM))
        .await?;
    if resp.status() != StatusCode::OK {
        return Err(format!("status {}", resp.status()).into());
    }
    let mut body = resp.into_body();
    let mut trace = StreamTrace {
        ttfb_us: None,
        gaps_us: Vec::with_capacity(CHUNKS),
        events: 0,
        done: false,
    };
    let mut last_event: Option<Instant> = None;
    let mut prev_newline = false;
    let mut tail: Vec<u8> = Vec::with_capacity(64);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let now = Instant::now();
        if trace.ttfb_us.is_none() {
            trace.ttfb_us = Some(micros(now - t0));
        }
        // An event ends at a blank line; one may straddle two frames.
        let mut ends = memchr::memmem::find_iter(&data, b"\n\n").count();
        if prev_newline && data[0] == b'\n' {
            ends += 1;
        }
        prev_newline = data[data.len() - 1] == b'\n';
        for _ in 0..ends {
            trace.events += 1;
            if trace.events <= CHUNKS {
                if let Some(last) = last_event {
                    trace.gaps_us.push(micros(now - last));
                }
                last_event = Some(now);
            }
        }
        tail.extend_from_slice(&data[data.len().saturating_sub(32)..]);
        if tail.len() > 32 {
            tail.drain(..tail.len() - 32);
        }
    }
    trace.done = tail.ends_with(b"data: [DONE]\n\n");
    Ok(trace)
}
