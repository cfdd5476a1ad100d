//! A real OTLP receiver for integration tests (gRPC via tonic, or HTTP/protobuf via hyper),
//! plus a "black hole" endpoint that never answers and a closed-port endpoint.
//!
//! Everything received is kept in memory behind an `Arc<Mutex<_>>`; the server tasks are
//! aborted when the owning [`Receiver`] / [`BlackHole`] is dropped.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};

// ---------------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Store {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    logs: Vec<ExportLogsServiceRequest>,
    first_resource: Option<Resource>,
    raw: Vec<u8>,
    /// OTLP/HTTP requests that came `content-encoding: gzip` (and decoded).
    gzip_requests: usize,
    /// `(name, value)` of every header (gRPC metadata) a trace export carried.
    trace_headers: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Store>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Store> {
    // A panicking test thread must not hide what was received from the others.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    fn note_trace_headers(&mut self, headers: &hyper::HeaderMap) {
        for (k, v) in headers {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            self.trace_headers.push((k.as_str().to_owned(), v));
        }
    }

    fn note_resource(&mut self, resource: Option<&Resource>) {
        if self.first_resource.is_none() {
            self.first_resource = resource.cloned();
        }
    }

    fn add_traces(&mut self, req: ExportTraceServiceRequest, raw: &[u8]) {
        for rs in &req.resource_spans {
            self.note_resource(rs.resource.as_ref());
        }
        self.raw.extend_from_slice(raw);
        self.traces.push(req);
    }

    fn add_metrics(&mut self, req: ExportMetricsServiceRequest, raw: &[u8]) {
        for rm in &req.resource_metrics {
            self.note_resource(rm.resource.as_ref());
        }
        self.raw.extend_from_slice(raw);
        self.metrics.push(req);
    }

    fn add_logs(&mut self, req: ExportLogsServiceRequest, raw: &[u8]) {
        for rl in &req.resource_logs {
            self.note_resource(rl.resource.as_ref());
        }
        self.raw.extend_from_slice(raw);
        self.logs.push(req);
    }
}

// ---------------------------------------------------------------------------------------------
// Flattened views
// ---------------------------------------------------------------------------------------------

/// A flattened span for easy assertions.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    /// Proto `SpanKind` value (1 = INTERNAL, 2 = SERVER, 3 = CLIENT).
    pub kind: i32,
    /// Lowercase hex.
    pub trace_id: String,
    /// Lowercase hex.
    pub span_id: String,
    /// Lowercase hex, `""` for roots.
    pub parent_span_id: String,
    /// Proto `StatusCode` (0 = UNSET, 1 = OK, 2 = ERROR).
    pub status_code: i32,
    pub attributes: BTreeMap<String, AttrValue>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Array(Vec<AttrValue>),
    Other,
}

impl Span {
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(AttrValue::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn double(&self, key: &str) -> Option<f64> {
        match self.attributes.get(key) {
            Some(AttrValue::Double(d)) => Some(*d),
            _ => None,
        }
    }
}

impl AttrValue {
    fn from_any(value: Option<&AnyValue>) -> AttrValue {
        match value.and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.clone()),
            Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
            Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(*d),
            Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
            Some(any_value::Value::ArrayValue(a)) => AttrValue::Array(
                a.values
                    .iter()
                    .map(|v| AttrValue::from_any(Some(v)))
                    .collect(),
            ),
            _ => AttrValue::Other,
        }
    }

    fn stringify(&self) -> String {
        match self {
            AttrValue::Str(s) => s.clone(),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Double(d) => d.to_string(),
            AttrValue::Bool(b) => b.to_string(),
            AttrValue::Array(items) => {
                let inner: Vec<String> = items.iter().map(AttrValue::stringify).collect();
                format!("[{}]", inner.join(","))
            }
            AttrValue::Other => String::new(),
        }
    }
}

