//! The part of a content chunk that repeats around its text, read once per stream.
//!
//! Past its repeated head ([`super::chunk_head`]), an OpenAI content chunk is the
//! same bytes every time but for its text and, by default, a random padding string:
//! `[{"index":0,"delta":{"content":"…"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"…"}`.
//! Parsing that rest was still most of what reading a chunk cost (~4.9k of ~7k
//! instructions, issue 16, 1,000 streams under callgrind). So once a rest has been
//! read whole and said nothing but one choice's content, it is kept as fixed bytes
//! around *slots*: the content string, and the string values of top-level members
//! the chunk parser skips (`obfuscation`). A later rest made of exactly those bytes
//! around *plain* slot strings (no quote, backslash or control byte; the content
//! UTF-8) says the same with that text: JSON's grammar cannot read the bytes around
//! a string literal differently because its plain content changed, and a skipped
//! value is never read. Nothing is guessed: anything else (an escape, another
//! member, a finish reason, usage) is parsed, and a chunk that only needed an
//! escape leaves the shape in place. The matching is [`super::shape`]'s.

use std::borrow::Cow;

use super::chunk::{Choice, Chunk, Delta, FROM_CHOICES};
use super::lenient::{Count, Lenient, Str};
use super::scan::Members;
use super::shape::{MAX_SLOTS, Miss, Shape, value_slot};

/// Shapes learnt per stream: one whose chunks keep changing stops trying.
const MAX_LEARNT: u8 = 8;
/// Top-level members the chunk parser reads ([`super::chunk`]): never slots.
const READ: [&[u8]; 7] = [
    b"id",
    b"model",
    b"system_fingerprint",
    b"service_tier",
    b"choices",
    b"usage",
    b"error",
];

/// A chunk, and where its `usage` value is (as [`super::chunk::read`] gives them).
type Read<'a> = (Chunk<'a>, Option<(usize, usize)>);

/// A stream's repeated content-chunk shape; see the module docs.
#[derive(Debug, Clone, Default)]
pub(super) struct ChunkShape {
    shape: Shape,
    /// Which slot is the content.
    content: usize,
    /// The choice's `index`, when the chunk had one.
    index: Option<u64>,
    /// The `usage` value (`null`), as (fixed part, start and end in it), when there is one.
    usage: Option<(usize, usize, usize)>,
    learnt: u8,
    /// Rests read here (tests check the path is taken).
    #[cfg(test)]
    pub(super) hits: std::cell::Cell<usize>,
}

