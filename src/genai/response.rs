//! What a response tells about the call: usage, finish reasons, ids.
//!
//! Chat, legacy completions, Responses API and embeddings name the same
//! facts differently (`prompt_tokens` vs `input_tokens`, `finish_reason` vs
//! `status`). They are read into one [`ResponseFacts`] so telemetry never
//! needs to know which API produced them. Reading is lenient: a missing or
//! oddly typed field leaves that fact unknown.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::request::Operation;

/// A string that borrows from the event when it has no escapes. serde only
/// borrows into a `Cow` that is a field's whole type, not one inside an
/// `Option`, hence the newtype.
#[derive(Deserialize)]
pub(crate) struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

impl Str<'_> {
    pub(crate) fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Token counts exactly as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All input tokens, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The provider's total when it sent one, else input + output.
    pub total_tokens: u64,
    pub cached_input_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
}

/// Facts read from a response (whole body or assembled from a stream).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseFacts {
    pub id: Option<String>,
    pub model: Option<String>,
    pub system_fingerprint: Option<String>,
    pub service_tier: Option<String>,
    /// One per choice, in choice-index order.
    pub finish_reasons: Vec<String>,
    pub usage: Option<Usage>,
    /// Length of the first embedding vector (float or base64).
    pub embedding_dimensions: Option<u64>,
    /// OpenAI error `code`, else `type`, from an error body.
    pub error_type: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
    prompt_tokens_details: Option<RawDetails>,
    input_tokens_details: Option<RawDetails>,
    completion_tokens_details: Option<RawDetails>,
    output_tokens_details: Option<RawDetails>,
}

#[derive(Deserialize)]
struct RawDetails {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

impl Usage {
    /// Reads any of the APIs' usage objects; `None` when it is null or carries no counts.
    pub fn from_value(v: &Value) -> Option<Usage> {
        Self::from_raw(RawUsage::deserialize(v).ok()?)
    }

