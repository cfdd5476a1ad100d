//! A quick proof that a message is JSON, for messages read only for their `type`.
//!
//! A Realtime session is mostly deltas, each read only to learn it is a delta;
//! but a delta that is not JSON must still count as a parse error. serde_json's
//! `ignore_value` spent ~2.7k instructions proving a 200-byte delta well
//! formed, a fifth of what relaying the frame cost in all (issue 14). This
//! check walks the grammar once with a byte-class table, strings eight bytes
//! at a time.
//!
//! It is *sound*, not complete: `true` means serde_json would accept the text
//! too (the property test checks this against it), while `false` only means
//! "not proven here" (deep nesting, a surrogate escape, anything invalid), and
//! the caller then asks serde_json, whose answer stands.

/// Nesting deeper than this is left to serde_json (its own limit is 128): one
/// bit per level says whether it is an object.
const MAX_DEPTH: u32 = 64;

/// Whether `text` is one JSON value (with surrounding whitespace), proven
/// without serde_json; see the module docs for what `false` means.
pub fn proven(text: &[u8]) -> bool {
    // strings may hold any UTF-8; checked once here, not per string
    if !text.is_ascii() && std::str::from_utf8(text).is_err() {
        return false;
    }
    walk(text).is_some()
}

/// One pass over the grammar without recursion: `open` holds a bit per
/// enclosing container (1 for an object), innermost lowest.
fn walk(s: &[u8]) -> Option<()> {
    let mut i = ws(s, 0);
    let mut open: u64 = 0;
    let mut depth = 0;
    loop {
        // a value starts at `i`
        match *s.get(i)? {
            c @ (b'{' | b'[') => {
                if depth == MAX_DEPTH {
                    return None;
                }
                i = ws(s, i + 1);
                match (s.get(i), c) {
                    // empty: a whole value already
                    (Some(b'}'), b'{') | (Some(b']'), b'[') => i += 1,
                    _ => {
                        depth += 1;
                        open = (open << 1) | u64::from(c == b'{');
                        if c == b'{' {
                            i = member_value(s, i)?;
                        }
                        continue;
                    }
                }
            }
            b'"' => i = string(s, i + 1)?,
            b't' => i = word(s, i, b"true")?,
            b'f' => i = word(s, i, b"false")?,
            b'n' => i = word(s, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number(s, i)?,
            _ => return None,
        }
        // a value ended before `i`: what may follow it
        loop {
            i = ws(s, i);
            if depth == 0 {
                return (i == s.len()).then_some(());
            }
            let object = open & 1 == 1;
            match (*s.get(i)?, object) {
                (b',', true) => {
                    i = member_value(s, ws(s, i + 1))?;
                    break;
                }
                (b',', false) => {
                    i = ws(s, i + 1);
                    break;
                }
                (b'}', true) | (b']', false) => {
                    i += 1;
                    open >>= 1;
                    depth -= 1;
                }
                _ => return None,
            }
        }
    }
}

/// After JSON's insignificant whitespace from `i`.
#[inline(always)]
fn ws(s: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = s.get(i) {
        i += 1;
    }
    i
}

/// A member's `"key" :` from `i`: where its value starts.
fn member_value(s: &[u8], i: usize) -> Option<usize> {
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let i = ws(s, string(s, i + 1)?);
    (s.get(i) == Some(&b':')).then(|| ws(s, i + 1))
}

fn word(s: &[u8], i: usize, w: &[u8]) -> Option<usize> {
    s.get(i..)?.starts_with(w).then_some(i + w.len())
}

fn digits(s: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = s.get(i) {
        i += 1;
    }
    i
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` from `i`: where it ends
/// (a digit after a leading `0` is then no valid continuation).
fn number(s: &[u8], mut i: usize) -> Option<usize> {
    if s.get(i) == Some(&b'-') {
        i += 1;
    }
    match *s.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(s, i + 1),
        _ => return None,
    }
    if s.get(i) == Some(&b'.') {
        let j = digits(s, i + 1);
        if j == i + 1 {
            return None;
        }
        i = j;
    }
    if let Some(b'e' | b'E') = s.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = s.get(i) {
            i += 1;
        }
        let j = digits(s, i);
        if j == i {
            return None;
        }
        i = j;
    }
    Some(i)
}

/// A string's rest from `i` (after its opening quote): where it ends.
#[inline(always)]
fn string(s: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += plain_run(s.get(i..)?);
        match *s.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *s.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let hex = s.get(i + 2..i + 6)?;
                    let code = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| u16::from_str_radix(h, 16).ok())?;
                    // a surrogate's pairing rules are serde_json's to judge
                    if hex[0] == b'+' || (0xD800..=0xDFFF).contains(&code) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            // a control character
            _ => return None,
        }
    }
}

/// How many bytes at the start of `s` need nothing special inside a string:
/// no `"`, no `\`, no control character. Eight bytes at a time.
#[inline(always)]
fn plain_run(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    /// Marks (high bit) the bytes of `x` below `n` (`n` ≤ 128; bytes ≥ 128 never count).
    fn below(x: u64, n: u8) -> u64 {
        x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH
    }
    let mut i = 0;
    for chunk in s.chunks_exact(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        let x = u64::from_le_bytes(b);
        let special = below(x, 0x20)
            | below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1);
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + s[i..]
        .iter()
        .take_while(|&&b| b >= 0x20 && b != b'"' && b != b'\\')
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde_accepts(text: &[u8]) -> bool {
        serde_json::from_slice::<&serde_json::value::RawValue>(text).is_ok()
    }

    #[test]
    fn usual_events_are_proven_and_broken_ones_are_not() {
        let good = [
            r#"{"type":"response.output_text.delta","event_id":"evt_1","t_ns":17,"response_id":"r","output_index":0,"content_index":0,"delta":"Hi"}"#,
            r#"{"type":"response.output_audio.delta","delta":"AAAAAP//AQD+/w=="}"#,
            r#" {"a":[1,-2.5e+3,0.0,true,false,null,{},[]],"b":"caf\u00e9 \"q\" \\ \/ \n","c":"héllo ✓"} "#,
            r#"{"deep":[[[[[[[[[[{"x":[0]}]]]]]]]]]]}"#,
            "0",
            r#""""#,
        ];
        for t in good {
            assert!(proven(t.as_bytes()), "{t}");
            assert!(serde_accepts(t.as_bytes()), "{t}");
        }
        let bad = [
            "",
            "{",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"[1 2]"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":.5}"#,
            r#"{"a":tru}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u+123"}"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}{"b":2}"#,
            "{'a':1}",
        ];
        for t in bad {
            assert!(!proven(t.as_bytes()), "{t}");
        }
        assert!(!proven(b"{\"a\":\"\xff\"}"));
        // left to serde_json, which decides
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(!proven(deep.as_bytes()));
        assert!(!proven(br#"{"a":"\ud83d\ude00"}"#));
    }

    #[test]
    fn plain_runs_stop_at_the_first_special_byte_wherever_it_falls() {
        for len in 0..40 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0x00, 0x1f] {
                    let mut s = vec![b'a'; len];
                    s.extend_from_slice("é~\x7f".as_bytes());
                    if at < len {
                        s[at] = special;
                    }
                    let want = s
                        .iter()
                        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
                        .unwrap_or(s.len());
                    assert_eq!(plain_run(&s), want, "len {len} at {at} byte {special}");
                }
            }
        }
    }

    /// JSON-ish text: valid values, with some bytes changed, cut or repeated.
    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:e}")),
            "[ -~é\\\\\"\\n\t]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
            Just(r#""\ud800""#.to_owned()),
        ];
        let value = leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-z]{0,4}", inner), 0..4).prop_map(|v| {
                    let members: Vec<String> =
                        v.into_iter().map(|(k, x)| format!("{k:?} : {x}")).collect();
                    format!("{{ {} }}", members.join(" ,"))
                }),
            ]
        });
        (value, any::<usize>(), any::<u8>(), 0..4u8).prop_map(|(v, at, byte, how)| {
            let mut b = v.into_bytes();
            if !b.is_empty() {
                let at = at % b.len();
                match how {
                    0 => {}
                    1 => b[at] = byte,
                    2 => b.truncate(at),
                    _ => b.insert(at, byte),
                }
            }
            b
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Soundness: whatever is proven here, serde_json accepts too.
        #[test]
        fn whatever_is_proven_serde_json_accepts(text in jsonish()) {
            if proven(&text) {
                prop_assert!(serde_accepts(&text), "{}", String::from_utf8_lossy(&text));
            }
        }

        /// And it is useful: valid text without surrogate escapes is proven.
        #[test]
        fn what_serde_json_accepts_is_proven_unless_it_uses_surrogates(text in jsonish()) {
            let surrogate = String::from_utf8_lossy(&text).to_ascii_lowercase().contains("\\ud");
            if serde_accepts(&text) && !surrogate {
                prop_assert!(proven(&text), "{}", String::from_utf8_lossy(&text));
            }
        }
    }
}
