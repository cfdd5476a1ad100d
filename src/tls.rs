//! Trust roots and client certificates, shared by the upstream leg and OTLP export.
//!
//! Both connections follow one convention (docs/configuration.md): Mozilla's roots plus the
//! system store, plus whatever CA file the operator names, with ring as the
//! only crypto provider. Files are read and checked once, at start, so a bad
//! certificate is a one-line configuration error naming its setting instead
//! of a failed handshake hours later.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// CA certificates read from one PEM file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCerts {
    pub path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
}

impl CaCerts {
    /// Reads every `CERTIFICATE` block of `path`; at least one, each a usable trust anchor.
    pub fn load(path: &Path) -> Result<CaCerts, String> {
        let certs = parse_certs(path, &read(path)?)?;
        let mut store = rustls::RootCertStore::empty();
        for c in &certs {
            store
                .add(c.clone())
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
        }
        Ok(CaCerts {
            path: path.to_owned(),
            certs,
        })
    }
}

/// A client certificate chain and its private key (for mTLS), with the PEM they came from.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub(crate) certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    pub(crate) cert_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the key
        f.debug_struct("ClientIdentity")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ClientIdentity {
    fn eq(&self, o: &Self) -> bool {
        self.cert_path == o.cert_path && self.key_path == o.key_path && self.certs == o.certs
    }
}

impl ClientIdentity {
    /// Reads a PEM certificate chain and a PEM private key, and checks that they belong together.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<ClientIdentity, String> {
        let cert_pem = read(cert_path)?;
        let certs = parse_certs(cert_path, &cert_pem)?;
        let key_pem = read(key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found: {e}",
                key_path.display()
            )
        })?;
        let id = ClientIdentity {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            certs,
            key: Arc::new(key),
            cert_pem,
            key_pem,
        };
        // rustls checks that the key is usable and matches the certificate
        client_config(&[], Some(&id), Vec::new()).map_err(|e| {
            format!(
                "{} and {}: {e}",
                id.cert_path.display(),
                id.key_path.display()
            )
        })?;
        Ok(id)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM CERTIFICATE block found",
            path.display()
        ));
    }
    Ok(certs)
}

/// The system trust store, read once (an empty list where there is none).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// Mozilla's roots, the system store, and `extra`.
pub(crate) fn roots(extra: &[CertificateDer<'static>]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // certificates of the system store that rustls can't use are skipped, as curl does
    roots.add_parsable_certificates(system_roots().iter().cloned());
    roots.add_parsable_certificates(extra.iter().cloned());
    roots
}

/// A rustls client configuration (ring) trusting [`roots`]`(extra)`, presenting `identity`.
pub(crate) fn client_config(
    extra: &[CertificateDer<'static>],
    identity: Option<&ClientIdentity>,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots(extra));
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
            .map_err(|e| format!("unusable client certificate or key: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    Ok(config)
}

/// Stands in for "no client certificate" and remembers when an upstream
/// last asked for one. Under TLS 1.3 a server refuses a client without a
/// certificate only after the handshake; when its alert closes the connection
/// before hyper has sent the request, the request fails as a connection that
/// was "not ready", with no TLS error left to name. This is how that failure
/// still gets its cause (see `proxy::send`).
#[derive(Debug, Default)]
pub(crate) struct UnansweredCertRequests {
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl UnansweredCertRequests {
    /// Whether an upstream asked for a client certificate within `window`.
    pub(crate) fn within(&self, window: std::time::Duration) -> bool {
        self.last
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| t.elapsed() <= window)
    }
}

impl rustls::client::ResolvesClientCert for UnansweredCertRequests {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if let Ok(mut l) = self.last.lock() {
            *l = Some(std::time::Instant::now());
        }
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// What [`describe_failure`] says when the upstream wants a client certificate.
pub(crate) fn certificate_required() -> String {
    explain(&rustls::Error::AlertReceived(
        rustls::AlertDescription::CertificateRequired,
    ))
}

/// Why a TLS connection failed, in words an operator can act on, when `err`
/// (or one of its sources) is a rustls error.
pub(crate) fn describe_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(explain(r));
        }
        // an io::Error shows its inner error's message but skips it in `source()`
        // (and hyper-rustls wraps tokio-rustls' io::Error in another); an h2 connection
        // error has no source at all but keeps its io::Error: look inside both
        let io = e
            .downcast_ref::<std::io::Error>()
            .or_else(|| e.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        cur = match io {
            Some(io) if e.is::<h2::Error>() => Some(io as &(dyn std::error::Error + 'static)),
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => e.source(),
            },
            None => e.source(),
        };
    }
    None
}

fn explain(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let hint = match e {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "; the certificate is not signed by a trusted CA (add the CA with --upstream-ca)"
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "; the certificate does not name this host"
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "; the certificate has expired"
        }
        E::AlertReceived(A::CertificateRequired | A::BadCertificate | A::UnknownCA) => {
            "; the server refused the client certificate or wants one (--upstream-client-cert / --upstream-client-key)"
        }
        _ => "",
    };
    format!("TLS handshake failed: {e}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_and_non_pem_files_are_named() {
        let missing = Path::new("/nonexistent/ca.pem");
        let e = CaCerts::load(missing).expect_err("missing");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("tokentap-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let e = CaCerts::load(&junk).expect_err("junk");
        assert!(e.contains("junk.pem") && e.contains("CERTIFICATE"), "{e}");
        let e = ClientIdentity::load(&junk, &junk).expect_err("junk identity");
        assert!(e.contains("junk.pem"), "{e}");
    }

    #[test]
    fn a_rustls_error_inside_an_io_error_is_explained() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let wrapped = std::io::Error::other(io);
        let m = describe_failure(&wrapped).expect("found");
        assert!(
            m.contains("UnknownIssuer") && m.contains("--upstream-ca"),
            "{m}"
        );
        assert!(describe_failure(&std::io::Error::other("refused")).is_none());
    }
}