    pub(crate) fn from_raw(raw: RawUsage) -> Option<Usage> {
        let input = raw.prompt_tokens.or(raw.input_tokens);
        let output = raw.completion_tokens.or(raw.output_tokens);
        if input.is_none() && output.is_none() && raw.total_tokens.is_none() {
            return None;
        }
        let input_tokens = input.unwrap_or(0);
        let output_tokens = output.unwrap_or(0);
        let input_details = raw.prompt_tokens_details.or(raw.input_tokens_details);
        let output_details = raw.completion_tokens_details.or(raw.output_tokens_details);
        Some(Usage {
            input_tokens,
            output_tokens,
            total_tokens: raw.total_tokens.unwrap_or(input_tokens + output_tokens),
            cached_input_tokens: input_details.and_then(|d| d.cached_tokens),
            reasoning_tokens: output_details.and_then(|d| d.reasoning_tokens),
        })
    }
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Reads the `error` member of an error body: its `code`, else its `type`.
pub fn error_type(v: &Value) -> Option<String> {
    let err = v.get("error")?;
    str_field(err, "code")
        .or_else(|| str_field(err, "type"))
        .or_else(|| err.as_str().map(str::to_owned))
}

/// Finish reason of a Responses API object: its status, or why it is incomplete.
pub fn responses_finish_reason(resp: &Value) -> Option<String> {
    let status = resp.get("status")?.as_str()?;
    match status {
        "incomplete" => Some(
            resp.get("incomplete_details")
                .and_then(|d| d.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or("incomplete")
                .to_owned(),
        ),
        "in_progress" | "queued" => None,
        other => Some(other.to_owned()),
    }
}

/// A whole response body, read without building a `Value` tree: only the
/// fields telemetry needs are kept (an embeddings body's vectors are counted,
/// not stored).
#[derive(Deserialize)]
struct RawBody<'a> {
    #[serde(borrow)]
    id: Option<Str<'a>>,
    #[serde(borrow)]
    model: Option<Str<'a>>,
    #[serde(borrow)]
    system_fingerprint: Option<Str<'a>>,
    #[serde(borrow)]
    service_tier: Option<Str<'a>>,
    usage: Option<RawUsage>,
    #[serde(borrow)]
    choices: Option<Vec<RawChoice<'a>>>,
    #[serde(borrow)]
    status: Option<Str<'a>>,
    #[serde(borrow)]
    incomplete_details: Option<RawIncomplete<'a>>,
    data: Option<FirstEmbedding>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct RawChoice<'a> {
    index: Option<u64>,
    #[serde(borrow)]
    finish_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct RawIncomplete<'a> {
    #[serde(borrow)]
    reason: Option<Str<'a>>,
}

/// The dimension count of the first embedding in `data`.
struct FirstEmbedding(Option<u64>);

impl<'de> Deserialize<'de> for FirstEmbedding {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FirstEmbedding;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of embeddings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<FirstEmbedding, A::Error> {
                #[derive(Deserialize)]
                struct Item {
                    embedding: Option<EmbeddingLen>,
                }
                let first: Option<Item> = seq.next_element()?;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(FirstEmbedding(first.and_then(|i| i.embedding).map(|e| e.0)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Length of one embedding: a float list, or base64 of little-endian f32s.
struct EmbeddingLen(u64);

impl<'de> Deserialize<'de> for EmbeddingLen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EmbeddingLen;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an embedding")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<EmbeddingLen, A::Error> {
                let mut n = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(EmbeddingLen(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<EmbeddingLen, E> {
                let pad = s.bytes().rev().take_while(|&b| b == b'=').count();
                Ok(EmbeddingLen(
                    ((s.len() / 4 * 3).saturating_sub(pad) / 4) as u64,
                ))
            }
        }
        d.deserialize_any(V)
    }
}

impl ResponseFacts {
    /// Reads a whole (non-stream) JSON body of `op`. Also reads error bodies.
    pub fn from_body(op: Operation, body: &[u8]) -> Result<ResponseFacts, serde_json::Error> {
        let raw: RawBody<'_> = serde_json::from_slice(body)?;
        let own = |s: Option<Str<'_>>| s.map(Str::into_owned);
        let mut f = ResponseFacts {
            error_type: raw
                .error
                .as_ref()
                .and_then(|e| error_type(&serde_json::json!({ "error": e }))),
            id: own(raw.id),
            model: own(raw.model),
            system_fingerprint: own(raw.system_fingerprint),
            service_tier: own(raw.service_tier),
            usage: raw.usage.and_then(Usage::from_raw),
            ..ResponseFacts::default()
        };
        match op {
            Operation::ChatCompletions | Operation::Completions => {
                let mut reasons: Vec<(u64, String)> = raw
                    .choices
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, c)| {
                        Some((c.index.unwrap_or(i as u64), c.finish_reason?.into_owned()))
                    })
                    .collect();
                reasons.sort_by_key(|r| r.0);
                f.finish_reasons = reasons.into_iter().map(|r| r.1).collect();
            }
            Operation::Responses => {
                f.finish_reasons = match raw.status.as_deref() {
                    Some("incomplete") => vec![
                        raw.incomplete_details
                            .and_then(|d| d.reason)
                            .map_or_else(|| "incomplete".to_owned(), Str::into_owned),
                    ],
                    Some("in_progress" | "queued") | None => Vec::new(),
                    Some(other) => vec![other.to_owned()],
                };
            }
            Operation::Embeddings => f.embedding_dimensions = raw.data.and_then(|d| d.0),
        }
        Ok(f)
    }

