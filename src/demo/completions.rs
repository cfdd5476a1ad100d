//! `POST /v1/completions`: the legacy text completions, whose `prompt` may be
//! text or token ids.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use super::text::{Fnv, Generation, words};
use super::wire::{
    ApiError, CREATED, DONE, Payload, choice_count, flag, include_usage, round_robin, sse_data,
    to_json, token_limit,
};

#[derive(Serialize, Clone, Copy)]
struct TextUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize)]
struct TextCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<TextChoice<'a>>,
    usage: TextUsage,
}

#[derive(Serialize)]
struct TextChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    choices: Vec<TextChoice<'a>>,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<TextUsage>>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// The legacy `prompt`: a string, an array of strings (the first is used) or token arrays.
/// Returns the text, its token count and the request hash.
fn legacy_prompt(model: &str, prompt: Option<&Value>) -> Result<(String, u64, u64), ApiError> {
    let fnv = Fnv::new().str(model);
    let from_text = |text: &str| (text.to_owned(), words(text), fnv.str(text).finish());
    let from_tokens = |tokens: &[Value]| {
        let hash = tokens
            .iter()
            .fold(fnv, |h, t| h.str(&t.to_string()).str(" "))
            .finish();
        (String::new(), tokens.len() as u64, hash)
    };
    let is_tokens = |items: &[Value]| items.iter().all(Value::is_u64);
    match prompt {
        None | Some(Value::Null) => Ok(from_text("")),
        Some(Value::String(s)) => Ok(from_text(s)),
        Some(Value::Array(items)) => match items.first() {
            None => Ok(from_text("")),
            Some(Value::String(s)) => Ok(from_text(s)),
            Some(Value::Array(tokens)) if is_tokens(tokens) => Ok(from_tokens(tokens)),
            Some(Value::Number(_)) if is_tokens(items) => Ok(from_tokens(items)),
            Some(_) => Err(ApiError::invalid(
                "Invalid 'prompt': expected a string, an array of strings or token arrays."
                    .to_owned(),
                Some("prompt"),
            )),
        },
        Some(_) => Err(ApiError::invalid(
            "Invalid type for 'prompt': expected a string or an array.".to_owned(),
            Some("prompt"),
        )),
    }
}

/// Generates the answer: the request hash and the JSON or event-stream payload.
pub(super) fn generate(
    obj: &Map<String, Value>,
    model: &str,
    force_stream: bool,
) -> Result<(u64, Payload), ApiError> {
    let (text, prompt_tokens, hash) = legacy_prompt(model, obj.get("prompt"))?;
    let stream = force_stream || flag(obj, "stream")?;
    let n = choice_count(obj)?;
    let limit = token_limit(obj, &["max_tokens"])?;
    let said = words(&text);
    let generations: Vec<Generation> = (0..n)
        .map(|i| Generation::text(said, hash, i, limit))
        .collect();
    let completion_tokens: u64 = generations.iter().map(Generation::tokens).sum();
    let usage = TextUsage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    };
    let id = format!("cmpl-demo{hash:016x}");

    if !stream {
        let texts: Vec<String> = generations.iter().map(Generation::text_so_far).collect();
        let choices = (0u32..)
            .zip(generations.iter().zip(&texts))
            .map(|(index, (g, text))| TextChoice {
                text,
                index,
                logprobs: None,
                finish_reason: Some(g.finish_reason),
            })
            .collect();
        let body = TextCompletion {
            id: &id,
            object: "text_completion",
            created: CREATED,
            model,
            choices,
            usage,
        };
        return Ok((hash, Payload::Json(to_json(&body))));
    }

    let with_usage = include_usage(obj);
    let chunk = |choices: Vec<TextChoice<'_>>, usage: Option<Option<TextUsage>>| {
        sse_data(&TextChunk {
            id: &id,
            object: "text_completion",
            created: CREATED,
            choices,
            model,
            usage,
        })
    };
    let lanes = generations
        .iter()
        .map(|g| {
            let mut lane: Vec<(&str, Option<&'static str>)> =
                g.pieces.iter().map(|p| (p.as_str(), None)).collect();
            lane.push(("", Some(g.finish_reason)));
            lane
        })
        .collect();
    let mut events: Vec<Bytes> = round_robin(lanes)
        .into_iter()
        .map(|(index, (text, finish_reason))| {
            let choice = TextChoice {
                text,
                index,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::testkit::*;
    use crate::demo::text::pieces;

    #[tokio::test(flavor = "multi_thread")]
    async fn legacy_completions() {
        let up = upstream().await;
        let mut body = serde_json::json!({"model": "gpt-3.5-turbo-instruct", "prompt": ["Say something nice", "ignored"]});
        let reply = post(&up, "/v1/completions", &body).await;
        let v = reply.json();
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-demo"));
        assert_eq!(v["object"], "text_completion");
        let text = v["choices"][0]["text"].as_str().unwrap().to_owned();
        assert!(text.starts_with("You said 3 words. "));
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["usage"]["completion_tokens"], pieces(&text).len());

        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
        let reply = post(&up, "/v1/completions", &body).await;
        let events = data_events(reply.text());
        assert_eq!(*events.last().unwrap(), "[DONE]");
        let mut streamed = String::new();
        for e in &events[..events.len() - 2] {
            assert!(
                e.ends_with(r#""model":"gpt-3.5-turbo-instruct","usage":null}"#),
                "{e}"
            );
            let c: Value = serde_json::from_str(e).unwrap();
            streamed.push_str(c["choices"][0]["text"].as_str().unwrap());
        }
        assert_eq!(streamed, text);
        let usage: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"], v["usage"]);
    }
}
