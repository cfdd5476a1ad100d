//! Turns finished calls into telemetry.
//!
//! The [`Recorder`] is the single place a [`Call`] goes when it ends: it
//! prices the call, bounds its label values once, then fans it out to the
//! Prometheus registry, the OTel instruments and the call's span. Recording
//! is a few atomic updates and a queue push, cheap enough for the request
//! path; everything that touches the network runs in the export tasks.

pub mod export;
pub mod labels;
pub mod metrics;
pub mod names;
pub mod otel;
pub mod spans;

use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::trace::SdkTracer;

use crate::call::Call;
use crate::genai::pricing::{PriceTable, cost};
use names::signal;
use otel::{DropCounters, Instruments, OtelSettings, Providers};

#[derive(Debug)]
pub struct Recorder {
    pub metrics: metrics::Metrics,
    pricing: PriceTable,
    instruments: Option<Instruments>,
    tracer: SdkTracer,
    /// Record prompts and completions on spans.
    pub capture_content: bool,
}

impl Recorder {
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// USD for `usage`, by the lookup order of SPEC §7; `None` without a price.
    pub fn price(
        &self,
        response_model: Option<&str>,
        request_model: Option<&str>,
        usage: &crate::genai::response::Usage,
    ) -> Option<f64> {
        self.pricing
            .lookup(response_model, request_model)
            .map(|p| cost(p, usage))
    }

    /// Prices `call` and records it everywhere. Called exactly once per call.
    pub fn record(&self, mut call: Call) {
        if let Some(u) = call.usage() {
            call.cost = self
                .pricing
                .lookup(
                    call.response.model.as_deref(),
                    call.request.model.as_deref(),
                )
                .map(|p| cost(p, u));
        }
        let error_type = call.error_type();
        let series = self.metrics.series(&call, error_type.as_deref());
        // one span context for the exemplar and the log line; ids are formatted only where used
        let sc = call
            .trace
            .as_ref()
            .map_or_else(SpanContext::empty_context, |cx| {
                cx.span().span_context().clone()
            });
        // exemplars go on the duration histograms, which only model calls have
        let exemplar = (call.operation.is_some() && sc.is_sampled()).then(|| {
            vec![
                ("trace_id", sc.trace_id().to_string()),
                ("span_id", sc.span_id().to_string()),
            ]
        });
        self.metrics.record(&call, &series, exemplar);
        if let Some(i) = &self.instruments {
            i.record(&call, &series);
        }
        // A line per successful call would cost the hot path more than all the metrics
        // together (issue 6's profile): those go out at `debug`, failed calls at `info`.
        enum Line {
            Forwarded,
            Failed,
            Finished,
        }
        let line = match (call.operation, &error_type) {
            (None, _) => Line::Forwarded,
            (Some(_), Some(_)) => Line::Failed,
            (Some(_), None) => Line::Finished,
        };
        let wanted = match line {
            Line::Failed => tracing::enabled!(tracing::Level::INFO),
            Line::Forwarded | Line::Finished => tracing::enabled!(tracing::Level::DEBUG),
        };
        if wanted {
            // logs of this call carry its trace context (OTLP logs read the current context)
            let _guard = call.trace.clone().map(|cx| cx.attach());
            macro_rules! finished {
                ($level:expr) => {
                    tracing::event!(
                        $level,
                        trace_id = %sc.trace_id(),
                        span_id = %sc.span_id(),
                        method = %call.method,
                        path = %call.path,
                        status = call.status,
                        model = call.model(),
                        input_tokens = call.usage().map(|u| u.input_tokens),
                        output_tokens = call.usage().map(|u| u.output_tokens),
                        cost_usd = call.cost,
                        error_type = error_type.as_deref(),
                        duration_ms = call.duration.as_millis() as u64,
                        "llm call finished"
                    )
                };
            }
            match line {
                Line::Forwarded => tracing::debug!(
                    trace_id = %sc.trace_id(),
                    span_id = %sc.span_id(),
                    method = %call.method,
                    path = %call.path,
                    status = call.status,
                    duration_ms = call.duration.as_millis() as u64,
                    "request forwarded"
                ),
                Line::Failed => finished!(tracing::Level::INFO),
                Line::Finished => finished!(tracing::Level::DEBUG),
            }
        }
        if let Some(cx) = &call.trace {
            spans::finish(cx, &call);
        }
    }

    pub fn conversation_started(&self) {
        self.metrics.conversation_started();
        if let Some(i) = &self.instruments {
            i.conversation_started();
        }
    }

    pub fn agent_message(&self, kind: &'static str) {
        self.metrics.agent_message(kind);
        if let Some(i) = &self.instruments {
            i.agent_message(kind);
        }
    }
}

/// The recorder plus the providers behind it (kept for shutdown).
#[derive(Debug)]
pub struct Telemetry {
    pub recorder: std::sync::Arc<Recorder>,
    pub providers: Providers,
}

/// Options that decide how calls are recorded.
#[derive(Debug, Clone)]
pub struct RecorderOptions {
    pub pricing: PriceTable,
    pub max_label_values: usize,
    pub capture_content: bool,
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
        let metrics = metrics::Metrics::new(opts.max_label_values);
        let drops = DropCounters {
            traces: metrics.dropped_counter(signal::TRACES),
            metrics: metrics.dropped_counter(signal::METRICS),
            logs: metrics.dropped_counter(signal::LOGS),
        };
        let providers = make(&drops)?;
        let recorder = Recorder {
            metrics,
            pricing: opts.pricing,
            instruments: providers.meter().map(|m| Instruments::new(&m, &drops)),
            tracer: providers.tracer(),
            capture_content: opts.capture_content,
        };
        Ok(Telemetry {
            recorder: std::sync::Arc::new(recorder),
            providers,
        })
    }
}
