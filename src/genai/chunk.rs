//! What one chat or completions stream chunk says, as telemetry reads it.
//!
//! Chunks are deserialised into borrowed structs that skip everything but what
//! telemetry needs (no `Value` tree per chunk). The chunk's `usage` is also located
//! in its text, so the usage-injection cut need not walk the chunk a second time.

use serde::de::{self, MapAccess};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::lenient::{Count, FromJson, Lenient, Str, members, object_from_slice};
use super::response::RawUsage;

/// One chunk as telemetry reads it; `U` is how its `usage` is kept.
#[derive(Default)]
pub(super) struct Chunk<'a, U = Usage> {
    pub(super) id: Lenient<Str<'a>>,
    pub(super) model: Lenient<Str<'a>>,
    pub(super) system_fingerprint: Lenient<Str<'a>>,
    pub(super) service_tier: Lenient<Str<'a>>,
    pub(super) choices: Lenient<Vec<Lenient<Choice<'a>>>>,
    pub(super) usage: U,
    pub(super) error: Option<Value>,
}

pub(super) type Usage = Lenient<Box<RawUsage>>;

/// `usage` read as it would be in place, and the text it was read from.
#[derive(Default)]
struct Located<'a> {
    raw: Option<&'a RawValue>,
    usage: Usage,
}

impl<'de> Deserialize<'de> for Located<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&RawValue>::deserialize(d)?;
        // an error here fails the chunk, as it did when the value was read in place
        let usage = serde_json::from_str(raw.get()).map_err(de::Error::custom)?;
        Ok(Located {
            raw: Some(raw),
            usage,
        })
    }
}

/// The chunk text a chunk read from `choices` on is given to the parser with.
pub(super) const FROM_CHOICES: &[u8] = br#"{"choices":"#;

/// Reads a chunk's `json`, and where its (last) `usage` value is written in it.
///
/// The borrowed capture of `usage` needs its text to be UTF-8 throughout, which reading
/// it in place did not (members skipped are not checked): a chunk that fails that way is
/// read again as before, without the position.
pub(super) fn read(json: &[u8]) -> Option<(Chunk<'_>, Option<(usize, usize)>)> {
    match object_from_slice::<Chunk<'_, Located<'_>>>(json) {
        Ok(c) => {
            let at = c.usage.raw.and_then(|r| span_in(json, r.get().as_bytes()));
            let usage = c.usage.usage;
            let c = Chunk {
                id: c.id,
                model: c.model,
                system_fingerprint: c.system_fingerprint,
                service_tier: c.service_tier,
                choices: c.choices,
                usage,
                error: c.error,
            };
            Some((c, at))
        }
        Err(_) => Some((object_from_slice(json).ok()?, None)),
    }
}

/// Where `inner` (a slice of `outer`) lies in it.
fn span_in(outer: &[u8], inner: &[u8]) -> Option<(usize, usize)> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some((start, end))
}

impl<'de, U: Default + Deserialize<'de>> FromJson<'de> for Chunk<'de, U> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut c = Chunk::<U>::default();
        // every member named here is in `chunk_shape::READ` (a member not read may vary)
        members!(map {
            "id" => c.id,
            "model" => c.model,
            "system_fingerprint" => c.system_fingerprint,
            "service_tier" => c.service_tier,
            "choices" => c.choices,
            "usage" => c.usage,
            "error" => c.error,
        });
        Ok(Some(c))
    }
}

#[derive(Default)]
pub(super) struct Choice<'a> {
    pub(super) index: Lenient<Count>,
    pub(super) finish_reason: Lenient<Str<'a>>,
    pub(super) delta: Lenient<Delta<'a>>,
    /// Legacy completions carry text here.
    pub(super) text: Lenient<Str<'a>>,
}

impl<'de> FromJson<'de> for Choice<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut c = Choice::default();
        members!(map {
            "index" => c.index,
            "finish_reason" => c.finish_reason,
            "delta" => c.delta,
            "text" => c.text,
        });
        Ok(Some(c))
    }
}

#[derive(Default)]
pub(super) struct Delta<'a> {
    pub(super) content: Lenient<Str<'a>>,
    pub(super) refusal: Lenient<Str<'a>>,
    pub(super) tool_calls: Lenient<Vec<Lenient<ToolCallDelta<'a>>>>,
}

impl<'de> FromJson<'de> for Delta<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut d = Delta::default();
        members!(map {
            "content" => d.content,
            "refusal" => d.refusal,
            "tool_calls" => d.tool_calls,
        });
        Ok(Some(d))
    }
}

#[derive(Default)]
pub(super) struct ToolCallDelta<'a> {
    pub(super) index: Lenient<Count>,
    pub(super) id: Lenient<Str<'a>>,
    pub(super) function: Lenient<FunctionDelta<'a>>,
}

impl<'de> FromJson<'de> for ToolCallDelta<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut t = ToolCallDelta::default();
        members!(map {
            "index" => t.index,
            "id" => t.id,
            "function" => t.function,
        });
        Ok(Some(t))
    }
}

#[derive(Default)]
pub(super) struct FunctionDelta<'a> {
    pub(super) name: Lenient<Str<'a>>,
    pub(super) arguments: Lenient<Str<'a>>,
}

impl<'de> FromJson<'de> for FunctionDelta<'de> {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut f = FunctionDelta::default();
        members!(map {
            "name" => f.name,
            "arguments" => f.arguments,
        });
        Ok(Some(f))
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::Operation;
    use super::super::stream::StreamAccumulator;

    #[test]
    fn a_usage_the_parser_rejects_fails_the_chunk_as_when_read_in_place() {
        // a number out of range, a lone surrogate: not readable in place, so not readable now
        for usage in [r#"{"prompt_tokens":1e400}"#, r#"{"total_tokens":"\ud800"}"#] {
            let chunk = format!(
                r#"{{"id":"c","model":"m","choices":[{{"index":0,"delta":{{"content":"hi"}},"finish_reason":"stop"}}],"usage":{usage}}}"#
            );
            let mut acc = StreamAccumulator::new(Operation::ChatCompletions);
            let info = acc.on_event(None, chunk.as_bytes());
            assert!(info.invalid, "{chunk}");
            assert_eq!(acc.invalid_events(), 1);
            assert_eq!(acc.facts().model, None, "nothing of the chunk is taken");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_in_a_skipped_usage_member_do_not_lose_the_usage() {
        let chunk = b"{\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3,\"x\":\"\xff\"}}";
        let mut acc = StreamAccumulator::new(Operation::ChatCompletions);
        let info = acc.on_event(None, chunk);
        assert!(!info.invalid && info.usage_only);
        assert_eq!(acc.facts().usage.map(|u| u.total_tokens), Some(3));
    }
}
