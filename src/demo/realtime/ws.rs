//! The server side of a WebSocket (RFC 6455) with `permessage-deflate` (RFC 7692),
//! just enough for the demo's Realtime endpoint.
//!
//! The demo must look like the real API to real clients: the Python
//! `websockets` package offers compression by default, so a server that
//! ignored the offer would never exercise the compressed path the proxy's
//! observer has to read. `src/websocket.rs` reads messages for observation
//! and passes over pings; a server must answer them, so this reads frames
//! itself (always bounded) and writes unfragmented, unmasked frames.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The GUID RFC 6455 §1.3 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The trailer a compressed message's sender removes (RFC 7692 §7.2.1).
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

pub(super) const OP_CONT: u8 = 0;
pub(super) const OP_TEXT: u8 = 1;
pub(super) const OP_BINARY: u8 = 2;
pub(super) const OP_CLOSE: u8 = 8;
pub(super) const OP_PING: u8 = 9;
pub(super) const OP_PONG: u8 = 10;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub(super) fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(GUID.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    super::super::embeddings::base64(digest.as_ref())
}

/// True when the header's comma-separated tokens include `token` (case-insensitively).
pub(super) fn has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `permessage-deflate` configuration accepted from the client's offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Deflate {
    /// The server resets its compressor after each message.
    pub(super) server_no_context_takeover: bool,
    /// The client resets its compressor after each message.
    pub(super) client_no_context_takeover: bool,
    /// The window the client allows the server (8..=15).
    pub(super) server_max_window_bits: u8,
}

impl Deflate {
    /// The first acceptable `permessage-deflate` offer in the request's
    /// `Sec-WebSocket-Extensions` headers; `None` when there is none.
    pub(super) fn accept(headers: &HeaderMap) -> Option<Deflate> {
        headers
            .get_all("sec-websocket-extensions")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(Self::offer)
    }

    fn offer(offer: &str) -> Option<Deflate> {
        let mut params = offer.split(';').map(str::trim);
        if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
            return None;
        }
        let mut deflate = Deflate {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
        };
        for param in params {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (param, None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("server_no_context_takeover", None) => deflate.server_no_context_takeover = true,
                ("client_no_context_takeover", None) => deflate.client_no_context_takeover = true,
                // the client's own window: whatever it uses, a 15-bit inflater reads it
                ("client_max_window_bits", _) => {}
                ("server_max_window_bits", Some(bits)) => match bits.parse::<u8>() {
                    Ok(bits @ 8..=15) => deflate.server_max_window_bits = bits,
                    _ => return None,
                },
                _ => return None,
            }
        }
        Some(deflate)
    }

    /// The `Sec-WebSocket-Extensions` answer for this configuration.
    pub(super) fn response(&self) -> String {
        let mut out = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < 15 {
            out.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        out
    }
}

/// What went wrong on the connection, as the close code to send.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// The peer broke the protocol (1002).
    Protocol(&'static str),
    /// A message over the size limit (1009).
    TooBig,
    /// The socket failed or closed without a close frame.
    Gone,
}

impl Failure {
    pub(super) fn code(&self) -> Option<u16> {
        match self {
            Failure::Protocol(_) => Some(1002),
            Failure::TooBig => Some(1009),
            Failure::Gone => None,
        }
    }
}

/// What the client sent, message by message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Inbound {
    Text(Vec<u8>),
    Binary,
    Ping(Vec<u8>),
    Close(Option<u16>),
}

/// Reads the client's frames: unmasks, joins fragments, inflates; never keeps
/// more than `max_message` bytes of one message.
pub(super) struct FrameReader<R> {
    io: R,
    max_message: usize,
    inflater: Option<(Decompress, bool)>,
    /// A fragmented message so far (opcode, compressed, payload); control
    /// frames may arrive between its fragments.
    partial: Option<(u8, bool, Vec<u8>)>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(super) fn new(io: R, max_message: usize, deflate: Option<Deflate>) -> Self {
        Self {
            io,
            max_message,
            inflater: deflate.map(|d| (Decompress::new(false), d.client_no_context_takeover)),
            partial: None,
        }
    }

