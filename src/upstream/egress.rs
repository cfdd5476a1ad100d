//! The TCP leg to an upstream: direct, or through the egress proxy the
//! environment names (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, as curl reads them).
//!
//! hyper-util's matcher and `CONNECT` tunnel do the protocol work; this file
//! only picks one per destination and names the proxy (without its
//! credentials) when it fails, so a `502` says which hop broke.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects to upstreams, through a proxy when the matcher says so.
#[derive(Clone)]
pub(crate) struct Egress {
    pub(super) http: HttpConnector,
    pub(super) proxies: Option<Arc<Matcher>>,
    /// Bounds the proxy's answer to `CONNECT` too (a proxy that accepts and never answers).
    pub(super) connect_timeout: Duration,
}

/// A failure to reach, or to tunnel through, the egress proxy.
#[derive(Debug)]
pub(crate) struct ProxyFailure {
    /// The proxy's URL without credentials.
    pub(crate) proxy: String,
    source: BoxError,
}

impl std::fmt::Display for ProxyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "egress proxy {} failed", self.proxy)
    }
}

impl std::error::Error for ProxyFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The proxy's address as shown in errors (the matcher has already removed any credentials).
pub(super) fn display(proxy: &Uri) -> String {
    let s = proxy.to_string();
    s.trim_end_matches('/').to_owned()
}

/// A TCP connection; `proxied` makes hyper send absolute-form requests (plain HTTP via a proxy).
pub(crate) struct Conn {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Conn {
    /// The socket (a relayed WebSocket goes on it directly).
    pub(crate) fn into_tcp(self) -> TcpStream {
        self.io.into_inner()
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

impl Service<Uri> for Egress {
    type Response = Conn;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        let mut http = self.http.clone();
        let Some(proxy) = self.proxies.as_ref().and_then(|m| m.intercept(&dst)) else {
            return Box::pin(async move {
                let io = http.call(dst).await?;
                Ok(Conn { io, proxied: false })
            });
        };
        let proxy_uri = proxy.uri().clone();
        let failed = {
            let name = display(&proxy_uri);
            move |source: BoxError| -> BoxError {
                Box::new(ProxyFailure {
                    proxy: name,
                    source,
                })
            }
        };
        if dst.scheme() == Some(&http::uri::Scheme::HTTPS) {
            // TLS end to end inside a CONNECT tunnel
            let mut tunnel = Tunnel::new(proxy_uri, http);
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            let limit = self.connect_timeout;
            Box::pin(async move {
                match tokio::time::timeout(limit, tunnel.call(dst)).await {
                    Ok(Ok(io)) => Ok(Conn { io, proxied: false }),
                    Ok(Err(e)) => Err(failed(Box::new(e))),
                    Err(_) => Err(failed(Box::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer to CONNECT within {limit:?} (--connect-timeout)"),
                    )))),
                }
            })
        } else {
            // plain HTTP: absolute-form requests to the proxy (credentials added per request)
            Box::pin(async move {
                match http.call(proxy_uri).await {
                    Ok(io) => Ok(Conn { io, proxied: true }),
                    Err(e) => Err(failed(Box::new(e))),
                }
            })
        }
    }
}

/// The proxy failure among `err`'s sources, if any.
pub(crate) fn proxy_failure<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ProxyFailure> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(p) = e.downcast_ref::<ProxyFailure>() {
            return Some(p);
        }
        cur = e.source();
    }
    None
}
