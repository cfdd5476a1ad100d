//! Forwarding: the client's request goes upstream unchanged, the answer comes
//! back through a [`Tap`](crate::tap::Tap).
//!
//! A request passes named stages, in the spirit of pingora's phases, each in
//! its own file and each reading only what the stages before it decided:
//!
//! ```text
//! read body (bounded) ─► route ─► prepare ─► upstream request ─► send ─► tap
//!   Proxy::forward      route.rs  prepare.rs  request.rs         send.rs respond.rs
//! ```
//!
//! - **route** picks the [`Route`](crate::route::Route) (upstream, provider, connection
//!   pool) by the path's prefix, and the path to forward with that prefix removed.
//! - **prepare** reads the body's facts into a [`Call`](crate::call::Call), starts its
//!   span, and decides whether a stream must be asked for usage (the only change
//!   tokentap ever makes, undone on the way back).
//! - **upstream request** builds the request the upstream gets: the same method,
//!   path, query and headers minus hop-by-hop ones; `Authorization` goes through
//!   untouched and is never looked at.
//! - **send** waits for the upstream's answer and maps failures to typed errors.
//! - **tap** wraps the answer's body so every frame is observed as it passes.
//! - **upgrade** (instead of prepare…tap, for a WebSocket handshake) forwards the
//!   handshake and relays the tunnel after a `101` (`upgrade.rs`, `tunnel.rs`).
//!
//! The body is read once, before routing, because its facts decide how the
//! response is observed; a failure at any stage still records the call.

mod both;
mod headers;
mod prepare;
mod request;
mod respond;
mod retry;
mod send;
mod tunnel;
mod upgrade;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use crate::call::{Call, Outcome};
use crate::config::Config;
use crate::error::{ProxyError, chain};
use crate::inbound::{self, ReadError};
use crate::route::Routes;
use crate::tap::BoxError;
use crate::telemetry::Recorder;
use crate::telemetry::{bounded, spans};

pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// `traceresponse` (W3C Trace Context level 2): where the client finds its trace.
pub const TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");

/// When a request arrived: monotonic for durations, wall clock for the span.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub started: Instant,
    pub wall: SystemTime,
}

