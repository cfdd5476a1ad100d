//! Tap: the upstream's answer goes back to the client through a [`Tap`].
//!
//! The head is the upstream's minus hop-by-hop headers, plus `traceresponse`;
//! the body is wrapped so the observer sees every frame as it passes and the
//! call is recorded exactly once, whenever and however the body ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;

use super::headers::strip_hop_by_hop;
use super::{ResponseBody, TRACERESPONSE};
use crate::call::Call;
use crate::observe::Observer;
use crate::tap::{BoxError, Tap};
use crate::telemetry::Recorder;

/// What the tap needs besides the response and the call.
pub(super) struct TapOptions<'a> {
    pub(super) recorder: &'a Arc<Recorder>,
    /// When the request arrived (durations are measured from it).
    pub(super) started: Instant,
    /// Longest silence of the upstream inside the body.
    pub(super) read_timeout: Duration,
}

/// The client's response for the upstream's `resp`.
pub(super) fn tap<B>(
    resp: Response<B>,
    mut call: Call,
    traceresponse: Option<HeaderValue>,
    opts: TapOptions<'_>,
) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    call.status = Some(parts.status.as_u16());
    call.request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let event_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let observer = Observer::new(
        call.operation,
        event_stream,
        encoding,
        call.usage_injected,
        opts.started,
    )
    .capturing(call.content.is_some());
    if observer.edits() {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    if observer.decodes_for_client() {
        // an injected stream compressed against our `identity`: the client gets it decoded
        parts.headers.remove(header::CONTENT_ENCODING);
    }
    if let Some(v) = traceresponse {
        parts.headers.insert(TRACERESPONSE, v);
    }
    let tap = Tap::new(
        incoming,
        call,
        observer,
        opts.recorder.clone(),
        opts.started,
        opts.read_timeout,
    );
    Response::from_parts(parts, tap.boxed_unsync())
}
