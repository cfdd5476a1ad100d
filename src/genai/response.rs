//! What a response tells about the call: usage, finish reasons, ids.
//!
//! Chat, legacy completions, Responses API and embeddings name the same
//! facts differently (`prompt_tokens` vs `input_tokens`, `finish_reason` vs
//! `status`). They are read into one [`ResponseFacts`] so telemetry never
//! needs to know which API produced them. Reading is lenient, field by field
//! (see `genai::lenient`): a missing field leaves that fact unknown, an
//! unusable one also marks the facts so the call counts `invalid_usage`.

use serde::de::MapAccess;
use serde_json::Value;

pub use super::details::TokenDetails;
use super::details::{InputDetails, Modalities, OutputDetails};
use super::lenient::{
    Count, Flaws, FromJson, Lenient, Str, from_value, members, object_from_slice,
};
use super::request::Operation;

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
    /// How input and output split by modality, as far as the provider said.
    pub details: TokenDetails,
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
    /// A usage count, usage detail, id, model, fingerprint or tier had an
    /// unusable type or value and was dropped on its own (`invalid_usage`).
    pub invalid_usage: bool,
}

/// Any of the APIs' usage objects, each count read on its own.
#[derive(Default)]
pub(crate) struct RawUsage {
    prompt_tokens: Lenient<Count>,
    completion_tokens: Lenient<Count>,
    input_tokens: Lenient<Count>,
    output_tokens: Lenient<Count>,
    total_tokens: Lenient<Count>,
    prompt_tokens_details: Lenient<InputDetails>,
    input_tokens_details: Lenient<InputDetails>,
    /// The transcription and Realtime APIs' spelling.
    input_token_details: Lenient<InputDetails>,
    completion_tokens_details: Lenient<OutputDetails>,
    output_tokens_details: Lenient<OutputDetails>,
    output_token_details: Lenient<OutputDetails>,
}

impl<'de> FromJson<'de> for RawUsage {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut u = RawUsage::default();
        members!(map {
            "prompt_tokens" => u.prompt_tokens,
            "completion_tokens" => u.completion_tokens,
            "input_tokens" => u.input_tokens,
            "output_tokens" => u.output_tokens,
            "total_tokens" => u.total_tokens,
            "prompt_tokens_details" => u.prompt_tokens_details,
            "input_tokens_details" => u.input_tokens_details,
            "input_token_details" => u.input_token_details,
            "completion_tokens_details" => u.completion_tokens_details,
            "output_tokens_details" => u.output_tokens_details,
            "output_token_details" => u.output_token_details,
        });
        Ok(Some(u))
    }
}

impl Flaws for RawUsage {
    fn flawed(&self) -> bool {
        [
            &self.prompt_tokens,
            &self.completion_tokens,
            &self.input_tokens,
            &self.output_tokens,
            &self.total_tokens,
        ]
        .iter()
        .any(|c| c.flawed())
            || self.prompt_tokens_details.flawed()
            || self.input_tokens_details.flawed()
            || self.input_token_details.flawed()
            || self.completion_tokens_details.flawed()
            || self.output_tokens_details.flawed()
            || self.output_token_details.flawed()
    }
}

fn count(c: &Lenient<Count>) -> Option<u64> {
    c.get().map(|c| c.0)
}

impl Usage {
    /// Reads any of the APIs' usage objects; `None` when it is null or carries no
    /// usable counts. An unusable count is left out (zero for input or output).
    pub fn from_value(v: &Value) -> Option<Usage> {
        from_value::<RawUsage>(Some(v))
            .ok()
            .and_then(|r| Self::from_raw(&r))
    }