    /// The next message (control frames included).
    pub(super) async fn next(&mut self) -> Result<Inbound, Failure> {
        loop {
            let (fin, rsv1, opcode, payload) = self.frame().await?;
            match opcode {
                OP_PING => return Ok(Inbound::Ping(payload)),
                OP_PONG => continue,
                OP_CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Inbound::Close(code));
                }
                OP_TEXT | OP_BINARY if self.partial.is_some() => {
                    return Err(Failure::Protocol("new message inside a fragmented one"));
                }
                OP_TEXT | OP_BINARY => {
                    if rsv1 && self.inflater.is_none() {
                        return Err(Failure::Protocol("RSV1 without permessage-deflate"));
                    }
                    self.partial = Some((opcode, rsv1, payload));
                }
                OP_CONT => match self.partial.as_mut() {
                    Some((_, _, data)) if !rsv1 => {
                        if data.len() + payload.len() > self.max_message {
                            return Err(Failure::TooBig);
                        }
                        data.extend_from_slice(&payload);
                    }
                    _ => return Err(Failure::Protocol("unexpected continuation frame")),
                },
                _ => return Err(Failure::Protocol("unknown opcode")),
            }
            if fin {
                if let Some((opcode, compressed, data)) = self.partial.take() {
                    let data = if compressed {
                        self.inflate(data)?
                    } else {
                        data
                    };
                    return Ok(if opcode == OP_TEXT {
                        Inbound::Text(data)
                    } else {
                        Inbound::Binary
                    });
                }
            }
        }
    }

    /// One frame: fin, rsv1, opcode and the unmasked payload.
    async fn frame(&mut self) -> Result<(bool, bool, u8, Vec<u8>), Failure> {
        let mut head = [0u8; 2];
        self.read(&mut head).await?;
        let (fin, rsv1, opcode) = (head[0] & 0x80 != 0, head[0] & 0x40 != 0, head[0] & 0x0f);
        if head[0] & 0x30 != 0 {
            return Err(Failure::Protocol("reserved bits set"));
        }
        if head[1] & 0x80 == 0 {
            return Err(Failure::Protocol("client frames must be masked"));
        }
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.read(&mut b).await?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                self.read(&mut b).await?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        if opcode >= 8 && (!fin || len > 125 || rsv1) {
            return Err(Failure::Protocol("bad control frame"));
        }
        let len = usize::try_from(len).map_err(|_| Failure::TooBig)?;
        if len > self.max_message {
            return Err(Failure::TooBig);
        }
        let mut mask = [0u8; 4];
        self.read(&mut mask).await?;
        let mut payload = vec![0u8; len];
        self.read(&mut payload).await?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        Ok((fin, rsv1, opcode, payload))
    }

    async fn read(&mut self, buf: &mut [u8]) -> Result<(), Failure> {
        self.io
            .read_exact(buf)
            .await
            .map(drop)
            .map_err(|_| Failure::Gone)
    }

    fn inflate(&mut self, mut data: Vec<u8>) -> Result<Vec<u8>, Failure> {
        let Some((inflater, reset)) = self.inflater.as_mut() else {
            return Err(Failure::Protocol("RSV1 without permessage-deflate"));
        };
        data.extend_from_slice(&DEFLATE_TAIL);
        let limit = self.max_message.saturating_add(1);
        let mut out: Vec<u8> = Vec::new();
        let start_in = inflater.total_in();
        loop {
            if out.len() == out.capacity() {
                if out.len() >= limit {
                    return Err(Failure::TooBig);
                }
                out.reserve_exact(out.len().max(1024).min(limit - out.len()));
            }
            let used = usize::try_from(inflater.total_in() - start_in).unwrap_or(usize::MAX);
            let input = data.get(used..).unwrap_or_default();
            let before = (inflater.total_in(), out.len());
            let status = inflater
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|_| Failure::Protocol("invalid deflate data"))?;
            let consumed = inflater.total_in() - start_in == data.len() as u64;
            let spare = out.len() < out.capacity();
            if status == Status::StreamEnd || (consumed && spare) {
                break;
            }
            if (inflater.total_in(), out.len()) == before && spare {
                return Err(Failure::Protocol("invalid deflate data"));
            }
        }
        if out.len() > self.max_message {
            return Err(Failure::TooBig);
        }
        if *reset {
            inflater.reset(false);
        }
        Ok(out)
    }
}

