//! `/chat`: one turn of a conversation, answered whole or streamed.
//!
//! The model call goes through the proxy's own stages
//! ([`Proxy::forward_bytes`](crate::proxy::Proxy)), so the agent's calls are
//! observed exactly like proxied ones; the conversation is changed only when
//! the turn completes, so a failed or abandoned turn leaves it as it was. A
//! client that goes away drops the turn — its model call and its hold on the
//! conversation with it (a stream's task watches for that too).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::store::{Message, StoreError, Turn};
use super::{Agent, conversation_id, detail, json_response, store_failed, unprocessable};
use crate::call::ConversationTag;
use crate::genai::pricing::{PriceTable, cost};
use crate::genai::request::Operation;
use crate::genai::response::ResponseFacts;
use crate::genai::sse::SseDecoder;
use crate::genai::stream::StreamAccumulator;
use crate::proxy::{Proxy, ResponseBody, Timing, event_stream_response};
use crate::telemetry::{Recorder, bounded};

#[derive(Deserialize)]
struct ChatBody {
    message: Value,
    model: Option<String>,
    conversation_id: Option<String>,
    #[serde(default)]
    stream: bool,
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

impl Agent {
    pub(super) async fn chat(
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
        if !self.models.allows(&model) {
            let shown: String = model.chars().take(128).collect();
            return unprocessable(
                "model_not_allowed",
                json!(["body", "model"]),
                "this model is not one the agent may use (--agent-models)",
                json!(shown),
            );
        }
        let id = match conversation_id(parsed.conversation_id, "body") {
            Ok(id) => id,
            Err(resp) => return resp,
        };
        cx.span().set_attribute(KeyValue::new(
            "request.model",
            bounded::cut(&model).into_owned(),
        ));
        // held until the turn is dropped: answered, failed, or the client gone
        let mut turn = match self.store.begin(&id).await {
            Ok(t) => t,
            Err(e) => return store_failed(&e),
        };

        let tracer = recorder.tracer();
        let number = turn.history.len() / 2 + 1;
        let span = tracer
            .span_builder("agent.process_message")
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("agent.message.length", message.chars().count() as i64),
                KeyValue::new("agent.conversation.turn", number as i64),
                KeyValue::new("agent.conversation.id", id.clone()),
            ])
            .start_with_context(tracer, cx);
        let pcx = cx.with_span(span);
        tracing::info!(conversation_id = %id, turn = number, length = message.len(), "processing message");

        let mut messages = vec![json!({"role": "system", "content": self.system_prompt})];
        messages.extend(
            turn.history
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
            self.upstream_parts(&id),
            Bytes::from(request.to_string()),
            Timing::now(),
            &pcx,
        );
        if parsed.stream {
            return self
                .stream_chat(
                    recorder,
                    upstream,
                    turn,
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
        let number = commit(&mut turn.history, self.max_history, message, answer.clone());
        let total = turn.history.len();
        if let Err(e) = turn.save().await {
            return stored_failed(&pcx, &e);
        }
        drop(turn);
        count_turn(recorder);
        self.end_process_span(&pcx, &answer, total);
        json_response(
            StatusCode::OK,
            &json!({"response": answer, "metrics": metrics, "conversation_turn": number}),
        )
    }

    /// The request the agent sends upstream (through the proxy's pipeline),
    /// tagged with its conversation (`gen_ai.conversation.id` on the call's span).
    fn upstream_parts(&self, conversation: &str) -> http::request::Parts {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(ConversationTag(conversation.to_owned()));
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
        span.set_status(Status::error(bounded::cut(&msg).into_owned()));
        span.end();
        tracing::warn!(error = %bounded::for_log(&msg), "agent call failed; conversation unchanged");
        detail(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }

    /// `"stream": true`: deltas as server-sent events, then a `done` event with the metrics.
    #[allow(clippy::too_many_arguments)]
    async fn stream_chat(
        &self,
        recorder: &Arc<Recorder>,
        upstream: impl Future<Output = Response<ResponseBody>>,
        mut turn: Turn,
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
            loop {
                // a client gone while the upstream is silent is noticed at once
                let frame = tokio::select! {
                    f = body.frame() => f,
                    () = tx.closed() => {
                        client_gone = true;
                        break;
                    }
                };
                let Some(frame) = frame else { break };
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
            let number = commit(&mut turn.history, max_history, message, text.clone());
            let total = turn.history.len();
            if let Err(e) = turn.save().await {
                drop(turn);
                stored_failed(&pcx, &e);
                let _ = tx
                    .send(Bytes::from(format!(
                        "event: error\ndata: {}\n\n",
                        json!({"detail": e.to_string()})
                    )))
                    .await;
                server_cx.span().end();
                return;
            }
            drop(turn);
            count_turn(&rec);
            span.set_attribute(KeyValue::new(
                "agent.response.length",
                text.chars().count() as i64,
            ));
            span.set_attribute(KeyValue::new(
                "agent.conversation.total_messages",
                total as i64,
            ));
            span.end();
            let done = json!({"response": text, "metrics": metrics, "conversation_turn": number});
            let _ = tx
                .send(Bytes::from(format!("event: done\ndata: {done}\n\n")))
                .await;
            server_cx.span().end();
        });
        let mut r = event_stream_response(rx);
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

/// Appends a turn and trims the oldest turns past `max_history` messages;
/// returns the turn number.
fn commit(history: &mut Vec<Message>, max_history: usize, user: String, answer: String) -> usize {
    history.push(Message {
        role: "user",
        content: user,
    });
    history.push(Message {
        role: "assistant",
        content: answer,
    });
    let turn = history.len() / 2;
    if history.len() > max_history {
        let excess = history.len() - max_history;
        history.drain(..excess + excess % 2);
    }
    turn
}

/// Counts a saved turn's two messages.
fn count_turn(recorder: &Recorder) {
    recorder.agent_message("user");
    recorder.agent_message("assistant");
}

/// Ends the process span of a turn the store would not save; the answer for it.
fn stored_failed(pcx: &Context, e: &StoreError) -> Response<ResponseBody> {
    let span = pcx.span();
    span.set_attribute(KeyValue::new("error.type", "store_error"));
    span.set_status(Status::error(e.to_string()));
    span.end();
    store_failed(e)
}
