//! OpenTelemetry providers from the standard environment.
//!
//! Users configure tokentap the way they configure every OTel SDK
//! (`OTEL_EXPORTER_OTLP_*`, `OTEL_*_EXPORTER`, the sampler, the resource),
//! so nothing here invents settings of its own. Spans and logs go through
//! the bounded queues of `telemetry::export`; metrics through a periodic reader
//! on the tokio runtime whose exporter never reports an error twice.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{LogExporter, SdkLoggerProvider};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use opentelemetry_sdk::runtime;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use super::export::{
    ExportHealth, ExportThread, GentleSpanExporter, GuardedMetricExporter, LogSink, QUEUE_CAPACITY,
    Queue, QueueLogProcessor, QueueSpanProcessor, SpanSink, log_with_resource, with_resource,
};
use super::names::{signal, span};

mod traces;
mod transport;
mod wire;
use traces::OtlpSpans;
use transport::Transport;

/// Where one signal goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exporter {
    Otlp(Protocol),
    Console,
    None,
}

/// Telemetry settings read from the standard `OTEL_*` environment.
#[derive(Debug, Clone)]
pub struct OtelSettings {
    pub(crate) disabled: bool,
    pub(crate) traces: Exporter,
    pub(crate) metrics: Exporter,
    pub(crate) logs: Exporter,
    pub(crate) metric_interval: Option<Duration>,
    pub(crate) export_timeout: Duration,
    pub(crate) span_queue_size: usize,
    pub(crate) log_queue_size: usize,
    pub(crate) resource: Resource,
    /// TLS and mTLS per signal: traces, metrics, logs.
    pub(crate) transports: [Transport; 3],
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn protocol(signal_var: &str) -> Result<Protocol, String> {
    let (var, value) = match env(signal_var) {
        Some(v) => (signal_var, v),
        None => match env("OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some(v) => ("OTEL_EXPORTER_OTLP_PROTOCOL", v),
            None => return Ok(Protocol::Grpc),
        },
    };
    match value.as_str() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpBinary),
        other => Err(format!("{var}={other:?}: use grpc or http/protobuf")),
    }
}

fn exporter(var: &str, protocol_var: &str) -> Result<Exporter, String> {
    match env(var).as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("otlp") => Ok(Exporter::Otlp(protocol(protocol_var)?)),
        Some("console") => Ok(Exporter::Console),
        Some("none") => Ok(Exporter::None),
        Some(other) => Err(format!("{var}={other:?}: use otlp, console or none")),
    }
}

fn count(var: &str) -> Result<Option<usize>, String> {
    match env(var) {
        None => Ok(None),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| format!("{var}={v:?}: expected a positive number")),
    }
}

fn millis(var: &str) -> Result<Option<Duration>, String> {
    match env(var) {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms > 0)
            .map(|ms| Some(Duration::from_millis(ms)))
            .ok_or_else(|| format!("{var}={v:?}: expected a positive number of milliseconds")),
    }
}

