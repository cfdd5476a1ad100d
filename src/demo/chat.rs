//! `POST /v1/chat/completions`: replies, tool calls and their streamed chunks.
//!
//! The reply is "You said N words." plus a canned sentence; a question about
//! the weather with tools attached calls the first tool instead, so traces of
//! tool calls can be produced offline too.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use super::text::{Generation, Prompt, cached_tokens, content_text, reasoning_tokens};
use super::wire::{
    ApiError, CREATED, DONE, NO_ANNOTATIONS, Payload, SERVICE_TIER, SYSTEM_FINGERPRINT,
    choice_count, flag, include_usage, round_robin, sse_data, to_json, token_limit,
};

#[derive(Serialize, Clone, Copy)]
struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptTokensDetails,
    completion_tokens_details: CompletionTokensDetails,
}

#[derive(Serialize, Clone, Copy)]
struct PromptTokensDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct CompletionTokensDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

impl ChatUsage {
    fn new(model: &str, prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached_tokens(prompt_tokens),
                audio_tokens: 0,
            },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: reasoning_tokens(model, completion_tokens),
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
        }
    }
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChatChoice<'a>>,
    usage: ChatUsage,
    service_tier: &'static str,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    refusal: Option<()>,
    annotations: &'static [()],
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall<'a>,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    arguments: String,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    service_tier: &'static str,
    system_fingerprint: &'static str,
    choices: Vec<ChunkChoice<'a>>,
    /// Absent without `include_usage`; `null` on every chunk but the last with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<ChatUsage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Delta<'a> {
    Role {
        role: &'static str,
        content: &'static str,
        refusal: Option<()>,
    },
    Content {
        content: &'a str,
    },
    ToolStart {
        tool_calls: [ToolCallStart<'a>; 1],
    },
    ToolArguments {
        tool_calls: [ToolArgumentsDelta<'a>; 1],
    },
    Empty {},
}

#[derive(Serialize)]
struct ToolCallStart<'a> {
    index: u32,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionStart<'a>,
}

#[derive(Serialize)]
struct FunctionStart<'a> {
    name: &'a str,
    arguments: &'static str,
}

#[derive(Serialize)]
struct ToolArgumentsDelta<'a> {
    index: u32,
    function: ArgumentsFragment<'a>,
}

#[derive(Serialize)]
struct ArgumentsFragment<'a> {
    arguments: &'a str,
}

