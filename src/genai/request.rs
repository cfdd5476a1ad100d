//! What a request tells about the model call before it is sent.
//!
//! The operation comes from the path alone, so an unparseable body still
//! yields a recognised call; the body is read leniently (unknown fields are
//! ignored, wrong types make that one field unknown, a repeated key is read
//! as its last value, as the upstream reads it) because tokentap must
//! forward whatever the client sends.

use serde::de::MapAccess;

use super::lenient::{FromJson, Int, Len, Lenient, Num, Str, members, object_from_slice};
use super::multipart;

/// The OpenAI operations tokentap understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ChatCompletions,
    Responses,
    Completions,
    Embeddings,
    /// `/audio/transcriptions` (multipart request).
    AudioTranscriptions,
    /// `/audio/translations` (multipart request).
    AudioTranslations,
    /// `/images/generations` (JSON request).
    ImageGenerations,
    /// `/images/edits` (multipart request).
    ImageEdits,
    Moderations,
    /// One model turn (`response.done`) of a Realtime session, a WebSocket
    /// (`observe::realtime`); never recognised from a path.
    Realtime,
}

/// Path suffix of each operation, checked in this order (`/chat/completions`
/// before `/completions`).
const SUFFIXES: &[(&str, Operation)] = &[
    ("/chat/completions", Operation::ChatCompletions),
    ("/responses", Operation::Responses),
    ("/completions", Operation::Completions),
    ("/embeddings", Operation::Embeddings),
    ("/audio/transcriptions", Operation::AudioTranscriptions),
    ("/audio/translations", Operation::AudioTranslations),
    ("/images/generations", Operation::ImageGenerations),
    ("/images/edits", Operation::ImageEdits),
    ("/moderations", Operation::Moderations),
];

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
        SUFFIXES
            .iter()
            .find(|(suffix, _)| path.ends_with(suffix))
            .map(|(_, op)| *op)
    }

    /// `gen_ai.operation.name`. The conventions have no name for speech-to-text
    /// or image generation beyond multimodal `generate_content`, and none for
    /// moderation (a custom `moderations`); `openai.api.type` tells them apart.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ChatCompletions | Operation::Responses => "chat",
            Operation::Completions => "text_completion",
            Operation::Embeddings => "embeddings",
            Operation::AudioTranscriptions
            | Operation::AudioTranslations
            | Operation::ImageGenerations
            | Operation::ImageEdits => "generate_content",
            Operation::Moderations => "moderations",
            Operation::Realtime => "chat",
        }
    }

    /// `openai.api.type`. Translations are told apart from transcriptions (a
    /// different output: English text); image edits share `images` with
    /// generations (`url.path` tells them apart).
    pub fn api_type(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "chat_completions",
            Operation::Responses => "responses",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::AudioTranscriptions => "audio_transcriptions",
            Operation::AudioTranslations => "audio_translations",
            Operation::ImageGenerations | Operation::ImageEdits => "images",
            Operation::Moderations => "moderations",
            Operation::Realtime => "realtime",
        }
    }

    /// Requests of these operations are `multipart/form-data` (an audio file or
    /// an image), read with [`RequestFacts::parse_multipart`].
    pub fn multipart(self) -> bool {
        matches!(
            self,
            Operation::AudioTranscriptions | Operation::AudioTranslations | Operation::ImageEdits
        )
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
    /// `response_format` of an audio request (`json`, `text`, `srt`, …): a
    /// transcription asked for plain text answers with a body that is not JSON.
    pub response_format: Option<String>,
    /// `user.id`: the body's `safety_identifier`, else its `user` (chat, Responses, embeddings).
    pub user: Option<String>,
}

/// Lenient view of the request: each field is read on its own.
#[derive(Default)]
struct RawRequest<'a> {
    model: Lenient<Str<'a>>,
    stream: Lenient<bool>,
    stream_options: Lenient<StreamOptions>,
    temperature: Lenient<Num>,
    top_p: Lenient<Num>,
    max_tokens: Lenient<Int>,
    max_completion_tokens: Lenient<Int>,
    max_output_tokens: Lenient<Int>,
    frequency_penalty: Lenient<Num>,
    presence_penalty: Lenient<Num>,
    stop: Lenient<Stop>,
    seed: Lenient<Int>,
    n: Lenient<Int>,
    service_tier: Lenient<Str<'a>>,
    encoding_format: Lenient<Str<'a>>,
    response_format: Lenient<Format<'a>>,
    text: Lenient<TextOptions<'a>>,
    modalities: Lenient<Vec<Lenient<Str<'a>>>>,
    tools: Lenient<Len>,
    dimensions: Lenient<Int>,
    safety_identifier: Lenient<Str<'a>>,
    user: Lenient<Str<'a>>,
}