impl OtelSettings {
    /// Reads the environment. `service_name` is `OTEL_SERVICE_NAME` (or its default).
    pub fn from_env(service_name: &str) -> Result<OtelSettings, String> {
        let disabled = match env("OTEL_SDK_DISABLED").map(|v| v.to_ascii_lowercase()) {
            None => false,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => return Err(format!("OTEL_SDK_DISABLED={v:?}: use true or false")),
        };
        let traces = exporter("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")?;
        let metrics = exporter(
            "OTEL_METRICS_EXPORTER",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        )?;
        let logs = exporter("OTEL_LOGS_EXPORTER", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL")?;
        if let Some(s) = env("OTEL_TRACES_SAMPLER") {
            const KNOWN: [&str; 6] = [
                "always_on",
                "always_off",
                "traceidratio",
                "parentbased_always_on",
                "parentbased_always_off",
                "parentbased_traceidratio",
            ];
            if !KNOWN.contains(&s.as_str()) {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER={s:?}: use one of {}",
                    KNOWN.join(", ")
                ));
            }
        }
        if let Some(s) = env("OTEL_TRACES_SAMPLER_ARG") {
            s.parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    format!("OTEL_TRACES_SAMPLER_ARG={s:?}: expected a ratio between 0 and 1")
                })?;
        }
        let metric_interval = millis("OTEL_METRIC_EXPORT_INTERVAL")?;
        let export_timeout =
            millis("OTEL_EXPORTER_OTLP_TIMEOUT")?.unwrap_or(Duration::from_secs(10));
        let span_queue_size = count("OTEL_BSP_MAX_QUEUE_SIZE")?.unwrap_or(QUEUE_CAPACITY);
        let log_queue_size = count("OTEL_BLRP_MAX_QUEUE_SIZE")?.unwrap_or(QUEUE_CAPACITY);
        let mut extra = vec![KeyValue::new("service.name", service_name.to_owned())];
        if let Some(v) = env("OTEL_SERVICE_VERSION") {
            extra.push(KeyValue::new("service.version", v));
        } else {
            extra.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        }
        if let Some(e) = env("ENVIRONMENT") {
            extra.push(KeyValue::new("deployment.environment.name", e));
        }
        let transport = |e: Exporter, signal: &str| match e {
            Exporter::Otlp(_) if !disabled => Transport::from_env(signal),
            _ => Ok(Transport::default()),
        };
        let transports = [
            transport(traces, "TRACES")?,
            transport(metrics, "METRICS")?,
            transport(logs, "LOGS")?,
        ];
        // the builder's detectors read OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
        let resource = Resource::builder().with_attributes(extra).build();
        Ok(OtelSettings {
            disabled,
            traces,
            metrics,
            logs,
            metric_interval,
            export_timeout,
            span_queue_size,
            log_queue_size,
            resource,
            transports,
        })
    }

    /// Nothing exported (tests, or `OTEL_SDK_DISABLED`).
    pub fn none() -> OtelSettings {
        OtelSettings {
            disabled: false,
            traces: Exporter::None,
            metrics: Exporter::None,
            logs: Exporter::None,
            metric_interval: None,
            export_timeout: Duration::from_secs(10),
            span_queue_size: QUEUE_CAPACITY,
            log_queue_size: QUEUE_CAPACITY,
            resource: Resource::builder_empty()
                .with_service_name("tokentap")
                .build(),
            transports: Default::default(),
        }
    }
}

/// Counters for what the queues dropped (the Prometheus side).
#[derive(Debug, Clone)]
pub struct DropCounters {
    pub(crate) traces: prometheus_client::metrics::counter::Counter,
    pub(crate) metrics: prometheus_client::metrics::counter::Counter,
    pub(crate) logs: prometheus_client::metrics::counter::Counter,
}

/// The running providers; kept to flush and shut them down.
#[derive(Debug)]
pub struct Providers {
    pub tracer_provider: SdkTracerProvider,
    pub meter_provider: Option<SdkMeterProvider>,
    pub logger_provider: Option<SdkLoggerProvider>,
    pub span_queue: Option<Queue<opentelemetry_sdk::trace::SpanData>>,
    pub log_queue: Option<Queue<(opentelemetry_sdk::logs::SdkLogRecord, InstrumentationScope)>>,
    /// Where the exporters run; `None` when nothing is exported.
    pub export_thread: Option<ExportThread>,
}

