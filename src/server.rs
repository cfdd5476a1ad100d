//! The one listener's router: local routes, the agent, and the proxy.
//!
//! HTTP/1.1 and h2c share the port (hyper-util's auto builder). Each request
//! is matched once to a [`Target`]: a handful of local routes (`/health`,
//! `/metrics`), the agent's routes, or — for everything else — the proxy.
//! Shutdown stops accepting at once and gives in-flight requests, long
//! streams included, a grace period to finish.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agent::{Agent, AgentRoute};
use crate::proxy::{Proxy, ResponseBody, full_response};
use crate::telemetry::Recorder;
use crate::telemetry::metrics::Format;

/// What the router serves: the parts it hands requests to.
pub(crate) struct Server {
    pub(crate) proxy: Proxy,
    pub(crate) agent: Agent,
    pub(crate) recorder: Arc<Recorder>,
    /// The `/health` body (it names the service).
    pub(crate) health: Bytes,
}

/// Where one request goes.
enum Target {
    Health,
    Metrics,
    Agent(AgentRoute),
    Proxy,
}

impl Target {
    fn of(method: &Method, path: &str) -> Target {
        match (method, path) {
            (&Method::GET, "/health") => Target::Health,
            (&Method::GET, "/metrics") => Target::Metrics,
            _ => AgentRoute::recognise(method, path).map_or(Target::Proxy, Target::Agent),
        }
    }
}

/// Connections the kernel queues before they are accepted. tokio's `bind` asks
/// for 128: a burst of more new connections than that (1,000 clients starting a
/// stream together, in issue 6's benchmark) overflowed it, and each dropped SYN
/// cost its client a one-second retransmit. The kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // as tokio's own `bind` does on Unix (on Windows it would let another process share the port)
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `listener` until `stop` turns true, then drains within `grace`.
pub(crate) async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    mut stop: watch::Receiver<bool>,
    grace: std::time::Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // e.g. too many open files: back off instead of spinning
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let server = server.clone();
                let svc = service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, std::convert::Infallible>(server.route(req).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over; closing remaining connections");
    }
}

impl Server {
    async fn route(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        match Target::of(req.method(), req.uri().path()) {
            Target::Health => {
                full_response(StatusCode::OK, "application/json", self.health.clone())
            }
            Target::Metrics => self.metrics_page(&req),
            Target::Agent(route) => {
                self.agent
                    .handle(route, &self.proxy, &self.recorder, req)
                    .await
            }
            Target::Proxy => self.proxy.forward(req).await,
        }
    }

    /// `/metrics` in the format the scraper asked for.
    fn metrics_page(&self, req: &Request<Incoming>) -> Response<ResponseBody> {
        let accept = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let format = Format::from_accept(accept);
        match self.recorder.metrics.encode(format) {
            Ok(page) => full_response(StatusCode::OK, format.content_type(), Bytes::from(page)),
            Err(_) => full_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                Bytes::from_static(b"encoding failed\n"),
            ),
        }
    }
}
