//! Who made a call: project, organization, key, end user and the caller's
//! chosen baggage — read from what the request already carries.
//!
//! Spend needs an owner, and every request names one in several ways: the
//! `OpenAI-Project` and `OpenAI-Organization` headers, the API key, the
//! body's `safety_identifier`/`user`, and W3C `baggage` set upstream by the
//! caller's own instrumentation. The key itself must never reach telemetry,
//! so it is reduced here to a fingerprint (`key_id`: the first 12 hex
//! characters of its SHA-256) that an operator can recompute with
//! `tokentap key-id` to tell keys apart. Baggage is read only for keys the
//! operator listed: it is caller-controlled and can hold anything.

use std::cell::RefCell;
use std::hash::{BuildHasher, RandomState};

use http::{HeaderMap, HeaderName};

use super::query::percent_decode;

/// Longest value kept for any attribution field (bytes); longer ones are cut
/// at a character boundary, as a span attribute would be anyway.
pub const MAX_VALUE: usize = 256;
/// Most baggage entries read from one request (the header is caller-controlled).
const MAX_BAGGAGE_ENTRIES: usize = 180;

// Named once (a name given as text is parsed on every lookup, ~400 instructions), in
// statics (each use of a `const` name would make and drop a copy).
static OPENAI_PROJECT: HeaderName = HeaderName::from_static("openai-project");
static OPENAI_ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");
static API_KEY: HeaderName = HeaderName::from_static("api-key");

/// What a call says about who made it; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    pub project: Option<String>,
    pub organization: Option<String>,
    /// Fingerprint of the API key ([`key_id`]), never the key.
    pub key_id: Option<String>,
    /// The body's `safety_identifier`, else its `user`.
    pub user: Option<String>,
    /// The allow-listed baggage entries present, in the allow-list's order.
    pub baggage: Vec<(String, String)>,
}

impl Attribution {
    /// Reads the headers: `OpenAI-Project`, `OpenAI-Organization`, the key
    /// (`Authorization: Bearer …`, else `api-key`), and the `baggage` entries
    /// whose keys are in `baggage_keys`. `user` comes from the body, later.
    pub fn from_headers(headers: &HeaderMap, baggage_keys: &[String]) -> Attribution {
        let text = |name: &HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(bounded)
        };
        Attribution {
            project: text(&OPENAI_PROJECT),
            organization: text(&OPENAI_ORGANIZATION),
            key_id: api_key(headers).map(remembered_key_id),
            user: None,
            baggage: if baggage_keys.is_empty() {
                Vec::new()
            } else {
                baggage(headers, baggage_keys)
            },
        }
    }

    /// Sets the end user (from the body), bounded.
    pub fn with_user(mut self, user: Option<&str>) -> Attribution {
        self.user = user.filter(|u| !u.is_empty()).map(bounded);
        self
    }
}

/// The API key a request carries: `Authorization: Bearer …`, else Azure's `api-key`.
pub fn api_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    bearer
        .or_else(|| {
            headers
                .get(&API_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
        .filter(|k| !k.is_empty())
}

/// A key's id: the first 12 hex characters of its SHA-256.
///
/// ```
/// use tokentap::genai::attribution::key_id;
/// // printf %s sk-test | sha256sum → f3abf2a6cc4f…
/// assert_eq!(key_id("sk-test").len(), 12);
/// assert_ne!(key_id("sk-test"), key_id("sk-test2"));
/// ```
pub fn key_id(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    crate::hex::lower(&digest.as_ref()[..6])
}

/// [`key_id`] of `key`, remembered for the key this thread saw last: a sidecar
/// sees one key or a few, and a SHA-256 on every call was ~2 % of a proxied
/// call's instructions (docs/benchmarks.md, load round eight). The key itself is
/// not kept: the memo holds a 64-bit SipHash of it under a key drawn per thread,
/// so another key takes its id only by a 2^-64 chance that no caller can steer.
fn remembered_key_id(key: &str) -> String {
    thread_local! {
        static LAST: RefCell<(RandomState, Option<(u64, String)>)> =
            RefCell::new((RandomState::new(), None));
    }
    let remembered = LAST.try_with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        let (hasher, seen) = &mut *last;
        let hash = hasher.hash_one(key);
        match seen {
            Some((h, id)) if *h == hash => Some(id.clone()),
            _ => {
                let id = key_id(key);
                *seen = Some((hash, id.clone()));
                Some(id)
            }
        }
    });
    // a thread ending (or the memo in use) computes it, as without a memo
    remembered.ok().flatten().unwrap_or_else(|| key_id(key))
}

/// The allow-listed entries of every `baggage` header (W3C: `k=v;props, …`),
/// values percent-decoded; the first occurrence of a key wins.
fn baggage(headers: &HeaderMap, keys: &[String]) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    let entries = headers
        .get_all("baggage")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .take(MAX_BAGGAGE_ENTRIES);
    for entry in entries {
        let member = entry.split(';').next().unwrap_or("");
        let Some((k, v)) = member.split_once('=') else {
            continue;
        };
        let k = k.trim();
        if keys.iter().any(|want| want == k) && !found.iter().any(|(f, _)| f == k) {
            found.push((k.to_owned(), bounded(&percent_decode(v.trim()))));
        }
    }
    found.sort_by_key(|(k, _)| keys.iter().position(|want| want == k));
    found
}

