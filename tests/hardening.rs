//! Regression tests for the findings of issue 11 (docs/configuration.md "Limits and hostile input"), one per finding,
//! each against the real binary in front of `--demo` or a scripted upstream
//! that misbehaves the way the finding needs. The slow-client findings
//! (slowloris heads, request-body deadline, idle keep-alives, the connection
//! limit) are in `tests/hostile.rs`; here only their flags are checked.

#[path = "support/blackbox/mod.rs"]
mod blackbox;

use std::sync::Arc;
use std::time::Duration;

use blackbox::child::{Tokentap, run_to_exit};
use blackbox::upstream::{self, Recorded, Step, Upstream};
use blackbox::wire::{self, ANSWER_DEADLINE, NORMAL_CHAT, NORMAL_STREAM, within};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::Notify;

const MIB: usize = 1 << 20;

/// Polls `read` (a process's output) until it contains `needle`.
async fn output_until(read: impl Fn() -> String, needle: &str) -> String {
    let mut out = read();
    for _ in 0..100 {
        if out.contains(needle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        out = read();
    }
    out
}

fn longest_line(s: &str) -> usize {
    s.lines().map(str::len).max().unwrap_or(0)
}

/// The value inside `String(Owned("…"))` / `String(Static("…"))` of a console-exporter attribute line.
fn console_string_value(line: &str) -> Option<&str> {
    let start = line.find("(\"")? + 2;
    let end = line.rfind("\")")?;
    line.get(start..end)
}

// ---- finding: one chat request with a 1 MiB `model` turns /metrics into 130 MB,
// ---- and span names and log lines carry the full string

#[tokio::test(flavor = "multi_thread")]
async fn a_one_mib_model_name_is_bounded_in_metrics_spans_and_logs() {
    let mut tt = Tokentap::start_with(
        &[
            "--demo",
            "--demo-chunk-delay",
            "0ms",
            "--log",
            "info,tokentap=debug",
        ],
        &[("OTEL_TRACES_EXPORTER", "console")],
    );
    // a two-byte character straddles byte 256: a cut there must not split it (or panic)
    let model = format!("{}é{}", "m".repeat(255), "m".repeat(MIB));
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let r = wire::post_json(tt.addr, "/v1/chat/completions", body.to_string()).await;
    // the client still gets the upstream's answer, untouched (the demo echoes the model)
    assert_eq!(r.status, StatusCode::OK, "{:.200}", r.text());
    assert_eq!(r.json()["model"], model.as_str());

    let page =
        wire::metrics_until(tt.addr, |p| wire::sum(p, "llm_requests_total", &[]) >= 1.0).await;
    assert!(
        page.len() < 64 * 1024,
        "/metrics is {} bytes after one call with a 1 MiB model",
        page.len()
    );
    for (name, labels, _) in wire::samples(&page) {
        for (k, v) in labels {
            assert!(
                v.len() <= 128,
                "{name}{{{k}=…}} carries a {}-byte value",
                v.len()
            );
        }
    }
    // --max-label-length (default 128): longer values are recorded as `other`
    assert_eq!(
        wire::sum(&page, "llm_requests_total", &[("model", "other")]),
        1.0,
        "{}",
        wire::grep(&page, "llm_requests_total")
    );
    assert!(
        wire::sum(
            &page,
            "gen_ai_client_operation_duration_seconds_count",
            &[
                ("gen_ai_request_model", "other"),
                ("gen_ai_response_model", "other")
            ]
        ) >= 1.0,
        "{}",
        wire::grep(&page, "gen_ai_client_operation_duration_seconds_count")
    );

    // the span (console exporter on stdout): name and model attributes cut to ≤ 256 bytes
    let stdout = output_until(|| tt.stdout(), "gen_ai.response.model").await;
    let names: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Name"))
        .filter_map(|l| l.trim_start().strip_prefix(':'))
        .map(str::trim)
        .filter(|n| n.starts_with("chat m"))
        .collect();
    assert_eq!(
        names.len(),
        1,
        "one chat span on the console; stdout has {} bytes",
        stdout.len()
    );
    assert!(
        names[0].len() <= "chat ".len() + 256,
        "span name of {} bytes",
        names[0].len()
    );
    for key in ["gen_ai.request.model:", "gen_ai.response.model:"] {
        let line = stdout
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("{key} on the span"));
        let v = console_string_value(line).unwrap_or_else(|| panic!("a string value: {line:.300}"));
        assert!(v.len() <= 256, "{key} of {} bytes", v.len());
        assert!(
            v.starts_with(&"m".repeat(100)),
            "{key} is the model, cut: {v:.300}"
        );
    }
    assert!(
        longest_line(&stdout) < 4096,
        "a {}-byte line on stdout",
        longest_line(&stdout)
    );

    // the log line of the call: bounded too
    let stderr = output_until(|| tt.stderr(), "llm call finished").await;
    assert!(stderr.contains("llm call finished"), "{stderr:.2000}");
    assert!(
        longest_line(&stderr) < 4096,
        "a {}-byte log line",
        longest_line(&stderr)
    );

    // a newline in a model name cannot forge a log line
    let forged = r#"{"model":"gpt-4o-mini\nFORGED level=ERROR","messages":[{"role":"user","content":"hi"}]}"#;
    let r = wire::post_json(tt.addr, "/v1/chat/completions", forged).await;
    assert_eq!(r.status, StatusCode::OK);
    let stderr = output_until(|| tt.stderr(), "FORGED").await;
    assert!(
        stderr.contains("FORGED"),
        "the call is logged: {stderr:.2000}"
    );
    assert!(
        !stderr.lines().any(|l| l.starts_with("FORGED")),
        "a raw newline from a model name reached the log: {stderr:.4000}"
    );
    wire::assert_serves(&mut tt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn otel_attribute_value_length_limit_lowers_the_cut() {
    let tt = Tokentap::start_with(
        &["--demo", "--demo-chunk-delay", "0ms"],
        &[
            ("OTEL_TRACES_EXPORTER", "console"),
            ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "32"),
        ],
    );
    let model = "m".repeat(300);
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let r = wire::post_json(tt.addr, "/v1/chat/completions", body.to_string()).await;
    assert_eq!(r.status, StatusCode::OK);
    let stdout = output_until(|| tt.stdout(), "gen_ai.request.model:").await;
    let line = stdout
        .lines()
        .find(|l| l.contains("gen_ai.request.model:"))
        .expect("gen_ai.request.model on the span");
    let v = console_string_value(line).expect("a string value");
    assert!(
        v.len() <= 32,
        "gen_ai.request.model of {} bytes with a limit of 32",
        v.len()
    );
    assert!(v.starts_with("mmmmmmmmmmmmmmmm"), "{v}");
}

// ---- finding: the agent's routes read bodies with no limit; a 4 MiB
// ---- conversation_id becomes a key and a 4 MiB log line; GET /conversation-summary
// ---- creates conversations and can evict real ones

async fn summary(tt: &Tokentap, id: &str) -> serde_json::Value {
    let r = wire::get(
        tt.addr,
        &format!("/conversation-summary?conversation_id={id}"),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "summary of {id:.60}: {}",
        r.text()
    );
    r.json()
}

fn zeros() -> serde_json::Value {
    serde_json::json!({"total_messages": 0, "user_messages": 0, "assistant_messages": 0, "conversation_turns": 0})
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_bodies_over_agent_max_body_are_413() {
    let mut tt = Tokentap::demo(&[]);
    // 8 MiB to /chat (the default --agent-max-body is 1MiB), announced or chunked; the
    // request is written while the answer is read (an early 413 may cut the upload)
    let big = format!(r#"{{"message":"{}"}}"#, "x".repeat(8 * MIB));
    for chunked in [false, true] {
        let status =
            wire::send_raw(tt.addr, wire::raw_post("/chat", big.as_bytes(), chunked)).await;
        assert_eq!(status, Some(413), "8 MiB /chat body (chunked: {chunked})");
    }
    let big = format!(
        r#"{{"conversation_id":"a","padding":"{}"}}"#,
        "x".repeat(8 * MIB)
    );
    let status = wire::send_raw(
        tt.addr,
        wire::raw_post("/new-conversation", big.as_bytes(), false),
    )
    .await;
    assert_eq!(status, Some(413), "8 MiB /new-conversation body");
    // nothing of it was stored
    let r = wire::get(tt.addr, "/conversation-summary").await;
    assert_eq!(r.json(), zeros());
    // a body under the limit is still served
    let ok = format!(r#"{{"message":"{}"}}"#, "hello ".repeat(85_000));
    assert!(ok.len() < MIB);
    let r = wire::post_json(tt.addr, "/chat", ok).await;
    assert_eq!(r.status, StatusCode::OK, "{:.300}", r.text());
    let r = wire::get(tt.addr, "/conversation-summary").await;
    assert_eq!(r.json()["total_messages"], 2);
    wire::assert_serves(&mut tt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_conversation_ids_are_bounded_and_well_formed() {
    let mut tt = Tokentap::start(&[
        "--demo",
        "--demo-chunk-delay",
        "0ms",
        "--log",
        "info,tokentap=debug",
    ]);
    let chat = |id: &str| serde_json::json!({"message": "hi", "conversation_id": id}).to_string();
    let new = |id: &str| serde_json::json!({"conversation_id": id}).to_string();

    // a 4 MiB id makes the body larger than --agent-max-body: 413 before any parsing
    let body = chat(&"c".repeat(4 * MIB));
    let status = wire::send_raw(tt.addr, wire::raw_post("/chat", body.as_bytes(), false)).await;
    assert_eq!(status, Some(413), "a 4 MiB conversation_id");

    let half_mib = "c".repeat(MIB / 2);
    let bad = [
        half_mib.as_str(),
        &"c".repeat(129),
        "",
        "has space",
        "new\nline",
        "slash/ed",
        "ünïcode",
        "quote\"d",
    ];
    for id in bad {
        for (path, body) in [("/chat", chat(id)), ("/new-conversation", new(id))] {
            let r = wire::post_json(tt.addr, path, body).await;
            assert_eq!(
                r.status.as_u16(),
                422,
                "{path} with conversation_id {id:.40?} ({} bytes): {:.300}",
                id.len(),
                r.text()
            );
        }
    }
    for q in ["has%20space", "new%0Aline", &"c".repeat(129), "%C3%BC"] {
        let r = wire::get(
            tt.addr,
            &format!("/conversation-summary?conversation_id={q}"),
        )
        .await;
        assert_eq!(r.status.as_u16(), 422, "summary of {q:.40}: {}", r.text());
    }
    // 1–128 characters of [A-Za-z0-9._:-] are fine
    let longest_ok = format!("Az09._:-{}", "k".repeat(120));
    assert_eq!(longest_ok.len(), 128);
    for id in ["a", longest_ok.as_str()] {
        let r = wire::post_json(tt.addr, "/chat", chat(id)).await;
        assert_eq!(r.status, StatusCode::OK, "{id}: {}", r.text());
        assert_eq!(summary(&tt, id).await["total_messages"], 2);
    }
    // no id reached a log line whole
    assert!(
        longest_line(&tt.stderr()) < 4096,
        "a {}-byte log line",
        longest_line(&tt.stderr())
    );
    wire::assert_serves(&mut tt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conversation_summary_never_creates_or_evicts_a_conversation() {
    let mut tt = Tokentap::demo(&["--agent-max-conversations", "2"]);
    for id in ["conv-a", "conv-b"] {
        let body =
            serde_json::json!({"message": format!("hello from {id}"), "conversation_id": id});
        let r = wire::post_json(tt.addr, "/chat", body.to_string()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    // unknown ids answer zeros…
    for i in 0..20 {
        assert_eq!(summary(&tt, &format!("unknown-{i}")).await, zeros());
    }
    assert_eq!(
        wire::get(tt.addr, "/conversation-summary").await.json(),
        zeros()
    );
    // …and did not push the real ones out of a store of two
    for id in ["conv-a", "conv-b"] {
        let s = summary(&tt, id).await;
        assert_eq!(
            s,
            serde_json::json!({"total_messages": 2, "user_messages": 1, "assistant_messages": 1, "conversation_turns": 1}),
            "{id} after 21 summaries of unknown conversations"
        );
    }
    let body = serde_json::json!({"message": "still there?", "conversation_id": "conv-a"});
    let r = wire::post_json(tt.addr, "/chat", body.to_string()).await;
    assert_eq!(r.json()["conversation_turn"], 2, "{}", r.text());
    wire::assert_serves(&mut tt).await;
}

// ---- finding: no header-read timeout, no request-body deadline, no idle limit,
// ---- no connection limit (behaviour: tests/hostile.rs; here: the flags and defaults)

#[test]
fn limit_flags_are_listed_with_env_vars_and_defaults() {
    let out = blackbox::child::command()
        .arg("--help")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env, default) in [
        ("--header-timeout", "TOKENTAP_HEADER_TIMEOUT", "30s"),
        ("--request-timeout", "TOKENTAP_REQUEST_TIMEOUT", "60s"),
        ("--idle-timeout", "TOKENTAP_IDLE_TIMEOUT", "300s"),
        ("--max-connections", "TOKENTAP_MAX_CONNECTIONS", "10000"),
        ("--max-label-length", "TOKENTAP_MAX_LABEL_LENGTH", "128"),
        ("--agent-max-body", "TOKENTAP_AGENT_MAX_BODY", "1MiB"),
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} in --help:\n{help}"));
        assert!(line.contains(env), "{flag} names {env}: {line}");
        assert!(
            line.contains(default),
            "{flag} shows its default {default}: {line}"
        );
    }
}

// ---- finding: an upstream that gzips an injected stream despite
// ---- `Accept-Encoding: identity` makes the client see the injected usage

#[tokio::test(flavor = "multi_thread")]
async fn a_gzipped_injected_stream_is_stripped_and_sent_uncompressed() {
    let up = Upstream::start(|req: &Recorded| {
        let events =
            upstream::chat_stream_events("gpt-4o-mini-2024-07-18", req.asks_for_usage(), (9, 2));
        let mut steps = vec![Step::Send(upstream::sse_head(&[(
            "content-encoding",
            "gzip",
        )]))];
        for piece in upstream::gzip_pieces(&events) {
            steps.push(Step::Send(upstream::chunk(&piece)));
        }
        steps.push(Step::Send(upstream::last_chunk()));
        steps
    })
    .await;
    let mut tt = Tokentap::in_front_of(&up.base_url(), &[]);
    let req = wire::request(
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer sk-test"),
            // what the official Python SDK sends
            ("accept-encoding", "gzip, deflate"),
        ],
        NORMAL_STREAM,
    );
    let r = wire::send(tt.addr, req).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].asks_for_usage(),
        "usage was injected: {:?}",
        seen[0].body
    );
    assert_eq!(seen[0].header("accept-encoding"), Some("identity"));

    assert!(
        r.headers.get("content-encoding").is_none(),
        "sent on uncompressed: {:?}",
        r.headers
    );
    let text = r.text();
    assert!(
        !text.contains("\"usage\""),
        "injected usage reached the client:\n{text}"
    );
    let plain = upstream::chat_stream_events("gpt-4o-mini-2024-07-18", false, (9, 2)).concat();
    assert_eq!(text, plain, "the bytes of the stream the client asked for");

    let page = wire::metrics_until(tt.addr, |p| {
        wire::sum(
            p,
            "llm_tokens_used_total",
            &[("model", "gpt-4o-mini"), ("type", "prompt")],
        ) > 0.0
    })
    .await;
    for (kind, n) in [("prompt", 9.0), ("completion", 2.0), ("total", 11.0)] {
        assert_eq!(
            wire::sum(
                &page,
                "llm_tokens_used_total",
                &[("model", "gpt-4o-mini"), ("type", kind)]
            ),
            n,
            "{kind} tokens: {}",
            wire::grep(&page, "llm_tokens_used_total")
        );
    }
    wire::assert_alive(&mut tt).await;
}

// ---- finding: with injection on, SSE comment lines are held back until the
// ---- next data event, and an upstream that only sends comments grows the buffer

#[tokio::test(flavor = "multi_thread")]
async fn sse_comments_reach_the_client_at_once() {
    let model = "gpt-4o-mini-2024-07-18";
    for args in [&["--no-usage-injection"][..], &[][..]] {
        let gate = Arc::new(Notify::new());
        let g = gate.clone();
        let up = Upstream::start(move |req: &Recorded| {
            let events = upstream::chat_stream_events(model, req.asks_for_usage(), (9, 2));
            let mut steps = vec![
                Step::Send(upstream::sse_head(&[])),
                Step::Send(upstream::chunk(b": ping\n\n")),
                Step::Send(upstream::chunk(events[0].as_bytes())),
                Step::Send(upstream::chunk(b": keep-alive\n\n")),
                // the next data waits until the client has seen the comment (or GATE_CAP)
                Step::Gate(g.clone()),
            ];
            for e in &events[1..] {
                steps.push(Step::Send(upstream::chunk(e.as_bytes())));
            }
            steps.push(Step::Send(upstream::last_chunk()));
            steps
        })
        .await;
        let tt = Tokentap::in_front_of(&up.base_url(), args);
        let req = wire::request(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            NORMAL_STREAM,
        );
        let resp = wire::open(tt.addr, req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let plain = upstream::chat_stream_events(model, false, (9, 2));
        let before_gate = format!(": ping\n\n{}: keep-alive\n\n", plain[0]);
        let mut got = Vec::new();
        within(
            Duration::from_secs(10),
            &format!("the `: keep-alive` comment while the upstream waits ({args:?})"),
            async {
                while !got.ends_with(b": keep-alive\n\n") {
                    let frame = body.frame().await.expect("more body").expect("frame");
                    if let Some(d) = frame.data_ref() {
                        got.extend_from_slice(d);
                    }
                }
            },
        )
        .await;
        assert_eq!(String::from_utf8_lossy(&got), before_gate, "{args:?}");
        gate.notify_one();
        let rest = wire::collect(body, ANSWER_DEADLINE).await;
        got.extend_from_slice(&rest);
        let expected = format!("{before_gate}{}", plain[1..].concat());
        assert_eq!(String::from_utf8_lossy(&got), expected, "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_comment_only_upstream_does_not_grow_memory() {
    const COMMENTS: usize = 48 * 1024; // 48 MiB of keep-alives before any data
    let comment = Bytes::from(format!(": keep-alive {}\n\n", ".".repeat(1024 - 15)));
    assert_eq!(comment.len(), 1024);
    let c = comment.clone();
    let up = Upstream::start(move |req: &Recorded| {
        let events = upstream::chat_stream_events("gpt-4o-mini", req.asks_for_usage(), (9, 2));
        let mut steps = vec![Step::Send(upstream::sse_head(&[]))];
        if req.json()["messages"][0]["content"] == "flood" {
            steps.push(Step::Repeat(upstream::chunk(&c), COMMENTS));
        }
        for e in &events {
            steps.push(Step::Send(upstream::chunk(e.as_bytes())));
        }
        steps.push(Step::Send(upstream::last_chunk()));
        steps
    })
    .await;
    let mut tt = Tokentap::in_front_of(&up.base_url(), &[]);
    for _ in 0..10 {
        let r = wire::post_json(tt.addr, "/v1/chat/completions", NORMAL_STREAM).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let (rss, peak) = (tt.rss_kib(), tt.peak_rss_kib());

    let flood =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"flood"}]}"#;
    let req = wire::request(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        flood,
    );
    let resp = wire::open(tt.addr, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let (mut total, mut tail) = (0usize, Vec::new());
    within(Duration::from_secs(120), "the comment flood", async {
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.expect("frame").data_ref() {
                total += d.len();
                tail.extend_from_slice(d);
                let keep = tail.len().saturating_sub(8192);
                tail.drain(..keep);
            }
        }
    })
    .await;
    let plain = upstream::chat_stream_events("gpt-4o-mini", false, (9, 2)).concat();
    assert_eq!(
        total,
        COMMENTS * comment.len() + plain.len(),
        "every comment byte reached the client"
    );
    assert!(String::from_utf8_lossy(&tail).ends_with(&plain));

    let grown = tt.peak_rss_kib().saturating_sub(peak.max(rss));
    eprintln!("comment flood: peak RSS grew {grown} KiB");
    assert!(
        grown <= 16 * 1024,
        "peak RSS grew by {grown} KiB over 48 MiB of comments (baseline {rss} KiB, peak before {peak} KiB)"
    );
    wire::assert_alive(&mut tt).await;
}

// ---- finding: one field of an unexpected type discards the whole usage, and
// ---- duplicate "model" keys make the call `unknown`

#[tokio::test(flavor = "multi_thread")]
async fn lenient_usage_parsing_loses_only_the_bad_field() {
    let up = Upstream::start(|req: &Recorded| {
        let body = match req.json()["model"].as_str() {
            // an integral float and a numeric system_fingerprint: nothing is lost
            Some("gpt-4o-mini") => upstream::chat_completion(
                "gpt-4o-mini-2024-07-18",
                r#"{"prompt_tokens":11,"completion_tokens":2.0,"total_tokens":13}"#,
                r#","system_fingerprint":12345"#,
            ),
            // a negative count: that field only is lost
            Some("gpt-4o") => upstream::chat_completion(
                "gpt-4o-2024-08-06",
                r#"{"prompt_tokens":7,"completion_tokens":-3}"#,
                "",
            ),
            // an absurd count: that field only is lost
            _ => upstream::chat_completion(
                "gpt-4.1-2025-04-14",
                r#"{"prompt_tokens":1e30,"completion_tokens":5}"#,
                "",
            ),
        };
        upstream::json(200, &body)
    })
    .await;
    let mut tt = Tokentap::in_front_of(&up.base_url(), &[]);
    let call = |model: &str| {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
    };
    let tokens = |page: &str, model: &str, kind: &str| {
        wire::sum(
            page,
            "llm_tokens_used_total",
            &[("model", model), ("type", kind)],
        )
    };
    let invalid = |page: &str| {
        wire::sum(
            page,
            "tokentap_parse_errors_total",
            &[("reason", "invalid_usage")],
        )
    };

    let r = wire::post_json(tt.addr, "/v1/chat/completions", call("gpt-4o-mini")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text().contains(r#""completion_tokens":2.0"#),
        "bytes untouched: {}",
        r.text()
    );
    let page =
        wire::metrics_until(tt.addr, |p| wire::sum(p, "llm_requests_total", &[]) >= 1.0).await;
    assert_eq!(
        tokens(&page, "gpt-4o-mini", "prompt"),
        11.0,
        "{}",
        wire::grep(&page, "llm_tokens_used_total")
    );
    assert_eq!(
        tokens(&page, "gpt-4o-mini", "completion"),
        2.0,
        "{}",
        wire::grep(&page, "llm_tokens_used_total")
    );
    assert_eq!(
        tokens(&page, "gpt-4o-mini", "total"),
        13.0,
        "{}",
        wire::grep(&page, "llm_tokens_used_total")
    );
    let invalid_before = invalid(&page);

    for model in ["gpt-4o", "gpt-4.1"] {
        let r = wire::post_json(tt.addr, "/v1/chat/completions", call(model)).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let page =
        wire::metrics_until(tt.addr, |p| wire::sum(p, "llm_requests_total", &[]) >= 3.0).await;
    assert_eq!(
        tokens(&page, "gpt-4o", "prompt"),
        7.0,
        "the rest of the usage survives -3: {}",
        wire::grep(&page, "llm_tokens_used_total")
    );
    assert_eq!(
        tokens(&page, "gpt-4o", "completion"),
        0.0,
        "a negative count is not recorded: {}",
        wire::grep(&page, "llm_tokens_used_total")
    );
    assert_eq!(
        tokens(&page, "gpt-4.1", "completion"),
        5.0,
        "the rest of the usage survives 1e30: {}",
        wire::grep(&page, "llm_tokens_used_total")
    );
    assert!(
        tokens(&page, "gpt-4.1", "prompt") < 1e6,
        "an absurd count is not recorded: {}",
        wire::grep(&page, "llm_tokens_used_total")
    );
    assert!(
        invalid(&page) >= invalid_before + 2.0,
        "each unusable value is counted as invalid_usage: {}",
        wire::grep(&page, "tokentap_parse_errors_total")
    );
    wire::assert_alive(&mut tt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_model_keys_last_one_wins() {
    let up = Upstream::start(|_: &Recorded| {
        upstream::json(
            200,
            &upstream::chat_completion(
                "gpt-4o-mini-2024-07-18",
                r#"{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}"#,
                "",
            ),
        )
    })
    .await;
    let mut tt = Tokentap::in_front_of(&up.base_url(), &[]);
    let body =
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"model":"gpt-4o-mini"}"#;
    let r = wire::post_json(tt.addr, "/v1/chat/completions", body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        up.requests()[0].body,
        body.as_bytes(),
        "forwarded unchanged"
    );
    let page =
        wire::metrics_until(tt.addr, |p| wire::sum(p, "llm_requests_total", &[]) >= 1.0).await;
    assert_eq!(
        wire::sum(&page, "llm_requests_total", &[("model", "gpt-4o-mini")]),
        1.0,
        "{}",
        wire::grep(&page, "llm_requests_total")
    );
    assert_eq!(
        wire::sum(&page, "llm_requests_total", &[("model", "unknown")]),
        0.0,
        "{}",
        wire::grep(&page, "llm_requests_total")
    );
    assert_eq!(
        wire::sum(&page, "llm_requests_total", &[("model", "gpt-4o")]),
        0.0,
        "{}",
        wire::grep(&page, "llm_requests_total")
    );
    assert_eq!(
        wire::sum(
            &page,
            "llm_tokens_used_total",
            &[("model", "gpt-4o-mini"), ("type", "total")]
        ),
        8.0,
        "{}",
        wire::grep(&page, "llm_tokens_used_total")
    );
    wire::assert_alive(&mut tt).await;
}

// ---- finding: `--read-timeout` with an enormous value is accepted and then
// ---- every response panics

#[tokio::test(flavor = "multi_thread")]
async fn enormous_durations_are_configuration_errors() {
    for flag in [
        "--read-timeout",
        "--connect-timeout",
        "--shutdown-grace",
        "--header-timeout",
        "--request-timeout",
        "--idle-timeout",
    ] {
        for value in ["1000000000s", "9000h"] {
            let exit = run_to_exit(&["--demo", flag, value], &[]);
            assert!(!exit.started, "{flag} {value} was accepted");
            assert_eq!(exit.code, Some(2), "{flag} {value}: {exit:?}");
            assert_eq!(
                exit.stderr.trim_end().lines().count(),
                1,
                "one line: {exit:?}"
            );
            assert!(exit.stderr.contains(flag), "names {flag}: {exit:?}");
            assert!(!exit.stderr.contains("panicked"), "{exit:?}");
        }
    }
    let exit = run_to_exit(&["--demo"], &[("TOKENTAP_READ_TIMEOUT", "1000000000s")]);
    assert!(
        !exit.started && exit.code == Some(2),
        "TOKENTAP_READ_TIMEOUT: {exit:?}"
    );
    assert!(exit.stderr.contains("--read-timeout"), "{exit:?}");

    // just under a year is a valid setting, and requests do not panic on it
    let mut tt = Tokentap::start(&[
        "--demo",
        "--demo-chunk-delay",
        "0ms",
        "--read-timeout",
        "8000h",
        "--connect-timeout",
        "8000h",
    ]);
    let r = wire::post_json(tt.addr, "/v1/chat/completions", NORMAL_STREAM).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text().trim_end().ends_with("data: [DONE]"),
        "{}",
        r.text()
    );
    wire::assert_serves(&mut tt).await;
}

// ---- finding: `/v1/../../admin` is forwarded verbatim past the upstream's path prefix

#[tokio::test(flavor = "multi_thread")]
async fn dot_segment_paths_are_refused_and_never_forwarded() {
    let up =
        Upstream::start(|_: &Recorded| upstream::json(200, r#"{"object":"list","data":[]}"#)).await;
    let mut tt = Tokentap::in_front_of(&format!("{}/prefix", up.base_url()), &[]);
    for (method, target) in [
        ("GET", "/v1/../../admin"),
        ("GET", "/v1/%2e%2e/%2e%2e/admin"),
        ("GET", "/v1/%2E%2E/admin"),
        ("GET", "/v1/.%2e/admin"),
        ("GET", "/v1/%2e./admin"),
        ("GET", "/v1/./models"),
        ("GET", "/v1/%2e/models"),
        ("GET", "/v1/models/.."),
        ("GET", "/.."),
        ("POST", "/v1/./chat/completions"),
        ("POST", "/v1/chat/../chat/completions"),
    ] {
        let raw = format!(
            "{method} {target} HTTP/1.1\r\nHost: tokentap.test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{NORMAL_CHAT}",
            NORMAL_CHAT.len()
        );
        let got = wire::raw_exchange(tt.addr, raw.as_bytes()).await;
        let r = wire::parse_response(&got).unwrap_or_else(|| {
            panic!(
                "{target}: not a response: {:?}",
                String::from_utf8_lossy(&got)
            )
        });
        assert_eq!(
            r.status,
            400,
            "{method} {target}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["error"]["code"], "invalid_path", "{target}: {v}");
        assert!(
            v["error"]["message"].is_string() && v["error"]["type"].is_string(),
            "{v}"
        );
    }
    assert!(
        up.requests().is_empty(),
        "forwarded: {:?}",
        up.requests().iter().map(|r| &r.target).collect::<Vec<_>>()
    );
    // dots that are not whole segments are ordinary paths
    for target in [
        "/v1/models/gpt-4.1",
        "/v1/files/file..abc",
        "/v1/models/.hidden",
    ] {
        let r = wire::get(tt.addr, target).await;
        assert_eq!(r.status, StatusCode::OK, "{target}: {}", r.text());
    }
    let targets: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/prefix/v1/models/gpt-4.1",
            "/prefix/v1/files/file..abc",
            "/prefix/v1/models/.hidden"
        ]
    );
    wire::assert_alive(&mut tt).await;
}

// ---- finding: a decompression bomb is inflated a whole frame at a time before
// ---- the cap is checked

#[tokio::test(flavor = "multi_thread")]
async fn a_decompression_bomb_is_forwarded_with_bounded_memory() {
    // valid JSON as far as it goes: a message whose content never ends
    let prefix = br#"{"id":"chatcmpl-bomb","object":"chat.completion","created":1750000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":""#;
    // the construction is a valid gzip stream (checked in full on a small one)
    let small = upstream::gzip_bomb(prefix, b'a', 3);
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&small[..]), &mut inflated)
        .expect("valid gzip");
    assert_eq!(inflated.len(), prefix.len() + 3 * MIB);
    assert!(inflated.starts_with(prefix) && inflated.ends_with(b"aaaa"));

    let bomb = upstream::gzip_bomb(prefix, b'a', 1024); // inflates to 1 GiB
    assert!(bomb.len() < 2 * MIB, "{} bytes", bomb.len());
    let b = bomb.clone();
    let up = Upstream::start(move |req: &Recorded| {
        if req.json()["messages"][0]["content"] == "bomb" {
            upstream::full(
                200,
                &[
                    ("content-type", "application/json"),
                    ("content-encoding", "gzip"),
                ],
                b.clone(),
            )
        } else {
            upstream::json(
                200,
                &upstream::chat_completion(
                    "gpt-4o-mini",
                    r#"{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}"#,
                    "",
                ),
            )
        }
    })
    .await;
    let mut tt = Tokentap::in_front_of(&up.base_url(), &[]);
    for _ in 0..10 {
        let r = wire::post_json(tt.addr, "/v1/chat/completions", NORMAL_CHAT).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let rss = tt.rss_kib();

    let req = wire::request(
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("accept-encoding", "gzip"),
        ],
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"bomb"}]}"#,
    );
    let r = wire::send(tt.addr, req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    assert!(
        r.body == bomb,
        "the client gets the compressed bytes unchanged"
    );

    let page = wire::metrics_until(tt.addr, |p| {
        wire::sum(p, "tokentap_parse_errors_total", &[("reason", "too_large")]) >= 1.0
    })
    .await;
    assert!(
        wire::sum(
            &page,
            "tokentap_parse_errors_total",
            &[("reason", "too_large")]
        ) >= 1.0,
        "the bomb is counted as too_large: {}",
        wire::grep(&page, "tokentap_parse_errors_total")
    );
    let peak = tt.peak_rss_kib();
    assert!(
        peak <= rss + 48 * 1024,
        "peak RSS {peak} KiB for a 1 GiB bomb (baseline {rss} KiB; the parse cap is 16 MiB)"
    );
    wire::assert_alive(&mut tt).await;
}

// ---- finding: an upstream head over 8 KiB is a 502 after the upstream already
// ---- ran (and billed) the call

#[tokio::test(flavor = "multi_thread")]
async fn upstream_heads_up_to_64_kib_pass_and_larger_are_502() {
    let up = Upstream::start(|req: &Recorded| {
        let kib: usize = req
            .header("x-test-head-kib")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // 1 KiB headers for small heads, a few big ones past 64 KiB
        let (count, size) = if kib <= 16 {
            (kib, 1024)
        } else {
            (kib / 16, 16 * 1024)
        };
        let pads: Vec<(String, String)> = (0..count)
            .map(|i| (format!("x-pad-{i}"), "p".repeat(size - 12)))
            .collect();
        let mut headers: Vec<(&str, &str)> =
            pads.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        headers.push(("content-type", "application/json"));
        upstream::full(
            200,
            &headers,
            upstream::chat_completion(
                "gpt-4o-mini",
                r#"{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}"#,
                "",
            ),
        )
    })
    .await;
    let mut tt = Tokentap::in_front_of(&up.base_url(), &[]);
    let chat = |kib: &str| {
        wire::request(
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                ("x-test-head-kib", kib),
            ],
            NORMAL_CHAT,
        )
    };
    for kib in ["16", "48"] {
        let r = wire::send(tt.addr, chat(kib)).await;
        assert_eq!(r.status, StatusCode::OK, "a {kib} KiB head: {}", r.text());
        let pads = r
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-pad-"))
            .count();
        assert!(
            pads >= 3,
            "{kib} KiB: the upstream's headers pass through ({pads})"
        );
        for (k, v) in &r.headers {
            if k.as_str().starts_with("x-pad-") {
                assert!(
                    v.as_bytes().iter().all(|b| *b == b'p') && v.len() > 1000,
                    "{k}"
                );
            }
        }
        assert!(r.text().contains("chatcmpl-t2"), "{}", r.text());
    }
    let page = wire::metrics_until(tt.addr, |p| {
        wire::sum(
            p,
            "llm_tokens_used_total",
            &[("model", "gpt-4o-mini"), ("type", "total")],
        ) >= 16.0
    })
    .await;
    assert_eq!(
        wire::sum(
            &page,
            "llm_tokens_used_total",
            &[("model", "gpt-4o-mini"), ("type", "total")]
        ),
        16.0,
        "both calls are recorded: {}",
        wire::grep(&page, "llm_tokens_used_total")
    );

    let r = wire::send(tt.addr, chat("80")).await;
    r.assert_openai_error(502, "upstream_header_too_large");
    wire::assert_alive(&mut tt).await;
}

// ---- finding ("usage injection fails open", b): an upstream that
// ---- answers 400 naming stream_options to an injected request

#[tokio::test(flavor = "multi_thread")]
async fn a_400_naming_stream_options_gets_the_original_request_once() {
    let up = Upstream::start(|req: &Recorded| {
        let body = req.json();
        if body["model"] == "strict-model" {
            // an upstream that rejects a parameter of the client's own request
            return upstream::json(
                400,
                r#"{"error":{"message":"Unsupported value: 'temperature' does not support 3 with this model.","type":"invalid_request_error","param":"temperature","code":"unsupported_value"}}"#,
            );
        }
        if body.get("stream_options").is_some() {
            return upstream::json(
                400,
                r#"{"error":{"message":"Unrecognized request argument supplied: stream_options","type":"invalid_request_error","param":null,"code":null}}"#,
            );
        }
        let events = upstream::chat_stream_events("gpt-4o-mini-2024-07-18", false, (0, 0));
        let mut steps = vec![Step::Send(upstream::sse_head(&[]))];
        for e in &events {
            steps.push(Step::Send(upstream::chunk(e.as_bytes())));
        }
        steps.push(Step::Send(upstream::last_chunk()));
        steps
    })
    .await;
    let mut tt = Tokentap::in_front_of(&up.base_url(), &[]);
    // spacing and key order of the client's own bytes
    let original = "{ \"model\": \"gpt-4o-mini\", \"stream\": true,\n  \"messages\": [{\"role\": \"user\", \"content\": \"Stream to me.\"}] }";
    let r = wire::post_json(tt.addr, "/v1/chat/completions", original).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.text(),
        upstream::chat_stream_events("gpt-4o-mini-2024-07-18", false, (0, 0)).concat()
    );
    let seen = up.requests();
    assert_eq!(
        seen.len(),
        2,
        "the injected request, then the original once"
    );
    assert!(
        seen[0].json().get("stream_options").is_some(),
        "first: injected"
    );
    assert_eq!(
        seen[1].body,
        original.as_bytes(),
        "second: the client's bytes, unchanged"
    );
    assert_eq!(seen[1].target, seen[0].target);
    assert_eq!(seen[1].header("authorization"), Some("Bearer sk-test"));

    // a 400 about anything else is the client's answer, not retried
    let strict = r#"{"model":"strict-model","stream":true,"temperature":3,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = wire::post_json(tt.addr, "/v1/chat/completions", strict).await;
    assert_eq!(r.status.as_u16(), 400);
    assert!(r.text().contains("unsupported_value"), "{}", r.text());
    let strict_calls = up
        .requests()
        .iter()
        .filter(|q| q.json()["model"] == "strict-model")
        .count();
    assert_eq!(
        strict_calls, 1,
        "a 400 that does not name stream_options is not retried"
    );
    wire::assert_alive(&mut tt).await;
}

// ---- "memory is bounded under hostile upstreams": one SSE event larger
// ---- than 1 MiB is passed through unparsed

#[tokio::test(flavor = "multi_thread")]
async fn an_sse_event_over_one_mib_passes_through_unparsed() {
    let huge = format!(
        "data: {{\"id\":\"chatcmpl-t1\",\"object\":\"chat.completion.chunk\",\"created\":1750000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"finish_reason\":null}}]}}\n\n",
        "z".repeat(2 * MIB)
    );
    let h = huge.clone();
    let up = Upstream::start(move |_: &Recorded| {
        let events = upstream::chat_stream_events("gpt-4o-mini", true, (9, 2));
        let mut steps = vec![Step::Send(upstream::sse_head(&[]))];
        steps.push(Step::Send(upstream::chunk(events[0].as_bytes())));
        steps.push(Step::Send(upstream::chunk(h.as_bytes())));
        for e in &events[1..] {
            steps.push(Step::Send(upstream::chunk(e.as_bytes())));
        }
        steps.push(Step::Send(upstream::last_chunk()));
        steps
    })
    .await;
    let mut tt = Tokentap::in_front_of(&up.base_url(), &[]);
    // the client asks for usage itself: nothing is injected, nothing stripped
    let body = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let r = wire::post_json(tt.addr, "/v1/chat/completions", body).await;
    assert_eq!(r.status, StatusCode::OK);
    let events = upstream::chat_stream_events("gpt-4o-mini", true, (9, 2));
    let expected = format!("{}{huge}{}", events[0], events[1..].concat());
    assert!(
        r.body == expected.as_bytes(),
        "the stream passes through byte for byte"
    );
    let page = wire::metrics_until(tt.addr, |p| {
        wire::sum(p, "tokentap_parse_errors_total", &[("reason", "too_large")]) >= 1.0
    })
    .await;
    assert!(
        wire::sum(
            &page,
            "tokentap_parse_errors_total",
            &[("reason", "too_large")]
        ) >= 1.0,
        "{}",
        wire::grep(&page, "tokentap_parse_errors_total")
    );
    wire::assert_alive(&mut tt).await;
}
