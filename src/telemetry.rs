//! Turns finished calls into telemetry.
//!
//! The [`Recorder`] is the single place a [`Call`] goes when it ends: it
//! prices the call, then fans it out to every signal. Recording is a few
//! atomic updates, cheap enough for the request path; anything that exports
//! over the network happens elsewhere, off that path.

pub mod labels;
pub mod metrics;
pub mod names;

use crate::call::Call;
use crate::genai::pricing::{PriceTable, cost};

#[derive(Debug)]
pub struct Recorder {
    pub metrics: metrics::Metrics,
    pricing: PriceTable,
}

impl Recorder {
    pub fn new(pricing: PriceTable, max_label_values: usize) -> Recorder {
        Recorder {
            metrics: metrics::Metrics::new(max_label_values),
            pricing,
        }
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
        tracing::debug!(
            method = %call.method,
            path = %call.path,
            status = call.status,
            model = call.model(),
            input_tokens = call.usage().map(|u| u.input_tokens),
            output_tokens = call.usage().map(|u| u.output_tokens),
            cost_usd = call.cost,
            error_type = call.error_type(),
            duration_ms = call.duration.as_millis() as u64,
            "call finished"
        );
        self.metrics.record(&call);
    }
}
