//! `POST /v1/responses`: the Responses API object and its typed event stream
//! (`response.created` … `response.completed`, numbered by `sequence_number`).

use serde::Serialize;
use serde_json::{Map, Value};

use super::text::{Generation, Prompt, cached_tokens, content_text, mix, reasoning_tokens};
use super::wire::{
    ApiError, CREATED, NO_ANNOTATIONS, Payload, SERVICE_TIER, flag, sse_event, to_json, token_limit,
};

#[derive(Serialize, Clone, Copy)]
struct ResponseUsage {
    input_tokens: u64,
    input_tokens_details: InputTokensDetails,
    output_tokens: u64,
    output_tokens_details: OutputTokensDetails,
    total_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct InputTokensDetails {
    cached_tokens: u64,
}

#[derive(Serialize, Clone, Copy)]
struct OutputTokensDetails {
    reasoning_tokens: u64,
}

#[derive(Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    incomplete_details: Option<IncompleteDetails>,
    model: &'a str,
    output: Vec<OutputMessage<'a>>,
    usage: Option<ResponseUsage>,
    service_tier: &'static str,
}

#[derive(Serialize)]
struct IncompleteDetails {
    reason: &'static str,
}

#[derive(Serialize)]
struct OutputMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    status: &'static str,
    role: &'static str,
    content: Vec<OutputText<'a>>,
}

#[derive(Serialize)]
struct OutputText<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    annotations: &'static [()],
}

#[derive(Serialize)]
struct ResponseEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    response: &'a ResponseObject<'a>,
}

#[derive(Serialize)]
struct OutputItemEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    output_index: u32,
    item: &'a OutputMessage<'a>,
}

#[derive(Serialize)]
struct ContentPartEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    part: OutputText<'a>,
}

#[derive(Serialize)]
struct TextDeltaEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    delta: &'a str,
}

#[derive(Serialize)]
struct TextDoneEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    text: &'a str,
}

fn output_message<'a>(
    id: &'a str,
    status: &'static str,
    text: Option<&'a str>,
) -> OutputMessage<'a> {
    OutputMessage {
        kind: "message",
        id,
        status,
        role: "assistant",
        content: text.map(output_text).into_iter().collect(),
    }
}

fn output_text(text: &str) -> OutputText<'_> {
    OutputText {
        kind: "output_text",
        text,
        annotations: NO_ANNOTATIONS,
    }
}

fn responses_prompt(obj: &Map<String, Value>, model: &str) -> Result<Prompt, ApiError> {
    let mut prompt = Prompt::new(model);
    if let Some(instructions) = obj.get("instructions").and_then(Value::as_str) {
        prompt.message("system", instructions.to_owned());
    }
    let invalid = || {
        ApiError::invalid(
            "Invalid 'input': expected a string or an array of input items.".to_owned(),
            Some("input"),
        )
    };
    match obj.get("input") {
        Some(Value::String(text)) => prompt.message("user", text.clone()),
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(text) => prompt.message("user", text.clone()),
                    Value::Object(item) => {
                        let role = item.get("role").and_then(Value::as_str).unwrap_or("");
                        let content = item.get("content").or_else(|| item.get("output"));
                        prompt.message(role, content_text(content));
                    }
                    _ => return Err(invalid()),
                }
            }
        }
        None | Some(Value::Null) => {
            let msg = "Missing required parameter: 'input'.".to_owned();
            return Err(ApiError::invalid(msg, Some("input")));
        }
        Some(_) => return Err(invalid()),
    }
    Ok(prompt)
}

