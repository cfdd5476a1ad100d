//! Where a JSON object's top-level members are, as byte positions.
//!
//! Edits to what the client receives must be cuts in the upstream's own bytes
//! (nothing re-serialised), and skipping the part of a stream chunk that
//! repeats needs to know where that part ends; a parser gives values, not
//! positions. This scanner runs on text already known to be JSON, and answers
//! `None` on anything it does not recognise.

/// Byte positions of one top-level member of a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// End of the previous member's value (where its comma starts), if any.
    pub prev_end: Option<usize>,
    pub key_start: usize,
    pub value_start: usize,
    pub value_end: usize,
    /// Start of the next member's key, if any.
    pub next_key: Option<usize>,
}

pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// `b[i]` is `"`; returns the index just past the closing quote.
pub fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

pub fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// Finds the top-level member `key` of the object starting at `b[open]` (`{`):
/// its last occurrence (the one JSON parsers keep) and how often it occurs.
pub fn find_member(b: &[u8], open: usize, key: &[u8]) -> Option<(Member, usize)> {
    if b.get(open) != Some(&b'{') {
        return None;
    }
    find_from(b, skip_ws(b, open + 1), false, key)
}

/// As [`find_member`], for the members from the one whose value starts at
/// `value_start` (its key known not to be `key`) to the object's end.
pub fn find_member_after(b: &[u8], value_start: usize, key: &[u8]) -> Option<(Member, usize)> {
    find_from(b, value_start, true, key)
}

/// The scan from `i`: a member's key, or (`at_value`) a value whose key is not `key`.
fn find_from(b: &[u8], mut i: usize, at_value: bool, key: &[u8]) -> Option<(Member, usize)> {
    let mut prev_end = None;
    let mut found: Option<Member> = None;
    let mut count = 0;
    let mut resumed = at_value;
    loop {
        let (named, key_start, value_start) = if std::mem::take(&mut resumed) {
            (false, i, i)
        } else {
            if *b.get(i)? != b'"' {
                return None;
            }
            let key_start = i;
            let key_end = skip_string(b, i)?;
            if let Some(m) = found.as_mut().filter(|m| m.next_key.is_none()) {
                m.next_key = Some(key_start);
            }
            i = skip_ws(b, key_end);
            if *b.get(i)? != b':' {
                return None;
            }
            let named = &b[key_start + 1..key_end - 1] == key;
            (named, key_start, skip_ws(b, i + 1))
        };
        let value_end = skip_value(b, value_start)?;
        if named {
            found = Some(Member {
                prev_end,
                key_start,
                value_start,
                value_end,
                next_key: None,
            });
            count += 1;
        }
        prev_end = Some(value_end);
        i = skip_ws(b, value_end);
        match *b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return found.map(|m| (m, count)),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_found_from_the_start_or_after_a_value() {
        let b = br#"{"id":"x", "choices":[{"usage":null}],"usage":null , "o":1}"#;
        let (m, n) = find_member(b, 0, b"usage").expect("usage");
        assert_eq!(n, 1);
        assert_eq!(&b[m.value_start..m.value_end], b"null");
        let choices = find_member(b, 0, b"choices").expect("choices").0;
        let after = find_member_after(b, choices.value_start, b"usage").expect("usage");
        assert_eq!(after, (m, 1));
        assert_eq!(m.prev_end, Some(choices.value_end));
        assert_eq!(
            &b[m.next_key.expect("next")..m.next_key.expect("next") + 3],
            br#""o""#
        );
        assert_eq!(find_member(b, 0, b"nothing"), None);
        assert_eq!(find_member(b"{}", 0, b"usage"), None);
        assert_eq!(find_member(br#"{"a":1"#, 0, b"a"), None);
    }
}
