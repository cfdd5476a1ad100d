//! Exact streaming usage without changing what the client sees.
//!
//! Chat and legacy completion streams report usage only when the request
//! asks for it. tokentap asks on the client's behalf and then removes, byte
//! for byte, exactly what asking adds: the usage-only final chunk and the
//! top-level `"usage":null` member of every other chunk. Edits are cuts in
//! the original bytes located by a small JSON scanner; nothing is ever
//! re-serialised, so key order, spacing and number formats stay the
//! upstream's.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::scan::{Member, find_member, find_member_after, skip_ws};
use super::sse::SseEvent;
use super::stream::EventInfo;

/// The span to cut to remove `m` and one adjacent comma.
fn removal_span(m: &Member) -> (usize, usize) {
    match (m.next_key, m.prev_end) {
        (Some(next), _) => (m.key_start, next),
        (None, Some(prev)) => (prev, m.value_end),
        (None, None) => (m.key_start, m.value_end),
    }
}

const INCLUDE_USAGE: &[u8] = br#""include_usage":true"#;

/// Rewrites a request body so the stream reports usage. `None` when the body
/// is not an object tokentap can edit safely (it is then forwarded as is).
pub fn request_with_usage(body: &[u8]) -> Option<Vec<u8>> {
    let open = skip_ws(body, 0);
    // validate the whole object once, so the cuts below are on sound JSON
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err()
        || body.get(open) != Some(&b'{')
    {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + 40);
    // the last of repeated keys is the one the upstream reads, so that one is edited
    match find_member(body, open, b"stream_options").map(|f| f.0) {
        None => insert_first(
            body,
            open,
            br#""stream_options":{"include_usage":true}"#,
            &mut out,
        ),
        Some(so) => match body[so.value_start] {
            b'n' => {
                out.extend_from_slice(&body[..so.value_start]);
                out.extend_from_slice(br#"{"include_usage":true}"#);
                out.extend_from_slice(&body[so.value_end..]);
            }
            b'{' => match find_member(body, so.value_start, b"include_usage").map(|f| f.0) {
                Some(iu) => {
                    out.extend_from_slice(&body[..iu.value_start]);
                    out.extend_from_slice(b"true");
                    out.extend_from_slice(&body[iu.value_end..]);
                }
                None => insert_first(body, so.value_start, INCLUDE_USAGE, &mut out),
            },
            _ => return None,
        },
    }
    Some(out)
}

/// Inserts `member` as the first member of the object at `b[open]`.
fn insert_first(b: &[u8], open: usize, member: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&b[..=open]);
    out.extend_from_slice(member);
    if b.get(skip_ws(b, open + 1)) != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(&b[open + 1..]);
}

/// Removes a top-level `"usage":null` member from a chunk's JSON text.
/// Appends the edited bytes to `out`; returns false (and appends nothing) when
/// there is nothing to remove.
///
/// `head`: how many leading bytes are a chunk head already read
/// ([`super::chunk_head`]), which holds no `usage`; the scan starts after it.
fn strip_usage_null(json: &[u8], head: usize, out: &mut Vec<u8>) -> bool {
    let found = if head > 0 && head < json.len() {
        find_member_after(json, head, b"usage")
    } else {
        find_member(json, skip_ws(json, 0), b"usage")
    };
    // a repeated `usage` is not what injection adds: leave such a chunk alone
    let Some((m, 1)) = found else {
        return false;
    };
    cut_member(json, &m, out)
}

/// Appends `json` without `m` (and one adjacent comma) if `m`'s value is `null`.
fn cut_member(json: &[u8], m: &Member, out: &mut Vec<u8>) -> bool {
    if &json[m.value_start..m.value_end] != b"null" {
        return false;
    }
    let (a, b) = removal_span(m);
    out.extend_from_slice(&json[..a]);
    out.extend_from_slice(&json[b..]);
    true
}