impl<'de> FromJson<'de> for RawRequest<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut r = RawRequest::default();
        members!(map {
            "model" => r.model,
            "stream" => r.stream,
            "stream_options" => r.stream_options,
            "temperature" => r.temperature,
            "top_p" => r.top_p,
            "max_tokens" => r.max_tokens,
            "max_completion_tokens" => r.max_completion_tokens,
            "max_output_tokens" => r.max_output_tokens,
            "frequency_penalty" => r.frequency_penalty,
            "presence_penalty" => r.presence_penalty,
            "stop" => r.stop,
            "seed" => r.seed,
            "n" => r.n,
            "service_tier" => r.service_tier,
            "encoding_format" => r.encoding_format,
            "response_format" => r.response_format,
            "text" => r.text,
            "modalities" => r.modalities,
            "tools" => r.tools,
            "dimensions" => r.dimensions,
            "safety_identifier" => r.safety_identifier,
            "user" => r.user,
        });
        Ok(Some(r))
    }
}

#[derive(Default)]
struct StreamOptions {
    include_usage: Lenient<bool>,
}

impl<'de> FromJson<'de> for StreamOptions {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut o = StreamOptions::default();
        members!(map { "include_usage" => o.include_usage });
        Ok(Some(o))
    }
}

/// `stop`: one string or a list of them.
struct Stop(Vec<String>);

impl<'de> FromJson<'de> for Stop {
    fn string(s: std::borrow::Cow<'de, str>) -> Option<Self> {
        Some(Stop(vec![s.into_owned()]))
    }
    fn array<A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut v = Vec::new();
        while let Some(item) = seq.next_element::<Lenient<Str<'de>>>()? {
            v.extend(item.ok().map(Str::into_owned));
        }
        Ok(Some(Stop(v)))
    }
}

/// `response_format` or `text.format`: only its `type` is read.
#[derive(Default)]
struct Format<'a> {
    kind: Lenient<Str<'a>>,
}

impl<'de> FromJson<'de> for Format<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut f = Format::default();
        members!(map { "type" => f.kind });
        Ok(Some(f))
    }
}

#[derive(Default)]
struct TextOptions<'a> {
    format: Lenient<Format<'a>>,
}

impl<'de> FromJson<'de> for TextOptions<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut t = TextOptions::default();
        members!(map { "format" => t.format });
        Ok(Some(t))
    }
}

/// Why a body could not be read as a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidJson;

fn own(s: Lenient<Str<'_>>) -> Option<String> {
    s.ok().map(Str::into_owned)
}

fn int(i: Lenient<Int>) -> Option<i64> {
    i.ok().map(|i| i.0)
}

fn num(n: Lenient<Num>) -> Option<f64> {
    n.ok().map(|n| n.0)
}

impl RequestFacts {
    /// Reads the body of `op`: a form for the upload operations when the
    /// content type says so, JSON otherwise.
    pub fn parse_for(
        op: Operation,
        body: &[u8],
        content_type: Option<&str>,
    ) -> Result<RequestFacts, InvalidJson> {
        let mut facts = match content_type.and_then(multipart::boundary) {
            Some(boundary) if op.multipart() => Self::parse_multipart(body, boundary),
            _ => Self::parse(body)?,
        };
        if matches!(op, Operation::ImageGenerations | Operation::ImageEdits) {
            facts.output_type = Some("image");
        } else if matches!(
            op,
            Operation::AudioTranscriptions | Operation::AudioTranslations
        ) {
            facts.output_type = Some(match facts.response_format.as_deref() {
                Some("json" | "verbose_json") => "json",
                _ => "text",
            });
        }
        Ok(facts)
    }

    /// Reads `model`, `stream` and `response_format` from a
    /// `multipart/form-data` body (see `genai::multipart`). Never an error:
    /// a field that cannot be found is unknown. A repeated field is read as
    /// its last value.
    pub fn parse_multipart(body: &[u8], boundary: &str) -> RequestFacts {
        let mut facts = RequestFacts::default();
        for (name, value) in
            multipart::text_fields(body, boundary, &["model", "stream", "response_format"])
        {
            match name.as_str() {
                "model" => facts.model = Some(value),
                "stream" => facts.stream = value.trim().eq_ignore_ascii_case("true"),
                _ => facts.response_format = Some(value),
            }
        }
        facts
    }

