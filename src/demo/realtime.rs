//! `GET /v1/realtime` (and Azure's `/openai/realtime`): the Realtime API over
//! a WebSocket, deterministic like the rest of the demo.
//!
//! Realtime sessions are long-lived and stateful, so the proxy's tunnel and its
//! session observer can only be tested end to end against a server that speaks
//! the protocol; this one answers the events a client needs for a text or audio
//! turn (the reply, its token usage with audio/text/cached details, cancel),
//! with the same reply text and word-token counting as the HTTP endpoints.
//! A client sending `OpenAI-Beta: realtime=v1` gets the beta event names
//! (`response.text.delta`), others the GA names (`response.output_text.delta`).

mod ws;

use std::collections::VecDeque;
use std::sync::Arc;

use http::header::{CONNECTION, HeaderValue, UPGRADE};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::State;
use super::embeddings::base64;
use super::text::{Fnv, Generation, Prompt, content_text, mix};
use super::wire::{ApiError, DemoBody, json_response};
use crate::genai::query;
use ws::{Deflate, FrameReader, FrameWriter, Inbound};

/// Largest client message kept (after inflation): audio appends are the big ones.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Client events waiting for the session loop (the reader pauses beyond).
const INBOX: usize = 4;

/// The session settings a `session.update` may change.
const SETTINGS: &[&str] = &[
    "type",
    "modalities",
    "output_modalities",
    "instructions",
    "voice",
    "audio",
    "input_audio_format",
    "output_audio_format",
    "input_audio_transcription",
    "input_audio_noise_reduction",
    "turn_detection",
    "tools",
    "tool_choice",
    "temperature",
    "max_response_output_tokens",
    "max_output_tokens",
    "include",
    "prompt",
    "speed",
    "tracing",
    "truncation",
];

/// True for the paths this endpoint answers.
pub(super) fn is_realtime(method: &Method, path: &str) -> bool {
    method == Method::GET && (path == "/v1/realtime" || path == "/openai/realtime")
}

/// Answers the upgrade request with `101 Switching Protocols` and runs the
/// session on the upgraded connection; a request that isn't a valid
/// WebSocket upgrade gets an OpenAI-shaped 400 (or 426).
pub(super) fn answer(mut req: Request<Incoming>, state: Arc<State>) -> Response<DemoBody> {
    let headers = req.headers();
    let query = req.uri().query().unwrap_or("").to_owned();
    let hash = Fnv::new().str(req.uri().path()).str(&query).finish();
    let bad = |status, message: &str| {
        let err = ApiError {
            status,
            message: message.to_owned(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        };
        json_response(status, err.to_json(), hash, false)
    };
    let upgrade = ws::has_token(headers, UPGRADE.as_str(), "websocket")
        && ws::has_token(headers, CONNECTION.as_str(), "upgrade");
    let Some(key) = headers
        .get("sec-websocket-key")
        .and_then(|k| k.to_str().ok())
        .filter(|_| upgrade)
    else {
        return bad(
            StatusCode::BAD_REQUEST,
            "The Realtime API is a WebSocket: connect with an Upgrade: websocket request.",
        );
    };
    if !ws::has_token(headers, "sec-websocket-version", "13") {
        let mut response = bad(
            StatusCode::UPGRADE_REQUIRED,
            "Unsupported WebSocket version.",
        );
        response
            .headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return response;
    }
    let param = model_param(req.uri());
    let Some(model) = model(req.uri()) else {
        return bad(
            StatusCode::BAD_REQUEST,
            &format!("Missing required parameter: '{param}'."),
        );
    };
    let beta = headers
        .get_all("openai-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("realtime=v1"));
    let deflate = Deflate::accept(headers);
    let accept = ws::accept_key(key);

    let mut response = Response::new(DemoBody::Full(None));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let out = response.headers_mut();
    out.insert(UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        out.insert("sec-websocket-accept", accept);
    }
    if let Some(ext) = deflate.and_then(|d| HeaderValue::from_str(&d.response()).ok()) {
        out.insert("sec-websocket-extensions", ext);
    }
    super::wire::insert_request_id(out, hash);

    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        // a failed upgrade (the client went away) just ends the session
        if let Ok(upgraded) = on_upgrade.await {
            let session = Session::new(&model, hash, beta);
            run(TokioIo::new(upgraded), deflate, session, state).await;
        }
    });
    response
}

