//! Shared test fixtures: a demo upstream and a tokentap in front of it, both on port 0,
//! plus a raw HTTP client and a small Prometheus text parser.
#![allow(dead_code)]

pub mod otlp;
pub mod prometheus;
pub mod python;
pub mod redis;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tokentap::app::{self, Running};
use tokentap::config::{Config, Upstream};
use tokentap::demo::{DemoOptions, DemoUpstream};
use tokentap::telemetry::Telemetry;
use tokentap::telemetry::otel::Providers;

pub struct Stack {
    pub demo: DemoUpstream,
    pub proxy: Running,
}

impl Stack {
    /// Demo upstream (no pacing) + tokentap with default settings.
    pub async fn start() -> Stack {
        Stack::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Stack {
        let (demo, cfg) = demo_and_config(tweak).await;
        let proxy = app::start(cfg).await.expect("tokentap starts");
        Stack { demo, proxy }
    }

    /// Like `start_with`, with spans going to an in-memory exporter (exported as each span ends).
    pub async fn start_traced(tweak: impl FnOnce(&mut Config)) -> (Stack, InMemorySpanExporter) {
        let (demo, cfg) = demo_and_config(tweak).await;
        let (proxy, spans) = start_traced_proxy(cfg).await;
        (Stack { demo, proxy }, spans)
    }

    pub fn direct(&self) -> String {
        self.demo.base_url()
    }

    pub fn via(&self) -> String {
        self.proxy.url()
    }

    pub async fn metrics(&self) -> String {
        metrics(&self.via()).await
    }
}

/// The `/metrics` page of the tokentap at `base`.
pub async fn metrics(base: &str) -> String {
    let r = send(base, "GET", "/metrics", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    String::from_utf8(r.body.to_vec()).expect("utf8 page")
}

/// A demo upstream without pacing, and tokentap's configuration pointing at it.
async fn demo_and_config(tweak: impl FnOnce(&mut Config)) -> (DemoUpstream, Config) {
    let demo = DemoUpstream::start(
        "127.0.0.1:0".parse().expect("addr"),
        DemoOptions {
            chunk_delay: Duration::ZERO,
            first_byte_delay: Duration::ZERO,
        },
    )
    .await
    .expect("demo starts");
    let mut cfg = Config::for_upstream(Upstream::parse(&demo.base_url()).expect("url"));
    tweak(&mut cfg);
    (demo, cfg)
}

/// tokentap for `cfg` with spans in memory.
pub async fn start_traced_proxy(cfg: Config) -> (Running, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    (start_exporting_proxy(cfg, exporter.clone()).await, exporter)
}

/// tokentap for `cfg` whose spans go to `exporter` as each ends.
pub async fn start_exporting_proxy(
    cfg: Config,
    exporter: impl opentelemetry_sdk::trace::SpanExporter + 'static,
) -> Running {
    let telemetry =
        Telemetry::with_providers(app::recorder_options(&cfg).expect("options"), move |_| {
            Ok(Providers::tracing_only(
                SdkTracerProvider::builder()
                    .with_simple_exporter(exporter)
                    .build(),
            ))
        })
        .expect("telemetry");
    app::start_with(cfg, telemetry)
        .await
        .expect("tokentap starts")
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// One raw HTTP/1.1 request; the whole body is collected.
pub async fn send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).expect("request");
    let resp = http_client().request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn post_json(base: &str, path: &str, json: &str) -> Reply {
    send(
        base,
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer sk-test"),
        ],
        Bytes::from(json.to_owned()),
    )
    .await
}

/// Starts a stream from the demo's `demo-hang-stream` model (one chunk, then silence)
/// through `base` and returns its body once the response (200) has started.
pub async fn open_hung_stream(base: &str) -> hyper::body::Incoming {
    let req = Request::post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"demo-hang-stream","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .expect("req");
    let resp = http_client().request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body()
}

/// Headers that must match between a direct and a proxied response (all but per-connection ones).
pub fn comparable_headers(h: &HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "date" | "connection" | "keep-alive" | "transfer-encoding" | "traceresponse"
            )
        })
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or("<bin>").to_owned(),
            )
        })
        .collect()
}

/// Asserts two replies are the same bytes, status and headers.
pub fn assert_same(direct: &Reply, via: &Reply) {
    assert_eq!(direct.status, via.status, "status");
    assert_eq!(
        comparable_headers(&direct.headers),
        comparable_headers(&via.headers),
        "headers"
    );
    assert_eq!(direct.body, via.body, "body bytes");
}

/// Parses the Prometheus text format into `series → value`.
pub fn parse_metrics(page: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in page.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(_) => {
                let close = line.rfind('}').expect("closing brace");
                (&line[..close + 1], line[close + 1..].trim())
            }
            None => {
                let mut it = line.splitn(2, ' ');
                (it.next().unwrap_or(""), it.next().unwrap_or("").trim())
            }
        };
        let value: f64 = rest
            .split_whitespace()
            .next()
            .unwrap_or("nan")
            .parse()
            .expect("number");
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], parse_labels(&series[i + 1..series.len() - 1])),
            None => (series, BTreeMap::new()),
        };
        out.push((name.to_owned(), labels, value));
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim_start_matches(',').trim().to_owned();
        let after = &rest[eq + 2..];
        let mut end = 0;
        let bytes = after.as_bytes();
        while end < bytes.len() && bytes[end] != b'"' {
            if bytes[end] == b'\\' {
                end += 1;
            }
            end += 1;
        }
        m.insert(key, after[..end].to_owned());
        rest = &after[(end + 1).min(after.len())..];
    }
    m
}

/// Sum of the samples of `name` whose labels include all of `want`.
pub fn sum(page: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    parse_metrics(page)
        .into_iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Number of distinct series of `name`.
pub fn series_count(page: &str, name: &str) -> usize {
    parse_metrics(page)
        .into_iter()
        .filter(|(n, _, _)| n == name)
        .count()
}

/// Polls `f` until it is true (telemetry of a call is recorded when its body ends,
/// which can be a moment after the client has read the last byte).
pub async fn eventually(mut f: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
