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

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const ATTEMPTS: u32 = 4;
const USER_AGENT: &str = concat!("tokentap/", env!("CARGO_PKG_VERSION"));
/// The longest wait a server may ask for before a retry (`Retry-After`).
const LONGEST_ASKED_WAIT: Duration = Duration::from_secs(600);
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
            headers: headers(&process_env),
            gzip,
            timeout,
            resource: wire::resource(&Resource::builder_empty().build()),
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
                        // as the OTLP crate classifies them when the server gives no RetryInfo
                        let retry = match s.code() {
                            Unavailable | Aborted | Cancelled | DeadlineExceeded | OutOfRange
                            | DataLoss => Retry::Soon,
                            _ => Retry::No,
                        };
                        (retry, format!("OTLP/gRPC export: {s}"))
                    })
            }
            Wire::Http { client, url } => {
                let mut req = http::Request::post(url.as_str())
                    .header(http::header::USER_AGENT, USER_AGENT)
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf");
                let body = if self.gzip {
                    req = req.header(http::header::CONTENT_ENCODING, "gzip");
                    let mut z =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    z.write_all(body)
                        .and_then(|()| z.finish())
                        .map(Bytes::from)
                        .map_err(|e| (Retry::No, format!("gzip: {e}")))?
                } else {
                    body.clone()
                };
                let mut req = req
                    .body(body)
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
                Err((retry, format!("OTLP/HTTP export: {url} answered {status}")))
            }
        }
    }
}

impl SpanExporter for OtlpSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = Bytes::from(wire::request(&self.resource, &batch));
        drop(batch);
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let (retry, why) = match self.send(&body).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
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
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = wire::resource(resource);
    }
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
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A collector answering each request with the next `(status, Retry-After)`, each reply
    /// carrying `body` bytes; counts the requests.
    async fn collector_with_body(
        script: Vec<(u16, Option<&'static str>)>,
        body: usize,
    ) -> (String, Arc<Mutex<usize>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(0usize));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (count, script) = (count.clone(), script.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let n = {
                            let mut c = count.lock().expect("count");
                            *c += 1;
                            *c - 1
                        };
                        let (status, after) = script[n.min(script.len() - 1)];
                        let mut resp = http::Response::builder().status(status);
                        if let Some(a) = after {
                            resp = resp.header(http::header::RETRY_AFTER, a);
                        }
                        let resp = resp
                            .body(http_body_util::Full::new(Bytes::from(vec![0u8; body])))
                            .expect("response");
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let io = hyper_util::rt::TokioIo::new(sock);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        (url, seen)
    }

    async fn export_to(script: Vec<(u16, Option<&'static str>)>) -> (bool, usize) {
        export_with_replies_of(script, 0).await
    }

    async fn export_with_replies_of(
        script: Vec<(u16, Option<&'static str>)>,
        body: usize,
    ) -> (bool, usize) {
        let (url, seen) = collector_with_body(script, body).await;
        let timeout = Duration::from_secs(2);
        let client = super::super::transport::Transport::default()
            .http(timeout)
            .expect("client");
        let e = OtlpSpans {
            wire: Wire::Http {
                client: Box::new(client),
                url,
            },
            headers: http::HeaderMap::new(),
            gzip: false,
            timeout,
            resource: wire::resource(&Resource::builder_empty().build()),
        };
        let ok = e.export(Vec::new()).await.is_ok();
        let n = *seen.lock().expect("count");
        (ok, n)
    }

    #[tokio::test]
    async fn retries_what_a_retry_can_mend_and_waits_as_asked_only_when_time_allows() {
        assert_eq!(
            export_to(vec![(503, None), (502, None), (200, None)]).await,
            (true, 3)
        );
        assert_eq!(export_to(vec![(400, None)]).await, (false, 1));
        // asked to wait longer than the export may take: not retried
        assert_eq!(export_to(vec![(429, Some("5"))]).await, (false, 1));
        assert_eq!(
            export_to(vec![(429, Some("0")), (200, None)]).await,
            (true, 2)
        );
        // four attempts at most
        assert_eq!(export_to(vec![(503, None)]).await, (false, 4));
    }

    /// A reply whose body is refused (over the client's 4 MiB) still means the collector
    /// got the spans: not sent again, where a retry would store them twice.
    #[tokio::test]
    async fn a_request_the_collector_answered_is_not_sent_again() {
        let big = 5 * 1024 * 1024;
        assert_eq!(
            export_with_replies_of(vec![(200, None)], big).await,
            (false, 1)
        );
        assert_eq!(
            export_with_replies_of(vec![(503, None)], big).await,
            (false, 1)
        );
        // a small reply body is read as before
        assert_eq!(
            export_with_replies_of(vec![(200, None)], 64).await,
            (true, 1)
        );
    }

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
        let read = |env: &dyn Fn(&str) -> Option<String>| -> Vec<(String, String)> {
            headers(env)
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_owned()))
                .collect()
        };
        assert_eq!(
            read(&general),
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
        assert_eq!(read(&own), pairs(&[("t", "2")]));
        assert!(!gzip_wanted(&own));

        // a gRPC endpoint without a scheme: TLS unless insecure
        let bare = [("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")];
        assert_eq!(grpc_endpoint(&table(&bare)), "https://c:4317");
        let insecure = [bare[0], ("OTEL_EXPORTER_OTLP_INSECURE", "True")];
        assert_eq!(grpc_endpoint(&table(&insecure)), "http://c:4317");
        let path = [("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317/p://q")];
        assert_eq!(grpc_endpoint(&table(&path)), "https://c:4317/p://q");

        // set but empty: the traces headers and insecure flag are that (none, false); an
        // empty or unknown compression is passed over for the general one
        let empty = table(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", ""),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", ""),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip "),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ]);
        assert!(headers(&empty).is_empty());
        assert_eq!(grpc_endpoint(&empty), "https://c:4317");
        assert!(gzip_wanted(&empty));
    }
}
