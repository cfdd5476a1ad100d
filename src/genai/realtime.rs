//! What a Realtime session's server events tell: the model, and each
//! response's id, status and usage.
//!
//! A Realtime session (WebSocket) carries many model turns, each ended by a
//! `response.done` event with that turn's usage; tokentap meters each turn
//! as one call. Only the few events that carry facts are read, field by
//! field like every other response (see `genai::lenient`): audio deltas and
//! conversation items are skipped without being kept, an unknown event is
//! ignored, and only text that is not a JSON object is an error. Both the
//! beta and the GA event names are read (they differ only in deltas, which
//! matter here only as "output arrived"). Pure: no I/O.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::de::MapAccess;

use super::lenient::{Flaws, FromJson, Lenient, Str, members, object_from_slice};
use super::response::{RawUsage, Usage};

/// One server event, as far as telemetry cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `session.created` / `session.updated`: the session's model, when named.
    Session { model: Option<String> },
    /// `response.created`: a model turn started.
    ResponseCreated,
    /// A delta of the turn's output (text, transcript, audio, function arguments).
    OutputDelta,
    /// `response.done`: the turn ended.
    ResponseDone(Box<ResponseDone>),
    /// `error`: the server rejected a client event (the session goes on).
    Error { error_type: Option<String> },
    /// Any other event, or one without a `type`.
    Other,
}

/// The facts of one finished model turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseDone {
    pub id: Option<String>,
    /// `completed`, `cancelled`, `failed`, `incomplete`.
    pub status: Option<String>,
    /// The status, or for a cancelled or incomplete turn its reason when given.
    pub finish_reasons: Vec<String>,
    /// `error.type` of a failed or cancelled turn: the error's `code`, else its
    /// `type`, else the status.
    pub error_type: Option<String>,
    pub usage: Option<Usage>,
    /// A usage count, id or status had an unusable type or value (`invalid_usage`).
    pub invalid: bool,
}

impl Event {
    /// Reads one text message of the server. An error only when the text is
    /// not a JSON object.
    pub fn parse(text: &[u8]) -> Result<Event, serde_json::Error> {
        match Event::by_type_alone(text) {
            Some(e) => Ok(e),
            None => Event::read_fully(text),
        }
    }

    fn read_fully(text: &[u8]) -> Result<Event, serde_json::Error> {
        let raw: RawEvent<'_> = object_from_slice(text)?;
        let Some(kind) = raw.kind.get() else {
            return Ok(Event::Other);
        };
        Ok(match &**kind {
            "session.created" | "session.updated" => Event::Session {
                model: raw
                    .session
                    .ok()
                    .and_then(|s| s.model.ok())
                    .map(Str::into_owned),
            },
            "response.created" => Event::ResponseCreated,
            "response.done" => {
                let done = raw.response.ok().map_or_else(
                    || ResponseDone {
                        invalid: true,
                        ..ResponseDone::default()
                    },
                    RawResponse::facts,
                );
                Event::ResponseDone(Box::new(done))
            }
            "error" => Event::Error {
                error_type: raw.error.ok().and_then(RawError::kind),
            },
            k if k.starts_with("response.") && k.ends_with(".delta") => Event::OutputDelta,
            _ => Event::Other,
        })
    }
}

impl Event {
    /// Nearly every event of a session (the deltas above all) says nothing but
    /// its `type`. When that member leads the object (after at most a few other
    /// plain strings, such as `event_id`), it is read where it stands and the
    /// rest is only checked to be JSON, not read. `None` for the few events
    /// with facts and for anything unusual (escapes, a second `type`, another
    /// layout): the full read then decides, so both agree on every input.
    fn by_type_alone(text: &[u8]) -> Option<Event> {
        const KEY: &[u8] = b"\"type\"";
        let mut rest = json_ws(text).strip_prefix(b"{")?;
        let kind = 'found: {
            for _ in 0..4 {
                let (key, after) = plain_string(json_ws(rest))?;
                let after = json_ws(after).strip_prefix(b":")?;
                let (value, after) = plain_string(json_ws(after))?;
                if key == b"type" {
                    rest = after;
                    break 'found value;
                }
                rest = json_ws(after).strip_prefix(b",")?;
            }
            return None;
        };
        let event = match kind {
            b"session.created" | b"session.updated" | b"response.done" | b"error" => return None,
            b"response.created" => Event::ResponseCreated,
            k if k.starts_with(b"response.") && k.ends_with(b".delta") => Event::OutputDelta,
            _ => Event::Other,
        };
        // a later `type` would win over this one (the last key does)
        static LATER_TYPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(KEY));
        if LATER_TYPE.find(rest).is_some() {
            return None;
        }
        if !super::wellformed::proven(text) {
            // not proven quickly: serde_json decides
            serde_json::from_slice::<&serde_json::value::RawValue>(text).ok()?;
        }
        Some(event)
    }
}

