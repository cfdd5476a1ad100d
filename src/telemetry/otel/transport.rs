//! How OTLP reaches the collector: TLS roots, mTLS and compression from the
//! standard `OTEL_EXPORTER_OTLP_*` variables, per signal.
//!
//! The exporter crate reads endpoints, headers, timeouts, `*_INSECURE` and
//! `*_COMPRESSION` itself but no certificate variables; those are read here,
//! with the precedence the OpenTelemetry specification gives (the signal's
//! own variable, then the general one), and checked at start so a bad file
//! is one line naming its variable. Both transports trust what the upstream
//! leg trusts: Mozilla's roots, the system store, and the named CA file.

use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::tonic_types::transport::{ClientTlsConfig, Identity};
use std::path::Path;
use std::time::Duration;

use crate::tls::{self, CaCerts, ClientIdentity};

/// The OTLP/HTTP client of one signal.
pub(crate) type Https =
    HyperClient<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>>;

/// One signal's connection settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Transport {
    /// `OTEL_EXPORTER_OTLP_[SIGNAL_]CERTIFICATE`.
    ca: Option<CaCerts>,
    /// `OTEL_EXPORTER_OTLP_[SIGNAL_]CLIENT_CERTIFICATE` and `…_CLIENT_KEY`.
    identity: Option<ClientIdentity>,
}

/// The signal's variable if set, else the general one: `(name, value)`.
fn var(signal: &str, suffix: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_{signal}_{suffix}"),
        format!("OTEL_EXPORTER_OTLP_{suffix}"),
    ]
    .into_iter()
    .find_map(|name| super::env(&name).map(|v| (name, v)))
}

impl Transport {
    /// Reads and checks the variables of `signal` (`TRACES`, `METRICS` or `LOGS`).
    pub(crate) fn from_env(signal: &str) -> Result<Transport, String> {
        let ca = match var(signal, "CERTIFICATE") {
            Some((name, path)) => {
                Some(CaCerts::load(Path::new(&path)).map_err(|e| format!("{name}: {e}"))?)
            }
            None => None,
        };
        let identity = match (var(signal, "CLIENT_CERTIFICATE"), var(signal, "CLIENT_KEY")) {
            (None, None) => None,
            (Some((name, _)), None) | (None, Some((name, _))) => {
                return Err(format!(
                    "{name}: set both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY (or their {signal} forms)"
                ));
            }
            (Some((cn, cert)), Some((kn, key))) => Some(
                ClientIdentity::load(Path::new(&cert), Path::new(&key))
                    .map_err(|e| format!("{cn}/{kn}: {e}"))?,
            ),
        };
        for suffix in ["INSECURE"] {
            if let Some((name, v)) = var(signal, suffix) {
                if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") {
                    return Err(format!("{name}={v:?}: use true or false"));
                }
            }
        }
        if let Some((name, v)) = var(signal, "COMPRESSION") {
            if !v.eq_ignore_ascii_case("gzip") && !v.eq_ignore_ascii_case("none") {
                return Err(format!("{name}={v:?}: use gzip or none"));
            }
        }
        Ok(Transport { ca, identity })
    }

    fn ca(&self) -> &[rustls::pki_types::CertificateDer<'static>] {
        self.ca.as_ref().map_or(&[], |c| c.certs.as_slice())
    }

    /// tonic's TLS settings (used when the endpoint is `https`).
    pub(crate) fn grpc(&self) -> ClientTlsConfig {
        let roots = tls::roots(self.ca());
        let mut c = ClientTlsConfig::new().trust_anchors(roots.roots);
        if let Some(id) = &self.identity {
            c = c.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        c
    }

    /// An HTTP client for OTLP/HTTP that speaks `https` with these settings (and plain `http`).
    pub(crate) fn http(&self, timeout: Duration) -> Result<Https, String> {
        let config = tls::client_config(self.ca(), self.identity.as_ref(), Vec::new())?;
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(HyperClient::new(https, timeout, None))
    }
}
