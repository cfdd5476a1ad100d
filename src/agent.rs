//! The lab's conversation agent, on the proxy's own pipeline.
//!
//! The lab's users run a small chat agent and watch its telemetry; hosting
//! it here means the lab needs one process and no Python. Its model calls
//! go through [`Proxy::forward_bytes`] — the same forwarding, tap, span and
//! metrics as proxied traffic — so what the agent shows is exactly what
//! users get for their own apps. Conversations live in memory with bounds:
//! least recently used ones are evicted, long histories lose their oldest
//! turns, and calls on one conversation are serialised by its lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::{Config, Secret};
use crate::genai::pricing::{PriceTable, cost};
use crate::genai::request::Operation;
use crate::genai::response::ResponseFacts;
use crate::genai::sse::SseDecoder;
use crate::genai::stream::StreamAccumulator;
use crate::proxy::{Proxy, ResponseBody, Timing, full_response};
use crate::tap::BoxError;
use crate::telemetry::Recorder;
use crate::telemetry::spans;

/// The conversation used when a request names none (the lab's single one).
pub const DEFAULT_CONVERSATION: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    role: &'static str,
    content: String,
}

#[derive(Debug, Default)]
struct Conversation {
    history: Vec<Message>,
}

struct Slot {
    conv: Arc<tokio::sync::Mutex<Conversation>>,
    last_used: u64,
}

/// Conversations by id, least recently used evicted past `max`.
struct Store {
    max: usize,
    clock: u64,
    slots: HashMap<String, Slot>,
}

impl Store {
    fn get(&mut self, id: &str) -> Arc<tokio::sync::Mutex<Conversation>> {
        self.clock += 1;
        let now = self.clock;
        if let Some(s) = self.slots.get_mut(id) {
            s.last_used = now;
            return s.conv.clone();
        }
        if self.slots.len() >= self.max {
            if let Some(oldest) = self
                .slots
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            {
                self.slots.remove(&oldest);
            }
        }
        let conv = Arc::new(tokio::sync::Mutex::new(Conversation::default()));
        self.slots.insert(
            id.to_owned(),
            Slot {
                conv: conv.clone(),
                last_used: now,
            },
        );
        conv
    }
}

/// The agent's routes (SPEC §6); every other request is the proxy's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgentRoute {
    Chat,
    NewConversation,
    Summary,
}

impl AgentRoute {
    /// The agent route `method` and `path` name, if any.
    pub(crate) fn recognise(method: &Method, path: &str) -> Option<AgentRoute> {
        match (method, path) {
            (&Method::POST, "/chat") => Some(AgentRoute::Chat),
            (&Method::POST, "/new-conversation") => Some(AgentRoute::NewConversation),
            (&Method::GET, "/conversation-summary") => Some(AgentRoute::Summary),
            _ => None,
        }
    }

    fn path(self) -> &'static str {
        match self {
            AgentRoute::Chat => "/chat",
            AgentRoute::NewConversation => "/new-conversation",
            AgentRoute::Summary => "/conversation-summary",
        }
    }

    /// The lab's name for the route's SERVER span.
    fn span_name(self) -> &'static str {
        match self {
            AgentRoute::Chat => "api.chat",
            AgentRoute::NewConversation => "api.new_conversation",
            AgentRoute::Summary => "api.conversation_summary",
        }
    }
}

pub struct Agent {
    store: Mutex<Store>,
    model: String,
    system_prompt: String,
    max_history: usize,
    key: Option<Secret>,
    demo: bool,
    /// Prices the lab's `metrics.cost_usd` (the same table the recorder prices calls with).
    pricing: Arc<PriceTable>,
}

#[derive(Deserialize)]
struct ChatBody {
    message: Value,
    model: Option<String>,
    conversation_id: Option<String>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize, Default)]
struct NewConversationBody {
    conversation_id: Option<String>,
}

/// The `metrics` object of a `/chat` answer (the lab's shape).
#[derive(Debug, Clone, serde::Serialize)]
struct CallMetrics {
    duration_seconds: f64,
    tokens_used: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
    model: String,
}

fn json_response(status: StatusCode, v: &Value) -> Response<ResponseBody> {
    full_response(status, "application/json", Bytes::from(v.to_string()))
}

fn detail(status: StatusCode, msg: impl Into<String>) -> Response<ResponseBody> {
    json_response(status, &json!({ "detail": msg.into() }))
}

/// FastAPI's shape for a request it could not validate.
fn unprocessable(kind: &str, loc: Value, msg: &str, input: Value) -> Response<ResponseBody> {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"detail": [{"type": kind, "loc": loc, "msg": msg, "input": input}]}),
    )
}