/// Builds the providers for `settings`, their exporters on an [`ExportThread`].
pub(crate) fn build(settings: &OtelSettings, drops: &DropCounters) -> Result<Providers, String> {
    let traces = if settings.disabled {
        Exporter::None
    } else {
        settings.traces
    };
    let metrics = if settings.disabled {
        Exporter::None
    } else {
        settings.metrics
    };
    let logs = if settings.disabled {
        Exporter::None
    } else {
        settings.logs
    };
    let export_thread = if [traces, metrics, logs]
        .iter()
        .all(|e| matches!(e, Exporter::None))
    {
        None
    } else {
        Some(ExportThread::start()?)
    };
    // exporters, their clients and queue tasks spawn onto the export thread
    let _on_export_thread = export_thread.as_ref().map(ExportThread::enter);
    let r = &settings.resource;
    let t = settings.export_timeout;
    let (sq, lq) = (settings.span_queue_size, settings.log_queue_size);

    let span_queue = match traces {
        Exporter::None => None,
        Exporter::Console => Some(span_queue(
            opentelemetry_stdout::SpanExporter::default(),
            r,
            drops,
            t,
            sq,
        )),
        Exporter::Otlp(p) => {
            let b = opentelemetry_otlp::SpanExporter::builder();
            let tr = &settings.transports[0];
            // the OTLP crate's exporter still checks the configuration (its messages at
            // start); spans are written and sent by tokentap's own (`otel/traces.rs`)
            let checked = match p {
                Protocol::Grpc => b
                    .with_tonic()
                    .with_timeout(t)
                    .with_tls_config(tr.grpc())
                    .build(),
                _ => b
                    .with_http()
                    .with_protocol(p)
                    .with_timeout(t)
                    .with_http_client(tr.http(t)?)
                    .build(),
            }
            .map_err(|e| format!("OTLP trace exporter: {e}"))?;
            drop(checked);
            let e = match p {
                Protocol::Grpc => OtlpSpans::grpc(tr.grpc(), t)?,
                _ => OtlpSpans::http(tr.http(t)?, t),
            };
            Some(span_queue(e, r, drops, t, sq))
        }
    };
    let mut tp = SdkTracerProvider::builder().with_resource(r.clone());
    if let Some(q) = &span_queue {
        tp = tp.with_span_processor(QueueSpanProcessor(q.clone()));
    }
    let tracer_provider = tp.build();

    let meter_provider = match metrics {
        Exporter::None => None,
        Exporter::Console => Some(meter_provider(
            opentelemetry_stdout::MetricExporter::builder().build(),
            settings,
            drops,
        )),
        Exporter::Otlp(p) => {
            let b = opentelemetry_otlp::MetricExporter::builder();
            let tr = &settings.transports[1];
            let e = match p {
                Protocol::Grpc => b
                    .with_tonic()
                    .with_timeout(t)
                    .with_tls_config(tr.grpc())
                    .build(),
                _ => b
                    .with_http()
                    .with_protocol(p)
                    .with_timeout(t)
                    .with_http_client(tr.http(t)?)
                    .build(),
            }
            .map_err(|e| format!("OTLP metric exporter: {e}"))?;
            Some(meter_provider(e, settings, drops))
        }
    };

    let log_queue = match logs {
        Exporter::None => None,
        Exporter::Console => Some(log_queue(
            opentelemetry_stdout::LogExporter::default(),
            r,
            drops,
            t,
            lq,
        )),
        Exporter::Otlp(p) => {
            let b = opentelemetry_otlp::LogExporter::builder();
            let tr = &settings.transports[2];
            let e = match p {
                Protocol::Grpc => b
                    .with_tonic()
                    .with_timeout(t)
                    .with_tls_config(tr.grpc())
                    .build(),
                _ => b
                    .with_http()
                    .with_protocol(p)
                    .with_timeout(t)
                    .with_http_client(tr.http(t)?)
                    .build(),
            }
            .map_err(|e| format!("OTLP log exporter: {e}"))?;
            Some(log_queue(e, r, drops, t, lq))
        }
    };
    let logger_provider = log_queue.as_ref().map(|q| {
        SdkLoggerProvider::builder()
            .with_resource(r.clone())
            .with_log_processor(QueueLogProcessor(q.clone()))
            .build()
    });
    Ok(Providers {
        tracer_provider,
        meter_provider,
        logger_provider,
        span_queue,
        log_queue,
        export_thread,
    })
}

