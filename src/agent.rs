//! The lab's conversation agent, on the proxy's own pipeline.
//!
//! The lab's users run a small chat agent and watch its telemetry; hosting
//! it here means the lab needs one process and no Python. Its model calls
//! go through [`Proxy::forward_bytes`] — the same forwarding, tap, span and
//! metrics as proxied traffic — so what the agent shows is exactly what
//! users get for their own apps. Conversations live in a `store` — memory
//! (bounded, LRU-evicted) or Redis (shared by replicas) — both expiring; long
//! histories lose their oldest turns, and turns on one conversation are
//! serialised by its hold, which a client going away releases at once.

mod chat;
mod store;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{AgentModels, Config, Secret};
use crate::genai;
use crate::genai::pricing::PriceTable;
use crate::inbound::{self, ReadError};
use crate::proxy::{Proxy, ResponseBody, full_response};
use crate::telemetry::Recorder;
use crate::telemetry::spans;
use store::{Store, StoreError};

/// The conversation used when a request names none (the lab's single one).
pub const DEFAULT_CONVERSATION: &str = "default";

/// The agent's routes (the lab's API, see the README); every other request is the proxy's.
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
    store: Store,
    model: String,
    /// `--agent-models`: what a `/chat` may ask for.
    models: AgentModels,
    system_prompt: String,
    max_history: usize,
    key: Option<Secret>,
    demo: bool,
    /// Prices the lab's `metrics.cost_usd` (the same table the recorder prices calls with).
    pricing: Arc<PriceTable>,
    /// Largest request body of the agent's routes (`--agent-max-body`).
    max_body: u64,
    /// Longest pause inside a request body (`--request-timeout`).
    request_timeout: std::time::Duration,
}

#[derive(Deserialize, Default)]
struct NewConversationBody {
    conversation_id: Option<String>,
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
    /// The agent `cfg` describes; fails (a configuration error) only if its store can't be set up.
    pub(crate) fn new(cfg: &Config, pricing: Arc<PriceTable>) -> Result<Agent, String> {
        let store = Store::new(
            &cfg.agent_store,
            cfg.agent_max_conversations,
            cfg.agent_conversation_ttl,
            cfg.agent_lock_wait,
        )?;
        tracing::info!(store = store.describe(), "agent conversations");
        Ok(Agent {
            store,
            model: cfg.agent_model.clone(),
            models: cfg
                .agent_models
                .clone()
                .unwrap_or_else(|| AgentModels::Only(vec![cfg.agent_model.clone()])),
            system_prompt: cfg.agent_system_prompt.clone(),
            max_history: cfg.agent_max_history,
            key: cfg.api_key.clone(),
            demo: cfg.demo,
            pricing,
            max_body: cfg.agent_max_body,
            request_timeout: cfg.request_timeout,
        })
    }

    /// The request body, at most `--agent-max-body` bytes (else a `413`).
    async fn read_body(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Bytes, Response<ResponseBody>> {
        let too_large = || {
            detail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body exceeds the limit of {} bytes (--agent-max-body)",
                    self.max_body
                ),
            )
        };
        let (parts, body) = req.into_parts();
        match inbound::read_body(&parts.headers, body, self.max_body, self.request_timeout).await {
            Ok(b) => Ok(b),
            Err(ReadError::TooLarge) => Err(too_large()),
            Err(ReadError::Timeout) => Err(detail(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body stalled: no data for {:?} (--request-timeout)",
                    self.request_timeout
                ),
            )),
            Err(ReadError::Client(e)) => Err(detail(
                StatusCode::BAD_REQUEST,
                format!("could not read the body: {e}"),
            )),
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
        let mut resp = match self.read_body(req).await {
            Err(resp) => resp,
            Ok(body) => match route {
                AgentRoute::Chat => self.chat(proxy, recorder, &cx, &body).await,
                AgentRoute::NewConversation => self.new_conversation(recorder, &body).await,
                AgentRoute::Summary => self.summary(query.as_deref()).await,
            },
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
        let id = match conversation_id(parsed.conversation_id, "body") {
            Ok(id) => id,
            Err(resp) => return resp,
        };
        // waits (bounded) for a chat in progress on the same conversation
        let cleared = async {
            let mut turn = self.store.begin(&id).await?;
            turn.history.clear();
            turn.save().await
        };
        if let Err(e) = cleared.await {
            return store_failed(&e);
        }
        recorder.conversation_started();
        tracing::info!(conversation_id = %id, "new conversation");
        json_response(
            StatusCode::OK,
            &json!({"message": "New conversation started", "conversation_id": id}),
        )
    }

    async fn summary(&self, query: Option<&str>) -> Response<ResponseBody> {
        let id = query.and_then(|q| genai::query::param(q, "conversation_id"));
        let id = match conversation_id(id, "query") {
            Ok(id) => id,
            Err(resp) => return resp,
        };
        // an unknown conversation is an empty one; looking must not create it
        let history = match self.store.peek(&id).await {
            Ok(h) => h.unwrap_or_default(),
            Err(e) => return store_failed(&e),
        };
        let users = history.iter().filter(|m| m.role == "user").count();
        let assistants = history.iter().filter(|m| m.role == "assistant").count();
        json_response(
            StatusCode::OK,
            &json!({
                "total_messages": history.len(),
                "user_messages": users,
                "assistant_messages": assistants,
                "conversation_turns": history.len() / 2,
            }),
        )
    }
}

/// The answer when the store can't serve: `503` naming it when unreachable,
/// `409` when the conversation is busy or was taken over, else `500`.
fn store_failed(e: &StoreError) -> Response<ResponseBody> {
    let status = match e {
        StoreError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        StoreError::Busy(_) | StoreError::Lost => StatusCode::CONFLICT,
        StoreError::Unreadable(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status != StatusCode::CONFLICT {
        tracing::warn!(error = %e, "agent store failed");
    }
    detail(status, e.to_string())
}

/// Longest conversation id; ids are also keys and log fields.
const MAX_CONVERSATION_ID: usize = 128;

/// The conversation a request names (the default one when it names none), or
/// a `422` when the id is not 1–128 characters of `[A-Za-z0-9._:-]`.
/// `place`: where the id came from (`body` or `query`), for the error's `loc`.
#[expect(
    clippy::result_large_err,
    reason = "the error is the reply itself, built once per refused request"
)]
fn conversation_id(
    id: Option<String>,
    place: &'static str,
) -> Result<String, Response<ResponseBody>> {
    let Some(id) = id else {
        return Ok(DEFAULT_CONVERSATION.to_owned());
    };
    let valid = (1..=MAX_CONVERSATION_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if valid {
        return Ok(id);
    }
    // never echo a huge value back
    let shown: String = id.chars().take(MAX_CONVERSATION_ID).collect();
    Err(unprocessable(
        "string_pattern_mismatch",
        json!([place, "conversation_id"]),
        "conversation_id must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'",
        json!(shown),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_are_short_and_plain() {
        assert_eq!(
            conversation_id(None, "body").ok().as_deref(),
            Some(DEFAULT_CONVERSATION)
        );
        for ok in ["a", "user-1:thread.2_x", &"x".repeat(128)] {
            assert_eq!(
                conversation_id(Some(ok.to_owned()), "body").ok().as_deref(),
                Some(ok)
            );
        }
        for bad in ["", "has space", "line\nbreak", "é", &"x".repeat(129)] {
            let resp = conversation_id(Some(bad.to_owned()), "body").err();
            assert_eq!(
                resp.map(|r| r.status()),
                Some(StatusCode::UNPROCESSABLE_ENTITY),
                "{bad:?}"
            );
        }
    }
}
