//! Properties of the parsers every proxied byte goes through, on generated
//! input: arbitrary byte splits, arbitrary JSON in every field, repeated
//! keys, truncated and oversized input.
//!
//! - nothing panics, and the SSE decoder never holds more than one event;
//! - stripping injected usage removes exactly what the injection added:
//!   the client's bytes are the stream the upstream would have sent without
//!   it, and between frames only the current incomplete event is held back;
//! - facts read from a stream split anywhere equal the facts of the whole,
//!   and a repeated key reads as its last value (as `serde_json::Value`,
//!   Python and JavaScript read it);
//! - decompression of a body split anywhere gives the body back.

use std::io::Write;
use std::ops::ControlFlow;
use std::time::Instant;

use proptest::prelude::*;
use serde_json::{Value, json};
use tokentap::call::Call;
use tokentap::genai::decode::Decoder;
use tokentap::genai::inject::UsageStripper;
use tokentap::genai::multipart;
use tokentap::genai::pricing::{Price, cost};
use tokentap::genai::provider::Provider;
use tokentap::genai::request::{Operation, RequestFacts};
use tokentap::genai::response::{ResponseFacts, Usage};
use tokentap::genai::sse::SseDecoder;
use tokentap::genai::stream::StreamAccumulator;
use tokentap::observe::{Observer, Pass};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Cut points for `len` bytes from arbitrary fractions.
fn cuts(len: usize, fractions: &[f64]) -> Vec<usize> {
    let mut c: Vec<usize> = fractions
        .iter()
        .map(|f| ((len as f64) * f) as usize)
        .map(|c| c.min(len))
        .collect();
    c.sort_unstable();
    c
}

/// `input` in frames cut at `fractions`.
fn frames<'a>(input: &'a [u8], fractions: &[f64]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts(input.len(), fractions)
        .into_iter()
        .chain(std::iter::once(input.len()))
    {
        out.push(&input[prev..c]);
        prev = c;
    }
    out
}

fn splits() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.0f64..=1.0, 0..12)
}

/// Any JSON value, with the numbers usage parsing must judge (integral
/// floats, negatives, huge counts) and strings with escapes.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u64..2000).prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        prop_oneof![Just(0.0), Just(2.0), Just(-0.0), Just(1e300), Just(3.5)].prop_map(Value::from),
        "[a-z0-9 _\\\\\"\n\u{e9}\u{2014}]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,12}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A JSON object as text whose members may repeat a key (which `Value`
/// cannot hold): members are written in the order given.
fn object_text(members: &[(String, Value)]) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// Members of an object drawn from `keys` (so repeats are common) with
/// arbitrary values, or a typical value of the key.
fn members(
    keys: &'static [&'static str],
    typical: impl Strategy<Value = Value> + Clone,
) -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::vec(
        (
            prop::sample::select(keys).prop_map(str::to_owned),
            prop_oneof![arb_json(), typical],
        ),
        0..8,
    )
}

fn typical_usage() -> impl Strategy<Value = Value> + Clone {
    (0u64..5000, 0u64..5000, any::<bool>()).prop_map(|(i, o, float)| {
        if float {
            json!({"prompt_tokens": i as f64, "completion_tokens": o, "total_tokens": i + o,
                   "prompt_tokens_details": {"cached_tokens": i / 2}})
        } else {
            json!({"input_tokens": i, "output_tokens": o as f64,
                   "output_tokens_details": {"reasoning_tokens": o / 2}})
        }
    })
}

fn typical_response_value() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        typical_usage(),
        "[a-z0-9-]{1,12}".prop_map(Value::String),
        Just(
            json!([{"index": 0, "finish_reason": "stop"}, {"index": 1, "finish_reason": "length"}])
        ),
        Just(json!([{"embedding": [0.1, 0.2]}, 5])),
        Just(json!({"reason": "max_output_tokens"})),
        Just(json!("incomplete")),
    ]
}