/// The query parameter naming the model: Azure names a deployment.
fn model_param(uri: &Uri) -> &'static str {
    if uri.path() == "/openai/realtime" {
        "deployment"
    } else {
        "model"
    }
}

/// The model (or Azure deployment) the session is for, when the URL names one.
pub(super) fn model(uri: &Uri) -> Option<String> {
    query::param(uri.query()?, model_param(uri)).filter(|m| !m.is_empty())
}

/// Runs one session on an upgraded connection until either side closes.
async fn run<S>(io: S, deflate: Option<Deflate>, mut session: Session, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    let mut writer = FrameWriter::new(write, deflate);
    let (tx, mut inbox) = mpsc::channel(INBOX);
    let reader = tokio::spawn(async move {
        let mut reader = FrameReader::new(read, MAX_MESSAGE, deflate);
        loop {
            let next = reader.next().await;
            let last = !matches!(
                next,
                Ok(Inbound::Text(_) | Inbound::Binary | Inbound::Ping(_))
            );
            if tx.send(next).await.is_err() || last {
                break;
            }
        }
    });
    let mut shutdown = state.shutdown.clone();
    let delay = state.opts.chunk_delay;
    let mut outbox: VecDeque<Value> = VecDeque::new();
    outbox.push_back(session.created());
    let end = loop {
        for event in outbox.drain(..) {
            if send(&mut writer, &event).await.is_err() {
                reader.abort();
                return;
            }
        }
        let pacing = session.active.is_some();
        tokio::select! {
            next = inbox.recv() => match next {
                Some(Ok(Inbound::Text(text))) => session.client_event(&text, &mut outbox),
                Some(Ok(Inbound::Binary)) => outbox.push_back(session.error(
                    "invalid_request_error", "Binary messages are not supported.", None)),
                Some(Ok(Inbound::Ping(payload))) => {
                    if writer.pong(&payload).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Inbound::Close(code))) => break Some(code),
                Some(Err(failure)) => break failure.code().map(Some),
                None => break None,
            },
            () = tokio::time::sleep(delay), if pacing => session.step(&mut outbox),
            () = super::shutdown_requested(&mut shutdown) => break Some(Some(1001)),
        }
    };
    for event in outbox.drain(..) {
        let _ = send(&mut writer, &event).await;
    }
    // the close echoes the client's (code and all), or says why the server ends
    if let Some(code) = end {
        let _ = writer.close(code).await;
    }
    reader.abort();
}

async fn send<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    event: &Value,
) -> std::io::Result<()> {
    writer.text(event.to_string().as_bytes()).await
}

/// One reply being streamed: the events still to send, one per step.
struct Active {
    response: Value,
    item_id: String,
    /// The output item as `response.output_item.done` shows it.
    item: Value,
    events: VecDeque<Value>,
    /// Output pieces already sent as deltas, for a cancelled reply's usage.
    sent: u64,
    audio: bool,
    input: Usage,
}

#[derive(Clone, Copy)]
struct Usage {
    text: u64,
    audio: u64,
    cached: u64,
}

/// The state of one Realtime session.
struct Session {
    hash: u64,
    beta: bool,
    config: Map<String, Value>,
    prompt: Prompt,
    /// Input audio bytes appended and not yet committed.
    audio_buffer: u64,
    /// Audio tokens of committed input.
    input_audio: u64,
    /// Tokens processed by earlier replies (the cacheable prefix).
    cached: u64,
    last_item: Option<String>,
    counter: u64,
    responses: u32,
    active: Option<Active>,
}

impl Session {
    fn new(model: &str, hash: u64, beta: bool) -> Self {
        let mut config = Map::new();
        config.insert("id".into(), format!("sess_demo{:016x}", mix(hash)).into());
        config.insert("object".into(), "realtime.session".into());
        config.insert("model".into(), model.into());
        let modalities = json!(["text", "audio"]);
        if beta {
            config.insert("modalities".into(), modalities);
        } else {
            config.insert("type".into(), "realtime".into());
            config.insert("output_modalities".into(), modalities);
        }
        for (k, v) in [
            ("instructions", json!("")),
            ("voice", json!("alloy")),
            ("input_audio_format", json!("pcm16")),
            ("output_audio_format", json!("pcm16")),
            ("turn_detection", Value::Null),
            ("tools", json!([])),
            ("tool_choice", json!("auto")),
            ("temperature", json!(0.8)),
            ("max_response_output_tokens", json!("inf")),
        ] {
            config.insert(k.into(), v);
        }
        Self {
            prompt: Prompt::new(model),
            hash,
            beta,
            config,
            audio_buffer: 0,
            input_audio: 0,
            cached: 0,
            last_item: None,
            counter: 0,
            responses: 0,
            active: None,
        }
    }