    pub(crate) fn from_raw(raw: &RawUsage) -> Option<Usage> {
        let input = count(&raw.prompt_tokens).or(count(&raw.input_tokens));
        let output = count(&raw.completion_tokens).or(count(&raw.output_tokens));
        let total = count(&raw.total_tokens);
        if input.is_none() && output.is_none() && total.is_none() {
            return None;
        }
        let input_tokens = input.unwrap_or(0);
        let output_tokens = output.unwrap_or(0);
        // the first details object (in the order below) that has a count gives it
        let inputs = [
            &raw.prompt_tokens_details,
            &raw.input_tokens_details,
            &raw.input_token_details,
        ];
        let outputs = [
            &raw.completion_tokens_details,
            &raw.output_tokens_details,
            &raw.output_token_details,
        ];
        let input = |f: fn(&InputDetails) -> &Lenient<Count>| {
            inputs
                .iter()
                .find_map(|d| d.get().and_then(|d| count(f(d))))
        };
        let cached = |f: fn(&Modalities) -> &Lenient<Count>| {
            inputs.iter().find_map(|d| {
                d.get()
                    .and_then(|d| d.cached_tokens_details.get())
                    .and_then(|c| count(f(&c.0)))
            })
        };
        let output = |f: fn(&OutputDetails) -> &Lenient<Count>| {
            outputs
                .iter()
                .find_map(|d| d.get().and_then(|d| count(f(d))))
        };
        let details = TokenDetails {
            input_audio: input(|d| &d.split.audio_tokens),
            input_text: input(|d| &d.split.text_tokens),
            input_image: input(|d| &d.split.image_tokens),
            cached_audio: cached(|m| &m.audio_tokens),
            cached_text: cached(|m| &m.text_tokens),
            cached_image: cached(|m| &m.image_tokens),
            output_audio: output(|d| &d.split.audio_tokens),
            output_text: output(|d| &d.split.text_tokens),
            output_image: output(|d| &d.split.image_tokens),
        };
        Some(Usage {
            input_tokens,
            output_tokens,
            // believed counts are at most MAX_COUNT each: the sum cannot overflow
            total_tokens: total.unwrap_or(input_tokens + output_tokens),
            cached_input_tokens: input(|d| &d.cached_tokens),
            reasoning_tokens: output(|d| &d.reasoning_tokens),
            details,
        })
    }
}

/// Reads the `error` member of an error body: its `code`, else its `type`.
pub fn error_type(v: &Value) -> Option<String> {
    let err = v.get("error")?;
    let field = |key: &str| err.get(key).and_then(Value::as_str).map(str::to_owned);
    field("code")
        .or_else(|| field("type"))
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
#[derive(Default)]
struct RawBody<'a> {
    id: Lenient<Str<'a>>,
    model: Lenient<Str<'a>>,
    system_fingerprint: Lenient<Str<'a>>,
    service_tier: Lenient<Str<'a>>,
    usage: Lenient<Box<RawUsage>>,
    choices: Lenient<Vec<Lenient<RawChoice<'a>>>>,
    status: Lenient<Str<'a>>,
    incomplete_details: Lenient<RawIncomplete<'a>>,
    data: Lenient<FirstEmbedding>,
    error: Option<Value>,
}

impl<'de> FromJson<'de> for RawBody<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut b = RawBody::default();
        members!(map {
            "id" => b.id,
            "model" => b.model,
            "system_fingerprint" => b.system_fingerprint,
            "service_tier" => b.service_tier,
            "usage" => b.usage,
            "choices" => b.choices,
            "status" => b.status,
            "incomplete_details" => b.incomplete_details,
            "data" => b.data,
            "error" => b.error,
        });
        Ok(Some(b))
    }
}

/// The members every API's top level shares, read the same way from a body,
/// a chunk or a Responses object.
pub(crate) struct Common<'a> {
    pub id: Lenient<Str<'a>>,
    pub model: Lenient<Str<'a>>,
    pub system_fingerprint: Lenient<Str<'a>>,
    pub service_tier: Lenient<Str<'a>>,
    pub usage: Lenient<Box<RawUsage>>,
}

impl Common<'_> {
    pub fn flawed(&self) -> bool {
        self.id.flawed()
            || self.model.flawed()
            || self.system_fingerprint.flawed()
            || self.service_tier.flawed()
            || self.usage.flawed()
    }
}

#[derive(Default)]
struct RawChoice<'a> {
    index: Lenient<Count>,
    finish_reason: Lenient<Str<'a>>,
}

impl<'de> FromJson<'de> for RawChoice<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut c = RawChoice::default();
        members!(map {
            "index" => c.index,
            "finish_reason" => c.finish_reason,
        });
        Ok(Some(c))
    }
}

#[derive(Default)]
struct RawIncomplete<'a> {
    reason: Lenient<Str<'a>>,
}

impl<'de> FromJson<'de> for RawIncomplete<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut r = RawIncomplete::default();
        members!(map { "reason" => r.reason });
        Ok(Some(r))
    }
}

/// The dimension count of the first embedding in `data`.
struct FirstEmbedding(Option<u64>);

impl<'de> FromJson<'de> for FirstEmbedding {
    fn array<A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        #[derive(Default)]
        struct Item(Lenient<EmbeddingLen>);
        impl<'de> FromJson<'de> for Item {
            fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
                let mut i = Item::default();
                members!(map { "embedding" => i.0 });
                Ok(Some(i))
            }
        }
        let first = seq.next_element::<Lenient<Item>>()?;
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Some(FirstEmbedding(
            first
                .and_then(Lenient::ok)
                .and_then(|i| i.0.ok())
                .map(|e| e.0),
        )))
    }
}

