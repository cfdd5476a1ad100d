//! What a request tells about the model call before it is sent.
//!
//! The operation comes from the path alone, so an unparseable body still
//! yields a recognised call; the body is read leniently (unknown fields are
//! ignored, wrong types make that one field unknown) because tokentap must
//! forward whatever the client sends.

use serde::Deserialize;
use serde_json::Value;

/// The four OpenAI operations tokentap understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ChatCompletions,
    Responses,
    Completions,
    Embeddings,
}

impl Operation {
    /// Recognises the operation from the client's path (any prefix before `/v1` is allowed,
    /// as is a path without `/v1`, which some gateways use).
    ///
    /// ```
    /// use tokentap::genai::request::Operation;
    /// assert_eq!(Operation::from_path("/v1/chat/completions"), Some(Operation::ChatCompletions));
    /// assert_eq!(Operation::from_path("/v1/models"), None);
    /// ```
    pub fn from_path(path: &str) -> Option<Operation> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(Operation::ChatCompletions)
        } else if path.ends_with("/responses") {
            Some(Operation::Responses)
        } else if path.ends_with("/completions") {
            Some(Operation::Completions)
        } else if path.ends_with("/embeddings") {
            Some(Operation::Embeddings)
        } else {
            None
        }
    }

    /// `gen_ai.operation.name`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ChatCompletions | Operation::Responses => "chat",
            Operation::Completions => "text_completion",
            Operation::Embeddings => "embeddings",
        }
    }

    /// `openai.api.type`.
    pub fn api_type(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "chat_completions",
            Operation::Responses => "responses",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
        }
    }

    /// Streams of these operations carry usage only when asked via `stream_options`.
    pub fn usage_is_opt_in(self) -> bool {
        matches!(self, Operation::ChatCompletions | Operation::Completions)
    }
}

/// Facts read from a request body. Every field is optional: a body may be anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestFacts {
    pub model: Option<String>,
    pub stream: bool,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: Option<bool>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub stop_sequences: Vec<String>,
    pub seed: Option<i64>,
    pub choice_count: Option<i64>,
    pub service_tier: Option<String>,
    pub encoding_formats: Vec<String>,
    /// `gen_ai.output.type`: `text`, `json` or `image`/`speech` when the request says so.
    pub output_type: Option<&'static str>,
    pub tool_count: usize,
    /// Embedding dimensions requested.
    pub dimensions: Option<i64>,
}

/// Lenient view of the request: each field deserialises on its own.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRequest {
    model: Option<Value>,
    stream: Option<Value>,
    stream_options: Option<Value>,
    temperature: Option<Value>,
    top_p: Option<Value>,
    max_tokens: Option<Value>,
    max_completion_tokens: Option<Value>,
    max_output_tokens: Option<Value>,
    frequency_penalty: Option<Value>,
    presence_penalty: Option<Value>,
    stop: Option<Value>,
    seed: Option<Value>,
    n: Option<Value>,
    service_tier: Option<Value>,
    encoding_format: Option<Value>,
    response_format: Option<Value>,
    text: Option<Value>,
    modalities: Option<Value>,
    tools: Option<Value>,
    dimensions: Option<Value>,
}

/// Why a body could not be read as a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidJson;

impl RequestFacts {
    pub fn parse(body: &[u8]) -> Result<RequestFacts, InvalidJson> {
        // serde would also accept a JSON array as a struct; only objects are requests
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(InvalidJson);
        }
        let raw: RawRequest = serde_json::from_slice(body).map_err(|_| InvalidJson)?;
        let output_type = output_type(&raw);
        let stop_sequences = match raw.stop {
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(a)) => a
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Ok(RequestFacts {
            model: raw.model.and_then(string),
            stream: raw.stream.and_then(|v| v.as_bool()).unwrap_or(false),
            include_usage: raw
                .stream_options
                .as_ref()
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool),
            temperature: raw.temperature.and_then(|v| v.as_f64()),
            top_p: raw.top_p.and_then(|v| v.as_f64()),
            max_tokens: raw
                .max_completion_tokens
                .or(raw.max_tokens)
                .or(raw.max_output_tokens)
                .and_then(|v| v.as_i64()),
            frequency_penalty: raw.frequency_penalty.and_then(|v| v.as_f64()),
            presence_penalty: raw.presence_penalty.and_then(|v| v.as_f64()),
            stop_sequences,
            seed: raw.seed.and_then(|v| v.as_i64()),
            choice_count: raw.n.and_then(|v| v.as_i64()),
            service_tier: raw.service_tier.and_then(string),
            encoding_formats: raw.encoding_format.and_then(string).into_iter().collect(),
            output_type,
            tool_count: raw
                .tools
                .as_ref()
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            dimensions: raw.dimensions.and_then(|v| v.as_i64()),
        })
    }
}

fn string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        _ => None,
    }
}

