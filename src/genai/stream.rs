//! Folds a stream's events into the same facts a whole response gives.
//!
//! Chunks are deserialised into borrowed structs that skip everything but
//! what telemetry needs (no `Value` tree per chunk). Each event also reports
//! whether it carried output (for time-per-chunk) and whether it was the
//! usage-only chunk (for the usage-injection edit).

use serde::de::MapAccess;
use serde_json::Value;

use super::chunk::{self, FROM_CHOICES};
use super::chunk_head::ChunkHead;
use super::chunk_shape::ChunkShape;
use super::content::{OutputChoice, output_from_value, output_json, push_capped};
use super::lenient::{FromJson, Lenient, Str, members, object_from_slice};
use super::request::Operation;
use super::response::{Common, RawUsage, ResponseFacts, error_type, responses_finish_reason};
use super::shape::Miss;

/// What one event was, as far as the caller cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventInfo {
    /// Carried content, refusal, tool-call or text deltas.
    pub output: bool,
    /// A chat/completions chunk with no choices and a usage object.
    pub usage_only: bool,
    /// The `[DONE]` sentinel.
    pub done: bool,
    /// Data that is not JSON.
    pub invalid: bool,
    /// How many leading bytes of the data were the stream's repeated chunk
    /// head, not read again ([`super::chunk_head`]; they hold no `usage`).
    pub head: usize,
    /// Where the chunk's (last) top-level `usage` value is written in the data, as
    /// the parser found it: the usage cut need not walk the chunk again to find it.
    pub usage_value: Option<(usize, usize)>,
}

#[derive(Debug, Clone)]
pub struct StreamAccumulator {
    op: Operation,
    facts: ResponseFacts,
    /// Finish reason per choice index, as they arrive (n > 1 interleaves).
    finish: Vec<(u64, String)>,
    done: bool,
    invalid_events: u64,
    /// Assembled output per choice index, only when capturing content.
    capture: Option<Vec<(u64, OutputChoice)>>,
    /// The chunks' repeated head, and where a chunk's rest is read from.
    head: ChunkHead,
    /// The content chunks' repeated shape past the head.
    shape: ChunkShape,
    scratch: Vec<u8>,
}

#[derive(Default)]
struct ResponsesEvent<'a> {
    kind: Lenient<Str<'a>>,
    response: Option<Value>,
    delta: Lenient<Str<'a>>,
    code: Lenient<Str<'a>>,
}

impl<'de> FromJson<'de> for ResponsesEvent<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut e = ResponsesEvent::default();
        members!(map {
            "type" => e.kind,
            "response" => e.response,
            "delta" => e.delta,
            "code" => e.code,
        });
        Ok(Some(e))
    }
}

#[derive(Default)]
struct MediaEvent<'a> {
    kind: Lenient<Str<'a>>,
    delta: Lenient<Str<'a>>,
    text: Lenient<Str<'a>>,
    usage: Lenient<Box<RawUsage>>,
    error: Option<Value>,
}

impl<'de> FromJson<'de> for MediaEvent<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut e = MediaEvent::default();
        members!(map {
            "type" => e.kind,
            "delta" => e.delta,
            "text" => e.text,
            "usage" => e.usage,
            "error" => e.error,
        });
        Ok(Some(e))
    }
}

fn non_empty(s: &Lenient<Str<'_>>) -> bool {
    s.get().is_some_and(|s| !s.is_empty())
}

impl StreamAccumulator {
    pub fn new(op: Operation) -> Self {
        StreamAccumulator {
            op,
            facts: ResponseFacts::default(),
            finish: Vec::new(),
            done: false,
            invalid_events: 0,
            capture: None,
            head: ChunkHead::default(),
            shape: ChunkShape::default(),
            scratch: Vec::new(),
        }
    }

    /// At the stream's end: lets go of the scratch space (the largest chunk
    /// read); returns the bytes still kept for the captured output.
    pub fn release(&mut self) -> usize {
        self.scratch = Vec::new();
        self.capture.as_ref().map_or(0, |c| {
            c.iter()
                .map(|(_, o)| {
                    o.text.capacity() + o.tool_calls.iter().map(|t| t.2.capacity()).sum::<usize>()
                })
                .sum()
        })
    }