    pub fn from_value(op: Operation, v: &Value) -> ResponseFacts {
        let mut f = ResponseFacts {
            error_type: error_type(v),
            ..ResponseFacts::default()
        };
        f.merge_common(v);
        match op {
            Operation::ChatCompletions | Operation::Completions => {
                if let Some(choices) = v.get("choices").and_then(Value::as_array) {
                    let mut reasons: Vec<(u64, String)> = choices
                        .iter()
                        .enumerate()
                        .filter_map(|(i, c)| {
                            let idx = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
                            Some((idx, str_field(c, "finish_reason")?))
                        })
                        .collect();
                    reasons.sort_by_key(|r| r.0);
                    f.finish_reasons = reasons.into_iter().map(|r| r.1).collect();
                }
            }
            Operation::Responses => {
                f.finish_reasons = responses_finish_reason(v).into_iter().collect();
            }
            Operation::Embeddings => {
                f.embedding_dimensions = v
                    .get("data")
                    .and_then(Value::as_array)
                    .and_then(|d| d.first())
                    .and_then(|e| e.get("embedding"))
                    .and_then(embedding_len);
            }
        }
        f
    }

    /// Takes id, model, fingerprint, tier and usage from an object that has them.
    pub fn merge_common(&mut self, v: &Value) {
        if let Some(id) = str_field(v, "id") {
            self.id = Some(id);
        }
        if let Some(model) = str_field(v, "model") {
            self.model = Some(model);
        }
        if let Some(fp) = str_field(v, "system_fingerprint") {
            self.system_fingerprint = Some(fp);
        }
        if let Some(tier) = str_field(v, "service_tier") {
            self.service_tier = Some(tier);
        }
        if let Some(u) = v.get("usage").and_then(Usage::from_value) {
            self.usage = Some(u);
        }
    }
}

fn embedding_len(e: &Value) -> Option<u64> {
    match e {
        Value::Array(a) => Some(a.len() as u64),
        // base64 of little-endian f32s: 4 bytes per dimension
        Value::String(s) => {
            let pad = s.bytes().rev().take_while(|&b| b == b'=').count();
            Some(((s.len() / 4 * 3).saturating_sub(pad) / 4) as u64)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_completion_body() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06",
          "choices":[{"index":1,"message":{"role":"assistant","content":"b"},"finish_reason":"length"},
                     {"index":0,"message":{"role":"assistant","content":"a"},"finish_reason":"stop"}],
          "usage":{"prompt_tokens":1500,"completion_tokens":300,"total_tokens":1800,
                   "prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},
                   "completion_tokens_details":{"reasoning_tokens":64}},
          "service_tier":"default","system_fingerprint":"fp_x"}"#;
        let f = ResponseFacts::from_body(Operation::ChatCompletions, body).expect("json");
        assert_eq!(f.id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(f.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(f.finish_reasons, vec!["stop", "length"]);
        assert_eq!(f.system_fingerprint.as_deref(), Some("fp_x"));
        assert_eq!(f.service_tier.as_deref(), Some("default"));
        assert_eq!(
            f.usage,
            Some(Usage {
                input_tokens: 1500,
                output_tokens: 300,
                total_tokens: 1800,
                cached_input_tokens: Some(1024),
                reasoning_tokens: Some(64),
            })
        );
        assert_eq!(f.error_type, None);
    }

    #[test]
    fn responses_body_incomplete() {
        let body = br#"{"id":"resp_1","object":"response","status":"incomplete",
          "incomplete_details":{"reason":"max_output_tokens"},"model":"gpt-5-mini",
          "usage":{"input_tokens":10,"input_tokens_details":{"cached_tokens":0},"output_tokens":16,
                   "output_tokens_details":{"reasoning_tokens":16},"total_tokens":26}}"#;
        let f = ResponseFacts::from_body(Operation::Responses, body).expect("json");
        assert_eq!(f.finish_reasons, vec!["max_output_tokens"]);
        let u = f.usage.expect("usage");
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.total_tokens),
            (10, 16, 26)
        );
        assert_eq!(u.reasoning_tokens, Some(16));
    }

