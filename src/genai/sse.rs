//! Incremental server-sent-events decoder.
//!
//! Upstream frames split events at arbitrary byte positions (inside a UTF-8
//! character, between the CR and LF of a CRLF), so the decoder keeps only the
//! incomplete tail line and hands out each event as soon as its blank line
//! arrives. Complete lines inside a frame are processed in place; the data of
//! an event is gathered in one reused buffer, so steady-state decoding does
//! not allocate. Bytes are never validated as UTF-8 here: consumers parse the
//! data as JSON, which validates it anyway.
//!
//! Memory is bounded whatever the upstream sends: comment lines are never
//! stored, and an event larger than [`MAX_EVENT`] is skipped to its end and
//! counted instead of gathered. The decoder also tells which bytes can no
//! longer belong to an event still to come ([`SseDecoder::settled`]), so an
//! editor of the stream holds back at most the current incomplete event.

/// Largest event parsed (its lines as received); a larger one is skipped.
pub const MAX_EVENT: usize = 1 << 20;

/// One dispatched event. `data` is the `data:` lines joined by `\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, if the event had one.
    pub event: Option<&'a [u8]>,
    pub data: &'a [u8],
    /// Offset in the whole stream where this event's bytes begin: the
    /// [`SseDecoder::settled`] offset when its first line started (a lone LF
    /// that completed the previous line's CRLF may come first).
    pub start_offset: u64,
    /// Offset in the whole stream just past the line end that ended this
    /// event, as far as it had arrived: when a frame ends between the CR and
    /// LF of a CRLF, the LF is not counted (it arrives with the next frame).
    pub end_offset: u64,
}

/// What the bytes of the current incomplete line are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Line {
    /// No byte of it yet.
    #[default]
    Start,
    /// A field line, gathered in `partial`.
    Keep,
    /// A comment, or a line of an oversized event: not stored.
    Skip,
}

