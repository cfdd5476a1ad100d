//! Bytes as lower-case hex, the one spelling every id here is written in: trace and span
//! ids (W3C Trace Context, the exemplars' labels), key fingerprints, lease tokens.
//!
//! One small writer rather than the formatter: `format!("{:02x}")` per byte, or an id's
//! `Display`, cost ~1k instructions a call on the request path (docs/benchmarks.md, load
//! round eight). It imports nothing, so any module may use it.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` to `out`, two lower-case hex digits each.
pub(crate) fn push_lower(out: &mut String, bytes: &[u8]) {
    out.reserve(2 * bytes.len());
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Writes `bytes` as hex over the start of `out`, two digits each (as many as fit).
pub(crate) fn write_lower(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// `bytes` in lower-case hex.
pub(crate) fn lower(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    push_lower(&mut out, bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_is_two_lower_case_digits() {
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(lower(&all), expected);
        assert_eq!(lower(&[]), "");
        let mut out = "00-".to_owned();
        push_lower(&mut out, &[0xab, 0x01]);
        assert_eq!(out, "00-ab01");
        let mut fixed = *b"x-....-y";
        write_lower(&mut fixed[2..6], &[0xab, 0x01, 0xff]);
        assert_eq!(&fixed, b"x-ab01-y", "as many as fit");
    }
}
