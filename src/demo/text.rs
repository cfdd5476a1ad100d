//! Text generation: the demo's replies and token counts, a pure function of the request.
//!
//! A "token" here is a word with the whitespace after it, so counts can be
//! checked by eye and a test can predict usage without a tokenizer; the request
//! hash (FNV-1a, stable across platforms and Rust versions) picks the reply, so
//! the same request always gets the same bytes.

use serde_json::Value;

/// Reply bodies; every one carries at least one multi-byte UTF-8 character so
/// that streamed text exercises UTF-8 handling across chunk boundaries.
const SENTENCES: &[&str] = &[
    "Every request leaves a trace — latency, tokens and cost — so a slow call stops being a mystery and becomes a span you can read.",
    "Metrics tell you that something changed, traces tell you where, and logs tell you why; together they make for a café-quiet on-call shift.",
    "A token counted at the proxy is a token you can budget, alert on and explain to finance → no spreadsheet archaeology required.",
    "Percentiles matter more than averages: the p99 is where users live when the model is busy, so watch it closely… and often.",
    "Streaming feels faster because the first token arrives early; measuring time-to-first-token separately keeps that impression honest — naïve averages hide it.",
    "Cached prompt tokens cost less, so a dashboard showing the cache hit ratio often pays for itself within a week — sometimes sooner.",
    "Sampling keeps tracing affordable, but errors and slow requests deserve to be kept every time; that is the résumé of a good tail-based policy.",
    "Good observability is boring: the graphs are flat, the alerts are quiet and the engineer on call finishes a crème brûlée in peace.",
];

/// One of the reply sentences, picked by `hash` (transcripts use them).
pub(super) fn sentence(hash: u64) -> &'static str {
    let pick = (mix(hash) as usize) % SENTENCES.len();
    SENTENCES.get(pick).copied().unwrap_or_default()
}

/// Argument fragments streamed for the canned weather tool call.
const TOOL_ARGUMENT_PIECES: &[&str] = &["{\"", "location", "\":\"", "Madrid", "\"}"];

/// FNV-1a, 64 bit: tiny, stable across platforms and Rust versions.
#[derive(Clone, Copy)]
pub(super) struct Fnv(u64);

impl Fnv {
    pub(super) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(super) fn bytes(mut self, data: &[u8]) -> Self {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub(super) fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    pub(super) fn finish(self) -> u64 {
        self.0
    }
}

/// splitmix64 finaliser: spreads the bits of a hash (or a hash plus a salt).
pub(super) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Number of whitespace-separated words; same result as `split_whitespace().count()`
/// but with a byte-level fast path, since prompts can be tens of megabytes.
pub(super) fn words(text: &str) -> u64 {
    let mut count = 0;
    let mut in_word = false;
    for (i, &b) in text.as_bytes().iter().enumerate() {
        let space = if b.is_ascii() {
            matches!(b, b'\t'..=b'\r' | b' ')
        } else if b >= 0xc0 {
            // Lead byte of a multi-byte character: classify the whole character.
            text.get(i..)
                .and_then(|rest| rest.chars().next())
                .is_some_and(char::is_whitespace)
        } else {
            // Continuation byte: belongs to the character already classified.
            continue;
        };
        if space {
            in_word = false;
        } else if !in_word {
            in_word = true;
            count += 1;
        }
    }
    count
}

/// Splits text into "tokens": each word together with the whitespace after it.
pub(super) fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut after_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            after_space = true;
        } else if after_space {
            out.push(text[start..i].to_owned());
            start = i;
            after_space = false;
        }
    }
    if start < text.len() {
        out.push(text[start..].to_owned());
    }
    out
}

/// The text of a message `content`: a string, or the text parts concatenated.
pub(super) fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| match part {
                Value::String(s) => Some(s.as_str()),
                Value::Object(part) => part.get("text").and_then(Value::as_str),
                _ => None,
            })
            .collect(),
        _ => String::new(),
    }
}

/// Accumulates the prompt: the request hash (model + message contents),
/// prompt tokens (3 + per message 4 + words) and the last user message.
pub(super) struct Prompt {
    fnv: Fnv,
    pub(super) tokens: u64,
    pub(super) last_user: String,
    pub(super) last_user_words: u64,
}