/// A span queue exporting to `e`.
fn span_queue<E: GentleSpanExporter + 'static>(
    e: E,
    r: &Resource,
    drops: &DropCounters,
    timeout: Duration,
    capacity: usize,
) -> Queue<opentelemetry_sdk::trace::SpanData> {
    Queue::start(
        SpanSink(with_resource(e, r)),
        Arc::new(ExportHealth::new(signal::TRACES)),
        drops.traces.clone(),
        timeout,
        capacity,
    )
}

/// A log queue exporting to `e`.
fn log_queue<E: LogExporter + 'static>(
    e: E,
    r: &Resource,
    drops: &DropCounters,
    timeout: Duration,
    capacity: usize,
) -> Queue<(opentelemetry_sdk::logs::SdkLogRecord, InstrumentationScope)> {
    Queue::start(
        LogSink(log_with_resource(e, r)),
        Arc::new(ExportHealth::new(signal::LOGS)),
        drops.logs.clone(),
        timeout,
        capacity,
    )
}

/// A meter provider pushing to `e` periodically from the tokio runtime.
fn meter_provider<E: PushMetricExporter>(
    e: E,
    settings: &OtelSettings,
    drops: &DropCounters,
) -> SdkMeterProvider {
    let guarded = GuardedMetricExporter::new(
        e,
        Arc::new(ExportHealth::new(signal::METRICS)),
        drops.metrics.clone(),
        settings.export_timeout,
    );
    let mut reader = PeriodicReader::builder(guarded, runtime::Tokio);
    if let Some(i) = settings.metric_interval {
        reader = reader.with_interval(i);
    }
    SdkMeterProvider::builder()
        .with_resource(settings.resource.clone())
        .with_reader(reader.build())
        .build()
}

impl Providers {
    /// Spans from `tracer_provider` alone: no metrics or logs, nothing queued or exported
    /// by tokentap (the provider's own processors still run). For embedding and tests.
    pub fn tracing_only(tracer_provider: SdkTracerProvider) -> Providers {
        Providers {
            tracer_provider,
            meter_provider: None,
            logger_provider: None,
            span_queue: None,
            log_queue: None,
            export_thread: None,
        }
    }

    pub(crate) fn tracer(&self) -> SdkTracer {
        self.tracer_provider.tracer(span::INSTRUMENTATION_SCOPE)
    }

    pub(crate) fn meter(&self) -> Option<Meter> {
        self.meter_provider
            .as_ref()
            .map(|p| p.meter(span::INSTRUMENTATION_SCOPE))
    }

    /// Flushes spans, metrics and logs; bounded by `deadline` in total.
    pub(crate) async fn shutdown(self, deadline: Duration) {
        let start = tokio::time::Instant::now();
        let left = || deadline.saturating_sub(start.elapsed());
        if let Some(q) = &self.span_queue {
            if !q.flush(left()).await {
                tracing::warn!("pending spans not flushed before the shutdown deadline");
            }
        }
        if let Some(mp) = self.meter_provider {
            let budget = left();
            let done = tokio::time::timeout(
                budget,
                tokio::task::spawn_blocking(move || mp.shutdown_with_timeout(budget)),
            )
            .await;
            if !matches!(done, Ok(Ok(Ok(())))) {
                tracing::warn!("metrics not flushed before the shutdown deadline");
            }
        }
        if let Some(q) = &self.log_queue {
            let _ = q.flush(left()).await;
        }
        let tp = self.tracer_provider;
        let _ = tokio::task::spawn_blocking(move || {
            tp.shutdown_with_timeout(Duration::from_millis(100))
        })
        .await;
        if let Some(t) = self.export_thread {
            t.stop(left()).await;
        }
    }
}