    pub fn parse(body: &[u8]) -> Result<RequestFacts, InvalidJson> {
        let raw: RawRequest<'_> = object_from_slice(body).map_err(|_| InvalidJson)?;
        let output_type = output_type(&raw);
        Ok(RequestFacts {
            model: own(raw.model),
            stream: raw.stream.ok().unwrap_or(false),
            include_usage: raw.stream_options.ok().and_then(|o| o.include_usage.ok()),
            temperature: num(raw.temperature),
            top_p: num(raw.top_p),
            max_tokens: int(raw.max_completion_tokens)
                .or(int(raw.max_tokens))
                .or(int(raw.max_output_tokens)),
            frequency_penalty: num(raw.frequency_penalty),
            presence_penalty: num(raw.presence_penalty),
            stop_sequences: raw.stop.ok().map(|s| s.0).unwrap_or_default(),
            seed: int(raw.seed),
            choice_count: int(raw.n),
            service_tier: own(raw.service_tier),
            encoding_formats: own(raw.encoding_format).into_iter().collect(),
            output_type,
            tool_count: raw.tools.ok().map_or(0, |l| l.0),
            dimensions: int(raw.dimensions),
            response_format: None,
            user: own(raw.safety_identifier)
                .filter(|u| !u.is_empty())
                .or_else(|| own(raw.user).filter(|u| !u.is_empty())),
        })
    }
}

fn output_type(raw: &RawRequest<'_>) -> Option<&'static str> {
    let format_type = raw
        .response_format
        .get()
        .and_then(|f| f.kind.get())
        .or_else(|| {
            raw.text
                .get()
                .and_then(|t| t.format.get())
                .and_then(|f| f.kind.get())
        })
        .map(|s| &**s);
    match format_type {
        Some("json_object" | "json_schema") => return Some("json"),
        Some("text") => return Some("text"),
        _ => {}
    }
    let audio = raw
        .modalities
        .get()
        .is_some_and(|m| m.iter().any(|v| v.get().is_some_and(|s| &**s == "audio")));
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
    fn upload_operations_from_paths() {
        for (path, op, name, api) in [
            (
                "/v1/audio/transcriptions",
                Operation::AudioTranscriptions,
                "generate_content",
                "audio_transcriptions",
            ),
            (
                "/openai/deployments/whisper/audio/translations",
                Operation::AudioTranslations,
                "generate_content",
                "audio_translations",
            ),
            (
                "/v1/images/generations",
                Operation::ImageGenerations,
                "generate_content",
                "images",
            ),
            (
                "/v1/images/edits/",
                Operation::ImageEdits,
                "generate_content",
                "images",
            ),
            (
                "/v1/moderations",
                Operation::Moderations,
                "moderations",
                "moderations",
            ),
        ] {
            assert_eq!(Operation::from_path(path), Some(op), "{path}");
            assert_eq!((op.name(), op.api_type()), (name, api));
        }
        assert_eq!(Operation::from_path("/v1/images/variations"), None);
        assert_eq!(Operation::from_path("/v1/audio/speech"), None);
        assert!(Operation::AudioTranscriptions.multipart());
        assert!(Operation::ImageEdits.multipart());
        assert!(!Operation::ImageGenerations.multipart());
    }

    #[test]
    fn multipart_facts_from_the_form() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\n\r\nID3\x00\xff\r\n--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-transcribe\r\n--XX\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n--XX\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\ntext\r\n--XX--\r\n";
        let f = RequestFacts::parse_for(
            Operation::AudioTranscriptions,
            body,
            Some("multipart/form-data; boundary=XX"),
        )
        .expect("a form is never an error");
        assert_eq!(f.model.as_deref(), Some("gpt-4o-transcribe"));
        assert!(f.stream);
        assert_eq!(f.response_format.as_deref(), Some("text"));
        assert_eq!(f.output_type, Some("text"));
        // a form without the fields: nothing known, nothing failed
        let empty = RequestFacts::parse_for(
            Operation::ImageEdits,
            b"garbage",
            Some("multipart/form-data; boundary=XX"),
        )
        .expect("lenient");
        assert_eq!(empty.model, None);
        assert_eq!(empty.output_type, Some("image"));
        // a JSON body on an upload path is read as JSON
        let j = RequestFacts::parse_for(
            Operation::AudioTranscriptions,
            br#"{"model":"whisper-1"}"#,
            Some("application/json"),
        )
        .expect("json");
        assert_eq!(j.model.as_deref(), Some("whisper-1"));
        let g = RequestFacts::parse_for(
            Operation::ImageGenerations,
            br#"{"model":"gpt-image-1","prompt":"x","response_format":"b64_json"}"#,
            Some("application/json"),
        )
        .expect("json");
        assert_eq!(
            (g.model.as_deref(), g.output_type),
            (Some("gpt-image-1"), Some("image"))
        );
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