/// The top-level `usage` member whose value the parser found at `json[start..end]`, as
/// [`find_member`] would give it, when it is the only `"usage"` in the text and its key
/// is written plainly; `None` sends the caller to the scan. The parser read the text
/// whole, so only the few bytes between the key and its neighbours are looked at.
fn usage_member(json: &[u8], start: usize, end: usize) -> Option<Member> {
    static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""usage""#));
    if end > json.len() || USAGE.find_iter(json).take(2).count() != 1 {
        return None;
    }
    let colon = last_non_ws(json, start)?;
    let key_end = last_non_ws(json, colon)? + 1;
    let key_start = key_end.checked_sub(br#""usage""#.len())?;
    if json[colon] != b':' || &json[key_start..key_end] != br#""usage""# {
        return None;
    }
    let before = last_non_ws(json, key_start)?;
    let prev_end = match json[before] {
        b'{' => None,
        b',' => Some(last_non_ws(json, before)? + 1),
        _ => return None,
    };
    let after = skip_ws(json, end);
    let next_key = match *json.get(after)? {
        b',' => Some(skip_ws(json, after + 1)),
        b'}' => None,
        _ => return None,
    };
    Some(Member {
        prev_end,
        key_start,
        value_start: start,
        value_end: end,
        next_key,
    })
}

/// The index of the last byte before `i` that is not JSON whitespace.
fn last_non_ws(b: &[u8], i: usize) -> Option<usize> {
    b[..i]
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
}

/// Edits a raw SSE stream event by event. The caller feeds raw bytes with
/// [`UsageStripper::push`], reports each event the decoder completes with
/// [`UsageStripper::event`] and, after each frame, the decoder's settled
/// offset with [`UsageStripper::release`]; it takes the bytes that are final
/// with [`UsageStripper::take_ready`]. Only the bytes of the current
/// incomplete event are held back: comments and keep-alives between events
/// pass at once.
#[derive(Debug, Default)]
pub struct UsageStripper {
    /// Raw bytes not yet released, starting at stream offset `pending_offset`.
    pending: Vec<u8>,
    pending_offset: u64,
    /// Edited bytes ready for the client.
    ready: Vec<u8>,
    /// A dropped event ended in CR; a following LF belonged to it.
    drop_leading_lf: bool,
    /// The last kept bytes ended in CR; a following LF belongs to them.
    kept_ended_cr: bool,
}

impl UsageStripper {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, raw: &[u8]) {
        self.pending.extend_from_slice(raw);
    }

    /// Bytes held back (the current incomplete event, at most).
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    fn len_to(&self, offset: u64) -> usize {
        usize::try_from(offset.saturating_sub(self.pending_offset))
            .unwrap_or(usize::MAX)
            .min(self.pending.len())
    }

    fn consume(&mut self, len: usize) {
        self.pending.drain(..len);
        self.pending_offset += len as u64;
    }

    /// Passes on, unchanged, every held byte before stream offset `offset`
    /// (which belongs to no event that could still be edited).
    pub fn release(&mut self, offset: u64) {
        let len = self.len_to(offset);
        if len == 0 {
            return;
        }
        let mut seg = &self.pending[..len];
        if std::mem::take(&mut self.drop_leading_lf) && seg.first() == Some(&b'\n') {
            seg = &seg[1..];
        }
        self.ready.extend_from_slice(seg);
        if let Some(&last) = seg.last() {
            self.kept_ended_cr = last == b'\r';
        }
        self.consume(len);
    }

    /// The decoder completed `ev`, which was `info`.
    pub fn event(&mut self, ev: &SseEvent<'_>, info: EventInfo) {
        self.release(ev.start_offset);
        let len = self.len_to(ev.end_offset);
        let mut seg = &self.pending[..len];
        let leading_lf = seg.first() == Some(&b'\n');
        if std::mem::take(&mut self.drop_leading_lf) && leading_lf {
            seg = &seg[1..];
        } else if info.usage_only && self.kept_ended_cr && leading_lf {
            self.ready.push(b'\n');
            seg = &seg[1..];
        }
        if info.usage_only {
            self.drop_leading_lf = seg.last() == Some(&b'\r');
            self.kept_ended_cr = false;
        } else {
            if !edit_event(seg, ev.data, &info, &mut self.ready) {
                self.ready.extend_from_slice(seg);
            }
            if let Some(&last) = seg.last() {
                self.kept_ended_cr = last == b'\r';
            }
        }
        self.consume(len);
    }

    /// Bytes final for the client so far (possibly empty).
    pub fn take_ready(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.ready)
    }

    /// At end of stream: everything still held, unedited.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = self.take_ready();
        out.append(&mut self.pending);
        out
    }
}