impl Timing {
    pub fn now() -> Timing {
        Timing {
            started: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// A complete response with a small body (local replies).
pub fn full_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<ResponseBody> {
    let mut r = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A `text/event-stream` response whose events a task sends on `rx` as they
/// are produced (local streams: the agent's chat, the live view's calls).
pub fn event_stream_response(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response<ResponseBody> {
    let body = crate::listener::ChannelBody::new(rx)
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// The client's path and query (`/` when the request has none).
fn path_and_query(parts: &http::request::Parts) -> &str {
    parts.uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// Everything the stages need, shared by all connections.
pub struct Proxy {
    routes: Routes,
    recorder: Arc<Recorder>,
    max_body: u64,
    request_timeout: std::time::Duration,
    read_timeout: std::time::Duration,
    usage_injection: bool,
    capture_content: bool,
    /// `--baggage-keys`.
    baggage_keys: Vec<String>,
    /// Turns true at shutdown: open tunnels close (`upgrade.rs`).
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Proxy {
    pub(crate) fn new(
        cfg: &Config,
        routes: Routes,
        recorder: Arc<Recorder>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Proxy {
        Proxy {
            routes,
            recorder,
            max_body: cfg.max_body,
            request_timeout: cfg.request_timeout,
            read_timeout: cfg.read_timeout,
            usage_injection: cfg.usage_injection,
            capture_content: cfg.capture_content,
            baggage_keys: cfg.baggage_keys.clone(),
            stop,
        }
    }

    /// Reads the client's body (bounded) and forwards the request.
    pub(crate) async fn forward<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let timing = Timing::now();
        let (parts, body) = req.into_parts();
        let parent = spans::extract(&parts.headers);
        let read = if request::has_dot_segments(parts.uri.path()) {
            Err(ProxyError::InvalidPath)
        } else {
            self.read_body(&parts, body).await
        };
        match read {
            Ok(b) if upgrade::is_websocket(&parts) => self.upgrade(parts, b, timing, &parent).await,
            Ok(b) => self.forward_bytes(parts, b, timing, &parent).await,
            Err(e) => {
                let chosen = self.routes.choose(path_and_query(&parts));
                let mut call = prepare::unread(&chosen, &parts, self.prepare_options());
                call.trace = Some(spans::start(
                    self.recorder.tracer(),
                    &parent,
                    &call,
                    timing.wall,
                ));
                self.reject(call, e, timing.started)
            }
        }
    }

    /// The whole request body: at most `--max-body` bytes, none more than
    /// `--request-timeout` after the previous one.
    async fn read_body<B>(&self, parts: &http::request::Parts, body: B) -> Result<Bytes, ProxyError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        inbound::read_body(&parts.headers, body, self.max_body, self.request_timeout)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => ProxyError::BodyTooLarge {
                    limit: self.max_body,
                },
                ReadError::Timeout => ProxyError::RequestTimeout(self.request_timeout),
                ReadError::Client(e) => ProxyError::ClientBody(chain(e.as_ref())),
            })
    }

    /// Forwards a request whose body is already read, its span a child of `parent`.
    pub(crate) async fn forward_bytes(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        timing: Timing,
        parent: &opentelemetry::Context,
    ) -> Response<ResponseBody> {
        let work = Instant::now();
        let chosen = self.routes.choose(path_and_query(&parts));
        let route = chosen.route;
        let prepared = prepare::call(&chosen, &parts, &body, self.prepare_options());
        let mut call = prepared.call;
        let cx = spans::start(self.recorder.tracer(), parent, &call, timing.wall);
        let traceresponse = spans::traceresponse(&cx);
        call.trace = Some(cx);
        // the client's own request, kept in case the upstream refuses the injected one
        let original = call.usage_injected.then(|| parts.clone());
        let up = match request::build(&chosen, parts, prepared.upstream_body, &call) {
            Ok(up) => up,
            Err(e) => return self.reject(call, e, timing.started),
        };
        call.overhead += work.elapsed();
        let resp = match send::send(route, up, self.read_timeout).await {
            Ok(r) => r,
            Err(e) => return self.reject(call, e, timing.started),
        };
        let resp = match original {
            None => resp.map(retry::Prefixed::new),
            Some(original) => match retry::judge(resp, self.read_timeout).await {
                retry::Verdict::Forward(resp) => resp,
                retry::Verdict::Retry => {
                    tracing::info!(path = %bounded::for_log(&call.path), "the upstream refused stream_options; sending the request as the client wrote it");
                    call.usage_injected = false;
                    let up = match request::build(&chosen, original, body, &call) {
                        Ok(up) => up,
                        Err(e) => return self.reject(call, e, timing.started),
                    };
                    match send::send(route, up, self.read_timeout).await {
                        Ok(r) => r.map(retry::Prefixed::new),
                        Err(e) => return self.reject(call, e, timing.started),
                    }
                }
            },
        };
        respond::tap(
            resp,
            call,
            traceresponse,
            respond::TapOptions {
                recorder: &self.recorder,
                started: timing.started,
                read_timeout: self.read_timeout,
            },
        )
    }

    fn prepare_options(&self) -> prepare::Options<'_> {
        prepare::Options {
            baggage_keys: &self.baggage_keys,
            usage_injection: self.usage_injection,
            capture_content: self.capture_content,
        }
    }

    /// Answers with tokentap's own error and records the call as failed.
    fn reject(&self, mut call: Call, e: ProxyError, started: Instant) -> Response<ResponseBody> {
        let status = e.status();
        call.status = Some(status.as_u16());
        call.outcome = match &e {
            ProxyError::Timeout(_) => Outcome::Timeout,
            ProxyError::Unreachable(_) | ProxyError::UpstreamFailed(_) => Outcome::ConnectionError,
            other => Outcome::Rejected(other.code()),
        };
        call.duration = started.elapsed();
        tracing::warn!(status = status.as_u16(), path = %bounded::for_log(&call.path), error = %e, "request failed locally");
        let traceresponse = call.trace.as_ref().and_then(spans::traceresponse);
        self.recorder.record(call);
        let mut resp = full_response(status, "application/json", e.body());
        if let Some(v) = traceresponse {
            resp.headers_mut().insert(TRACERESPONSE, v);
        }
        resp
    }
}
