//! OpenTelemetry providers from the standard environment, and the OTLP mirror
//! of the Prometheus instruments.
//!
//! Users configure tokentap the way they configure every OTel SDK
//! (`OTEL_EXPORTER_OTLP_*`, `OTEL_*_EXPORTER`, the sampler, the resource),
//! so nothing here invents settings of its own. Spans and logs go through
//! the bounded queues of [`super::export`]; metrics through a periodic reader
//! on the tokio runtime whose exporter never reports an error twice.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{LogExporter, SdkLoggerProvider};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use opentelemetry_sdk::runtime;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanExporter};

use super::export::{
    ExportHealth, ExportThread, GuardedMetricExporter, LogSink, QUEUE_CAPACITY, Queue,
    QueueLogProcessor, QueueSpanProcessor, SpanSink, log_with_resource, with_resource,
};
use super::names::{attr, buckets, instrument, signal, span, value};
use crate::call::Call;

/// Where one signal goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    Otlp(Protocol),
    Console,
    None,
}

/// Telemetry settings read from the standard `OTEL_*` environment.
#[derive(Debug, Clone)]
pub struct OtelSettings {
    pub disabled: bool,
    pub traces: Exporter,
    pub metrics: Exporter,
    pub logs: Exporter,
    pub metric_interval: Option<Duration>,
    pub export_timeout: Duration,
    pub span_queue_size: usize,
    pub log_queue_size: usize,
    pub resource: Resource,
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
        }
    }
}