    /// Also assembles the output text (content capture).
    pub fn capturing(mut self, on: bool) -> Self {
        self.set_capture(on);
        self
    }

    /// Turns output assembly on or off (before the first event).
    pub fn set_capture(&mut self, on: bool) {
        self.capture = on.then(Vec::new);
    }

    /// `gen_ai.output.messages` JSON of what was assembled, when capturing.
    pub fn output_messages(&self) -> Option<String> {
        let mut choices = self.capture.clone()?;
        choices.sort_by_key(|(k, _)| *k);
        output_json(&choices.into_iter().map(|(_, c)| c).collect::<Vec<_>>())
    }

    /// Whether the stream reached its proper end (`[DONE]`, or a terminal Responses event).
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn invalid_events(&self) -> u64 {
        self.invalid_events
    }

    /// Takes one event's data (and `event:` name, used by the Responses API).
    pub fn on_event(&mut self, event: Option<&[u8]>, data: &[u8]) -> EventInfo {
        if data == b"[DONE]" {
            self.done = true;
            return EventInfo {
                done: true,
                ..EventInfo::default()
            };
        }
        let ok = match self.op {
            Operation::Responses => self.responses_event(event, data),
            Operation::AudioTranscriptions
            | Operation::AudioTranslations
            | Operation::ImageGenerations
            | Operation::ImageEdits => self.media_event(data),
            Operation::ChatCompletions
            | Operation::Completions
            | Operation::Embeddings
            | Operation::Moderations
            | Operation::Realtime => self.chunk(data),
        };
        ok.unwrap_or_else(|| {
            self.invalid_events += 1;
            EventInfo {
                invalid: true,
                ..EventInfo::default()
            }
        })
    }

