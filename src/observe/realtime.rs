//! Watches a Realtime session (a WebSocket tunnel) and meters each model turn.
//!
//! A session has no response body and no natural end: it is one long
//! connection carrying many turns. So the session gets one span lasting the
//! connection (started before the `101` goes back, so its context can go
//! upstream in `traceparent` and back in `traceresponse`), and each
//! `response.done` becomes one [`Call`], recorded like any HTTP call: metrics,
//! cost with audio rates, and a child span `chat {model}`.
//!
//! The tunnel forwards bytes itself and hands this observer copies, split
//! anywhere; nothing here can delay or change them. What is kept is bounded
//! per session: the WebSocket readers' one message, the summed usage, and the
//! timings of the current turn — never the conversation. Anything unreadable
//! (broken framing, a message over the cap, text that is not JSON) is counted
//! in `tokentap_parse_errors_total`; broken framing ends observation of the
//! session while the tunnel goes on.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::call::{Call, ParseFailure};
use crate::genai::attribution::Attribution;
use crate::genai::provider::Provider;
use crate::genai::query;
use crate::genai::realtime::{Event, ResponseDone, add_usage};
use crate::genai::realtime_shape::DeltaShapes;
use crate::genai::request::{Operation, RequestFacts};
use crate::genai::response::{ResponseFacts, Usage};
use crate::genai::shape::Miss;
use crate::telemetry::Recorder;
use crate::telemetry::names::{attr, value};
use crate::telemetry::spans;
use crate::websocket::{Deflate, Message, Reader};

/// Largest server or client message read (after inflation): a `response.done`
/// repeats the turn's whole output, transcripts included.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Most gaps between output deltas kept for one turn.
const MAX_GAPS: usize = 4096;
/// The operation a turn is recorded as (`gen_ai.operation.name` `chat`,
/// `openai.api.type` `realtime`).
const TURN: Operation = Operation::Realtime;

/// Whether `path` is a Realtime endpoint (`/v1/realtime`, Azure's `/openai/realtime`).
pub fn is_realtime(path: &str) -> bool {
    path.trim_end_matches('/').ends_with("/realtime")
}

