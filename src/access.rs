//! `--access-token`: who may use the agent and the live view.
//!
//! The agent spends the operator's key and the live view shows every call,
//! so once a token is configured both need it; `/health`, `/metrics` and
//! proxied traffic (which carries the caller's own key) never do. Browsers
//! can't set headers on a page load, so the token is also accepted from the
//! `tokentap_token` cookie the page sets after `?token=`.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::config::Secret;
use crate::proxy::{ResponseBody, full_response};

/// The cookie the live view keeps the token in.
pub(crate) const COOKIE: &str = "tokentap_token";

/// The configured token, if any.
#[derive(Clone, Default)]
pub(crate) struct Access {
    token: Option<Secret>,
}

impl Access {
    pub(crate) fn new(token: Option<Secret>) -> Access {
        Access { token }
    }

    /// True when no token is configured, or `headers` carry it as a bearer
    /// token or in the live view's cookie.
    pub(crate) fn permits(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let want = token.expose().as_bytes();
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer ").map(str::trim));
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .map(crate::genai::query::decode);
        { bearer }.any(|given| same(given.as_bytes(), want)) || { cookies }
            .any(|given| same(given.as_bytes(), want))
    }

    /// True when a token is configured and `given` is it (the live view's `?token=`).
    pub(crate) fn is(&self, given: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| same(given.as_bytes(), t.expose().as_bytes()))
    }
}

/// `token` as a cookie value: a token may hold `;`, `,` or `"`, which a
/// cookie can't, so everything but letters, digits and `-._~` is `%XX`.
pub(crate) fn cookie_value(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `401` for a request without the token (FastAPI's `detail` shape, like the agent's errors).
pub(crate) fn unauthorized() -> Response<ResponseBody> {
    let mut resp = full_response(
        StatusCode::UNAUTHORIZED,
        "application/json",
        Bytes::from_static(
            br#"{"detail":"missing or invalid access token (Authorization: Bearer <token>)"}"#,
        ),
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).expect("valid"));
        }
        h
    }

    #[test]
    fn without_a_token_everything_is_permitted() {
        assert!(Access::new(None).permits(&HeaderMap::new()));
    }

    #[test]
    fn the_token_is_accepted_as_bearer_or_cookie_and_nothing_else() {
        let a = Access::new(Some(Secret::new("s3cret")));
        assert!(a.permits(&headers(&[(header::AUTHORIZATION, "Bearer s3cret")])));
        assert!(a.permits(&headers(&[(header::COOKIE, "x=1; tokentap_token=s3cret")])));
        assert!(!a.permits(&HeaderMap::new()));
        assert!(!a.permits(&headers(&[(header::AUTHORIZATION, "Bearer s3cre")])));
        assert!(!a.permits(&headers(&[(header::AUTHORIZATION, "Bearer s3cret2")])));
        assert!(!a.permits(&headers(&[(header::AUTHORIZATION, "Basic s3cret")])));
        assert!(!a.permits(&headers(&[(header::COOKIE, "tokentap_tokenx=s3cret")])));
    }

    #[test]
    fn a_token_with_cookie_separators_survives_the_cookie() {
        let token = r#"a;b,c"d%e+f"#;
        let a = Access::new(Some(Secret::new(token)));
        let cookie = format!("{COOKIE}={}", cookie_value(token));
        assert!(!cookie_value(token).contains([';', ',', '"', '+']));
        assert!(a.permits(&headers(&[(header::COOKIE, &cookie)])));
        assert!(a.is(token) && !a.is("a;b"));
        assert!(!Access::new(None).is(""));
    }
}