impl ChunkShape {
    /// Reads `rest` (a chunk from its `choices` value on) when it is the kept shape
    /// around plain strings: the chunk as the parser would give it, and where its
    /// `usage` value is in `FROM_CHOICES` + `rest` (as [`super::chunk::read`] gives it);
    /// else why not.
    pub(super) fn read<'a>(&self, rest: &'a [u8]) -> Result<Read<'a>, Miss> {
        let m = self.shape.plain(rest)?;
        let (s, e) = m.slots[self.content];
        let text = std::str::from_utf8(&rest[s..e]).map_err(|_| Miss::InShape)?;
        let usage_at = self.usage.map(|(part, s, e)| {
            let at = m.starts[part] + FROM_CHOICES.len();
            (at + s, at + e)
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
        Ok((chunk, usage_at))
    }

    /// After `c` was read whole from `json` (`FROM_CHOICES` + `rest`): keeps its shape
    /// when it said nothing but one choice's content, written without escapes;
    /// otherwise keeps none (the next rest is parsed, and may teach one). Called only
    /// for a rest [`ChunkShape::read`] missed as [`Miss::Other`]: one in the kept shape
    /// whose strings were not plain leaves it as it is.
    pub(super) fn learn(
        &mut self,
        rest: &[u8],
        json: &[u8],
        c: &Chunk<'_>,
        usage_at: Option<(usize, usize)>,
    ) {
        self.shape.forget();
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
        // the slots: the content (inside `choices`), and skipped strings
        let mut slots = vec![(start, start + text.len())];
        for (key, m) in Members::after(json, FROM_CHOICES.len()).skip(1) {
            let Some(key) = key else { return };
            let skipped = !key.contains(&b'\\') && !READ.contains(&key);
            if let Some((s, e)) = value_slot(json, &m, false).filter(|_| skipped) {
                let Some(s) = s.checked_sub(FROM_CHOICES.len()) else {
                    return;
                };
                if slots.len() < MAX_SLOTS {
                    slots.push((s, e - FROM_CHOICES.len()));
                }
            }
        }
        // in order of position (a skipped string may come before a later `choices`)
        slots.sort_unstable();
        let Some(content) = slots.iter().position(|&(s, _)| s == start) else {
            return;
        };
        let usage = match usage_at {
            None => None,
            Some((s, e)) => {
                let (Some(s), Some(e)) = (
                    s.checked_sub(FROM_CHOICES.len()),
                    e.checked_sub(FROM_CHOICES.len()),
                ) else {
                    return;
                };
                // the fixed part holding it: after the slots that end before it
                let part = slots.iter().take_while(|&&(_, se)| se <= s).count();
                let part_start = if part == 0 { 0 } else { slots[part - 1].1 };
                if slots.get(part).is_some_and(|&(ss, _)| ss < e) {
                    return;
                }
                Some((part, s - part_start, e - part_start))
            }
        };
        // counted kept or not (a shape too long would otherwise be tried on every chunk)
        self.learnt += 1;
        if self.shape.keep(rest, &slots) {
            self.content = content;
            self.index = index;
            self.usage = usage;
        }
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
        let fast = shape.read(rest).ok().map(|(c, at)| facts(&c, at));
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
    const SHAPES: [&str; 7] = [
        r#"[{"index":0,"delta":{"content":{}},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"{o}"}"#,
        r#"[{"index":1,"delta":{"role":"assistant","content":{}}}]}"#,
        r#"[{"delta":{"content":{}},"finish_reason":null}], "usage" : null , "obfuscation":"{o}", "p":"{o}"}"#,
        r#"[ { "index" : 0 , "delta" : { "content" : {} } } ] , "usage":null }"#,
        // `usage` before the text (a second `choices`, the one read)
        r#"[],"usage":null,"o":"{o}","choices":[{"index":0,"delta":{"content":{}}}],"x":"{o}"}"#,
        // a repeated key: the text read is the last one
        r#"[{"index":0,"delta":{"content":"first","content":{}}}],"usage":null}"#,
        // `usage` after a slot: its place moves with the padding's length
        r#"[{"index":0,"delta":{"content":{}}}],"obfuscation":"{o}","usage":null}"#,
    ];

    fn rest(shape: &str, literal: &str) -> Vec<u8> {
        rest_with(shape, literal, "pad")
    }

    fn rest_with(shape: &str, literal: &str, pad: &str) -> Vec<u8> {
        shape
            .replacen("{}", literal, 1)
            .replace("{o}", pad)
            .into_bytes()
    }

    #[test]
    fn only_a_content_only_chunk_teaches_a_shape() {
        for (template, kept) in [
            (rest(SHAPES[0], r#""a""#), true),
            // a repeated key: the shape is around the text read, the last one
            (rest(SHAPES[5], r#""a""#), true),
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
            assert_eq!(
                !shape.shape.is_empty(),
                kept,
                "{}",
                String::from_utf8_lossy(&template)
            );
        }
    }

    #[test]
    fn a_shape_reads_what_the_parser_reads() {
        for s in SHAPES {
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
            // padding of another length is read; padding that is not plain is parsed
            let padded = rest_with(s, r#""y""#, "a much longer padding");
            let (fast, slow) = both(&shape, &padded);
            assert!(fast.is_some() && fast == slow, "{s}");
            if s.contains("{o}") {
                assert!(both(&shape, &rest_with(s, r#""y""#, r#"a\"b"#)).0.is_none());
                assert!(both(&shape, &rest_with(s, r#""y""#, "a\tb")).0.is_none());
                // a value that is no longer a string
                let number = rest(s, r#""y""#);
                let number = String::from_utf8(number)
                    .expect("utf8")
                    .replace(r#""pad""#, "5");
                assert!(both(&shape, number.as_bytes()).0.is_none());
                // bytes that are not UTF-8 in a skipped string: serde_json skips them
                // unchecked, the shape leaves them to it (stricter, never different)
                let mut bad = rest_with(s, r#""y""#, "pad");
                let at = bad.windows(3).position(|w| w == b"pad").expect("pad");
                bad[at] = 0xff;
                let (fast, slow) = both(&shape, &bad);
                assert!(fast.is_none() && slow.is_some(), "{s}");
            }
        }
        // a member whose name is escaped is no slot (the name could spell one that is read,
        // as `mod\u0065l` is `model`): its value stays fixed
        let escaped = r#"[{"index":0,"delta":{"content":{}}}],"x\u0079z":"{o}"}"#;
        let shape = learnt(&rest(escaped, r#""x""#));
        assert!(both(&shape, &rest(escaped, r#""y""#)).0.is_some());
        assert!(
            both(&shape, &rest_with(escaped, r#""y""#, "other"))
                .0
                .is_none()
        );
        let model = r#"[{"index":0,"delta":{"content":{}}}],"mod\u0065l":"{o}"}"#;
        assert!(
            learnt(&rest(model, r#""x""#)).shape.is_empty(),
            "a model member: not content only"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text, written as serde_json writes it: read by the shape exactly when it
        /// needs no escape, and then as the parser reads it.
        #[test]
        fn any_text_is_read_as_the_parser_reads_it(
            text in any::<String>(),
            pad in "[ -~]{0,16}",
            which in 0usize..SHAPES.len(),
        ) {
            let s = SHAPES[which];
            let shape = learnt(&rest(s, r#""x""#));
            let literal = serde_json::to_string(&text).expect("json");
            let (fast, slow) = both(&shape, &rest_with(s, &literal, &pad));
            let plain = literal.len() == text.len() + 2;
            let pad_plain = !s.contains("{o}") || !pad.contains(['"', '\\']);
            prop_assert_eq!(fast.is_some(), plain && pad_plain);
            if fast.is_some() {
                prop_assert_eq!(fast, slow);
            }
        }
    }
}