fn attr_map(attrs: &[KeyValue]) -> BTreeMap<String, AttrValue> {
    attrs
        .iter()
        .map(|kv| (kv.key.clone(), AttrValue::from_any(kv.value.as_ref())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn flatten_span(span: &opentelemetry_proto::tonic::trace::v1::Span) -> Span {
    Span {
        name: span.name.clone(),
        kind: span.kind,
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: hex(&span.parent_span_id),
        status_code: span.status.as_ref().map_or(0, |s| s.code),
        attributes: attr_map(&span.attributes),
        start_unix_nano: span.start_time_unix_nano,
        end_unix_nano: span.end_time_unix_nano,
    }
}

// ---------------------------------------------------------------------------------------------
// Receiver
// ---------------------------------------------------------------------------------------------

/// An in-process OTLP receiver (collector stand-in) listening on `127.0.0.1:0`.
pub struct Receiver {
    addr: SocketAddr,
    store: Shared,
    task: AbortHandle,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// OTLP/gRPC on 127.0.0.1:0 (tonic server with TraceService, MetricsService, LogsService).
    pub async fn grpc() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/gRPC receiver");
        let addr = listener.local_addr().expect("receiver local addr");
        let store = Shared::default();
        let svc = GrpcSvc {
            store: store.clone(),
        };
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(svc.clone()))
            .add_service(MetricsServiceServer::new(svc.clone()))
            .add_service(LogsServiceServer::new(svc));
        // TCP_NODELAY, as real collectors set it (Go's net package does by default): with
        // Nagle on, each reply waited ~40 ms for the exporter's delayed ACK, and a bench
        // that waits for one export at a time measured that stall, not tokentap
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming(incoming).await {
                eprintln!("otlp grpc receiver stopped: {e}");
            }
        })
        .abort_handle();
        Receiver { addr, store, task }
    }

    /// OTLP/HTTP protobuf on 127.0.0.1:0: POST /v1/traces, /v1/metrics, /v1/logs with
    /// `content-type: application/x-protobuf` (optionally `content-encoding: gzip`).
    /// Answers 200 with the encoded Export*ServiceResponse; other paths 404, other
    /// methods 405, other content types 415, undecodable bodies 400.
    pub async fn http() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/HTTP receiver");
        let addr = listener.local_addr().expect("receiver local addr");
        let store = Shared::default();
        let accept_store = store.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in the JoinSet so aborting this task aborts them too.
            let mut conns = JoinSet::new();
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(e) => {
                        eprintln!("otlp http receiver accept error: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                // Reap finished connections so the set does not grow without bound.
                while conns.try_join_next().is_some() {}
                let store = accept_store.clone();
                let _ = stream.set_nodelay(true);
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle_http(store.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
        .abort_handle();
        Receiver { addr, store, task }
    }

    /// OTLP/gRPC over TLS on 127.0.0.1:0 with the PEM server identity; with `client_ca`,
    /// a client certificate signed by it is required (mTLS). Accepts gzip-compressed
    /// messages (trace exports that came `grpc-encoding: gzip` are counted).
    pub async fn grpc_tls(cert_pem: &str, key_pem: &str, client_ca: Option<&str>) -> Receiver {
        use tonic::codec::CompressionEncoding::Gzip;
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/gRPC TLS receiver");
        let addr = listener.local_addr().expect("receiver local addr");
        let store = Shared::default();
        let svc = GrpcSvc {
            store: store.clone(),
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        let router = tonic::transport::Server::builder()
            .tls_config(tls)
            .expect("server TLS")
            .add_service(TraceServiceServer::new(svc.clone()).accept_compressed(Gzip))
            .add_service(MetricsServiceServer::new(svc.clone()).accept_compressed(Gzip))
            .add_service(LogsServiceServer::new(svc).accept_compressed(Gzip));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming(incoming).await {
                eprintln!("otlp grpc tls receiver stopped: {e}");
            }
        })
        .abort_handle();
        Receiver { addr, store, task }
    }

    /// OTLP/HTTP protobuf like [`Receiver::http`], over TLS with `config`.
    pub async fn http_tls(config: Arc<rustls::ServerConfig>) -> Receiver {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/HTTP TLS receiver");
        let addr = listener.local_addr().expect("receiver local addr");
        let store = Shared::default();
        let accept_store = store.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let store = accept_store.clone();
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req| handle_http(store.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        })
        .abort_handle();
        Receiver { addr, store, task }
    }

    /// `"https://localhost:PORT"` — the endpoint of a TLS receiver (the name its certificate carries).
    pub fn tls_endpoint(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Headers (gRPC metadata) trace exports carried, names lower-case.
    pub fn trace_headers(&self) -> Vec<(String, String)> {
        lock(&self.store).trace_headers.clone()
    }

    /// How many OTLP/HTTP requests (or gRPC trace exports) arrived gzip-compressed.
    pub fn gzip_requests(&self) -> usize {
        lock(&self.store).gzip_requests
    }

    /// `"http://127.0.0.1:PORT"` — what `OTEL_EXPORTER_OTLP_ENDPOINT` should be set to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, flattened, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        let store = lock(&self.store);
        store
            .traces
            .iter()
            .flat_map(|req| &req.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(flatten_span)
            .collect()
    }

    /// Every metric name seen so far (deduplicated, sorted).
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metrics().into_iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every metric received so far, in arrival order (one entry per export, so a metric
    /// exported periodically appears several times).
    pub fn metrics(&self) -> Vec<Metric> {
        let store = lock(&self.store);
        store
            .metrics
            .iter()
            .flat_map(|req| &req.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .cloned()
            .collect()
    }

    /// Every log record received so far, in arrival order.
    pub fn logs(&self) -> Vec<LogRecord> {
        let store = lock(&self.store);
        store
            .logs
            .iter()
            .flat_map(|req| &req.resource_logs)
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|sl| &sl.log_records)
            .cloned()
            .collect()
    }

    /// Attributes of the first resource seen (any signal), values stringified.
    pub fn resource_attributes(&self) -> Vec<(String, String)> {
        let store = lock(&self.store);
        store
            .first_resource
            .as_ref()
            .map(|r| {
                r.attributes
                    .iter()
                    .map(|kv| {
                        let v = AttrValue::from_any(kv.value.as_ref()).stringify();
                        (kv.key.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Concatenation of every request body's protobuf encoding (decompressed for HTTP,
    /// re-encoded from the decoded message for gRPC).
    pub fn raw_bytes_seen(&self) -> Vec<u8> {
        lock(&self.store).raw.clone()
    }

    /// Waits (polling every 20 ms, bounded by `timeout`) until `pred(self)` is true;
    /// returns whether it became true.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&Receiver) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20).min(deadline - now)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC services
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct GrpcSvc {
    store: Shared,
}

#[tonic::async_trait]
impl TraceService for GrpcSvc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let gzip = request
            .metadata()
            .get("grpc-encoding")
            .is_some_and(|v| v.as_bytes() == b"gzip");
        let headers = request.metadata().clone().into_headers();
        let req = request.into_inner();
        let raw = req.encode_to_vec();
        let mut store = lock(&self.store);
        store.gzip_requests += usize::from(gzip);
        store.note_trace_headers(&headers);
        store.add_traces(req, &raw);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcSvc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        let raw = req.encode_to_vec();
        lock(&self.store).add_metrics(req, &raw);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcSvc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        let raw = req.encode_to_vec();
        lock(&self.store).add_logs(req, &raw);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP handler
// ---------------------------------------------------------------------------------------------

fn plain(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(msg.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

fn protobuf_ok(body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    resp
}

#[derive(Clone, Copy)]
enum Signal {
    Traces,
    Metrics,
    Logs,
}

async fn handle_http(
    store: Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let signal = match req.uri().path() {
        "/v1/traces" => Signal::Traces,
        "/v1/metrics" => Signal::Metrics,
        "/v1/logs" => Signal::Logs,
        _ => return Ok(plain(StatusCode::NOT_FOUND, "not found")),
    };
    if req.method() != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "POST only"));
    }
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default()
    };
    let content_type = header(hyper::header::CONTENT_TYPE);
    let content_encoding = header(hyper::header::CONTENT_ENCODING);
    if matches!(signal, Signal::Traces) {
        lock(&store).note_trace_headers(req.headers());
    }
    if !content_type.starts_with("application/x-protobuf") {
        return Ok(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only application/x-protobuf is supported",
        ));
    }
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, &format!("body: {e}"))),
    };
    let body: Bytes = match content_encoding.as_str() {
        "" | "identity" => body,
        "gzip" => {
            let mut out = Vec::new();
            if let Err(e) = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out) {
                return Ok(plain(StatusCode::BAD_REQUEST, &format!("gzip: {e}")));
            }
            lock(&store).gzip_requests += 1;
            Bytes::from(out)
        }
        other => {
            return Ok(plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("unsupported content-encoding {other}"),
            ));
        }
    };
    let decode_err = |e: prost::DecodeError| plain(StatusCode::BAD_REQUEST, &format!("{e}"));
    let resp = match signal {
        Signal::Traces => match ExportTraceServiceRequest::decode(body.clone()) {
            Ok(msg) => {
                lock(&store).add_traces(msg, &body);
                protobuf_ok(ExportTraceServiceResponse::default().encode_to_vec())
            }
            Err(e) => decode_err(e),
        },
        Signal::Metrics => match ExportMetricsServiceRequest::decode(body.clone()) {
            Ok(msg) => {
                lock(&store).add_metrics(msg, &body);
                protobuf_ok(ExportMetricsServiceResponse::default().encode_to_vec())
            }
            Err(e) => decode_err(e),
        },
        Signal::Logs => match ExportLogsServiceRequest::decode(body.clone()) {
            Ok(msg) => {
                lock(&store).add_logs(msg, &body);
                protobuf_ok(ExportLogsServiceResponse::default().encode_to_vec())
            }
            Err(e) => decode_err(e),
        },
    };
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// Black hole / closed port
// ---------------------------------------------------------------------------------------------

/// Accepts TCP connections, reads and discards everything, and never answers.
pub struct BlackHole {
    addr: SocketAddr,
    task: AbortHandle,
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind black hole");
        let addr = listener.local_addr().expect("black hole local addr");
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                while conns.try_join_next().is_some() {}
                conns.spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    // Read until the peer closes; keep the socket open meanwhile.
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        })
        .abort_handle();
        BlackHole { addr, task }
    }

    /// `"http://127.0.0.1:PORT"`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// `"http://127.0.0.1:PORT"` for a port that was just bound and released, so nothing
/// (very probably) listens on it: connections are refused.
pub fn closed_port_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    let addr = listener.local_addr().expect("ephemeral local addr");
    drop(listener);
    format!("http://{addr}")
}
