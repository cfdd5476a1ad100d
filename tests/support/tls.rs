//! Offline PKI and network fixtures for the network conventions: a private CA with server and client
//! certificates generated per test (rcgen, ring), an `https` upstream that can require a
//! client certificate, and a small HTTP `CONNECT` proxy that records what it was asked.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

/// A private CA, a server certificate for `localhost` / `127.0.0.1`, and a client
/// certificate, as PEM strings and as files in a directory of their own.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tokentap test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");

        let server_key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params")
            .signed_by(&server_key, &ca)
            .expect("server cert");

        let client_key = KeyPair::generate().expect("client key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "tokentap test client");
        let client = client_params
            .signed_by(&client_key, &ca)
            .expect("client cert");

        let dir = std::env::temp_dir().join(format!(
            "tokentap-pki-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let pki = Pki {
            dir,
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        };
        for (name, pem) in [
            ("ca.pem", &pki.ca_pem),
            ("client.pem", &pki.client_cert_pem),
            ("client.key", &pki.client_key_pem),
        ] {
            std::fs::write(pki.dir.join(name), pem).expect("write pem");
        }
        pki
    }

    /// Path of `ca.pem`, `client.pem` or `client.key`.
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A rustls server configuration (ring) for the server certificate; with
    /// `require_client`, clients must present a certificate signed by the CA.
    pub fn server_config(&self, require_client: bool, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = if require_client {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).expect("ca der"))
                .expect("ca root");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let chain = vec![
            CertificateDer::from_pem_slice(self.server_cert_pem.as_bytes()).expect("server der"),
        ];
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).expect("key der");
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// An `https` upstream on 127.0.0.1 answering every request with one chat completion.
pub struct HttpsUpstream {
    pub addr: SocketAddr,
    task: AbortHandle,
}

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The body every [`HttpsUpstream`] answers with.
pub const COMPLETION: &str = r#"{"id":"chatcmpl-tls","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"over TLS"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;

impl HttpsUpstream {
    pub async fn start(pki: &Pki, require_client: bool) -> HttpsUpstream {
        // With TLS 1.3 a refused client certificate is only learnt from the alert that
        // follows the handshake; over h2, hyper may report that as a plain "connection
        // closed" for a request not yet sent, so the mTLS upstream speaks HTTP/1.1.
        let alpn: &[&[u8]] = if require_client {
            &[b"http/1.1"]
        } else {
            &[b"h2", b"http/1.1"]
        };
        let config = pki.server_config(require_client, alpn);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let tls = match acceptor.accept(tcp).into_fallible().await {
                        Ok(tls) => tls,
                        Err((_, mut tcp)) => {
                            // a refused handshake (no client certificate): rustls has sent its
                            // alert; close gracefully like real servers do, so that the
                            // client's unread request doesn't turn the close into a reset
                            // that discards the alert
                            let mut sink = [0u8; 4096];
                            let _ =
                                tokio::time::timeout(std::time::Duration::from_secs(5), async {
                                    while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                                })
                                .await;
                            return;
                        }
                    };
                    let svc = service_fn(|_req| async {
                        let mut r = hyper::Response::new(Full::new(Bytes::from_static(
                            COMPLETION.as_bytes(),
                        )));
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        })
        .abort_handle();
        HttpsUpstream { addr, task }
    }

    /// `https://localhost:PORT` (the name the certificate carries).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

/// What a [`ConnectProxy`] was asked: the `CONNECT` target (or the absolute URL of a
/// plain-HTTP request) and the `Proxy-Authorization` sent.
#[derive(Debug, Clone)]
pub struct Tunnelled {
    pub target: String,
    pub authorization: Option<String>,
}

/// A small HTTP proxy on 127.0.0.1: it answers `407` unless the expected
/// `Proxy-Authorization` came, else opens a `CONNECT` tunnel, or forwards an
/// absolute-form request, and copies bytes both ways.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Tunnelled>>>,
    task: AbortHandle,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectProxy {
    /// `expected_auth` is the whole `Proxy-Authorization` value required (e.g. `Basic …`).
    pub async fn start(expected_auth: Option<String>) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                conns.spawn(tunnel(tcp, log.clone(), expected_auth.clone()));
            }
        })
        .abort_handle();
        ConnectProxy { addr, seen, task }
    }

    /// Every `CONNECT` received so far.
    pub fn seen(&self) -> Vec<Tunnelled> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn tunnel(mut client: TcpStream, log: Arc<Mutex<Vec<Tunnelled>>>, expected: Option<String>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_owned());
    if let Ok(mut s) = log.lock() {
        s.push(Tunnelled {
            target: target.to_owned(),
            authorization: authorization.clone(),
        });
    }
    if expected.is_some() && authorization != expected {
        let _ = client
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    if method != "CONNECT" {
        // absolute-form (plain HTTP through the proxy): forward in origin-form, without
        // the proxy's own header, then copy both ways
        let Some(rest) = target.strip_prefix("http://") else {
            let _ = client
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let Ok(mut upstream) = TcpStream::connect(authority).await else {
            let _ = client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        };
        let version = request_line.split_whitespace().nth(2).unwrap_or("HTTP/1.1");
        let path = if path.is_empty() { "/" } else { path };
        let mut forwarded = format!("{method} {path} {version}\r\n");
        for line in text.split("\r\n").skip(1) {
            if line.is_empty()
                || line
                    .to_ascii_lowercase()
                    .starts_with("proxy-authorization:")
            {
                continue;
            }
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
        forwarded.push_str("\r\n");
        if upstream.write_all(forwarded.as_bytes()).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
