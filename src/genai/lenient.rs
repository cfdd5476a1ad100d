//! Reading JSON as it arrives on the wire, one field at a time.
//!
//! A derived `Deserialize` rejects a whole object for one surprise: a count
//! sent as `2.0`, a number where a string belongs, or the same key twice.
//! Every fact in that object would be lost with it, so a duplicate `"model"`
//! would turn a call into `unknown` and one odd detail would erase the usage.
//! Here each field is read on its own: a value of the wrong type or range
//! loses that field only and is remembered as unusable (telemetry counts it),
//! and a repeated key overwrites the earlier one, as Python's and
//! JavaScript's parsers do, so tokentap reads what the upstream reads.
//! Nothing here builds a `Value` tree: unread members are skipped.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Largest token count believed. No call uses a trillion tokens; a larger
/// number is a bug or an attack, and sums of believed counts cannot overflow.
pub const MAX_COUNT: u64 = 1_000_000_000_000;

/// One field as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Lenient<T> {
    /// Absent or `null`.
    #[default]
    Missing,
    Valid(T),
    /// Present with a value of the wrong type or range.
    Invalid,
}

impl<T> Lenient<T> {
    pub fn ok(self) -> Option<T> {
        match self {
            Lenient::Valid(t) => Some(t),
            _ => None,
        }
    }

    pub fn get(&self) -> Option<&T> {
        match self {
            Lenient::Valid(t) => Some(t),
            _ => None,
        }
    }

    pub fn is_missing(&self) -> bool {
        matches!(self, Lenient::Missing)
    }
}

impl<T: Flaws> Flaws for Lenient<T> {
    fn flawed(&self) -> bool {
        match self {
            Lenient::Missing => false,
            Lenient::Valid(t) => t.flawed(),
            Lenient::Invalid => true,
        }
    }
}

/// Whether a value read leniently had an unusable part that tokentap reads.
pub trait Flaws {
    fn flawed(&self) -> bool {
        false
    }
}

/// How a type is read from whichever JSON value it meets. Each method
/// answers `None` ("not usable") unless the type accepts that kind of value;
/// objects and arrays a type does not accept are skipped.
pub trait FromJson<'de>: Sized {
    fn string(_s: Cow<'de, str>) -> Option<Self> {
        None
    }
    fn unsigned(_n: u64) -> Option<Self> {
        None
    }
    fn negative(_n: i64) -> Option<Self> {
        None
    }
    fn float(_x: f64) -> Option<Self> {
        None
    }
    fn boolean(_b: bool) -> Option<Self> {
        None
    }
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn array<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// A large value kept out of line, so the structs holding it stay small to move: a chunk's
/// `usage` slot is ~600 bytes, moved several times per chunk, and almost always `null`.
impl<'de, T: FromJson<'de>> FromJson<'de> for Box<T> {
    fn string(s: Cow<'de, str>) -> Option<Self> {
        T::string(s).map(Box::new)
    }
    fn unsigned(n: u64) -> Option<Self> {
        T::unsigned(n).map(Box::new)
    }
    fn negative(n: i64) -> Option<Self> {
        T::negative(n).map(Box::new)
    }
    fn float(x: f64) -> Option<Self> {
        T::float(x).map(Box::new)
    }
    fn boolean(b: bool) -> Option<Self> {
        T::boolean(b).map(Box::new)
    }
    fn object<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        Ok(T::object(map)?.map(Box::new))
    }
    fn array<A: SeqAccess<'de>>(seq: A) -> Result<Option<Self>, A::Error> {
        Ok(T::array(seq)?.map(Box::new))
    }
}

impl<T: Flaws> Flaws for Box<T> {
    fn flawed(&self) -> bool {
        (**self).flawed()
    }
}

impl<'de, T: FromJson<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LenientVisitor(PhantomData))
    }
}

struct LenientVisitor<T>(PhantomData<T>);

fn judged<T>(v: Option<T>) -> Lenient<T> {
    v.map_or(Lenient::Invalid, Lenient::Valid)
}

impl<'de, T: FromJson<'de>> Visitor<'de> for LenientVisitor<T> {
    type Value = Lenient<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Lenient::Missing)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Lenient::Missing)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Lenient::deserialize(d)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(judged(T::boolean(b)))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(judged(T::unsigned(n)))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(judged(match u64::try_from(n) {
            Ok(u) => T::unsigned(u),
            Err(_) => T::negative(n),
        }))
    }
    fn visit_f64<E>(self, x: f64) -> Result<Self::Value, E> {
        Ok(judged(T::float(x)))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(judged(T::string(Cow::Borrowed(s))))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(judged(T::string(Cow::Owned(s.to_owned()))))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(judged(T::string(Cow::Owned(s))))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(judged(T::object(map)?))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Ok(judged(T::array(seq)?))
    }
}