/// Writes the server's frames, compressing data messages when negotiated.
pub(super) struct FrameWriter<W> {
    io: W,
    deflate: Option<(Compress, Deflate)>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(super) fn new(io: W, deflate: Option<Deflate>) -> Self {
        Self {
            io,
            deflate: deflate.map(|d| (Compress::new(Compression::fast(), false), d)),
        }
    }

    /// Sends one text message (compressed when the extension is on).
    pub(super) async fn text(&mut self, text: &[u8]) -> std::io::Result<()> {
        match self.compress(text) {
            Some(data) => self.frame(OP_TEXT, true, &data).await,
            None => self.frame(OP_TEXT, false, text).await,
        }
    }

    pub(super) async fn pong(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.frame(OP_PONG, false, payload).await
    }

    pub(super) async fn close(&mut self, code: Option<u16>) -> std::io::Result<()> {
        let payload = code.map(u16::to_be_bytes).unwrap_or_default();
        let len = if code.is_some() { 2 } else { 0 };
        self.frame(OP_CLOSE, false, &payload[..len]).await?;
        self.io.shutdown().await
    }

    /// The deflated message without its tail, or `None` to send it plain: a
    /// window smaller than deflate's 32 KiB is honoured by compressing each
    /// message afresh and only when it fits the window.
    fn compress(&mut self, text: &[u8]) -> Option<Vec<u8>> {
        let (compress, deflate) = self.deflate.as_mut()?;
        let small_window = deflate.server_max_window_bits < 15;
        if small_window && text.len() > 1usize << deflate.server_max_window_bits {
            return None;
        }
        let mut out = Vec::with_capacity(text.len() / 2 + 64);
        let start = compress.total_in();
        loop {
            let used = usize::try_from(compress.total_in() - start).unwrap_or(usize::MAX);
            let input = text.get(used..).unwrap_or_default();
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            compress
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .ok()?;
            // done when all input is in and the flush left spare room
            if compress.total_in() - start == text.len() as u64 && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&DEFLATE_TAIL) {
            out.truncate(out.len() - DEFLATE_TAIL.len());
        }
        if deflate.server_no_context_takeover || small_window {
            compress.reset();
        }
        Some(out)
    }

