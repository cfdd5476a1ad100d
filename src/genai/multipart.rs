//! Reading a few small text fields out of a `multipart/form-data` body.
//!
//! Audio transcriptions and image edits upload a file, so their model (and
//! `stream`, `response_format`) travel as form fields next to megabytes of
//! audio or image bytes. tokentap forwards the body untouched and only needs
//! those few fields, so this is a scanner, not a form parser: it finds the
//! delimiters (the boundary from `Content-Type`), reads each part's
//! `Content-Disposition` name, and keeps the values of the fields asked for.
//! File parts are skipped unread. It is lenient (bare `\n` line ends, quoted
//! or unquoted names, a missing closing delimiter) and bounded (a fixed number
//! of parts, header bytes and value bytes), so a hostile body costs one linear
//! scan and never an allocation proportional to its size.

use memchr::memmem;

/// Most parts looked at; later parts are ignored.
const MAX_PARTS: usize = 256;
/// Most bytes of one part's headers.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Longest field value kept; longer values are ignored (no model name is this long).
const MAX_VALUE_BYTES: usize = 4 * 1024;

/// The boundary of a `multipart/form-data` content type, or `None` for any other type.
///
/// ```
/// use tokentap::genai::multipart::boundary;
/// assert_eq!(boundary("multipart/form-data; boundary=abc"), Some("abc"));
/// assert_eq!(boundary("Multipart/Form-Data; charset=utf-8; boundary=\"a b\""), Some("a b"));
/// assert_eq!(boundary("application/json"), None);
/// ```
pub fn boundary(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let media = params.next()?.trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        // RFC 2046: 1 to 70 characters
        (!v.is_empty() && v.len() <= 70).then_some(v)
    })
}

/// Values of the non-file fields named in `wanted`, in body order (a repeated
/// field appears once per occurrence; callers take the last, as form readers
/// do). Values that are not UTF-8 or longer than a bound are left out.
pub fn text_fields(body: &[u8], boundary: &str, wanted: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let delimiter = [b"--", boundary.as_bytes()].concat();
    let finder = memmem::Finder::new(&delimiter);
    // the first delimiter may start the body or follow a preamble
    let Some(first) = finder.find(body) else {
        return out;
    };
    let mut pos = first + delimiter.len();
    for _ in 0..MAX_PARTS {
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            break; // the closing delimiter
        }
        // the rest of the delimiter line (transport padding, then a line end)
        let Some(eol) = memchr::memchr(b'\n', rest) else {
            break;
        };
        let part_start = pos + eol + 1;
        let part = &body[part_start..];
        // the part ends where the next delimiter line starts (its preceding line end belongs to it)
        let (content_len, next) = match finder.find(part) {
            Some(i) => (i, part_start + i + delimiter.len()),
            None => (part.len(), body.len()),
        };
        if let Some((name, value)) = read_part(&part[..content_len]) {
            if wanted.contains(&name) {
                out.push((name.to_owned(), value.to_owned()));
            }
        }
        if next >= body.len() {
            break;
        }
        pos = next;
    }
    out
}

