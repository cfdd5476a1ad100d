//! Send: wait for the upstream's answer, and say precisely why there is none.
//!
//! The client's SDK retries differently on a timeout (504) than on a refused
//! connection (502), and telemetry records `timeout` or `connection_error`,
//! so the failure is classified from the error's type, never its wording.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::error::{ProxyError, chain};
use crate::route::Route;
use crate::upstream::{Client, MAX_RESPONSE_HEAD};

/// Sends `up` on `route`'s pool; the answer's head must come within `read_timeout`.
pub(super) async fn send(
    route: &Route,
    up: Request<Full<Bytes>>,
    read_timeout: Duration,
) -> Result<Response<Incoming>, ProxyError> {
    send_on(&route.client, up, read_timeout).await
}

/// Sends `up` on `client` (a route's pool), as [`send`] does.
pub(super) async fn send_on(
    client: &Client,
    up: Request<Full<Bytes>>,
    read_timeout: Duration,
) -> Result<Response<Incoming>, ProxyError> {
    match tokio::time::timeout(read_timeout, client.request(up)).await {
        Err(_) => Err(ProxyError::Timeout(format!(
            "no response within {read_timeout:?} (--read-timeout)"
        ))),
        Ok(Err(e)) => Err(classify(&e, client)),
        Ok(Ok(r)) if head_len(&r) > MAX_RESPONSE_HEAD => Err(ProxyError::UpstreamHeaderTooLarge {
            limit: MAX_RESPONSE_HEAD,
        }),
        Ok(Ok(r)) => Ok(r),
    }
}

/// The size of a response head as sent (status line, `name: value` lines, blank line).
/// hyper's read buffer lets a head a little over its cap through when one read
/// brings it whole, so the limit is checked here, where it is exact.
fn head_len<B>(r: &Response<B>) -> usize {
    const STATUS_LINE: usize = "HTTP/1.1 200 OK\r\n".len();
    STATUS_LINE
        + r.headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
        + 2
}

fn classify(e: &hyper_util::client::legacy::Error, client: &Client) -> ProxyError {
    let msg = chain(e);
    if let Some(p) = crate::upstream::proxy_failure(e) {
        // the proxy's own failure, named; a TLS failure behind a working tunnel is the upstream's
        ProxyError::EgressProxy(chain(p))
    } else if let Some(tls) = crate::tls::describe_failure(e) {
        ProxyError::UpstreamTls(tls)
    } else if any_source(e, |h: &hyper::Error| h.is_canceled())
        && client.client_cert_wanted(CERT_REFUSAL_WINDOW)
    {
        // TLS 1.3: the refusal closed the new connection before the request went out
        ProxyError::UpstreamTls(crate::tls::certificate_required())
    } else if any_source(e, hyper::Error::is_parse_too_large) {
        ProxyError::UpstreamHeaderTooLarge {
            limit: MAX_RESPONSE_HEAD,
        }
    } else if timed_out(e) {
        ProxyError::Timeout(msg)
    } else if e.is_connect() {
        ProxyError::Unreachable(msg)
    } else {
        ProxyError::UpstreamFailed(msg)
    }
}

/// How recently an upstream must have asked for the client certificate tokentap
/// lacks for a connection closed before use to be blamed on that refusal.
const CERT_REFUSAL_WINDOW: Duration = Duration::from_secs(2);

/// True when an I/O error of kind `TimedOut` is among `err`'s sources (the
/// connector reports its connect timeout that way).
fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    any_source(err, |io: &std::io::Error| {
        io.kind() == std::io::ErrorKind::TimedOut
    })
}

/// True when `err` or one of its sources is an `E` that `is` accepts: a
/// failure is found by its type, never by its wording.
fn any_source<E: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
    is: impl Fn(&E) -> bool,
) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<E>().is_some_and(&is) {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(std::io::Error);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("tcp connect error")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_timeout_is_found_by_kind_not_wording() {
        let inner = std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline");
        assert!(timed_out(&Wrapper(inner)));
        // wording alone is not enough
        let worded = std::io::Error::other("connection timed out (per the message)");
        assert!(!timed_out(&Wrapper(worded)));
    }
}