    async fn frame(&mut self, opcode: u8, rsv1: bool, payload: &[u8]) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(10 + payload.len());
        head.push(0x80 | if rsv1 { 0x40 } else { 0 } | opcode);
        match payload.len() {
            n @ 0..=125 => head.push(n as u8),
            n @ 126..=0xffff => {
                head.push(126);
                head.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                head.push(127);
                head.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        head.extend_from_slice(payload);
        self.io.write_all(&head).await?;
        self.io.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn ext(value: &str) -> Option<Deflate> {
        let mut headers = HeaderMap::new();
        headers.insert("sec-websocket-extensions", value.parse().unwrap());
        Deflate::accept(&headers)
    }

    #[test]
    fn deflate_offers_are_accepted_or_declined() {
        let d = ext("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(d.response(), "permessage-deflate");
        let d = ext("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
            .unwrap();
        assert_eq!(
            d.response(),
            "permessage-deflate; server_max_window_bits=12"
        );
        let d = ext("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
            .unwrap();
        assert!(d.server_no_context_takeover && d.client_no_context_takeover);
        // an unknown parameter declines that offer, the next one is taken
        let d = ext("permessage-deflate; foo, permessage-deflate; server_no_context_takeover");
        assert!(d.unwrap().server_no_context_takeover);
        assert_eq!(ext("permessage-deflate; server_max_window_bits=7"), None);
        assert_eq!(ext("x-webkit-deflate-frame"), None);
    }

    /// A client-side inflater for the server's messages.
    fn inflate(inflater: &mut Decompress, data: &[u8]) -> Vec<u8> {
        let mut input = data.to_vec();
        input.extend_from_slice(&DEFLATE_TAIL);
        let mut out = Vec::with_capacity(1 << 20);
        inflater
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    #[tokio::test]
    async fn compressed_messages_round_trip_with_and_without_takeover() {
        for (takeover, bits) in [(true, 15), (false, 15), (true, 10)] {
            let deflate = Deflate {
                server_no_context_takeover: !takeover,
                client_no_context_takeover: false,
                server_max_window_bits: bits,
            };
            let mut writer = FrameWriter::new(Vec::new(), Some(deflate));
            let mut inflater = Decompress::new(false);
            let msg = br#"{"type":"response.text.delta","delta":"hello hello hello"}"#;
            for _ in 0..3 {
                let data = writer.compress(msg).unwrap();
                assert_ne!(&data[..], &msg[..]);
                assert_eq!(inflate(&mut inflater, &data), msg);
            }
            // the frame carries RSV1
            writer.text(msg).await.unwrap();
            assert_eq!(writer.io[0], 0xc1);
        }
        // too long for a 1 KiB window: sent plain
        let deflate = Deflate {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 10,
        };
        let mut writer = FrameWriter::new(Vec::new(), Some(deflate));
        assert_eq!(writer.compress(&[b'a'; 2000]), None);
    }

    /// A masked client frame.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[tokio::test]
    async fn reader_joins_fragments_inflates_and_bounds() {
        let mut bytes = client_frame(0x01, b"hel");
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x80, b"lo"));
        // a compressed message
        let mut compress = Compress::new(Compression::default(), false);
        let mut deflated = Vec::with_capacity(256);
        compress
            .compress_vec(b"{\"a\":1}", &mut deflated, FlushCompress::Sync)
            .unwrap();
        deflated.truncate(deflated.len() - 4);
        bytes.extend(client_frame(0xc1, &deflated));
        bytes.extend(client_frame(0x88, &1000u16.to_be_bytes()));
        let deflate = ext("permessage-deflate");
        let mut reader = FrameReader::new(&bytes[..], 1024, deflate);
        assert_eq!(reader.next().await, Ok(Inbound::Ping(b"p".to_vec())));
        assert_eq!(reader.next().await, Ok(Inbound::Text(b"hello".to_vec())));
        assert_eq!(
            reader.next().await,
            Ok(Inbound::Text(b"{\"a\":1}".to_vec()))
        );
        assert_eq!(reader.next().await, Ok(Inbound::Close(Some(1000))));
        assert_eq!(reader.next().await, Err(Failure::Gone));

        let big = client_frame(0x81, &[b'x'; 300]);
        let mut reader = FrameReader::new(&big[..], 100, None);
        assert_eq!(reader.next().await, Err(Failure::TooBig));
        let unmasked = [0x81u8, 0x01, b'x'];
        let mut reader = FrameReader::new(&unmasked[..], 100, None);
        assert!(matches!(reader.next().await, Err(Failure::Protocol(_))));
        // a deflate bomb stops at the bound
        let mut compress = Compress::new(Compression::default(), false);
        let mut deflated = Vec::with_capacity(4096);
        compress
            .compress_vec(&[b' '; 100_000], &mut deflated, FlushCompress::Sync)
            .unwrap();
        deflated.truncate(deflated.len() - 4);
        let bomb = client_frame(0xc1, &deflated);
        let mut reader = FrameReader::new(&bomb[..], 1024, deflate);
        assert_eq!(reader.next().await, Err(Failure::TooBig));
    }
}
