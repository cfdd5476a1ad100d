//! Watches a response's bytes and fills in the call's facts.
//!
//! The observer sees a reference to every frame the tap passes on. Event
//! streams are decoded event by event and never kept; other bodies of model
//! calls are kept only up to a cap for one JSON parse at the end. When
//! tokentap injected `include_usage`, the observer also edits the stream
//! (see `genai::inject`) and says which bytes the client gets; if the
//! upstream compressed that stream anyway, the edit needs the plain text, so
//! the client then gets the decoded, edited stream (usage injection fails
//! open: the client never sees injected usage). A hostile upstream cannot make the observer hold
//! more than the caps below, however far its bytes inflate.

pub mod realtime;

use std::ops::ControlFlow;
use std::time::Instant;

use crate::call::{Call, ParseFailure};
use crate::genai::content;
use crate::genai::decode::Decoder;
use crate::genai::inject::UsageStripper;
use crate::genai::request::Operation;
use crate::genai::response::ResponseFacts;
use crate::genai::sse::SseDecoder;
use crate::genai::stream::StreamAccumulator;

/// Largest non-stream body kept for parsing (decoded bytes).
pub const JSON_CAP: usize = 16 << 20;
/// Most decoded bytes one compressed frame of an event stream may inflate
/// to; past it the frame is a bomb and decoding stops (`too_large`).
pub const FRAME_CAP: usize = JSON_CAP;
/// Most chunk gaps kept per call (a 4-byte float each).
const MAX_GAPS: usize = 1 << 16;

#[expect(
    clippy::large_enum_variant,
    reason = "one per call, never moved after creation; boxing would add an allocation"
)]
enum Mode {
    Sse {
        decoder: SseDecoder,
        acc: StreamAccumulator,
        stripper: Option<UsageStripper>,
    },
    Json {
        op: Operation,
        buf: Vec<u8>,
        too_large: bool,
    },
    Ignore,
}

pub struct Observer {
    mode: Mode,
    /// `None` once decoding stopped (corrupt data, or a cap reached).
    decoder: Option<Decoder>,
    /// The client gets the decoded bytes (an edited stream the upstream compressed).
    for_client: bool,
    started: Instant,
    first_chunk: Option<Instant>,
    last_output: Option<Instant>,
    gaps: Vec<f32>,
    failures: Vec<ParseFailure>,
    capture: bool,
}

/// What the client gets for one upstream frame when the stream is edited.
pub enum Pass {
    /// The frame unchanged.
    Unchanged,
    /// These bytes instead (possibly none yet).
    Edited(Vec<u8>),
}

impl Observer {
    /// `event_stream`: the response is `text/event-stream`. `strip_usage`: tokentap
    /// injected `include_usage` and must remove what it added.
    pub fn new(
        op: Option<Operation>,
        event_stream: bool,
        content_encoding: Option<&str>,
        strip_usage: bool,
        started: Instant,
    ) -> Observer {
        let decoder = Decoder::for_encoding(content_encoding);
        let mut failures = Vec::new();
        let mut for_client = false;
        let mode = match (op, &decoder) {
            (None, _) => Mode::Ignore,
            (Some(_), None) => {
                failures.push(ParseFailure::Decompression);
                Mode::Ignore
            }
            (Some(op), Some(dec)) if event_stream => {
                for_client = strip_usage && !dec.is_identity();
                Mode::Sse {
                    decoder: SseDecoder::new(),
                    acc: StreamAccumulator::new(op),
                    stripper: strip_usage.then(UsageStripper::new),
                }
            }
            (Some(op), Some(_)) => Mode::Json {
                op,
                buf: Vec::new(),
                too_large: false,
            },
        };
        Observer {
            mode,
            decoder,
            for_client,
            started,
            first_chunk: None,
            last_output: None,
            gaps: Vec::new(),
            failures,
            capture: false,
        }
    }

    /// Also assembles the output messages (content capture).
    pub fn capturing(mut self, on: bool) -> Observer {
        self.capture = on;
        if let Mode::Sse { acc, .. } = &mut self.mode {
            acc.set_capture(on);
        }
        self
    }