const RESPONSE_KEYS: &[&str] = &[
    "id",
    "model",
    "system_fingerprint",
    "service_tier",
    "usage",
    "choices",
    "status",
    "incomplete_details",
    "data",
    "error",
    "object",
];

const REQUEST_KEYS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "frequency_penalty",
    "presence_penalty",
    "stop",
    "seed",
    "n",
    "service_tier",
    "encoding_format",
    "response_format",
    "text",
    "modalities",
    "tools",
    "dimensions",
    "messages",
];

fn typical_request_value() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        "gpt-[a-z0-9]{1,6}".prop_map(Value::String),
        Just(json!(true)),
        Just(json!({"include_usage": true})),
        Just(json!(50.0)),
        Just(json!(0.7)),
        Just(json!(["\n", "END"])),
        Just(json!({"type": "json_schema"})),
        Just(json!({"format": {"type": "text"}})),
        Just(json!(["text", "audio"])),
        Just(json!([{"type": "function"}])),
    ]
}

const OPS: [Operation; 9] = [
    Operation::ChatCompletions,
    Operation::Responses,
    Operation::Completions,
    Operation::Embeddings,
    Operation::AudioTranscriptions,
    Operation::AudioTranslations,
    Operation::ImageGenerations,
    Operation::ImageEdits,
    Operation::Moderations,
];

/// The same text with repeated keys resolved as `Value` resolves them (the last wins).
fn deduplicated(text: &str) -> Vec<u8> {
    let v: Value = serde_json::from_str(text).expect("generated JSON is valid");
    serde_json::to_vec(&v).expect("serialises")
}

proptest! {
    #![proptest_config(config(160))]

    #[test]
    fn request_facts_read_repeated_keys_as_their_last_value(m in members(REQUEST_KEYS, typical_request_value())) {
        let text = object_text(&m);
        let facts = RequestFacts::parse(text.as_bytes());
        prop_assert!(facts.is_ok(), "an object is always read: {}", text);
        prop_assert_eq!(facts.ok(), RequestFacts::parse(&deduplicated(&text)).ok(), "{}", text);
    }

    #[test]
    fn response_facts_read_repeated_keys_as_their_last_value(m in members(RESPONSE_KEYS, typical_response_value())) {
        let text = object_text(&m);
        let last = deduplicated(&text);
        let value: Value = serde_json::from_slice(&last).expect("valid");
        for op in OPS {
            let facts = ResponseFacts::from_body(op, text.as_bytes());
            prop_assert!(facts.is_ok(), "an object is always read: {}", text);
            let facts = facts.ok();
            prop_assert_eq!(&facts, &ResponseFacts::from_body(op, &last).ok(), "{}", text);
            // the tree reader (the agent's, Responses events') agrees with the body reader
            prop_assert_eq!(facts, Some(ResponseFacts::from_value(op, &value)), "{}", text);
        }
    }

    #[test]
    fn usage_counts_are_in_range_whatever_the_values(u in arb_json(), i in arb_json(), o in arb_json(), t in arb_json()) {
        let body = json!({"usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": t, "x": u}});
        let f = ResponseFacts::from_body(Operation::ChatCompletions, body.to_string().as_bytes());
        prop_assert!(f.is_ok());
        if let Some(u) = f.ok().and_then(|f| f.usage) {
            let max = 1_000_000_000_000u64;
            prop_assert!(u.input_tokens <= max && u.output_tokens <= max && u.total_tokens <= 2 * max);
        }
    }

    #[test]
    fn truncated_and_arbitrary_bodies_never_panic(
        m in members(RESPONSE_KEYS, typical_response_value()),
        cut in 0.0f64..=1.0,
        junk in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let text = object_text(&m);
        let end = ((text.len() as f64) * cut) as usize;
        for body in [&text.as_bytes()[..end], &junk[..]] {
            let _ = RequestFacts::parse(body);
            for op in OPS {
                let _ = ResponseFacts::from_body(op, body);
            }
        }
    }
}

