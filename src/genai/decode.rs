//! Undoes `content-encoding` for observation (and, when tokentap must edit a
//! compressed stream, for the client).
//!
//! The real API compresses whenever the client accepts it, so without this
//! the usage of every non-stream call made by the official Python SDK would
//! be invisible. tokentap inflates a copy, push by push. The upstream may be
//! hostile: a few KiB of gzip or brotli can claim gigabytes, so output is
//! handed out in pieces of bounded size as it is produced, and the consumer
//! can stop the inflation at any piece (its cap): memory stays bounded and
//! no work is spent past the cap.

use std::io::Write;
use std::ops::ControlFlow;

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use flate2::write::{GzDecoder, ZlibDecoder};

/// Compressed bytes handed to flate2 at once. Deflate expands at most about
/// 1032:1, so one step yields at most about 1 MiB.
const DEFLATE_STEP: usize = 1 << 10;
/// Size of each piece of brotli output.
const BROTLI_PIECE: usize = 64 << 10;

/// Content codings tokentap can observe through.
pub enum Decoder {
    Identity,
    Gzip(Box<GzDecoder<Vec<u8>>>),
    Deflate(Box<ZlibDecoder<Vec<u8>>>),
    Brotli(Box<Brotli>),
}

/// A brotli stream in progress (standard window: at most 16 MiB of state).
pub struct Brotli {
    state: BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>,
    piece: Vec<u8>,
    total_out: usize,
    finished: bool,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decoder::Identity => "Identity",
            Decoder::Gzip(_) => "Gzip",
            Decoder::Deflate(_) => "Deflate",
            Decoder::Brotli(_) => "Brotli",
        })
    }
}

/// The body could not be decoded (corrupt data or an unknown coding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError;

impl Decoder {
    /// `None` for a coding tokentap does not know (the body is then not observed).
    pub fn for_encoding(content_encoding: Option<&str>) -> Option<Decoder> {
        let enc = content_encoding.map(str::trim).unwrap_or("");
        if enc.is_empty() || enc.eq_ignore_ascii_case("identity") {
            Some(Decoder::Identity)
        } else if enc.eq_ignore_ascii_case("gzip") || enc.eq_ignore_ascii_case("x-gzip") {
            Some(Decoder::Gzip(Box::new(GzDecoder::new(Vec::new()))))
        } else if enc.eq_ignore_ascii_case("deflate") {
            Some(Decoder::Deflate(Box::new(ZlibDecoder::new(Vec::new()))))
        } else if enc.eq_ignore_ascii_case("br") {
            Some(Decoder::Brotli(Box::new(Brotli {
                // strict: no "large window" extension (a window of up to 1 GiB)
                state: BrotliState::new_strict(
                    StandardAlloc::default(),
                    StandardAlloc::default(),
                    StandardAlloc::default(),
                ),
                piece: Vec::new(),
                total_out: 0,
                finished: false,
            })))
        } else {
            None
        }
    }

    pub fn is_identity(&self) -> bool {
        matches!(self, Decoder::Identity)
    }

    /// Decodes `input`, handing the decoded bytes to `out` piece by piece
    /// (each at most about 1 MiB; identity passes `input` itself). `out`
    /// answers `Break` to stop: the rest of `input` is then not decoded, and
    /// `Break` is returned.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut out: impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, DecodeError> {
        match self {
            Decoder::Identity => Ok(out(input)),
            Decoder::Gzip(d) => inflate(d.as_mut(), input, |d| d.get_mut(), out),
            Decoder::Deflate(d) => inflate(d.as_mut(), input, |d| d.get_mut(), out),
            Decoder::Brotli(b) => b.decode(input, out),
        }
    }
}

/// Hands `buf` to `out` (when not empty) and empties it.
fn emit(buf: &mut Vec<u8>, out: &mut impl FnMut(&[u8]) -> ControlFlow<()>) -> ControlFlow<()> {
    if buf.is_empty() {
        return ControlFlow::Continue(());
    }
    let flow = out(buf);
    buf.clear();
    flow
}