/// Generates the answer: the request hash and the JSON or event-stream payload.
pub(super) fn generate(
    obj: &Map<String, Value>,
    model: &str,
    force_stream: bool,
) -> Result<(u64, Payload), ApiError> {
    let prompt = responses_prompt(obj, model)?;
    let stream = force_stream || flag(obj, "stream")?;
    let limit = token_limit(obj, &["max_output_tokens"])?;
    let hash = prompt.hash();
    let generation = Generation::text(prompt.last_user_words, hash, 0, limit);
    let text = generation.text_so_far();
    let incomplete = generation.finish_reason == "length";
    let output_tokens = generation.tokens();
    let usage = ResponseUsage {
        input_tokens: prompt.tokens,
        input_tokens_details: InputTokensDetails {
            cached_tokens: cached_tokens(prompt.tokens),
        },
        output_tokens,
        output_tokens_details: OutputTokensDetails {
            reasoning_tokens: reasoning_tokens(model, output_tokens),
        },
        total_tokens: prompt.tokens + output_tokens,
    };
    let id = format!("resp_demo{hash:016x}");
    let msg_id = format!("msg_demo{:016x}", mix(hash ^ 0x006d_7367));
    let (status, item_status) = if incomplete {
        ("incomplete", "incomplete")
    } else {
        ("completed", "completed")
    };
    let done_item = output_message(&msg_id, item_status, Some(&text));
    let finished = ResponseObject {
        id: &id,
        object: "response",
        created_at: CREATED,
        status,
        incomplete_details: incomplete.then_some(IncompleteDetails {
            reason: "max_output_tokens",
        }),
        model,
        output: vec![output_message(&msg_id, item_status, Some(&text))],
        usage: Some(usage),
        service_tier: SERVICE_TIER,
    };
    if !stream {
        return Ok((hash, Payload::Json(to_json(&finished))));
    }

    let started = ResponseObject {
        id: &id,
        object: "response",
        created_at: CREATED,
        status: "in_progress",
        incomplete_details: None,
        model,
        output: Vec::new(),
        usage: None,
        service_tier: SERVICE_TIER,
    };
    let new_item = output_message(&msg_id, "in_progress", None);
    let mut seq = 0u64;
    let mut next = || {
        seq += 1;
        seq - 1
    };
    let mut events = Vec::with_capacity(generation.pieces.len() + 8);
    for kind in ["response.created", "response.in_progress"] {
        let event = ResponseEvent {
            kind,
            sequence_number: next(),
            response: &started,
        };
        events.push(sse_event(kind, &event));
    }
    let kind = "response.output_item.added";
    let event = OutputItemEvent {
        kind,
        sequence_number: next(),
        output_index: 0,
        item: &new_item,
    };
    events.push(sse_event(kind, &event));
    let part_event = |kind: &'static str, sequence_number: u64, text: &str| {
        let event = ContentPartEvent {
            kind,
            sequence_number,
            item_id: &msg_id,
            output_index: 0,
            content_index: 0,
            part: output_text(text),
        };
        sse_event(kind, &event)
    };
    events.push(part_event("response.content_part.added", next(), ""));
    for piece in &generation.pieces {
        let kind = "response.output_text.delta";
        let event = TextDeltaEvent {
            kind,
            sequence_number: next(),
            item_id: &msg_id,
            output_index: 0,
            content_index: 0,
            delta: piece,
        };
        events.push(sse_event(kind, &event));
    }
    let kind = "response.output_text.done";
    let event = TextDoneEvent {
        kind,
        sequence_number: next(),
        item_id: &msg_id,
        output_index: 0,
        content_index: 0,
        text: &text,
    };
    events.push(sse_event(kind, &event));
    events.push(part_event("response.content_part.done", next(), &text));
    let kind = "response.output_item.done";
    let event = OutputItemEvent {
        kind,
        sequence_number: next(),
        output_index: 0,
        item: &done_item,
    };
    events.push(sse_event(kind, &event));
    let kind = if incomplete {
        "response.incomplete"
    } else {
        "response.completed"
    };
    let event = ResponseEvent {
        kind,
        sequence_number: next(),
        response: &finished,
    };
    events.push(sse_event(kind, &event));
    Ok((
        hash,
        Payload::Stream {
            events,
            hang: false,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::testkit::*;
    use crate::demo::text::pieces;

    #[tokio::test(flavor = "multi_thread")]
    async fn responses_non_stream_and_stream() {
        let up = upstream().await;
        let mut body = serde_json::json!({
            "model": "gpt-4.1",
            "instructions": "Be brief.",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Tell me about tracing"}]}]
        });
        let v = post(&up, "/v1/responses", &body).await.json();
        assert!(v["id"].as_str().unwrap().starts_with("resp_demo"));
        assert_eq!(v["status"], "completed");
        assert_eq!(v["created_at"], 1_750_000_000);
        let text = v["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(text.starts_with("You said 4 words. "));
        // 3 + (4 + 2) + (4 + 4)
        assert_eq!(v["usage"]["input_tokens"], 17);
        assert_eq!(v["usage"]["output_tokens"], pieces(&text).len());
        assert_eq!(v["usage"]["total_tokens"], 17 + pieces(&text).len());

        body["stream"] = true.into();
        let reply = post(&up, "/v1/responses", &body).await;
        assert_eq!(reply.header("content-type"), "text/event-stream");
        assert!(!reply.text().contains("[DONE]"));
        let events: Vec<(String, Value)> = reply
            .text()
            .strip_suffix("\n\n")
            .unwrap()
            .split("\n\n")
            .map(|e| {
                let (event, data) = e.split_once('\n').unwrap();
                let kind = event.strip_prefix("event: ").unwrap().to_owned();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], kind.as_str());
                (kind, data)
            })
            .collect();
        for (i, (_, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], i);
        }
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            &kinds[..4],
            &[
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ]
        );
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert!(events[0].1["response"]["usage"].is_null());
        let deltas: String = events
            .iter()
            .filter(|(k, _)| k == "response.output_text.delta")
            .map(|(_, d)| d["delta"].as_str().unwrap())
            .collect();
        assert_eq!(deltas, text);
        let (last_kind, last) = events.last().unwrap();
        assert_eq!(last_kind, "response.completed");
        assert_eq!(last["response"], v);
        assert_eq!(
            &kinds[kinds.len() - 4..kinds.len() - 1],
            &[
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done"
            ]
        );

        body["stream"] = false.into();
        body["max_output_tokens"] = 2.into();
        let v = post(&up, "/v1/responses", &body).await.json();
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(v["usage"]["output_tokens"], 2);
    }
}