/// Where `data:` is in `hay`. An event's segment almost always starts with it, which is
/// answered without the searcher: a search cost ~130 instructions even so (round eight).
fn find_data(hay: &[u8]) -> Option<usize> {
    // built once: `memmem::find` builds its searcher on every call (~300 instructions a chunk)
    static DATA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"data:"));
    if hay.starts_with(b"data:") {
        Some(0)
    } else if hay.len() < b"data:".len() {
        None
    } else {
        DATA.find(hay)
    }
}

/// Edits one raw event segment if it has a single `data:` line holding a
/// `"usage":null` member. Returns false when the segment is to be kept as is.
///
/// `info.head` and `info.usage_value` count from the start of `data`, the event's data
/// as the decoder assembled it; they are used only when the edited line holds exactly
/// that data (a colon-less `data` line, for one, adds to the data without being the line).
fn edit_event(seg: &[u8], data: &[u8], info: &EventInfo, out: &mut Vec<u8>) -> bool {
    let Some(data_at) = find_data(seg) else {
        return false;
    };
    if data_at != 0 && !matches!(seg[data_at - 1], b'\n' | b'\r') {
        return false;
    }
    let mut payload_start = data_at + 5;
    if seg.get(payload_start) == Some(&b' ') {
        payload_start += 1;
    }
    let payload_end = memchr::memchr2(b'\n', b'\r', &seg[payload_start..])
        .map_or(seg.len(), |p| payload_start + p);
    if find_data(&seg[payload_end..]).is_some() {
        return false; // multi-line data: leave it alone
    }
    let payload = &seg[payload_start..payload_end];
    let whole = payload == data;
    let found = if whole {
        info.usage_value
            .and_then(|(s, e)| usage_member(payload, s, e))
    } else {
        None
    };
    let head = if whole { info.head } else { 0 };
    // the edit is never longer than the segment: one allocation, not one per piece
    out.reserve(seg.len());
    let before = out.len();
    out.extend_from_slice(&seg[..payload_start]);
    let cut = match found {
        Some(m) => cut_member(payload, &m, out),
        None => strip_usage_null(payload, head, out),
    };
    if !cut {
        out.truncate(before);
        return false;
    }
    out.extend_from_slice(&seg[payload_end..]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genai::request::Operation;
    use crate::genai::sse::SseDecoder;
    use crate::genai::stream::StreamAccumulator;

    fn req(body: &str) -> String {
        String::from_utf8(request_with_usage(body.as_bytes()).expect("editable")).expect("utf8")
    }

    #[test]
    fn data_is_found_where_the_searcher_finds_it() {
        for hay in [
            &b""[..],
            b"data",
            b"data:",
            b"\n\n",
            b"\r\n\r\n",
            b"data: {}\n\n",
            b"event: x\ndata: {}\n\n",
            b": ping\n\ndata:",
            b"dat\ndata:x",
            b"xdata",
        ] {
            assert_eq!(
                find_data(hay),
                memchr::memmem::find(hay, b"data:"),
                "{}",
                String::from_utf8_lossy(hay)
            );
        }
    }

    #[test]
    fn request_rewrites_keep_everything_else() {
        assert_eq!(
            req(r#"{"model":"m","stream":true}"#),
            r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#
        );
        assert_eq!(
            req(
                r#" { "model" : 1.50e0 , "stream_options" : { "include_usage" : false , "x":1 } }"#
            ),
            r#" { "model" : 1.50e0 , "stream_options" : { "include_usage" : true , "x":1 } }"#
        );
        assert_eq!(
            req(r#"{"stream_options":{"include_obfuscation":false}}"#),
            r#"{"stream_options":{"include_usage":true,"include_obfuscation":false}}"#
        );
        assert_eq!(
            req(r#"{"stream_options":null}"#),
            r#"{"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(req(r#"{}"#), r#"{"stream_options":{"include_usage":true}}"#);
        assert_eq!(
            req(r#"{"stream_options":{}}"#),
            r#"{"stream_options":{"include_usage":true}}"#
        );
        let tricky = r#"{"messages":[{"content":"\"stream_options\":{} }"}],"stream":true}"#;
        let out = req(tricky);
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid json");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"][0]["content"], "\"stream_options\":{} }");
    }

    #[test]
    fn repeated_keys_edit_the_one_the_upstream_reads() {
        let out = req(r#"{"stream_options":{"include_usage":true},"stream_options":null}"#);
        assert_eq!(
            out,
            r#"{"stream_options":{"include_usage":true},"stream_options":{"include_usage":true}}"#
        );
        let out = req(r#"{"stream_options":{"include_usage":false,"include_usage":false}}"#);
        assert_eq!(
            out,
            r#"{"stream_options":{"include_usage":false,"include_usage":true}}"#
        );
        let mut out = Vec::new();
        assert!(!strip_usage_null(
            br#"{"usage":{"total_tokens":1},"usage":null}"#,
            0,
            &mut out
        ));
        assert!(!strip_usage_null(
            br#"{"usage":null,"usage":null}"#,
            0,
            &mut out
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn request_not_editable() {
        assert_eq!(request_with_usage(b"not json"), None);
        assert_eq!(request_with_usage(b"[1]"), None);
        assert_eq!(request_with_usage(br#"{"stream_options":"weird"}"#), None);
        assert_eq!(request_with_usage(br#"{"a":1"#), None);
    }

    #[test]
    fn usage_null_removed_in_any_position() {
        let cases = [
            (
                r#"{"id":"x","usage":null,"o":"y"}"#,
                r#"{"id":"x","o":"y"}"#,
            ),
            (r#"{"id":"x","usage":null}"#, r#"{"id":"x"}"#),
            (r#"{"usage":null,"id":"x"}"#, r#"{"id":"x"}"#),
            (r#"{"usage":null}"#, r#"{}"#),
            (
                r#"{"choices":[{"delta":{"content":"\"usage\":null,"}}],"usage":null}"#,
                r#"{"choices":[{"delta":{"content":"\"usage\":null,"}}]}"#,
            ),
        ];
        for (input, want) in cases {
            let mut out = Vec::new();
            assert!(strip_usage_null(input.as_bytes(), 0, &mut out), "{input}");
            assert_eq!(String::from_utf8(out).expect("utf8"), want);
        }
        let mut out = Vec::new();
        assert!(!strip_usage_null(
            br#"{"usage":{"prompt_tokens":1}}"#,
            0,
            &mut out
        ));
        assert!(!strip_usage_null(
            br#"{"choices":[{"usage":null}]}"#,
            0,
            &mut out
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn the_cut_where_the_parser_found_usage_is_the_scans_cut() {
        let chunks = [
            r#"{"id":"x","choices":[],"usage":null}"#,
            r#"{"id":"x","choices":[],"usage":null,"obfuscation":"ab"}"#,
            r#"{"usage":null,"id":"x","choices":[]}"#,
            r#"{"usage":null}"#,
            r#"{ "id" : "x" , "usage" : null , "o" : 1 }"#,
            "{\"id\":\"x\" ,\t\"usage\":null }",
            r#"{"choices":[{"delta":{"content":"\"usage\":null,"}}],"usage":null}"#,
            r#"{"choices":[{"delta":{"content":"say \"usage\""}}],"usage":null}"#,
            r#"{"choices":[{"usage":null}],"usage":null}"#,
            r#"{"usage":null,"choices":[],"usage":null}"#,
            r#"{"us\u0061ge":null,"choices":[]}"#,
            r#"{"usage":{"total_tokens":3},"choices":[]}"#,
            r#"{"choices":[],"usage":0}"#,
            r#"{"choices":[]}"#,
        ];
        for chunk in chunks {
            let mut acc = StreamAccumulator::new(Operation::ChatCompletions);
            let info = acc.on_event(None, chunk.as_bytes());
            assert!(!info.invalid, "{chunk}");
            let seg = format!("data: {chunk}\n\n");
            let (mut fast, mut scan) = (Vec::new(), Vec::new());
            let cut = edit_event(seg.as_bytes(), chunk.as_bytes(), &info, &mut fast);
            let unaided = EventInfo {
                usage_value: None,
                ..info
            };
            let scanned = edit_event(seg.as_bytes(), chunk.as_bytes(), &unaided, &mut scan);
            assert_eq!((cut, &fast), (scanned, &scan), "{chunk}");
        }
        // the same when the chunk was read from `choices` on, after a learnt head
        let mut acc = StreamAccumulator::new(Operation::ChatCompletions);
        let first = r#"{"id":"x","model":"m","choices":[{"index":0}],"usage":null}"#;
        let second = r#"{"id":"x","model":"m","choices":[{"index":1}],"usage":null,"z":1}"#;
        acc.on_event(None, first.as_bytes());
        let info = acc.on_event(None, second.as_bytes());
        assert!(info.head > 0 && info.usage_value.is_some());
        let seg = format!("data: {second}\n\n");
        let mut out = Vec::new();
        assert!(edit_event(
            seg.as_bytes(),
            second.as_bytes(),
            &info,
            &mut out
        ));
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "data: {\"id\":\"x\",\"model\":\"m\",\"choices\":[{\"index\":1}],\"z\":1}\n\n"
        );
    }

    fn strip_with_splits(input: &[u8], splits: &[usize]) -> Vec<u8> {
        let mut dec = SseDecoder::new();
        let mut acc = StreamAccumulator::new(Operation::ChatCompletions);
        let mut st = UsageStripper::new();
        let mut out = Vec::new();
        let mut prev = 0;
        for &s in splits.iter().chain(std::iter::once(&input.len())) {
            let frame = &input[prev..s];
            st.push(frame);
            dec.feed(frame, |e| {
                let info = acc.on_event(e.event, e.data);
                st.event(&e, info);
            });
            st.release(dec.settled());
            out.extend(st.take_ready());
            prev = s;
        }
        out.extend(st.finish());
        assert_eq!(acc.facts().usage.map(|u| u.total_tokens), Some(23));
        out
    }

    #[test]
    fn stream_with_usage_becomes_stream_without_at_every_split() {
        let with = include_bytes!("../../tests/fixtures/chat_stream_usage.sse");
        let plain = include_bytes!("../../tests/fixtures/chat_stream_plain.sse");
        for i in 0..=with.len() {
            assert_eq!(
                strip_with_splits(with, &[i]),
                plain.to_vec(),
                "split at {i}"
            );
        }
        let crlf = |b: &[u8]| -> Vec<u8> {
            b.split(|&c| c == b'\n')
                .collect::<Vec<_>>()
                .join(&b"\r\n"[..])
        };
        let (with_crlf, plain_crlf) = (crlf(with), crlf(plain));
        for i in 0..=with_crlf.len() {
            assert_eq!(
                strip_with_splits(&with_crlf, &[i]),
                plain_crlf,
                "crlf split at {i}"
            );
        }
    }

    #[test]
    fn a_colonless_data_line_does_not_shift_where_usage_is_looked_for() {
        // `data` alone adds an empty line to the event's data: the payload on the
        // `data:` line is then not the data the reader skipped the head of
        let chunk = r#"{"id":"c","choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}"#;
        let event = format!("data\ndata: {chunk}\n\n");
        let input = format!("{event}{event}");
        let mut dec = SseDecoder::new();
        let mut acc = StreamAccumulator::new(Operation::ChatCompletions);
        let mut st = UsageStripper::new();
        st.push(input.as_bytes());
        dec.feed(input.as_bytes(), |e| {
            let info = acc.on_event(e.event, e.data);
            st.event(&e, info);
        });
        st.release(dec.settled());
        let mut out = st.take_ready();
        out.extend(st.finish());
        let stripped = chunk.replace(r#","usage":null"#, "");
        let want = format!("data\ndata: {stripped}\n\n");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            format!("{want}{want}")
        );
    }
}
