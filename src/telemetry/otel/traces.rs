//! The OTLP span exporter: requests from [`super::wire`], sent over gRPC or OTLP/HTTP.
//!
//! It reads the same variables, with the same precedence, as the OTLP crate's exporter,
//! which still checks them at start (so a bad endpoint stops tokentap with that crate's
//! message): the endpoint (`…_TRACES_ENDPOINT` used as is, else `…_ENDPOINT`, with
//! `/v1/traces` appended over HTTP), `…_INSECURE` for a gRPC endpoint without a scheme, the
//! headers (`…_TRACES_HEADERS`, else `…_HEADERS`; values percent-decoded) and the
//! compression. Failures that a retry can mend (gRPC `UNAVAILABLE` and kin, HTTP 429 and
//! 502–504) are retried with a backoff while the export's time allows, each attempt held
//! to the time left; the bytes are written (and compressed) once. A request the collector
//! answered is not sent again even when its reply could not be read, and errors name the
//! collector without the credentials or query its URL may carry.

use std::io::Write as _;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_http::{HttpClient, ResponseBodyTooLarge};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::transport::Https;
use super::wire;
use crate::genai::query::percent_decode;
use crate::telemetry::export::GentleSpanExporter;

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const ATTEMPTS: u32 = 4;
const USER_AGENT: &str = concat!("tokentap/", env!("CARGO_PKG_VERSION"));
/// The longest wait a server may ask for before a retry (`Retry-After`).
const LONGEST_ASKED_WAIT: Duration = Duration::from_secs(600);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How tonic's `OUT_OF_RANGE` for a reply over its size limit begins (a test pins it).
const TONIC_REPLY_TOO_LARGE: &str = "Error, decoded message length too large";

/// Where variables are read from: the process environment, or a test's table.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn var(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// `OTEL_EXPORTER_OTLP_TRACES_{suffix}`, else `OTEL_EXPORTER_OTLP_{suffix}`.
fn either(env: Env<'_>, suffix: &str) -> Option<String> {
    var(env, &format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"))
        .or_else(|| var(env, &format!("OTEL_EXPORTER_OTLP_{suffix}")))
}

/// `key=value` pairs, comma-separated, values percent-decoded; pairs that are not valid
/// HTTP headers are left out.
fn headers(env: Env<'_>) -> http::HeaderMap {
    // the traces variable when set at all (empty means none), as the OTLP crate reads it
    let Some(text) =
        env("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS"))
    else {
        return http::HeaderMap::new();
    };
    text.split_terminator(',')
        .filter_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            let v = percent_decode(v.trim());
            Some((
                http::HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
                http::HeaderValue::from_str(&v)
                    .ok()
                    .filter(|v| !v.is_empty())?,
            ))
        })
        .collect()
}

/// The first of the traces and general variables that names a compression decides; an empty
/// or unknown value is passed over, as the OTLP crate does.
fn gzip_wanted(env: Env<'_>) -> bool {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ] {
        match var(env, name).map(|v| v.to_ascii_lowercase()).as_deref() {
            Some("gzip") => return true,
            Some("none") => return false,
            _ => {}
        }
    }
    false
}

/// The gRPC endpoint; one without a scheme is `https`, or `http` when `…_INSECURE` is true.
fn grpc_endpoint(env: Env<'_>) -> String {
    let e = either(env, "ENDPOINT").unwrap_or_else(|| "http://localhost:4317".to_owned());
    let has_scheme = e
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.contains(['/', '?', '#']));
    if has_scheme {
        e
    } else if env("OTEL_EXPORTER_OTLP_TRACES_INSECURE")
        .or_else(|| env("OTEL_EXPORTER_OTLP_INSECURE"))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        format!("http://{e}")
    } else {
        format!("https://{e}")
    }
}

