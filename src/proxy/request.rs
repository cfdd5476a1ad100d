//! Upstream request: the client's request, addressed to the route's upstream.
//!
//! Method, path, query, headers and body are the client's (the path less the
//! route's prefix, under the upstream's own); only hop-by-hop
//! headers, `Host` and `Content-Length` (both re-derived by the client
//! library) are dropped, and the call's span goes along in `traceparent`.

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderValue};
use http_body_util::Full;

use super::headers::strip_hop_by_hop;
use crate::call::Call;
use crate::error::ProxyError;
use crate::route::Chosen;
use crate::telemetry::spans;

/// The request to send on the `chosen` route for the client's `parts` and (possibly
/// edited) `body`: its path is the client's, the route's prefix removed.
pub(super) fn build(
    chosen: &Chosen<'_>,
    parts: http::request::Parts,
    body: Bytes,
    call: &Call,
) -> Result<Request<Full<Bytes>>, ProxyError> {
    let uri = chosen
        .route
        .uri(&chosen.path_and_query)
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

/// True when `path` has a `.` or `..` segment, also percent-encoded or behind an
/// encoded slash: forwarded, it could climb out of the upstream's path prefix
/// (`/v1/../../admin`), so such requests are refused, never normalised.
pub(super) fn has_dot_segments(path: &str) -> bool {
    // almost every path: nothing that could spell a dot (and no copy to find that out)
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    let decoded = lower
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    decoded.split('/').any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::has_dot_segments;

    #[test]
    fn dot_segments_in_any_spelling_are_found() {
        for bad in [
            "/v1/../../admin",
            "/v1/./models",
            "/..",
            "/v1/%2e%2e/admin",
            "/v1/%2E%2e/admin",
            "/v1/.%2e/admin",
            "/v1/..%2fadmin",
            "/v1/..%5cadmin",
            "/v1/..\\admin",
            "/v1/models/.",
        ] {
            assert!(has_dot_segments(bad), "{bad}");
        }
        for ok in [
            "/v1/chat/completions",
            "/v1/models/gpt-4o",
            "/v1/files/file-abc.jsonl",
            "/v1/...",
            "/v1/.well-known",
            "/",
        ] {
            assert!(!has_dot_segments(ok), "{ok}");
        }
    }
}
