//! The outputs a finished call goes to.
//!
//! Like the OTel SDK's span processors, each output (Prometheus, OTel
//! instruments, the log line, the live view, the span) is one
//! [`CallSink`] registered when telemetry starts and invoked in that order.
//! What every output needs and is costly to work out (the bounded labels, the
//! error type, the span context, the span attributes) is computed once, in
//! [`Recorded`].

use std::cell::RefCell;
use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanContext;

use super::series::Series;
use crate::call::Call;

/// What the recorder worked out once for a priced, finished call.
#[derive(Debug)]
pub struct Recorded {
    /// The call's bounded labels, and each output's per-series slot.
    pub series: Arc<Series>,
    /// `call.error_type()` (raw; the bounded one is in the series' labels).
    pub error_type: Option<String>,
    /// The call's span context, empty without a trace; ids are formatted only where used.
    pub span: SpanContext,
    /// The call's span attributes, built at most once, by the first output that
    /// needs them (`spans::shared_attributes`): the live view reads them, the
    /// span (the last output) takes them.
    pub attributes: RefCell<Option<Vec<KeyValue>>>,
}

/// One output of finished calls. Recording runs on a tokio worker (the recording
/// task of `later`, or in place): a few atomic updates or a queue push, never I/O.
pub trait CallSink: Send + Sync + std::fmt::Debug {
    /// Records one finished call; called exactly once per call.
    fn record(&self, call: &Call, recorded: &Recorded);

    /// The agent started a conversation.
    fn conversation_started(&self) {}

    /// The agent handled one message of `kind` (`user` or `assistant`).
    fn agent_message(&self, _kind: &'static str) {}
}