/// The tool to "call": the first tool's name, when the last user message asks about the weather.
fn weather_tool(obj: &Map<String, Value>, last_user: &str) -> Option<String> {
    let first = obj.get("tools")?.as_array()?.first()?;
    if obj.get("tool_choice").and_then(Value::as_str) == Some("none")
        || !last_user.to_lowercase().contains("weather")
    {
        return None;
    }
    let name = first
        .pointer("/function/name")
        .or_else(|| first.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("get_weather");
    Some(name.to_owned())
}

/// Generates the answer: the request hash and the JSON or event-stream payload.
pub(super) fn generate(
    obj: &Map<String, Value>,
    model: &str,
    force_stream: bool,
) -> Result<(u64, Payload), ApiError> {
    let Some(messages) = obj.get("messages").and_then(Value::as_array) else {
        let msg = "Missing required parameter: 'messages'.".to_owned();
        return Err(ApiError::invalid(msg, Some("messages")));
    };
    let mut prompt = Prompt::new(model);
    for message in messages {
        let Some(message) = message.as_object() else {
            let msg = "Invalid type for 'messages': expected an array of objects.".to_owned();
            return Err(ApiError::invalid(msg, Some("messages")));
        };
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        prompt.message(role, content_text(message.get("content")));
    }
    let stream = force_stream || flag(obj, "stream")?;
    let n = choice_count(obj)?;
    let limit = token_limit(obj, &["max_completion_tokens", "max_tokens"])?;
    let tool = weather_tool(obj, &prompt.last_user);
    let hash = prompt.hash();
    let generations: Vec<Generation> = (0..n)
        .map(|i| match &tool {
            Some(name) => Generation::tool(name, hash, i, limit),
            None => Generation::text(prompt.last_user_words, hash, i, limit),
        })
        .collect();
    let completion_tokens = generations.iter().map(Generation::tokens).sum();
    let usage = ChatUsage::new(model, prompt.tokens, completion_tokens);
    let id = format!("chatcmpl-demo{hash:016x}");

    if !stream {
        let choices = (0u32..)
            .zip(&generations)
            .map(|(index, g)| ChatChoice {
                index,
                message: AssistantMessage {
                    role: "assistant",
                    content: g.tool_call.is_none().then(|| g.text_so_far()),
                    tool_calls: g.tool_call.as_ref().map(|t| {
                        vec![ToolCall {
                            id: &t.id,
                            kind: "function",
                            function: FunctionCall {
                                name: &t.name,
                                arguments: g.text_so_far(),
                            },
                        }]
                    }),
                    refusal: None,
                    annotations: NO_ANNOTATIONS,
                },
                logprobs: None,
                finish_reason: g.finish_reason,
            })
            .collect();
        let body = ChatCompletion {
            id: &id,
            object: "chat.completion",
            created: CREATED,
            model,
            choices,
            usage,
            service_tier: SERVICE_TIER,
            system_fingerprint: SYSTEM_FINGERPRINT,
        };
        return Ok((hash, Payload::Json(to_json(&body))));
    }

    let with_usage = include_usage(obj);
    let chunk = |choices: Vec<ChunkChoice<'_>>, usage: Option<Option<ChatUsage>>| {
        sse_data(&ChatChunk {
            id: &id,
            object: "chat.completion.chunk",
            created: CREATED,
            model,
            service_tier: SERVICE_TIER,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage,
        })
    };
    let lanes = generations.iter().map(chat_deltas).collect();
    let mut events: Vec<Bytes> = round_robin(lanes)
        .into_iter()
        .map(|(index, (delta, finish_reason))| {
            let choice = ChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason,
            };
            chunk(vec![choice], with_usage.then_some(None))
        })
        .collect();
    if with_usage {
        events.push(chunk(Vec::new(), Some(Some(usage))));
    }
    events.push(Bytes::from_static(DONE));
    Ok((
        hash,
        Payload::Stream {
            events,
            hang: false,
        },
    ))
}

