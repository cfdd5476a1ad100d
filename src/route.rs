//! Choosing where a request goes: the first stage of the request path.
//!
//! Like pingora's `upstream_peer` phase, the choice of upstream is one step
//! that returns a [`Route`]; every later stage reads the route instead of
//! looking at configuration, so adding upstreams (SPEC §9) changes only this
//! file and the configuration that feeds it.

use crate::config::{Config, Upstream};
use crate::genai::provider::Provider;
use crate::upstream::{self, Client};

/// One upstream with its provider name and its own connection pool.
pub(crate) struct Route {
    pub(crate) upstream: Upstream,
    pub(crate) provider: Provider,
    pub(crate) client: Client,
}

impl Route {
    fn new(opts: &upstream::Options, upstream: Upstream) -> Result<Route, String> {
        Ok(Route {
            provider: Provider::for_host(upstream.host()),
            client: upstream::client(opts, &[])?,
            upstream,
        })
    }

    /// The upstream URL for the client's `path_and_query`, under the upstream's prefix.
    pub(crate) fn uri(&self, path_and_query: &str) -> Result<http::Uri, http::uri::InvalidUri> {
        let u = &self.upstream;
        format!("{}://{}{}{path_and_query}", u.scheme, u.authority, u.prefix).parse()
    }
}

/// Every route the proxy knows.
pub(crate) struct Routes {
    default: Route,
}

impl Routes {
    /// The routes of `cfg`, forwarding to `upstream` by default.
    pub(crate) fn new(cfg: &Config, upstream: Upstream) -> Result<Routes, String> {
        let opts = upstream::Options::new(cfg);
        Ok(Routes {
            default: Route::new(&opts, upstream)?,
        })
    }

    /// The route for a request to `path`.
    pub(crate) fn choose(&self, _path: &str) -> &Route {
        &self.default
    }
}