/// Reads a whole JSON text whose top level must be an object of `T`.
pub fn object_from_slice<'de, T: FromJson<'de>>(json: &'de [u8]) -> serde_json::Result<T> {
    match serde_json::from_slice::<Lenient<T>>(json)? {
        Lenient::Valid(t) => Ok(t),
        _ => Err(de::Error::custom("not a JSON object")),
    }
}

/// Reads one member of a `Value` (already last-key-wins) leniently.
pub fn from_value<'de, T: FromJson<'de>>(v: Option<&'de serde_json::Value>) -> Lenient<T> {
    v.map_or(Lenient::Missing, |v| {
        Lenient::deserialize(v).unwrap_or(Lenient::Invalid)
    })
}

/// Reads the members of an object into lenient slots; a repeated key
/// overwrites, unknown keys are skipped:
/// `members!(map { "id" => raw.id, "model" => raw.model })`.
macro_rules! members {
    ($map:ident { $($key:literal => $slot:expr),* $(,)? }) => {
        while let Some(key) = $map.next_key::<$crate::genai::lenient::Key<'_>>()? {
            match key.bytes() {
                $(k if k == $key.as_bytes() => $slot = $map.next_value()?,)*
                _ => {
                    $map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
    };
}
pub(crate) use members;

/// A string that borrows from the input when it has no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl Str<'_> {
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Flaws for Str<'_> {}

impl<'de> FromJson<'de> for Str<'de> {
    fn string(s: Cow<'de, str>) -> Option<Self> {
        Some(Str(s))
    }
}

/// An object key, as bytes with its escapes decoded. Keys are only ever compared with known
/// names, so they are not checked for UTF-8 as a `str` would be: that check was a tenth of
/// reading a stream chunk.
pub struct Key<'a>(Cow<'a, [u8]>);

impl Key<'_> {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_bytes<E>(self, b: &'de [u8]) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(b)))
            }
            fn visit_bytes<E>(self, b: &[u8]) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(b.to_owned())))
            }
            fn visit_byte_buf<E>(self, b: Vec<u8>) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(b)))
            }
            // deserializers of already-parsed values (`serde_json::Value`) give strings
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s.as_bytes())))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.as_bytes().to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.into_bytes())))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A token count (or an index): a non-negative integer up to [`MAX_COUNT`],
/// also when written as an integral float (`2.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub u64);

impl Flaws for Count {}

impl FromJson<'_> for Count {
    fn unsigned(n: u64) -> Option<Self> {
        (n <= MAX_COUNT).then_some(Count(n))
    }
    fn float(x: f64) -> Option<Self> {
        // the range check first: it also rejects NaN, which JSON cannot carry anyway
        ((0.0..=MAX_COUNT as f64).contains(&x) && x.fract() == 0.0).then_some(Count(x as u64))
    }
}

/// A signed integer of a request (`max_tokens`, `seed`, `n`), also when
/// written as an integral float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int(pub i64);

impl FromJson<'_> for Int {
    fn unsigned(n: u64) -> Option<Self> {
        i64::try_from(n).ok().map(Int)
    }
    fn negative(n: i64) -> Option<Self> {
        Some(Int(n))
    }
    fn float(x: f64) -> Option<Self> {
        // 2^63 is exactly representable; every integral float below it fits
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        ((-LIMIT..LIMIT).contains(&x) && x.fract() == 0.0).then_some(Int(x as i64))
    }
}

/// Any JSON number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Num(pub f64);

impl FromJson<'_> for Num {
    fn unsigned(n: u64) -> Option<Self> {
        Some(Num(n as f64))
    }
    fn negative(n: i64) -> Option<Self> {
        Some(Num(n as f64))
    }
    fn float(x: f64) -> Option<Self> {
        Some(Num(x))
    }
}

impl FromJson<'_> for bool {
    fn boolean(b: bool) -> Option<Self> {
        Some(b)
    }
}

/// The number of elements of an array (its elements are skipped, not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Len(pub usize);

impl<'de> FromJson<'de> for Len {
    fn array<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut n = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Some(Len(n)))
    }
}