    fn chunk(&mut self, data: &[u8]) -> Option<EventInfo> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let info = self.chunk_from(data, &mut scratch);
        self.scratch = scratch;
        info
    }

    /// A chunk, read from its `choices` on when it repeats the stream's head.
    fn chunk_from(&mut self, data: &[u8], scratch: &mut Vec<u8>) -> Option<EventInfo> {
        let rest = self.head.rest(data);
        let head = rest.map_or(0, |r| data.len() - r.len());
        // a rest in the last content chunk's shape is read without the parser
        let (c, usage_at) = match rest.map(|r| (r, self.shape.read(r))) {
            Some((_, Ok(read))) => read,
            Some((rest, Err(miss))) => {
                scratch.clear();
                scratch.extend_from_slice(FROM_CHOICES);
                scratch.extend_from_slice(rest);
                let (c, at) = chunk::read(scratch)?;
                if miss == Miss::Other {
                    self.shape.learn(rest, scratch, &c, at);
                }
                (c, at)
            }
            None => chunk::read(data)?,
        };
        if head == 0 {
            self.head.learn(data);
        } else if [&c.id, &c.model, &c.system_fingerprint, &c.service_tier]
            .iter()
            .any(|m| !matches!(m, Lenient::Missing))
        {
            // this chunk overrides what the head sets: the next one must set it again
            self.head.forget();
        }
        let f = &mut self.facts;
        // the first chunk's id and model stay; a later fingerprint or tier replaces
        fn first<'a>(slot: &Option<String>, s: Lenient<Str<'a>>) -> Lenient<Str<'a>> {
            match s {
                Lenient::Valid(_) if slot.is_some() => Lenient::Missing,
                other => other,
            }
        }
        // positions in `json`, then in `data` (read from `choices` on, `json` is the
        // prefix and the data after its head)
        let usage_value = usage_at.and_then(|(s, e)| match head {
            0 => Some((s, e)),
            h => Some((
                s.checked_sub(FROM_CHOICES.len())? + h,
                e - FROM_CHOICES.len() + h,
            )),
        });
        let usage = c.usage;
        let usage_object = usage.get().is_some();
        f.merge(Common {
            id: first(&f.id, c.id),
            model: first(&f.model, c.model),
            system_fingerprint: c.system_fingerprint,
            service_tier: c.service_tier,
            usage,
        });
        if let Some(err) = &c.error {
            f.error_type = error_type(&serde_json::json!({ "error": err }));
        }
        let choices = match c.choices {
            Lenient::Missing => Some(Vec::new()),
            other => other.ok(),
        };
        let mut info = EventInfo {
            // what include_usage adds: a chunk with no choices and a usage object
            usage_only: choices.as_ref().is_some_and(Vec::is_empty) && usage_object,
            head,
            usage_value,
            ..EventInfo::default()
        };
        let choices = choices
            .unwrap_or_default()
            .into_iter()
            .filter_map(Lenient::ok);
        for (i, ch) in choices.enumerate() {
            let idx = ch.index.get().map_or(i as u64, |c| c.0);
            if let Lenient::Valid(reason) = ch.finish_reason {
                match self.finish.iter_mut().find(|(k, _)| *k == idx) {
                    Some(slot) => slot.1 = reason.into_owned(),
                    None => self.finish.push((idx, reason.into_owned())),
                }
            }
            let delta = ch.delta.ok();
            let delta_output = delta.as_ref().is_some_and(|d| {
                non_empty(&d.content)
                    || non_empty(&d.refusal)
                    || d.tool_calls.get().is_some_and(|t| !t.is_empty())
            });
            info.output |= delta_output || non_empty(&ch.text);
            if let Some(cap) = self.capture.as_mut() {
                let slot = match cap.iter().position(|(k, _)| *k == idx) {
                    Some(p) => p,
                    None => {
                        cap.push((idx, OutputChoice::default()));
                        cap.len() - 1
                    }
                };
                let out = &mut cap[slot].1;
                if let Some(r) = self.finish.iter().find(|(k, _)| *k == idx) {
                    out.finish_reason = Some(r.1.clone());
                }
                for t in [
                    ch.text.get(),
                    delta.as_ref().and_then(|d| d.content.get()),
                    delta.as_ref().and_then(|d| d.refusal.get()),
                ]
                .into_iter()
                .flatten()
                {
                    out.push_text(t);
                }
                let tool_calls = delta.and_then(|d| d.tool_calls.ok()).unwrap_or_default();
                for tc in tool_calls.into_iter().filter_map(Lenient::ok) {
                    let i = tc
                        .index
                        .get()
                        .map_or(0, |c| usize::try_from(c.0).unwrap_or(usize::MAX));
                    if i >= 128 {
                        continue;
                    }
                    while out.tool_calls.len() <= i {
                        out.tool_calls.push((None, None, String::new()));
                    }
                    let call = &mut out.tool_calls[i];
                    if let Lenient::Valid(id) = tc.id {
                        call.0 = Some(id.into_owned());
                    }
                    if let Lenient::Valid(f) = tc.function {
                        if let Lenient::Valid(n) = f.name {
                            call.1 = Some(n.into_owned());
                        }
                        if let Lenient::Valid(a) = f.arguments {
                            push_capped(&mut call.2, &a);
                        }
                    }
                }
            }
        }
        Some(info)
    }

    fn responses_event(&mut self, event: Option<&[u8]>, data: &[u8]) -> Option<EventInfo> {
        let e: ResponsesEvent<'_> = object_from_slice(data).ok()?;
        let kind: &str = match (e.kind.get(), event) {
            (Some(k), _) => k,
            (None, Some(name)) => std::str::from_utf8(name).ok()?,
            (None, None) => "",
        };
        let mut info = EventInfo::default();
        match kind {
            "response.output_text.delta"
            | "response.refusal.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_summary_text.delta"
            | "response.audio.delta" => info.output = non_empty(&e.delta),
            "response.completed" | "response.failed" | "response.incomplete" => {
                self.done = true;
                if let Some(r) = &e.response {
                    self.responses_object(r);
                }
            }
            "error" => {
                self.facts.error_type = Some(
                    e.code
                        .ok()
                        .map_or_else(|| "error".to_owned(), Str::into_owned),
                );
            }
            _ => {
                if let Some(r) = &e.response {
                    self.responses_object(r);
                }
            }
        }
        Some(info)
    }

    /// Transcription (`transcript.text.*`) and image (`image_*.partial_image`,
    /// `image_*.completed`) stream events: the last one carries the usage.
    fn media_event(&mut self, data: &[u8]) -> Option<EventInfo> {
        let e: MediaEvent<'_> = object_from_slice(data).ok()?;
        let mut info = EventInfo::default();
        match e.kind.get().map(|k| &**k) {
            Some("transcript.text.delta") => info.output = non_empty(&e.delta),
            Some("image_generation.partial_image" | "image_edit.partial_image") => {
                info.output = true;
            }
            Some(
                "transcript.text.done" | "image_generation.completed" | "image_edit.completed",
            ) => {
                self.done = true;
                if let Some(cap) = self.capture.as_mut() {
                    if let Some(t) = e.text.get() {
                        let mut out = OutputChoice::default();
                        out.push_text(t);
                        *cap = vec![(0, out)];
                    }
                }
            }
            Some("error") => {
                let err = e.error.unwrap_or(Value::Null);
                self.facts.error_type =
                    error_type(&serde_json::json!({ "error": err })).or(Some("error".to_owned()));
            }
            _ => {}
        }
        self.facts.merge(Common {
            id: Lenient::Missing,
            model: Lenient::Missing,
            system_fingerprint: Lenient::Missing,
            service_tier: Lenient::Missing,
            usage: e.usage,
        });
        Some(info)
    }

    fn responses_object(&mut self, r: &Value) {
        self.facts.merge_common(r);
        if let Some(cap) = self.capture.as_mut() {
            if r.get("output")
                .and_then(Value::as_array)
                .is_some_and(|o| !o.is_empty())
            {
                *cap = output_from_value(Operation::Responses, r)
                    .into_iter()
                    .map(|c| (0, c))
                    .collect();
            }
        }
        if let Some(reason) = responses_finish_reason(r) {
            self.finish = vec![(0, reason)];
        }
        if let Some(code) = r
            .get("error")
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
        {
            self.facts.error_type = Some(code.to_owned());
        }
    }

    /// The facts gathered so far (usable after an interrupted stream too).
    pub fn facts(&self) -> ResponseFacts {
        let mut f = self.facts.clone();
        let mut finish = self.finish.clone();
        finish.sort_by_key(|(k, _)| *k);
        f.finish_reasons = finish.into_iter().map(|(_, r)| r).collect();
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genai::sse::SseDecoder;

    #[test]
    fn transcription_stream_usage_and_done() {
        let input = concat!(
            "data: {\"type\":\"transcript.text.delta\",\"delta\":\"Hello\"}\n\n",
            "data: {\"type\":\"transcript.text.delta\",\"delta\":\" there.\"}\n\n",
            "data: {\"type\":\"transcript.text.done\",\"text\":\"Hello there.\",",
            "\"usage\":{\"type\":\"tokens\",\"input_tokens\":14,",
            "\"input_token_details\":{\"text_tokens\":0,\"audio_tokens\":14},",
            "\"output_tokens\":4,\"total_tokens\":18}}\n\n",
        );
        let mut acc = StreamAccumulator::new(Operation::AudioTranscriptions).capturing(true);
        let (_, infos) = {
            let mut dec = SseDecoder::new();
            let mut infos = Vec::new();
            dec.feed(input.as_bytes(), |ev| {
                infos.push(acc.on_event(ev.event, ev.data))
            });
            ((), infos)
        };
        assert_eq!(infos.iter().filter(|i| i.output).count(), 2);
        assert!(acc.is_done());
        assert_eq!(acc.invalid_events(), 0);
        let u = acc.facts().usage.expect("usage");
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.total_tokens),
            (14, 4, 18)
        );
        assert_eq!(
            (u.details.input_audio, u.details.input_text),
            (Some(14), Some(0))
        );
        assert!(
            acc.output_messages()
                .expect("captured")
                .contains("Hello there.")
        );
    }

    fn run(op: Operation, input: &[u8]) -> (StreamAccumulator, Vec<EventInfo>) {
        let mut dec = SseDecoder::new();
        let mut acc = StreamAccumulator::new(op);
        let mut infos = Vec::new();
        dec.feed(input, |e| infos.push(acc.on_event(e.event, e.data)));
        (acc, infos)
    }

    #[test]
    fn chat_stream_with_usage_chunk() {
        let (acc, infos) = run(
            Operation::ChatCompletions,
            include_bytes!("../../tests/fixtures/chat_stream_usage.sse"),
        );
        assert!(acc.is_done());
        let f = acc.facts();
        assert_eq!(f.id.as_deref(), Some("chatcmpl-C1xYz"));
        assert_eq!(f.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(f.system_fingerprint.as_deref(), Some("fp_560af6e559"));
        assert_eq!(f.finish_reasons, vec!["stop"]);
        let u = f.usage.expect("usage");
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.total_tokens),
            (19, 4, 23)
        );
        assert_eq!(infos.iter().filter(|i| i.output).count(), 4);
        assert_eq!(infos.iter().filter(|i| i.usage_only).count(), 1);
        assert!(infos[infos.len() - 2].usage_only);
    }

    #[test]
    fn chat_stream_without_usage_has_none() {
        let (acc, _) = run(
            Operation::ChatCompletions,
            include_bytes!("../../tests/fixtures/chat_stream_plain.sse"),
        );
        assert!(acc.is_done());
        assert_eq!(acc.facts().usage, None);
    }

    #[test]
    fn n2_interleaved_finish_reasons_by_index() {
        let (acc, infos) = run(
            Operation::ChatCompletions,
            include_bytes!("../../tests/fixtures/chat_stream_n2.sse"),
        );
        assert_eq!(acc.facts().finish_reasons, vec!["stop", "length"]);
        assert_eq!(infos.iter().filter(|i| i.output).count(), 4);
        assert_eq!(acc.facts().usage.map(|u| u.output_tokens), Some(4));
    }

    #[test]
    fn tool_call_deltas_are_output() {
        let (acc, infos) = run(
            Operation::ChatCompletions,
            include_bytes!("../../tests/fixtures/chat_stream_tools.sse"),
        );
        assert_eq!(acc.facts().finish_reasons, vec!["tool_calls"]);
        assert_eq!(infos.iter().filter(|i| i.output).count(), 4);
    }

    #[test]
    fn responses_stream() {
        let (acc, infos) = run(
            Operation::Responses,
            include_bytes!("../../tests/fixtures/responses_stream.sse"),
        );
        assert!(acc.is_done());
        let f = acc.facts();
        assert_eq!(f.id.as_deref(), Some("resp_68ab"));
        assert_eq!(f.model.as_deref(), Some("gpt-5-mini-2025-08-07"));
        assert_eq!(f.service_tier.as_deref(), Some("default"));
        assert_eq!(f.finish_reasons, vec!["completed"]);
        let u = f.usage.expect("usage");
        assert_eq!(u.cached_input_tokens, Some(1024));
        assert_eq!(u.reasoning_tokens, Some(128));
        assert_eq!(u.total_tokens, 1350);
        assert_eq!(infos.iter().filter(|i| i.output).count(), 3);
    }

    #[test]
    fn invalid_event_is_counted_and_stream_goes_on() {
        let input = b"data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\ndata: {not json}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\ndata: [DONE]\n\n";
        let (acc, infos) = run(Operation::ChatCompletions, input);
        assert_eq!(acc.invalid_events(), 1);
        assert!(infos[1].invalid);
        assert_eq!(acc.facts().usage.map(|u| u.total_tokens), Some(3));
    }

    #[test]
    fn legacy_completion_text_is_output() {
        let input = b"data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"text\":\"hi\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"model\":\"gpt-3.5-turbo-instruct\"}\n\ndata: {\"id\":\"cmpl-1\",\"choices\":[{\"text\":\"\",\"index\":0,\"finish_reason\":\"length\"}],\"model\":\"gpt-3.5-turbo-instruct\"}\n\ndata: [DONE]\n\n";
        let (acc, infos) = run(Operation::Completions, input);
        assert_eq!(infos.iter().filter(|i| i.output).count(), 1);
        assert_eq!(acc.facts().finish_reasons, vec!["length"]);
    }

    #[test]
    fn captured_stream_output() {
        let mut dec = SseDecoder::new();
        let mut acc = StreamAccumulator::new(Operation::ChatCompletions).capturing(true);
        dec.feed(
            include_bytes!("../../tests/fixtures/chat_stream_tools.sse"),
            |e| {
                acc.on_event(e.event, e.data);
            },
        );
        let out: Value =
            serde_json::from_str(&acc.output_messages().expect("captured")).expect("json");
        assert_eq!(out[0]["parts"][0]["type"], "tool_call");
        assert_eq!(out[0]["parts"][0]["name"], "get_weather");
        assert_eq!(out[0]["parts"][0]["arguments"], "{\"location\":\"Madrid\"}");
        assert_eq!(out[0]["finish_reason"], "tool_calls");

        let mut dec = SseDecoder::new();
        let mut acc = StreamAccumulator::new(Operation::ChatCompletions).capturing(true);
        dec.feed(
            include_bytes!("../../tests/fixtures/chat_stream_usage.sse"),
            |e| {
                acc.on_event(e.event, e.data);
            },
        );
        let out: Value =
            serde_json::from_str(&acc.output_messages().expect("captured")).expect("json");
        assert_eq!(
            out[0]["parts"][0]["content"],
            "OpenTelemetry — traces everything."
        );
    }

    #[test]
    fn odd_fields_and_duplicate_keys_in_chunks() {
        let input = concat!(
            "data: {\"id\":\"c\",\"model\":\"decoy\",\"model\":\"gpt-4o\",\"system_fingerprint\":7,",
            "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\",\"content\":\"b\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,",
            "\"completion_tokens\":2.0,\"total_tokens\":7,\"completion_tokens_details\":{\"reasoning_tokens\":-3}}}\n\n",
            "data: [DONE]\n\n"
        );
        let (acc, infos) = run(Operation::ChatCompletions, input.as_bytes());
        assert_eq!(acc.invalid_events(), 0);
        assert!(infos[0].output);
        assert!(infos[1].usage_only);
        let f = acc.facts();
        assert_eq!(f.model.as_deref(), Some("gpt-4o"));
        assert_eq!(f.system_fingerprint, None);
        assert_eq!(f.finish_reasons, vec!["stop"]);
        let u = f.usage.expect("usage");
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.total_tokens,
                u.reasoning_tokens
            ),
            (5, 2, 7, None)
        );
    }

    #[test]
    fn odd_fields_and_duplicate_keys_in_responses_events() {
        let input = concat!(
            "event: response.completed\n",
            "data: {\"type\":\"response.in_progress\",\"type\":\"response.completed\",\"response\":{",
            "\"id\":\"resp_1\",\"model\":\"decoy\",\"model\":\"gpt-5\",\"status\":\"completed\",",
            "\"usage\":{\"input_tokens\":3.0,\"output_tokens\":4,\"total_tokens\":7,",
            "\"output_tokens_details\":{\"reasoning_tokens\":\"x\"}}}}\n\n"
        );
        let (acc, _) = run(Operation::Responses, input.as_bytes());
        assert!(acc.is_done());
        let f = acc.facts();
        assert_eq!(f.model.as_deref(), Some("gpt-5"));
        let u = f.usage.expect("usage");
        assert_eq!((u.input_tokens, u.output_tokens, u.total_tokens), (3, 4, 7));
    }

    #[test]
    fn midstream_error_object() {
        let input = b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":null}}\n\n";
        let (acc, _) = run(Operation::ChatCompletions, input);
        assert_eq!(acc.facts().error_type.as_deref(), Some("server_error"));
    }

    #[test]
    fn skipping_the_repeated_head_reads_every_stream_as_reading_it_whole() {
        let head = r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","service_tier":"default","system_fingerprint":"fp_1","choices":"#;
        let crafted = [
            format!(r#"{head}[{{"index":0,"delta":{{"role":"assistant","content":""}},"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}[{{"index":0,"delta":{{"content":"a"}},"finish_reason":null}}],"usage":null}}"#),
            // the content shape (chunk_shape): plain texts, then what it must leave to the parser
            format!(r#"{head}[{{"index":0,"delta":{{"content":"plain"}},"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}[{{"index":0,"delta":{{"content":"é 中"}},"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}[{{"index":0,"delta":{{"content":""}},"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}[{{"index":0,"delta":{{"content":"q \" \\ \u00e9"}},"finish_reason":null}}],"usage":null}}"#),
            format!(r#"{head}[{{"index":0,"delta":{{"content":"a"}},"finish_reason":null}}],"usage":null,"x":1}}"#),
            format!(r#"{head}[{{"index":0,"delta":{{"content":"b"}},"finish_reason":null}}],"usage":null,"x":1}}"#),
            format!(r#"{head}[{{"index":0,"delta":{{"content":"c"}},"finish_reason":"length"}}],"usage":null}}"#),
            format!(r#"{head}[{{"index":0,"delta":{{"content":"d"}},"finish_reason":null}}],"usage":{{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}}}"#),
            // later members that repeat a head member: the last one is read
            format!(r#"{head}[{{"index":1,"delta":{{"content":"b"}}}}],"model":"other","system_fingerprint":"fp_2"}}"#),
            format!(r#"{head}[{{"index":0,"delta":{{}},"finish_reason":"stop"}}],"error":{{"type":"server_error"}}}}"#),
            format!(r#"{head}[],"usage":{{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}}}"#),
            format!(r#"{head}[{{"index":0"#),
            format!(r#"{head}[], "usage":null}} x"#),
            r#"data: {"id":"c2","choices":[{"index":0,"finish_reason":"length"}],"usage":null}"#.to_owned(),
            r#"data: {"id":"c2","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#.to_owned(),
            "data: [DONE]".to_owned(),
        ]
        .join("\n\n");
        // heads that change until the reader stops learning, then an old one again
        let relearnt = [1, 2, 3, 4, 1, 5, 4, 4]
            .map(|n| {
                let fp = if n == 5 { "b" } else { "a" };
                format!(r#"data: {{"created":{n},"system_fingerprint":"{fp}","choices":[]}}"#)
            })
            .join("\n\n");
        let streams: [&[u8]; 5] = [
            include_bytes!("../../tests/fixtures/chat_stream_usage.sse"),
            include_bytes!("../../tests/fixtures/chat_stream_n2.sse"),
            include_bytes!("../../tests/fixtures/chat_stream_tools.sse"),
            crafted.as_bytes(),
            relearnt.as_bytes(),
        ];
        for (i, stream) in streams.into_iter().enumerate() {
            let mut skipping = StreamAccumulator::new(Operation::ChatCompletions).capturing(true);
            let mut whole = StreamAccumulator::new(Operation::ChatCompletions).capturing(true);
            whole.head = ChunkHead::never();
            let mut skipped = 0;
            SseDecoder::new().feed(stream, |e| {
                let a = skipping.on_event(e.event, e.data);
                let b = whole.on_event(e.event, e.data);
                skipped += a.head;
                assert_eq!(EventInfo { head: 0, ..a }, b);
            });
            // (the last stream changes its head until the reader gives up)
            assert!(i == 4 || skipped > 0, "the head was never skipped");
            // content chunks are read by their shape (n = 2 interleaves two shapes)
            assert!(
                !matches!(i, 0 | 3) || skipping.shape.hits.get() > 0,
                "no shape read"
            );
            assert_eq!(skipping.facts(), whole.facts());
            assert_eq!(skipping.finish, whole.finish);
            assert_eq!(skipping.invalid_events(), whole.invalid_events());
            assert_eq!(skipping.output_messages(), whole.output_messages());
        }
    }

    /// Found in review: texts that need an escape (every newline) and OpenAI's random
    /// padding must not switch the shape off; a stream read by it is read as whole.
    #[test]
    fn escaped_texts_and_random_padding_keep_the_content_shape() {
        let head = r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":"#;
        let chunk = |text: &str, pad: &str| {
            format!(
                r#"{head}[{{"index":0,"delta":{{"content":{}}},"finish_reason":null}}],"usage":null,"obfuscation":"{pad}"}}"#,
                serde_json::to_string(text).expect("json")
            )
        };
        let mut events = vec![chunk("", "a")];
        for i in 0..20 {
            events.push(chunk("word", &"p".repeat(i % 7)));
            events.push(chunk("\n\n", "q"));
        }
        events.extend((0..100).map(|i| chunk("c", &"r".repeat(i % 11))));
        let stream = events.join("\n\n") + "\n\n";
        let mut shaped = StreamAccumulator::new(Operation::ChatCompletions).capturing(true);
        let mut whole = StreamAccumulator::new(Operation::ChatCompletions).capturing(true);
        whole.head = ChunkHead::never();
        SseDecoder::new().feed(stream.as_bytes(), |e| {
            let a = shaped.on_event(e.event, e.data);
            assert_eq!(EventInfo { head: 0, ..a }, whole.on_event(e.event, e.data));
        });
        assert!(
            shaped.shape.hits.get() >= 119,
            "{}",
            shaped.shape.hits.get()
        );
        assert_eq!(shaped.output_messages(), whole.output_messages());
        assert_eq!(shaped.facts(), whole.facts());
    }
}
