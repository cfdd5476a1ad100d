//! The demo upstream's Realtime endpoint, driven by real Python clients: the
//! official `openai` SDK's realtime client (`examples/python/realtime.py`) and
//! the plain `websockets` client with its default compression.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::python::run_python;
use tokentap::demo::{DemoOptions, DemoUpstream};

async fn demo() -> DemoUpstream {
    let opts = DemoOptions {
        chunk_delay: Duration::ZERO,
        first_byte_delay: Duration::ZERO,
    };
    DemoUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), opts)
        .await
        .expect("demo upstream starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn official_sdk_realtime_example_against_the_demo() {
    let up = demo().await;
    let out = run_python(
        "examples/python/realtime.py",
        Vec::new(),
        vec![("OPENAI_BASE_URL", format!("{}/v1", up.base_url()))],
    )
    .await;
    assert!(out.contains("You said 6 words. "), "{out}");
    // 3 + (4 + 6 words) in; the reply's words out
    assert!(out.contains("usage: input=13 (cached 0) output="), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_client_with_compression_against_the_demo() {
    let up = demo().await;
    let url = format!(
        "{}/v1/realtime?model=gpt-4o-realtime-preview",
        up.base_url().replace("http://", "ws://")
    );
    let out = run_python("tests/python/realtime_websockets.py", vec![url], Vec::new()).await;
    assert!(out.contains("extensions: permessage-deflate"), "{out}");
    // 3 + (4 + 2 words) in, one token per word of the reply out
    assert!(out.contains("\"input_tokens\": 9,"), "{out}");
    assert!(
        out.contains("\"output_tokens\": 28, \"total_tokens\": 37}"),
        "{out}"
    );
}
