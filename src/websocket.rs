//! Reading WebSocket messages from a copy of the bytes, to observe a tunnel.
//!
//! A WebSocket tunnel is forwarded byte for byte; tokentap only watches one
//! direction (the server's events of a Realtime session) and must never
//! delay, change or hold back a frame to do so. This reader is therefore
//! fed copies of whatever arrived, split anywhere, and yields whole
//! messages: it joins fragments, passes over control frames (keeping a
//! close code), and inflates `permessage-deflate` messages (RFC 7692) with
//! the context-takeover rule the two ends negotiated.
//!
//! Everything it keeps is bounded: a frame header, and one message up to
//! `max_message` bytes (after inflation). A longer message is skipped to its
//! end and reported as [`Message::TooLarge`]; anything that breaks the
//! framing rules ends observation for the connection ([`Message::Broken`]),
//! while the tunnel itself goes on untouched. Pure: no I/O, no async.

use std::borrow::Cow;

use flate2::{Decompress, FlushDecompress, Status};

/// What the reader makes of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// A whole text message (UTF-8 not checked: the observer parses JSON leniently),
    /// lent from the bytes pushed when it came whole in one frame of them.
    Text(Cow<'a, [u8]>),
    /// A whole binary message: only its size is kept.
    Binary(usize),
    /// A close frame and its status code, when it carried one.
    Close(Option<u16>),
    /// A message over the size limit, skipped.
    TooLarge,
    /// The framing broke (or inflation failed); nothing more is reported.
    Broken(&'static str),
}

impl Message<'_> {
    /// The message with its text copied, for keeping past the push that lent it.
    #[cfg(test)]
    pub(crate) fn into_owned(self) -> Message<'static> {
        match self {
            Message::Text(t) => Message::Text(Cow::Owned(t.into_owned())),
            Message::Binary(n) => Message::Binary(n),
            Message::Close(c) => Message::Close(c),
            Message::TooLarge => Message::TooLarge,
            Message::Broken(why) => Message::Broken(why),
        }
    }
}

/// `permessage-deflate` as negotiated for the direction being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The sender resets its compression context after each message.
    pub no_context_takeover: bool,
}

impl Deflate {
    /// The extension for the server-to-client direction, from the `101`
    /// answer's `Sec-WebSocket-Extensions`; `None` when it wasn't negotiated.
    pub fn server_to_client(extensions: &str) -> Option<Deflate> {
        Self::negotiated(extensions, "server_no_context_takeover")
    }

    /// The extension for the client-to-server direction.
    pub fn client_to_server(extensions: &str) -> Option<Deflate> {
        Self::negotiated(extensions, "client_no_context_takeover")
    }

    fn negotiated(extensions: &str, no_takeover: &str) -> Option<Deflate> {
        // the answer names at most one accepted configuration per extension
        extensions.split(',').find_map(|ext| {
            let mut params = ext.split(';').map(str::trim);
            if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
                return None;
            }
            let no_context_takeover = params.any(|p| {
                p.split('=')
                    .next()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(no_takeover))
            });
            Some(Deflate {
                no_context_takeover,
            })
        })
    }
}

/// The trailer a compressed message's sender removed (RFC 7692 §7.2.1).
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Largest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Payload bytes still to come.
    left: u64,
    /// Where in the payload the mask continues (offset into the frame's payload).
    offset: u64,
}

/// The message being assembled from data frames.
#[derive(Debug)]
struct Partial {
    text: bool,
    compressed: bool,
    /// Raw (maybe compressed) payload so far; empty when skipping.
    data: Vec<u8>,
    size: usize,
    skipping: bool,
}

/// Incremental reader of one direction of a WebSocket connection.
pub struct Reader {
    max_message: usize,
    deflate: Option<Deflate>,
    inflater: Option<Decompress>,
    header: Vec<u8>,
    frame: Option<Frame>,
    message: Option<Partial>,
    control: Vec<u8>,
    broken: bool,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("max_message", &self.max_message)
            .field("deflate", &self.deflate)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// A reader keeping at most `max_message` bytes of one message.
    pub fn new(max_message: usize, deflate: Option<Deflate>) -> Reader {
        Reader {
            max_message,
            deflate,
            inflater: deflate.map(|_| Decompress::new(false)),
            header: Vec::with_capacity(MAX_HEADER),
            frame: None,
            message: None,
            control: Vec::new(),
            broken: false,
        }
    }