impl Prompt {
    pub(super) fn new(model: &str) -> Self {
        Self {
            fnv: Fnv::new().str(model),
            tokens: 3,
            last_user: String::new(),
            last_user_words: 0,
        }
    }

    pub(super) fn message(&mut self, role: &str, text: String) {
        let count = words(&text);
        self.fnv = self.fnv.str(&text);
        self.tokens += 4 + count;
        if role == "user" {
            self.last_user = text;
            self.last_user_words = count;
        }
    }

    pub(super) fn hash(&self) -> u64 {
        self.fnv.finish()
    }
}

/// One generated choice.
pub(super) struct Generation {
    pub(super) pieces: Vec<String>,
    pub(super) finish_reason: &'static str,
    pub(super) tool_call: Option<ToolCallInfo>,
}

pub(super) struct ToolCallInfo {
    pub(super) id: String,
    pub(super) name: String,
}

impl Generation {
    /// "You said N words. " and one of the canned sentences, picked by hash and choice.
    pub(super) fn text(said: u64, hash: u64, choice: u32, limit: Option<usize>) -> Self {
        let noun = if said == 1 { "word" } else { "words" };
        let pick = (mix(hash) as usize).wrapping_add(choice as usize) % SENTENCES.len();
        let sentence = SENTENCES.get(pick).copied().unwrap_or_default();
        let reply = format!("You said {said} {noun}. {sentence}");
        Self::limited(pieces(&reply), "stop", None, limit)
    }

    pub(super) fn tool(name: &str, hash: u64, choice: u32, limit: Option<usize>) -> Self {
        let salt = mix(hash ^ 0x7f4a_11c0) ^ u64::from(choice);
        let info = ToolCallInfo {
            id: format!("call_demo{:016x}", mix(salt)),
            name: name.to_owned(),
        };
        let args = TOOL_ARGUMENT_PIECES
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        Self::limited(args, "tool_calls", Some(info), limit)
    }

    fn limited(
        mut pieces: Vec<String>,
        finish_reason: &'static str,
        tool_call: Option<ToolCallInfo>,
        limit: Option<usize>,
    ) -> Self {
        let truncated = limit.is_some_and(|max| max < pieces.len());
        if let Some(max) = limit {
            pieces.truncate(max);
        }
        Self {
            pieces,
            finish_reason: if truncated { "length" } else { finish_reason },
            tool_call,
        }
    }

    pub(super) fn text_so_far(&self) -> String {
        self.pieces.concat()
    }

    pub(super) fn tokens(&self) -> u64 {
        self.pieces.len() as u64
    }
}

pub(super) fn cached_tokens(prompt_tokens: u64) -> u64 {
    if prompt_tokens >= 1024 {
        prompt_tokens / 2 / 128 * 128
    } else {
        0
    }
}

pub(super) fn reasoning_tokens(model: &str, completion_tokens: u64) -> u64 {
    if model.starts_with('o') || model.starts_with("gpt-5") {
        completion_tokens / 4
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(Fnv::new().finish(), 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv::new().str("a").finish(), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Fnv::new().str("foobar").finish(), 0x85944171f73967e8);
    }

    #[test]
    fn every_sentence_gives_a_reply_of_15_to_40_words_with_utf8() {
        for i in 0..SENTENCES.len() as u32 {
            let g = Generation::text(3, 0, i, None);
            let text = g.text_so_far();
            assert!((15..=40).contains(&g.pieces.len()), "{text}");
            assert!(!text.is_ascii(), "{text}");
        }
        assert_eq!(pieces("Hello  world.\n"), ["Hello  ", "world.\n"]);
    }

    #[test]
    fn word_count_matches_split_whitespace() {
        for text in [
            "",
            "   ",
            "one",
            " one  two\tthree\nfour\u{0b}five\r\n",
            "café — naïve\u{a0}x\u{3000}y\u{2028}z\u{85}w 日本語 テキスト",
            "\u{2003}lead and trail\u{2003}",
        ] {
            assert_eq!(
                words(text),
                text.split_whitespace().count() as u64,
                "{text:?}"
            );
        }
    }
}
