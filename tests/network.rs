//! Network conventions (docs/configuration.md), offline, with certificates made per test: OTLP over TLS and mTLS (gRPC and
//! HTTP/protobuf, gzip), an `https` upstream behind a private CA (and one requiring a
//! client certificate), and an HTTP `CONNECT` egress proxy whose credentials never reach
//! a log line.

#[path = "support/blackbox/mod.rs"]
mod blackbox;
mod support;
#[path = "support/tls.rs"]
mod tls;

use std::sync::Arc;
use std::time::Duration;

use blackbox::child::{Tokentap, run_to_exit};
use hyper_util::client::proxy::matcher::Matcher;
use support::otlp::{Receiver, closed_port_endpoint};
use support::{Reply, post_json};
use tls::{COMPLETION, ConnectProxy, HttpsUpstream, Pki};
use tokentap::app;
use tokentap::config::{Config, Upstream};
use tokentap::tls::{CaCerts, ClientIdentity};

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
const PROXY_USER: &str = "tt-user";
const PROXY_PASSWORD: &str = "s3cret-pw";
/// `Basic base64("tt-user:s3cret-pw")`.
const PROXY_BASIC: &str = "Basic dHQtdXNlcjpzM2NyZXQtcHc=";

fn error_of(r: &Reply) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("OpenAI-shaped error");
    (
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn chat_via(cfg: Config) -> Reply {
    let running = app::start(cfg).await.expect("tokentap starts");
    let r = post_json(&running.url(), "/v1/chat/completions", CHAT).await;
    running.shutdown().await;
    r
}

fn config_for(url: &str) -> Config {
    Config::for_upstream(Upstream::parse(url).expect("url"))
}

fn ca(pki: &Pki) -> Option<CaCerts> {
    Some(CaCerts::load(std::path::Path::new(&pki.file("ca.pem"))).expect("ca loads"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_ca_upstream_is_refused_clearly_then_trusted_with_upstream_ca() {
    let pki = Pki::new();
    let up = HttpsUpstream::start(&pki, false).await;

    let refused = chat_via(config_for(&up.url())).await;
    assert_eq!(refused.status, 502);
    let (code, message) = error_of(&refused);
    assert_eq!(code, "upstream_tls_error");
    assert!(
        message.contains("UnknownIssuer") && message.contains("--upstream-ca"),
        "{message}"
    );

    let mut cfg = config_for(&up.url());
    cfg.upstream_ca = ca(&pki);
    let ok = chat_via(cfg).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body, COMPLETION.as_bytes());
}

/// `--route PREFIX=URL,ca=FILE`: the CA is trusted for that route only.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_trusts_its_own_ca_and_only_that_route_does() {
    let pki = Pki::new();
    let up = HttpsUpstream::start(&pki, false).await;
    let mut cfg = config_for(&up.url());
    let with_ca = format!("/internal={},ca={}", up.url(), pki.file("ca.pem"));
    let without = format!("/plain={}", up.url());
    cfg.routes = [with_ca, without]
        .iter()
        .map(|r| tokentap::config::RouteSpec::parse(r).expect("route"))
        .collect();
    let running = app::start(cfg).await.expect("tokentap starts");
    let ok = post_json(&running.url(), "/internal/v1/chat/completions", CHAT).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body, COMPLETION.as_bytes());
    for path in ["/plain/v1/chat/completions", "/v1/chat/completions"] {
        let refused = post_json(&running.url(), path, CHAT).await;
        assert_eq!(refused.status, 502, "{path}");
        assert_eq!(error_of(&refused).0, "upstream_tls_error", "{path}");
    }
    running.shutdown().await;
    let bad = tokentap::config::RouteSpec::parse("/x=https://h,ca=/nonexistent/ca.pem");
    assert!(bad.is_err_and(|e| e.contains("/nonexistent/ca.pem")));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mtls_upstream_needs_the_client_certificate() {
    let pki = Pki::new();
    let up = HttpsUpstream::start(&pki, true).await;

    let mut cfg = config_for(&up.url());
    cfg.upstream_ca = ca(&pki);
    let refused = chat_via(cfg.clone()).await;
    assert_eq!(refused.status, 502);
    let (code, message) = error_of(&refused);
    assert_eq!(code, "upstream_tls_error", "{message}");
    assert!(message.contains("--upstream-client-cert"), "{message}");

    cfg.upstream_identity = Some(
        ClientIdentity::load(
            std::path::Path::new(&pki.file("client.pem")),
            std::path::Path::new(&pki.file("client.key")),
        )
        .expect("identity loads"),
    );
    let ok = chat_via(cfg).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body, COMPLETION.as_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn https_goes_through_the_connect_proxy_and_its_credentials_are_never_logged() {
    let pki = Pki::new();
    let up = HttpsUpstream::start(&pki, false).await;
    let proxy = ConnectProxy::start(Some(PROXY_BASIC.to_owned())).await;
    let proxy_url = format!(
        "http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{}",
        proxy.addr.port()
    );
    let ca_file = pki.file("ca.pem");
    let args = [
        "--upstream",
        &up.url(),
        "--upstream-ca",
        &ca_file,
        "--log",
        "debug",
    ];

    let t = Tokentap::start_with(&args, &[("HTTPS_PROXY", &proxy_url)]);
    let r = post_json(&t.url(), "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, COMPLETION.as_bytes());
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, format!("localhost:{}", up.addr.port()));
    assert_eq!(seen[0].authorization.as_deref(), Some(PROXY_BASIC));
    let stderr = t.stderr();
    assert!(
        stderr.contains("debug") || stderr.contains("DEBUG"),
        "debug logging is on"
    );
    for secret in [PROXY_PASSWORD, &PROXY_BASIC["Basic ".len()..]] {
        assert!(!stderr.contains(secret), "{secret} logged:\n{stderr}");
    }
    drop(t);

    // the lower-case form, with NO_PROXY naming the upstream: a direct connection
    let t = Tokentap::start_with(
        &args,
        &[("https_proxy", &proxy_url), ("NO_PROXY", "localhost")],
    );
    let r = post_json(&t.url(), "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(proxy.seen().len(), 1, "NO_PROXY bypassed the proxy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_that_refuses_or_is_down_is_named_in_a_502() {
    let pki = Pki::new();
    let up = HttpsUpstream::start(&pki, false).await;

    // no credentials: the proxy answers 407
    let proxy = ConnectProxy::start(Some(PROXY_BASIC.to_owned())).await;
    let mut cfg = config_for(&up.url());
    cfg.upstream_ca = ca(&pki);
    cfg.egress_proxy = Some(Arc::new(
        Matcher::builder()
            .https(format!("http://127.0.0.1:{}", proxy.addr.port()))
            .build(),
    ));
    let r = chat_via(cfg.clone()).await;
    assert_eq!(r.status, 502);
    let (code, message) = error_of(&r);
    assert_eq!(code, "proxy_error");
    assert!(
        message.contains(&format!("127.0.0.1:{}", proxy.addr.port()))
            && message.contains("authorization"),
        "{message}"
    );

    // a proxy that accepts and never answers CONNECT: bounded by --connect-timeout
    let silent = support::otlp::BlackHole::start().await;
    cfg.connect_timeout = Duration::from_millis(300);
    cfg.egress_proxy = Some(Arc::new(
        Matcher::builder().https(silent.endpoint()).build(),
    ));
    let r = chat_via(cfg.clone()).await;
    assert_eq!(r.status, 502);
    let (code, message) = error_of(&r);
    assert_eq!(code, "proxy_error");
    assert!(
        message.contains(silent.endpoint().trim_start_matches("http://"))
            && message.contains("CONNECT"),
        "{message}"
    );

    // nothing listening where the proxy should be
    let dead = closed_port_endpoint();
    cfg.egress_proxy = Some(Arc::new(Matcher::builder().https(dead.clone()).build()));
    let r = chat_via(cfg).await;
    assert_eq!(r.status, 502);
    let (code, message) = error_of(&r);
    assert_eq!(code, "proxy_error");
    assert!(
        message.contains(dead.trim_start_matches("http://")),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_goes_through_http_proxy_in_absolute_form_with_credentials() {
    let demo = tokentap::demo::DemoUpstream::start(
        "127.0.0.1:0".parse().expect("addr"),
        tokentap::demo::DemoOptions {
            chunk_delay: Duration::ZERO,
            first_byte_delay: Duration::ZERO,
        },
    )
    .await
    .expect("demo upstream");
    let proxy = ConnectProxy::start(Some(PROXY_BASIC.to_owned())).await;
    let mut cfg = config_for(&demo.base_url());
    cfg.egress_proxy = Some(Arc::new(
        Matcher::builder()
            .http(format!(
                "http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{}",
                proxy.addr.port()
            ))
            .build(),
    ));
    let r = chat_via(cfg).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].target,
        format!(
            "{}/v1/chat/completions",
            demo.base_url().trim_end_matches('/')
        )
    );
    assert_eq!(seen[0].authorization.as_deref(), Some(PROXY_BASIC));
}

/// The environment of a `--demo` tokentap exporting all three signals to `endpoint`.
fn otlp_env<'a>(endpoint: &'a str, protocol: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_METRICS_EXPORTER", "otlp"),
        ("OTEL_LOGS_EXPORTER", "otlp"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        // successful calls are logged at debug: a log record per call
        ("TOKENTAP_LOG", "info,tokentap=debug"),
    ]
}

async fn receives_all_three_signals(receiver: &Receiver) -> bool {
    receiver
        .wait_for(Duration::from_secs(20), |r| {
            !r.spans().is_empty()
                && r.metric_names().iter().any(|n| n == "llm_requests_total")
                && !r.logs().is_empty()
        })
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_grpc_over_mtls_with_a_private_ca() {
    let pki = Pki::new();
    let receiver =
        Receiver::grpc_tls(&pki.server_cert_pem, &pki.server_key_pem, Some(&pki.ca_pem)).await;
    let endpoint = receiver.tls_endpoint();
    let (ca_file, cert, key) = (
        pki.file("ca.pem"),
        pki.file("client.pem"),
        pki.file("client.key"),
    );

    // without the client certificate the collector refuses: nothing arrives, one warning
    let mut env = otlp_env(&endpoint, "grpc");
    env.push(("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca_file));
    let t = Tokentap::start_with(&["--demo", "--demo-chunk-delay", "0ms"], &env);
    assert_eq!(
        post_json(&t.url(), "/v1/chat/completions", CHAT)
            .await
            .status,
        200
    );
    let mut warned = false;
    for _ in 0..200 {
        if t.stderr().contains("telemetry export failing") {
            warned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(warned, "stderr:\n{}", t.stderr());
    assert!(receiver.spans().is_empty() && receiver.logs().is_empty());
    drop(t);

    // with it (per-signal forms for traces, general ones for the rest); traces gzip-compressed
    env.push(("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert));
    env.push(("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key));
    env.push(("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", &cert));
    env.push(("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", &key));
    env.push(("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"));
    let t = Tokentap::start_with(&["--demo", "--demo-chunk-delay", "0ms"], &env);
    assert_eq!(
        post_json(&t.url(), "/v1/chat/completions", CHAT)
            .await
            .status,
        200
    );
    assert!(
        receives_all_three_signals(&receiver).await,
        "spans {} metrics {:?} logs {}; stderr:\n{}",
        receiver.spans().len(),
        receiver.metric_names(),
        receiver.logs().len(),
        t.stderr()
    );
    assert!(
        receiver.gzip_requests() > 0,
        "trace exports came gzip-compressed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_http_over_mtls_gzip_compressed() {
    let pki = Pki::new();
    let receiver = Receiver::http_tls(pki.server_config(true, &[b"http/1.1"])).await;
    let endpoint = receiver.tls_endpoint();
    let (ca_file, cert, key) = (
        pki.file("ca.pem"),
        pki.file("client.pem"),
        pki.file("client.key"),
    );
    let mut env = otlp_env(&endpoint, "http/protobuf");
    env.extend([
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_str()),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
    ]);
    let t = Tokentap::start_with(&["--demo", "--demo-chunk-delay", "0ms"], &env);
    assert_eq!(
        post_json(&t.url(), "/v1/chat/completions", CHAT)
            .await
            .status,
        200
    );
    assert!(
        receives_all_three_signals(&receiver).await,
        "spans {} metrics {:?} logs {}; stderr:\n{}",
        receiver.spans().len(),
        receiver.metric_names(),
        receiver.logs().len(),
        t.stderr()
    );
    assert!(
        receiver.gzip_requests() > 0,
        "OTLP/HTTP bodies came gzip-compressed"
    );
}

/// Arguments, environment, and the setting the error must name.
type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn bad_certificate_settings_are_one_line_errors_naming_the_setting() {
    let pki = Pki::new();
    let junk = pki.dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    let junk = junk.display().to_string();
    let cert = pki.file("client.pem");
    let cases: Vec<Case> = vec![
        (
            vec!["--demo"],
            vec![
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
            ],
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
        (
            vec!["--demo"],
            vec![
                ("OTEL_LOGS_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE", &junk),
            ],
            "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE",
        ),
        (
            vec!["--demo"],
            vec![
                ("OTEL_METRICS_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
            ],
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        ),
        (
            vec!["--demo"],
            vec![
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
            ],
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ),
        (vec!["--upstream-ca", &junk], vec![], "--upstream-ca"),
        (
            vec![
                "--upstream-client-cert",
                &cert,
                "--upstream-client-key",
                &junk,
            ],
            vec![],
            "--upstream-client-key",
        ),
    ];
    for (args, env, name) in cases {
        let exit = run_to_exit(&args, &env);
        assert!(!exit.started, "{args:?} {env:?} started");
        assert_eq!(exit.code, Some(2), "{args:?} {env:?}: {}", exit.stderr);
        let stderr = exit.stderr.trim();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(name), "{name} in {stderr}");
    }
}
