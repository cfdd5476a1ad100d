//! The OTLP span exporter: requests from [`super::wire`], sent over gRPC or OTLP/HTTP.
//!
//! It reads the same variables, with the same precedence, as the OTLP crate's exporter,
//! which still checks them at start (so a bad endpoint stops tokentap with that crate's
//! message): the endpoint (`…_TRACES_ENDPOINT` used as is, else `…_ENDPOINT`, with
//! `/v1/traces` appended over HTTP), `…_INSECURE` for a gRPC endpoint without a scheme, the
//! headers (`…_TRACES_HEADERS`, else `…_HEADERS`; values percent-decoded) and the
//! compression. Failures that a retry can mend (gRPC `UNAVAILABLE` and kin, HTTP 429 and
//! 502–504) are retried with a backoff while the export's time allows; the bytes are
//! written once.

use std::io::Write as _;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_http::HttpClient;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::wire;

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

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

/// `key=value` pairs, comma-separated, values percent-decoded (kept as written if that fails).
fn headers(env: Env<'_>) -> Vec<(String, String)> {
    let Some(text) = either(env, "HEADERS") else {
        return Vec::new();
    };
    text.split_terminator(',')
        .filter_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            let (k, v) = (k.trim(), v.trim());
            let v = percent_decode(v).unwrap_or_else(|| v.to_owned());
            (!k.is_empty() && !v.is_empty()).then(|| (k.to_owned(), v))
        })
        .collect()
}

fn percent_decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn gzip_wanted(env: Env<'_>) -> bool {
    either(env, "COMPRESSION").is_some_and(|c| c.eq_ignore_ascii_case("gzip"))
}

/// The gRPC endpoint; one without a scheme is `https`, or `http` when `…_INSECURE` is true.
fn grpc_endpoint(env: Env<'_>) -> String {
    let e = either(env, "ENDPOINT").unwrap_or_else(|| "http://localhost:4317".to_owned());
    let has_scheme = e
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.contains(['/', '?', '#']));
    if has_scheme {
        e
    } else if either(env, "INSECURE").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
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

type Https = opentelemetry_http::hyper::HyperClient<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
>;

enum Wire {
    Grpc(tonic::client::Grpc<Channel>),
    Http { client: Box<Https>, url: String },
}

/// Exports spans as OTLP, written by [`wire`].
pub(crate) struct OtlpSpans {
    wire: Wire,
    /// The configured headers that are valid HTTP headers (the others are left out).
    headers: http::HeaderMap,
    gzip: bool,
    timeout: Duration,
    resource: (Vec<u8>, String),
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
            Wire::Http {
                client: Box::new(client),
                url: http_url(&process_env),
            },
            gzip_wanted(&process_env),
            timeout,
        )
    }

    fn new(wire: Wire, gzip: bool, timeout: Duration) -> OtlpSpans {
        OtlpSpans {
            wire,
            headers: headers(&process_env)
                .into_iter()
                .filter_map(|(k, v)| {
                    Some((
                        http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                        http::HeaderValue::from_str(&v).ok()?,
                    ))
                })
                .collect(),
            gzip,
            timeout,
            resource: wire::resource(&Resource::builder_empty().build()),
        }
    }

    /// One attempt: `Ok` when sent, `Err((retry, why))` otherwise.
    async fn send(&self, body: &[u8]) -> Result<(), (bool, String)> {
        match &self.wire {
            Wire::Grpc(grpc) => {
                let mut grpc = grpc.clone();
                grpc.ready()
                    .await
                    .map_err(|e| (true, format!("OTLP/gRPC channel: {e}")))?;
                let mut req = tonic::Request::new(body.to_vec());
                *req.metadata_mut() = MetadataMap::from_headers(self.headers.clone());
                let path = http::uri::PathAndQuery::from_static(GRPC_PATH);
                grpc.unary(req, path, RawCodec)
                    .await
                    .map(drop)
                    .map_err(|s| {
                        use tonic::Code::*;
                        let retry = matches!(
                            s.code(),
                            Unavailable
                                | ResourceExhausted
                                | Aborted
                                | Cancelled
                                | DeadlineExceeded
                                | OutOfRange
                                | DataLoss
                        );
                        (retry, format!("OTLP/gRPC export: {s}"))
                    })
            }
            Wire::Http { client, url } => {
                let mut req = http::Request::post(url.as_str());
                if let Some(h) = req.headers_mut() {
                    h.extend(self.headers.clone());
                }
                req = req.header(http::header::CONTENT_TYPE, "application/x-protobuf");
                let body = if self.gzip {
                    req = req.header(http::header::CONTENT_ENCODING, "gzip");
                    let mut z =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    z.write_all(body)
                        .and_then(|()| z.finish())
                        .map_err(|e| (false, format!("gzip: {e}")))?
                } else {
                    body.to_vec()
                };
                let req = req
                    .body(Bytes::from(body))
                    .map_err(|e| (false, format!("OTLP/HTTP request: {e}")))?;
                let resp = client
                    .send_bytes(req)
                    .await
                    .map_err(|e| (true, format!("OTLP/HTTP export: {e}")))?;
                let status = resp.status();
                if status.is_success() {
                    Ok(())
                } else {
                    let retry = matches!(status.as_u16(), 429 | 502 | 503 | 504);
                    Err((retry, format!("OTLP/HTTP export: {url} answered {status}")))
                }
            }
        }
    }
}

impl SpanExporter for OtlpSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = wire::request(&self.resource, &batch);
        drop(batch);
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.send(&body).await {
                Ok(()) => return Ok(()),
                Err((true, _))
                    if attempt < ATTEMPTS && started.elapsed() + backoff < self.timeout =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err((_, why)) => return Err(OTelSdkError::InternalFailure(why)),
            }
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = wire::resource(resource);
    }
}

/// Sends the request's bytes as they are; the reply's content is not read.
struct RawCodec;
struct RawEncoder;
struct Discard;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
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
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
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
mod tests {
    use super::*;

    fn table<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn endpoints_headers_and_compression_read_as_the_otlp_crate_reads_them() {
        let none = table(&[]);
        assert_eq!(grpc_endpoint(&none), "http://localhost:4317");
        assert_eq!(http_url(&none), "http://localhost:4318/v1/traces");
        assert!(headers(&none).is_empty() && !gzip_wanted(&none));

        let general = table(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                " a = 1 ,b=x%20y,=no,c=,bad%zz=%zz",
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP"),
        ]);
        assert_eq!(http_url(&general), "http://c:4318/v1/traces");
        assert_eq!(grpc_endpoint(&general), "http://c:4318/");
        assert!(gzip_wanted(&general));
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
        };
        assert_eq!(
            headers(&general),
            pairs(&[("a", "1"), ("b", "x y"), ("bad%zz", "%zz")])
        );

        // the traces variables win and are used as they are
        let own = table(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "t=2"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
        ]);
        assert_eq!(http_url(&own), "http://t:1/custom");
        assert_eq!(grpc_endpoint(&own), "http://t:1/custom");
        assert_eq!(headers(&own), pairs(&[("t", "2")]));
        assert!(!gzip_wanted(&own));

        // a gRPC endpoint without a scheme: TLS unless insecure
        let bare = [("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")];
        assert_eq!(grpc_endpoint(&table(&bare)), "https://c:4317");
        let insecure = [bare[0], ("OTEL_EXPORTER_OTLP_INSECURE", "True")];
        assert_eq!(grpc_endpoint(&table(&insecure)), "http://c:4317");
        let path = [("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317/p://q")];
        assert_eq!(grpc_endpoint(&table(&path)), "https://c:4317/p://q");
    }
}
