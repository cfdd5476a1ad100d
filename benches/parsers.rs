//! Throughput of the code every proxied response byte goes through.
//!
//! tokentap sits on the request path: each frame of a model's answer is handed
//! to the client as it arrives, and a reference to it is decoded on the way
//! (`genai::sse`, `genai::stream`, and `genai::inject` when tokentap asked for
//! usage on the client's behalf). Whatever these cost is added to every
//! stream, so they are measured in bytes per second on a realistic
//! chat-completions stream (~2,000 chunks):
//!
//! - `sse`: the event decoder alone, fed one buffer, 1,460-byte frames (a TCP
//!   segment) and ragged frames that split events and lines anywhere;
//! - `accumulate`: decoder plus the per-event JSON parse into call facts;
//! - `strip_usage`: decoder, parse and the edit that removes `"usage":null`
//!   members and the usage-only chunk the client did not ask for;
//! - `tap`: the whole body wrapper (observer, idle timer, final recording into
//!   Prometheus metrics) on a stream, an edited stream, and one ~2 KB JSON
//!   response, the last showing the fixed cost per call.
//!
//! Run with `cargo bench --bench parsers`.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokentap::call::Call;
use tokentap::genai::inject::UsageStripper;
use tokentap::genai::pricing::PriceTable;
use tokentap::genai::provider::Provider;
use tokentap::genai::request::{Operation, RequestFacts};
use tokentap::genai::sse::SseDecoder;
use tokentap::genai::stream::StreamAccumulator;
use tokentap::observe::Observer;
use tokentap::tap::Tap;
use tokentap::telemetry::otel::OtelSettings;
use tokentap::telemetry::{Recorder, RecorderOptions, Telemetry};

/// Content chunks per stream (plus a role chunk, a finish chunk and `[DONE]`).
const EVENTS: usize = 2_000;
/// A typical TCP segment payload.
const TCP_FRAME: usize = 1_460;

/// Deltas as a model emits them: mostly short words, now and then a JSON
/// escape or a multi-byte character.
const WORDS: [&str; 8] = [
    "word ",
    "the ",
    "token",
    "ization ",
    "café ",
    "\\n\\n",
    "“quoted” ",
    "stream ",
];

