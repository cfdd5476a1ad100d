//! Prompts and completions in the GenAI conventions' message schema.
//!
//! Only used when the user opts in to content capture. Messages become
//! `[{"role", "parts": [{"type": "text", "content"} | {"type": "tool_call", …}]}]`
//! JSON; every text is cut at [`TEXT_CAP`] bytes (marked with `…`) and only
//! the last [`MAX_MESSAGES`] messages are kept, so a span stays bounded
//! whatever the conversation's size.

use serde_json::{Value, json};

use super::request::Operation;

/// Message content in the conventions' JSON schema, one string per attribute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Content {
    pub system_instructions: Option<String>,
    pub input_messages: Option<String>,
    pub output_messages: Option<String>,
}

/// Longest text kept per part, in bytes.
pub const TEXT_CAP: usize = 8 * 1024;
/// Most messages kept per attribute (the latest ones).
pub const MAX_MESSAGES: usize = 64;

/// Cuts `s` to [`TEXT_CAP`] bytes at a character boundary.
pub fn cap(s: &str) -> String {
    if s.len() <= TEXT_CAP {
        return s.to_owned();
    }
    let mut end = TEXT_CAP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn text_part(s: &str) -> Value {
    json!({"type": "text", "content": cap(s)})
}

/// Text of a content field: a string, or the text of its parts.
fn content_parts(content: &Value) -> Vec<Value> {
    match content {
        Value::String(s) => vec![text_part(s)],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| {
                let text = p.get("text").and_then(Value::as_str)?;
                Some(text_part(text))
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn tool_call_part(id: Option<&Value>, name: Option<&Value>, args: Option<&Value>) -> Value {
    json!({
        "type": "tool_call",
        "id": id.cloned().unwrap_or(Value::Null),
        "name": name.cloned().unwrap_or(Value::Null),
        "arguments": args.and_then(Value::as_str).map(cap).map(Value::String).unwrap_or(Value::Null),
    })
}

fn finish(system: Vec<Value>, mut messages: Vec<Value>) -> Option<Content> {
    if messages.len() > MAX_MESSAGES {
        messages.drain(..messages.len() - MAX_MESSAGES);
    }
    let to_json = |v: Vec<Value>| (!v.is_empty()).then(|| Value::Array(v).to_string());
    Some(Content {
        system_instructions: to_json(system),
        input_messages: to_json(messages),
        output_messages: None,
    })
}

/// System instructions and input messages of a request body.
pub fn from_request(op: Operation, body: &[u8]) -> Option<Content> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut system = Vec::new();
    let mut messages = Vec::new();
    match op {
        Operation::ChatCompletions => {
            for m in v.get("messages")?.as_array()? {
                let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                let mut parts = m.get("content").map(content_parts).unwrap_or_default();
                if matches!(role, "system" | "developer") {
                    system.extend(parts);
                    continue;
                }
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for c in calls {
                        let f = c.get("function");
                        parts.push(tool_call_part(
                            c.get("id"),
                            f.and_then(|f| f.get("name")),
                            f.and_then(|f| f.get("arguments")),
                        ));
                    }
                }
                if role == "tool" {
                    let response = m.get("content").and_then(Value::as_str).map(cap);
                    parts = vec![
                        json!({"type": "tool_call_response", "id": m.get("tool_call_id"), "response": response}),
                    ];
                }
                messages.push(json!({"role": role, "parts": parts}));
            }
        }
        Operation::Responses => {
            if let Some(i) = v.get("instructions").and_then(Value::as_str) {
                system.push(text_part(i));
            }
            match v.get("input")? {
                Value::String(s) => messages.push(json!({"role": "user", "parts": [text_part(s)]})),
                Value::Array(items) => {
                    for item in items {
                        match item.get("type").and_then(Value::as_str) {
                            Some("function_call") => messages.push(json!({"role": "assistant", "parts": [
                                tool_call_part(item.get("call_id"), item.get("name"), item.get("arguments"))]})),
                            Some("function_call_output") => messages.push(json!({"role": "tool", "parts": [
                                {"type": "tool_call_response", "id": item.get("call_id"),
                                 "response": item.get("output").and_then(Value::as_str).map(cap)}]})),
                            _ => {
                                let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                                let parts = item.get("content").map(content_parts).unwrap_or_default();
                                if matches!(role, "system" | "developer") {
                                    system.extend(parts);
                                } else {
                                    messages.push(json!({"role": role, "parts": parts}));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Operation::Completions => {
            let prompt = match v.get("prompt")? {
                Value::String(s) => s.clone(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => return None,
            };
            messages.push(json!({"role": "user", "parts": [text_part(&prompt)]}));
        }
        Operation::ImageGenerations | Operation::Moderations => {
            // an image prompt is text; a moderation input is a string or a list of them
            let text = match v.get(if op == Operation::Moderations {
                "input"
            } else {
                "prompt"
            })? {
                Value::String(s) => s.clone(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => return None,
            };
            messages.push(json!({"role": "user", "parts": [text_part(&text)]}));
        }
        // embeddings' inputs are not messages; the upload operations' forms are not read
        Operation::Embeddings
        | Operation::AudioTranscriptions
        | Operation::AudioTranslations
        | Operation::ImageEdits
        | Operation::Realtime => return None,
    }
    finish(system, messages)
}

/// One assembled output choice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputChoice {
    pub text: String,
    /// (id, name, arguments)
    pub tool_calls: Vec<(Option<String>, Option<String>, String)>,
    pub finish_reason: Option<String>,
}

impl OutputChoice {
    /// Appends streamed text, stopping at the cap.
    pub fn push_text(&mut self, s: &str) {
        push_capped(&mut self.text, s);
    }
}

/// Appends `s` to `buf` without growing past [`TEXT_CAP`].
pub fn push_capped(buf: &mut String, s: &str) {
    if buf.len() >= TEXT_CAP {
        return;
    }
    let room = TEXT_CAP - buf.len();
    if s.len() <= room {
        buf.push_str(s);
    } else {
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        buf.push_str(&s[..end]);
        buf.push('…');
    }
}

/// `gen_ai.output.messages` JSON for assembled choices.
pub fn output_json(choices: &[OutputChoice]) -> Option<String> {
    if choices.is_empty() {
        return None;
    }
    let msgs: Vec<Value> = choices
        .iter()
        .map(|c| {
            let mut parts = Vec::new();
            if !c.text.is_empty() {
                parts.push(json!({"type": "text", "content": c.text}));
            }
            for (id, name, args) in &c.tool_calls {
                parts.push(json!({"type": "tool_call", "id": id, "name": name, "arguments": args}));
            }
            json!({"role": "assistant", "parts": parts, "finish_reason": c.finish_reason})
        })
        .collect();
    Some(Value::Array(msgs).to_string())
}

/// Output choices of a whole (non-stream) response body, or of a Responses API object.
pub fn output_from_value(op: Operation, v: &Value) -> Vec<OutputChoice> {
    match op {
        Operation::ChatCompletions | Operation::Completions => v
            .get("choices")
            .and_then(Value::as_array)
            .map(|choices| {
                choices
                    .iter()
                    .map(|c| {
                        let mut out = OutputChoice {
                            finish_reason: c
                                .get("finish_reason")
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                            ..OutputChoice::default()
                        };
                        let msg = c.get("message");
                        let text = msg
                            .and_then(|m| m.get("content").or(m.get("refusal")))
                            .and_then(Value::as_str)
                            .or(c.get("text").and_then(Value::as_str))
                            .unwrap_or("");
                        out.push_text(text);
                        if let Some(calls) = msg
                            .and_then(|m| m.get("tool_calls"))
                            .and_then(Value::as_array)
                        {
                            for tc in calls {
                                let f = tc.get("function");
                                out.tool_calls.push((
                                    tc.get("id").and_then(Value::as_str).map(str::to_owned),
                                    f.and_then(|f| f.get("name"))
                                        .and_then(Value::as_str)
                                        .map(str::to_owned),
                                    cap(f
                                        .and_then(|f| f.get("arguments"))
                                        .and_then(Value::as_str)
                                        .unwrap_or("")),
                                ));
                            }
                        }
                        out
                    })
                    .collect()
            })
            .unwrap_or_default(),
        Operation::Responses => {
            let mut out = OutputChoice {
                finish_reason: super::response::responses_finish_reason(v),
                ..OutputChoice::default()
            };
            for item in v
                .get("output")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match item.get("type").and_then(Value::as_str) {
                    Some("message") => {
                        for p in item
                            .get("content")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            if let Some(t) =
                                p.get("text").or(p.get("refusal")).and_then(Value::as_str)
                            {
                                out.push_text(t);
                            }
                        }
                    }
                    Some("function_call") => out.tool_calls.push((
                        item.get("call_id")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        item.get("name").and_then(Value::as_str).map(str::to_owned),
                        cap(item.get("arguments").and_then(Value::as_str).unwrap_or("")),
                    )),
                    _ => {}
                }
            }
            vec![out]
        }
        Operation::AudioTranscriptions | Operation::AudioTranslations => {
            let mut out = OutputChoice::default();
            out.push_text(v.get("text").and_then(Value::as_str).unwrap_or(""));
            vec![out]
        }
        // images are not text; moderation results are scores
        Operation::Embeddings
        | Operation::ImageGenerations
        | Operation::ImageEdits
        | Operation::Moderations
        | Operation::Realtime => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_input_in_the_conventions_schema() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Weather?"},{"type":"image_url","image_url":{"url":"x"}}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"sunny"}]}"#;
        let c = from_request(Operation::ChatCompletions, body).expect("content");
        let sys: Value =
            serde_json::from_str(c.system_instructions.as_deref().expect("system")).expect("json");
        assert_eq!(sys, json!([{"type":"text","content":"Be brief."}]));
        let msgs: Value =
            serde_json::from_str(c.input_messages.as_deref().expect("input")).expect("json");
        assert_eq!(
            msgs[0],
            json!({"role":"user","parts":[{"type":"text","content":"Weather?"}]})
        );
        assert_eq!(msgs[1]["parts"][0]["type"], "tool_call");
        assert_eq!(msgs[1]["parts"][0]["name"], "get_weather");
        assert_eq!(
            msgs[2],
            json!({"role":"tool","parts":[{"type":"tool_call_response","id":"c1","response":"sunny"}]})
        );
    }

    #[test]
    fn long_text_is_capped_and_messages_bounded() {
        let long = "é".repeat(TEXT_CAP);
        assert!(cap(&long).len() <= TEXT_CAP + '…'.len_utf8());
        assert!(cap(&long).ends_with('…'));
        let many: Vec<Value> = (0..200)
            .map(|i| json!({"role":"user","content":format!("m{i}")}))
            .collect();
        let body = json!({"messages": many}).to_string();
        let c = from_request(Operation::ChatCompletions, body.as_bytes()).expect("content");
        let msgs: Value =
            serde_json::from_str(c.input_messages.as_deref().expect("input")).expect("json");
        assert_eq!(msgs.as_array().map(Vec::len), Some(MAX_MESSAGES));
        assert_eq!(msgs[MAX_MESSAGES - 1]["parts"][0]["content"], "m199");
    }

    #[test]
    fn outputs_of_chat_and_responses() {
        let chat = json!({"choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}]});
        let out = output_json(&output_from_value(Operation::ChatCompletions, &chat)).expect("json");
        assert_eq!(
            serde_json::from_str::<Value>(&out).expect("json"),
            json!([{"role":"assistant","parts":[{"type":"text","content":"Hi"}],"finish_reason":"stop"}])
        );
        let resp = json!({"status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":"Hola"}]}]});
        let out = output_from_value(Operation::Responses, &resp);
        assert_eq!(out[0].text, "Hola");
        assert_eq!(out[0].finish_reason.as_deref(), Some("completed"));
        let r = from_request(
            Operation::Responses,
            r#"{"instructions":"Sé breve","input":"hola"}"#.as_bytes(),
        )
        .expect("content");
        assert!(
            r.system_instructions
                .is_some_and(|s| s.contains("Sé breve"))
        );
    }
}
