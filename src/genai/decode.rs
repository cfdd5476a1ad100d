//! Undoes `content-encoding` for observation only.
//!
//! The real API compresses whenever the client accepts it, so without this
//! the usage of every non-stream call made by the official Python SDK would
//! be invisible. The client always receives the original compressed bytes;
//! tokentap inflates a copy, push by push, with a cap against bombs.

use std::io::Write;

use flate2::write::{GzDecoder, ZlibDecoder};

/// Content codings tokentap can observe through.
pub enum Decoder {
    Identity,
    Gzip(Box<GzDecoder<Vec<u8>>>),
    Deflate(Box<ZlibDecoder<Vec<u8>>>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
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
            Some(Decoder::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(Vec::new(), 4096),
            )))
        } else {
            None
        }
    }

    pub fn is_identity(&self) -> bool {
        matches!(self, Decoder::Identity)
    }

    /// Decodes `input`, handing the decoded bytes to `out` (identity passes `input` itself).
    pub fn decode(&mut self, input: &[u8], out: impl FnOnce(&[u8])) -> Result<(), DecodeError> {
        fn run<W: Write>(
            w: &mut W,
            input: &[u8],
            buf: impl FnOnce(&mut W) -> &mut Vec<u8>,
            out: impl FnOnce(&[u8]),
        ) -> Result<(), DecodeError> {
            w.write_all(input).map_err(|_| DecodeError)?;
            w.flush().map_err(|_| DecodeError)?;
            let b = buf(w);
            out(b);
            b.clear();
            Ok(())
        }
        match self {
            Decoder::Identity => {
                out(input);
                Ok(())
            }
            Decoder::Gzip(d) => run(d.as_mut(), input, |d| d.get_mut(), out),
            Decoder::Deflate(d) => run(d.as_mut(), input, |d| d.get_mut(), out),
            Decoder::Brotli(d) => run(d.as_mut(), input, |d| d.get_mut(), out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(dec: &mut Decoder, compressed: &[u8], step: usize) -> Vec<u8> {
        let mut got = Vec::new();
        for piece in compressed.chunks(step) {
            dec.decode(piece, |b| got.extend_from_slice(b))
                .expect("decodes");
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
            d.decode(b"definitely not gzip data at all", |_| {}),
            Err(DecodeError)
        );
    }
}
