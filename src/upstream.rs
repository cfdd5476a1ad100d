//! The upstream leg's connections: one pooled hyper client per route.
//!
//! Kept apart from the forwarding stages because everything about *how* we
//! reach an upstream — TLS roots, client certificates, egress proxies, pool
//! and buffer sizes — is configuration of the connection, not of a call, and
//! grows on its own (docs/configuration.md). A route owns its client, so each upstream has
//! its own pool (and may trust its own CA).

mod egress;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use hyper::upgrade::Upgraded;
use hyper_util::client::legacy::ResponseFuture;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

use crate::config::Config;
use crate::tls::{self, ClientIdentity};

pub(crate) use egress::proxy_failure;

type Connector = hyper_rustls::HttpsConnector<egress::Egress>;

/// The pooled client of one route (rustls with ring; HTTP/2 by ALPN for https).
#[derive(Clone)]
pub(crate) struct Client {
    inner: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
    proxies: Option<Arc<Matcher>>,
    /// Without a client certificate: when an upstream last asked for one.
    cert_asked: Option<Arc<tls::UnansweredCertRequests>>,
}

impl Client {
    /// Sends `req`; a plain-HTTP request through a proxy carries the proxy's credentials.
    pub(crate) fn request(&self, mut req: Request<Full<Bytes>>) -> ResponseFuture {
        if req.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
            let auth = self
                .proxies
                .as_ref()
                .and_then(|m| m.intercept(req.uri()))
                .and_then(|p| p.basic_auth().cloned());
            if let Some(a) = auth {
                req.headers_mut().insert(header::PROXY_AUTHORIZATION, a);
            }
        }
        self.inner.request(req)
    }

    /// True when an upstream asked for a client certificate in the last
    /// `window` and none is configured.
    pub(crate) fn client_cert_wanted(&self, window: Duration) -> bool {
        self.cert_asked.as_ref().is_some_and(|a| a.within(window))
    }
}

/// An upgraded upstream connection, unwrapped as far as its type allows.
pub(crate) enum UpgradedIo {
    /// Plain TCP, with the bytes hyper had read past the `101`.
    Tcp(TcpStream, Bytes),
    /// TLS (or a proxy tunnel's TLS), with those bytes.
    Tls(
        Box<TokioIo<hyper_rustls::MaybeHttpsStream<egress::Conn>>>,
        Bytes,
    ),
    /// A connection of another kind, as hyper hands it over.
    Other(Upgraded),
}

/// The socket under an upgraded upstream connection, when it is a plain one.
pub(crate) fn upgraded_socket(up: Upgraded) -> UpgradedIo {
    match up.downcast::<hyper_rustls::MaybeHttpsStream<egress::Conn>>() {
        Ok(p) => match p.io {
            hyper_rustls::MaybeHttpsStream::Http(conn) => {
                UpgradedIo::Tcp(conn.into_tcp(), p.read_buf)
            }
            tls => UpgradedIo::Tls(Box::new(TokioIo::new(tls)), p.read_buf),
        },
        Err(up) => UpgradedIo::Other(up),
    }
}

/// How every route reaches its upstream, built once from [`Config`].
#[derive(Clone)]
pub(crate) struct Options {
    pub(crate) connect_timeout: Duration,
    /// `--upstream-ca`: trusted by every route, besides Mozilla's roots and the system store.
    pub(crate) ca: Vec<CertificateDer<'static>>,
    /// `--upstream-client-cert` / `--upstream-client-key`.
    pub(crate) identity: Option<ClientIdentity>,
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`; never for the built-in demo upstream.
    pub(crate) proxies: Option<Arc<Matcher>>,
}

impl Options {
    pub(crate) fn new(cfg: &Config) -> Options {
        Options {
            connect_timeout: cfg.connect_timeout,
            ca: cfg
                .upstream_ca
                .as_ref()
                .map(|c| c.certs.clone())
                .unwrap_or_default(),
            identity: cfg.upstream_identity.clone(),
            proxies: if cfg.demo {
                None
            } else {
                cfg.egress_proxy.clone()
            },
        }
    }
}

/// Largest upstream response head (docs/configuration.md, Limits); hyper's read buffer is capped at
/// this, since a head must fit in it whole.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// HTTP/2's limit on a response head: 64 KiB plus 32 bytes for each of up to 100 headers.
const H2_MAX_HEADER_LIST: u32 = (MAX_RESPONSE_HEAD + 32 * 100) as u32;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Most idle connections kept per host.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;

/// Builds a pooled client for `opts`, trusting `extra_ca` (a route's own CA) too.
pub(crate) fn client(
    opts: &Options,
    extra_ca: &[CertificateDer<'static>],
) -> Result<Client, String> {
    build(opts, extra_ca, true)
}

/// Like [`client`], offering only HTTP/1.1 by ALPN: a WebSocket upgrade needs
/// HTTP/1.1's `Upgrade`, which an h2 connection cannot carry.
pub(crate) fn http1_client(
    opts: &Options,
    extra_ca: &[CertificateDer<'static>],
) -> Result<Client, String> {
    build(opts, extra_ca, false)
}

fn build(
    opts: &Options,
    extra_ca: &[CertificateDer<'static>],
    http2: bool,
) -> Result<Client, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(opts.connect_timeout));
    let mut ca = opts.ca.clone();
    ca.extend(extra_ca.iter().cloned());
    // ALPN (h2, http/1.1) is set by the connector builder below
    let mut tls = tls::client_config(&ca, opts.identity.as_ref(), Vec::new())?;
    let cert_asked = opts.identity.is_none().then(|| {
        let asked = Arc::new(tls::UnansweredCertRequests::default());
        tls.client_auth_cert_resolver = asked.clone();
        asked
    });
    let egress = egress::Egress {
        http,
        proxies: opts.proxies.clone(),
        connect_timeout: opts.connect_timeout,
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if http2 {
        https.enable_http1().enable_http2().wrap_connector(egress)
    } else {
        https.enable_http1().wrap_connector(egress)
    };
    let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
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
        .build(https);
    Ok(Client {
        inner,
        proxies: opts.proxies.clone(),
        cert_asked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upgraded plain-HTTP upstream connection gives back its socket, and the bytes
    /// hyper read past the `101` (here sent in the same write) come with it.
    #[tokio::test]
    async fn an_upgraded_upstream_connection_gives_back_its_socket_and_what_was_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                head.extend_from_slice(&b[..n]);
            }
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nFIRST")
                .await
                .unwrap();
            // keep the socket open until the test is done with it
            let _ = s.read(&mut b).await;
        });
        let opts = Options {
            connect_timeout: Duration::from_secs(5),
            ca: Vec::new(),
            identity: None,
            proxies: None,
        };
        let client = http1_client(&opts, &[]).unwrap();
        let req = Request::get(format!("http://{addr}/v1/realtime"))
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        let up = hyper::upgrade::on(resp).await.unwrap();
        let UpgradedIo::Tcp(mut tcp, read) = upgraded_socket(up) else {
            panic!("not given back as a socket");
        };
        let mut first = read.to_vec();
        while first.len() < 5 {
            let mut b = [0u8; 8];
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut b))
                .await
                .expect("the first bytes are not lost")
                .unwrap();
            assert!(n > 0);
            first.extend_from_slice(&b[..n]);
        }
        assert_eq!(first, b"FIRST");
    }
}