// ---- SSE decoding ----

/// Text made of SSE pieces (fields, comments, line ends) and stray bytes.
fn sse_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"event: x".to_vec()),
        Just(b": ping".to_vec()),
        Just(b"id: 1".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"{\"a\":1}".to_vec()),
        Just(b"[DONE]".to_vec()),
        Just("é—".as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..6),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

type Dispatched = Vec<(Option<Vec<u8>>, Vec<u8>)>;

fn decode_frames(frames: &[&[u8]], max_event: usize) -> (Dispatched, SseDecoder) {
    let mut d = SseDecoder::with_max_event(max_event);
    let mut out = Vec::new();
    let mut settled = 0;
    let mut fed = 0u64;
    for f in frames {
        d.feed(f, |e| {
            out.push((e.event.map(<[u8]>::to_vec), e.data.to_vec()))
        });
        fed += f.len() as u64;
        assert!(
            d.settled() >= settled && d.settled() <= fed,
            "settled {} of {}",
            d.settled(),
            fed
        );
        settled = d.settled();
        assert!(d.buffered() <= max_event, "{} bytes held", d.buffered());
    }
    (out, d)
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn sse_events_do_not_depend_on_frame_splits(input in sse_soup(), fractions in splits(), max in prop_oneof![Just(8usize), Just(64), Just(1 << 20)]) {
        let (whole, d) = decode_frames(&[&input], max);
        let (split, e) = decode_frames(&frames(&input, &fractions), max);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(d.oversized_events(), e.oversized_events());
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&whole, &decode_frames(&bytewise, max).0);
    }

    #[test]
    fn everything_is_settled_once_an_event_ends(input in sse_soup(), fractions in splits()) {
        let mut input = input;
        input.extend_from_slice(b"\n\n");
        let (_, d) = decode_frames(&frames(&input, &fractions), 64);
        prop_assert_eq!(d.settled(), input.len() as u64);
        prop_assert_eq!(d.buffered(), 0);
    }
}

// ---- usage stripping ----

#[derive(Debug, Clone)]
enum Item {
    /// A content chunk; the injected `"usage":null` goes before member `at` (0..=4).
    Chunk {
        content: String,
        at: usize,
    },
    Comment(String),
}

/// The upstream's stream without injection, the same stream with it, and
/// the byte spans of each event of the injected one.
struct Streams {
    plain: Vec<u8>,
    injected: Vec<u8>,
    events: Vec<(usize, usize)>,
}