impl Agent {
    pub(crate) fn new(cfg: &Config, pricing: Arc<PriceTable>) -> Agent {
        Agent {
            store: Mutex::new(Store {
                max: cfg.agent_max_conversations,
                clock: 0,
                slots: HashMap::new(),
            }),
            model: cfg.agent_model.clone(),
            system_prompt: cfg.agent_system_prompt.clone(),
            max_history: cfg.agent_max_history,
            key: cfg.api_key.clone(),
            demo: cfg.demo,
            pricing,
        }
    }

    fn conversation(&self, id: &str) -> Arc<tokio::sync::Mutex<Conversation>> {
        match self.store.lock() {
            Ok(mut s) => s.get(id),
            Err(poisoned) => poisoned.into_inner().get(id),
        }
    }

    /// Answers one of the agent's routes.
    pub(crate) async fn handle(
        &self,
        route: AgentRoute,
        proxy: &Proxy,
        recorder: &Arc<Recorder>,
        req: Request<hyper::body::Incoming>,
    ) -> Response<ResponseBody> {
        let parent = spans::extract(req.headers());
        let name = route.span_name();
        let tracer = recorder.tracer();
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.route", route.path()),
                KeyValue::new("http.request.method", req.method().to_string()),
            ])
            .start_with_context(tracer, &parent);
        let cx = parent.with_span(span);
        let query = req.uri().query().map(str::to_owned);
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return detail(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the body: {e}"),
                );
            }
        };
        let mut resp = match route {
            AgentRoute::Chat => self.chat(proxy, recorder, &cx, &body).await,
            AgentRoute::NewConversation => self.new_conversation(recorder, &body).await,
            AgentRoute::Summary => self.summary(query.as_deref()).await,
        };
        let span = cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(resp.status().as_u16()),
        ));
        if resp.status().is_server_error() {
            span.set_status(Status::error(resp.status().to_string()));
        }
        if let Some(v) = spans::traceresponse(&cx) {
            resp.headers_mut().insert(crate::proxy::TRACERESPONSE, v);
        }
        if resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "text/event-stream")
        {
            // a streamed answer ends its span when the stream ends (see `stream_chat`)
        } else {
            span.end();
        }
        resp
    }

    async fn new_conversation(&self, recorder: &Recorder, body: &[u8]) -> Response<ResponseBody> {
        let parsed: NewConversationBody = if body.iter().all(u8::is_ascii_whitespace) {
            NewConversationBody::default()
        } else {
            match serde_json::from_slice(body) {
                Ok(b) => b,
                Err(e) => {
                    return unprocessable(
                        "json_invalid",
                        json!(["body", 0]),
                        "JSON decode error",
                        json!(e.to_string()),
                    );
                }
            }
        };
        let id = parsed
            .conversation_id
            .unwrap_or_else(|| DEFAULT_CONVERSATION.to_owned());
        // waits for a chat in progress on the same conversation
        self.conversation(&id).lock().await.history.clear();
        recorder.conversation_started();
        tracing::info!(conversation_id = %id, "new conversation");
        json_response(
            StatusCode::OK,
            &json!({"message": "New conversation started", "conversation_id": id}),
        )
    }

    async fn summary(&self, query: Option<&str>) -> Response<ResponseBody> {
        let id = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("conversation_id="))
            .map(percent_decode)
            .unwrap_or_else(|| DEFAULT_CONVERSATION.to_owned());
        let conv = self.conversation(&id);
        let c = conv.lock().await;
        let users = c.history.iter().filter(|m| m.role == "user").count();
        let assistants = c.history.iter().filter(|m| m.role == "assistant").count();
        json_response(
            StatusCode::OK,
            &json!({
                "total_messages": c.history.len(),
                "user_messages": users,
                "assistant_messages": assistants,
                "conversation_turns": c.history.len() / 2,
            }),
        )
    }

    async fn chat(
        &self,
        proxy: &Proxy,
        recorder: &Arc<Recorder>,
        cx: &Context,
        body: &[u8],
    ) -> Response<ResponseBody> {
        let raw: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return unprocessable(
                    "json_invalid",
                    json!(["body", e.column()]),
                    "JSON decode error",
                    json!({}),
                );
            }
        };
        let parsed: ChatBody = match serde_json::from_value(raw.clone()) {
            Ok(b) => b,
            Err(_) if raw.get("message").is_none() => {
                return unprocessable("missing", json!(["body", "message"]), "Field required", raw);
            }
            Err(e) => {
                return unprocessable(
                    "model_attributes_type",
                    json!(["body"]),
                    &e.to_string(),
                    raw,
                );
            }
        };
        let Value::String(message) = parsed.message else {
            return unprocessable(
                "string_type",
                json!(["body", "message"]),
                "Input should be a valid string",
                parsed.message,
            );
        };
        if self.key.is_none() && !self.demo {
            return detail(
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent needs OPENAI_API_KEY: set it in the environment or .env (or run with --demo)",
            );
        }
        let model = parsed.model.unwrap_or_else(|| self.model.clone());
        let id = parsed
            .conversation_id
            .unwrap_or_else(|| DEFAULT_CONVERSATION.to_owned());
        cx.span()
            .set_attribute(KeyValue::new("request.model", model.clone()));
        let conv = self.conversation(&id);
        let guard = conv.clone().lock_owned().await;

        let tracer = recorder.tracer();
        let turn = guard.history.len() / 2 + 1;
        let span = tracer
            .span_builder("agent.process_message")
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("agent.message.length", message.chars().count() as i64),
                KeyValue::new("agent.conversation.turn", turn as i64),
                KeyValue::new("agent.conversation.id", id.clone()),
            ])
            .start_with_context(tracer, cx);
        let pcx = cx.with_span(span);
        tracing::info!(conversation_id = %id, turn, length = message.len(), "processing message");

        let mut messages = vec![json!({"role": "system", "content": self.system_prompt})];
        messages.extend(
            guard
                .history
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content})),
        );
        messages.push(json!({"role": "user", "content": message}));
        let mut request = json!({"model": model, "messages": messages});
        if parsed.stream {
            request["stream"] = json!(true);
            request["stream_options"] = json!({"include_usage": true});
        }
        let started = Instant::now();
        let upstream = proxy.forward_bytes(
            self.upstream_parts(),
            Bytes::from(request.to_string()),
            Timing::now(),
            &pcx,
        );
        if parsed.stream {
            return self
                .stream_chat(
                    recorder,
                    upstream,
                    guard,
                    message,
                    model,
                    started,
                    cx.clone(),
                    pcx.clone(),
                )
                .await;
        }
        let resp = upstream.await;
        let status = resp.status();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return self.failed(&pcx, format!("upstream stream broke: {e}")),
        };
        let v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return self.failed(
                    &pcx,
                    format!("upstream answered {status} with a body that is not JSON"),
                );
            }
        };
        if !status.is_success() {
            let msg = v["error"]["message"]
                .as_str()
                .unwrap_or("upstream error")
                .to_owned();
            return self.failed(&pcx, format!("upstream answered {status}: {msg}"));
        }
        let Some(answer) = v["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_owned)
        else {
            return self.failed(&pcx, "upstream answer has no message content");
        };
        let facts = ResponseFacts::from_value(Operation::ChatCompletions, &v);
        let metrics = call_metrics(&self.pricing, &facts, &model, started);
        let mut guard = guard;
        let turn = commit(
            recorder,
            &mut guard,
            self.max_history,
            message,
            answer.clone(),
        );
        self.end_process_span(&pcx, &answer, guard.history.len());
        json_response(
            StatusCode::OK,
            &json!({"response": answer, "metrics": metrics, "conversation_turn": turn}),
        )
    }

    /// The request the agent sends upstream (through the proxy's pipeline).
    fn upstream_parts(&self) -> http::request::Parts {
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = http::Uri::from_static("/v1/chat/completions");
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(k) = &self.key {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", k.expose())) {
                v.set_sensitive(true);
                h.insert(header::AUTHORIZATION, v);
            }
        }
        req.into_parts().0
    }

    fn end_process_span(&self, pcx: &Context, answer: &str, total: usize) {
        let span = pcx.span();
        span.set_attribute(KeyValue::new(
            "agent.response.length",
            answer.chars().count() as i64,
        ));
        span.set_attribute(KeyValue::new(
            "agent.conversation.total_messages",
            total as i64,
        ));
        span.end();
    }

    fn failed(&self, pcx: &Context, msg: impl Into<String>) -> Response<ResponseBody> {
        let msg = msg.into();
        let span = pcx.span();
        span.set_attribute(KeyValue::new("error.type", "upstream_error"));
        span.set_status(Status::error(msg.clone()));
        span.end();
        tracing::warn!(error = %msg, "agent call failed; conversation unchanged");
        detail(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }

    /// `"stream": true`: deltas as server-sent events, then a `done` event with the metrics.
    #[allow(clippy::too_many_arguments)]
    async fn stream_chat(
        &self,
        recorder: &Arc<Recorder>,
        upstream: impl Future<Output = Response<ResponseBody>>,
        mut guard: tokio::sync::OwnedMutexGuard<Conversation>,
        message: String,
        model: String,
        started: Instant,
        server_cx: Context,
        pcx: Context,
    ) -> Response<ResponseBody> {
        let resp = upstream.await;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let msg = v["error"]["message"]
                .as_str()
                .unwrap_or("upstream error")
                .to_owned();
            return self.failed(&pcx, format!("upstream answered {status}: {msg}"));
        }
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let rec = recorder.clone();
        let pricing = self.pricing.clone();
        let max_history = self.max_history;
        tokio::spawn(async move {
            let mut body = resp.into_body();
            let mut decoder = SseDecoder::new();
            let mut acc = StreamAccumulator::new(Operation::ChatCompletions);
            let mut text = String::new();
            let mut client_gone = false;
            let mut broken = None;
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        broken = Some(e.to_string());
                        break;
                    }
                };
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                let mut deltas = Vec::new();
                decoder.feed(data, |e| {
                    acc.on_event(e.event, e.data);
                    if let Ok(v) = serde_json::from_slice::<Value>(e.data) {
                        if let Some(d) = v["choices"][0]["delta"]["content"].as_str() {
                            if !d.is_empty() {
                                deltas.push(d.to_owned());
                            }
                        }
                    }
                });
                for d in deltas {
                    text.push_str(&d);
                    let ev = format!("data: {}\n\n", json!({"delta": d}));
                    if tx.send(Bytes::from(ev)).await.is_err() {
                        client_gone = true;
                        break;
                    }
                }
                if client_gone {
                    break;
                }
            }
            let span = pcx.span();
            if client_gone || broken.is_some() || !acc.is_done() {
                let why = broken.unwrap_or_else(|| {
                    if client_gone {
                        "cancelled".into()
                    } else {
                        "stream ended early".into()
                    }
                });
                span.set_status(Status::error(why.clone()));
                span.set_attribute(KeyValue::new(
                    "error.type",
                    if client_gone {
                        "cancelled"
                    } else {
                        "upstream_error"
                    },
                ));
                span.end();
                let _ = tx
                    .send(Bytes::from(format!(
                        "event: error\ndata: {}\n\n",
                        json!({"detail": why})
                    )))
                    .await;
                server_cx.span().end();
                return;
            }
            let facts = acc.facts();
            let metrics = call_metrics(&pricing, &facts, &model, started);
            let turn = commit(&rec, &mut guard, max_history, message, text.clone());
            span.set_attribute(KeyValue::new(
                "agent.response.length",
                text.chars().count() as i64,
            ));
            span.set_attribute(KeyValue::new(
                "agent.conversation.total_messages",
                guard.history.len() as i64,
            ));
            span.end();
            drop(guard);
            let done = json!({"response": text, "metrics": metrics, "conversation_turn": turn});
            let _ = tx
                .send(Bytes::from(format!("event: done\ndata: {done}\n\n")))
                .await;
            server_cx.span().end();
        });
        let body = http_body_util::StreamBody::new(ChannelStream(rx)).boxed_unsync();
        let mut r = Response::new(body);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    }
}

