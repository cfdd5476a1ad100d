//! Test helpers: a demo upstream on a free port and a plain hyper client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::{DemoOptions, DemoUpstream};

pub(super) async fn upstream() -> DemoUpstream {
    let opts = DemoOptions {
        chunk_delay: Duration::ZERO,
        first_byte_delay: Duration::ZERO,
    };
    DemoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), opts)
        .await
        .unwrap()
}

pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Reply {
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub(super) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    pub(super) fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap().to_str().unwrap()
    }
}

pub(super) async fn request(
    up: &DemoUpstream,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{}", up.base_url(), path));
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/json");
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = client
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub(super) async fn post(up: &DemoUpstream, path: &str, body: &Value) -> Reply {
    request(
        up,
        Method::POST,
        path,
        &[],
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

/// The `data:` payloads of an SSE body, checking the framing on the way.
pub(super) fn data_events(body: &str) -> Vec<&str> {
    assert!(body.ends_with("\n\n"), "{body}");
    body.strip_suffix("\n\n")
        .unwrap()
        .split("\n\n")
        .map(|event| event.strip_prefix("data: ").unwrap())
        .collect()
}

pub(super) fn chat_body(stream: bool, include_usage: Option<bool>) -> Value {
    let mut body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello there, demo upstream!"}
        ],
        "stream": stream
    });
    if let Some(include) = include_usage {
        body["stream_options"] = serde_json::json!({ "include_usage": include });
    }
    body
}
