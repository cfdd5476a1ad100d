//! Reading a URL's query string: the agent's `conversation_id`, a Realtime
//! session's `model` or Azure `deployment`.
//!
//! Clients build query strings with their platform's form encoding
//! (`urllib.parse.urlencode`, `URLSearchParams`): `%XX` escapes, and `+` for
//! a space. One decoder serves every reader, so the agent and the Realtime
//! observer (and the demo) read a parameter the same way.

/// The first value of `name` in `query`, decoded; `Some("")` for `name=` or a bare `name`.
pub fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode(v))
    })
}

/// Form decoding: `%XX` escapes and `+` for a space; a malformed escape stays as it is.
pub fn decode(s: &str) -> String {
    unescape(s, true)
}

/// Percent decoding alone (`+` stays `+`), as W3C baggage values are encoded.
pub fn percent_decode(s: &str) -> String {
    unescape(s, false)
}

fn unescape(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode() {
        assert_eq!(decode("a%20b+c"), "a b c");
        assert_eq!(decode("caf%C3%A9"), "café");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn the_first_matching_parameter_wins() {
        let q = "x=1&model=gpt-4o%2Dmini&model=other&empty=&bare";
        assert_eq!(param(q, "model").as_deref(), Some("gpt-4o-mini"));
        assert_eq!(param(q, "empty").as_deref(), Some(""));
        assert_eq!(param(q, "bare").as_deref(), Some(""));
        assert_eq!(param(q, "mod"), None);
    }
}