#[derive(Debug)]
pub struct SseDecoder {
    /// The incomplete last field line of the previous frames.
    partial: Vec<u8>,
    line: Line,
    data: Vec<u8>,
    event: Vec<u8>,
    has_data: bool,
    has_event: bool,
    /// A field line arrived (or began) since the last blank line.
    in_event: bool,
    /// Where the current event's bytes begin.
    event_start: u64,
    /// The current event passed `max_event`: it is skipped to its end.
    oversized: bool,
    oversized_events: u64,
    max_event: usize,
    /// The previous frame ended in CR: a leading LF belongs to that line end.
    after_cr: bool,
    consumed: u64,
    settled: u64,
    /// What `release` let go of, still counted in `buffered`.
    released: usize,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::with_max_event(MAX_EVENT)
    }
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that skips events larger than `max_event` bytes.
    pub fn with_max_event(max_event: usize) -> Self {
        SseDecoder {
            partial: Vec::new(),
            line: Line::Start,
            data: Vec::new(),
            event: Vec::new(),
            has_data: false,
            has_event: false,
            in_event: false,
            event_start: 0,
            oversized: false,
            oversized_events: 0,
            max_event,
            after_cr: false,
            consumed: 0,
            settled: 0,
            released: 0,
        }
    }

    /// Bytes held for an incomplete event (at most about `max_event`).
    pub fn buffered(&self) -> usize {
        self.partial.len() + self.data.len() + self.released
    }

    /// At the stream's end, before the call waits to be recorded: lets go of the
    /// buffers (an event's data can have grown to `max_event`). What they held
    /// still counts in [`buffered`](Self::buffered).
    pub fn release(&mut self) {
        self.released = self.buffered();
        self.partial = Vec::new();
        self.data = Vec::new();
        self.event = Vec::new();
    }

    /// Events skipped (so far) because they were larger than the limit.
    pub fn oversized_events(&self) -> u64 {
        self.oversized_events
    }

    /// Stream offset before which no byte belongs to an event that may still
    /// be dispatched: comments and blank lines between events, dispatched
    /// events, and the part received so far of an event being skipped.
    pub fn settled(&self) -> u64 {
        self.settled
    }

    /// Feeds one frame; calls `on_event` for every event it completes.
    pub fn feed(&mut self, mut chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>)) {
        let base = self.consumed;
        self.consumed += chunk.len() as u64;
        let mut pos_base = base;
        // an empty frame between the CR and its LF changes nothing
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if let Some((&b'\n', rest)) = chunk.split_first() {
                chunk = rest;
                pos_base += 1;
                if !self.in_event || self.oversized {
                    // the LF of a CRLF that ended a comment or blank line: pass it on too
                    self.settled = pos_base;
                }
            }
        }
        let mut start = 0usize;
        while let Some(rel) = memchr::memchr2(b'\n', b'\r', &chunk[start..]) {
            let end = start + rel;
            let mut next = end + 1;
            if chunk[end] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let line_end = pos_base + next as u64;
            // an event's size is its content: the line ending (1 or 2 bytes, maybe in
            // the next frame) must not decide whether it is too large
            let content_end = pos_base + end as u64;
            let seg = &chunk[start..end];
            match std::mem::take(&mut self.line) {
                Line::Start => self.line(seg, content_end, line_end, &mut on_event),
                Line::Skip => self.skipped_line(line_end),
                Line::Keep if self.too_big(content_end) => {
                    self.oversize(line_end);
                    self.skipped_line(line_end);
                }
                Line::Keep => {
                    let mut line = std::mem::take(&mut self.partial);
                    line.extend_from_slice(seg);
                    self.line(&line, content_end, line_end, &mut on_event);
                    line.clear();
                    self.partial = line;
                }
            }
            start = next;
        }
        self.tail(&chunk[start..]);
    }

    /// The incomplete last line of a frame.
    fn tail(&mut self, tail: &[u8]) {
        let Some(&first) = tail.first() else {
            return;
        };
        if self.line == Line::Start {
            self.line = if first == b':' {
                Line::Skip
            } else {
                self.begin_field_line();
                if self.oversized {
                    Line::Skip
                } else {
                    Line::Keep
                }
            };
        }
        if self.line == Line::Keep {
            if self.too_big(self.consumed) {
                self.oversize(self.consumed);
                self.line = Line::Skip;
            } else {
                self.partial.extend_from_slice(tail);
            }
        }
        if !self.in_event || self.oversized {
            // a comment between events, or the part of an oversized event so far
            self.settled = self.consumed;
        }
    }

    fn begin_field_line(&mut self) {
        if !self.in_event {
            self.in_event = true;
            self.event_start = self.settled;
        }
    }

    /// Whether the current event would exceed the limit at stream offset `at`.
    fn too_big(&self, at: u64) -> bool {
        !self.oversized && at.saturating_sub(self.event_start) > self.max_event as u64
    }

    /// Drops what was gathered of the current event; skips the rest of it.
    fn oversize(&mut self, at: u64) {
        self.oversized = true;
        self.oversized_events += 1;
        self.partial = Vec::new();
        self.data = Vec::new();
        self.event = Vec::new();
        self.has_data = false;
        self.has_event = false;
        self.settled = at;
    }

    /// A line that ended while being skipped (a comment, or inside an oversized event).
    fn skipped_line(&mut self, end_offset: u64) {
        if !self.in_event || self.oversized {
            self.settled = end_offset;
        }
    }

    fn line(
        &mut self,
        line: &[u8],
        content_end: u64,
        end_offset: u64,
        on_event: &mut impl FnMut(SseEvent<'_>),
    ) {
        if line.is_empty() {
            if !self.oversized && self.has_data {
                on_event(SseEvent {
                    event: self.has_event.then_some(self.event.as_slice()),
                    data: &self.data,
                    start_offset: self.event_start,
                    end_offset,
                });
            }
            self.data.clear();
            self.event.clear();
            self.has_data = false;
            self.has_event = false;
            self.in_event = false;
            self.oversized = false;
            self.settled = end_offset;
            return;
        }
        if line[0] == b':' {
            return self.skipped_line(end_offset); // comment
        }
        self.begin_field_line();
        if self.oversized {
            return self.skipped_line(end_offset);
        }
        if self.too_big(content_end) {
            self.oversize(end_offset);
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
                self.has_event = true;
            }
            _ => {} // id, retry and unknown fields carry nothing we observe
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Owned = (Option<Vec<u8>>, Vec<u8>, u64);

    fn decode_split(input: &[u8], splits: &[usize]) -> Vec<Owned> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        let mut prev = 0;
        for &s in splits.iter().chain(std::iter::once(&input.len())) {
            d.feed(&input[prev..s], |e| {
                out.push((e.event.map(<[u8]>::to_vec), e.data.to_vec(), e.end_offset))
            });
            prev = s;
        }
        out
    }

    fn without_offsets(v: Vec<Owned>) -> Vec<Owned> {
        v.into_iter().map(|(e, d, _)| (e, d, 0)).collect()
    }

    /// With CRLF, an event's end offset depends on whether its LF had arrived.
    fn every_split_agrees_ignoring_offsets(input: &[u8]) -> Vec<Owned> {
        let whole = without_offsets(decode_split(input, &[]));
        for i in 0..=input.len() {
            assert_eq!(
                without_offsets(decode_split(input, &[i])),
                whole,
                "split at {i}"
            );
        }
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            without_offsets(decode_split(input, &bytewise)),
            whole,
            "byte by byte"
        );
        whole
    }

    fn every_split_agrees(input: &[u8]) -> Vec<Owned> {
        if input.contains(&b'\r') {
            return every_split_agrees_ignoring_offsets(input);
        }
        let whole = decode_split(input, &[]);
        for i in 0..=input.len() {
            assert_eq!(decode_split(input, &[i]), whole, "split at {i}");
            for j in i..=input.len().min(i + 7) {
                assert_eq!(decode_split(input, &[i, j]), whole, "split at {i},{j}");
            }
        }
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(decode_split(input, &bytewise), whole, "byte by byte");
        whole
    }

    #[test]
    fn chat_fixture_every_split() {
        let input = include_bytes!("../../tests/fixtures/chat_stream_usage.sse");
        let events = every_split_agrees(input);
        assert_eq!(events.len(), 8);
        assert_eq!(events.last().map(|e| e.1.as_slice()), Some(&b"[DONE]"[..]));
        assert_eq!(events.last().map(|e| e.2), Some(input.len() as u64));
        // the multi-byte character survives every split intact
        assert!(
            events
                .iter()
                .any(|e| std::str::from_utf8(&e.1).is_ok_and(|s| s.contains('—')))
        );
    }

    #[test]
    fn responses_fixture_with_event_lines_and_crlf() {
        let lf = include_bytes!("../../tests/fixtures/responses_stream.sse");
        let crlf: Vec<u8> = lf
            .split(|&b| b == b'\n')
            .collect::<Vec<_>>()
            .join(&b"\r\n"[..]);
        let a = every_split_agrees(lf);
        let b = every_split_agrees_ignoring_offsets(&crlf);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((&x.0, &x.1), (&y.0, &y.1));
        }
        assert_eq!(a[0].0.as_deref(), Some(&b"response.created"[..]));
        assert_eq!(
            a.last().and_then(|e| e.0.as_deref()),
            Some(&b"response.completed"[..])
        );
    }

    #[test]
    fn the_line_ending_does_not_decide_an_event_too_large() {
        // found by tests/properties.rs: whole, the CRLF made this 9-byte event too large
        // for a limit of 8; fed byte by byte, the LF came too late to count
        let input = b"data:\0\0\r\n\n";
        let whole = {
            let mut d = SseDecoder::with_max_event(8);
            let mut got = Vec::new();
            d.feed(input, |e| got.push(e.data.to_vec()));
            (got, d.oversized_events())
        };
        let mut d = SseDecoder::with_max_event(8);
        let mut got = Vec::new();
        for b in input.chunks(1) {
            d.feed(b, |e| got.push(e.data.to_vec()));
        }
        assert_eq!((got, d.oversized_events()), whole);
        assert_eq!(whole.0, vec![b"\0\0".to_vec()]);
    }

    #[test]
    fn an_empty_frame_between_cr_and_lf_is_no_blank_line() {
        // found by tests/properties.rs: a split left an empty frame after a CR, and
        // its LF then read as a blank line that dispatched a half-read event
        let mut d = SseDecoder::new();
        let mut got = Vec::new();
        for frame in [&b"data: a\r"[..], b"", b"\ndata: b\r", b"", b"\n"] {
            d.feed(frame, |e| got.push(e.data.to_vec()));
        }
        assert!(got.is_empty(), "{got:?}");
        d.feed(b"\r\n", |e| got.push(e.data.to_vec()));
        assert_eq!(got, vec![b"a\nb".to_vec()]);
    }

    #[test]
    fn comments_multiline_data_and_bare_cr() {
        let input =
            b": keep-alive\n\ndata: a\ndata:b\r\revent: x\rdata:  c\n\nid: 1\nretry: 5\n\ndata\n\n";
        let events = every_split_agrees(input);
        let got: Vec<(Option<&[u8]>, &[u8])> = events
            .iter()
            .map(|e| (e.0.as_deref(), e.1.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (None, &b"a\nb"[..]),
                (Some(&b"x"[..]), &b" c"[..]),
                (None, &b""[..])
            ]
        );
    }

    #[test]
    fn an_oversized_event_is_skipped_with_bounded_buffer() {
        let mut d = SseDecoder::new();
        let mut events = Vec::new();
        let piece = vec![b'x'; 64 << 10];
        d.feed(b"data: {\"a\":\"", |_| {});
        for _ in 0..32 {
            // 2 MiB of one data line
            d.feed(&piece, |e| events.push(e.data.to_vec()));
            assert!(d.buffered() <= (1 << 20) + piece.len(), "{}", d.buffered());
        }
        d.feed(b"\"}\n\ndata: {\"b\":1}\n\n", |e| {
            events.push(e.data.to_vec())
        });
        assert_eq!(events, vec![b"{\"b\":1}".to_vec()]);
    }

    #[test]
    fn settled_passes_comments_at_once_but_not_an_incomplete_event() {
        let mut d = SseDecoder::new();
        let a = b": ping\n\n: half a comm";
        d.feed(a, |_| {});
        assert_eq!(
            d.settled(),
            a.len() as u64,
            "an incomplete comment is settled too"
        );
        let b = b"ent\ndata: {\"a\"";
        d.feed(b, |_| {});
        let event_start = (a.len() + 4) as u64;
        assert_eq!(d.settled(), event_start, "not the incomplete event");
        let c = b":1}\n: inside an event\r\n\r";
        let mut spans = Vec::new();
        d.feed(c, |e| spans.push((e.start_offset, e.end_offset)));
        let end = (a.len() + b.len() + c.len()) as u64;
        assert_eq!(spans, vec![(event_start, end)]);
        assert_eq!(d.settled(), end);
        d.feed(b"\n", |_| {});
        assert_eq!(d.settled(), end + 1, "the LF of the CRLF");
    }

    #[test]
    fn an_oversized_event_is_settled_as_it_arrives() {
        let mut d = SseDecoder::with_max_event(16);
        let mut n = 0;
        d.feed(b"data: 0123456789", |_| n += 1);
        assert_eq!(d.settled(), 0);
        d.feed(b"abcdef", |_| n += 1);
        assert_eq!(
            (d.settled(), d.oversized_events(), d.buffered()),
            (22, 1, 0)
        );
        d.feed(b"\ndata: more\n", |_| n += 1);
        assert_eq!(d.settled(), 34);
        d.feed(b"\ndata: x\n\n", |_| n += 1);
        assert_eq!((n, d.oversized_events()), (1, 1));
    }

    #[test]
    fn incomplete_event_is_not_dispatched() {
        let mut d = SseDecoder::new();
        let mut n = 0;
        d.feed(b"data: {\"a\":1}\n", |_| n += 1);
        assert_eq!(n, 0);
        d.feed(b"\n", |_| n += 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn a_released_decoder_keeps_counting_what_it_held_and_holds_nothing() {
        let mut d = SseDecoder::new();
        let big = vec![b'x'; 300 << 10];
        let mut events = 0;
        // a whole event with a large data line, then the start of another: data, then a
        // line still open
        let mut input = b"data: ".to_vec();
        input.extend_from_slice(&big);
        input.extend_from_slice(b"\n\ndata: one\ndata: tw");
        d.feed(&input, |_| events += 1);
        assert_eq!(events, 1);
        let before = d.buffered();
        assert!(before > 0);
        assert!(d.data.capacity() + d.partial.capacity() >= 300 << 10);
        d.release();
        assert_eq!(d.buffered(), before, "an incomplete last event still shows");
        assert_eq!(
            d.partial.capacity() + d.data.capacity() + d.event.capacity(),
            0
        );
    }
}