/// A part's field name and text value, when it is a small non-file field.
fn read_part(part: &[u8]) -> Option<(&str, &str)> {
    let window = &part[..part.len().min(MAX_HEADER_BYTES)];
    let (head_len, sep_len) = match memmem::find(window, b"\r\n\r\n") {
        Some(i) => (i, 4),
        None => (memmem::find(window, b"\n\n")?, 2),
    };
    let head = std::str::from_utf8(&part[..head_len]).ok()?;
    let mut name = None;
    for line in head.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        let mut params = value.split(';').map(str::trim);
        if !params.next()?.eq_ignore_ascii_case("form-data") {
            return None;
        }
        for p in params {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            match k.trim().to_ascii_lowercase().as_str() {
                "name" => name = Some(v),
                // a file's bytes are never read
                "filename" | "filename*" => return None,
                _ => {}
            }
        }
    }
    let name = name?;
    let mut value = &part[head_len + sep_len..];
    // the line end before the next delimiter belongs to the delimiter
    value = value.strip_suffix(b"\n").unwrap_or(value);
    value = value.strip_suffix(b"\r").unwrap_or(value);
    if value.len() > MAX_VALUE_BYTES {
        return None;
    }
    Some((name, std::str::from_utf8(value).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(boundary: &str, parts: &[(&str, Option<&str>, &[u8])], eol: &str) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, file, value) in parts {
            b.extend_from_slice(format!("--{boundary}{eol}").as_bytes());
            match file {
                Some(f) => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"{eol}Content-Type: audio/wav{eol}{eol}").as_bytes(),
                ),
                None => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"{eol}{eol}").as_bytes(),
                ),
            }
            b.extend_from_slice(value);
            b.extend_from_slice(eol.as_bytes());
        }
        b.extend_from_slice(format!("--{boundary}--{eol}").as_bytes());
        b
    }

    const WANT: &[&str] = &["model", "stream", "response_format"];

    #[test]
    fn reads_text_fields_and_skips_files() {
        // the file holds something that looks like a field, and a near-boundary
        let audio: &[u8] =
            b"RIFF\x00\xff--bound\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nevil";
        let body = form(
            "xyzzy",
            &[
                ("file", Some("a.wav"), audio),
                ("model", None, b"gpt-4o-transcribe"),
                ("stream", None, b"true"),
                ("language", None, b"en"),
            ],
            "\r\n",
        );
        assert_eq!(
            text_fields(&body, "xyzzy", WANT),
            vec![
                ("model".to_owned(), "gpt-4o-transcribe".to_owned()),
                ("stream".to_owned(), "true".to_owned()),
            ]
        );
    }

    #[test]
    fn lenient_line_ends_preamble_and_missing_close() {
        let mut body = b"preamble\r\n".to_vec();
        body.extend(form("b", &[("model", None, b"whisper-1")], "\n"));
        assert_eq!(
            text_fields(&body, "b", WANT),
            vec![("model".to_owned(), "whisper-1".to_owned())]
        );
        let cut = b"--b\r\nContent-Disposition: form-data; name=model\r\n\r\ngpt-image-1";
        assert_eq!(
            text_fields(cut, "b", WANT),
            vec![("model".to_owned(), "gpt-image-1".to_owned())]
        );
    }

    #[test]
    fn repeated_fields_keep_their_order() {
        let body = form(
            "b",
            &[
                ("model", None, b"decoy"),
                ("model", None, b"gpt-4o-mini-transcribe"),
            ],
            "\r\n",
        );
        let f = text_fields(&body, "b", WANT);
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].1, "gpt-4o-mini-transcribe");
    }

    #[test]
    fn garbage_is_no_fields_never_a_panic() {
        for body in [
            &b""[..],
            b"--b",
            b"--b\r\n",
            b"--b\r\nContent-Disposition: form-data; name=\"model\"",
            b"--b--",
            b"no delimiter at all",
            b"--b\r\n\r\n\r\n--b--",
            b"--b\r\nContent-Disposition: attachment; name=\"model\"\r\n\r\nx\r\n--b--",
        ] {
            assert!(text_fields(body, "b", WANT).is_empty(), "{body:?}");
        }
        let long = form(
            "b",
            &[("model", None, &[b'm'; MAX_VALUE_BYTES + 1])],
            "\r\n",
        );
        assert!(text_fields(&long, "b", WANT).is_empty());
        let bad_utf8 = form("b", &[("model", None, b"\xff\xfe")], "\r\n");
        assert!(text_fields(&bad_utf8, "b", WANT).is_empty());
    }

    #[test]
    fn boundaries_from_content_types() {
        assert_eq!(
            boundary("multipart/form-data; boundary=----WebKitFormBoundary7MA4"),
            Some("----WebKitFormBoundary7MA4")
        );
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("multipart/form-data; boundary="), None);
        assert_eq!(boundary("multipart/mixed; boundary=x"), None);
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71))),
            None
        );
    }
}