fn inflate<W: Write>(
    w: &mut W,
    input: &[u8],
    buf: impl Fn(&mut W) -> &mut Vec<u8>,
    mut out: impl FnMut(&[u8]) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, DecodeError> {
    for step in input.chunks(DEFLATE_STEP) {
        w.write_all(step).map_err(|_| DecodeError)?;
        if emit(buf(w), &mut out).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    // what the last step left inside the decoder (little: its input is consumed)
    w.flush().map_err(|_| DecodeError)?;
    Ok(emit(buf(w), &mut out))
}

impl Brotli {
    fn decode(
        &mut self,
        input: &[u8],
        mut out: impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, DecodeError> {
        if self.finished {
            // bytes after the end of the stream are not brotli
            return if input.is_empty() {
                Ok(ControlFlow::Continue(()))
            } else {
                Err(DecodeError)
            };
        }
        if self.piece.is_empty() {
            self.piece = vec![0; BROTLI_PIECE];
        }
        let mut available_in = input.len();
        let mut input_offset = 0;
        loop {
            let mut available_out = self.piece.len();
            let mut output_offset = 0;
            let result = BrotliDecompressStream(
                &mut available_in,
                &mut input_offset,
                input,
                &mut available_out,
                &mut output_offset,
                &mut self.piece,
                &mut self.total_out,
                &mut self.state,
            );
            if output_offset > 0 && out(&self.piece[..output_offset]).is_break() {
                return Ok(ControlFlow::Break(()));
            }
            match result {
                BrotliResult::NeedsMoreOutput => {}
                BrotliResult::NeedsMoreInput => return Ok(ControlFlow::Continue(())),
                BrotliResult::ResultSuccess => {
                    self.finished = true;
                    self.piece = Vec::new();
                    return if available_in == 0 {
                        Ok(ControlFlow::Continue(()))
                    } else {
                        Err(DecodeError)
                    };
                }
                BrotliResult::ResultFailure => return Err(DecodeError),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(dec: &mut Decoder, compressed: &[u8], step: usize) -> Vec<u8> {
        let mut got = Vec::new();
        for piece in compressed.chunks(step) {
            let flow = dec
                .decode(piece, |b| {
                    got.extend_from_slice(b);
                    ControlFlow::Continue(())
                })
                .expect("decodes");
            assert!(flow.is_continue());
        }
        got
    }

    const TEXT: &[u8] = br#"{"id":"chatcmpl-1","usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15},"note":"caf\u00e9"}"#;

    #[test]
    fn gzip_and_deflate_in_small_pieces() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(TEXT).expect("write");
        let gz = gz.finish().expect("finish");
        for step in [1, 3, 64, 10_000] {
            let mut d = Decoder::for_encoding(Some("gzip")).expect("known");
            assert_eq!(roundtrip(&mut d, &gz, step), TEXT);
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(TEXT).expect("write");
        let z = z.finish().expect("finish");
        let mut d = Decoder::for_encoding(Some("deflate")).expect("known");
        assert_eq!(roundtrip(&mut d, &z, 5), TEXT);
    }

    #[test]
    fn brotli_known_stream() {
        // "hello" compressed with brotli quality 11 (from the reference encoder)
        let br: [u8; 9] = [0x0b, 0x02, 0x80, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x03];
        let mut d = Decoder::for_encoding(Some("br")).expect("known");
        assert_eq!(roundtrip(&mut d, &br, 2), b"hello");
    }

    #[test]
    fn unknown_and_corrupt() {
        assert!(Decoder::for_encoding(Some("zstd")).is_none());
        assert!(Decoder::for_encoding(None).is_some_and(|d| d.is_identity()));
        let mut d = Decoder::for_encoding(Some("gzip")).expect("known");
        assert_eq!(
            d.decode(b"definitely not gzip data at all", |_| {
                ControlFlow::Continue(())
            }),
            Err(DecodeError)
        );
        let mut b = Decoder::for_encoding(Some("br")).expect("known");
        let hello: [u8; 9] = [0x0b, 0x02, 0x80, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x03];
        let mut trailing = hello.to_vec();
        trailing.extend_from_slice(b"junk");
        assert_eq!(
            b.decode(&trailing, |_| ControlFlow::Continue(())),
            Err(DecodeError)
        );
    }

    /// Deflate output of `n` zero bytes, compressed as far as deflate goes.
    fn zeros_gzip(n: usize) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0; n]).expect("write");
        gz.finish().expect("finish")
    }

    #[test]
    fn output_comes_in_bounded_pieces_and_stops_on_request() {
        let gz = zeros_gzip(32 << 20);
        let mut d = Decoder::for_encoding(Some("gzip")).expect("known");
        let (mut pieces, mut total, mut largest) = (0, 0, 0);
        let flow = d
            .decode(&gz, |b| {
                pieces += 1;
                total += b.len();
                largest = largest.max(b.len());
                if total >= 4 << 20 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .expect("decodes");
        assert!(flow.is_break());
        assert!(largest <= 1100 << 10, "a piece of {largest} bytes");
        assert!(total < (4 << 20) + largest, "{total} bytes inflated");
        assert!(pieces > 1);
    }
}
