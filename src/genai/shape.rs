//! A message kept as fixed bytes around string slots, for streams that repeat one.
//!
//! Streamed chunks and Realtime deltas repeat the same bytes message after message
//! but for a few strings (the text, ids, a random padding). Reading them whole was
//! most of what observing one cost (issues 14 and 16). So a message that was read
//! whole can be kept as fixed bytes around the strings that may change, and a later
//! message made of exactly those bytes around *plain* strings (no quote, backslash
//! or control byte) is that message with other strings: JSON's grammar cannot read
//! the same bytes around a string literal differently because the literal's plain
//! content changed. A slot may also be an integer (digits, no leading zero), for
//! values that are counters or timestamps. What each slot may be, and what a match
//! means, is the user's ([`super::chunk_shape`], [`super::realtime_shape`]).

use super::scan::Member;

/// Slots per shape.
pub const MAX_SLOTS: usize = 8;
/// Longest shape kept (its fixed bytes).
const MAX_FIXED: usize = 1024;
// the slots' kinds are bits of a `u16`, the parts counted in a `u8`
const _: () = assert!(MAX_SLOTS < u16::BITS as usize);

/// Fixed bytes around string slots; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// The fixed parts, one more than the slots, one after the other.
    fixed: Vec<u8>,
    /// Where each fixed part ends in `fixed` (the first `parts`). Kept in the
    /// shape itself, not in vectors of their own: a session's shape is looked
    /// at once a frame among a thousand sessions' state, and every separate
    /// allocation is one more line to fetch.
    ends: [u16; MAX_SLOTS + 1],
    /// Fixed parts kept; 0 when nothing is kept.
    parts: u8,
    /// Which slots are integers (bit `i` for slot `i`; the others are string contents).
    integers: u16,
}

/// Why a text was not read by its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// In the kept shape, but a slot is not plain: the shape stays as it is.
    InShape,
    /// Not in the kept shape: the reader may learn this text's.
    Other,
}

/// Where a member's value is a slot: a string's content, or (`integers`) an integer.
pub fn value_slot(text: &[u8], m: &Member, integers: bool) -> Option<(usize, usize)> {
    let value = text.get(m.value_start..m.value_end)?;
    if value.first() == Some(&b'"') {
        Some((m.value_start + 1, m.value_end - 1))
    } else if integers && value.iter().all(u8::is_ascii_digit) {
        Some((m.value_start, m.value_end))
    } else {
        None
    }
}

/// A text matched against a [`Shape`].
pub struct Matched {
    /// Where each fixed part starts in the text.
    pub starts: [usize; MAX_SLOTS + 1],
    /// Each slot's string content, as a range of the text.
    pub slots: [(usize, usize); MAX_SLOTS],
    /// Every slot plain (and UTF-8): the text says what the kept one said.
    pub plain: bool,
}

impl Shape {
    /// Keeps `text` around `slots` (in order, apart: the contents of string literals,
    /// or integers); keeps nothing when they are not that or the shape is too long.
    pub fn keep(&mut self, text: &[u8], slots: &[(usize, usize)]) -> bool {
        self.forget();
        let quoted = |s: usize, e: usize| {
            s > 0 && text.get(s - 1) == Some(&b'"') && text.get(e) == Some(&b'"')
        };
        let digits = |s: usize, e: usize| {
            e > s
                && text
                    .get(s..e)
                    .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
                && !text.get(e).is_some_and(u8::is_ascii_digit)
                && (s == 0 || !text[s - 1].is_ascii_digit())
        };
        let known = slots.iter().all(|&(s, e)| quoted(s, e) || digits(s, e));
        let apart = slots.windows(2).all(|w| w[0].1 < w[1].0);
        if !known || !apart || slots.len() > MAX_SLOTS {
            return false;
        }
        let mut from = 0;
        for (i, &(s, e)) in slots.iter().enumerate() {
            if !quoted(s, e) {
                self.integers |= 1 << i;
            }
            self.fixed.extend_from_slice(&text[from..s]);
            self.push_end();
            from = e;
        }
        self.fixed.extend_from_slice(&text[from..]);
        self.push_end();
        if self.fixed.len() > MAX_FIXED {
            self.forget();
            return false;
        }
        true
    }