    /// The first event of every session.
    fn created(&mut self) -> Value {
        let session = Value::Object(self.config.clone());
        self.event("session.created", json!({ "session": session }))
    }

    /// An event of `kind` with its id and the fields of `body`.
    fn event(&mut self, kind: &str, body: Value) -> Value {
        self.counter += 1;
        let mut event = Map::new();
        event.insert("type".into(), self.name(kind).into());
        event.insert(
            "event_id".into(),
            format!("event_demo{:08x}{:06}", mix(self.hash) as u32, self.counter).into(),
        );
        if let Value::Object(fields) = body {
            event.extend(fields);
        }
        Value::Object(event)
    }

    /// The event name in the dialect the client speaks.
    fn name(&self, beta_name: &str) -> String {
        if self.beta {
            return beta_name.to_owned();
        }
        let ga = match beta_name {
            "response.text.delta" => "response.output_text.delta",
            "response.text.done" => "response.output_text.done",
            "response.audio.delta" => "response.output_audio.delta",
            "response.audio.done" => "response.output_audio.done",
            "response.audio_transcript.delta" => "response.output_audio_transcript.delta",
            "response.audio_transcript.done" => "response.output_audio_transcript.done",
            other => other,
        };
        ga.to_owned()
    }

    fn error(&mut self, kind: &str, message: &str, event_id: Option<&Value>) -> Value {
        let error = json!({
            "type": kind,
            "code": Value::Null,
            "message": message,
            "param": Value::Null,
            "event_id": event_id.cloned().unwrap_or(Value::Null),
        });
        self.event("error", json!({ "error": error }))
    }

