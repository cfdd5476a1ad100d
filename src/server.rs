//! The one listener: accept loop, routing and graceful shutdown.
//!
//! HTTP/1.1 and h2c share the port (hyper-util's auto builder). A handful of
//! local routes (`/health`, `/metrics`) are answered here; everything else is
//! the proxy's. Shutdown stops accepting at once and gives in-flight
//! requests — long streams included — a grace period to finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::Agent;
use crate::config::{Config, Upstream};
use crate::demo::{DemoOptions, DemoUpstream};
use crate::genai::pricing::PriceTable;
use crate::proxy::{Proxy, ResponseBody, full_response};
use crate::telemetry::metrics::Format;
use crate::telemetry::otel::{OtelSettings, Providers};
use crate::telemetry::{Recorder, RecorderOptions, Telemetry};

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A setting is invalid (exit status 2).
    Config(String),
    /// The listener could not be bound.
    Io(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(m) => f.write_str(m),
            StartError::Io(e) => write!(f, "cannot listen: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

struct App {
    proxy: Proxy,
    agent: Agent,
    recorder: Arc<Recorder>,
    health: Bytes,
}

/// A running tokentap (listener + optional demo upstream).
pub struct Running {
    pub addr: SocketAddr,
    pub upstream: Upstream,
    pub recorder: Arc<Recorder>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    providers: Option<Providers>,
    _demo: Option<DemoUpstream>,
}

impl Running {
    /// `http://ADDR` of the listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, waits,
    /// then flushes pending spans, metrics and logs within `TELEMETRY_FLUSH_DEADLINE`.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.task).await;
        if let Some(p) = self.providers.take() {
            p.shutdown(TELEMETRY_FLUSH_DEADLINE).await;
        }
    }
}

/// Longest time spent flushing telemetry at shutdown.
pub const TELEMETRY_FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Loads the price table of `cfg` (built-in, plus `--pricing`).
pub fn load_pricing(cfg: &Config) -> Result<PriceTable, StartError> {
    let mut pricing = PriceTable::default();
    if let Some(path) = &cfg.pricing {
        pricing
            .extend_from_file(path)
            .map_err(|e| StartError::Config(format!("--pricing {}: {e}", path.display())))?;
    }
    Ok(pricing)
}

/// How calls are recorded for `cfg`.
pub fn recorder_options(cfg: &Config) -> Result<RecorderOptions, StartError> {
    Ok(RecorderOptions {
        pricing: load_pricing(cfg)?,
        max_label_values: cfg.max_label_values,
        capture_content: cfg.capture_content,
    })
}

/// Starts with telemetry that exports nothing (spans still get ids, for `traceresponse`).
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    let telemetry = Telemetry::new(recorder_options(&cfg)?, &OtelSettings::none())
        .map_err(StartError::Config)?;
    start_with(cfg, telemetry).await
}

/// Binds the listener, starts the demo upstream if asked, and serves.
pub async fn start_with(cfg: Config, telemetry: Telemetry) -> Result<Running, StartError> {
    let (upstream, demo) = if cfg.demo {
        let opts = DemoOptions {
            chunk_delay: cfg.demo_chunk_delay,
            ..DemoOptions::default()
        };
        let demo = DemoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), opts)
            .await
            .map_err(StartError::Io)?;
        let up = Upstream::parse(&demo.base_url()).map_err(StartError::Config)?;
        (up, Some(demo))
    } else {
        (cfg.upstream.clone(), None)
    };
    let listener = listen(cfg.listen).map_err(StartError::Io)?;
    let addr = listener.local_addr().map_err(StartError::Io)?;
    let Telemetry {
        recorder,
        providers,
    } = telemetry;
    let health = Bytes::from(
        serde_json::json!({"status": "healthy", "service": cfg.service_name}).to_string(),
    );
    let app = Arc::new(App {
        proxy: Proxy::new(&cfg, upstream.clone(), recorder.clone()),
        agent: Agent::new(&cfg),
        recorder: recorder.clone(),
        health,
    });
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, app, rx, cfg.shutdown_grace));
    Ok(Running {
        addr,
        upstream,
        recorder,
        shutdown: tx,
        task,
        providers: Some(providers),
        _demo: demo,
    })
}

pub use crate::listener::listen;

async fn serve(
    listener: TcpListener,
    app: Arc<App>,
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
                let app = app.clone();
                let svc = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, std::convert::Infallible>(route(&app, req).await) }
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

async fn route(app: &App, req: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => {
            full_response(StatusCode::OK, "application/json", app.health.clone())
        }
        (&Method::GET, "/metrics") => {
            let accept = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::from_accept(accept);
            match app.recorder.metrics.encode(format) {
                Ok(page) => full_response(StatusCode::OK, format.content_type(), Bytes::from(page)),
                Err(_) => full_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    Bytes::from_static(b"encoding failed\n"),
                ),
            }
        }
        _ => {
            let req = match app.agent.route(&app.proxy, &app.recorder, req).await {
                Ok(resp) => return resp,
                Err(req) => req,
            };
            let resp = app.proxy.forward(req).await;
            tracing::trace!(
                elapsed_us = started.elapsed().as_micros() as u64,
                "headers sent"
            );
            resp
        }
    }
}