    /// Ends a fixed part where `fixed` ends now (at most `MAX_FIXED` + a text's length:
    /// checked after the last part, so an end past `u16` only ever precedes a forget).
    fn push_end(&mut self) {
        // `keep` takes at most MAX_SLOTS slots: one more part than that fits
        if let Some(end) = self.ends.get_mut(usize::from(self.parts)) {
            *end = u16::try_from(self.fixed.len()).unwrap_or(u16::MAX);
            self.parts += 1;
        }
    }

    /// Whether nothing is kept.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.parts == 0
    }

    /// Keeps nothing.
    pub fn forget(&mut self) {
        self.fixed.clear();
        self.parts = 0;
        self.integers = 0;
    }

    /// `text` as the kept fixed parts around plain slots, or why not.
    pub fn plain(&self, text: &[u8]) -> Result<Matched, Miss> {
        match self.matched(text) {
            Some(m) if m.plain => Ok(m),
            Some(_) => Err(Miss::InShape),
            None => Err(Miss::Other),
        }
    }

    /// `text` as the kept fixed parts around slots, plain or not.
    pub fn matched(&self, text: &[u8]) -> Option<Matched> {
        let parts = usize::from(self.parts);
        let mut m = Matched {
            starts: [0; MAX_SLOTS + 1],
            slots: [(0, 0); MAX_SLOTS],
            plain: parts > 0,
        };
        let (mut pos, mut from) = (0, 0);
        for (part, &end) in self.ends[..parts].iter().enumerate() {
            let end = usize::from(end);
            let fixed = &self.fixed[from..end];
            from = end;
            if !text.get(pos..)?.starts_with(fixed) {
                return None;
            }
            m.starts[part] = pos;
            pos += fixed.len();
            if part + 1 == parts {
                return (pos == text.len()).then_some(m);
            }
            // a slot: a string's content, up to its closing quote (the next part's first
            // byte), or an integer's digits
            let (len, plain) = if self.integers & (1 << part) != 0 {
                integer(&text[pos..])?
            } else {
                string_content(&text[pos..])?
            };
            m.slots[part] = (pos, pos + len);
            m.plain &= plain;
            pos += len;
        }
        None
    }
}

/// The length of the digits at the start of `b`, and whether they are a JSON
/// integer (no leading zero).
fn integer(b: &[u8]) -> Option<(usize, bool)> {
    let len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    (len > 0).then_some((len, len == 1 || b[0] != b'0'))
}

