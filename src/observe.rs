//! Watches a response's bytes and fills in the call's facts.
//!
//! The observer sees a reference to every frame the tap passes on. Event
//! streams are decoded event by event and never kept; other bodies of model
//! calls are kept only up to a cap for one JSON parse at the end. When
//! tokentap injected `include_usage`, the observer also edits the stream
//! (see `genai::inject`) and says which bytes the client gets.

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
    decoder: Option<Decoder>,
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
        let mode = match (op, decoder.is_some()) {
            (None, _) => Mode::Ignore,
            (Some(_), false) => {
                failures.push(ParseFailure::Decompression);
                Mode::Ignore
            }
            (Some(op), true) if event_stream => Mode::Sse {
                decoder: SseDecoder::new(),
                acc: StreamAccumulator::new(op),
                // edits are made on raw bytes: only possible on an identity stream
                stripper: (strip_usage && decoder.as_ref().is_some_and(Decoder::is_identity))
                    .then(UsageStripper::new),
            },
            (Some(op), true) => Mode::Json {
                op,
                buf: Vec::new(),
                too_large: false,
            },
        };
        Observer {
            mode,
            decoder,
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

    /// Observes one frame of upstream bytes.
    pub fn on_data(&mut self, data: &[u8]) -> Pass {
        if matches!(self.mode, Mode::Ignore) {
            return Pass::Unchanged;
        }
        let Some(dec) = self.decoder.as_mut() else {
            return Pass::Unchanged;
        };
        let now = Instant::now();
        let Observer {
            mode,
            first_chunk,
            last_output,
            gaps,
            failures,
            ..
        } = self;
        let res = match mode {
            Mode::Ignore => Ok(()),
            Mode::Json { buf, too_large, .. } => dec.decode(data, |plain| {
                if *too_large {
                } else if buf.len() + plain.len() > JSON_CAP {
                    *too_large = true;
                    *buf = Vec::new();
                } else {
                    buf.extend_from_slice(plain);
                }
            }),
            Mode::Sse {
                decoder,
                acc,
                stripper,
            } => {
                if let Some(st) = stripper.as_mut() {
                    st.push(data);
                }
                dec.decode(data, |plain| {
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
                            st.event(ev.end_offset, info);
                        }
                    })
                })
            }
        };
        if res.is_err() {
            if !failures.contains(&ParseFailure::Decompression) {
                failures.push(ParseFailure::Decompression);
            }
            self.decoder = None;
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
        match &mut self.mode {
            Mode::Sse {
                stripper: Some(st), ..
            } => st.finish(),
            _ => Vec::new(),
        }
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
                            call.response = facts;
                            // a tree of the body is built only when its text is captured
                            if let (true, Some(c)) = (self.capture, call.content.as_mut()) {
                                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf) {
                                    c.output_messages =
                                        content::output_json(&content::output_from_value(op, &v));
                                }
                            }
                        }
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
                call.response = acc.facts();
                if let (true, Some(c)) = (self.capture, call.content.as_mut()) {
                    c.output_messages = acc.output_messages();
                }
            }
        }
    }
}
