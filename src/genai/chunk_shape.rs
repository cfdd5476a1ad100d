//! The part of a content chunk that repeats around its text, read once per stream.
//!
//! Past its repeated head ([`super::chunk_head`]), an OpenAI content chunk is the
//! same bytes every time but for the text:
//! `[{"index":0,"delta":{"content":"…"},"logprobs":null,"finish_reason":null}],"usage":null}`.
//! Parsing that rest was still most of what reading a chunk cost (~4.2k of ~7k
//! instructions, issue 16, 1,000 streams under callgrind). So once a rest has been
//! read whole and said nothing but one choice's content, the bytes before and after
//! that string are kept; a later rest made of exactly those bytes around a *plain*
//! string (no quote, backslash or control character, and UTF-8) says the same with
//! that text. JSON's grammar cannot read the same bytes around a string literal
//! differently because the literal's plain content changed, so nothing is guessed:
//! anything else (an escape, another member, a finish reason, usage) is parsed.

use std::borrow::Cow;

use super::chunk::{Choice, Chunk, Delta, FROM_CHOICES};
use super::lenient::{Count, Lenient, Str};

/// Longest shape kept (the bytes around the text): OpenAI's are ~80 bytes.
const MAX_AROUND: usize = 1024;
/// Shapes learnt per stream: one whose chunks keep changing stops trying.
const MAX_LEARNT: u8 = 8;

/// A stream's repeated content-chunk shape; see the module docs.
#[derive(Debug, Clone, Default)]
pub(super) struct ChunkShape {
    before: Vec<u8>,
    after: Vec<u8>,
    /// The choice's `index`, when the chunk had one.
    index: Option<u64>,
    /// Where the chunk's `"usage":null` value is, when it had one.
    usage: Option<Place>,
    kept: bool,
    learnt: u8,
    /// Rests read here (tests check the path is taken).
    #[cfg(test)]
    pub(super) hits: std::cell::Cell<usize>,
}

/// A position in a rest: before the text, from the rest's start; after it, from its end.
#[derive(Debug, Clone, Copy)]
enum Place {
    FromStart(usize, usize),
    FromEnd(usize, usize),
}

impl ChunkShape {
    /// Reads `rest` (a chunk from its `choices` value on) when it is the kept shape
    /// around a plain string: the chunk as the parser would give it, and where its
    /// `usage` value is in `FROM_CHOICES` + `rest` (as [`super::chunk::read`] gives it).
    pub(super) fn read<'a>(&self, rest: &'a [u8]) -> Option<(Chunk<'a>, Option<(usize, usize)>)> {
        if !self.kept {
            return None;
        }
        let text = rest
            .strip_prefix(self.before.as_slice())?
            .strip_suffix(self.after.as_slice())?;
        if text.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
            return None;
        }
        let text = std::str::from_utf8(text).ok()?;
        let usage_at = self.usage.map(|p| {
            let (s, e) = match p {
                Place::FromStart(s, e) => (s, e),
                Place::FromEnd(s, e) => (rest.len() - s, rest.len() - e),
            };
            (s + FROM_CHOICES.len(), e + FROM_CHOICES.len())
        });
        let choice = Choice {
            index: self
                .index
                .map_or(Lenient::Missing, |i| Lenient::Valid(Count(i))),
            delta: Lenient::Valid(Delta {
                content: Lenient::Valid(Str(Cow::Borrowed(text))),
                ..Delta::default()
            }),
            ..Choice::default()
        };
        let chunk = Chunk {
            choices: Lenient::Valid(vec![Lenient::Valid(choice)]),
            ..Chunk::default()
        };
        #[cfg(test)]
        self.hits.set(self.hits.get() + 1);
        Some((chunk, usage_at))
    }

    /// After `c` was read whole from `json` (`FROM_CHOICES` + `rest`): keeps its shape
    /// when it said nothing but one choice's content, written without escapes;
    /// otherwise keeps none (the next rest is parsed, and may teach one).
    pub(super) fn learn(
        &mut self,
        rest: &[u8],
        json: &[u8],
        c: &Chunk<'_>,
        usage_at: Option<(usize, usize)>,
    ) {
        self.kept = false;
        if self.learnt >= MAX_LEARNT {
            return;
        }
        let Some((index, text)) = content_only(c) else {
            return;
        };
        // where the text lies in `rest` (borrowed from `json`, after FROM_CHOICES)
        let Some(start) = (text.as_ptr() as usize)
            .checked_sub(json.as_ptr() as usize)
            .and_then(|s| s.checked_sub(FROM_CHOICES.len()))
        else {
            return;
        };
        let end = start + text.len();
        let quoted =
            start > 0 && rest.get(start - 1) == Some(&b'"') && rest.get(end) == Some(&b'"');
        if !quoted || start + (rest.len() - end) > MAX_AROUND {
            return;
        }
        let usage = match usage_at {
            None => None,
            Some((s, e)) => {
                let (Some(s), Some(e)) = (
                    s.checked_sub(FROM_CHOICES.len()),
                    e.checked_sub(FROM_CHOICES.len()),
                ) else {
                    return;
                };
                if e <= start {
                    Some(Place::FromStart(s, e))
                } else if s >= end && e <= rest.len() {
                    Some(Place::FromEnd(rest.len() - s, rest.len() - e))
                } else {
                    return;
                }
            }
        };
        self.before.clear();
        self.before.extend_from_slice(&rest[..start]);
        self.after.clear();
        self.after.extend_from_slice(&rest[end..]);
        self.index = index;
        self.usage = usage;
        self.kept = true;
        self.learnt += 1;
    }
}

