//! Turns finished calls into telemetry.
//!
//! The [`Recorder`] is the single place a [`Call`] goes when it ends: it
//! prices the call, bounds its label values once (a `series::Series`), then
//! hands it to each output registered at start, in order: Prometheus, the OTel
//! instruments, the log line, the live view, the call's span (see `sink`).
//! Recording is a few atomic updates and a push into the export queues; a call
//! whose response body was forwarded (and a Realtime turn or tunnel) is
//! recorded by one task just after its response has left (`later`); everything
//! that touches the network runs in the export tasks.
//!
//! ```text
//! Recorder ── prices the call, bounds its labels once ──► series (LabelGuard, cache, slots)
//!    │ then hands it to each sink::CallSink, in the order registered:
//!    ├─► metrics      Prometheus families, the /metrics page
//!    ├─► instruments  OTel instruments ──► otel (providers from OTEL_*) ──► export (queues)
//!    ├─► log          the log line
//!    ├─► live         the live view's ring of recent calls (crate::live; `--recent-calls`)
//!    └─► spans        the call's span, ended last (also trace context in and out)
//! names: every name, and the one descriptor per metric both metric backends are built from
//! ```

pub(crate) mod bounded;
pub(crate) mod export;
pub(crate) mod instruments;
pub(crate) mod labels;
pub(crate) mod later;
pub(crate) mod log;
pub(crate) mod metrics;
pub(crate) mod names;
pub mod otel;
pub(crate) mod series;
pub(crate) mod sink;
pub(crate) mod spans;

use std::sync::Arc;

use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::trace::SdkTracer;

use crate::call::Call;
use crate::genai::pricing::{PriceTable, cost};
use names::signal;
use otel::{DropCounters, OtelSettings, Providers};
use series::SeriesCache;
use sink::{CallSink, Recorded};

#[derive(Debug)]
pub struct Recorder {
    /// The `/metrics` page (also the first of the sinks).
    pub(crate) metrics: Arc<metrics::Metrics>,
    pricing: PriceTable,
    series: SeriesCache,
    /// Every output of a call, in the order they see it.
    sinks: Vec<Arc<dyn CallSink>>,
    /// The live view's ring (also one of the sinks); `None` with `--recent-calls 0`.
    pub(crate) live: Option<Arc<crate::live::Live>>,
    tracer: SdkTracer,
    /// Calls recorded after their response has left (`later`).
    later: Arc<later::Later>,
}

impl Recorder {
    /// Records `job` once the current task has let its response go (see `later`).
    pub(crate) fn defer(&self, job: Box<dyn later::Deferred>) {
        self.later.defer(job, self);
    }

    /// Records `call`, which has just ended, once the current task has let go
    /// (see `later`): what a relay does at a Realtime turn's end or a tunnel's.
    pub(crate) fn record_soon(&self, mut call: Call) {
        call.ended.get_or_insert_with(std::time::SystemTime::now);
        self.later.defer(Box::new(call), self);
    }

    /// Records every call still waiting; whatever reads recorded calls calls this first.
    pub fn settle(&self) {
        self.later.settle(self);
    }

    /// From now on, calls finished by a response body, and those passed to
    /// `record_soon`, are recorded by one task after the response has left
    /// (inside the tokio runtime).
    pub fn record_later(self: &Arc<Self>) {
        later::Later::start(self);
    }

    pub(crate) fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// What `call` costs at the prices in force (its usage, its models).
    pub(crate) fn price(&self, call: &Call) -> Option<f64> {
        let u = call.usage()?;
        self.pricing
            .lookup(
                call.response.model.as_deref(),
                call.request.model.as_deref(),
            )
            .map(|p| cost(p, u))
    }

    /// Prices `call` and hands it to every output. Called exactly once per call.
    pub(crate) fn record(&self, mut call: Call) {
        if call.usage().is_some() {
            call.cost = self.price(&call);
        }
        let error_type = call.error_type();
        let recorded = Recorded {
            series: self.series.series(&call, error_type.as_deref()),
            span: call
                .trace
                .as_ref()
                .map_or_else(SpanContext::empty_context, |cx| {
                    cx.span().span_context().clone()
                }),
            error_type,
            attributes: Default::default(),
        };
        for sink in &self.sinks {
            sink.record(&call, &recorded);
        }
    }

    pub(crate) fn conversation_started(&self) {
        for sink in &self.sinks {
            sink.conversation_started();
        }
    }

    pub(crate) fn agent_message(&self, kind: &'static str) {
        for sink in &self.sinks {
            sink.agent_message(kind);
        }
    }
}

/// The recorder plus the providers behind it (kept for shutdown).
#[derive(Debug)]
pub struct Telemetry {
    pub recorder: Arc<Recorder>,
    pub providers: Providers,
}

/// Options that decide how calls are recorded.
#[derive(Debug, Clone)]
pub struct RecorderOptions {
    pub pricing: PriceTable,
    pub max_label_values: usize,
    /// Label values longer than this (bytes) are recorded as `other`.
    pub max_label_length: usize,
    /// `--metric-dimensions`: opt-in attribution labels on the lab's counters.
    pub metric_dimensions: Vec<crate::genai::attribution::Dimension>,
    /// Calls the live view keeps (`--recent-calls`); 0 turns it off.
    pub recent_calls: usize,
}

impl Telemetry {
    /// Builds providers for `settings` (inside the tokio runtime).
    pub fn new(opts: RecorderOptions, settings: &OtelSettings) -> Result<Telemetry, String> {
        Self::with_providers(opts, |drops| otel::build(settings, drops))
    }

    /// Builds with providers made by `make` (tests pass in-memory exporters here).
    pub fn with_providers(
        opts: RecorderOptions,
        make: impl FnOnce(&DropCounters) -> Result<Providers, String>,
    ) -> Result<Telemetry, String> {
        let mut series = SeriesCache::new(opts.max_label_values, opts.max_label_length)
            .with_dimensions(&opts.metric_dimensions);
        let metrics = Arc::new(metrics::Metrics::new(&mut series));
        let drops = DropCounters {
            traces: metrics.dropped_counter(signal::TRACES),
            metrics: metrics.dropped_counter(signal::METRICS),
            logs: metrics.dropped_counter(signal::LOGS),
        };
        let providers = make(&drops)?;
        let instruments = providers
            .meter()
            .map(|m| instruments::Instruments::new(&m, &drops, &mut series));
        // the outputs of every call, in this order; a new output is one more line
        let mut sinks: Vec<Arc<dyn CallSink>> = vec![metrics.clone()];
        sinks.extend(instruments.map(|i| Arc::new(i) as Arc<dyn CallSink>));
        sinks.push(Arc::new(log::LogLine));
        let live =
            (opts.recent_calls > 0).then(|| Arc::new(crate::live::Live::new(opts.recent_calls)));
        sinks.extend(live.clone().map(|l| l as Arc<dyn CallSink>));
        // last: the span ends once every other output has seen the call
        sinks.push(Arc::new(spans::EndSpan));
        let recorder = Recorder {
            metrics,
            pricing: opts.pricing,
            series,
            sinks,
            live,
            tracer: providers.tracer(),
            later: Arc::default(),
        };
        Ok(Telemetry {
            recorder: Arc::new(recorder),
            providers,
        })
    }
}
