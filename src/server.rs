//! The one listener's router: local routes, the agent, and the proxy.
//!
//! HTTP/1.1 and h2c share the port (hyper-util's auto builder). Each request
//! is matched once to a [`Target`]: a handful of local routes (`/health`,
//! `/metrics`), the agent's routes, the live view (`/ui`, `/api/*`), or — for everything else — the proxy.
//! Shutdown stops accepting at once and gives in-flight requests, long
//! streams included, a grace period to finish.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::{self, Access};
use crate::agent::{Agent, AgentRoute};
use crate::listener::{self, ServeOptions};
use crate::live::api::{LiveRoute, LiveView};
use crate::proxy::{Proxy, ResponseBody, full_response};
use crate::telemetry::Recorder;
use crate::telemetry::metrics::Format;

/// What the router serves: the parts it hands requests to.
pub(crate) struct Server {
    pub(crate) proxy: Proxy,
    /// `None` with `--no-agent`: its routes are then proxied like any path.
    pub(crate) agent: Option<Agent>,
    pub(crate) recorder: Arc<Recorder>,
    /// `--access-token`, for the agent's routes and the live view.
    pub(crate) access: Access,
    /// `/ui` and `/api/*`.
    pub(crate) live: LiveView,
    /// The `/health` body (it names the service).
    pub(crate) health: Bytes,
}

/// Where one request goes.
enum Target {
    Health,
    Metrics,
    Agent(AgentRoute),
    Live(LiveRoute),
    Proxy,
}

impl Target {
    fn of(method: &Method, path: &str, agent: bool) -> Target {
        match (method, path) {
            (&Method::GET, "/health") => Target::Health,
            (&Method::GET, "/metrics") => Target::Metrics,
            _ => AgentRoute::recognise(method, path)
                .filter(|_| agent)
                .map(Target::Agent)
                .or_else(|| LiveRoute::recognise(method, path).map(Target::Live))
                .unwrap_or(Target::Proxy),
        }
    }
}

/// Serves `listener` until `stop` turns true, then drains as `options` say.
pub(crate) async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    stop: watch::Receiver<bool>,
    options: ServeOptions,
) {
    // Boxed where it starts: hyper and the limits layer move a service's future
    // several times, and an unboxed one is as large as its largest path.
    let svc = service_fn(move |req| {
        let server = server.clone();
        Box::pin(async move { Ok::<_, std::convert::Infallible>(server.route(req).await) })
    });
    listener::serve(listener, listener::Protocols::default(), svc, stop, options).await;
}

impl Server {
    async fn route(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        match Target::of(req.method(), req.uri().path(), self.agent.is_some()) {
            Target::Health => {
                full_response(StatusCode::OK, "application/json", self.health.clone())
            }
            Target::Metrics => self.metrics_page(&req),
            Target::Agent(_) if !self.access.permits(req.headers()) => access::unauthorized(),
            // each path's future on the heap: `route`'s own stays small
            Target::Agent(route) => match &self.agent {
                Some(agent) => {
                    Box::pin(agent.handle(route, &self.proxy, &self.recorder, req)).await
                }
                None => Box::pin(self.proxy.forward(req)).await,
            },
            Target::Live(route) => {
                if matches!(route, LiveRoute::Calls | LiveRoute::Summary) {
                    self.recorder.settle(); // calls whose responses have left are in them
                }
                self.live.handle(route, &req, &self.access)
            }
            Target::Proxy => Box::pin(self.proxy.forward(req)).await,
        }
    }

    /// `/metrics` in the format the scraper asked for.
    fn metrics_page(&self, req: &Request<Incoming>) -> Response<ResponseBody> {
        let accept = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let format = Format::from_accept(accept);
        self.recorder.settle(); // every call whose response has left is counted
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
