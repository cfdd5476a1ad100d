//! Forwarding: the client's request goes upstream unchanged, the answer comes
//! back through a [`Tap`].
//!
//! The request body is read once (bounded by `--max-body`) because its facts
//! — operation, model, stream — decide how the response is observed, and a
//! stream that would otherwise carry no usage is asked for it (the only
//! change tokentap ever makes, undone on the way back). Headers lose only
//! their hop-by-hop members; `Authorization` goes through untouched and is
//! never looked at.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::call::{Call, Outcome, ParseFailure};
use crate::config::{Config, Upstream};
use crate::error::{ProxyError, chain, is_timeout};
use crate::genai::content;
use crate::genai::inject::request_with_usage;
use crate::genai::provider::Provider;
use crate::genai::request::{Operation, RequestFacts};
use crate::observe::Observer;
use crate::tap::{BoxError, Tap};
use crate::telemetry::Recorder;
use crate::telemetry::spans;

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
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Largest read buffer of an upstream connection (also the largest response head).
const UPSTREAM_MAX_BUF: usize = 8 * 1024;

/// Everything `forward` needs, shared by all connections.
pub struct Proxy {
    client: Client<Connector, Full<Bytes>>,
    upstream: Upstream,
    provider: Provider,
    recorder: Arc<Recorder>,
    max_body: u64,
    read_timeout: std::time::Duration,
    usage_injection: bool,
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(h);
    }
    headers.remove(header::UPGRADE);
}