/// The OTLP/HTTP URL: the traces endpoint as is, else the general one plus `/v1/traces`.
fn http_url(env: Env<'_>) -> String {
    if let Some(e) = var(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return e;
    }
    let base =
        var(env, "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_else(|| "http://localhost:4318".into());
    let path = if base.ends_with('/') {
        "v1/traces"
    } else {
        "/v1/traces"
    };
    format!("{base}{path}")
}

enum Wire {
    Grpc(tonic::client::Grpc<Channel>),
    Http {
        client: Box<Https>,
        url: String,
        /// The URL as errors show it: without credentials or query.
        shown: String,
    },
}

/// `url` without what may be a secret in it (a user and password, the query).
fn shown(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => {
            format!(
                "{}://{}{}",
                u.scheme_str().unwrap_or("http"),
                u.host().unwrap_or_default(),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            ) + u.path()
        }
        Err(_) => "the OTLP/HTTP endpoint".to_owned(),
    }
}

/// Exports spans as OTLP, written by [`wire`].
pub(crate) struct OtlpSpans {
    wire: Wire,
    /// The configured headers that are valid HTTP headers (the others are left out).
    headers: http::HeaderMap,
    gzip: bool,
    timeout: Duration,
    resource: (Vec<u8>, String),
    /// Gives the core away (`std::thread::yield_now`; tests count the calls).
    yield_core: fn(),
}

impl std::fmt::Debug for OtlpSpans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtlpSpans")
    }
}

impl OtlpSpans {
    /// Over gRPC (must be called on a tokio runtime: the channel connects lazily there).
    pub(crate) fn grpc(tls: ClientTlsConfig, timeout: Duration) -> Result<OtlpSpans, String> {
        let endpoint = grpc_endpoint(&process_env);
        let channel = Endpoint::from_shared(endpoint.clone())
            .and_then(|e| e.tls_config(tls))
            .and_then(|e| e.user_agent(USER_AGENT))
            .map_err(|e| format!("OTLP trace exporter: endpoint {endpoint:?}: {e}"))?
            .timeout(timeout)
            .connect_lazy();
        let gzip = gzip_wanted(&process_env);
        let mut grpc = tonic::client::Grpc::new(channel);
        if gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(OtlpSpans::new(Wire::Grpc(grpc), gzip, timeout))
    }

    /// Over OTLP/HTTP with protobuf bodies.
    pub(crate) fn http(client: Https, timeout: Duration) -> OtlpSpans {
        OtlpSpans::new(
            {
                let url = http_url(&process_env);
                Wire::Http {
                    client: Box::new(client),
                    shown: shown(&url),
                    url,
                }
            },
            gzip_wanted(&process_env),
            timeout,
        )
    }

    fn new(wire: Wire, gzip: bool, timeout: Duration) -> OtlpSpans {
        OtlpSpans {
            wire,
            headers: headers(&process_env),
            gzip,
            timeout,
            resource: wire::resource(&Resource::builder_empty().build()),
            yield_core: std::thread::yield_now,
        }
    }

    /// One attempt: `Ok` when sent, else whether and when it may be retried, and why not.
    async fn send(&self, body: &Bytes) -> Result<(), (Retry, String)> {
        match &self.wire {
            Wire::Grpc(grpc) => {
                let mut grpc = grpc.clone();
                grpc.ready()
                    .await
                    .map_err(|e| (Retry::Soon, format!("OTLP/gRPC channel: {e}")))?;
                let mut req = tonic::Request::new(body.clone());
                *req.metadata_mut() = MetadataMap::from_headers(self.headers.clone());
                let path = http::uri::PathAndQuery::from_static(GRPC_PATH);
                grpc.unary(req, path, RawCodec)
                    .await
                    .map(drop)
                    .map_err(|s| {
                        use tonic::Code::*;
                        // as the OTLP crate classifies them when the server gives no RetryInfo,
                        // but for a reply over tonic's 4 MiB limit: the collector answered
                        let retry = match s.code() {
                            OutOfRange if s.message().starts_with(TONIC_REPLY_TOO_LARGE) => {
                                Retry::No
                            }
                            Unavailable | Aborted | Cancelled | DeadlineExceeded | OutOfRange
                            | DataLoss => Retry::Soon,
                            _ => Retry::No,
                        };
                        (retry, format!("OTLP/gRPC export: {s}"))
                    })
            }
            Wire::Http { client, url, shown } => {
                let mut req = http::Request::post(url.as_str())
                    .header(http::header::USER_AGENT, USER_AGENT)
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf");
                if self.gzip {
                    req = req.header(http::header::CONTENT_ENCODING, "gzip");
                }
                let mut req = req
                    .body(body.clone())
                    .map_err(|e| (Retry::No, format!("OTLP/HTTP request: {e}")))?;
                // the configured headers last: theirs win, and a repeated one keeps its last value
                for (k, v) in &self.headers {
                    req.headers_mut().insert(k.clone(), v.clone());
                }
                let resp = client.send_bytes(req).await.map_err(|e| {
                    // A reply too large, or cut while its body was read, means the collector
                    // got the request: sent again, its spans could be stored twice. Only a
                    // failure to send (or no head in time) is retried.
                    let answered = e.downcast_ref::<ResponseBodyTooLarge>().is_some()
                        || e.downcast_ref::<hyper::Error>().is_some();
                    let retry = if answered { Retry::No } else { Retry::Soon };
                    (retry, format!("OTLP/HTTP export: {e}"))
                })?;
                let status = resp.status();
                if status.is_success() {
                    return Ok(());
                }
                let asked = resp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s).min(LONGEST_ASKED_WAIT));
                let retry = match (status.as_u16(), asked) {
                    (429 | 503, Some(wait)) => Retry::After(wait),
                    (429 | 502 | 503 | 504, _) => Retry::Soon,
                    _ => Retry::No,
                };
                Err((
                    retry,
                    format!("OTLP/HTTP export: {shown} answered {status}"),
                ))
            }
        }
    }
}

