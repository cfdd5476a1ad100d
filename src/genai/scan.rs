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
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
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

fn skip_value(b: &[u8], i: usize) -> Option<usize> {
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

/// The members of an object in order, each with its raw key (without quotes;
/// `None` for a member the walk was resumed at the value of). It stops at the
/// object's end, or at anything it does not recognise: [`Members::closed`]
/// then says which.
pub struct Members<'a> {
    b: &'a [u8],
    i: usize,
    resumed: bool,
    prev_end: Option<usize>,
    stopped: bool,
    closed: bool,
}

impl<'a> Members<'a> {
    /// The members of the object starting at `b[open]` (`{`).
    pub fn of(b: &'a [u8], open: usize) -> Option<Members<'a>> {
        (b.get(open) == Some(&b'{')).then(|| Members::from(b, skip_ws(b, open + 1), false))
    }

    /// The members from the one whose value starts at `value_start` to the object's end.
    pub fn after(b: &'a [u8], value_start: usize) -> Members<'a> {
        Members::from(b, value_start, true)
    }

    fn from(b: &'a [u8], i: usize, resumed: bool) -> Members<'a> {
        Members {
            b,
            i,
            resumed,
            prev_end: None,
            stopped: false,
            closed: false,
        }
    }

    /// Whether the walk reached the object's closing brace (not something it
    /// could not read).
    pub fn closed(&self) -> bool {
        self.closed
    }

    fn step(&mut self) -> Option<(Option<&'a [u8]>, Member)> {
        let b = self.b;
        let (key, key_start, value_start) = if std::mem::take(&mut self.resumed) {
            (None, self.i, self.i)
        } else {
            let key_start = self.i;
            if *b.get(key_start)? != b'"' {
                return None;
            }
            let key_end = skip_string(b, key_start)?;
            let colon = skip_ws(b, key_end);
            if *b.get(colon)? != b':' {
                return None;
            }
            let key = &b[key_start + 1..key_end - 1];
            (Some(key), key_start, skip_ws(b, colon + 1))
        };
        let value_end = skip_value(b, value_start)?;
        let after = skip_ws(b, value_end);
        let next_key = match *b.get(after)? {
            b',' => Some(skip_ws(b, after + 1)),
            b'}' => None,
            _ => return None,
        };
        let member = Member {
            prev_end: self.prev_end,
            key_start,
            value_start,
            value_end,
            next_key,
        };
        self.prev_end = Some(value_end);
        match next_key {
            Some(next) => self.i = next,
            None => {
                self.closed = true;
                self.stopped = true;
            }
        }
        Some((key, member))
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = (Option<&'a [u8]>, Member);

    fn next(&mut self) -> Option<Self::Item> {
        if self.stopped {
            return None;
        }
        let item = self.step();
        self.stopped |= item.is_none();
        item
    }
}

/// Finds the top-level member `key` of the object starting at `b[open]` (`{`):
/// its last occurrence (the one JSON parsers keep) and how often it occurs.
pub fn find_member(b: &[u8], open: usize, key: &[u8]) -> Option<(Member, usize)> {
    last_of(Members::of(b, open)?, key)
}

/// As [`find_member`], for the members from the one whose value starts at
/// `value_start` (its key known not to be `key`) to the object's end.
pub fn find_member_after(b: &[u8], value_start: usize, key: &[u8]) -> Option<(Member, usize)> {
    last_of(Members::after(b, value_start), key)
}

/// The last member named `key` and how many there are, if the walk reached the end.
fn last_of(mut members: Members<'_>, key: &[u8]) -> Option<(Member, usize)> {
    let mut found = None;
    let mut count = 0;
    for (k, m) in &mut members {
        if k == Some(key) {
            found = Some(m);
            count += 1;
        }
    }
    members.closed().then_some(())?;
    found.map(|m| (m, count))
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
