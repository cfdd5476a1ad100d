//! The one record of a finished call.
//!
//! Everything tokentap reports about a call — its span, the Prometheus
//! series, the OTel instruments, the log line — is derived from this record
//! by the telemetry sinks, so the different signals can never disagree. It
//! is started by the proxy's prepare stage (request facts, provider,
//! upstream), filled in as the response flows (status, usage, timings), and
//! handed over exactly once when the call ends.

use std::time::Duration;

use crate::genai::attribution::Attribution;
pub use crate::genai::content::Content;
use crate::genai::provider::Provider;
use crate::genai::request::{Operation, RequestFacts};
use crate::genai::response::{ResponseFacts, Usage};

/// How the exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was delivered to its end.
    Completed,
    /// The client went away before the end.
    Cancelled,
    /// The upstream was too slow (connect, first byte, or between bytes).
    Timeout,
    /// No connection, or the connection broke.
    ConnectionError,
    /// tokentap refused the request itself (e.g. body too large).
    Rejected(&'static str),
}

/// Why observing a call's bytes failed (the bytes were forwarded regardless).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseFailure {
    InvalidJson,
    InvalidSse,
    Decompression,
    TooLarge,
    /// A usage count or response fact of an unusable type or value (dropped on its own).
    InvalidUsage,
    /// A WebSocket stream whose framing broke (a Realtime session).
    InvalidWebSocket,
}

impl ParseFailure {
    pub fn label(self) -> &'static str {
        match self {
            ParseFailure::InvalidJson => "invalid_json",
            ParseFailure::InvalidSse => "invalid_sse",
            ParseFailure::Decompression => "decompression",
            ParseFailure::TooLarge => "too_large",
            ParseFailure::InvalidUsage => "invalid_usage",
            ParseFailure::InvalidWebSocket => "invalid_websocket",
        }
    }
}

/// A request extension the agent puts on its model calls: the conversation
/// they belong to (`gen_ai.conversation.id`).
#[derive(Debug, Clone)]
pub struct ConversationTag(pub String);

#[derive(Debug, Clone)]
pub struct Call {
    /// `None` for endpoints that are not model calls (they are forwarded but not metered).
    pub operation: Option<Operation>,
    pub request: RequestFacts,
    pub method: String,
    /// The client's path (no query).
    pub path: String,
    /// Who serves the call (the route's provider).
    pub provider: Provider,
    pub server_address: String,
    pub server_port: u16,
    /// HTTP status the client received, when a response started.
    pub status: Option<u16>,
    pub outcome: Outcome,
    pub response: ResponseFacts,
    /// The response was an event stream.
    pub streamed: bool,
    pub duration: Duration,
    /// When the call ended, if it is recorded later than that (a response body's end).
    pub ended: Option<std::time::SystemTime>,
    pub time_to_first_chunk: Option<Duration>,
    /// Seconds between consecutive output chunks (after the first).
    pub chunk_gaps: Vec<f32>,
    pub request_id: Option<String>,
    /// Failures observing the request or response, at most one per reason.
    pub parse_failures: Vec<ParseFailure>,
    /// tokentap asked the upstream for usage on the client's behalf.
    pub usage_injected: bool,
    /// USD, when usage and a price are both known.
    pub cost: Option<f64>,
    /// Time spent inside tokentap for this call, not waiting on the upstream or the
    /// client: preparing the upstream request, handling each chunk, finishing.
    pub overhead: Duration,
    /// The call's span (its context), when tracing is on.
    pub trace: Option<opentelemetry::Context>,
    /// Prompts and completions, only with content capture on.
    pub content: Option<Content>,
    /// Who made the call (project, key id, user, baggage).
    pub who: Attribution,
    /// The agent's conversation (`gen_ai.conversation.id`), on the agent's calls.
    pub conversation_id: Option<String>,
}

impl Call {
    /// Bytes the call holds besides its own size (its gaps, its captured text):
    /// what it adds while it waits to be recorded.
    pub fn held(&self) -> usize {
        let text = self.content.as_ref().map_or(0, |c| {
            [
                &c.system_instructions,
                &c.input_messages,
                &c.output_messages,
            ]
            .iter()
            .map(|t| t.as_ref().map_or(0, String::capacity))
            .sum()
        });
        self.chunk_gaps.capacity() * std::mem::size_of::<f32>() + text
    }

    /// A call that has just arrived: nothing observed yet.
    pub fn new(
        operation: Option<Operation>,
        request: RequestFacts,
        method: String,
        path: String,
        provider: Provider,
        server_address: String,
        server_port: u16,
    ) -> Call {
        Call {
            operation,
            request,
            method,
            path,
            provider,
            server_address,
            server_port,
            status: None,
            outcome: Outcome::Completed,
            response: ResponseFacts::default(),
            streamed: false,
            duration: Duration::ZERO,
            ended: None,
            time_to_first_chunk: None,
            chunk_gaps: Vec::new(),
            request_id: None,
            parse_failures: Vec::new(),
            usage_injected: false,
            cost: None,
            overhead: Duration::ZERO,
            trace: None,
            content: None,
            who: Attribution::default(),
            conversation_id: None,
        }
    }

    pub fn usage(&self) -> Option<&Usage> {
        self.response.usage.as_ref()
    }

    /// The model the client asked for, else the one that answered.
    pub fn model(&self) -> Option<&str> {
        self.request
            .model
            .as_deref()
            .or(self.response.model.as_deref())
    }

    /// `error.type`, or `None` when the call succeeded.
    pub fn error_type(&self) -> Option<String> {
        match self.outcome {
            Outcome::Cancelled => return Some("cancelled".to_owned()),
            Outcome::Timeout => return Some("timeout".to_owned()),
            Outcome::ConnectionError => return Some("connection_error".to_owned()),
            Outcome::Rejected(code) => return Some(code.to_owned()),
            Outcome::Completed => {}
        }
        match self.status {
            Some(s) if s >= 400 => Some(
                self.response
                    .error_type
                    .clone()
                    .unwrap_or_else(|| s.to_string()),
            ),
            _ => self.response.error_type.clone(),
        }
    }

    pub fn note_parse_failure(&mut self, f: ParseFailure) {
        if !self.parse_failures.contains(&f) {
            self.parse_failures.push(f);
        }
    }
}