/// The deltas of one choice: role, content (or tool call) pieces, finish.
fn chat_deltas(g: &Generation) -> Vec<(Delta<'_>, Option<&'static str>)> {
    let mut out = vec![(
        Delta::Role {
            role: "assistant",
            content: "",
            refusal: None,
        },
        None,
    )];
    if let Some(tool) = &g.tool_call {
        let start = ToolCallStart {
            index: 0,
            id: &tool.id,
            kind: "function",
            function: FunctionStart {
                name: &tool.name,
                arguments: "",
            },
        };
        out.push((
            Delta::ToolStart {
                tool_calls: [start],
            },
            None,
        ));
        for piece in &g.pieces {
            let fragment = ToolArgumentsDelta {
                index: 0,
                function: ArgumentsFragment { arguments: piece },
            };
            out.push((
                Delta::ToolArguments {
                    tool_calls: [fragment],
                },
                None,
            ));
        }
    } else {
        for piece in &g.pieces {
            out.push((Delta::Content { content: piece }, None));
        }
    }
    out.push((Delta::Empty {}, Some(g.finish_reason)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::testkit::*;
    use crate::demo::text::pieces;
    use http::{Method, StatusCode};

    #[tokio::test(flavor = "multi_thread")]
    async fn chat_non_stream_usage_follows_the_word_rule() {
        let up = upstream().await;
        let reply = post(&up, "/v1/chat/completions", &chat_body(false, None)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(reply.header("content-length"), reply.body.len().to_string());
        let v = reply.json();
        let id = v["id"].as_str().unwrap();
        assert!(id.starts_with("chatcmpl-demo") && id.len() == "chatcmpl-demo".len() + 16);
        assert_eq!(
            reply.header("x-request-id"),
            id.replace("chatcmpl-demo", "req_demo")
        );
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["created"], 1_750_000_000);
        assert_eq!(v["model"], "gpt-4o-mini");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(content.starts_with("You said 4 words. "), "{content}");
        assert!(!content.is_ascii(), "reply must contain multi-byte UTF-8");
        let word_count = content.split_whitespace().count() as u64;
        assert!((15..=40).contains(&word_count), "{word_count} words");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let usage = &v["usage"];
        // 3 + (4 + 3 words) + (4 + 4 words)
        assert_eq!(usage["prompt_tokens"], 18);
        assert_eq!(usage["completion_tokens"], word_count);
        assert_eq!(usage["total_tokens"], 18 + word_count);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
        // Field order follows the real API.
        let text = reply.text();
        assert!(text.starts_with(r#"{"id":"chatcmpl-demo"#), "{text}");
        assert!(text.contains(r#""object":"chat.completion","created":1750000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"You said"#));
        assert!(text.contains(r#""refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":18,"#));
        assert!(text.ends_with(r#""service_tier":"default","system_fingerprint":"fp_demo0001"}"#));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn same_request_gives_identical_bytes() {
        let up = upstream().await;
        for body in [chat_body(false, None), chat_body(true, Some(true))] {
            let a = post(&up, "/v1/chat/completions", &body).await;
            let b = post(&up, "/v1/chat/completions", &body).await;
            assert_eq!(a.body, b.body);
            assert_eq!(a.headers, b.headers);
        }
        // Key order in the request does not matter, only its meaning.
        let reordered = br#"{"messages":[{"content":"You are terse.","role":"system"},{"content":"Hello there, demo upstream!","role":"user"}],"stream":false,"model":"gpt-4o-mini"}"#;
        let a = request(
            &up,
            Method::POST,
            "/v1/chat/completions",
            &[],
            &reordered[..],
        )
        .await;
        let b = post(&up, "/v1/chat/completions", &chat_body(false, None)).await;
        assert_eq!(a.body, b.body);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stream_with_include_usage() {
        let up = upstream().await;
        let reply = post(&up, "/v1/chat/completions", &chat_body(true, Some(true))).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), "text/event-stream");
        assert!(reply.headers.get("content-encoding").is_none());
        let events = data_events(reply.text());
        assert_eq!(*events.last().unwrap(), "[DONE]");
        let chunks: Vec<&str> = events[..events.len() - 1].to_vec();
        let (usage_chunk, choice_chunks) = chunks.split_last().unwrap();
        let mut content = String::new();
        let mut pieces = 0;
        for (i, chunk) in choice_chunks.iter().enumerate() {
            assert!(chunk.ends_with(r#","usage":null}"#), "{chunk}");
            let v: Value = serde_json::from_str(chunk).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            let delta = &v["choices"][0]["delta"];
            if i == 0 {
                assert_eq!(
                    delta,
                    &serde_json::json!({"role":"assistant","content":"","refusal":null})
                );
            } else if let Some(piece) = delta["content"].as_str() {
                content.push_str(piece);
                pieces += 1;
            }
        }
        let last: Value = serde_json::from_str(choice_chunks.last().unwrap()).unwrap();
        assert_eq!(last["choices"][0]["delta"], serde_json::json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        let usage: Value = serde_json::from_str(usage_chunk).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], pieces);
        assert_eq!(usage["usage"]["prompt_tokens"], 18);
        assert_eq!(usage["usage"]["total_tokens"], 18 + pieces);
        // The streamed text equals the non-streamed one, and so does the id.
        let plain = post(&up, "/v1/chat/completions", &chat_body(false, None))
            .await
            .json();
        assert_eq!(plain["choices"][0]["message"]["content"], content.as_str());
        assert_eq!(plain["id"], usage["id"]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stream_without_include_usage_matches_modulo_usage() {
        let up = upstream().await;
        let with = post(&up, "/v1/chat/completions", &chat_body(true, Some(true))).await;
        for include in [None, Some(false)] {
            let without = post(&up, "/v1/chat/completions", &chat_body(true, include)).await;
            assert!(!without.text().contains("usage"), "{}", without.text());
            let mut events: Vec<String> = with
                .text()
                .split_inclusive("\n\n")
                .filter(|e| !e.contains(r#""choices":[],"usage":{"#))
                .map(|e| e.replace(r#","usage":null"#, ""))
                .collect();
            assert!(events.len() > 3);
            assert_eq!(events.concat(), without.text());
            events.clear();
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn n_choices_interleave_round_robin() {
        let up = upstream().await;
        let mut body = chat_body(true, Some(true));
        body["n"] = 2.into();
        let reply = post(&up, "/v1/chat/completions", &body).await;
        let events = data_events(reply.text());
        let chunks: Vec<Value> = events[..events.len() - 2]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let indices: Vec<u64> = chunks
            .iter()
            .map(|c| {
                assert_eq!(c["choices"].as_array().unwrap().len(), 1);
                c["choices"][0]["index"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(&indices[..4], &[0, 1, 0, 1]);
        let mut texts = [String::new(), String::new()];
        let mut finished = [false, false];
        for c in &chunks {
            let i = c["choices"][0]["index"].as_u64().unwrap() as usize;
            assert!(!finished[i]);
            if let Some(piece) = c["choices"][0]["delta"]["content"].as_str() {
                texts[i].push_str(piece);
            }
            finished[i] = c["choices"][0]["finish_reason"].is_string();
        }
        assert_eq!(finished, [true, true]);
        assert_ne!(texts[0], texts[1]);
        let usage: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
        let total: usize = texts.iter().map(|t| pieces(t).len()).sum();
        assert_eq!(usage["usage"]["completion_tokens"], total);
        // Non-stream: the same two texts.
        body["stream"] = false.into();
        let plain = post(&up, "/v1/chat/completions", &body).await.json();
        assert_eq!(plain["choices"][0]["message"]["content"], texts[0].as_str());
        assert_eq!(plain["choices"][1]["message"]["content"], texts[1].as_str());
        assert_eq!(plain["usage"]["completion_tokens"], total);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn max_tokens_truncates_with_length() {
        let up = upstream().await;
        let mut body = chat_body(false, None);
        body["max_completion_tokens"] = 3.into();
        let v = post(&up, "/v1/chat/completions", &body).await.json();
        assert_eq!(v["choices"][0]["message"]["content"], "You said 4 ");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 3);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn reasoning_and_cached_tokens() {
        let up = upstream().await;
        let long = "word ".repeat(1100);
        let body = serde_json::json!({
            "model": "gpt-5-mini",
            "messages": [{"role": "user", "content": long}]
        });
        let v = post(&up, "/v1/chat/completions", &body).await.json();
        let usage = &v["usage"];
        assert_eq!(usage["prompt_tokens"], 1107);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 512);
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert_eq!(
            usage["completion_tokens_details"]["reasoning_tokens"],
            completion / 4
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn weather_question_with_tools_calls_the_first_tool() {
        let up = upstream().await;
        let mut body = serde_json::json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "What's the Weather in Madrid?"}],
            "tools": [{"type": "function", "function": {"name": "get_forecast", "parameters": {}}}]
        });
        let v = post(&up, "/v1/chat/completions", &body).await.json();
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        let call = &choice["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_demo"));
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_forecast");
        assert_eq!(call["function"]["arguments"], r#"{"location":"Madrid"}"#);

        body["stream"] = true.into();
        let reply = post(&up, "/v1/chat/completions", &body).await;
        let events = data_events(reply.text());
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let start = &chunks[1]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(start["id"], call["id"]);
        assert_eq!(start["function"]["name"], "get_forecast");
        assert_eq!(start["function"]["arguments"], "");
        let args: String = chunks[2..]
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, r#"{"location":"Madrid"}"#);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }
}
