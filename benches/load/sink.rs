//! The live OTLP receiver tokentap exports to: a gRPC server on its own thread and
//! runtime, named `otlp-receiver` so its CPU time can be told apart from the load
//! generator's, in the idle scheduling class.
//!
//! It shares core 0 with the load generator, whose pacer spins before each send (and
//! yields while it spins, until the last 40 µs). A thread that is not woken never
//! preempts an idle-class one, so whatever the receiver does per export can run as a
//! slice the pacer waits out. Decoding a batch of 512 spans is milliseconds of work, and
//! the fixed-rate scenario charged it to the proxy as late sends (its p99 moved by
//! 1.5–2.5 ms with tokentap's telemetry on and off). So the receiver only counts: it
//! walks each request's protobuf to the spans and log records without decoding them,
//! and decodes only metric exports (a few a run) for their names. The test suite's
//! receiver (`tests/support/otlp.rs`) decodes everything; here only the counts are needed.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use tokio::sync::oneshot;

/// What the receiver got from one tokentap run.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub spans: usize,
    pub log_records: usize,
    pub metric_names: usize,
}

pub struct OtlpSink {
    pub endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Received>>,
}

pub const THREAD: &str = "otlp-receiver";

/// Puts the thread named `name` in the idle scheduling class (`chrt --idle`): on the
/// generator's core it then only uses time the generator leaves, so decoding a batch
/// of spans never delays a request (which the fixed-rate scenario would charge to the
/// proxy). In production the collector is elsewhere.
fn idle_class(name: &str) -> Result<(), String> {
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| e.to_string())?;
    let tid = tasks
        .flatten()
        .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .ok_or("thread not found")?;
    let status = std::process::Command::new("chrt")
        .args(["--idle", "-p", "0", &tid])
        .status()
        .map_err(|e| format!("chrt: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("chrt exited with {status}"))
    }
}

impl OtlpSink {
    pub fn start() -> crate::Result<OtlpSink> {
        let (endpoint_tx, endpoint_rx) = mpsc::channel::<String>();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return Received::default();
                };
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
                        return Received::default();
                    };
                    let Ok(addr) = listener.local_addr() else {
                        return Received::default();
                    };
                    let _ = endpoint_tx.send(format!("http://{addr}"));
                    let counts = Arc::new(Mutex::new(Counts::default()));
                    tokio::select! {
                        _ = stopped => {}
                        () = serve(listener, counts.clone()) => {}
                    }
                    let c = counts.lock().map(|c| c.clone()).unwrap_or_default();
                    Received {
                        spans: c.spans,
                        log_records: c.log_records,
                        metric_names: c.metric_names.len(),
                    }
                })
            })?;
        let endpoint = endpoint_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| format!("OTLP receiver did not start: {e}"))?;
        if let Err(e) = idle_class(THREAD) {
            eprintln!("load: the OTLP receiver keeps the normal scheduling class ({e})");
        }
        Ok(OtlpSink {
            endpoint,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the receiver and counts what it got.
    pub fn finish(mut self) -> Received {
        self.shut()
    }

    fn shut(&mut self) -> Received {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.shut();
    }
}

/// What the receiver counted so far.
#[derive(Debug, Default, Clone)]
struct Counts {
    spans: usize,
    log_records: usize,
    metric_names: BTreeSet<String>,
}

/// Serves OTLP/gRPC (HTTP/2 without TLS) until dropped.
async fn serve(listener: tokio::net::TcpListener, counts: Arc<Mutex<Counts>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // as real collectors do: without it a reply waits for the exporter's delayed ACK
        let _ = stream.set_nodelay(true);
        let counts = counts.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| export(req, counts.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Reply =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// One export: counted, and answered with an empty message and `grpc-status: 0`.
async fn export(
    req: Request<Incoming>,
    counts: Arc<Mutex<Counts>>,
) -> Result<Response<Reply>, Infallible> {
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // one gRPC message: a compression flag, a length, the protobuf. The bench's tokentap
    // exports uncompressed (its environment is cleared); a compressed or cut message is
    // not counted, and says so, rather than counted wrong.
    let declared = body
        .get(1..5)
        .map_or(0, |l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
    let msg = match (body.first(), body.get(5..)) {
        (Some(0), Some(m)) if m.len() == declared => m,
        _ => {
            eprintln!("load: the OTLP receiver got a message it cannot count ({path})");
            &[]
        }
    };
    if let Ok(mut c) = counts.lock() {
        if path.ends_with("TraceService/Export") {
            // ExportTraceServiceRequest.resource_spans(1) → ResourceSpans.scope_spans(2)
            // → ScopeSpans.spans(2)
            c.spans += count(msg, &[1, 2, 2]);
        } else if path.ends_with("LogsService/Export") {
            // ExportLogsServiceRequest.resource_logs(1) → ResourceLogs.scope_logs(2)
            // → ScopeLogs.log_records(2)
            c.log_records += count(msg, &[1, 2, 2]);
        } else if let Ok(m) = ExportMetricsServiceRequest::decode(msg) {
            for rm in m.resource_metrics {
                for sm in rm.scope_metrics {
                    c.metric_names
                        .extend(sm.metrics.into_iter().map(|m| m.name));
                }
            }
        }
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    Ok(resp)
}

/// How many values the field path `fields` reaches in the protobuf `msg` (each step a
/// length-delimited field number), without decoding them.
fn count(msg: &[u8], fields: &[u64]) -> usize {
    let Some((&first, rest)) = fields.split_first() else {
        return 1;
    };
    let mut n = 0;
    let mut at = 0;
    while at < msg.len() {
        let Some((key, used)) = varint(&msg[at..]) else {
            break;
        };
        at += used;
        let len = match key & 7 {
            0 => match varint(&msg[at..]) {
                Some((_, used)) => used,
                None => break,
            },
            1 => 8,
            5 => 4,
            2 => match varint(&msg[at..]) {
                Some((len, used)) => {
                    at += used;
                    usize::try_from(len).unwrap_or(usize::MAX)
                }
                None => break,
            },
            _ => break,
        };
        let Some(value) = msg.get(at..at.saturating_add(len)) else {
            break;
        };
        if key & 7 == 2 && key >> 3 == first {
            n += count(value, rest);
        }
        at += len;
    }
    n
}

/// A protobuf varint at the start of `b`, and how many bytes it took.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}