fn build(items: &[Item], crlf: bool, usage_at: usize) -> Streams {
    let nl = if crlf { "\r\n" } else { "\n" };
    let (mut plain, mut injected, mut events) = (String::new(), String::new(), Vec::new());
    let mut chunk =
        |members: Vec<String>, at: Option<usize>, plain: &mut String, injected: &mut String| {
            let start = injected.len();
            let mut with = members.clone();
            if let Some(at) = at {
                with.insert(at.min(with.len()), r#""usage":null"#.to_owned());
            }
            plain.push_str(&format!("data: {{{}}}{nl}{nl}", members.join(",")));
            injected.push_str(&format!("data: {{{}}}{nl}{nl}", with.join(",")));
            events.push((start, injected.len()));
        };
    let head = |choices: String| {
        vec![
            r#""id":"chatcmpl-1""#.to_owned(),
            r#""object":"chat.completion.chunk""#.to_owned(),
            r#""model":"gpt-4o-mini""#.to_owned(),
            format!(r#""choices":{choices}"#),
        ]
    };
    for item in items {
        match item {
            Item::Chunk { content, at } => {
                let choices = format!(
                    r#"[{{"index":0,"delta":{{"content":{}}},"finish_reason":null}}]"#,
                    Value::String(content.clone())
                );
                chunk(head(choices), Some(*at), &mut plain, &mut injected);
            }
            Item::Comment(c) => {
                let line = format!(":{c}{nl}");
                plain.push_str(&line);
                injected.push_str(&line);
            }
        }
    }
    // the usage-only chunk exists only in the injected stream
    let mut usage = head("[]".to_owned());
    usage.insert(
        usage_at.min(usage.len()),
        r#""usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}"#.to_owned(),
    );
    let start = injected.len();
    injected.push_str(&format!("data: {{{}}}{nl}{nl}", usage.join(",")));
    events.push((start, injected.len()));
    let start = injected.len();
    plain.push_str(&format!("data: [DONE]{nl}{nl}"));
    injected.push_str(&format!("data: [DONE]{nl}{nl}"));
    events.push((start, injected.len()));
    Streams {
        plain: plain.into_bytes(),
        injected: injected.into_bytes(),
        events,
    }
}

fn items() -> impl Strategy<Value = Vec<Item>> {
    prop::collection::vec(
        prop_oneof![
            3 => ("[a-z \"\\\\\u{e9}]{0,10}", 0usize..=4).prop_map(|(content, at)| Item::Chunk { content, at }),
            1 => "[ a-z]{0,10}".prop_map(Item::Comment),
        ],
        0..8,
    )
}

/// The observer's edit loop over `frames`: returns the client's bytes.
fn strip(
    frames: &[&[u8]],
    max_event: usize,
    events: &[(usize, usize)],
) -> (Vec<u8>, StreamAccumulator) {
    let mut dec = SseDecoder::with_max_event(max_event);
    let mut acc = StreamAccumulator::new(Operation::ChatCompletions);
    let mut st = UsageStripper::new();
    let mut out = Vec::new();
    let mut fed = 0usize;
    for f in frames {
        st.push(f);
        dec.feed(f, |e| {
            let info = acc.on_event(e.event, e.data);
            st.event(&e, info);
        });
        st.release(dec.settled());
        out.extend(st.take_ready());
        fed += f.len();
        // held back: at most the bytes so far of the event in progress
        let in_progress = events
            .iter()
            .find(|(s, e)| *s < fed && fed < *e)
            .map_or(0, |(s, _)| fed - s);
        assert!(
            st.held() <= in_progress,
            "{} bytes held at {fed}, event part {in_progress}",
            st.held()
        );
    }
    out.extend(st.finish());
    (out, acc)
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn stripping_removes_exactly_what_injection_added(
        items in items(),
        crlf in any::<bool>(),
        usage_at in 0usize..=4,
        fractions in splits(),
    ) {
        let s = build(&items, crlf, usage_at);
        let (out, acc) = strip(&frames(&s.injected, &fractions), 1 << 20, &s.events);
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&s.plain));
        prop_assert_eq!(acc.facts().usage.map(|u| u.total_tokens), Some(5));
        prop_assert!(acc.is_done());
    }

    #[test]
    fn comments_pass_at_once(comments in prop::collection::vec("[ a-z]{0,10}", 1..8), crlf in any::<bool>(), fractions in splits()) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let input: String = comments.iter().map(|c| format!(":{c}{nl}{nl}")).collect();
        let mut dec = SseDecoder::new();
        let mut st = UsageStripper::new();
        let mut out = Vec::new();
        for f in frames(input.as_bytes(), &fractions) {
            st.push(f);
            dec.feed(f, |_| {});
            st.release(dec.settled());
            out.extend(st.take_ready());
            prop_assert_eq!(st.held(), 0);
        }
        prop_assert_eq!(out, input.into_bytes());
    }

    #[test]
    fn an_oversized_event_passes_unedited(items in items(), fractions in splits()) {
        let s = build(&items, false, 0);
        // every event is over the limit: nothing can be parsed, so nothing is edited
        let (out, acc) = strip(&frames(&s.injected, &fractions), 4, &s.events);
        prop_assert_eq!(out, s.injected);
        prop_assert_eq!(acc.facts().usage, None);
    }

    #[test]
    fn a_gzipped_injected_stream_reaches_the_client_plain_and_stripped(
        items in items(),
        usage_at in 0usize..=4,
        fractions in splits(),
    ) {
        let s = build(&items, false, usage_at);
        let gz = gzip(&s.injected);
        let (out, call) = observe(true, Some("gzip"), true, &frames(&gz, &fractions));
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&s.plain));
        prop_assert_eq!(call.usage().map(|u| u.total_tokens), Some(5));
        prop_assert!(call.parse_failures.is_empty(), "{:?}", call.parse_failures);
    }
}