/// `bytes` after JSON's insignificant whitespace.
fn json_ws(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    &bytes[n..]
}

/// A JSON string without escapes at the start of `bytes`: its content and what follows.
fn plain_string(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = bytes.strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', body)?;
    (body[end] == b'"').then(|| (&body[..end], &body[end + 1..]))
}

/// Adds `more` to `sum`: counts add up, a detail is known once any turn gave it.
pub fn add_usage(sum: &mut Usage, more: &Usage) {
    fn opt(a: &mut Option<u64>, b: Option<u64>) {
        if let Some(b) = b {
            *a = Some(a.unwrap_or(0).saturating_add(b));
        }
    }
    sum.input_tokens = sum.input_tokens.saturating_add(more.input_tokens);
    sum.output_tokens = sum.output_tokens.saturating_add(more.output_tokens);
    sum.total_tokens = sum.total_tokens.saturating_add(more.total_tokens);
    opt(&mut sum.cached_input_tokens, more.cached_input_tokens);
    opt(&mut sum.reasoning_tokens, more.reasoning_tokens);
    let (d, m) = (&mut sum.details, &more.details);
    opt(&mut d.input_audio, m.input_audio);
    opt(&mut d.input_text, m.input_text);
    opt(&mut d.input_image, m.input_image);
    opt(&mut d.cached_audio, m.cached_audio);
    opt(&mut d.cached_text, m.cached_text);
    opt(&mut d.cached_image, m.cached_image);
    opt(&mut d.output_audio, m.output_audio);
    opt(&mut d.output_text, m.output_text);
    opt(&mut d.output_image, m.output_image);
}

#[derive(Default)]
struct RawEvent<'a> {
    kind: Lenient<Str<'a>>,
    session: Lenient<RawSession<'a>>,
    response: Lenient<RawResponse<'a>>,
    error: Lenient<RawError<'a>>,
}

impl<'de> FromJson<'de> for RawEvent<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut e = RawEvent::default();
        members!(map {
            "type" => e.kind,
            "session" => e.session,
            "response" => e.response,
            "error" => e.error,
        });
        Ok(Some(e))
    }
}

#[derive(Default)]
struct RawSession<'a> {
    model: Lenient<Str<'a>>,
}

impl<'de> FromJson<'de> for RawSession<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut s = RawSession::default();
        members!(map { "model" => s.model });
        Ok(Some(s))
    }
}

#[derive(Default)]
struct RawResponse<'a> {
    id: Lenient<Str<'a>>,
    status: Lenient<Str<'a>>,
    status_details: Lenient<RawStatusDetails<'a>>,
    usage: Lenient<Box<RawUsage>>,
}

impl<'de> FromJson<'de> for RawResponse<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut r = RawResponse::default();
        members!(map {
            "id" => r.id,
            "status" => r.status,
            "status_details" => r.status_details,
            "usage" => r.usage,
        });
        Ok(Some(r))
    }
}