    /// Whether the client's bytes may differ from the upstream's (usage stripping).
    pub fn edits(&self) -> bool {
        matches!(
            self.mode,
            Mode::Sse {
                stripper: Some(_),
                ..
            }
        )
    }

    /// Whether the client gets the body decoded: tokentap injected usage into
    /// a stream that the upstream compressed although asked for `identity`,
    /// and removing what the injection added needs the plain text.
    ///
    /// `proxy::respond` calls this when it builds the client's response
    /// head and, when it is true, remove `Content-Encoding` and
    /// `Content-Length` from it (the body then is the decoded, edited stream).
    pub fn decodes_for_client(&self) -> bool {
        self.for_client
    }

    fn note(&mut self, f: ParseFailure) {
        if !self.failures.contains(&f) {
            self.failures.push(f);
        }
    }

    /// Observes one frame of upstream bytes.
    pub fn on_data(&mut self, data: &[u8]) -> Pass {
        if matches!(self.mode, Mode::Ignore) {
            return Pass::Unchanged;
        }
        let Some(dec) = self.decoder.as_mut() else {
            // decoding stopped: a client of decoded bytes can get no more of them
            return if self.for_client {
                Pass::Edited(Vec::new())
            } else {
                Pass::Unchanged
            };
        };
        let now = Instant::now();
        let compressed = !dec.is_identity();
        let Observer {
            mode,
            first_chunk,
            last_output,
            gaps,
            ..
        } = self;
        let mut frame_too_large = false;
        let res = match mode {
            Mode::Ignore => Ok(ControlFlow::Continue(())),
            Mode::Json { buf, too_large, .. } => dec.decode(data, |plain| {
                if buf.len() + plain.len() > JSON_CAP {
                    *too_large = true;
                    *buf = Vec::new();
                    ControlFlow::Break(())
                } else {
                    buf.extend_from_slice(plain);
                    ControlFlow::Continue(())
                }
            }),
            Mode::Sse {
                decoder,
                acc,
                stripper,
            } => {
                let mut budget = FRAME_CAP;
                dec.decode(data, |plain| {
                    if compressed {
                        if plain.len() > budget {
                            frame_too_large = true;
                            return ControlFlow::Break(());
                        }
                        budget -= plain.len();
                    }
                    if let Some(st) = stripper.as_mut() {
                        st.push(plain);
                    }
                    decoder.feed(plain, |ev| {
                        let info = acc.on_event(ev.event, ev.data);
                        if first_chunk.is_none() {
                            *first_chunk = Some(now);
                        }
                        if info.output {
                            if let Some(prev) = last_output.replace(now) {
                                if gaps.len() < MAX_GAPS {
                                    gaps.push(now.duration_since(prev).as_secs_f32());
                                }
                            }
                        }
                        if let Some(st) = stripper.as_mut() {
                            st.event(&ev, info);
                        }
                    });
                    if let Some(st) = stripper.as_mut() {
                        st.release(decoder.settled());
                    }
                    ControlFlow::Continue(())
                })
            }
        };
        match res {
            Ok(ControlFlow::Continue(())) => {}
            Ok(ControlFlow::Break(())) => {
                // a cap was reached: parsing stops, forwarding goes on
                if frame_too_large {
                    self.note(ParseFailure::TooLarge);
                }
                self.decoder = None;
            }
            Err(_) => {
                self.note(ParseFailure::Decompression);
                self.decoder = None;
            }
        }
        match &mut self.mode {
            Mode::Sse {
                stripper: Some(st), ..
            } => Pass::Edited(st.take_ready()),
            _ => Pass::Unchanged,
        }
    }

    /// At the end of the body: bytes still held back by an edited stream.
    pub fn flush(&mut self) -> Vec<u8> {
        let stopped = self.decoder.is_none();
        match &mut self.mode {
            // after decoding stopped, what is held is the start of an event that
            // can be neither completed nor edited: it is not sent
            Mode::Sse {
                stripper: Some(st), ..
            } if stopped => st.take_ready(),
            Mode::Sse {
                stripper: Some(st), ..
            } => st.finish(),
            _ => Vec::new(),
        }
    }

