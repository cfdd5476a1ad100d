//! `--route` and `--provider` values (docs/configuration.md, Providers), checked at start.
//!
//! A route that would match nothing, or everything, or climb out of its
//! upstream's prefix is refused here with one line, rather than silently
//! sending traffic somewhere unexpected. Options after the URL are `KEY=VALUE`
//! and an unknown key is an error, so a typo is never ignored.

use super::Upstream;
use crate::tls::CaCerts;

/// One `--route PREFIX=URL[,provider=NAME][,ca=FILE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Whole path segments, starting with `/`, without a trailing slash.
    pub prefix: String,
    pub upstream: Upstream,
    /// `provider=`: overrides the provider inferred from the upstream host.
    pub provider: Option<String>,
    /// `ca=FILE`: CA certificates trusted for this route only (PEM, read at start).
    pub ca: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl RouteSpec {
    pub fn parse(s: &str) -> Result<RouteSpec, String> {
        let (prefix, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not PREFIX=URL[,provider=NAME][,ca=FILE]"))?;
        let prefix = parse_prefix(prefix)?;
        let mut fields = rest.split(',');
        let url = fields.next().unwrap_or_default();
        let upstream = Upstream::parse(url)?;
        let mut provider = None;
        let mut ca = Vec::new();
        for option in fields {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| format!("route {prefix}: option {option:?} is not KEY=VALUE"))?;
            match key {
                "provider" => provider = Some(parse_provider(value)?),
                "ca" => {
                    ca = CaCerts::load(std::path::Path::new(value))
                        .map_err(|e| format!("route {prefix}: ca={value}: {e}"))?
                        .certs;
                }
                other => {
                    return Err(format!(
                        "route {prefix}: unknown option {other:?} (known: provider, ca)"
                    ));
                }
            }
        }
        Ok(RouteSpec {
            prefix,
            upstream,
            provider,
            ca,
        })
    }
}

/// A route prefix: `/` then whole segments; a trailing slash is dropped.
fn parse_prefix(s: &str) -> Result<String, String> {
    let prefix = s.trim_end_matches('/');
    if !s.starts_with('/') {
        return Err(format!("route prefix {s:?} must start with /"));
    }
    if prefix.is_empty() {
        return Err(format!(
            "route prefix {s:?} would match every request (use --upstream for the default)"
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#' | '%' | '\\'))
    {
        return Err(format!("route prefix {s:?}: {c:?} is not allowed"));
    }
    if prefix[1..]
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!(
            "route prefix {s:?}: empty, . and .. segments are not allowed"
        ));
    }
    Ok(prefix.to_owned())
}

/// A provider name for `gen_ai.provider.name` and the `provider` labels.
pub fn parse_provider(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "provider {s:?}: use 1 to 64 letters, digits, '.', '_' or '-' (e.g. groq, azure.ai.openai)"
        ))
    }
}

/// The routes of one `--route` value or of `TOKENTAP_ROUTES` (separated by spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteList(pub Vec<RouteSpec>);

impl RouteList {
    pub fn parse(s: &str) -> Result<RouteList, String> {
        s.split_whitespace()
            .map(RouteSpec::parse)
            .collect::<Result<_, _>>()
            .map(RouteList)
    }
}

/// Refuses two routes with the same prefix (which one is meant?).
pub fn check_routes(routes: &[RouteSpec]) -> Result<(), String> {
    for (i, r) in routes.iter().enumerate() {
        if routes[..i].iter().any(|o| o.prefix == r.prefix) {
            return Err(format!("--route: prefix {} is given twice", r.prefix));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_or_say_why_not() {
        let r = RouteSpec::parse("/groq/=https://api.groq.com/openai,provider=groq").expect("ok");
        assert_eq!(r.prefix, "/groq");
        assert_eq!(r.upstream.prefix, "/openai");
        assert_eq!(r.provider.as_deref(), Some("groq"));
        let r = RouteSpec::parse("/a/b=http://127.0.0.1:9000").expect("ok");
        assert_eq!((r.prefix.as_str(), r.provider), ("/a/b", None));
        for bad in [
            "groq=https://api.groq.com",
            "/groq",
            "/=https://api.groq.com",
            "/groq=ftp://x",
            "/groq=",
            "/g?x=https://api.groq.com",
            "/a//b=https://api.groq.com",
            "/a/../b=https://api.groq.com",
            "/groq=https://api.groq.com,provider=",
            "/groq=https://api.groq.com,provider=a b",
            "/groq=https://api.groq.com,region=eu",
            "/groq=https://api.groq.com,provider",
        ] {
            assert!(RouteSpec::parse(bad).is_err(), "{bad}");
        }
        let l = RouteList::parse("  /a=http://a  /b=http://b,provider=x \n").expect("ok");
        assert_eq!(l.0.len(), 2);
        assert_eq!(RouteList::parse("").expect("empty").0, vec![]);
        let twice = [l.0[0].clone(), l.0[0].clone()];
        assert!(check_routes(&twice).is_err());
        assert!(check_routes(&l.0).is_ok());
    }
}