impl RawResponse<'_> {
    fn facts(self) -> ResponseDone {
        let invalid = self.id.flawed() || self.status.flawed() || self.usage.flawed();
        let status = self.status.ok().map(Str::into_owned);
        let details = self.status_details.ok();
        let reason = details
            .as_ref()
            .and_then(|d| d.reason.get())
            .map(|r| r.to_string());
        let error = details.and_then(|d| d.error.ok()).and_then(RawError::kind);
        let finish_reasons = match status.as_deref() {
            Some("cancelled" | "incomplete") => vec![reason.or(status.clone()).unwrap_or_default()],
            Some("in_progress") | None => Vec::new(),
            Some(s) => vec![s.to_owned()],
        };
        let error_type = match status.as_deref() {
            Some("failed") => Some(error.unwrap_or_else(|| "failed".to_owned())),
            Some("cancelled") => Some("cancelled".to_owned()),
            _ => None,
        };
        ResponseDone {
            id: self.id.ok().map(Str::into_owned),
            status,
            finish_reasons,
            error_type,
            usage: self.usage.get().and_then(|u| Usage::from_raw(u)),
            invalid,
        }
    }
}

#[derive(Default)]
struct RawStatusDetails<'a> {
    reason: Lenient<Str<'a>>,
    error: Lenient<RawError<'a>>,
}

impl<'de> FromJson<'de> for RawStatusDetails<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut d = RawStatusDetails::default();
        members!(map { "reason" => d.reason, "error" => d.error });
        Ok(Some(d))
    }
}

#[derive(Default)]
struct RawError<'a> {
    kind: Lenient<Str<'a>>,
    code: Lenient<Str<'a>>,
}

impl<'de> FromJson<'de> for RawError<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut e = RawError::default();
        members!(map { "type" => e.kind, "code" => e.code });
        Ok(Some(e))
    }
}

impl RawError<'_> {
    /// The error's `code`, else its `type` (as `response::error_type` reads HTTP errors).
    fn kind(self) -> Option<String> {
        self.code.ok().or(self.kind.ok()).map(Str::into_owned)
    }
}