    #[test]
    fn legacy_completion_and_embeddings() {
        let c = ResponseFacts::from_body(
            Operation::Completions,
            br#"{"id":"cmpl-1","choices":[{"text":"x","index":0,"finish_reason":"stop"}],"model":"gpt-3.5-turbo-instruct","usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
        )
        .expect("json");
        assert_eq!(c.finish_reasons, vec!["stop"]);
        assert_eq!(c.usage.map(|u| u.total_tokens), Some(4));

        let e = ResponseFacts::from_body(
            Operation::Embeddings,
            br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
        )
        .expect("json");
        assert_eq!(e.embedding_dimensions, Some(3));
        let u = e.usage.expect("usage");
        assert_eq!((u.input_tokens, u.output_tokens, u.total_tokens), (8, 0, 8));

        // 2 f32 = 8 bytes = "AAAAAAAAAAA=" (12 chars, one pad)
        let b = ResponseFacts::from_body(
            Operation::Embeddings,
            br#"{"data":[{"embedding":"AAAAAAAAAAA="}]}"#,
        )
        .expect("json");
        assert_eq!(b.embedding_dimensions, Some(2));
    }

    #[test]
    fn error_bodies() {
        let f = ResponseFacts::from_body(
            Operation::ChatCompletions,
            br#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        )
        .expect("json");
        assert_eq!(f.error_type.as_deref(), Some("rate_limit_exceeded"));
        let g = ResponseFacts::from_body(
            Operation::ChatCompletions,
            br#"{"error":{"message":"x","type":"server_error","param":null,"code":null}}"#,
        )
        .expect("json");
        assert_eq!(g.error_type.as_deref(), Some("server_error"));
        assert!(ResponseFacts::from_body(Operation::ChatCompletions, b"{\"id\":").is_err());
    }

    #[test]
    fn one_odd_field_loses_only_itself() {
        // an integral float count is a count; a numeric fingerprint, a negative and an
        // absurd count are each dropped on their own, never the rest of the usage
        let body = br#"{"id":"chatcmpl-1","model":"gpt-4o","system_fingerprint":5,
          "usage":{"prompt_tokens":10,"completion_tokens":2.0,"total_tokens":12,
                   "prompt_tokens_details":{"cached_tokens":-1},
                   "completion_tokens_details":{"reasoning_tokens":1e300}}}"#;
        let f = ResponseFacts::from_body(Operation::ChatCompletions, body).expect("json");
        assert_eq!(f.model.as_deref(), Some("gpt-4o"));
        assert_eq!(f.system_fingerprint, None);
        assert_eq!(
            f.usage,
            Some(Usage {
                input_tokens: 10,
                output_tokens: 2,
                total_tokens: 12,
                cached_input_tokens: None,
                reasoning_tokens: None,
            })
        );
    }

    #[test]
    fn absurd_counts_are_dropped_without_overflow() {
        let body = br#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1}}"#;
        let f = ResponseFacts::from_body(Operation::ChatCompletions, body).expect("json");
        let u = f.usage.expect("the sane count survives");
        assert_eq!((u.input_tokens, u.output_tokens, u.total_tokens), (0, 1, 1));
    }

    #[test]
    fn duplicate_keys_last_one_wins() {
        let body = br#"{"model":"decoy","id":"a","model":"gpt-4o",
          "usage":{"prompt_tokens":1,"completion_tokens":3,"prompt_tokens":2},"id":"b"}"#;
        let f = ResponseFacts::from_body(Operation::ChatCompletions, body).expect("json");
        assert_eq!(f.model.as_deref(), Some("gpt-4o"));
        assert_eq!(f.id.as_deref(), Some("b"));
        let u = f.usage.expect("usage");
        assert_eq!((u.input_tokens, u.output_tokens, u.total_tokens), (2, 3, 5));
    }

    #[test]
    fn usage_from_a_value_is_lenient_too() {
        let v =
            serde_json::json!({"input_tokens": 4.0, "output_tokens": "many", "total_tokens": 9});
        let u = Usage::from_value(&v).expect("usage");
        assert_eq!((u.input_tokens, u.output_tokens, u.total_tokens), (4, 0, 9));
    }

    #[test]
    fn null_usage_is_no_usage() {
        assert_eq!(Usage::from_value(&Value::Null), None);
        assert_eq!(Usage::from_value(&serde_json::json!({})), None);
    }
}