/// The lab's `metrics` object for a finished model call.
fn call_metrics(
    pricing: &PriceTable,
    facts: &ResponseFacts,
    model: &str,
    started: Instant,
) -> CallMetrics {
    let u = facts.usage.unwrap_or_default();
    CallMetrics {
        duration_seconds: started.elapsed().as_secs_f64(),
        tokens_used: u.total_tokens,
        prompt_tokens: u.input_tokens,
        completion_tokens: u.output_tokens,
        cost_usd: facts
            .usage
            .and_then(|u| {
                pricing
                    .lookup(facts.model.as_deref(), Some(model))
                    .map(|p| cost(p, &u))
            })
            .unwrap_or(0.0),
        model: model.to_owned(),
    }
}

/// Appends a turn, trims the oldest turns past `max_history` messages, counts
/// the messages; returns the turn number.
fn commit(
    recorder: &Recorder,
    c: &mut Conversation,
    max_history: usize,
    user: String,
    answer: String,
) -> usize {
    c.history.push(Message {
        role: "user",
        content: user,
    });
    c.history.push(Message {
        role: "assistant",
        content: answer,
    });
    let turn = c.history.len() / 2;
    if c.history.len() > max_history {
        let excess = c.history.len() - max_history;
        c.history.drain(..excess + excess % 2);
    }
    recorder.agent_message("user");
    recorder.agent_message("assistant");
    turn
}

/// Frames from a channel, as a body stream.
struct ChannelStream(mpsc::Receiver<Bytes>);

impl futures_core::Stream for ChannelStream {
    type Item = Result<http_body::Frame<Bytes>, BoxError>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_decode() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn store_evicts_least_recently_used() {
        let mut s = Store {
            max: 2,
            clock: 0,
            slots: HashMap::new(),
        };
        let a = s.get("a");
        s.get("b");
        s.get("a");
        s.get("c"); // evicts b
        assert!(
            s.slots.contains_key("a") && s.slots.contains_key("c") && !s.slots.contains_key("b")
        );
        assert!(Arc::ptr_eq(&a, &s.get("a")));
    }
}