/// Length of one embedding: a float list, or base64 of little-endian f32s.
struct EmbeddingLen(u64);

impl<'de> FromJson<'de> for EmbeddingLen {
    fn array<A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut n = 0;
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Some(EmbeddingLen(n)))
    }
    fn string(s: std::borrow::Cow<'de, str>) -> Option<Self> {
        Some(EmbeddingLen(base64_dimensions(&s)))
    }
}

/// Dimensions of an embedding sent as base64 of little-endian f32s (4 bytes each).
fn base64_dimensions(s: &str) -> u64 {
    let pad = s.bytes().rev().take_while(|&b| b == b'=').count();
    ((s.len() / 4 * 3).saturating_sub(pad) / 4) as u64
}

fn own(s: Lenient<Str<'_>>) -> Option<String> {
    s.ok().map(Str::into_owned)
}

/// Finish reasons of `choices`, in choice-index order.
fn chat_finish_reasons(choices: Vec<Lenient<RawChoice<'_>>>) -> Vec<String> {
    let mut reasons: Vec<(u64, String)> = choices
        .into_iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let c = c.ok()?;
            let idx = count(&c.index).unwrap_or(i as u64);
            Some((idx, c.finish_reason.ok()?.into_owned()))
        })
        .collect();
    reasons.sort_by_key(|r| r.0);
    reasons.into_iter().map(|r| r.1).collect()
}

