//! A Realtime session's repeated delta events, read once per session.
//!
//! A turn's deltas are the same bytes event after event but for their strings:
//! `{"type":"response.output_text.delta","event_id":"…","response_id":"…",
//! "item_id":"…","output_index":0,"content_index":0,"delta":"…"}`. Each was read
//! for its `type` and proven to be JSON (~2.8k of the ~4.4k instructions observing
//! a frame cost, issue 14). So once a delta has been read, it is kept as fixed
//! bytes around the string and integer values of its top-level members other than
//! `type` ([`super::shape`]); a later event made of exactly those bytes around plain
//! strings and integers is a delta too, and is valid JSON, so nothing is read or
//! proven. A
//! member whose name is escaped keeps its value fixed (the name could spell
//! `type`). Two shapes are kept, for sessions that interleave two kinds of delta
//! (audio and its transcript).

use super::realtime::Event;
use super::scan::{Members, skip_ws};
use super::shape::{MAX_SLOTS, Miss, Shape, value_slot};

/// Shapes learnt per session: one whose deltas keep changing stops trying.
const MAX_LEARNT: u8 = 8;

/// A session's repeated delta shapes; see the module docs.
#[derive(Debug, Default)]
pub struct DeltaShapes {
    shapes: [Shape; 2],
    /// Which shape the next one learnt replaces.
    next: usize,
    learnt: u8,
    /// Events read here (tests check the path is taken).
    #[cfg(test)]
    pub hits: std::cell::Cell<usize>,
}

impl DeltaShapes {
    /// `Event::OutputDelta` when `text` is a kept delta around plain slots; else why not.
    pub fn read(&self, text: &[u8]) -> Result<Event, Miss> {
        let mut miss = Miss::Other;
        for shape in &self.shapes {
            match shape.plain(text) {
                Ok(_) => {
                    #[cfg(test)]
                    self.hits.set(self.hits.get() + 1);
                    return Ok(Event::OutputDelta);
                }
                Err(Miss::InShape) => miss = Miss::InShape,
                Err(Miss::Other) => {}
            }
        }
        Err(miss)
    }

    /// After `text` was read whole as `event`: keeps a delta's shape (in place of the
    /// older one). Called only for a text [`DeltaShapes::read`] missed as
    /// [`Miss::Other`] (one in a kept shape leaves it as it is).
    pub fn learn(&mut self, text: &[u8], event: &Event) {
        if *event != Event::OutputDelta || self.learnt >= MAX_LEARNT {
            return;
        }
        let Some(members) = Members::of(text, skip_ws(text, 0)) else {
            return;
        };
        let mut slots = Vec::new();
        for (key, m) in members {
            let Some(key) = key else { return };
            if key == b"type" || key.contains(&b'\\') || slots.len() == MAX_SLOTS {
                continue;
            }
            slots.extend(value_slot(text, &m, true));
        }
        // counted kept or not: a session whose deltas never repeat stops trying
        self.learnt += 1;
        if self.shapes[self.next].keep(text, &slots) {
            self.next = 1 - self.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn delta(kind: &str, id: &str, text: &str) -> String {
        format!(
            r#"{{"type":"{kind}","event_id":{},"response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":{}}}"#,
            serde_json::to_string(id).expect("json"),
            serde_json::to_string(text).expect("json"),
        )
    }

    fn learnt(texts: &[String]) -> DeltaShapes {
        let mut d = DeltaShapes::default();
        // as the observer does: a text read or in a kept shape teaches nothing
        for t in texts {
            let e = Event::parse(t.as_bytes()).expect("an event");
            if d.read(t.as_bytes()) == Err(Miss::Other) {
                d.learn(t.as_bytes(), &e);
            }
        }
        d
    }

    #[test]
    fn two_kinds_of_delta_are_kept_and_nothing_else_is_read() {
        let text = "response.output_text.delta";
        let audio = "response.output_audio.delta";
        let d = learnt(&[delta(text, "e1", "Hi"), delta(audio, "e2", "AAAA")]);
        for t in [
            delta(text, "event_99", "more text"),
            delta(audio, "e3", "QUJD+/=="),
        ] {
            assert_eq!(d.read(t.as_bytes()).ok(), Some(Event::OutputDelta), "{t}");
        }
        // another type, an escape, a later `type`, an added member, not JSON at the end
        for t in [
            delta("response.done", "e4", "x"),
            delta(text, "e4", "a\"b"),
            delta(text, "e4", "x").replacen(r#""delta""#, r#""type":"error","delta""#, 1),
            delta(text, "e4", "x").replacen('}', r#","extra":1}"#, 1),
            delta(text, "e4", "x") + "}",
        ] {
            assert_eq!(d.read(t.as_bytes()).ok(), None, "{t}");
        }
        // a name that could spell `type` keeps its value: no slot there
        let escaped = r#"{"t\u0079pe":"response.text.delta","delta":"x"}"#;
        let d = learnt(&[escaped.to_owned()]);
        assert_eq!(
            Event::parse(escaped.as_bytes()).ok(),
            Some(Event::OutputDelta)
        );
        let other = escaped.replace("response.text.delta", "response.done");
        assert_eq!(d.read(other.as_bytes()).ok(), None);
        // integers (a counter, a timestamp) may change too; a leading zero is not JSON
        let numbered = |n: &str| format!(r#"{{"type":"{text}","t_ns":{n},"delta":"x"}}"#);
        let d = learnt(&[numbered("1")]);
        assert_eq!(
            d.read(numbered("1764638400123456789").as_bytes()).ok(),
            Some(Event::OutputDelta)
        );
        for n in ["012", "-1", "1.5", "\"1\""] {
            assert_eq!(d.read(numbered(n).as_bytes()).ok(), None, "{n}");
        }
        // only deltas teach a shape
        let d = learnt(&[r#"{"type":"response.created","response":{"id":"r"}}"#.to_owned()]);
        assert!(d.shapes.iter().all(Shape::is_empty));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any delta text and event id: read here exactly when both are plain, and then
        /// as `Event::parse` reads the event.
        #[test]
        fn any_delta_is_read_as_the_parser_reads_it(text in any::<String>(), id in any::<String>()) {
            let kind = "response.output_text.delta";
            let d = learnt(&[delta(kind, "e0", "x")]);
            let t = delta(kind, &id, &text);
            let plain = |s: &str| serde_json::to_string(s).expect("json").len() == s.len() + 2;
            let read = d.read(t.as_bytes()).ok();
            prop_assert_eq!(read.is_some(), plain(&text) && plain(&id));
            if let Some(e) = read {
                prop_assert_eq!(Some(e), Event::parse(t.as_bytes()).ok());
            }
        }
    }
}