fn output_type(raw: &RawRequest) -> Option<&'static str> {
    let format_type = raw
        .response_format
        .as_ref()
        .and_then(|f| f.get("type"))
        .or_else(|| {
            raw.text
                .as_ref()
                .and_then(|t| t.get("format"))
                .and_then(|f| f.get("type"))
        })
        .and_then(Value::as_str);
    match format_type {
        Some("json_object" | "json_schema") => return Some("json"),
        Some("text") => return Some("text"),
        _ => {}
    }
    let audio = raw
        .modalities
        .as_ref()
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|v| v.as_str() == Some("audio")));
    audio.then_some("speech")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_from_paths() {
        assert_eq!(
            Operation::from_path("/v1/chat/completions"),
            Some(Operation::ChatCompletions)
        );
        assert_eq!(
            Operation::from_path("/openai/v1/responses/"),
            Some(Operation::Responses)
        );
        assert_eq!(
            Operation::from_path("/v1/completions"),
            Some(Operation::Completions)
        );
        assert_eq!(
            Operation::from_path("/v1/embeddings"),
            Some(Operation::Embeddings)
        );
        assert_eq!(Operation::from_path("/v1/models"), None);
        assert_eq!(Operation::from_path("/v1/responses/resp_1/cancel"), None);
    }

    #[test]
    fn chat_request_facts() {
        let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],
            "stream":true,"stream_options":{"include_usage":false},"temperature":0.2,"top_p":1,
            "max_completion_tokens":50,"frequency_penalty":0.5,"presence_penalty":-0.5,
            "stop":["\n\n","END"],"seed":7,"n":2,"service_tier":"flex",
            "response_format":{"type":"json_schema"},"tools":[{"type":"function"}]}"#;
        let f = RequestFacts::parse(body).expect("valid");
        assert_eq!(f.model.as_deref(), Some("gpt-4o-mini"));
        assert!(f.stream);
        assert_eq!(f.include_usage, Some(false));
        assert_eq!(f.temperature, Some(0.2));
        assert_eq!(f.top_p, Some(1.0));
        assert_eq!(f.max_tokens, Some(50));
        assert_eq!(f.frequency_penalty, Some(0.5));
        assert_eq!(f.presence_penalty, Some(-0.5));
        assert_eq!(f.stop_sequences, vec!["\n\n".to_owned(), "END".to_owned()]);
        assert_eq!(f.seed, Some(7));
        assert_eq!(f.choice_count, Some(2));
        assert_eq!(f.service_tier.as_deref(), Some("flex"));
        assert_eq!(f.output_type, Some("json"));
        assert_eq!(f.tool_count, 1);
    }

    #[test]
    fn wrong_types_make_fields_unknown_not_errors() {
        let f =
            RequestFacts::parse(br#"{"model":5,"stream":"yes","temperature":"hot","stop":"x"}"#)
                .expect("still an object");
        assert_eq!(f.model, None);
        assert!(!f.stream);
        assert_eq!(f.temperature, None);
        assert_eq!(f.stop_sequences, vec!["x".to_owned()]);
    }

    #[test]
    fn duplicate_keys_last_one_wins() {
        let f = RequestFacts::parse(
            br#"{"model":"decoy","stream":false,"messages":[],"model":"gpt-4o","stream":true}"#,
        )
        .expect("an object");
        assert_eq!(f.model.as_deref(), Some("gpt-4o"));
        assert!(f.stream);
        let g = RequestFacts::parse(br#"{"model":"gpt-4o","model":5}"#).expect("an object");
        assert_eq!(g.model, None, "the last value is the one the upstream sees");
    }

    #[test]
    fn integral_float_counts_are_counts() {
        let f = RequestFacts::parse(br#"{"model":"m","max_tokens":50.0,"n":2.0,"seed":1.5}"#)
            .expect("an object");
        assert_eq!(f.max_tokens, Some(50));
        assert_eq!(f.choice_count, Some(2));
        assert_eq!(f.seed, None);
        assert_eq!(f.model.as_deref(), Some("m"));
    }

    #[test]
    fn invalid_json_is_reported() {
        assert_eq!(RequestFacts::parse(b"model=gpt-4o"), Err(InvalidJson));
        assert_eq!(RequestFacts::parse(b"[1,2]"), Err(InvalidJson));
        assert!(RequestFacts::parse(b"").is_err());
    }

    #[test]
    fn embeddings_and_responses_facts() {
        let f = RequestFacts::parse(
            br#"{"model":"text-embedding-3-small","input":["a"],"encoding_format":"base64","dimensions":256}"#,
        )
        .expect("valid");
        assert_eq!(f.encoding_formats, vec!["base64".to_owned()]);
        assert_eq!(f.dimensions, Some(256));
        let r = RequestFacts::parse(br#"{"model":"gpt-5","input":"x","max_output_tokens":9,"text":{"format":{"type":"text"}}}"#)
            .expect("valid");
        assert_eq!(r.max_tokens, Some(9));
        assert_eq!(r.output_type, Some("text"));
    }
}