    /// Handles one client event, queueing the answers in `out`.
    fn client_event(&mut self, text: &[u8], out: &mut VecDeque<Value>) {
        let Ok(Value::Object(event)) = serde_json::from_slice::<Value>(text) else {
            let msg = "The server could not parse the event: expected a JSON object.";
            out.push_back(self.error("invalid_request_error", msg, None));
            return;
        };
        let id = event.get("event_id");
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "session.update" => {
                let update = event.get("session").and_then(Value::as_object);
                // only known settings are kept, so the session's state stays bounded
                let unknown =
                    update.and_then(|u| u.keys().find(|k| !SETTINGS.contains(&k.as_str())));
                if let Some(key) = unknown {
                    let msg = format!("Unknown parameter: 'session.{key}'.");
                    out.push_back(self.error("invalid_request_error", &msg, id));
                    return;
                }
                for (k, v) in update.into_iter().flatten() {
                    self.config.insert(k.clone(), v.clone());
                }
                let session = Value::Object(self.config.clone());
                out.push_back(self.event("session.updated", json!({ "session": session })));
            }
            "conversation.item.create" => self.item_create(&event, out),
            "input_audio_buffer.append" => {
                let audio = event.get("audio").and_then(Value::as_str).unwrap_or("");
                self.audio_buffer += (audio.len() as u64) / 4 * 3;
            }
            "input_audio_buffer.clear" => {
                self.audio_buffer = 0;
                out.push_back(self.event("input_audio_buffer.cleared", json!({})));
            }
            "input_audio_buffer.commit" => {
                // pcm16 at 24 kHz is 48 000 bytes a second; ~10 audio tokens a second
                let tokens = self.audio_buffer.div_ceil(4800);
                self.audio_buffer = 0;
                self.input_audio += tokens;
                let item_id = self.next_item_id();
                let previous = self.last_item.replace(item_id.clone());
                out.push_back(self.event(
                    "input_audio_buffer.committed",
                    json!({ "previous_item_id": previous, "item_id": item_id }),
                ));
                let item = json!({
                    "id": item_id, "object": "realtime.item", "type": "message",
                    "status": "completed", "role": "user",
                    "content": [{ "type": "input_audio", "transcript": null }],
                });
                out.push_back(self.event(
                    "conversation.item.created",
                    json!({ "previous_item_id": previous, "item": item }),
                ));
            }
            "response.create" => self.response_create(&event, out),
            "response.cancel" => match self.active.take() {
                Some(active) => out.push_back(self.finish(active, "cancelled")),
                None => {
                    let msg = "Cancellation failed: no active response found";
                    out.push_back(self.error("invalid_request_error", msg, id));
                }
            },
            other => {
                let msg = format!(
                    "Invalid value: '{other}'. Supported values are: 'session.update', 'input_audio_buffer.append', 'input_audio_buffer.commit', 'input_audio_buffer.clear', 'conversation.item.create', 'response.create', and 'response.cancel'."
                );
                out.push_back(self.error("invalid_request_error", &msg, id));
            }
        }
    }

    fn next_item_id(&mut self) -> String {
        self.counter += 1;
        format!("item_demo{:08x}{:06}", mix(self.hash) as u32, self.counter)
    }

    fn item_create(&mut self, event: &Map<String, Value>, out: &mut VecDeque<Value>) {
        let Some(Value::Object(item)) = event.get("item") else {
            let msg = "Missing required parameter: 'item'.";
            out.push_back(self.error("invalid_request_error", msg, event.get("event_id")));
            return;
        };
        let mut item = item.clone();
        let id = match item.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => self.next_item_id(),
        };
        item.insert("id".into(), id.clone().into());
        item.insert("object".into(), "realtime.item".into());
        item.insert("status".into(), "completed".into());
        let role = item
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user")
            .to_owned();
        self.prompt
            .message(&role, content_text(item.get("content")));
        let previous = self.last_item.replace(id);
        out.push_back(self.event(
            "conversation.item.created",
            json!({ "previous_item_id": previous, "item": item }),
        ));
    }

    fn response_create(&mut self, event: &Map<String, Value>, out: &mut VecDeque<Value>) {
        if self.active.is_some() {
            let msg = "Conversation already has an active response in progress";
            out.push_back(self.error("invalid_request_error", msg, event.get("event_id")));
            return;
        }
        let params = event.get("response").and_then(Value::as_object);
        let setting = |key: &str| {
            params
                .and_then(|p| p.get(key))
                .or_else(|| self.config.get(key))
        };
        let modalities = setting("modalities").or_else(|| setting("output_modalities"));
        let audio = modalities
            .and_then(Value::as_array)
            .is_none_or(|m| m.iter().any(|v| v == "audio"));
        let limit = ["max_output_tokens", "max_response_output_tokens"]
            .into_iter()
            .find_map(|k| setting(k).and_then(Value::as_u64))
            .and_then(|n| usize::try_from(n).ok());
        self.responses += 1;
        let generation = Generation::text(
            self.prompt.last_user_words,
            self.prompt.hash(),
            self.responses,
            limit,
        );
        let response_id = format!(
            "resp_demo{:08x}{:04}",
            mix(self.hash) as u32,
            self.responses
        );
        let item_id = self.next_item_id();
        let modalities: Value = if audio {
            json!(["audio", "text"])
        } else {
            json!(["text"])
        };
        let response = json!({
            "object": "realtime.response",
            "id": response_id,
            "status": "in_progress",
            "status_details": null,
            "output": [],
            "conversation_id": format!("conv_demo{:016x}", mix(self.hash ^ 1)),
            "modalities": modalities,
            "voice": "alloy",
            "output_audio_format": "pcm16",
            "temperature": 0.8,
            "max_output_tokens": limit.map_or(json!("inf"), |n| json!(n)),
            "usage": null,
            "metadata": null,
        });
        let input = Usage {
            text: self.prompt.tokens,
            audio: self.input_audio,
            cached: self.cached,
        };
        out.push_back(self.event("response.created", json!({ "response": response })));
        let ids = json!({ "response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0 });
        let mut item = json!({
            "id": item_id, "object": "realtime.item", "type": "message",
            "status": "in_progress", "role": "assistant", "content": [],
        });
        let mut events = VecDeque::new();
        events.push_back(self.event(
            "response.output_item.added",
            json!({ "response_id": response_id, "output_index": 0, "item": item }),
        ));
        let (part_kind, text_key) = if audio {
            ("audio", "transcript")
        } else {
            ("text", "text")
        };
        let mut part = json!({ "type": part_kind });
        part[text_key] = json!("");
        let mut added = ids.clone();
        added["part"] = part.clone();
        events.push_back(self.event("response.content_part.added", added));
        let delta_name = if audio {
            "response.audio_transcript.delta"
        } else {
            "response.text.delta"
        };
        for (i, piece) in generation.pieces.iter().enumerate() {
            let mut delta = ids.clone();
            delta["delta"] = json!(piece);
            events.push_back(self.event(delta_name, delta));
            if audio {
                let mut chunk = ids.clone();
                chunk["delta"] = json!(base64(&audio_chunk(self.hash, i)));
                events.push_back(self.event("response.audio.delta", chunk));
            }
        }
        let text = generation.text_so_far();
        if audio {
            events.push_back(self.event("response.audio.done", ids.clone()));
        }
        let mut done = ids.clone();
        done[text_key] = json!(text);
        let done_name = if audio {
            "response.audio_transcript.done"
        } else {
            "response.text.done"
        };
        events.push_back(self.event(done_name, done));
        part[text_key] = json!(text);
        let mut part_done = ids;
        part_done["part"] = part.clone();
        events.push_back(self.event("response.content_part.done", part_done));
        item["status"] = json!("completed");
        item["content"] = json!([part]);
        events.push_back(self.event(
            "response.output_item.done",
            json!({ "response_id": response_id, "output_index": 0, "item": item.clone() }),
        ));
        self.prompt.message("assistant", text);
        self.active = Some(Active {
            response,
            item_id,
            item,
            events,
            sent: 0,
            audio,
            input,
        });
    }

    /// Sends the next event of the active reply; the last step is `response.done`.
    fn step(&mut self, out: &mut VecDeque<Value>) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match active.events.pop_front() {
            Some(event) => {
                let kind = event["type"].as_str().unwrap_or("");
                if kind.ends_with("text.delta") || kind.ends_with("transcript.delta") {
                    active.sent += 1;
                }
                out.push_back(event);
            }
            None => {
                if let Some(active) = self.active.take() {
                    out.push_back(self.finish(active, "completed"));
                }
            }
        }
    }

    /// `response.done` for `active`, with the output and usage so far.
    fn finish(&mut self, active: Active, status: &str) -> Value {
        let Active {
            mut response,
            item_id,
            item,
            events,
            sent,
            audio,
            input,
        } = active;
        let complete = events.is_empty();
        let text_tokens = sent;
        let audio_tokens = if audio { sent * 5 } else { 0 };
        let output = text_tokens + audio_tokens;
        let input_tokens = input.text + input.audio;
        let cached = input.cached.min(input_tokens);
        response["status"] = json!(status);
        if status == "cancelled" {
            response["status_details"] =
                json!({ "type": "cancelled", "reason": "client_cancelled" });
        }
        response["output"] = if complete {
            json!([item])
        } else {
            json!([{
                "id": item_id, "object": "realtime.item", "type": "message",
                "status": "incomplete", "role": "assistant", "content": [],
            }])
        };
        response["usage"] = json!({
            "total_tokens": input_tokens + output,
            "input_tokens": input_tokens,
            "output_tokens": output,
            "input_token_details": {
                "cached_tokens": cached,
                "text_tokens": input.text,
                "audio_tokens": input.audio,
                "cached_tokens_details": {
                    "text_tokens": cached.min(input.text),
                    "audio_tokens": cached.saturating_sub(input.text),
                },
            },
            "output_token_details": { "text_tokens": text_tokens, "audio_tokens": audio_tokens },
        });
        // the next reply finds this one's input and output in the cache
        self.cached = input_tokens + output;
        self.event("response.done", json!({ "response": response }))
    }
}

/// A few bytes of "audio" (pcm16 silence with a deterministic hiss).
fn audio_chunk(hash: u64, index: usize) -> Vec<u8> {
    (0..48)
        .map(|i| (mix(hash ^ (index as u64) << 8 ^ i) & 0x0f) as u8)
        .collect()
}

#[cfg(test)]
mod tests;
