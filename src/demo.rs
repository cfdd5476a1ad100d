//! The demo upstream: a deterministic, offline stand-in for the OpenAI API.
//!
//! `tokentap --demo` and the integration tests need an upstream to proxy to,
//! but the real API needs a key, network access and money, and never answers
//! the same way twice. This module serves the handful of OpenAI endpoints the
//! proxy understands with responses shaped like the real ones (field order,
//! SSE framing, the `stream_options.include_usage` rules, token accounting)
//! that are nevertheless a pure function of the request, so the demo works on
//! a laptop in a train and tests can assert on exact bytes.
//!
//! Special model names inject the failures a proxy has to survive: rate
//! limits, server errors, truncated JSON, broken SSE, slow and hanging
//! upstreams. See [`DemoUpstream`] for the routes and the fault models.
//!
//! Layout: `route` picks the endpoint (one file each: `chat`, `completions`,
//! `responses`, `embeddings`, `models`, `transcriptions`, `images`,
//! `moderations`, `realtime` (a WebSocket session); `uploads` reads the multipart forms), which generates its reply with `text`
//! and renders it with `wire`; `faults` holds the fault models and timing
//! controls. Sockets, the accept loop and graceful shutdown are
//! `crate::listener`'s, shared with the proxy.

mod azure;
mod chat;
mod completions;
mod embeddings;
mod faults;
mod form;
mod images;
mod models;
mod moderations;
mod realtime;
mod responses;
mod route;
#[cfg(test)]
mod testkit;
mod text;
mod transcriptions;
mod uploads;
mod wire;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use hyper::service::service_fn;
use tokio::sync::watch;

use crate::listener::{self, ServeOptions};

pub use wire::DemoBody;

/// Tunables of the demo upstream.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Delay between streamed chunks (default 30ms in --demo; tests use 0).
    pub chunk_delay: Duration,
    /// Delay before the response headers of any model call (simulated latency; default 0).
    pub first_byte_delay: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            chunk_delay: Duration::from_millis(30),
            first_byte_delay: Duration::ZERO,
        }
    }
}

/// A running simulated OpenAI API server.
///
/// Routes: `POST /v1/chat/completions`, `POST /v1/completions`,
/// `POST /v1/responses`, `POST /v1/embeddings`, `POST /v1/audio/transcriptions`
/// and `/v1/audio/translations` (multipart; `gpt-4o-*transcribe` report token
/// usage with an audio/text split and can stream, `whisper-*` a duration),
/// `POST /v1/images/generations` and `/v1/images/edits` (multipart; `gpt-image-*`
/// report token usage), `POST /v1/moderations`, `GET /v1/models` and
/// `GET /v1/models/{id}`, the Realtime API's WebSocket at `GET /v1/realtime?model=…`
/// (and Azure's `/openai/realtime?deployment=…`); the same model calls under Azure OpenAI's
/// `/openai/deployments/{deployment}/` (the deployment is the model when the
/// body names none) and `/openai/v1/`, answered with a dated model version as
/// Azure does; anything else is a 404 in OpenAI's format.
///
/// Fault models (the request's `model`, on the `POST` routes):
/// `demo-error-429`, `demo-error-500`, `demo-malformed-json`,
/// `demo-slow-<ms>`, and on the streaming routes (chat, completions,
/// responses; they stream even without `"stream": true`) `demo-broken-sse`
/// and `demo-hang-stream`.
///
/// Serving stops when [`DemoUpstream::shutdown`] is called or the value is dropped.
pub struct DemoUpstream {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    #[cfg(test)]
    live_streams: Arc<AtomicUsize>,
}

impl DemoUpstream {
    /// Binds 127.0.0.1:0 (or the given address) and serves in a tokio task until dropped or shut down.
    pub async fn start(addr: SocketAddr, opts: DemoOptions) -> std::io::Result<DemoUpstream> {
        let listener = listener::listen(addr)?;
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let live_streams = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(State {
            opts,
            shutdown: shutdown_rx.clone(),
            live_streams: Arc::clone(&live_streams),
        });
        // No `date` header: identical requests get byte-identical responses.
        let protocols = listener::Protocols::default().without_date_header();
        let service = service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(route::handle(req, state).await) }
        });
        // Open connections finish their in-flight requests however long they take
        // (hanging streams end at shutdown on their own).
        let options = ServeOptions::default();
        tokio::spawn(listener::serve(
            listener,
            protocols,
            service,
            shutdown_rx,
            options,
        ));
        Ok(DemoUpstream {
            addr,
            shutdown,
            #[cfg(test)]
            live_streams,
        })
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// "http://127.0.0.1:PORT" (no trailing slash, no /v1)
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Stop accepting connections; open connections finish their in-flight
    /// requests and close. Also done on drop.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

impl Drop for DemoUpstream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct State {
    opts: DemoOptions,
    shutdown: watch::Receiver<bool>,
    /// Number of stream-generating tasks alive (lets tests observe that a
    /// client disconnect stops generation).
    live_streams: Arc<AtomicUsize>,
}

/// Resolves once shutdown was requested (or the upstream is gone).
async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use bytes::Bytes;
    use http::Request;
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    /// No `date` header: identical requests get byte-identical responses, whichever
    /// HTTP the client speaks (each is served by its own builder).
    #[tokio::test(flavor = "multi_thread")]
    async fn h2c_is_served() {
        let up = upstream().await;
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let body = serde_json::to_vec(&chat_body(true, Some(true))).unwrap();
        let req = Request::post(format!("{}/v1/chat/completions", up.base_url()))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert!(resp.headers().get("date").is_none(), "h2c: {resp:?}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let h1 = post(&up, "/v1/chat/completions", &chat_body(true, Some(true))).await;
        assert!(h1.headers.get("date").is_none(), "HTTP/1: {:?}", h1.headers);
        assert_eq!(body, h1.body);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn shutdown_stops_accepting() {
        let up = upstream().await;
        let addr = up.addr();
        assert_eq!(up.base_url(), format!("http://127.0.0.1:{}", addr.port()));
        up.shutdown();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