/// An array; elements that are not usable are kept as `Invalid`.
impl<'de, T: FromJson<'de>> FromJson<'de> for Vec<Lenient<T>> {
    fn array<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut v = Vec::new();
        while let Some(item) = seq.next_element::<Lenient<T>>()? {
            v.push(item);
        }
        Ok(Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug)]
    struct Probe<'a> {
        name: Lenient<Str<'a>>,
        count: Lenient<Count>,
        list: Lenient<Vec<Lenient<Count>>>,
    }

    impl<'de> FromJson<'de> for Probe<'de> {
        fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
            let mut p = Probe::default();
            members!(map {
                "name" => p.name,
                "count" => p.count,
                "list" => p.list,
            });
            Ok(Some(p))
        }
    }

    fn probe(json: &str) -> Probe<'_> {
        object_from_slice(json.as_bytes()).expect("an object")
    }

    #[test]
    fn each_field_on_its_own() {
        let p = probe(r#"{"name":"a","count":2.0,"list":[1,-1,"x",3],"other":{"deep":[1,{}]}}"#);
        assert_eq!(p.name.ok().as_deref(), Some("a"));
        assert_eq!(p.count, Lenient::Valid(Count(2)));
        assert_eq!(
            p.list.ok(),
            Some(vec![
                Lenient::Valid(Count(1)),
                Lenient::Invalid,
                Lenient::Invalid,
                Lenient::Valid(Count(3))
            ])
        );
        let p = probe(r#"{"name":5,"count":-1,"list":{"a":1}}"#);
        assert_eq!(
            (p.name, p.count, p.list),
            (Lenient::Invalid, Lenient::Invalid, Lenient::Invalid)
        );
        let p = probe(r#"{"name":null,"count":1.5}"#);
        assert_eq!((p.name, p.count), (Lenient::Missing, Lenient::Invalid));
    }

    #[test]
    fn counts_in_range_only() {
        let c = |s: &str| probe(s).count;
        assert_eq!(
            c(r#"{"count":1000000000000}"#),
            Lenient::Valid(Count(MAX_COUNT))
        );
        assert_eq!(c(r#"{"count":1000000000001}"#), Lenient::Invalid);
        assert_eq!(c(r#"{"count":1e300}"#), Lenient::Invalid);
        assert_eq!(c(r#"{"count":-0.0}"#), Lenient::Valid(Count(0)));
        assert_eq!(c(r#"{"count":18446744073709551615}"#), Lenient::Invalid);
        assert_eq!(c(r#"{"count":true}"#), Lenient::Invalid);
    }

    #[test]
    fn last_key_wins_and_escaped_keys_match() {
        let p = probe(r#"{"name":"a","name":"b","n\u0061me":"c","count":1,"count":"x"}"#);
        assert_eq!(p.name.ok().as_deref(), Some("c"));
        assert_eq!(p.count, Lenient::Invalid);
    }

    #[test]
    fn only_objects_and_sound_json() {
        assert!(object_from_slice::<Probe<'_>>(b"[1]").is_err());
        assert!(object_from_slice::<Probe<'_>>(b"\"s\"").is_err());
        assert!(object_from_slice::<Probe<'_>>(b"{\"name\":").is_err());
        assert!(object_from_slice::<Probe<'_>>(b"{} x").is_err());
    }

    #[test]
    fn keys_match_from_parsed_values_and_boxed_slots_read_as_unboxed() {
        // a `Value` hands keys over as strings, not bytes
        let v: serde_json::Value =
            serde_json::from_str(r#"{"name":"a","count":3,"list":[1]}"#).expect("json");
        let p = from_value::<Probe<'_>>(Some(&v)).ok().expect("an object");
        assert_eq!(p.name.ok().as_deref(), Some("a"));
        assert_eq!(p.count, Lenient::Valid(Count(3)));
        for json in ["7", "-1", "\"x\"", "null", "{}", "[1]", "2.0"] {
            let plain: Lenient<Count> = serde_json::from_str(json).expect("json");
            let boxed: Lenient<Box<Count>> = serde_json::from_str(json).expect("json");
            let unboxed = match boxed {
                Lenient::Valid(b) => Lenient::Valid(*b),
                Lenient::Missing => Lenient::Missing,
                Lenient::Invalid => Lenient::Invalid,
            };
            assert_eq!(plain, unboxed, "{json}");
        }
    }
}