/// The length of the string content at the start of `b` (up to its closing quote),
/// and whether it is plain: no escape, no control byte, UTF-8.
fn string_content(b: &[u8]) -> Option<(usize, bool)> {
    let end = memchr::memchr2(b'"', b'\\', b)?;
    if b[end] == b'"' {
        let content = &b[..end];
        // the smallest and largest byte in one pass without branches (it vectorises)
        let (low, high) = content
            .iter()
            .fold((u8::MAX, 0), |(lo, hi), &c| (lo.min(c), hi.max(c)));
        let plain = low >= 0x20 && (high < 0x80 || std::str::from_utf8(content).is_ok());
        return Some((end, plain));
    }
    // an escape: not plain; the string ends at the first quote no backslash escapes
    let mut i = end;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some((i, false)),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_slots_match_and_anything_else_does_not() {
        let text = br#"{"a":"one","b":[1,"two"],"c":"three"}"#;
        let at = |s: &str| {
            let i = text
                .windows(s.len())
                .position(|w| w == s.as_bytes())
                .expect("in");
            (i, i + s.len())
        };
        let mut shape = Shape::default();
        assert!(shape.keep(text, &[at("one"), at("three")]));
        let m = shape
            .matched(r#"{"a":"","b":[1,"two"],"c":"é x"}"#.as_bytes())
            .expect("matched");
        assert!(m.plain);
        assert_eq!((m.slots[0], m.slots[1]), ((6, 6), (27, 31)));
        assert_eq!(m.starts[..3], [0, 6, 31]);
        // an escape or a control byte: matched, not plain; bytes not UTF-8: not plain
        for t in [
            &br#"{"a":"\"","b":[1,"two"],"c":"x"}"#[..],
            b"{\"a\":\"\t\",\"b\":[1,\"two\"],\"c\":\"x\"}",
        ] {
            assert!(!shape.matched(t).expect("matched").plain);
        }
        assert!(
            !shape
                .matched(b"{\"a\":\"\xff\",\"b\":[1,\"two\"],\"c\":\"x\"}")
                .expect("m")
                .plain
        );
        // fixed bytes changed, a slot not a string, a trailing byte, a cut text
        for t in [
            &br#"{"a":"x","b":[1,"tw"],"c":"x"}"#[..],
            br#"{"a":5,"b":[1,"two"],"c":"x"}"#,
            br#"{"a":"x","b":[1,"two"],"c":"x"} "#,
            br#"{"a":"x","b":[1,"two"],"c":"x"#,
            br#"{"a":"x\"#,
        ] {
            assert!(shape.matched(t).is_none(), "{}", String::from_utf8_lossy(t));
        }
        // integers
        let numbered = br#"{"t":123,"a":"x"}"#;
        assert!(shape.keep(numbered, &[(5, 8), (14, 15)]));
        for (t, plain) in [
            (&br#"{"t":9,"a":"y"}"#[..], true),
            (br#"{"t":1234567890123,"a":""}"#, true),
            (br#"{"t":0,"a":"y"}"#, true),
            (br#"{"t":012,"a":"y"}"#, false),
        ] {
            assert_eq!(shape.matched(t).expect("matched").plain, plain);
        }
        for t in [
            &br#"{"t":-1,"a":"y"}"#[..],
            br#"{"t":1.5,"a":"y"}"#,
            br#"{"t":"1","a":"y"}"#,
        ] {
            assert!(shape.matched(t).is_none(), "{}", String::from_utf8_lossy(t));
        }
        assert!(!shape.keep(numbered, &[(6, 8)]), "part of a number");
        // slots that are not string contents, or overlap: nothing kept
        assert!(!shape.keep(text, &[(1, 2)]));
        assert!(shape.matched(text).is_none());
        assert!(!shape.keep(text, &[at("one"), at("one")]));
        // a shape kept after one with an integer slot reads that slot as a string
        assert!(shape.keep(numbered, &[(5, 8)]));
        assert!(shape.keep(text, &[at("one"), at("three")]));
        assert!(
            shape
                .matched(br#"{"a":"12","b":[1,"two"],"c":"x"}"#)
                .is_some()
        );
        assert!(
            shape
                .matched(br#"{"a":12,"b":[1,"two"],"c":"x"}"#)
                .is_none()
        );
    }

    #[test]
    fn a_shape_keeps_as_many_slots_as_it_may_and_no_more() {
        let text = br#"{"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6","g":"7","h":"8","i":"9"}"#;
        let slots: Vec<(usize, usize)> = (0..9).map(|i| (6 + 8 * i, 7 + 8 * i)).collect();
        let mut shape = Shape::default();
        assert!(!shape.keep(text, &slots), "one slot too many");
        assert!(shape.is_empty());
        assert!(shape.keep(text, &slots[..MAX_SLOTS]));
        let other = br#"{"a":"x","b":"x","c":"x","d":"x","e":"x","f":"x","g":"x","h":"x","i":"9"}"#;
        assert!(shape.plain(other).is_ok());
    }
}
