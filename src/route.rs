//! Choosing where a request goes: the first stage of the request path.
//!
//! Like pingora's `upstream_peer` phase, the choice of upstream is one step
//! that returns a [`Chosen`] route and the path to forward; every later stage
//! reads those instead of looking at configuration, so the stages never
//! learn how many upstreams there are (docs/configuration.md, Providers).
//!
//! Prefixes match whole path segments (`/groq` takes `/groq/v1/…` and `/groq`,
//! never `/groqx`), the longest one wins, and it is removed before forwarding,
//! so a client's `OPENAI_BASE_URL=http://tokentap/groq/v1` reaches the route's
//! upstream as `/v1/…`. The route list is small and fixed at start: a linear
//! scan, longest prefix first, beats any index.

use rustls::pki_types::CertificateDer;

use crate::config::{Config, Upstream};
use crate::genai::provider::Provider;
use crate::upstream::{self, Client};

/// One upstream with its provider name and its own connection pool.
pub(crate) struct Route {
    pub(crate) upstream: Upstream,
    pub(crate) provider: Provider,
    pub(crate) client: Client,
    /// HTTP/1.1 only, for WebSocket upgrades (same TLS and egress as `client`).
    pub(crate) upgrade_client: Client,
}

impl Route {
    fn new(
        opts: &upstream::Options,
        upstream: Upstream,
        provider: Option<&str>,
        extra_ca: &[CertificateDer<'static>],
    ) -> Result<Route, String> {
        Ok(Route {
            provider: provider.map_or_else(|| Provider::for_host(upstream.host()), Provider::new),
            client: upstream::client(opts, extra_ca)?,
            upgrade_client: upstream::http1_client(opts, extra_ca)?,
            upstream,
        })
    }

    /// The upstream URL for `path_and_query` (relative to the route), under the upstream's prefix.
    /// Built from the parsed scheme and authority (shared, not copied) and one string for
    /// the path: formatting the whole URL and parsing it again made five allocations a call.
    pub(crate) fn uri(&self, path_and_query: &str) -> Result<http::Uri, http::Error> {
        let u = &self.upstream;
        let mut path = String::with_capacity(u.prefix.len() + path_and_query.len());
        path.push_str(&u.prefix);
        path.push_str(path_and_query);
        http::Uri::builder()
            .scheme(u.scheme.clone())
            .authority(u.authority.clone())
            .path_and_query(path)
            .build()
    }
}

/// The route a request takes and what is forwarded on it.
pub(crate) struct Chosen<'a> {
    pub(crate) route: &'a Route,
    /// The client's path and query with the route's prefix removed (always starting
    /// with `/`): what the upstream receives below its own prefix.
    pub(crate) path_and_query: String,
}

impl Chosen<'_> {
    /// The forwarded path, without the query.
    pub(crate) fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }
}

/// Every route the proxy knows.
pub(crate) struct Routes {
    /// Prefixed routes, longest prefix first.
    prefixed: Vec<(String, Route)>,
    default: Route,
}

impl Routes {
    /// The routes of `cfg` (`--route`s), forwarding everything else to `upstream`.
    pub(crate) fn new(cfg: &Config, upstream: Upstream) -> Result<Routes, String> {
        let opts = upstream::Options::new(cfg);
        let mut prefixed = Vec::with_capacity(cfg.routes.len());
        for r in &cfg.routes {
            let route = Route::new(&opts, r.upstream.clone(), r.provider.as_deref(), &r.ca)?;
            prefixed.push((r.prefix.clone(), route));
        }
        prefixed.sort_by_key(|(p, _): &(String, Route)| std::cmp::Reverse(p.len()));
        Ok(Routes {
            prefixed,
            default: Route::new(&opts, upstream, cfg.provider.as_deref(), &[])?,
        })
    }