/// Spans written (or dropped) between two offers of the core, about 50 µs of work.
///
/// Writing a batch and dropping its spans is a millisecond or more of CPU in one go. Where
/// this thread shares a core with the request path (a sidecar given one CPU), a request that
/// arrived meanwhile waited for it: the largest part of tokentap's p99 at a fixed 2,000
/// requests a second (docs/benchmarks.md, round seven). So the thread yields every few
/// spans; with nothing else waiting for the core, a yield returns at once.
const PACE_EVERY: usize = 16;

impl GentleSpanExporter for OtlpSpans {
    async fn export_gently(&self, batch: Vec<SpanData>, gentle: bool) -> OTelSdkResult {
        let pace = || {
            if gentle {
                (self.yield_core)();
            }
        };
        let body = wire::request_paced(&self.resource, &batch, PACE_EVERY, pace);
        for (i, span) in batch.into_iter().enumerate() {
            drop(span);
            if (i + 1) % PACE_EVERY == 0 {
                pace();
            }
        }
        // over HTTP the body is compressed here, once for every attempt (tonic does it for gRPC)
        let body = match &self.wire {
            Wire::Http { .. } if self.gzip => gzip(&body).map_err(|e| {
                OTelSdkError::InternalFailure(format!("OTLP/HTTP export: gzip: {e}"))
            })?,
            _ => Bytes::from(body),
        };
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        let mut before = None;
        loop {
            // an attempt gets the time the export has left, no more
            let left = self.timeout.saturating_sub(started.elapsed());
            let (retry, why) = match tokio::time::timeout(left, self.send(&body)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => {
                    let why = match before {
                        Some(why) => format!("{why}; the export's time ran out on the next try"),
                        None => "OTLP export: timed out".to_owned(),
                    };
                    return Err(OTelSdkError::InternalFailure(why));
                }
            };
            let wait = match retry {
                Retry::Soon => backoff,
                Retry::After(asked) => asked,
                Retry::No => return Err(OTelSdkError::InternalFailure(why)),
            };
            // a wait the export's time does not allow is not started
            if attempt >= ATTEMPTS || started.elapsed() + wait >= self.timeout {
                return Err(OTelSdkError::InternalFailure(why));
            }
            tokio::time::sleep(wait).await;
            backoff *= 2;
            attempt += 1;
            before = Some(why);
        }
    }
}

impl SpanExporter for OtlpSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.export_gently(batch, false).await
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = wire::resource(resource);
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Bytes> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(body)?;
    z.finish().map(Bytes::from)
}

/// Whether a failed export may be tried again.
enum Retry {
    No,
    /// After the exporter's own backoff.
    Soon,
    /// After the wait the server asked for.
    After(Duration),
}

/// Sends the request's bytes as they are; the reply's content is not read.
struct RawCodec;
struct RawEncoder;
struct Discard;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = Discard;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Discard {
        Discard
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Discard {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests;