/// The choice index and text of a chunk that says nothing else: no head member, no
/// error or usage, one choice with neither finish reason nor text, and a delta with
/// only content, read in place (no escape in it).
fn content_only<'c>(c: &'c Chunk<'_>) -> Option<(Option<u64>, &'c str)> {
    let head_member = [&c.id, &c.model, &c.system_fingerprint, &c.service_tier]
        .iter()
        .any(|m| !matches!(m, Lenient::Missing));
    if head_member || c.error.is_some() || !matches!(c.usage, Lenient::Missing) {
        return None;
    }
    let Lenient::Valid(choices) = &c.choices else {
        return None;
    };
    let [Lenient::Valid(ch)] = choices.as_slice() else {
        return None;
    };
    if !matches!(ch.finish_reason, Lenient::Missing) || !matches!(ch.text, Lenient::Missing) {
        return None;
    }
    let index = match &ch.index {
        Lenient::Valid(Count(n)) => Some(*n),
        Lenient::Missing => None,
        Lenient::Invalid => return None,
    };
    let Lenient::Valid(d) = &ch.delta else {
        return None;
    };
    if !matches!(d.refusal, Lenient::Missing) || !matches!(d.tool_calls, Lenient::Missing) {
        return None;
    }
    match &d.content {
        Lenient::Valid(Str(Cow::Borrowed(text))) => Some((index, text)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::chunk;
    use super::*;
    use proptest::prelude::*;

    /// The shape's read of `rest`, else the parser's, as (index, text, usage place) when
    /// the chunk says only content, with whether the shape read it.
    fn both(shape: &ChunkShape, rest: &[u8]) -> (Option<Facts>, Option<Facts>) {
        let fast = shape.read(rest).map(|(c, at)| facts(&c, at));
        let json = [FROM_CHOICES, rest].concat();
        let slow = chunk::read(&json).map(|(c, at)| facts(&c, at));
        (fast, slow)
    }

    type Facts = Option<(Option<u64>, String, Option<(usize, usize)>)>;

    fn facts(c: &Chunk<'_>, at: Option<(usize, usize)>) -> Facts {
        content_only(c).map(|(i, t)| (i, t.to_owned(), at))
    }

    fn learnt(template: &[u8]) -> ChunkShape {
        let json = [FROM_CHOICES, template].concat();
        let (c, at) = chunk::read(&json).expect("a chunk");
        let mut shape = ChunkShape::default();
        shape.learn(template, &json, &c, at);
        shape
    }

    /// Rests around a string literal: `{}` is where it goes.
    const SHAPES: [&str; 5] = [
        r#"[{"index":0,"delta":{"content":{}},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"[{"index":1,"delta":{"role":"assistant","content":{}}}]}"#,
        r#"[{"delta":{"content":{}},"finish_reason":null}], "usage" : null , "obfuscation":"xyz"}"#,
        r#"[ { "index" : 0 , "delta" : { "content" : {} } } ] , "usage":null }"#,
        r#"[{"index":0,"delta":{"content":{},"content":"dup"}}],"usage":null}"#,
    ];

    fn rest(shape: &str, literal: &str) -> Vec<u8> {
        shape.replacen("{}", literal, 1).into_bytes()
    }

    #[test]
    fn only_a_content_only_chunk_teaches_a_shape() {
        for (template, kept) in [
            (rest(SHAPES[0], r#""a""#), true),
            // a repeated key: the shape is around the text read, the last one
            (rest(SHAPES[4], r#""a""#), true),
            (
                br#"[{"index":0,"delta":{"content":"a","content":"d\u0075p"}}]}"#.to_vec(),
                false,
            ),
            (rest(SHAPES[0], r#""a\nb""#), false),
            (
                br#"[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}"#.to_vec(),
                false,
            ),
            (
                br#"[{"index":0,"delta":{"content":"a","refusal":"r"}}]}"#.to_vec(),
                false,
            ),
            (
                br#"[{"index":0,"delta":{"content":"a"}}],"usage":{"total_tokens":1}}"#.to_vec(),
                false,
            ),
            (
                br#"[{"index":0,"delta":{"content":"a"}}],"model":"m"}"#.to_vec(),
                false,
            ),
            (
                br#"[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#
                    .to_vec(),
                false,
            ),
            (
                br#"[{"index":-1,"delta":{"content":"a"}}]}"#.to_vec(),
                false,
            ),
        ] {
            let shape = learnt(&template);
            assert_eq!(shape.kept, kept, "{}", String::from_utf8_lossy(&template));
        }
    }

    #[test]
    fn a_shape_reads_what_the_parser_reads() {
        for s in SHAPES.iter().take(4) {
            let shape = learnt(&rest(s, r#""x""#));
            for lit in [r#""Hello""#, r#""""#, r#""é 中 🎉""#, r#"" a b ""#] {
                let r = rest(s, lit);
                let (fast, slow) = both(&shape, &r);
                assert!(fast.is_some(), "{s} {lit}: the shape is not used");
                assert_eq!(fast, slow, "{s} {lit}");
            }
            // escapes, a quote, a control character, bytes that are not UTF-8, other members
            for lit in [
                r#""a\"b""#,
                r#""\u00e9""#,
                r#""a\\""#,
                "\"\t\"",
                "\"\u{1}\"",
            ] {
                let r = rest(s, lit);
                let (fast, _) = both(&shape, &r);
                assert!(fast.is_none(), "{s} {lit}");
            }
            let mut bad = rest(s, r#""ab""#);
            let at = bad.iter().position(|&b| b == b'a').expect("a");
            bad[at] = 0xff;
            assert!(both(&shape, &bad).0.is_none());
            assert!(both(&shape, &rest(s, r#""a","x":1,"y":"b""#)).0.is_none());
            assert!(both(&shape, &rest(s, r#"5"#)).0.is_none());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text, written as serde_json writes it: read by the shape exactly when it
        /// needs no escape, and then as the parser reads it.
        #[test]
        fn any_text_is_read_as_the_parser_reads_it(text in any::<String>(), which in 0usize..4) {
            let s = SHAPES[which];
            let shape = learnt(&rest(s, r#""x""#));
            let literal = serde_json::to_string(&text).expect("json");
            let (fast, slow) = both(&shape, &rest(s, &literal));
            let plain = literal.len() == text.len() + 2;
            prop_assert_eq!(fast.is_some(), plain);
            if fast.is_some() {
                prop_assert_eq!(fast, slow);
            }
        }
    }
}