/// Counters for what the queues dropped (the Prometheus side).
#[derive(Debug, Clone)]
pub struct DropCounters {
    pub traces: prometheus_client::metrics::counter::Counter,
    pub metrics: prometheus_client::metrics::counter::Counter,
    pub logs: prometheus_client::metrics::counter::Counter,
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
pub fn build(settings: &OtelSettings, drops: &DropCounters) -> Result<Providers, String> {
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
            let e = match p {
                Protocol::Grpc => b.with_tonic().with_timeout(t).build(),
                _ => b.with_http().with_protocol(p).with_timeout(t).build(),
            }
            .map_err(|e| format!("OTLP trace exporter: {e}"))?;
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
            let e = match p {
                Protocol::Grpc => b.with_tonic().with_timeout(t).build(),
                _ => b.with_http().with_protocol(p).with_timeout(t).build(),
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
            let e = match p {
                Protocol::Grpc => b.with_tonic().with_timeout(t).build(),
                _ => b.with_http().with_protocol(p).with_timeout(t).build(),
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

/// A span queue exporting to `e` (also used by tests with in-memory exporters).
pub fn span_queue<E: SpanExporter + 'static>(
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
pub fn log_queue<E: LogExporter + 'static>(
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
pub fn meter_provider<E: PushMetricExporter>(
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
    pub fn tracer(&self) -> SdkTracer {
        self.tracer_provider.tracer(span::INSTRUMENTATION_SCOPE)
    }

    pub fn meter(&self) -> Option<Meter> {
        self.meter_provider
            .as_ref()
            .map(|p| p.meter(span::INSTRUMENTATION_SCOPE))
    }

    /// Flushes spans, metrics and logs; bounded by `deadline` in total.
    pub async fn shutdown(self, deadline: Duration) {
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

/// A series' labels as OTel attributes, built once per label combination.
#[derive(Debug)]
pub struct Attributes {
    lab: [KeyValue; 3],
    genai: Vec<KeyValue>,
    with_error: Vec<KeyValue>,
    tokens: [Vec<KeyValue>; 3],
    token_usage: [Vec<KeyValue>; 2],
}

impl Attributes {
    fn new(op: crate::genai::request::Operation, b: &super::metrics::BoundedLabels) -> Self {
        let status = if b.error_type.is_some() {
            value::STATUS_ERROR
        } else {
            value::STATUS_SUCCESS
        };
        let lab = [
            KeyValue::new("model", b.model.clone()),
            KeyValue::new("provider", b.provider.to_string()),
            KeyValue::new("status", status),
        ];
        let mut genai = vec![
            KeyValue::new(attr::GEN_AI_OPERATION_NAME, op.name()),
            KeyValue::new(attr::GEN_AI_PROVIDER_NAME, b.provider.to_string()),
            KeyValue::new(attr::GEN_AI_REQUEST_MODEL, b.request_model.clone()),
            KeyValue::new(attr::SERVER_ADDRESS, b.server_address.clone()),
        ];
        if let Some(rm) = &b.response_model {
            genai.push(KeyValue::new(attr::GEN_AI_RESPONSE_MODEL, rm.clone()));
        }
        let mut with_error = genai.clone();
        if let Some(e) = &b.error_type {
            with_error.push(KeyValue::new(attr::ERROR_TYPE, e.clone()));
        }
        let tokens = [
            value::TOKENS_PROMPT,
            value::TOKENS_COMPLETION,
            value::TOKENS_TOTAL,
        ]
        .map(|kind| {
            let mut l = lab.to_vec();
            l.push(KeyValue::new("type", kind));
            l
        });
        let token_usage = [value::TOKEN_INPUT, value::TOKEN_OUTPUT].map(|kind| {
            let mut l = genai.clone();
            l.push(KeyValue::new(attr::GEN_AI_TOKEN_TYPE, kind));
            l
        });
        Attributes {
            lab,
            genai,
            with_error,
            tokens,
            token_usage,
        }
    }
}

/// The OTel instruments, mirroring `/metrics`.
#[derive(Debug, Clone)]
pub struct Instruments {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    tokens: Counter<u64>,
    cost: Counter<f64>,
    conversations: Counter<u64>,
    messages: Counter<u64>,
    token_usage: Histogram<u64>,
    op_duration: Histogram<f64>,
    ttfc: Histogram<f64>,
    per_chunk: Histogram<f64>,
    unpriced: Counter<u64>,
    parse_errors: Counter<u64>,
    overhead: Histogram<f64>,
    /// Reports `tokentap_telemetry_dropped_total` at each collection.
    _dropped: opentelemetry::metrics::ObservableCounter<u64>,
}

impl Instruments {
    pub fn new(m: &Meter, drops: &DropCounters) -> Instruments {
        let d = drops.clone();
        Instruments {
            requests: m
                .u64_counter(instrument::LLM_REQUESTS)
                .with_description("LLM requests")
                .build(),
            duration: m
                .f64_histogram(instrument::LLM_REQUEST_DURATION)
                .with_unit("s")
                .with_boundaries(buckets::DURATION.to_vec())
                .with_description("Duration of LLM requests")
                .build(),
            tokens: m
                .u64_counter(instrument::LLM_TOKENS_USED)
                .with_description("Tokens used by LLM requests")
                .build(),
            cost: m
                // no unit: a collector's Prometheus exporter would append it to the name
                .f64_counter(instrument::LLM_COST_USD)
                .with_description("Cost of LLM requests in USD")
                .build(),
            conversations: m.u64_counter(instrument::AGENT_CONVERSATIONS).build(),
            messages: m.u64_counter(instrument::AGENT_MESSAGES).build(),
            token_usage: m
                .u64_histogram(instrument::GEN_AI_TOKEN_USAGE)
                .with_unit("{token}")
                .with_boundaries(buckets::TOKENS.to_vec())
                .with_description("Number of input and output tokens used")
                .build(),
            op_duration: m
                .f64_histogram(instrument::GEN_AI_OPERATION_DURATION)
                .with_unit("s")
                .with_boundaries(buckets::DURATION.to_vec())
                .with_description("GenAI operation duration")
                .build(),
            ttfc: m
                .f64_histogram(instrument::GEN_AI_TIME_TO_FIRST_CHUNK)
                .with_unit("s")
                .with_boundaries(buckets::DURATION.to_vec())
                .with_description("Time to receive the first chunk of a stream")
                .build(),
            per_chunk: m
                .f64_histogram(instrument::GEN_AI_TIME_PER_OUTPUT_CHUNK)
                .with_unit("s")
                .with_boundaries(buckets::PER_CHUNK.to_vec())
                .with_description("Time between consecutive output chunks")
                .build(),
            unpriced: m.u64_counter(instrument::UNPRICED_CALLS).build(),
            parse_errors: m.u64_counter(instrument::PARSE_ERRORS).build(),
            overhead: m
                .f64_histogram(instrument::OVERHEAD)
                .with_unit("s")
                .with_boundaries(buckets::OVERHEAD.to_vec())
                .with_description("Time tokentap spent on each proxied call, excluding waits")
                .build(),
            _dropped: m
                .u64_observable_counter(instrument::TELEMETRY_DROPPED)
                .with_description("Telemetry items dropped (queue full or export failed)")
                .with_callback(move |o| {
                    for (signal, c) in [
                        (signal::TRACES, &d.traces),
                        (signal::METRICS, &d.metrics),
                        (signal::LOGS, &d.logs),
                    ] {
                        o.observe(c.get(), &[KeyValue::new("signal", signal)]);
                    }
                })
                .build(),
        }
    }

    /// Records one call; `model`, `request_model`, `response_model`, `server` and `error` are
    /// already bounded by the label guard.
    pub fn record(&self, call: &Call, series: &super::metrics::Series) {
        self.overhead.record(call.overhead.as_secs_f64(), &[]);
        for f in &call.parse_failures {
            self.parse_errors
                .add(1, &[KeyValue::new("reason", f.label())]);
        }
        let Some(op) = call.operation else { return };
        let a = series
            .otel
            .get_or_init(|| Attributes::new(op, &series.labels));
        let secs = call.duration.as_secs_f64();
        self.requests.add(1, &a.lab);
        self.duration.record(secs, &a.lab);
        self.op_duration.record(secs, &a.with_error);
        if let Some(u) = call.usage() {
            let counts = [u.input_tokens, u.output_tokens, u.total_tokens];
            for (attrs, n) in a.tokens.iter().zip(counts) {
                self.tokens.add(n, attrs);
            }
            for (attrs, n) in a.token_usage.iter().zip(counts) {
                self.token_usage.record(n, attrs);
            }
            match call.cost {
                Some(c) => self.cost.add(c, &a.lab),
                // `model` alone (the first of the lab's labels)
                None => self.unpriced.add(1, &a.lab[..1]),
            }
        }
        if call.streamed {
            if let Some(t) = call.time_to_first_chunk {
                self.ttfc.record(t.as_secs_f64(), &a.genai);
            }
            for g in &call.chunk_gaps {
                self.per_chunk.record(f64::from(*g), &a.genai);
            }
        }
    }

    pub fn conversation_started(&self) {
        self.conversations
            .add(1, &[KeyValue::new("action", "start")]);
    }

    pub fn agent_message(&self, kind: &'static str) {
        self.messages.add(1, &[KeyValue::new("type", kind)]);
    }
}
