//! Identifiers from the wire, cut to size before they reach a span or a log.
//!
//! Model names, ids, paths and error codes come from clients and upstreams;
//! one request with a 1 MiB `model` must not make a 1 MiB span name or log
//! line. The limits (docs/configuration.md) cap them at 256 bytes, lowered by the standard
//! `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT` / `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`.
//! Log fields also lose raw control characters, so a `\n` in an id cannot
//! forge a log line.

use std::borrow::Cow;
use std::sync::LazyLock;

/// The most bytes an identifier keeps.
pub(crate) const MAX_IDENTIFIER: usize = 256;

/// The limit in force: 256, or less when the OTel attribute limits say so.
static LIMIT: LazyLock<usize> = LazyLock::new(|| {
    [
        "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    ]
    .iter()
    .filter_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok())
    .fold(MAX_IDENTIFIER, usize::min)
});

/// `s` cut to the identifier limit, at a character boundary.
pub(crate) fn cut(s: &str) -> Cow<'_, str> {
    cut_to(s, *LIMIT)
}

fn cut_to(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Borrowed(&s[..end])
}

/// `s` cut to the limit, with control characters written as escapes (`\n` → `\\n`).
pub(crate) fn for_log(s: &str) -> Cow<'_, str> {
    let s = cut(s);
    if !s.chars().any(char::is_control) {
        return s;
    }
    Cow::Owned(s.chars().flat_map(char::escape_default).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_cut_at_a_character_boundary() {
        assert_eq!(cut_to("abc", 3), "abc");
        assert_eq!(cut_to("abcd", 3), "abc");
        // 'é' is two bytes: never cut in half
        assert_eq!(cut_to("aé", 2), "a");
        assert_eq!(cut(&"m".repeat(1 << 20)).len(), MAX_IDENTIFIER);
    }

    #[test]
    fn log_fields_lose_control_characters() {
        assert_eq!(for_log("gpt-4o"), "gpt-4o");
        let forged = for_log("x\nINFO fake line\r");
        assert!(!forged.contains('\n') && !forged.contains('\r'), "{forged}");
        assert!(forged.contains("\\n"));
    }
}
