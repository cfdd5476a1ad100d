//! How the demo speaks OpenAI on the wire: its JSON and SSE framing, its
//! error shape, request ids, gzip, and the request parameters every endpoint
//! reads the same way.
//!
//! Every endpoint renders through these helpers, so the details a client (or
//! tokentap's parsers) can trip over — field order, `data: [DONE]`, the
//! `x-request-id`, `content-length` of a compressed body — are right once.

use std::convert::Infallible;
use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::listener::ChannelBody;

/// `created` / `created_at` of every generated object.
pub(super) const CREATED: u64 = 1_750_000_000;
pub(super) const SYSTEM_FINGERPRINT: &str = "fp_demo0001";
pub(super) const SERVICE_TIER: &str = "default";
pub(super) const DONE: &[u8] = b"data: [DONE]\n\n";

/// Either a complete buffer or a stream of SSE events fed by a generator task
/// (also the load benchmark's mock upstream body).
pub enum DemoBody {
    Full(Option<Bytes>),
    Channel(ChannelBody),
}

impl Body for DemoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            DemoBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            DemoBody::Channel(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, DemoBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DemoBody::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            DemoBody::Full(None) => SizeHint::with_exact(0),
            DemoBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// What a model route decided to answer, before it is turned into HTTP.
pub(super) struct Outcome {
    pub(super) status: StatusCode,
    pub(super) request_hash: u64,
    pub(super) payload: Payload,
    pub(super) retry_after: bool,
    pub(super) extra_delay: Duration,
}

pub(super) enum Payload {
    Json(Vec<u8>),
    Stream { events: Vec<Bytes>, hang: bool },
}

impl Outcome {
    pub(super) fn json(status: StatusCode, request_hash: u64, body: Vec<u8>) -> Self {
        Self {
            status,
            request_hash,
            payload: Payload::Json(body),
            retry_after: false,
            extra_delay: Duration::ZERO,
        }
    }

    pub(super) fn error(request_hash: u64, err: &ApiError) -> Self {
        Self::json(err.status, request_hash, err.to_json())
    }
}

pub(super) fn json_response(
    status: StatusCode,
    body: Vec<u8>,
    request_hash: u64,
    gzip: bool,
) -> Response<DemoBody> {
    let compressed = if gzip { gzip_bytes(&body) } else { None };
    let is_gzip = compressed.is_some();
    let body = compressed.unwrap_or(body);
    let len = body.len();
    let mut response = Response::new(DemoBody::Full(Some(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if is_gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    insert_request_id(headers, request_hash);
    response
}

pub(super) fn insert_request_id(headers: &mut HeaderMap, hash: u64) {
    if let Ok(value) = HeaderValue::try_from(format!("req_demo{hash:016x}")) {
        headers.insert("x-request-id", value);
    }
}

/// True when `accept-encoding` lists gzip with a non-zero quality.
pub(super) fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            coding.eq_ignore_ascii_case("gzip") && !refused
        })
}

fn gzip_bytes(data: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).ok()?;
    encoder.finish().ok()
}

pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    pub(super) kind: &'static str,
    pub(super) param: Option<&'static str>,
    pub(super) code: Option<&'static str>,
}

impl ApiError {
    pub(super) fn invalid(message: String, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    pub(super) fn to_json(&self) -> Vec<u8> {
        to_json(&ErrorEnvelope {
            error: ErrorBody {
                message: &self.message,
                kind: self.kind,
                param: self.param,
                code: self.code,
            },
        })
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

pub(super) fn flag(obj: &Map<String, Value>, key: &'static str) -> Result<bool, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(
            format!("Invalid type for '{key}': expected a boolean."),
            Some(key),
        )),
    }
}

pub(super) fn include_usage(obj: &Map<String, Value>) -> bool {
    obj.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

pub(super) fn choice_count(obj: &Map<String, Value>) -> Result<u32, ApiError> {
    match obj.get("n") {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=128).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::invalid(
                    "Invalid 'n': expected an integer between 1 and 128.".to_owned(),
                    Some("n"),
                )
            }),
    }
}

/// The first of `keys` that is set, as a token limit.
pub(super) fn token_limit(
    obj: &Map<String, Value>,
    keys: &[&'static str],
) -> Result<Option<usize>, ApiError> {
    for &key in keys {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => {
                return match v.as_u64() {
                    Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
                    None => Err(ApiError::invalid(
                        format!("Invalid '{key}': expected a non-negative integer."),
                        Some(key),
                    )),
                };
            }
        }
    }
    Ok(None)
}

pub(super) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

pub(super) fn sse_data<T: Serialize>(value: &T) -> Bytes {
    let json = to_json(value);
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

pub(super) fn sse_event<T: Serialize>(kind: &str, value: &T) -> Bytes {
    let json = to_json(value);
    let mut out = Vec::with_capacity(json.len() + kind.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Interleaves per-choice event lists round-robin, tagging each with its choice index.
pub(super) fn round_robin<T>(lanes: Vec<Vec<T>>) -> Vec<(u32, T)> {
    let mut lanes: Vec<_> = lanes.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for (index, lane) in (0u32..).zip(lanes.iter_mut()) {
            if let Some(item) = lane.next() {
                out.push((index, item));
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

pub(super) const NO_ANNOTATIONS: &[()] = &[];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::testkit::*;
    use http::Method;
    use std::io::Read as _;

    #[tokio::test(flavor = "multi_thread")]
    async fn gzip_when_asked_for_json_only() {
        let up = upstream().await;
        let body = serde_json::to_vec(&chat_body(false, None)).unwrap();
        let plain = request(&up, Method::POST, "/v1/chat/completions", &[], body.clone()).await;
        let gz_headers = [("accept-encoding", "br, gzip;q=0.8")];
        let zipped = request(&up, Method::POST, "/v1/chat/completions", &gz_headers, body).await;
        assert_eq!(zipped.header("content-encoding"), "gzip");
        assert_eq!(
            zipped.header("content-length"),
            zipped.body.len().to_string()
        );
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&zipped.body[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, plain.body);

        let refused = [("accept-encoding", "gzip;q=0, identity")];
        let body = serde_json::to_vec(&chat_body(false, None)).unwrap();
        let reply = request(&up, Method::POST, "/v1/chat/completions", &refused, body).await;
        assert!(reply.headers.get("content-encoding").is_none());

        let gz = [("accept-encoding", "gzip")];
        let body = serde_json::to_vec(&chat_body(true, None)).unwrap();
        let stream = request(&up, Method::POST, "/v1/chat/completions", &gz, body).await;
        assert!(stream.headers.get("content-encoding").is_none());
        assert!(stream.text().ends_with("data: [DONE]\n\n"));

        let missing = request(&up, Method::GET, "/v1/nope", &gz, Bytes::new()).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.header("content-encoding"), "gzip");
    }
}
