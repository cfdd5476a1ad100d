//! The composition root: the one place that knows every part.
//!
//! Parts are built here in dependency order — demo upstream → routes →
//! telemetry → proxy → agent → server — and each gets only what it needs,
//! so no part reaches into another's configuration. Whatever can go wrong at
//! start is one [`StartError`] that knows its exit status.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::Agent;
use crate::config::{self, Config, Upstream};
use crate::demo::{DemoOptions, DemoUpstream};
use crate::genai::pricing::PriceTable;
use crate::listener::{self, ConnectionLimits, ServeOptions};
use crate::live::api::LiveView;
use crate::proxy::Proxy;
use crate::route::Routes;
use crate::server::{self, Server};
use crate::telemetry::otel::{OtelSettings, Providers};
use crate::telemetry::{Recorder, RecorderOptions, Telemetry};

/// Why tokentap could not start.
#[derive(Debug)]
pub enum StartError {
    /// A setting is invalid (exit status 2).
    Config(String),
    /// The listener or the demo upstream could not be bound (exit status 1).
    Io(std::io::Error),
}

impl StartError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 2,
            StartError::Io(_) => 1,
        }
    }
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

    /// Stops accepting, closes open WebSocket tunnels (`1001` to both sides), lets
    /// in-flight requests finish within the grace period, waits, then flushes pending spans, metrics and logs within `TELEMETRY_FLUSH_DEADLINE`.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.task).await;
        self.recorder.settle();
        if let Some(p) = self.providers.take() {
            p.shutdown(TELEMETRY_FLUSH_DEADLINE).await;
        }
    }
}

/// Longest time spent flushing telemetry at shutdown.
pub const TELEMETRY_FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Loads the price table of `cfg` (built-in, plus `--pricing`).
fn load_pricing(cfg: &Config) -> Result<PriceTable, StartError> {
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
        max_label_length: cfg.max_label_length,
        metric_dimensions: cfg.metric_dimensions.clone(),
        recent_calls: cfg.recent_calls,
    })
}

/// Telemetry for `cfg` exporting as `settings` say (inside the tokio runtime).
pub fn telemetry(cfg: &Config, settings: &OtelSettings) -> Result<Telemetry, StartError> {
    Telemetry::new(recorder_options(cfg)?, settings).map_err(StartError::Config)
}

/// Starts with telemetry that exports nothing (spans still get ids, for `traceresponse`).
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    let telemetry = telemetry(&cfg, &OtelSettings::none())?;
    start_with(cfg, telemetry).await
}

/// Starts the demo upstream if asked, binds the listener, and serves.
pub async fn start_with(cfg: Config, telemetry: Telemetry) -> Result<Running, StartError> {
    config::check_routes(&cfg.routes).map_err(StartError::Config)?;
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
    let listener = listener::listen(cfg.listen).map_err(StartError::Io)?;
    let addr = listener.local_addr().map_err(StartError::Io)?;
    let Telemetry {
        recorder,
        providers,
    } = telemetry;
    let pricing = Arc::new(load_pricing(&cfg)?);
    let routes = Routes::new(&cfg, upstream.clone()).map_err(StartError::Config)?;
    // one stop signal: the listener stops accepting, open tunnels close
    let (tx, rx) = watch::channel(false);
    let server = Arc::new(Server {
        proxy: Proxy::new(&cfg, routes, recorder.clone(), rx.clone()),
        agent: if cfg.agent {
            Some(Agent::new(&cfg, pricing).map_err(StartError::Config)?)
        } else {
            None
        },
        recorder: recorder.clone(),
        access: crate::access::Access::new(cfg.access_token.clone()),
        live: LiveView::new(
            recorder.live.clone(),
            cfg.trace_url.as_deref(),
            cfg.capture_content,
            rx.clone(),
        ),
        health: Bytes::from(
            serde_json::json!({"status": "healthy", "service": cfg.service_name}).to_string(),
        ),
    });
    let options = ServeOptions {
        grace: Some(cfg.shutdown_grace),
        limits: Some(ConnectionLimits {
            header_timeout: cfg.header_timeout,
            idle_timeout: cfg.idle_timeout,
        }),
        max_connections: Some(cfg.max_connections as usize),
    };
    recorder.record_later();
    let task = tokio::spawn(server::serve(listener, server, rx, options));
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