impl Flaws for RawResponse<'_> {}
impl Flaws for RawSession<'_> {}
impl Flaws for RawError<'_> {}
impl Flaws for RawStatusDetails<'_> {}
impl Flaws for RawEvent<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genai::response::TokenDetails;

    fn parse(s: &str) -> Event {
        Event::parse(s.as_bytes()).expect("an object")
    }

    #[test]
    fn the_light_read_agrees_with_the_full_one_on_every_input() {
        let texts = [
            r#"{"type":"response.output_text.delta","event_id":"e","delta":"Hi \u00e9"}"#,
            r#" { "event_id" : "e" ,"type":"response.output_audio.delta","delta":"AAA="}"#,
            r#"{"delta":"x","type":"response.output_audio.delta"}"#,
            r#"{"type":"response.output_text.delta","x":{"type":"response.done"}}"#,
            r#"{"type":"response.output_text.delta","delta":"\u0000"}"#,
            r#"{"type":"response.output_text.delta","delta":"a
b"}"#,
            r#"{"type":"response.output_text.delta"} x"#,
            r#"{"type":"resp\u006fnse.output_text.delta"}"#,
            r#"{"type":"response.created","response":{"id":"r"}}"#,
            r#"{"type":"response.done","response":{"id":"r","usage":{"total_tokens":3}}}"#,
            r#"{"type":"session.created","session":{"model":"m"}}"#,
            r#"{"type":"error","error":{"type":"invalid_request_error"}}"#,
            r#"{"type":"rate_limits.updated","rate_limits":[]}"#,
            r#"{"type":null}"#,
            r#"{"type":5,"delta":"x"}"#,
            r#"{"type":"a.delta","type":"response.done"}"#,
            r#"{"type":"response.\u0064one","response":{"id":"r"}}"#,
            r#"{}"#,
            r#"["response.output_text.delta"]"#,
            r#""response.output_text.delta""#,
            r#"{"type":"response.output_text.delta","delta":"x""#,
            "{not json",
            "",
            "\u{c}{\"type\":\"response.created\"}",
        ];
        for t in texts {
            let light = Event::by_type_alone(t.as_bytes());
            let full = Event::read_fully(t.as_bytes()).ok();
            if let Some(l) = &light {
                assert_eq!(Some(l), full.as_ref(), "{t}");
            }
            assert_eq!(Event::parse(t.as_bytes()).ok(), full, "{t}");
        }
        // the usual deltas never take the full read
        for t in &texts[..2] {
            assert_eq!(Event::by_type_alone(t.as_bytes()), Some(Event::OutputDelta));
        }
    }

    #[test]
    fn session_events_name_the_model() {
        let beta = r#"{"type":"session.created","event_id":"event_1","session":{"id":"sess_1","object":"realtime.session",
            "model":"gpt-4o-realtime-preview-2024-12-17","modalities":["text","audio"],"voice":"alloy",
            "input_audio_format":"pcm16","turn_detection":{"type":"server_vad"},"tools":[]}}"#;
        assert_eq!(
            parse(beta),
            Event::Session {
                model: Some("gpt-4o-realtime-preview-2024-12-17".to_owned())
            }
        );
        let ga = r#"{"type":"session.updated","event_id":"event_2","session":{"type":"realtime","object":"realtime.session",
            "id":"sess_2","model":"gpt-realtime","output_modalities":["audio"],"audio":{"input":{"format":{"type":"audio/pcm","rate":24000}}}}}"#;
        assert_eq!(
            parse(ga),
            Event::Session {
                model: Some("gpt-realtime".to_owned())
            }
        );
        assert_eq!(
            parse(r#"{"session":{"model":7},"type":"session.created"}"#),
            Event::Session { model: None }
        );
    }

    #[test]
    fn a_completed_turn_gives_its_usage_with_the_audio_split() {
        let done = r#"{"type":"response.done","event_id":"event_9","response":{"object":"realtime.response",
            "id":"resp_1","status":"completed","status_details":null,
            "output":[{"id":"item_1","type":"message","role":"assistant","content":[{"type":"audio","transcript":"Hi!"}]}],
            "usage":{"total_tokens":420,"input_tokens":300,"output_tokens":120,
              "input_token_details":{"cached_tokens":100,"text_tokens":80,"audio_tokens":220,
                "cached_tokens_details":{"text_tokens":20,"audio_tokens":80}},
              "output_token_details":{"text_tokens":20,"audio_tokens":100}}}}"#;
        let Event::ResponseDone(d) = parse(done) else {
            panic!("not a response.done")
        };
        assert_eq!(d.id.as_deref(), Some("resp_1"));
        assert_eq!(d.status.as_deref(), Some("completed"));
        assert_eq!(d.finish_reasons, vec!["completed".to_owned()]);
        assert_eq!(d.error_type, None);
        assert!(!d.invalid);
        assert_eq!(
            d.usage,
            Some(Usage {
                input_tokens: 300,
                output_tokens: 120,
                total_tokens: 420,
                cached_input_tokens: Some(100),
                reasoning_tokens: None,
                details: TokenDetails {
                    input_audio: Some(220),
                    input_text: Some(80),
                    cached_audio: Some(80),
                    cached_text: Some(20),
                    output_audio: Some(100),
                    output_text: Some(20),
                    ..TokenDetails::default()
                },
            })
        );
    }

    #[test]
    fn failed_cancelled_and_incomplete_turns() {
        let failed = r#"{"type":"response.done","response":{"id":"resp_2","status":"failed",
            "status_details":{"type":"failed","error":{"type":"server_error","code":"rate_limit_exceeded","message":"slow down"}},
            "usage":{"total_tokens":0,"input_tokens":0,"output_tokens":0}}}"#;
        let Event::ResponseDone(d) = parse(failed) else {
            panic!()
        };
        assert_eq!(d.error_type.as_deref(), Some("rate_limit_exceeded"));
        assert_eq!(d.finish_reasons, vec!["failed".to_owned()]);
        let failed_no_error = r#"{"type":"response.done","response":{"status":"failed"}}"#;
        let Event::ResponseDone(d) = parse(failed_no_error) else {
            panic!()
        };
        assert_eq!(d.error_type.as_deref(), Some("failed"));
        assert_eq!(d.usage, None);
        let cancelled = r#"{"type":"response.done","response":{"id":"resp_3","status":"cancelled",
            "status_details":{"type":"cancelled","reason":"turn_detected"},
            "usage":{"total_tokens":30,"input_tokens":25,"output_tokens":5}}}"#;
        let Event::ResponseDone(d) = parse(cancelled) else {
            panic!()
        };
        assert_eq!(d.error_type.as_deref(), Some("cancelled"));
        assert_eq!(d.finish_reasons, vec!["turn_detected".to_owned()]);
        assert_eq!(d.usage.map(|u| u.total_tokens), Some(30));
        let incomplete = r#"{"type":"response.done","response":{"status":"incomplete",
            "status_details":{"type":"incomplete","reason":"max_output_tokens"}}}"#;
        let Event::ResponseDone(d) = parse(incomplete) else {
            panic!()
        };
        assert_eq!(d.error_type, None);
        assert_eq!(d.finish_reasons, vec!["max_output_tokens".to_owned()]);
    }

    #[test]
    fn unusable_fields_are_dropped_on_their_own() {
        let odd = r#"{"type":"response.done","response":{"id":5,"status":"completed",
            "usage":{"input_tokens":-1,"output_tokens":4.0,"total_tokens":9}}}"#;
        let Event::ResponseDone(d) = parse(odd) else {
            panic!()
        };
        assert!(d.invalid);
        assert_eq!(d.id, None);
        let u = d.usage.expect("usage");
        assert_eq!((u.input_tokens, u.output_tokens, u.total_tokens), (0, 4, 9));
        let Event::ResponseDone(d) = parse(r#"{"type":"response.done","response":"??"}"#) else {
            panic!()
        };
        assert!(d.invalid);
    }

    #[test]
    fn deltas_errors_and_unknown_events() {
        for delta in [
            "response.text.delta",
            "response.audio.delta",
            "response.audio_transcript.delta",
            "response.output_text.delta",
            "response.output_audio.delta",
            "response.output_audio_transcript.delta",
            "response.function_call_arguments.delta",
        ] {
            let ev = format!(r#"{{"type":"{delta}","response_id":"resp_1","delta":"AAAA"}}"#);
            assert_eq!(parse(&ev), Event::OutputDelta, "{delta}");
        }
        assert_eq!(
            parse(
                r#"{"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}"#
            ),
            Event::ResponseCreated
        );
        assert_eq!(
            parse(
                r#"{"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"invalid_value","message":"x","param":null}}"#
            ),
            Event::Error {
                error_type: Some("invalid_value".to_owned())
            }
        );
        for other in [
            r#"{"type":"input_audio_buffer.speech_started","audio_start_ms":10}"#,
            r#"{"type":"response.output_audio.done"}"#,
            r#"{"type":"rate_limits.updated","rate_limits":[]}"#,
            r#"{"type":12}"#,
            r#"{}"#,
        ] {
            assert_eq!(parse(other), Event::Other, "{other}");
        }
        for junk in ["", "[1,2]", "\"response.done\"", "{\"type\":", "nul"] {
            assert!(Event::parse(junk.as_bytes()).is_err(), "{junk}");
        }
    }

    #[test]
    fn usage_sums_add_known_details() {
        let mut sum = Usage::default();
        let a = Usage {
            input_tokens: 10,
            output_tokens: 5,
            total_tokens: 15,
            cached_input_tokens: Some(2),
            details: TokenDetails {
                input_audio: Some(7),
                ..TokenDetails::default()
            },
            ..Usage::default()
        };
        let b = Usage {
            input_tokens: 1,
            output_tokens: 1,
            total_tokens: 2,
            details: TokenDetails {
                output_audio: Some(1),
                ..TokenDetails::default()
            },
            ..Usage::default()
        };
        add_usage(&mut sum, &a);
        add_usage(&mut sum, &b);
        assert_eq!(
            (sum.input_tokens, sum.output_tokens, sum.total_tokens),
            (11, 6, 17)
        );
        assert_eq!(sum.cached_input_tokens, Some(2));
        assert_eq!(sum.details.input_audio, Some(7));
        assert_eq!(sum.details.output_audio, Some(1));
        assert_eq!(sum.details.output_text, None);
    }
}
