//! Upstream request: the client's request, addressed to the route's upstream.
//!
//! Method, path, query, headers and body are the client's; only hop-by-hop
//! headers, `Host` and `Content-Length` (both re-derived by the client
//! library) are dropped, and the call's span goes along in `traceparent`.

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderValue};
use http_body_util::Full;

use super::headers::strip_hop_by_hop;
use crate::call::Call;
use crate::error::ProxyError;
use crate::route::Route;
use crate::telemetry::spans;

/// The request to send to `route` for the client's `parts` and (possibly edited) `body`.
pub(super) fn build(
    route: &Route,
    parts: http::request::Parts,
    body: Bytes,
    call: &Call,
) -> Result<Request<Full<Bytes>>, ProxyError> {
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = route
        .uri(path_and_query)
        .map_err(|e| ProxyError::BadRequest(format!("cannot build upstream URL: {e}")))?;
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
    Ok(up)
}
