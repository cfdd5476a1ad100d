//! The part of a stream chunk that repeats, read once per stream.
//!
//! OpenAI's chunks all begin with the same members, byte for byte: `id`,
//! `object`, `created`, `model`, `service_tier`, `system_fingerprint`; only
//! `choices` and `usage` change. Reading those again for each chunk was half
//! of what observing a chunk cost (issue 16: 1,000 streams, callgrind). So once
//! a chunk has been read whole, the bytes before its `"choices":` value are
//! kept, and a later chunk beginning with exactly those bytes is read from
//! `choices` on: what precedes it is what was read before, and every fact in it
//! has been taken already (taking the same id, model, tier or fingerprint again
//! changes nothing). A head is kept only when it holds neither `usage` nor
//! `error` (whose presence is a fact of each chunk), when nothing after it in
//! its chunk names a member the head sets (which would win over the head's
//! value), and when no key is escaped (which could spell any of these). A
//! chunk read from its rest that names one of those members changes a fact the
//! head would set back, so the reader then [`ChunkHead::forget`]s the head.

use super::scan::{Members, skip_ws};

/// Longest head kept: OpenAI's are ~200 bytes.
const MAX_HEAD: usize = 1024;
/// Heads learnt per stream: one whose chunks don't repeat their head stops trying.
const MAX_LEARNT: u8 = 4;

/// A stream's repeated chunk head; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct ChunkHead {
    head: Vec<u8>,
    learnt: u8,
}

impl ChunkHead {
    /// One that never skips (tests compare against it).
    #[cfg(test)]
    pub fn never() -> ChunkHead {
        ChunkHead {
            head: Vec::new(),
            learnt: MAX_LEARNT,
        }
    }

    /// What follows the kept head in `json` (from the `choices` value on), when
    /// `json` begins with it.
    pub fn rest<'a>(&self, json: &'a [u8]) -> Option<&'a [u8]> {
        if self.head.is_empty() {
            return None;
        }
        json.strip_prefix(self.head.as_slice())
    }

    /// Drops the head: the next chunk is read whole (and may teach a new one).
    pub fn forget(&mut self) {
        self.head.clear();
    }

    /// Keeps the head of `json`, a chunk just read whole as a JSON object.
    /// Past [`MAX_LEARNT`] heads it only drops the one kept: that head is no
    /// longer the last chunk's, and skipping it could miss a fact the last
    /// chunk changed.
    pub fn learn(&mut self, json: &[u8]) {
        self.head.clear();
        if self.learnt >= MAX_LEARNT {
            return;
        }
        self.learnt += 1;
        if let Some(end) = head_end(json) {
            self.head.extend_from_slice(&json[..end]);
        }
    }
}

/// The members a head may set, which a later member of the same name overrides.
const HEAD_FACTS: [&[u8]; 4] = [b"id", b"model", b"system_fingerprint", b"service_tier"];

/// Where `choices`' value starts, if every member before it may be skipped
/// (see the module docs).
fn head_end(json: &[u8]) -> Option<usize> {
    let mut members = Members::of(json, skip_ws(json, 0))?;
    let mut end = None;
    for (key, m) in &mut members {
        let key = key?;
        let after_head = end.is_some();
        if key.contains(&b'\\')
            || (!after_head && (key == b"usage" || key == b"error"))
            || (after_head && HEAD_FACTS.contains(&key))
        {
            return None;
        }
        if key == b"choices" && !after_head {
            if m.value_start > MAX_HEAD {
                return None;
            }
            end = Some(m.value_start);
        }
    }
    members.closed().then_some(())?;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str =
        r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices": "#;

    #[test]
    fn a_repeated_head_is_skipped_and_anything_else_is_not() {
        let mut h = ChunkHead::default();
        let first = format!(r#"{HEAD}[{{"index":0,"delta":{{"content":"a"}}}}],"usage":null}}"#);
        assert_eq!(h.rest(first.as_bytes()), None);
        h.learn(first.as_bytes());
        let second = format!(r#"{HEAD}[{{"index":0,"delta":{{"content":"b"}}}}],"usage":null}}"#);
        assert_eq!(
            h.rest(second.as_bytes()),
            Some(&br#"[{"index":0,"delta":{"content":"b"}}],"usage":null}"#[..])
        );
        // one byte different: read whole
        assert_eq!(h.rest(second.replace("\"c1\"", "\"c2\"").as_bytes()), None);
    }

    #[test]
    fn heads_with_per_chunk_facts_are_not_kept() {
        for json in [
            r#"{"usage":null,"choices":[]}"#,
            r#"{"id":"x","error":{"message":"m"},"choices":[]}"#,
            r#"{"id":"x","\u0075sage":null,"choices":[]}"#,
            r#"{"id":"x","usage":{"total_tokens":1}}"#,
            r#"{"id":"x","choices":[],"model":"m"}"#,
            r#"{"id":"x","choices":[],"\u006dodel":"m"}"#,
            r#"{"id":"x","choices":[]"#,
            r#"[{"choices":[]}]"#,
        ] {
            assert_eq!(head_end(json.as_bytes()), None, "{json}");
        }
        let long = format!(r#"{{"id":"{}","choices":[]}}"#, "x".repeat(MAX_HEAD));
        assert_eq!(head_end(long.as_bytes()), None);
        assert_eq!(head_end(br#" { "id" : "x" , "choices" : []}"#), Some(28));
    }

    #[test]
    fn a_stream_whose_heads_never_repeat_stops_learning() {
        let mut h = ChunkHead::default();
        for n in 0..10 {
            let json = format!(r#"{{"created":{n},"choices":[]}}"#);
            if h.rest(json.as_bytes()).is_none() {
                h.learn(json.as_bytes());
            }
        }
        assert_eq!(h.learnt, MAX_LEARNT);
        // and keeps none: the last head learnt is not the last chunk's
        assert!(h.rest(br#"{"created":3,"choices":[1]}"#).is_none());
    }
}