impl ResponseFacts {
    /// Reads a whole (non-stream) JSON body of `op`. Also reads error bodies.
    /// An error only when the body is not a JSON object.
    pub fn from_body(op: Operation, body: &[u8]) -> Result<ResponseFacts, serde_json::Error> {
        let raw: RawBody<'_> = object_from_slice(body)?;
        let common = Common {
            id: raw.id,
            model: raw.model,
            system_fingerprint: raw.system_fingerprint,
            service_tier: raw.service_tier,
            usage: raw.usage,
        };
        let mut f = ResponseFacts {
            error_type: raw
                .error
                .as_ref()
                .and_then(|e| error_type(&serde_json::json!({ "error": e }))),
            ..ResponseFacts::default()
        };
        f.merge(common);
        match op {
            Operation::ChatCompletions | Operation::Completions => {
                f.finish_reasons = chat_finish_reasons(raw.choices.ok().unwrap_or_default());
            }
            Operation::Responses => {
                f.finish_reasons = match raw.status.get().map(|s| &**s) {
                    Some("incomplete") => vec![
                        raw.incomplete_details
                            .ok()
                            .and_then(|d| own(d.reason))
                            .unwrap_or_else(|| "incomplete".to_owned()),
                    ],
                    Some("in_progress" | "queued") | None => Vec::new(),
                    Some(other) => vec![other.to_owned()],
                };
            }
            Operation::Embeddings => f.embedding_dimensions = raw.data.ok().and_then(|d| d.0),
            // usage, id and model are all these tell
            Operation::AudioTranscriptions
            | Operation::AudioTranslations
            | Operation::ImageGenerations
            | Operation::ImageEdits
            | Operation::Moderations
            | Operation::Realtime => {}
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
                f.finish_reasons = chat_finish_reasons(
                    from_value::<Vec<Lenient<RawChoice<'_>>>>(v.get("choices"))
                        .ok()
                        .unwrap_or_default(),
                );
            }
            Operation::Responses => {
                f.finish_reasons = responses_finish_reason(v).into_iter().collect();
            }
            Operation::Embeddings => {
                f.embedding_dimensions = from_value::<FirstEmbedding>(v.get("data"))
                    .ok()
                    .and_then(|d| d.0);
            }
            Operation::AudioTranscriptions
            | Operation::AudioTranslations
            | Operation::ImageGenerations
            | Operation::ImageEdits
            | Operation::Moderations
            | Operation::Realtime => {}
        }
        f
    }

    /// Takes id, model, fingerprint, tier and usage from an object that has them.
    pub fn merge_common(&mut self, v: &Value) {
        self.merge(Common {
            id: from_value(v.get("id")),
            model: from_value(v.get("model")),
            system_fingerprint: from_value(v.get("system_fingerprint")),
            service_tier: from_value(v.get("service_tier")),
            usage: from_value(v.get("usage")),
        });
    }

    /// Takes every usable fact of `c` (a later object's facts replace earlier ones).
    pub(crate) fn merge(&mut self, c: Common<'_>) {
        self.invalid_usage |= c.flawed();
        let set = |slot: &mut Option<String>, s: Lenient<Str<'_>>| {
            if let Lenient::Valid(s) = s {
                if slot.as_deref() != Some(&*s) {
                    *slot = Some(s.into_owned());
                }
            }
        };
        set(&mut self.id, c.id);
        set(&mut self.model, c.model);
        set(&mut self.system_fingerprint, c.system_fingerprint);
        set(&mut self.service_tier, c.service_tier);
        if let Some(u) = c.usage.get().and_then(|u| Usage::from_raw(u)) {
            self.usage = Some(u);
        }
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
                details: TokenDetails {
                    input_audio: Some(0),
                    ..TokenDetails::default()
                },
            })
        );
        assert_eq!(f.error_type, None);
    }

    #[test]
    fn transcription_usage_in_tokens_or_duration() {
        let body = br#"{"text":"Hello.","usage":{"type":"tokens","input_tokens":14,
          "input_token_details":{"text_tokens":4,"audio_tokens":10},"output_tokens":3,"total_tokens":17}}"#;
        let f = ResponseFacts::from_body(Operation::AudioTranscriptions, body).expect("json");
        let u = f.usage.expect("usage");
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.total_tokens),
            (14, 3, 17)
        );
        assert_eq!(
            u.details,
            TokenDetails {
                input_audio: Some(10),
                input_text: Some(4),
                ..TokenDetails::default()
            }
        );
        assert!(!f.invalid_usage);
        // whisper-1: a duration, no tokens, not a flaw
        let w = ResponseFacts::from_body(
            Operation::AudioTranscriptions,
            br#"{"text":"Hello.","usage":{"type":"duration","seconds":3}}"#,
        )
        .expect("json");
        assert_eq!(w.usage, None);
        assert!(!w.invalid_usage);
    }

    #[test]
    fn image_and_realtime_style_details() {
        let body = br#"{"created":1,"data":[{"b64_json":"iVBO"}],"usage":{"input_tokens":50,
          "input_tokens_details":{"text_tokens":10,"image_tokens":40},"output_tokens":4160,
          "output_tokens_details":{"image_tokens":4000,"text_tokens":160},"total_tokens":4210}}"#;
        let f = ResponseFacts::from_body(Operation::ImageEdits, body).expect("json");
        let d = f.usage.expect("usage").details;
        assert_eq!((d.input_text, d.input_image), (Some(10), Some(40)));
        assert_eq!((d.output_image, d.output_text), (Some(4000), Some(160)));
        assert_eq!(f.embedding_dimensions, None);
        // the Realtime API's spelling, with the cached split
        let v = serde_json::json!({"input_tokens": 300, "output_tokens": 120,
            "input_token_details": {"cached_tokens": 100, "text_tokens": 80, "audio_tokens": 220,
                "cached_tokens_details": {"text_tokens": 20, "audio_tokens": 80}},
            "output_token_details": {"text_tokens": 20, "audio_tokens": 100}});
        let u = Usage::from_value(&v).expect("usage");
        assert_eq!(u.cached_input_tokens, Some(100));
        assert_eq!(
            u.details,
            TokenDetails {
                input_audio: Some(220),
                input_text: Some(80),
                input_image: None,
                cached_audio: Some(80),
                cached_text: Some(20),
                cached_image: None,
                output_audio: Some(100),
                output_text: Some(20),
                output_image: None,
            }
        );
        // an unusable detail is dropped on its own and counted
        let bad = ResponseFacts::from_body(
            Operation::AudioTranscriptions,
            br#"{"usage":{"input_tokens":5,"output_tokens":1,"input_token_details":{"audio_tokens":"x"}}}"#,
        )
        .expect("json");
        assert!(bad.invalid_usage);
        assert_eq!(bad.usage.map(|u| u.input_tokens), Some(5));
    }

    #[test]
    fn moderation_body_has_a_model_and_no_usage() {
        let f = ResponseFacts::from_body(
            Operation::Moderations,
            br#"{"id":"modr-1","model":"omni-moderation-latest","results":[{"flagged":false}]}"#,
        )
        .expect("json");
        assert_eq!(f.model.as_deref(), Some("omni-moderation-latest"));
        assert_eq!(f.id.as_deref(), Some("modr-1"));
        assert_eq!(f.usage, None);
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
                details: TokenDetails::default(),
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
