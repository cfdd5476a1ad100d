//! Errors tokentap itself answers with, shaped like OpenAI's.
//!
//! SDKs only surface an error's message when the body has OpenAI's
//! `{"error":{…}}` shape, so every locally made reply uses it. Each variant
//! knows its HTTP status and the `error.type` telemetry records for it.

use bytes::Bytes;
use http::StatusCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The request body exceeded `--max-body`.
    BodyTooLarge { limit: u64 },
    /// The client's request body could not be read.
    ClientBody(String),
    /// No connection to the upstream.
    Unreachable(String),
    /// Connect or first-byte timeout.
    Timeout(String),
    /// The upstream failed after connecting, before answering.
    UpstreamFailed(String),
    /// The request could not be turned into an upstream request.
    BadRequest(String),
    /// The client stopped sending its body for `--request-timeout`.
    RequestTimeout(std::time::Duration),
    /// The path has dot segments that could climb out of the upstream's prefix.
    InvalidPath,
    /// The upstream's response head is over the size tokentap accepts.
    UpstreamHeaderTooLarge { limit: usize },
    /// The TLS handshake with the upstream failed (certificate, client certificate, protocol).
    UpstreamTls(String),
    /// The egress proxy could not be reached or refused the tunnel.
    EgressProxy(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientBody(_) | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unreachable(_) | ProxyError::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::InvalidPath => StatusCode::BAD_REQUEST,
            ProxyError::UpstreamHeaderTooLarge { .. }
            | ProxyError::UpstreamTls(_)
            | ProxyError::EgressProxy(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// OpenAI-style `code`, also used as `error.type` in telemetry.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BodyTooLarge { .. } => "request_too_large",
            ProxyError::ClientBody(_) => "client_body_error",
            ProxyError::BadRequest(_) => "invalid_request",
            ProxyError::Unreachable(_) | ProxyError::UpstreamFailed(_) => "connection_error",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::RequestTimeout(_) => "request_timeout",
            ProxyError::InvalidPath => "invalid_path",
            ProxyError::UpstreamHeaderTooLarge { .. } => "upstream_header_too_large",
            ProxyError::UpstreamTls(_) => "upstream_tls_error",
            ProxyError::EgressProxy(_) => "proxy_error",
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientBody(_)
            | ProxyError::BadRequest(_)
            | ProxyError::RequestTimeout(_)
            | ProxyError::InvalidPath => "invalid_request_error",
            _ => "tokentap_upstream_error",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ProxyError::BodyTooLarge { limit } => {
                format!("tokentap: request body exceeds the limit of {limit} bytes (--max-body)")
            }
            ProxyError::ClientBody(e) => format!("tokentap: could not read the request body: {e}"),
            ProxyError::BadRequest(e) => format!("tokentap: {e}"),
            ProxyError::Unreachable(e) => format!("tokentap: upstream unreachable: {e}"),
            ProxyError::UpstreamFailed(e) => format!("tokentap: upstream failed: {e}"),
            ProxyError::Timeout(e) => format!("tokentap: upstream timed out: {e}"),
            ProxyError::RequestTimeout(t) => {
                format!("tokentap: the request body stalled: no data for {t:?} (--request-timeout)")
            }
            ProxyError::InvalidPath => {
                "tokentap: the path has '.' or '..' segments, which are not forwarded".to_owned()
            }
            ProxyError::UpstreamHeaderTooLarge { limit } => {
                format!("tokentap: the upstream's response head is over {limit} bytes")
            }
            ProxyError::UpstreamTls(e) => format!("tokentap: upstream {e}"),
            ProxyError::EgressProxy(e) => format!("tokentap: {e}"),
        }
    }

    /// The JSON body of the reply.
    pub fn body(&self) -> Bytes {
        openai_error_body(&self.message(), self.kind(), Some(self.code()))
    }
}

/// `{"error":{"message":…,"type":…,"param":null,"code":…}}`
pub fn openai_error_body(message: &str, kind: &str, code: Option<&str>) -> Bytes {
    let v = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    Bytes::from(v.to_string())
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ProxyError {}

/// Renders an error with its sources on one line (no secrets: errors carry no headers).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let m = e.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_openai_shaped() {
        let e = ProxyError::BodyTooLarge { limit: 10 };
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).expect("json");
        assert_eq!(v["error"]["code"], "request_too_large");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["param"].is_null());
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("10 bytes"))
        );
        assert_eq!(
            ProxyError::Timeout("x".into()).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ProxyError::Unreachable("x".into()).status(),
            StatusCode::BAD_GATEWAY
        );
    }
}