    /// At the body's end (after `flush`), before the call waits to be recorded:
    /// lets go of what only bytes still to come needed (the decompressor, the
    /// stream's buffers and usage stripper) and says how many bytes of the
    /// response it still holds.
    pub fn settled(&mut self) -> usize {
        self.decoder = None;
        match &mut self.mode {
            Mode::Json { buf, .. } => buf.capacity(),
            Mode::Sse {
                decoder,
                acc,
                stripper,
            } => {
                *stripper = None;
                decoder.release();
                acc.release() + self.gaps.capacity() * std::mem::size_of::<f32>()
            }
            Mode::Ignore => 0,
        }
    }

    /// Whether an event stream reached its proper end (`[DONE]`, or a terminal
    /// Responses event): a client may leave right after it, before the body's end.
    pub fn stream_done(&self) -> bool {
        matches!(&self.mode, Mode::Sse { acc, .. } if acc.is_done())
    }

    /// Fills `call` with what was observed. `complete`: the body reached its end.
    pub fn finish_into(self, call: &mut Call, complete: bool) {
        for f in self.failures {
            call.note_parse_failure(f);
        }
        call.time_to_first_chunk = self.first_chunk.map(|t| t.duration_since(self.started));
        call.chunk_gaps = self.gaps;
        match self.mode {
            Mode::Ignore => {}
            Mode::Json { op, buf, too_large } => {
                call.streamed = false;
                if too_large {
                    call.note_parse_failure(ParseFailure::TooLarge);
                } else if complete && !buf.is_empty() {
                    match ResponseFacts::from_body(op, &buf) {
                        Ok(facts) => {
                            if facts.invalid_usage {
                                call.note_parse_failure(ParseFailure::InvalidUsage);
                            }
                            call.response = facts;
                            // a tree of the body is built only when its text is captured
                            if let (true, Some(c)) = (self.capture, call.content.as_mut()) {
                                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf) {
                                    c.output_messages =
                                        content::output_json(&content::output_from_value(op, &v));
                                }
                            }
                        }
                        // a transcript asked for as text, srt or vtt is not JSON, and has no usage
                        Err(_) if !expects_json(op, &call.request) => {}
                        Err(_) => call.note_parse_failure(ParseFailure::InvalidJson),
                    }
                }
            }
            Mode::Sse { decoder, acc, .. } => {
                call.streamed = true;
                if acc.invalid_events() > 0
                    || (complete && decoder.buffered() > 0 && !acc.is_done())
                {
                    call.note_parse_failure(ParseFailure::InvalidSse);
                }
                if decoder.oversized_events() > 0 {
                    call.note_parse_failure(ParseFailure::TooLarge);
                }
                call.response = acc.facts();
                if call.response.invalid_usage {
                    call.note_parse_failure(ParseFailure::InvalidUsage);
                }
                if let (true, Some(c)) = (self.capture, call.content.as_mut()) {
                    c.output_messages = acc.output_messages();
                }
            }
        }
    }
}

