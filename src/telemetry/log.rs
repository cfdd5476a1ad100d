//! One log line per finished call.
//!
//! A line per successful call would cost the hot path more than all the metrics
//! together (issue 6's profile): those go out at `debug`, failed calls at
//! `info`. The line carries the call's trace context, so OTLP logs link to the
//! span. Its fields from the wire are cut and escaped (see [`bounded`]).

use super::bounded;
use super::names::LOG_TARGET;
use super::sink::{CallSink, Recorded};
use crate::call::Call;

/// The per-call log line.
#[derive(Debug)]
pub struct LogLine;

enum Line {
    Forwarded,
    Failed,
    Finished,
}

impl CallSink for LogLine {
    fn record(&self, call: &Call, r: &Recorded) {
        let line = match (call.operation, &r.error_type) {
            (None, _) => Line::Forwarded,
            (Some(_), Some(_)) => Line::Failed,
            (Some(_), None) => Line::Finished,
        };
        let wanted = match line {
            Line::Failed => tracing::enabled!(target: LOG_TARGET, tracing::Level::INFO),
            Line::Forwarded | Line::Finished => {
                tracing::enabled!(target: LOG_TARGET, tracing::Level::DEBUG)
            }
        };
        if !wanted {
            return;
        }
        // logs of this call carry its trace context (OTLP logs read the current context)
        let _guard = call.trace.clone().map(|cx| cx.attach());
        let sc = &r.span;
        macro_rules! finished {
            ($level:expr) => {
                tracing::event!(
                    target: LOG_TARGET,
                    $level,
                    trace_id = %sc.trace_id(),
                    span_id = %sc.span_id(),
                    method = %bounded::for_log(&call.method),
                    path = %bounded::for_log(&call.path),
                    status = call.status,
                    model = call.model().map(bounded::for_log).as_deref(),
                    input_tokens = call.usage().map(|u| u.input_tokens),
                    output_tokens = call.usage().map(|u| u.output_tokens),
                    cost_usd = call.cost,
                    error_type = r.error_type.as_deref().map(bounded::for_log).as_deref(),
                    duration_ms = call.duration.as_millis() as u64,
                    "llm call finished"
                )
            };
        }
        match line {
            Line::Forwarded => tracing::debug!(
                target: LOG_TARGET,
                trace_id = %sc.trace_id(),
                span_id = %sc.span_id(),
                method = %bounded::for_log(&call.method),
                path = %bounded::for_log(&call.path),
                status = call.status,
                duration_ms = call.duration.as_millis() as u64,
                "request forwarded"
            ),
            Line::Failed => finished!(tracing::Level::INFO),
            Line::Finished => finished!(tracing::Level::DEBUG),
        }
    }
}