/// A chat-completions stream. `with_usage`: each chunk carries `"usage":null`
/// and a usage-only chunk precedes `[DONE]`, as when `include_usage` is set;
/// stripping that stream must give exactly the stream built without it.
fn chat_stream(with_usage: bool) -> Vec<u8> {
    const HEAD: &str = r#"data: {"id":"chatcmpl-C1xYzAbCdEfGh","object":"chat.completion.chunk","created":1754000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_560af6e559","choices":[{"index":0,"delta":"#;
    let usage = if with_usage { r#","usage":null"# } else { "" };
    let mut s = String::with_capacity((EVENTS + 4) * 320);
    let mut chunk = |delta: &str, finish: &str| {
        s.push_str(HEAD);
        s.push_str(delta);
        s.push_str(r#","logprobs":null,"finish_reason":"#);
        s.push_str(finish);
        s.push_str("}]");
        s.push_str(usage);
        s.push_str("}\n\n");
    };
    chunk(
        r#"{"role":"assistant","content":"","refusal":null}"#,
        "null",
    );
    for i in 0..EVENTS {
        chunk(
            &format!(r#"{{"content":"{}"}}"#, WORDS[i % WORDS.len()]),
            "null",
        );
    }
    chunk("{}", r#""stop""#);
    if with_usage {
        s.push_str(r#"data: {"id":"chatcmpl-C1xYzAbCdEfGh","object":"chat.completion.chunk","created":1754000000,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_560af6e559","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":2000,"total_tokens":2019,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#);
        s.push_str("\n\n");
    }
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

/// A non-stream chat completion of about 2 KB.
fn chat_json() -> Vec<u8> {
    let content = "OpenTelemetry gives every call a trace, and tokentap adds the tokens, \
                   the cost and the latency of each model call to it. "
        .repeat(14);
    format!(
        r#"{{"id":"chatcmpl-C1xYzAbCdEfGh","object":"chat.completion","created":1754000000,"model":"gpt-4o-mini-2024-07-18","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":19,"completion_tokens":380,"total_tokens":399,"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"service_tier":"default","system_fingerprint":"fp_560af6e559"}}"#
    )
    .into_bytes()
}

/// Frame lengths of 1 to 700 bytes from a fixed xorshift sequence, so frames
/// end inside events, inside lines and between the two LFs of an event end.
fn ragged(len: usize) -> Vec<usize> {
    let mut x: u32 = 0x9e37_79b9;
    let mut sizes = Vec::new();
    let mut left = len;
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (x % 700 + 1) as usize;
        let n = n.min(left);
        sizes.push(n);
        left -= n;
    }
    sizes
}

fn fixed(len: usize, size: usize) -> Vec<usize> {
    let mut sizes = vec![size; len / size];
    if len % size != 0 {
        sizes.push(len % size);
    }
    sizes
}

fn frames<'a>(input: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> {
    sizes.iter().scan(0usize, move |at, &n| {
        let f = &input[*at..*at + n];
        *at += n;
        Some(f)
    })
}

/// Decodes `input` in frames of `sizes`; returns (events, data bytes).
fn decode(input: &[u8], sizes: &[usize]) -> (u64, u64) {
    let mut dec = SseDecoder::new();
    let (mut events, mut bytes) = (0u64, 0u64);
    for frame in frames(input, sizes) {
        dec.feed(frame, |e| {
            events += 1;
            bytes += black_box(e.data).len() as u64;
        });
    }
    (events, bytes)
}

fn accumulate(input: &[u8], sizes: &[usize]) -> StreamAccumulator {
    let mut dec = SseDecoder::new();
    let mut acc = StreamAccumulator::new(Operation::ChatCompletions);
    for frame in frames(input, sizes) {
        dec.feed(frame, |e| {
            black_box(acc.on_event(e.event, e.data));
        });
    }
    acc
}

/// The observer's edit path: returns the bytes the client would get.
fn strip(input: &[u8], sizes: &[usize]) -> (StreamAccumulator, Vec<u8>) {
    let mut dec = SseDecoder::new();
    let mut acc = StreamAccumulator::new(Operation::ChatCompletions);
    let mut st = UsageStripper::new();
    let mut out = Vec::with_capacity(input.len());
    for frame in frames(input, sizes) {
        st.push(frame);
        dec.feed(frame, |e| {
            let info = acc.on_event(e.event, e.data);
            st.event(&e, info);
        });
        st.release(dec.settled());
        out.extend_from_slice(&st.take_ready());
    }
    out.extend_from_slice(&st.finish());
    (acc, out)
}

/// A call as `proxy` starts it, answered 200.
fn new_call() -> Call {
    let request = RequestFacts {
        model: Some("gpt-4o-mini".to_owned()),
        stream: true,
        ..RequestFacts::default()
    };
    let mut call = Call::new(
        Some(Operation::ChatCompletions),
        request,
        "POST".to_owned(),
        "/v1/chat/completions".to_owned(),
        Provider::default(),
        "api.openai.com".to_owned(),
        443,
    );
    call.status = Some(200);
    call
}

/// Passes `frames` through a [`Tap`] to the end; returns what the client got.
async fn tap(
    frames: &[Bytes],
    event_stream: bool,
    strip_usage: bool,
    recorder: &Arc<Recorder>,
) -> Bytes {
    let started = Instant::now();
    let body = StreamBody::new(futures_util::stream::iter(
        frames
            .iter()
            .map(|b| Ok::<_, Infallible>(Frame::data(b.clone()))),
    ));
    let observer = Observer::new(
        Some(Operation::ChatCompletions),
        event_stream,
        None,
        strip_usage,
        started,
    );
    let tap = Tap::new(
        body,
        new_call(),
        observer,
        Arc::clone(recorder),
        started,
        Duration::from_secs(60),
    );
    tap.collect()
        .await
        .expect("an infallible body cannot fail")
        .to_bytes()
}

fn bench_sse(c: &mut Criterion) {
    let input = chat_stream(false);
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Bytes(input.len() as u64));
    for (name, sizes) in [
        ("whole", vec![input.len()]),
        ("tcp_1460", fixed(input.len(), TCP_FRAME)),
        ("ragged", ragged(input.len())),
    ] {
        assert_eq!(decode(&input, &sizes).0, EVENTS as u64 + 3, "{name}");
        g.bench_function(name, |b| b.iter(|| decode(black_box(&input), &sizes)));
    }
    g.finish();
}

fn bench_accumulate(c: &mut Criterion) {
    let input = chat_stream(false);
    let mut g = c.benchmark_group("accumulate");
    g.throughput(Throughput::Bytes(input.len() as u64));
    for (name, sizes) in [
        ("tcp_1460", fixed(input.len(), TCP_FRAME)),
        ("ragged", ragged(input.len())),
    ] {
        let acc = accumulate(&input, &sizes);
        assert!(acc.is_done() && acc.invalid_events() == 0, "{name}");
        assert_eq!(acc.facts().finish_reasons, ["stop"], "{name}");
        g.bench_function(name, |b| b.iter(|| accumulate(black_box(&input), &sizes)));
    }
    g.finish();
}

fn bench_strip(c: &mut Criterion) {
    let input = chat_stream(true);
    let plain = chat_stream(false);
    let mut g = c.benchmark_group("strip_usage");
    g.throughput(Throughput::Bytes(input.len() as u64));
    for (name, sizes) in [
        ("tcp_1460", fixed(input.len(), TCP_FRAME)),
        ("ragged", ragged(input.len())),
    ] {
        let (acc, out) = strip(&input, &sizes);
        assert_eq!(acc.facts().usage.map(|u| u.total_tokens), Some(2019));
        assert!(out == plain, "{name}: stripping must give the plain stream");
        g.bench_function(name, |b| b.iter(|| strip(black_box(&input), &sizes)));
    }
    g.finish();
}

fn bench_tap(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let opts = RecorderOptions {
        pricing: PriceTable::default(),
        max_label_values: 1000,
        max_label_length: 128,
        metric_dimensions: Vec::new(),
        // the live view's ring is on by default; BENCH_RECENT_CALLS=0 measures without it
        recent_calls: std::env::var("BENCH_RECENT_CALLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    };
    let recorder: Arc<Recorder> = Telemetry::new(opts, &OtelSettings::none())
        .expect("telemetry without exporters")
        .recorder;
    let split = |input: Vec<u8>| {
        let all = Bytes::from(input);
        let mut at = 0;
        fixed(all.len(), TCP_FRAME)
            .into_iter()
            .map(|n| {
                at += n;
                all.slice(at - n..at)
            })
            .collect::<Vec<_>>()
    };
    let plain = chat_stream(false);
    let with_usage = chat_stream(true);
    let json = chat_json();
    let cases = [
        (
            "stream",
            split(with_usage.clone()),
            true,
            false,
            &with_usage,
        ),
        (
            "stream_strip_usage",
            split(with_usage.clone()),
            true,
            true,
            &plain,
        ),
        ("json_2k", split(json.clone()), false, false, &json),
    ];
    let mut g = c.benchmark_group("tap");
    for (name, frames, event_stream, strip_usage, want) in &cases {
        let len: usize = frames.iter().map(Bytes::len).sum();
        let got = rt.block_on(tap(frames, *event_stream, *strip_usage, &recorder));
        assert!(got == want.as_slice(), "{name}: unexpected client bytes");
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(*name, |b| {
            b.iter(|| rt.block_on(tap(frames, *event_stream, *strip_usage, &recorder)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = bench_sse, bench_accumulate, bench_strip, bench_tap
}
criterion_main!(benches);