/// Whether a successful answer to `op` is JSON: audio requests may ask for
/// plain text, subtitles (`srt`, `vtt`) or JSON.
fn expects_json(op: Operation, request: &crate::genai::request::RequestFacts) -> bool {
    match op {
        Operation::AudioTranscriptions | Operation::AudioTranslations => matches!(
            request.response_format.as_deref(),
            None | Some("json" | "verbose_json" | "diarized_json")
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::genai::provider::Provider;
    use crate::genai::request::RequestFacts;

    const WITH_USAGE: &[u8] = include_bytes!("../tests/fixtures/chat_stream_usage.sse");
    const PLAIN: &[u8] = include_bytes!("../tests/fixtures/chat_stream_plain.sse");

    fn new_call() -> Call {
        Call::new(
            Some(Operation::ChatCompletions),
            RequestFacts::default(),
            "POST".to_owned(),
            "/v1/chat/completions".to_owned(),
            Provider::default(),
            "api.openai.com".to_owned(),
            443,
        )
    }

    fn observer(event_stream: bool, encoding: Option<&str>, strip: bool) -> Observer {
        Observer::new(
            Some(Operation::ChatCompletions),
            event_stream,
            encoding,
            strip,
            Instant::now(),
        )
    }

    /// Drives `obs` as the tap does; returns what the client gets and the finished call.
    fn run<'a>(mut obs: Observer, frames: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, Call) {
        let mut out = Vec::new();
        for f in frames {
            match obs.on_data(f) {
                Pass::Unchanged => out.extend_from_slice(f),
                Pass::Edited(b) => out.extend(b),
            }
        }
        out.extend(obs.flush());
        let mut call = new_call();
        obs.finish_into(&mut call, true);
        (out, call)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).expect("write");
        gz.finish().expect("finish")
    }

    #[test]
    fn invalid_usage_is_counted_and_the_rest_kept() {
        let body = br#"{"model":"gpt-4o","usage":{"prompt_tokens":-4,"completion_tokens":2.0,"total_tokens":6}}"#;
        let (_, call) = run(observer(false, None, false), [&body[..]]);
        assert_eq!(call.parse_failures, vec![ParseFailure::InvalidUsage]);
        let u = call.usage().expect("usage");
        assert_eq!((u.output_tokens, u.total_tokens), (2, 6));

        let stream = b"data: {\"choices\":[],\"system_fingerprint\":[1],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
        let (_, call) = run(observer(true, None, false), [&stream[..]]);
        assert_eq!(call.parse_failures, vec![ParseFailure::InvalidUsage]);
        assert_eq!(call.usage().map(|u| u.total_tokens), Some(2));

        let (_, clean) = run(observer(true, None, false), [WITH_USAGE]);
        assert!(clean.parse_failures.is_empty());
    }

    #[test]
    fn transcripts_as_text_are_not_invalid_json() {
        let finish = |format: Option<&str>, body: &[u8]| {
            let mut obs = Observer::new(
                Some(Operation::AudioTranscriptions),
                false,
                None,
                false,
                Instant::now(),
            );
            let _ = obs.on_data(body);
            let mut call = new_call();
            call.operation = Some(Operation::AudioTranscriptions);
            call.request.response_format = format.map(str::to_owned);
            obs.finish_into(&mut call, true);
            call
        };
        let text = finish(Some("text"), b"Hello there.\n");
        assert!(text.parse_failures.is_empty());
        assert_eq!(text.usage(), None);
        let srt = finish(Some("srt"), b"1\n00:00:00,000 --> 00:00:01,000\nHi\n");
        assert!(srt.parse_failures.is_empty());
        // JSON was asked for (or nothing, which means JSON): a broken body is counted
        let broken = finish(None, b"Hello there.");
        assert_eq!(broken.parse_failures, vec![ParseFailure::InvalidJson]);
        let json = finish(
            Some("json"),
            br#"{"text":"Hi","usage":{"type":"tokens","input_tokens":14,"input_token_details":{"text_tokens":0,"audio_tokens":14},"output_tokens":2,"total_tokens":16}}"#,
        );
        let u = json.usage().expect("usage");
        assert_eq!((u.input_tokens, u.details.input_audio), (14, Some(14)));
    }

    #[test]
    fn keep_alives_reach_the_client_at_once_when_stripping() {
        let mut obs = observer(true, None, true);
        assert!(obs.edits());
        for _ in 0..1000 {
            let frame = b": keep-alive\n\n";
            match obs.on_data(frame) {
                Pass::Edited(b) => assert_eq!(b, frame, "held back"),
                Pass::Unchanged => {}
            }
        }
        // between events, right before the usage-only chunk, and between it and [DONE]
        let done = WITH_USAGE.len() - b"data: [DONE]\n\n".len();
        let usage_chunk = done
            - WITH_USAGE[..done - 2]
                .rsplit(|&b| b == b'\n')
                .next()
                .map_or(0, |l| l.len())
            - 2;
        assert!(WITH_USAGE[usage_chunk..].starts_with(b"data: {"));
        let mut with = b": ping\n\n".to_vec();
        with.extend_from_slice(&WITH_USAGE[..usage_chunk]);
        with.extend_from_slice(b":\n");
        with.extend_from_slice(&WITH_USAGE[usage_chunk..done]);
        with.extend_from_slice(b": ping\r\n");
        with.extend_from_slice(&WITH_USAGE[done..]);
        let mut plain = b": ping\n\n".to_vec();
        plain.extend_from_slice(&PLAIN[..PLAIN.len() - b"data: [DONE]\n\n".len()]);
        plain.extend_from_slice(b":\n: ping\r\n");
        plain.extend_from_slice(b"data: [DONE]\n\n");
        for step in [1, 7, 64, with.len()] {
            let (out, call) = run(observer(true, None, true), with.chunks(step));
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&plain)
            );
            assert_eq!(call.usage().map(|u| u.total_tokens), Some(23));
        }
    }

    #[test]
    fn an_event_over_one_mib_is_passed_on_and_counted_too_large() {
        let mut input = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"".to_vec();
        input.resize(input.len() + (2 << 20), b'x');
        input.extend_from_slice(b"\"}}]}\n\n");
        input.extend_from_slice(WITH_USAGE);
        let (out, call) = run(observer(true, None, false), input.chunks(64 << 10));
        assert_eq!(out, input);
        assert_eq!(call.parse_failures, vec![ParseFailure::TooLarge]);
        assert_eq!(call.usage().map(|u| u.total_tokens), Some(23));
    }

    #[test]
    fn a_compressed_injected_stream_is_decoded_and_stripped() {
        assert!(observer(true, Some("gzip"), true).decodes_for_client());
        assert!(observer(true, Some("br"), true).decodes_for_client());
        assert!(!observer(true, None, true).decodes_for_client());
        assert!(!observer(true, Some("gzip"), false).decodes_for_client());
        assert!(!observer(false, Some("gzip"), true).decodes_for_client());
        let gz = gzip(WITH_USAGE);
        for step in [1, 13, 200, gz.len()] {
            let (out, call) = run(observer(true, Some("gzip"), true), gz.chunks(step));
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(PLAIN),
                "step {step}"
            );
            assert_eq!(call.usage().map(|u| u.total_tokens), Some(23));
            assert!(call.parse_failures.is_empty());
        }
    }

    #[test]
    fn a_corrupt_compressed_injected_stream_stops_for_the_client() {
        // a sync flush halfway makes the next block start on a byte; its type is then
        // set to the reserved 0b11
        let half = WITH_USAGE.len() / 2;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&WITH_USAGE[..half]).expect("write");
        gz.flush().expect("flush");
        let at = gz.get_ref().len();
        gz.write_all(&WITH_USAGE[half..]).expect("write");
        let mut broken = gz.finish().expect("finish");
        broken[at] |= 0b110;
        let (out, call) = run(observer(true, Some("gzip"), true), broken.chunks(40));
        assert!(
            out.len() > 500,
            "the events before the damage were sent: {}",
            out.len()
        );
        assert!(call.parse_failures.contains(&ParseFailure::Decompression));
        assert!(
            PLAIN.starts_with(&out),
            "only whole, edited events reach the client"
        );
        assert!(
            !String::from_utf8_lossy(&out).contains("usage"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn a_settled_stream_holds_little_and_still_knows_it_was_cut() {
        for strip in [false, true] {
            let mut obs = observer(true, None, strip);
            let mut chunk = br#"data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":""#.to_vec();
            chunk.extend(vec![b'a'; 512 << 10]);
            chunk.extend_from_slice(b"\"}}]}\n\ndata: {\"id\":\"c\",\"cho");
            obs.on_data(&chunk);
            obs.flush();
            let held = obs.settled();
            assert!(held < 64 << 10, "still holds {held} bytes");
            let mut call = new_call();
            obs.finish_into(&mut call, true);
            assert!(call.parse_failures.contains(&ParseFailure::InvalidSse));
            assert_eq!(call.response.model.as_deref(), Some("gpt-4o"));
        }
    }
}