/// The model a Realtime URL names: `model=`, else Azure's `deployment=`.
pub fn model_from_query(query: Option<&str>) -> Option<String> {
    let query = query?;
    let find = |key| query::param(query, key).filter(|v| !v.is_empty());
    find("model").or_else(|| find("deployment"))
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// A close frame, or either side closed the connection.
    Closed,
    /// tokentap is shutting down (both sides got `1001`).
    Shutdown,
    /// The connection broke (`error.type` is this).
    Failed(&'static str),
    /// The upstream answered the upgrade with this status instead of `101`.
    Refused(u16),
}

/// The turn under way: only its timings.
#[derive(Debug, Default)]
struct Turn {
    /// The client's `response.create`, or the server's `response.created`.
    started: Option<(Instant, SystemTime)>,
    first_delta: Option<Instant>,
    last_delta: Option<Instant>,
    gaps: Vec<f32>,
}

/// Observes one Realtime session; see the module docs.
pub struct RealtimeObserver {
    recorder: Arc<Recorder>,
    cx: Context,
    provider: Provider,
    server_address: String,
    server_port: u16,
    path: String,
    request_model: Option<String>,
    session_model: Option<String>,
    /// `None` before the `101`, and once observation stopped.
    server: Option<Reader>,
    client: Option<Reader>,
    upgraded: bool,
    /// The session's repeated delta events, read without the parser.
    deltas: DeltaShapes,
    turn: Turn,
    /// When the last turn ended (a turn without a start starts here).
    idle_since: (Instant, SystemTime),
    usage: Option<Usage>,
    /// The turns' summed cost, when any was priced.
    cost: Option<f64>,
    /// Failures not yet counted (each reason once per recorded call).
    failures: Vec<ParseFailure>,
    /// Time spent observing since the last recorded call.
    overhead: Duration,
    ended: bool,
    /// Who opened the session (from the upgrade request): on every turn.
    who: Attribution,
}

impl std::fmt::Debug for RealtimeObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeObserver")
            .field("path", &self.path)
            .field("request_model", &self.request_model)
            .field("session_model", &self.session_model)
            .field("usage", &self.usage)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl RealtimeObserver {
    /// Starts the session span under `parent` (the caller's trace context) as
    /// the upgrade request arrives. `provider`, `server_address` and
    /// `server_port` are the route's; `path` and `query` the client's URL.
    pub fn new(
        recorder: Arc<Recorder>,
        parent: &Context,
        provider: Provider,
        server_address: String,
        server_port: u16,
        path: &str,
        query: Option<&str>,
    ) -> RealtimeObserver {
        let request_model = model_from_query(query);
        let start = SystemTime::now();
        let tracer = recorder.tracer();
        let span = tracer
            .span_builder(span_name(request_model.as_deref()))
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .start_with_context(tracer, parent);
        RealtimeObserver {
            cx: parent.with_span(span),
            recorder,
            provider,
            server_address,
            server_port,
            path: path.to_owned(),
            request_model,
            session_model: None,
            server: None,
            client: None,
            upgraded: false,
            deltas: DeltaShapes::default(),
            turn: Turn::default(),
            idle_since: (Instant::now(), start),
            usage: None,
            cost: None,
            failures: Vec::new(),
            overhead: Duration::ZERO,
            ended: false,
            who: Attribution::default(),
        }
    }

    /// Who opened the session: recorded on the session span and every turn.
    pub fn with_attribution(mut self, who: Attribution) -> RealtimeObserver {
        self.who = who;
        self
    }

    /// The session span's context: for `traceparent` upstream and `traceresponse`.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// The upstream answered `101`; `extensions` is its `Sec-WebSocket-Extensions`.
    pub fn upgraded(&mut self, extensions: Option<&str>) {
        let ext = extensions.unwrap_or("");
        self.server = Some(Reader::new(MAX_MESSAGE, Deflate::server_to_client(ext)));
        self.client = Some(Reader::new(MAX_MESSAGE, Deflate::client_to_server(ext)));
        self.upgraded = true;
    }

    /// A copy of bytes the server sent the client.
    pub fn server_bytes(&mut self, bytes: &[u8]) {
        if self.ended {
            return;
        }
        if !self.upgraded {
            self.upgraded(None);
        }
        let began = Instant::now();
        let Some(mut reader) = self.server.take() else {
            return;
        };
        // each message is read as it completes: at most one is held at a time; all
        // the messages of one read arrived when it was handed over (one clock read)
        reader.push(bytes, &mut |m| self.server_message(m, began));
        // observation stops for good once the framing broke
        if !reader.is_broken() {
            self.server = Some(reader);
        }
        self.overhead += began.elapsed();
    }

    /// A copy of bytes the client sent the server: only `response.create` is
    /// looked for (a turn's start, for time to first chunk).
    pub fn client_bytes(&mut self, bytes: &[u8]) {
        if self.ended {
            return;
        }
        if !self.upgraded {
            self.upgraded(None);
        }
        let began = Instant::now();
        let Some(mut reader) = self.client.take() else {
            return;
        };
        let mut create = false;
        reader.push(bytes, &mut |m| {
            if let Message::Text(t) = m {
                create |= asks_for_response(&t);
            }
        });
        if !reader.is_broken() {
            self.client = Some(reader);
        }
        if create && self.turn.started.is_none() {
            // when the read was handed over, as for the server's events
            self.turn.started = Some((began, SystemTime::now()));
        }
        self.overhead += began.elapsed();
    }

    /// The session ended: ends its span with the summed usage and cost. Later calls do nothing.
    pub fn closed(&mut self, end: SessionEnd) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.server = None;
        self.client = None;
        if !self.failures.is_empty() {
            // counted on a forwarded (unmetered) call: no turn is left to carry them
            let mut call = self.call(None);
            call.parse_failures = std::mem::take(&mut self.failures);
            self.recorder.record_soon(call);
        }
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        span.set_attributes(self.session_attributes(end));
        if let Some(e) = end_error(end) {
            span.set_status(Status::error(e));
        }
        span.end();
    }

    fn note(&mut self, f: ParseFailure) {
        if !self.failures.contains(&f) {
            self.failures.push(f);
        }
    }

    fn server_message(&mut self, m: Message<'_>, now: Instant) {
        let text = match m {
            Message::Text(t) => t,
            Message::Binary(_) | Message::Close(_) => return,
            Message::TooLarge => return self.note(ParseFailure::TooLarge),
            Message::Broken(why) => return self.note(broken(why)),
        };
        // a delta shaped as one before is known without reading it
        let event = match self.deltas.read(&text) {
            Ok(e) => e,
            Err(miss) => match Event::parse(&text) {
                Ok(e) => {
                    if miss == Miss::Other {
                        self.deltas.learn(&text, &e);
                    }
                    e
                }
                Err(_) => return self.note(ParseFailure::InvalidJson),
            },
        };
        drop(text);
        match event {
            Event::Session { model: Some(m) } => {
                if self.request_model.is_none() && self.session_model.as_deref() != Some(&m) {
                    self.cx.span().update_name(span_name(Some(&m)));
                }
                self.session_model = Some(m);
            }
            Event::ResponseCreated => {
                self.turn
                    .started
                    .get_or_insert_with(|| (now, SystemTime::now()));
            }
            Event::OutputDelta => {
                let t = &mut self.turn;
                t.first_delta.get_or_insert(now);
                if let Some(prev) = t.last_delta.replace(now) {
                    if t.gaps.len() < MAX_GAPS {
                        t.gaps.push(now.duration_since(prev).as_secs_f32());
                    }
                }
            }
            Event::ResponseDone(done) => self.turn_done(*done, now),
            Event::Session { model: None } | Event::Error { .. } | Event::Other => {}
        }
    }

    fn turn_done(&mut self, done: ResponseDone, now: Instant) {
        let turn = std::mem::take(&mut self.turn);
        let (started, start_time) = turn.started.unwrap_or(self.idle_since);
        self.idle_since = (now, SystemTime::now());
        if done.invalid {
            self.note(ParseFailure::InvalidUsage);
        }
        if let Some(u) = &done.usage {
            add_usage(self.usage.get_or_insert_with(Usage::default), u);
        }
        let mut call = self.call(Some(TURN));
        call.streamed = true;
        call.duration = now.duration_since(started);
        call.time_to_first_chunk = turn.first_delta.map(|t| t.duration_since(started));
        call.chunk_gaps = turn.gaps;
        call.response = ResponseFacts {
            id: done.id,
            model: self.session_model.clone(),
            finish_reasons: done.finish_reasons,
            usage: done.usage,
            error_type: done.error_type,
            invalid_usage: done.invalid,
            ..ResponseFacts::default()
        };
        call.parse_failures = std::mem::take(&mut self.failures);
        call.overhead = std::mem::take(&mut self.overhead);
        if let Some(c) = self.recorder.price(&call) {
            *self.cost.get_or_insert(0.0) += c;
        }
        call.trace = Some(spans::start(
            self.recorder.tracer(),
            &self.cx,
            &call,
            start_time,
        ));
        self.recorder.record_soon(call); // after the relay's turn: it is on the frames' path
    }

    /// A call of this session: a turn, or (`None`) the session's own leftovers.
    fn call(&self, op: Option<Operation>) -> Call {
        let mut call = Call::new(
            op,
            RequestFacts {
                model: self
                    .request_model
                    .clone()
                    .or_else(|| self.session_model.clone()),
                stream: true,
                ..RequestFacts::default()
            },
            "GET".to_owned(),
            self.path.clone(),
            self.provider.clone(),
            self.server_address.clone(),
            self.server_port,
        );
        call.status = Some(101);
        call.who = self.who.clone();
        call
    }

    fn session_attributes(&self, end: SessionEnd) -> Vec<KeyValue> {
        let mut a = vec![
            KeyValue::new(attr::GEN_AI_PROVIDER_NAME, self.provider.to_string()),
            KeyValue::new(attr::OPENAI_API_TYPE, value::API_TYPE_REALTIME),
            KeyValue::new(attr::SERVER_ADDRESS, self.server_address.clone()),
            KeyValue::new(attr::SERVER_PORT, i64::from(self.server_port)),
            KeyValue::new(attr::HTTP_REQUEST_METHOD, "GET"),
            KeyValue::new(attr::URL_PATH, self.path.clone()),
        ];
        let cut = |s: &str| crate::telemetry::bounded::cut(s).into_owned();
        if let Some(m) = &self.request_model {
            a.push(KeyValue::new(attr::GEN_AI_REQUEST_MODEL, cut(m)));
        }
        if let Some(m) = &self.session_model {
            a.push(KeyValue::new(attr::GEN_AI_RESPONSE_MODEL, cut(m)));
        }
        let status = match end {
            SessionEnd::Refused(s) => Some(s),
            _ if self.upgraded => Some(101),
            _ => None,
        };
        if let Some(s) = status {
            a.push(KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(s)));
        }
        if let Some(u) = &self.usage {
            a.push(KeyValue::new(
                attr::GEN_AI_USAGE_INPUT_TOKENS,
                u.input_tokens as i64,
            ));
            a.push(KeyValue::new(
                attr::GEN_AI_USAGE_OUTPUT_TOKENS,
                u.output_tokens as i64,
            ));
            let more = [
                (
                    attr::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
                    u.cached_input_tokens,
                ),
                (attr::OPENAI_USAGE_INPUT_AUDIO_TOKENS, u.details.input_audio),
                (
                    attr::OPENAI_USAGE_OUTPUT_AUDIO_TOKENS,
                    u.details.output_audio,
                ),
            ];
            a.extend(
                more.into_iter()
                    .filter_map(|(k, v)| Some(KeyValue::new(k, v? as i64))),
            );
        }
        if let Some(c) = self.cost {
            a.push(KeyValue::new(attr::LLM_COST_USD, c));
        }
        if let Some(e) = end_error(end) {
            a.push(KeyValue::new(attr::ERROR_TYPE, e));
        }
        spans::attribution(&mut a, &self.who, None);
        a
    }
}

