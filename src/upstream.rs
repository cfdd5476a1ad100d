//! The upstream leg's connections: one pooled hyper client per route.
//!
//! Kept apart from the forwarding stages because everything about *how* we
//! reach an upstream — TLS roots, client certificates, egress proxies, pool
//! and buffer sizes — is configuration of the connection, not of a call, and
//! grows on its own (SPEC §15). A route owns its client, so each upstream has
//! its own pool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The pooled client of one route (rustls with ring; HTTP/2 by ALPN for https).
pub(crate) type Client = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

/// Largest upstream response head (SPEC §8); hyper's read buffer is capped at
/// this, since a head must fit in it whole.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// HTTP/2's limit on a response head: 64 KiB plus 32 bytes for each of up to 100 headers.
const H2_MAX_HEADER_LIST: u32 = (MAX_RESPONSE_HEAD + 32 * 100) as u32;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Most idle connections kept per host.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;

/// Builds a pooled client whose connects give up after `connect_timeout`.
pub(crate) fn client(connect_timeout: Duration) -> Client {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let tls = match tls {
        Ok(t) => t,
        // ring supports the default versions; this cannot fail in practice
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        // hyper grows a connection's read buffer (up to ~400 KiB) whenever a read fills
        // it, and never shrinks it: a pooled connection that once caught up with a burst
        // of chunks kept the bigger buffer, and peak memory crept up round after round of
        // 1,000 streams (issue 6). The cap is the largest head accepted: 8 KiB (nginx's
        // `proxy_buffer_size`) made a 502 of a call the upstream had already run and
        // billed (issue 11), so heads up to 64 KiB pass.
        .http1_max_buf_size(MAX_RESPONSE_HEAD)
        // HTTP/2 counts 32 bytes more per header (RFC 9113 §6.5.2) and defaults to 16 KiB;
        // the exact 64 KiB check on the parsed head is the proxy's (`send.rs`)
        .http2_max_header_list_size(H2_MAX_HEADER_LIST)
        .build(https)
}