    /// The route for a request to `path_and_query`, and what to forward on it.
    pub(crate) fn choose(&self, path_and_query: &str) -> Chosen<'_> {
        let path = path_and_query
            .split_once('?')
            .map_or(path_and_query, |(p, _)| p);
        for (prefix, route) in &self.prefixed {
            if let Some(rest) = path.strip_prefix(prefix.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    let rest = &path_and_query[prefix.len()..];
                    let path_and_query = if rest.starts_with('/') {
                        rest.to_owned()
                    } else {
                        format!("/{rest}")
                    };
                    return Chosen {
                        route,
                        path_and_query,
                    };
                }
            }
        }
        Chosen {
            route: &self.default,
            path_and_query: path_and_query.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteSpec;

    fn routes(specs: &[&str]) -> Routes {
        let mut cfg = Config::for_upstream(Upstream::parse("https://api.openai.com").expect("url"));
        cfg.routes = specs
            .iter()
            .map(|s| RouteSpec::parse(s).expect("route"))
            .collect();
        let up = cfg.upstream.clone();
        Routes::new(&cfg, up).expect("routes")
    }

    fn pick(r: &Routes, pq: &str) -> (String, String, String) {
        let c = r.choose(pq);
        (
            c.route.upstream.to_string(),
            c.path_and_query.clone(),
            c.route.provider.to_string(),
        )
    }

    #[tokio::test]
    async fn whole_segments_longest_prefix_removed() {
        let r = routes(&[
            "/groq=https://api.groq.com/openai",
            "/groq/fast=http://127.0.0.1:9001,provider=vllm",
            "/az=https://myres.openai.azure.com",
        ]);
        let t = |pq| pick(&r, pq);
        assert_eq!(
            t("/groq/v1/chat/completions?x=1"),
            (
                "https://api.groq.com/openai".into(),
                "/v1/chat/completions?x=1".into(),
                "groq".into()
            )
        );
        assert_eq!(
            t("/groq/fast/v1/embeddings"),
            (
                "http://127.0.0.1:9001".into(),
                "/v1/embeddings".into(),
                "vllm".into()
            )
        );
        assert_eq!(t("/groq").1, "/");
        assert_eq!(t("/groq?a=b").1, "/?a=b");
        assert_eq!(t("/groq/").1, "/");
        // not a whole segment: the default route, path untouched
        assert_eq!(
            t("/groqx/v1/models"),
            (
                "https://api.openai.com".into(),
                "/groqx/v1/models".into(),
                "openai".into()
            )
        );
        assert_eq!(t("/groq/fastest/v1").0, "https://api.groq.com/openai");
        assert_eq!(t("/groq/fastest/v1").1, "/fastest/v1");
        // a prefix only counts in the path, not in the query
        assert_eq!(t("/v1/models?p=/groq/x").0, "https://api.openai.com");
        let az = r.choose("/az/openai/deployments/d/chat/completions?api-version=2024-10-21");
        assert_eq!(az.route.provider.as_str(), "azure.ai.openai");
        assert_eq!(az.path(), "/openai/deployments/d/chat/completions");
    }

    #[tokio::test]
    async fn default_route_provider_is_configured_or_inferred() {
        let mut cfg = Config::for_upstream(Upstream::parse("http://127.0.0.1:1").expect("url"));
        cfg.provider = Some("ollama".into());
        let up = cfg.upstream.clone();
        let r = Routes::new(&cfg, up).expect("routes");
        assert_eq!(
            r.choose("/v1/chat/completions").route.provider.as_str(),
            "ollama"
        );
        let cfg = Config::for_upstream(Upstream::parse("https://api.deepseek.com").expect("url"));
        let up = cfg.upstream.clone();
        let r = Routes::new(&cfg, up).expect("routes");
        assert_eq!(
            r.choose("/v1/chat/completions").route.provider.as_str(),
            "deepseek"
        );
    }

    /// The URL built from parts is the one the whole formatted string parses to, and what
    /// that parse refuses is refused too.
    #[tokio::test]
    async fn the_upstream_url_is_the_formatted_one() {
        let r = routes(&[
            "/groq=https://api.groq.com/openai",
            "/l=http://127.0.0.1:9001",
        ]);
        for pq in [
            "/groq/v1/chat/completions?x=1&y=%20",
            "/groq",
            "/l/v1/embeddings",
            "/l//double//slash",
            "/v1/models?p=/groq/x",
            "/v1/a%2Fb;c=d",
            "/groq/v1/with space",
            "/v1/\u{7f}",
        ] {
            let c = r.choose(pq);
            let u = &c.route.upstream;
            let formatted = format!(
                "{}://{}{}{}",
                u.scheme, u.authority, u.prefix, c.path_and_query
            )
            .parse::<http::Uri>();
            let built = c.route.uri(&c.path_and_query);
            match (formatted, built) {
                (Ok(f), Ok(b)) => assert_eq!(f, b, "{pq}"),
                (Err(_), Err(_)) => {}
                (f, b) => panic!("{pq}: formatted {f:?}, built {b:?}"),
            }
        }
    }
}