    /// True once the framing broke: nothing more will be reported.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Reads `bytes` (the next bytes of the direction, split anywhere) and
    /// hands every completed message to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut impl FnMut(Message<'_>)) {
        while !bytes.is_empty() && !self.broken {
            if self.frame.is_none() {
                if let Some(used) = self.whole_text(bytes, out) {
                    bytes = &bytes[used..];
                    continue;
                }
                let used = self.read_header(bytes, out);
                bytes = &bytes[used..];
                continue;
            }
            let used = self.read_payload(bytes, out);
            bytes = &bytes[used..];
        }
    }

    /// A text message that starts `bytes` as one whole, plain frame (FIN, not
    /// masked, not compressed, within the limit, no message under way) is lent
    /// to `out` as it lies: most server events come so, and copying each was
    /// most of what reading one cost. Returns the bytes used; `None` leaves
    /// `bytes` to the general reader.
    fn whole_text(&mut self, bytes: &[u8], out: &mut impl FnMut(Message<'_>)) -> Option<usize> {
        // FIN and opcode 1 with no reserved bit, and no mask bit (the general reader unmasks)
        if !self.header.is_empty() || self.message.is_some() || bytes.first() != Some(&0x81) {
            return None;
        }
        let head = header_len(bytes);
        if bytes.len() < head || bytes[1] & 0x80 != 0 {
            return None;
        }
        let len = usize::try_from(payload_len(bytes))
            .ok()
            .filter(|&n| n <= self.max_message)?;
        let payload = bytes.get(head..head.checked_add(len)?)?;
        out(Message::Text(Cow::Borrowed(payload)));
        Some(head + len)
    }

    fn fail(&mut self, why: &'static str, out: &mut impl FnMut(Message<'_>)) {
        self.broken = true;
        self.header = Vec::new();
        self.message = None;
        self.control = Vec::new();
        out(Message::Broken(why));
    }

    /// Takes header bytes from `bytes`; returns how many it used.
    fn read_header(&mut self, bytes: &[u8], out: &mut impl FnMut(Message<'_>)) -> usize {
        let mut used = 0;
        // at least the two fixed bytes, then as many as they call for
        while used < bytes.len() {
            let need = header_len(&self.header);
            if self.header.len() >= need {
                break;
            }
            let take = (need - self.header.len()).min(bytes.len() - used);
            self.header.extend_from_slice(&bytes[used..used + take]);
            used += take;
        }
        let need = header_len(&self.header);
        if self.header.len() < need {
            return used;
        }
        let h = &self.header;
        let fin = h[0] & 0x80 != 0;
        let rsv1 = h[0] & 0x40 != 0;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let len = payload_len(h);
        let mask = masked.then(|| {
            let m = &h[need - 4..need];
            [m[0], m[1], m[2], m[3]]
        });
        let reserved = h[0] & 0x30 != 0;
        self.header.clear();
        // RSV1 marks a compressed message: only on its first data frame, only with deflate
        if reserved || (rsv1 && (self.deflate.is_none() || opcode == 0 || opcode >= 8)) {
            self.fail("reserved bit set without an extension", out);
            return used;
        }
        let control = opcode >= 8;
        if control && (!fin || len > 125) {
            self.fail("fragmented or oversized control frame", out);
            return used;
        }
        match opcode {
            0 if self.message.is_none() => {
                self.fail("continuation frame without a message", out);
                return used;
            }
            1 | 2 if self.message.is_some() => {
                self.fail("new message before the previous one ended", out);
                return used;
            }
            1 | 2 => {
                self.message = Some(Partial {
                    text: opcode == 1,
                    compressed: rsv1,
                    data: Vec::new(),
                    size: 0,
                    skipping: false,
                });
            }
            0 | 8..=10 => {}
            _ => {
                self.fail("unknown opcode", out);
                return used;
            }
        }
        self.frame = Some(Frame {
            fin,
            opcode,
            mask,
            left: len,
            offset: 0,
        });
        if len == 0 {
            self.end_frame(out);
        }
        used
    }

    /// Takes payload bytes of the current frame; returns how many it used.
    fn read_payload(&mut self, bytes: &[u8], out: &mut impl FnMut(Message<'_>)) -> usize {
        let Some(frame) = self.frame.as_mut() else {
            return 0;
        };
        let take = usize::try_from(frame.left)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let chunk = &bytes[..take];
        let offset = frame.offset;
        frame.left -= take as u64;
        frame.offset += take as u64;
        let mask = frame.mask;
        let control = frame.opcode >= 8;
        let unmask = |dst: &mut Vec<u8>| {
            let start = dst.len();
            dst.extend_from_slice(chunk);
            if let Some(m) = mask {
                for (i, b) in dst[start..].iter_mut().enumerate() {
                    *b ^= m[((offset + i as u64) % 4) as usize];
                }
            }
        };
        if control {
            unmask(&mut self.control);
        } else if let Some(msg) = self.message.as_mut() {
            msg.size = msg.size.saturating_add(take);
            // compressed payloads are usually smaller than what they inflate to;
            // the inflated size is checked again when the message ends
            if msg.size > self.max_message {
                msg.skipping = true;
                msg.data = Vec::new();
            }
            if !msg.skipping && msg.text {
                unmask(&mut msg.data);
            } else if !msg.skipping && msg.compressed {
                // a compressed binary message: only its inflated size is wanted
                unmask(&mut msg.data);
            }
        }
        if self.frame.as_ref().is_some_and(|f| f.left == 0) {
            self.end_frame(out);
        }
        take
    }

    fn end_frame(&mut self, out: &mut impl FnMut(Message<'_>)) {
        let Some(frame) = self.frame.take() else {
            return;
        };
        match frame.opcode {
            8 => {
                let c = std::mem::take(&mut self.control);
                let code = (c.len() >= 2).then(|| u16::from_be_bytes([c[0], c[1]]));
                out(Message::Close(code));
            }
            9 | 10 => self.control.clear(),
            _ if frame.fin => {
                if let Some(msg) = self.message.take() {
                    self.finish_message(msg, out);
                }
            }
            _ => {}
        }
    }

    fn finish_message(&mut self, msg: Partial, out: &mut impl FnMut(Message<'_>)) {
        if msg.compressed {
            // the inflater's context must see every compressed message, skipped ones too
            // (context takeover); a skipped one can't be replayed, so observation ends
            if msg.skipping {
                if self.deflate.is_some_and(|d| !d.no_context_takeover) {
                    self.fail("compressed message too large to follow the context", out);
                } else {
                    out(Message::TooLarge);
                }
                return;
            }
            match self.inflate(&msg.data) {
                Ok(Some(plain)) if msg.text => out(Message::Text(Cow::Owned(plain))),
                Ok(Some(plain)) => out(Message::Binary(plain.len())),
                Ok(None) => out(Message::TooLarge),
                Err(why) => self.fail(why, out),
            }
            return;
        }
        if msg.skipping {
            out(Message::TooLarge);
        } else if msg.text {
            out(Message::Text(Cow::Owned(msg.data)));
        } else {
            out(Message::Binary(msg.size));
        }
    }

    /// Inflates one message; `Ok(None)` when it inflates past `max_message`.
    fn inflate(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
        let Some(d) = self.inflater.as_mut() else {
            return Err("compressed message without permessage-deflate");
        };
        let mut plain = Vec::with_capacity(data.len().saturating_mul(3).min(self.max_message));
        let mut too_large = false;
        for input in [data, &DEFLATE_TAIL[..]] {
            let mut input = input;
            loop {
                if plain.len() >= self.max_message {
                    too_large = true;
                    break;
                }
                let room = (self.max_message + 1 - plain.len()).min(64 * 1024);
                plain.reserve(room);
                let (before_in, before_out) = (d.total_in(), d.total_out());
                let status = d
                    .decompress_vec(input, &mut plain, FlushDecompress::Sync)
                    .map_err(|_| "invalid deflate data")?;
                let read = (d.total_in() - before_in) as usize;
                input = &input[read..];
                let wrote = d.total_out() - before_out;
                if status == Status::StreamEnd {
                    break;
                }
                if input.is_empty() && wrote == 0 {
                    break;
                }
                if read == 0 && wrote == 0 {
                    break;
                }
            }
            if too_large {
                break;
            }
        }
        if self.deflate.is_some_and(|d| d.no_context_takeover) {
            d.reset(false);
        }
        if too_large {
            if self.deflate.is_some_and(|d| !d.no_context_takeover) {
                // the rest of this message is still in the context: it can't be followed
                return Err("compressed message too large to follow the context");
            }
            return Ok(None);
        }
        Ok(Some(plain))
    }
}

/// The payload length a whole header (`header_len` bytes or more) announces.
fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    }
}

/// How many header bytes the bytes so far call for.
fn header_len(h: &[u8]) -> usize {
    if h.len() < 2 {
        return 2;
    }
    let ext = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// Encodes one frame, as a peer would (for the tests of this reader and its users).
#[cfg(test)]
pub(crate) fn test_frame(
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut p = payload.to_vec();
    if let Some(k) = mask {
        f.extend_from_slice(&k);
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    f.extend_from_slice(&p);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn frame(fin: bool, rsv1: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        test_frame(fin, rsv1, opcode, mask, payload)
    }

    fn read_all(r: &mut Reader, bytes: &[u8], split: usize) -> Vec<Message<'static>> {
        let mut got = Vec::new();
        for piece in bytes.chunks(split.max(1)) {
            r.push(piece, &mut |m| got.push(m.into_owned()));
        }
        got
    }

    fn deflate_messages(msgs: &[&[u8]], takeover: bool) -> Vec<Vec<u8>> {
        let mut c = Compress::new(Compression::default(), false);
        msgs.iter()
            .map(|m| {
                if !takeover {
                    c.reset();
                }
                let mut out = Vec::with_capacity(m.len() + 64);
                c.compress_vec(m, &mut out, FlushCompress::Sync)
                    .expect("compress");
                assert!(out.ends_with(&DEFLATE_TAIL));
                out.truncate(out.len() - 4);
                out
            })
            .collect()
    }

    #[test]
    fn messages_at_every_split_are_the_same() {
        let mut stream = Vec::new();
        stream.extend(frame(
            true,
            false,
            1,
            None,
            br#"{"type":"session.created"}"#,
        ));
        stream.extend(frame(true, false, 9, None, b"ping"));
        // a fragmented text message with a pong between its fragments
        stream.extend(frame(false, false, 1, None, br#"{"type":"resp"#));
        stream.extend(frame(true, false, 10, None, b""));
        stream.extend(frame(true, false, 0, None, br#"onse.done"}"#));
        stream.extend(frame(true, false, 2, None, &[7u8; 300]));
        stream.extend(frame(true, false, 1, None, &vec![b'x'; 70_000]));
        stream.extend(frame(true, false, 8, None, &[0x03, 0xe9]));
        let want = vec![
            Message::Text(Cow::Owned(br#"{"type":"session.created"}"#.to_vec())),
            Message::Text(Cow::Owned(br#"{"type":"response.done"}"#.to_vec())),
            Message::Binary(300),
            Message::Text(Cow::Owned(vec![b'x'; 70_000])),
            Message::Close(Some(1001)),
        ];
        for split in [1, 2, 3, 7, 13, 64, 1000, stream.len()] {
            let mut r = Reader::new(1 << 20, None);
            assert_eq!(read_all(&mut r, &stream, split), want, "split {split}");
            assert!(!r.is_broken());
        }
    }

    /// Each message read from `bytes` pushed whole, and whether it was lent.
    fn lent(r: &mut Reader, bytes: &[u8]) -> Vec<(bool, Message<'static>)> {
        let mut got = Vec::new();
        r.push(bytes, &mut |m| {
            got.push((matches!(m, Message::Text(Cow::Borrowed(_))), m.into_owned()))
        });
        got
    }

    #[test]
    fn whole_plain_text_frames_are_lent_and_the_rest_read_as_before() {
        let text = |t: &[u8]| Message::Text(Cow::Owned(t.to_vec()));
        let long = vec![b'y'; 300]; // a 16-bit length
        let mut stream = frame(true, false, 1, None, b"one");
        stream.extend(frame(true, false, 1, None, &long));
        stream.extend(frame(true, false, 1, Some([1, 2, 3, 4]), b"masked"));
        stream.extend(frame(false, false, 1, None, b"frag"));
        stream.extend(frame(true, false, 0, None, b"ment"));
        stream.extend(frame(true, false, 1, None, &vec![b'z'; 600])); // over the limit
        stream.extend(frame(true, false, 1, None, b"two"));
        let mut r = Reader::new(500, None);
        assert_eq!(
            lent(&mut r, &stream),
            vec![
                (true, text(b"one")),
                (true, text(&long)),
                (false, text(b"masked")),
                (false, text(b"fragment")),
                (false, Message::TooLarge),
                (true, text(b"two")),
            ]
        );
        // a whole frame while a fragmented message is under way is still an error
        let mut stream = frame(false, false, 1, None, b"frag");
        stream.extend(frame(true, false, 1, None, b"whole"));
        let mut r = Reader::new(500, None);
        assert_eq!(
            lent(&mut r, &stream),
            vec![(
                false,
                Message::Broken("new message before the previous one ended")
            )]
        );
        // a frame whose header began in an earlier push is read as before, even when
        // the rest looks like a whole frame (`81 7e` then `81 05 …`: 33,029 bytes)
        let f = frame(true, false, 1, None, &[b'x'; 0x8105]);
        let mut r = Reader::new(500, None);
        assert!(lent(&mut r, &f[..2]).is_empty());
        assert_eq!(lent(&mut r, &f[2..]), vec![(false, Message::TooLarge)]);
        // empty, exactly the limit, a 16-bit length under 126, one over the limit
        let mut stream = frame(true, false, 1, None, b"");
        stream.extend(frame(true, false, 1, None, &[b'a'; 500]));
        stream.extend([0x81, 126, 0, 5]);
        stream.extend(b"short");
        stream.extend(frame(true, false, 1, None, &[b'b'; 501]));
        let mut r = Reader::new(500, None);
        assert_eq!(
            lent(&mut r, &stream),
            vec![
                (true, text(b"")),
                (true, text(&[b'a'; 500])),
                (true, text(b"short")),
                (false, Message::TooLarge),
            ]
        );
        // and split anywhere, the same messages
        for split in 1..stream.len() {
            let mut r = Reader::new(500, None);
            let got: Vec<_> = lent(&mut r, &stream[..split])
                .into_iter()
                .chain(lent(&mut r, &stream[split..]))
                .map(|(_, m)| m)
                .collect();
            assert_eq!(
                got,
                [
                    text(b""),
                    text(&[b'a'; 500]),
                    text(b"short"),
                    Message::TooLarge
                ]
            );
        }
        // a compressed one (RSV1) is inflated, not lent
        let d = Deflate::server_to_client("permessage-deflate").expect("negotiated");
        let packed = deflate_messages(&[b"packed"], true);
        let mut r = Reader::new(500, Some(d));
        let got = lent(&mut r, &frame(true, true, 1, None, &packed[0]));
        assert_eq!(got, vec![(false, text(b"packed"))]);
    }

    #[test]
    fn masked_frames_are_unmasked() {
        let key = Some([0x12, 0x34, 0x56, 0x78]);
        let mut stream = frame(false, false, 1, key, b"hello ");
        stream.extend(frame(true, false, 0, key, b"world"));
        let mut r = Reader::new(1024, None);
        assert_eq!(
            read_all(&mut r, &stream, 3),
            vec![Message::Text(Cow::Owned(b"hello world".to_vec()))]
        );
    }

    #[test]
    fn oversized_messages_are_skipped_and_reading_goes_on() {
        let mut stream = frame(true, false, 1, None, &[b'a'; 5000]);
        stream.extend(frame(true, false, 1, None, b"small"));
        let mut r = Reader::new(1000, None);
        assert_eq!(
            read_all(&mut r, &stream, 100),
            vec![
                Message::TooLarge,
                Message::Text(Cow::Owned(b"small".to_vec()))
            ]
        );
    }

    #[test]
    fn compressed_messages_inflate_with_and_without_context_takeover() {
        let plain: [&[u8]; 3] = [
            br#"{"type":"response.created","response":{"id":"resp_1"}}"#,
            br#"{"type":"response.done","response":{"id":"resp_1"}}"#,
            br#"{"type":"response.done","response":{"id":"resp_2"}}"#,
        ];
        for takeover in [true, false] {
            let compressed = deflate_messages(&plain, takeover);
            let mut stream = Vec::new();
            for c in &compressed {
                // first frame carries RSV1, the continuation doesn't
                let (a, b) = c.split_at(c.len() / 2);
                stream.extend(frame(false, true, 1, None, a));
                stream.extend(frame(true, false, 0, None, b));
            }
            let deflate = Deflate {
                no_context_takeover: !takeover,
            };
            for split in [1, 5, 4096] {
                let mut r = Reader::new(1 << 20, Some(deflate));
                let got = read_all(&mut r, &stream, split);
                let want: Vec<Message> = plain
                    .iter()
                    .map(|p| Message::Text(Cow::Owned(p.to_vec())))
                    .collect();
                assert_eq!(got, want, "takeover {takeover}, split {split}");
            }
        }
    }

    #[test]
    fn a_compression_bomb_stops_at_the_cap() {
        let big = vec![b'z'; 4 << 20];
        let compressed = deflate_messages(&[&big], false).remove(0);
        assert!(compressed.len() < 64 * 1024);
        let mut stream = frame(true, true, 1, None, &compressed);
        stream.extend(frame(true, false, 1, None, b"after"));
        let mut r = Reader::new(
            1 << 20,
            Some(Deflate {
                no_context_takeover: true,
            }),
        );
        assert_eq!(
            read_all(&mut r, &stream, 4096),
            vec![
                Message::TooLarge,
                Message::Text(Cow::Owned(b"after".to_vec()))
            ]
        );
    }

    #[test]
    fn broken_framing_ends_observation_without_panicking() {
        let cases: Vec<Vec<u8>> = vec![
            frame(true, true, 1, None, b"x"),  // RSV1 without deflate
            frame(true, false, 3, None, b"x"), // unknown opcode
            frame(false, false, 9, None, b""), // fragmented ping
            frame(true, false, 0, None, b"x"), // continuation without a message
            {
                let mut v = frame(false, false, 1, None, b"a");
                v.extend(frame(true, false, 1, None, b"b")); // new message mid-message
                v
            },
        ];
        for bytes in cases {
            let mut r = Reader::new(1024, None);
            let got = read_all(&mut r, &bytes, 1);
            assert!(matches!(got.last(), Some(Message::Broken(_))), "{got:?}");
            assert!(r.is_broken());
            // nothing more is reported, and nothing panics
            let mut more = Vec::new();
            r.push(&frame(true, false, 1, None, b"later"), &mut |m| {
                more.push(m.into_owned())
            });
            assert!(more.is_empty());
        }
        // arbitrary bytes never panic
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            let mut junk = Vec::new();
            for _ in 0..64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                junk.push(seed as u8);
            }
            let mut r = Reader::new(
                256,
                Some(Deflate {
                    no_context_takeover: false,
                }),
            );
            r.push(&junk, &mut |_| {});
        }
    }

    #[test]
    fn the_negotiated_extension_is_read_per_direction() {
        let h = "permessage-deflate; server_no_context_takeover; client_max_window_bits=15";
        assert_eq!(
            Deflate::server_to_client(h),
            Some(Deflate {
                no_context_takeover: true
            })
        );
        assert_eq!(
            Deflate::client_to_server(h),
            Some(Deflate {
                no_context_takeover: false
            })
        );
        assert_eq!(Deflate::server_to_client("x-other"), None);
    }
}