/// One opt-in metric label (`--metric-dimensions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dimension {
    Project,
    Organization,
    KeyId,
    User,
    /// A baggage key (one of `--baggage-keys`).
    Baggage(String),
}

impl Dimension {
    /// Parses one `--metric-dimensions` entry; a baggage key must be one of `baggage_keys`.
    pub fn parse(s: &str, baggage_keys: &[String]) -> Result<Dimension, String> {
        Ok(match s {
            "project" => Dimension::Project,
            "organization" => Dimension::Organization,
            "key_id" => Dimension::KeyId,
            "user" => Dimension::User,
            other if baggage_keys.iter().any(|k| k == other) => {
                Dimension::Baggage(other.to_owned())
            }
            other => {
                return Err(format!(
                    "{other:?} is not project, organization, key_id, user or one of --baggage-keys"
                ));
            }
        })
    }

    /// The Prometheus label: the dimension's name, a baggage key with every
    /// character outside `[a-zA-Z0-9_]` replaced by `_`.
    pub fn label(&self) -> String {
        match self {
            Dimension::Project => "project".to_owned(),
            Dimension::Organization => "organization".to_owned(),
            Dimension::KeyId => "key_id".to_owned(),
            Dimension::User => "user".to_owned(),
            Dimension::Baggage(k) => k
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect(),
        }
    }

    /// This dimension's value in `who`, if the call had one.
    pub fn value<'a>(&self, who: &'a Attribution) -> Option<&'a str> {
        match self {
            Dimension::Project => who.project.as_deref(),
            Dimension::Organization => who.organization.as_deref(),
            Dimension::KeyId => who.key_id.as_deref(),
            Dimension::User => who.user.as_deref(),
            Dimension::Baggage(k) => who
                .baggage
                .iter()
                .find(|(bk, _)| bk == k)
                .map(|(_, v)| v.as_str()),
        }
    }
}

/// `s`, cut to [`MAX_VALUE`] bytes at a character boundary.
fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_VALUE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("valid"));
        }
        h
    }

    #[test]
    fn a_remembered_key_id_is_always_the_id_of_the_key_given() {
        let keys = ["sk-test", "sk-test2", "sk-test2", "sk-test", "", "sk-test"];
        for key in keys {
            assert_eq!(remembered_key_id(key), key_id(key), "{key}");
        }
        // and on another thread, with its own memo
        let other = std::thread::spawn(|| remembered_key_id("sk-test2"))
            .join()
            .expect("thread");
        assert_eq!(other, key_id("sk-test2"));
        assert_eq!(remembered_key_id("sk-test"), "f3abf2a6cc4f");
    }

    #[test]
    fn key_id_is_the_sha256_prefix() {
        // printf %s sk-test | sha256sum
        assert_eq!(key_id("sk-test"), "f3abf2a6cc4f");
        assert_eq!(key_id(""), "e3b0c44298fc");
    }

    #[test]
    fn headers_give_project_organization_and_the_key_fingerprint() {
        let a = Attribution::from_headers(
            &headers(&[
                ("authorization", "Bearer sk-test"),
                ("openai-project", "proj_1"),
                ("openai-organization", "org-9"),
            ]),
            &[],
        );
        assert_eq!(a.project.as_deref(), Some("proj_1"));
        assert_eq!(a.organization.as_deref(), Some("org-9"));
        assert_eq!(a.key_id.as_deref(), Some("f3abf2a6cc4f"));
        let azure = Attribution::from_headers(&headers(&[("api-key", "sk-test")]), &[]);
        assert_eq!(azure.key_id, a.key_id);
        let none = Attribution::from_headers(&headers(&[("authorization", "Basic x")]), &[]);
        assert_eq!(none, Attribution::default());
    }

    #[test]
    fn only_listed_baggage_keys_are_read_in_the_lists_order() {
        let keys = vec!["team".to_owned(), "app.tier".to_owned()];
        let a = Attribution::from_headers(
            &headers(&[
                ("baggage", "app.tier=gold;ttl=3, secret=x"),
                ("baggage", "team=search%20infra,team=other, junk"),
            ]),
            &keys,
        );
        assert_eq!(
            a.baggage,
            [
                ("team".to_owned(), "search infra".to_owned()),
                ("app.tier".to_owned(), "gold".to_owned())
            ]
        );
    }

    #[test]
    fn dimensions_parse_name_their_labels_and_read_their_values() {
        let keys = vec!["app.tier".to_owned()];
        assert!(Dimension::parse("team", &keys).is_err());
        let d = Dimension::parse("app.tier", &keys).expect("listed key");
        assert_eq!(d.label(), "app_tier");
        let who = Attribution {
            baggage: vec![("app.tier".into(), "gold".into())],
            key_id: Some("abc".into()),
            ..Attribution::default()
        };
        assert_eq!(d.value(&who), Some("gold"));
        assert_eq!(Dimension::KeyId.value(&who), Some("abc"));
        assert_eq!(Dimension::Project.value(&who), None);
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_VALUE);
        let a = Attribution::default().with_user(Some(&long));
        let user = a.user.expect("user");
        assert!(user.len() <= MAX_VALUE && user.chars().all(|c| c == 'é'));
    }
}