impl Drop for RealtimeObserver {
    /// A session dropped without `closed` still ends its span.
    fn drop(&mut self) {
        self.closed(SessionEnd::Failed("connection_error"));
    }
}

fn span_name(model: Option<&str>) -> String {
    match model {
        Some(m) => format!(
            "{} {}",
            value::API_TYPE_REALTIME,
            crate::telemetry::bounded::cut(m)
        ),
        None => value::API_TYPE_REALTIME.to_owned(),
    }
}

fn end_error(end: SessionEnd) -> Option<String> {
    match end {
        SessionEnd::Closed | SessionEnd::Shutdown => None,
        SessionEnd::Failed(e) => Some(e.to_owned()),
        SessionEnd::Refused(s) => Some(s.to_string()),
    }
}

/// The parse failure a broken WebSocket stream counts as.
fn broken(why: &str) -> ParseFailure {
    if why.contains("too large") {
        ParseFailure::TooLarge
    } else if why.contains("compress") || why.contains("inflat") {
        ParseFailure::Decompression
    } else {
        ParseFailure::InvalidWebSocket
    }
}

/// Whether a client message is a `response.create` (found without parsing
/// the client's audio: only a message naming it is parsed).
fn asks_for_response(text: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"response.create";
    if !text.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Kind<'_>>(text)
        .ok()
        .and_then(|k| k.kind)
        .is_some_and(|k| k == "response.create")
}

#[cfg(test)]
#[path = "realtime_tests.rs"]
mod tests;