// ---- facts from streams with arbitrary fields ----

fn chunk_event() -> impl Strategy<Value = String> {
    let keys: &'static [&'static str] = &[
        "id",
        "model",
        "system_fingerprint",
        "service_tier",
        "choices",
        "usage",
        "error",
    ];
    let typical = prop_oneof![
        typical_usage(),
        "[a-z0-9-]{1,10}".prop_map(Value::String),
        Just(
            json!([{"index": 0, "delta": {"content": "hi", "tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": null}])
        ),
        Just(json!([{"index": 1, "text": "x", "finish_reason": "length"}])),
        Just(json!([])),
    ];
    prop_oneof![
        8 => members(keys, typical).prop_map(|m| object_text(&m)),
        1 => Just("[DONE]".to_owned()),
        1 => "[a-z{}]{0,6}".prop_map(|s| s),
    ]
}

fn responses_event() -> impl Strategy<Value = (Option<String>, String)> {
    let kinds: &'static [&'static str] = &[
        "response.created",
        "response.output_text.delta",
        "response.completed",
        "response.incomplete",
        "error",
    ];
    let response = (arb_json(), typical_usage(), prop::sample::select(&["completed", "incomplete", "in_progress"][..]))
        .prop_map(|(junk, usage, status)| json!({"id": "resp_1", "model": "gpt-5", "status": status, "usage": usage, "x": junk}));
    (
        prop::option::of(prop::sample::select(kinds)),
        prop::sample::select(kinds),
        prop_oneof![arb_json(), response],
        prop_oneof![arb_json(), "[a-z]{0,5}".prop_map(Value::String)],
    )
        .prop_map(|(name, kind, response, delta)| {
            let data = object_text(&[
                ("type".to_owned(), Value::String(kind.to_owned())),
                ("response".to_owned(), response),
                ("delta".to_owned(), delta),
            ]);
            (name.map(str::to_owned), data)
        })
}

fn accumulate(op: Operation, frames: &[&[u8]]) -> (ResponseFacts, u64, bool) {
    let mut d = SseDecoder::new();
    let mut acc = StreamAccumulator::new(op).capturing(true);
    for f in frames {
        d.feed(f, |e| {
            acc.on_event(e.event, e.data);
        });
    }
    (acc.facts(), acc.invalid_events(), acc.is_done())
}

proptest! {
    #![proptest_config(config(160))]

    #[test]
    fn chat_stream_facts_do_not_depend_on_splits(events in prop::collection::vec(chunk_event(), 0..8), crlf in any::<bool>(), fractions in splits(), truncate in 0.0f64..=1.0) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let input: String = events.iter().map(|e| format!("data: {e}{nl}{nl}")).collect();
        let input = input.as_bytes();
        for op in [Operation::ChatCompletions, Operation::Completions] {
            let whole = accumulate(op, &[input]);
            prop_assert_eq!(&whole, &accumulate(op, &frames(input, &fractions)));
            // a truncated stream: never a panic, and the facts of what arrived
            let cut = &input[..((input.len() as f64) * truncate) as usize];
            prop_assert_eq!(accumulate(op, &[cut]), accumulate(op, &frames(cut, &fractions)));
        }
    }

    #[test]
    fn responses_stream_facts_do_not_depend_on_splits(events in prop::collection::vec(responses_event(), 0..6), fractions in splits()) {
        let input: String = events
            .iter()
            .map(|(name, data)| match name {
                Some(n) => format!("event: {n}\ndata: {data}\n\n"),
                None => format!("data: {data}\n\n"),
            })
            .collect();
        let whole = accumulate(Operation::Responses, &[input.as_bytes()]);
        prop_assert_eq!(whole, accumulate(Operation::Responses, &frames(input.as_bytes(), &fractions)));
    }
}

