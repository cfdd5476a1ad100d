//! Incremental server-sent-events decoder.
//!
//! Upstream frames split events at arbitrary byte positions (inside a UTF-8
//! character, between the CR and LF of a CRLF), so the decoder keeps only the
//! incomplete tail line and hands out each event as soon as its blank line
//! arrives. Complete lines inside a frame are processed in place; the data of
//! an event is gathered in one reused buffer, so steady-state decoding does
//! not allocate. Bytes are never validated as UTF-8 here: consumers parse the
//! data as JSON, which validates it anyway.

/// One dispatched event. `data` is the `data:` lines joined by `\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, if the event had one.
    pub event: Option<&'a [u8]>,
    pub data: &'a [u8],
    /// Offset in the whole stream just past the line end that ended this
    /// event, as far as it had arrived: when a frame ends between the CR and
    /// LF of a CRLF, the LF is not counted (it arrives with the next frame).
    pub end_offset: u64,
}

#[derive(Debug, Default)]
pub struct SseDecoder {
    /// The incomplete last line of the previous frames.
    partial: Vec<u8>,
    data: Vec<u8>,
    event: Vec<u8>,
    has_data: bool,
    has_event: bool,
    /// The previous frame ended in CR: a leading LF belongs to that line end.
    after_cr: bool,
    consumed: u64,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held for an incomplete line (bounded by the longest line).
    pub fn buffered(&self) -> usize {
        self.partial.len() + self.data.len()
    }

    /// Feeds one frame; calls `on_event` for every event it completes.
    pub fn feed(&mut self, mut chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>)) {
        let base = self.consumed;
        self.consumed += chunk.len() as u64;
        let mut pos_base = base;
        if self.after_cr {
            self.after_cr = false;
            if let Some((&b'\n', rest)) = chunk.split_first() {
                chunk = rest;
                pos_base += 1;
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
            let line_end_offset = pos_base + next as u64;
            if self.partial.is_empty() {
                self.line(&chunk[start..end], line_end_offset, &mut on_event);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&chunk[start..end]);
                self.line(&line, line_end_offset, &mut on_event);
                line.clear();
                self.partial = line;
            }
            start = next;
        }
        self.partial.extend_from_slice(&chunk[start..]);
    }

    fn line(&mut self, line: &[u8], end_offset: u64, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if line.is_empty() {
            if self.has_data {
                on_event(SseEvent {
                    event: self.has_event.then_some(self.event.as_slice()),
                    data: &self.data,
                    end_offset,
                });
            }
            self.data.clear();
            self.event.clear();
            self.has_data = false;
            self.has_event = false;
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return, // comment
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
    fn incomplete_event_is_not_dispatched() {
        let mut d = SseDecoder::new();
        let mut n = 0;
        d.feed(b"data: {\"a\":1}\n", |_| n += 1);
        assert_eq!(n, 0);
        d.feed(b"\n", |_| n += 1);
        assert_eq!(n, 1);
    }
}