/// Builds the pooled upstream client (rustls with ring; HTTP/2 by ALPN for https).
pub fn build_client(cfg: &Config) -> Client<Connector, Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let tls = match tls {
        Ok(t) => t,
        // ring supports the default versions; this cannot fail in practice
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        // hyper grows a connection's read buffer (up to ~400 KiB) whenever a read fills
        // it, and never shrinks it: a pooled connection that once caught up with a burst
        // of chunks kept the bigger buffer, and peak memory crept up round after round of
        // 1,000 streams (issue 6). 8 KiB is also nginx's default limit on a response
        // head (`proxy_buffer_size`); OpenAI's are under 2 KiB.
        .http1_max_buf_size(UPSTREAM_MAX_BUF)
        .build(https)
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

impl Proxy {
    pub fn new(cfg: &Config, upstream: Upstream, recorder: Arc<Recorder>) -> Proxy {
        Proxy {
            client: build_client(cfg),
            provider: Provider::for_host(upstream.host()),
            upstream,
            recorder,
            max_body: cfg.max_body,
            read_timeout: cfg.read_timeout,
            usage_injection: cfg.usage_injection,
        }
    }

    /// Reads the client's body (bounded) and forwards the request.
    pub async fn forward<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let wall = SystemTime::now();
        let (parts, body) = req.into_parts();
        let parent = spans::extract(&parts.headers);
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = usize::try_from(self.max_body).unwrap_or(usize::MAX);
        let body = if declared.is_some_and(|n| n > self.max_body) {
            Err(ProxyError::BodyTooLarge {
                limit: self.max_body,
            })
        } else {
            match Limited::new(body, limit).collect().await {
                Ok(c) => Ok(c.to_bytes()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    Err(ProxyError::BodyTooLarge {
                        limit: self.max_body,
                    })
                }
                Err(e) => Err(ProxyError::ClientBody(chain(e.as_ref()))),
            }
        };
        let timing = Timing { started, wall };
        match body {
            Ok(b) => self.forward_bytes(parts, b, timing, &parent).await,
            Err(e) => {
                let mut call = self.new_call(
                    &parts,
                    Operation::from_path(parts.uri.path()),
                    RequestFacts::default(),
                );
                call.trace = Some(spans::start(self.recorder.tracer(), &parent, &call, wall));
                self.reject(call, e, started)
            }
        }
    }

    fn new_call(
        &self,
        parts: &http::request::Parts,
        op: Option<Operation>,
        request: RequestFacts,
    ) -> Call {
        Call::new(
            op,
            request,
            parts.method.to_string(),
            parts.uri.path().to_owned(),
            self.provider.clone(),
            self.upstream.host().to_owned(),
            self.upstream.port(),
        )
    }

    fn reject(&self, mut call: Call, e: ProxyError, started: Instant) -> Response<ResponseBody> {
        let status = e.status();
        call.status = Some(status.as_u16());
        call.outcome = match &e {
            ProxyError::Timeout(_) => Outcome::Timeout,
            ProxyError::Unreachable(_) | ProxyError::UpstreamFailed(_) => Outcome::ConnectionError,
            other => Outcome::Rejected(other.code()),
        };
        call.duration = started.elapsed();
        tracing::warn!(status = status.as_u16(), path = %call.path, error = %e, "request failed locally");
        let traceresponse = call.trace.as_ref().and_then(spans::traceresponse);
        self.recorder.record(call);
        let mut resp = full_response(status, "application/json", e.body());
        if let Some(v) = traceresponse {
            resp.headers_mut().insert(TRACERESPONSE, v);
        }
        resp
    }

    /// Forwards a request whose body is already read, its span a child of `parent`.
    pub async fn forward_bytes(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        timing: Timing,
        parent: &opentelemetry::Context,
    ) -> Response<ResponseBody> {
        let started = timing.started;
        let work = Instant::now();
        let op = Operation::from_path(parts.uri.path());
        let mut parse_failure = None;
        let facts = match op {
            Some(_) if !body.is_empty() => RequestFacts::parse(&body).unwrap_or_else(|_| {
                parse_failure = Some(ParseFailure::InvalidJson);
                RequestFacts::default()
            }),
            _ => RequestFacts::default(),
        };
        let inject = self.usage_injection
            && op.is_some_and(Operation::usage_is_opt_in)
            && facts.stream
            && facts.include_usage != Some(true);
        let mut call = self.new_call(&parts, op, facts);
        if let Some(f) = parse_failure {
            call.note_parse_failure(f);
        }
        if self.recorder.capture_content {
            call.content = op.and_then(|op| content::from_request(op, &body));
        }
        let cx = spans::start(self.recorder.tracer(), parent, &call, timing.wall);
        let traceresponse = spans::traceresponse(&cx);
        call.trace = Some(cx);
        let body = match inject.then(|| request_with_usage(&body)).flatten() {
            Some(edited) => {
                call.usage_injected = true;
                Bytes::from(edited)
            }
            None => body,
        };

        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let uri = format!(
            "{}://{}{}{}",
            self.upstream.scheme, self.upstream.authority, self.upstream.prefix, path_and_query
        );
        let uri: http::Uri = match uri.parse() {
            Ok(u) => u,
            Err(e) => {
                return self.reject(
                    call,
                    ProxyError::BadRequest(format!("cannot build upstream URL: {e}")),
                    started,
                );
            }
        };
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        headers.remove(header::CONTENT_LENGTH);
        if call.usage_injected {
            // the stream is edited byte by byte, which needs it uncompressed
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if let Some(cx) = &call.trace {
            spans::inject(cx, &mut headers);
        }
        let mut up = Request::new(Full::new(body));
        *up.method_mut() = parts.method;
        *up.uri_mut() = uri;
        *up.headers_mut() = headers;

        call.overhead += work.elapsed();
        let sent = tokio::time::timeout(self.read_timeout, self.client.request(up)).await;
        let resp = match sent {
            Err(_) => {
                let e = ProxyError::Timeout(format!(
                    "no response within {:?} (--read-timeout)",
                    self.read_timeout
                ));
                return self.reject(call, e, started);
            }
            Ok(Err(e)) => {
                let msg = chain(&e);
                let err = if is_timeout(&e) {
                    ProxyError::Timeout(msg)
                } else if e.is_connect() {
                    ProxyError::Unreachable(msg)
                } else {
                    ProxyError::UpstreamFailed(msg)
                };
                return self.reject(call, err, started);
            }
            Ok(Ok(r)) => r,
        };

        let (mut rparts, incoming) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        call.status = Some(rparts.status.as_u16());
        call.request_id = rparts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let event_stream = rparts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
        let encoding = rparts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let observer = Observer::new(op, event_stream, encoding, call.usage_injected, started)
            .capturing(call.content.is_some());
        if observer.edits() {
            rparts.headers.remove(header::CONTENT_LENGTH);
        }
        if let Some(v) = traceresponse {
            rparts.headers.insert(TRACERESPONSE, v);
        }
        let tap = Tap::new(
            incoming,
            call,
            observer,
            self.recorder.clone(),
            started,
            self.read_timeout,
        );
        Response::from_parts(rparts, tap.boxed_unsync())
    }
}