// ---- decompression ----

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("write");
    gz.finish().expect("finish")
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).expect("write");
    z.finish().expect("finish")
}

fn decode_all(coding: &str, frames: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut d = Decoder::for_encoding(Some(coding)).expect("known coding");
    let mut out = Vec::new();
    for f in frames {
        let r = d.decode(f, |b| {
            out.extend_from_slice(b);
            ControlFlow::Continue(())
        });
        if r.is_err() {
            return (out, false);
        }
    }
    (out, true)
}

fn new_call() -> Call {
    Call::new(
        Some(Operation::ChatCompletions),
        RequestFacts::default(),
        "POST".to_owned(),
        "/v1/chat/completions".to_owned(),
        Provider::default(),
        "api.openai.com".to_owned(),
        443,
    )
}

/// Drives an observer as the tap does: the client's bytes and the finished call.
fn observe(
    event_stream: bool,
    coding: Option<&str>,
    strip: bool,
    frames: &[&[u8]],
) -> (Vec<u8>, Call) {
    let mut obs = Observer::new(
        Some(Operation::ChatCompletions),
        event_stream,
        coding,
        strip,
        Instant::now(),
    );
    let mut out = Vec::new();
    for f in frames {
        match obs.on_data(f) {
            Pass::Unchanged => out.extend_from_slice(f),
            Pass::Edited(b) => out.extend(b),
        }
    }
    out.extend(obs.flush());
    let mut call = new_call();
    obs.finish_into(&mut call, true);
    (out, call)
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn decompression_does_not_depend_on_splits(data in prop::collection::vec(any::<u8>(), 0..4096), repeat in 1usize..64, fractions in splits(), truncate in 0.0f64..=1.0) {
        let data = data.repeat(repeat);
        for (coding, packed) in [("gzip", gzip(&data)), ("deflate", zlib(&data))] {
            prop_assert_eq!(decode_all(coding, &frames(&packed, &fractions)), (data.clone(), true), "{}", coding);
            // truncated: what arrived decodes to a prefix, without error
            let cut = &packed[..((packed.len() as f64) * truncate) as usize];
            let (out, ok) = decode_all(coding, &frames(cut, &fractions));
            prop_assert!(ok && data.starts_with(&out), "{}", coding);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(junk in prop::collection::vec(any::<u8>(), 0..512), fractions in splits()) {
        for coding in ["gzip", "deflate", "br", "identity"] {
            let _ = decode_all(coding, &frames(&junk, &fractions));
            for event_stream in [false, true] {
                let (out, _) = observe(event_stream, Some(coding), false, &frames(&junk, &fractions));
                prop_assert_eq!(out, junk.clone(), "forwarded unchanged");
            }
        }
    }

    #[test]
    fn a_gzipped_body_gives_the_facts_of_the_plain_one(m in members(RESPONSE_KEYS, typical_response_value()), fractions in splits()) {
        let body = object_text(&m);
        let (_, plain) = observe(false, None, false, &[body.as_bytes()]);
        let gz = gzip(body.as_bytes());
        let (out, packed) = observe(false, Some("gzip"), false, &frames(&gz, &fractions));
        prop_assert_eq!(out, gz);
        prop_assert_eq!(plain.response, packed.response);
        prop_assert_eq!(plain.parse_failures, packed.parse_failures);
    }
}

/// A usage whose details are arbitrary: they may exceed the totals they are parts of.
fn arb_usage() -> impl Strategy<Value = Usage> {
    let count = || prop::option::of(0u64..5000);
    (
        (0u64..5000, 0u64..5000, count()),
        (count(), count(), count(), count(), count()),
        (count(), count(), count(), count()),
    )
        .prop_map(
            |((input, output, cached), (ia, it, ii, ca, ct), (ci, oa, ot, oi))| {
                let mut u = Usage {
                    input_tokens: input,
                    output_tokens: output,
                    total_tokens: input + output,
                    cached_input_tokens: cached,
                    ..Usage::default()
                };
                u.details.input_audio = ia;
                u.details.input_text = it;
                u.details.input_image = ii;
                u.details.cached_audio = ca;
                u.details.cached_text = ct;
                u.details.cached_image = ci;
                u.details.output_audio = oa;
                u.details.output_text = ot;
                u.details.output_image = oi;
                u
            },
        )
}

fn arb_price() -> impl Strategy<Value = Price> {
    let rate = || 0.0f64..100.0;
    let opt = || prop::option::of(0.0f64..100.0);
    (
        (rate(), opt(), rate()),
        (opt(), opt(), opt()),
        (opt(), opt(), opt()),
    )
        .prop_map(
            |((input, cached_input, output), (ai, cai, ao), (ii, cii, io))| Price {
                input,
                cached_input,
                output,
                audio_input: ai,
                cached_audio_input: cai,
                audio_output: ao,
                image_input: ii,
                cached_image_input: cii,
                image_output: io,
            },
        )
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn cost_prices_each_reported_token_once(u in arb_usage(), p in arb_price()) {
        // every token is priced exactly once, at one of the model's rates, whatever the
        // details claim: the cost lies between the totals at the lowest and highest rate
        let rates = [
            Some(p.input), p.cached_input, Some(p.output), p.audio_input, p.cached_audio_input,
            p.audio_output, p.image_input, p.cached_image_input, p.image_output,
        ];
        let rates: Vec<f64> = rates.into_iter().flatten().collect();
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        let n = (u.input_tokens + u.output_tokens) as f64;
        let c = cost(&p, &u);
        prop_assert!(c.is_finite() && c >= 0.0);
        prop_assert!(c <= n * hi / 1e6 * (1.0 + 1e-12) + 1e-15, "{} > {}", c, n * hi / 1e6);
        prop_assert!(c >= n * lo / 1e6 * (1.0 - 1e-12) - 1e-15, "{} < {}", c, n * lo / 1e6);
        // with every rate equal, the details cannot change the cost
        let flat = Price { cached_input: Some(p.input), output: p.input, audio_input: Some(p.input),
            cached_audio_input: Some(p.input), audio_output: Some(p.input), image_input: Some(p.input),
            cached_image_input: Some(p.input), image_output: Some(p.input), ..p };
        prop_assert!((cost(&flat, &u) - n * p.input / 1e6).abs() <= 1e-12 * (1.0 + n * p.input / 1e6));
    }

    #[test]
    fn multipart_scan_never_panics(body in prop::collection::vec(any::<u8>(), 0..1024), boundary in "[a-z0-9-]{1,12}") {
        let _ = multipart::text_fields(&body, &boundary, &["model", "stream"]);
    }

    #[test]
    fn multipart_fields_are_read_back(
        model in "[ -~]{1,60}",
        file in prop::collection::vec(any::<u8>(), 0..2048),
        first in any::<bool>(),
    ) {
        let boundary = "proptest-boundary-0123456789";
        let field = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n");
        let mut file_part = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n").into_bytes();
        file_part.extend_from_slice(&file);
        file_part.extend_from_slice(b"\r\n");
        let mut body = Vec::new();
        if first {
            body.extend_from_slice(field.as_bytes());
            body.extend_from_slice(&file_part);
        } else {
            body.extend_from_slice(&file_part);
            body.extend_from_slice(field.as_bytes());
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let f = RequestFacts::parse_for(
            Operation::AudioTranscriptions,
            &body,
            Some(&format!("multipart/form-data; boundary={boundary}")),
        );
        prop_assert_eq!(f.ok().and_then(|f| f.model), Some(model));
    }
}
