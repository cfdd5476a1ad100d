//! The live view's JSON and SSE API against the real binary (SPEC §13): every
//! field of a call, newest first, filters, the ring's size, one stream event
//! per call, totals equal to the calls made, the access token, content
//! capture, and a stream that ends when tokentap shuts down.

#[path = "support/blackbox/mod.rs"]
mod blackbox;

use std::collections::BTreeSet;
use std::time::Duration;

use blackbox::child::{Tokentap, run_to_exit};
use blackbox::wire::{self, IO_DEADLINE, within};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;

/// The fields of a call object, exactly (SPEC §13).
const FIELDS: [&str; 18] = [
    "time",
    "operation",
    "model",
    "response_model",
    "provider",
    "status",
    "http_status",
    "error_type",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "duration_seconds",
    "time_to_first_chunk_seconds",
    "project",
    "key_id",
    "trace_id",
    "span_id",
    "attributes",
];

fn chat(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"tell me about spans"}}]}}"#
    )
}

/// Makes a chat call through tokentap; returns its trace id (from `traceresponse`).
async fn call(tt: &Tokentap, model: &str, stream: bool) -> String {
    let r = wire::post_json(tt.addr, "/v1/chat/completions", chat(model, stream)).await;
    let tr = r
        .headers
        .get("traceresponse")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("traceresponse on {model}: {}", r.text()));
    tr.split('-').nth(1).expect("trace id").to_owned()
}

/// The whole start-up banner (its last line names `grep llm_`).
async fn banner(tt: &Tokentap) -> String {
    for _ in 0..500 {
        let out = tt.stdout();
        if out.contains("grep llm_") {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no complete banner: {}", tt.stdout());
}

async fn get_json(tt: &Tokentap, path: &str) -> Value {
    let r = wire::get(tt.addr, path).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

/// `/api/calls` once it holds `n` calls (a call is recorded as its body ends,
/// a moment after the client has read it).
async fn calls_when(tt: &Tokentap, path: &str, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        let v = get_json(tt, path).await;
        let list = v.as_array().expect("a JSON array").clone();
        if list.len() >= n {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{path} never held {n} calls");
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_listed_newest_first_with_every_field() {
    let tt = Tokentap::demo(&[]);
    let plan = [
        ("gpt-4o-mini", true),
        ("gpt-4o", false),
        ("demo-error-429", false),
        ("gpt-4.1-mini", true),
    ];
    let mut traces = Vec::new();
    for (model, stream) in plan {
        traces.push(call(&tt, model, stream).await);
        // one at a time, so "newest first" has one right answer
        calls_when(&tt, "/api/calls", traces.len()).await;
    }
    // a non-model endpoint is forwarded but is not a model call: not listed
    let models = wire::get(tt.addr, "/v1/models").await;
    assert_eq!(models.status, 200);
    let list = calls_when(&tt, "/api/calls", plan.len()).await;
    assert_eq!(list.len(), plan.len(), "{list:?}");

    let want: BTreeSet<&str> = FIELDS.iter().copied().collect();
    for (i, c) in list.iter().enumerate() {
        let have: BTreeSet<&str> = c
            .as_object()
            .expect("a call is an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(have, want, "fields of call {i}");
    }
    // newest first: the reverse of the order they were made, times not increasing
    let got: Vec<&str> = list
        .iter()
        .map(|c| c["trace_id"].as_str().expect("id"))
        .collect();
    let mut made: Vec<&str> = traces.iter().map(String::as_str).collect();
    made.reverse();
    assert_eq!(
        got, made,
        "order and trace ids (traceresponse of each call)"
    );
    let times: Vec<&str> = list
        .iter()
        .map(|c| c["time"].as_str().expect("time"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    for t in &times {
        // RFC 3339, UTC: 2026-12-01T10:00:00.123Z
        let b = t.as_bytes();
        assert!(
            t.len() == 24 && b[4] == b'-' && b[10] == b'T' && t.ends_with('Z'),
            "{t}"
        );
    }

    for c in &list {
        let a = &c["attributes"];
        assert_eq!(c["operation"], "chat");
        assert_eq!(c["provider"], "openai");
        assert_eq!(a["gen_ai.request.model"], c["model"]);
        assert_eq!(c["span_id"].as_str().map(str::len), Some(16));
        assert!(c["duration_seconds"].as_f64().is_some_and(|d| d > 0.0));
        if c["status"] == "success" {
            assert_eq!(c["http_status"], 200);
            assert_eq!(c["error_type"], Value::Null);
            assert_eq!(a["gen_ai.usage.input_tokens"], c["input_tokens"]);
            assert_eq!(a["gen_ai.usage.output_tokens"], c["output_tokens"]);
            assert!(c["input_tokens"].as_u64().is_some_and(|n| n > 0));
            assert_eq!(a["llm.cost.usd"], c["cost_usd"]);
            assert_eq!(a["gen_ai.response.model"], c["response_model"]);
        }
        // time to first chunk exactly for the streams, as on the span
        let streamed = c["attributes"]["gen_ai.request.stream"] == true;
        assert_eq!(
            c["time_to_first_chunk_seconds"].is_f64(),
            streamed && c["status"] == "success",
            "{c}"
        );
        assert_eq!(
            c["time_to_first_chunk_seconds"],
            a.get("gen_ai.response.time_to_first_chunk")
                .cloned()
                .unwrap_or(Value::Null)
        );
        // attribution (issue 15) fills these from the span attributes when it lands
        for (field, key) in [("project", "openai.project"), ("key_id", "tokentap.key_id")] {
            assert_eq!(
                c[field],
                a.get(key).cloned().unwrap_or(Value::Null),
                "{field}"
            );
        }
    }
    let err = &list[1];
    assert_eq!(err["model"], "demo-error-429");
    assert_eq!(err["status"], "error");
    assert_eq!(err["http_status"], 429);
    assert_eq!(err["error_type"], "rate_limit_exceeded");
    assert_eq!(err["attributes"]["error.type"], "rate_limit_exceeded");
    assert!(!list[1].to_string().contains("sk-test"), "no key anywhere");
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_and_limit_select_calls() {
    let tt = Tokentap::demo(&[]);
    for (model, stream) in [
        ("gpt-4o-mini", false),
        ("gpt-4o", true),
        ("gpt-4o-mini", true),
        ("demo-error-500", false),
        ("gpt-4o-mini", false),
    ] {
        call(&tt, model, stream).await;
    }
    let all = calls_when(&tt, "/api/calls", 5).await;
    let count = async |q: &str| get_json(&tt, &format!("/api/calls?{q}")).await;
    let mini = count("model=gpt-4o-mini").await;
    assert_eq!(mini.as_array().map(Vec::len), Some(3));
    assert!(
        mini.as_array()
            .into_iter()
            .flatten()
            .all(|c| c["model"] == "gpt-4o-mini")
    );
    let errors = count("status=error").await;
    assert_eq!(errors.as_array().map(Vec::len), Some(1));
    assert_eq!(errors[0]["model"], "demo-error-500");
    assert_eq!(
        count("status=success").await.as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(
        count("provider=openai").await.as_array().map(Vec::len),
        Some(5)
    );
    assert_eq!(
        count("provider=groq").await.as_array().map(Vec::len),
        Some(0)
    );
    assert_eq!(
        count("project=nope").await.as_array().map(Vec::len),
        Some(0)
    );
    // limit keeps the newest
    let two = count("limit=2").await;
    assert_eq!(two.as_array().map(Vec::len), Some(2));
    assert_eq!(two[0], all[0]);
    assert_eq!(two[1], all[1]);
    let combined = count("model=gpt-4o-mini&limit=1").await;
    assert_eq!(combined.as_array().map(Vec::len), Some(1));
    assert_eq!(combined[0], all[0]);
    // bad input: a clear 400, never a panic
    for q in ["limit=ten", "status=ok", "limit=-1"] {
        let r = wire::get(tt.addr, &format!("/api/calls?{q}")).await;
        assert_eq!(r.status, 400, "{q}");
        assert!(r.json()["detail"].is_string(), "{q}: {}", r.text());
    }
    let r = wire::get(tt.addr, "/api/summary?window=soon").await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ring_keeps_the_last_recent_calls_and_totals_stay_exact() {
    let tt = Tokentap::demo(&["--recent-calls", "3"]);
    let mut traces = Vec::new();
    for i in 0..7 {
        let model = if i % 2 == 0 { "gpt-4o-mini" } else { "gpt-4o" };
        traces.push(call(&tt, model, false).await);
    }
    // wait until the 7th is recorded: since-start totals count it
    for _ in 0..500 {
        if get_json(&tt, "/api/summary?window=all").await["calls"] == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let list = get_json(&tt, "/api/calls").await;
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["trace_id"].as_str().expect("id"))
        .collect();
    let newest: Vec<&str> = traces.iter().rev().take(3).map(String::as_str).collect();
    assert_eq!(ids, newest, "the ring holds the 3 newest calls");
    let all = get_json(&tt, "/api/summary?window=all").await;
    assert_eq!(all["calls"], 7, "{all}");
    assert_eq!(all["complete"], false, "4 calls left the ring: {all}");
    let by: Vec<(String, u64)> = all["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| {
            (
                m["model"].as_str().expect("model").to_owned(),
                m["calls"].as_u64().expect("n"),
            )
        })
        .collect();
    assert_eq!(
        by,
        [("gpt-4o".to_owned(), 3), ("gpt-4o-mini".to_owned(), 4)]
    );
    // the metrics agree
    let page = wire::metrics(tt.addr).await;
    assert_eq!(wire::sum(&page, "llm_requests_total", &[]), 7.0);
}

/// Reads SSE frames from `body` until `n` `call` events arrived; returns their data.
async fn read_events(body: &mut hyper::body::Incoming, buf: &mut String, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    while events.len() < n {
        let frame = within(IO_DEADLINE, "an SSE frame", body.frame())
            .await
            .expect("the stream goes on")
            .expect("a frame");
        if let Some(d) = frame.data_ref() {
            buf.push_str(std::str::from_utf8(d).expect("utf8"));
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut kind = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = Some(k.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d.to_owned());
                }
            }
            match (kind.as_deref(), data) {
                (Some("call"), Some(d)) => {
                    events.push(serde_json::from_str(&d).expect("event data is a call"))
                }
                (None, None) => {} // retry: / comments
                other => panic!("unexpected SSE block {other:?}: {block:?}"),
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_sends_one_event_per_call_and_totals_match() {
    let tt = Tokentap::demo(&[]);
    let resp = wire::open(
        tt.addr,
        wire::request("GET", "/api/calls/stream", &[], Bytes::new()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let errors_only = wire::open(
        tt.addr,
        wire::request("GET", "/api/calls/stream?status=error", &[], Bytes::new()),
    )
    .await;
    let mut body = resp.into_body();
    let mut err_body = errors_only.into_body();
    let plan = [
        ("gpt-4o-mini", true),
        ("gpt-4o", false),
        ("demo-error-429", false),
        ("gpt-4o-mini", false),
        ("gpt-4.1-mini", true),
        ("gpt-4o", true),
    ];
    let mut traces = Vec::new();
    for (model, stream) in plan {
        traces.push(call(&tt, model, stream).await);
    }
    let mut buf = String::new();
    let events = read_events(&mut body, &mut buf, plan.len()).await;
    let got: BTreeSet<&str> = events
        .iter()
        .map(|e| e["trace_id"].as_str().expect("id"))
        .collect();
    let made: BTreeSet<&str> = traces.iter().map(String::as_str).collect();
    assert_eq!(got, made, "one event per call, each call once");
    // each event is the call object /api/calls lists
    let list = calls_when(&tt, "/api/calls", plan.len()).await;
    for e in &events {
        assert!(list.contains(e), "{e} in /api/calls");
    }
    let mut ebuf = String::new();
    let errs = read_events(&mut err_body, &mut ebuf, 1).await;
    assert_eq!(errs[0]["model"], "demo-error-429");

    // the summary's totals are the calls made, and equal the sums of the listed calls
    let sum = |f: &str| list.iter().filter_map(|c| c[f].as_u64()).sum::<u64>();
    let cost: f64 = list.iter().filter_map(|c| c["cost_usd"].as_f64()).sum();
    for window in ["5m", "1h", "all"] {
        let s = get_json(&tt, &format!("/api/summary?window={window}")).await;
        assert_eq!(s["calls"], plan.len() as u64, "{window}: {s}");
        assert_eq!(s["errors"], 1, "{window}");
        assert_eq!(s["input_tokens"], sum("input_tokens"), "{window}");
        assert_eq!(s["output_tokens"], sum("output_tokens"), "{window}");
        let c = s["cost_usd"].as_f64().expect("cost");
        assert!((c - cost).abs() < 1e-12, "{window}: {c} vs {cost}");
        assert_eq!(s["complete"], true);
        let mini = s["models"]
            .as_array()
            .expect("models")
            .iter()
            .find(|m| m["model"] == "gpt-4o-mini")
            .expect("gpt-4o-mini")
            .clone();
        assert_eq!(mini["calls"], 2);
        let (p50, p95) = (
            mini["duration_p50_seconds"].as_f64().expect("p50"),
            mini["duration_p95_seconds"].as_f64().expect("p95"),
        );
        assert!(p50 > 0.0 && p50 <= p95, "{mini}");
        // one of the two was streamed: its first chunk is the only one
        assert!(mini["time_to_first_chunk_p50_seconds"].is_f64(), "{mini}");
    }
    let page = wire::metrics(tt.addr).await;
    assert_eq!(
        wire::sum(&page, "llm_requests_total", &[]),
        plan.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_token_guards_the_page_and_the_api() {
    let tt = Tokentap::demo(&["--access-token", "s3cr;et"]);
    for path in [
        "/ui",
        "/ui/app.js",
        "/api/calls",
        "/api/calls/stream",
        "/api/summary",
    ] {
        let r = wire::get(tt.addr, path).await;
        assert_eq!(r.status, 401, "{path}");
    }
    let r = wire::get(tt.addr, "/ui?token=wrong").await;
    assert_eq!(r.status, 401);
    // proxied traffic never needs it
    let t = call(&tt, "gpt-4o-mini", false).await;
    let bearer = [("authorization", "Bearer s3cr;et")];
    let r = wire::send(
        tt.addr,
        wire::request("GET", "/api/calls", &bearer, Bytes::new()),
    )
    .await;
    assert_eq!(r.status, 200);
    // the page's first visit: ?token= once, then a cookie the page's scripts can't read
    let r = wire::get(tt.addr, "/ui?token=s3cr%3Bet").await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(
        r.headers["location"], "/ui",
        "the token leaves the address bar"
    );
    let cookie = r.headers["set-cookie"].to_str().expect("ascii");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(cookie.contains("Path=/"), "{cookie}");
    let pair = cookie.split(';').next().expect("name=value");
    let with_cookie = [("cookie", pair)];
    for path in ["/ui", "/api/summary?window=all"] {
        let r = wire::send(
            tt.addr,
            wire::request("GET", path, &with_cookie, Bytes::new()),
        )
        .await;
        assert_eq!(r.status, 200, "{path} with the cookie");
    }
    let page = wire::send(
        tt.addr,
        wire::request("GET", "/ui", &with_cookie, Bytes::new()),
    )
    .await;
    assert!(
        !page.text().contains("s3cr"),
        "the token is not in the page"
    );
    let mut listed = false;
    for _ in 0..500 {
        let r = wire::send(
            tt.addr,
            wire::request("GET", "/api/calls", &with_cookie, Bytes::new()),
        )
        .await;
        assert_eq!(r.status, 200);
        if r.text().contains(&t) {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(listed, "the proxied call is listed");
}

#[tokio::test(flavor = "multi_thread")]
async fn prompt_text_appears_only_with_content_capture() {
    let secret_prompt = "tell me about spans";
    for (args, shown) in [(&[][..], false), (&["--capture-content"][..], true)] {
        let tt = Tokentap::demo(args);
        call(&tt, "gpt-4o-mini", false).await;
        let list = calls_when(&tt, "/api/calls", 1).await;
        let a = &list[0]["attributes"];
        assert_eq!(
            a.get("gen_ai.input.messages").is_some(),
            shown,
            "{args:?}: {a}"
        );
        assert_eq!(a.get("gen_ai.output.messages").is_some(), shown, "{args:?}");
        assert_eq!(
            list[0].to_string().contains(secret_prompt),
            shown,
            "{args:?}"
        );
        let page = wire::get(tt.addr, "/ui").await;
        let capture = if shown {
            "data-capture=\"on\""
        } else {
            "data-capture=\"off\""
        };
        assert!(page.text().contains(capture), "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_is_compiled_in_and_keeps_to_its_origin() {
    let tt = Tokentap::demo(&["--trace-url", "http://jaeger.test:16686/trace/{trace_id}"]);
    let out = banner(&tt).await;
    assert!(
        out.contains(&format!("  live:     {}/ui\n", tt.url())),
        "the banner names /ui: {out}"
    );
    let page = wire::get(tt.addr, "/ui").await;
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/html"))
    );
    let csp = page.headers["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text();
    assert!(html.contains("data-trace-url=\"http://jaeger.test:16686/trace/{trace_id}\""));
    // nothing is loaded from another host: every src/href is a path on this origin
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let url = part.split('"').next().unwrap_or("");
            assert!(
                url.starts_with('/') || url.starts_with("data:"),
                "{attr}{url}"
            );
        }
    }
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = wire::get(tt.addr, path).await;
        assert_eq!(r.status, 200);
        assert!(
            r.headers["content-type"]
                .to_str()
                .is_ok_and(|t| t.starts_with(kind))
        );
        // the SVG namespace is a name, not an address
        let text = r.text().replace("http://www.w3.org/2000/svg", "");
        assert!(!text.contains("://"), "{path} names no other host");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_ends_cleanly_at_shutdown() {
    // a grace period far longer than the test: an open stream must not hold the drain
    let mut tt = Tokentap::demo(&["--shutdown-grace", "300s"]);
    let resp = wire::open(
        tt.addr,
        wire::request("GET", "/api/calls/stream", &[], Bytes::new()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let t = call(&tt, "gpt-4o-mini", false).await;
    let mut buf = String::new();
    let events = read_events(&mut body, &mut buf, 1).await;
    assert_eq!(events[0]["trace_id"], t);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &tt.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    // the body ends (no error: a complete chunked response), then the process exits 0
    let rest = within(IO_DEADLINE, "the stream's end", body.collect()).await;
    assert!(rest.is_ok(), "the stream ended cleanly: {rest:?}");
    let status = tt
        .wait_for_exit(IO_DEADLINE)
        .expect("tokentap exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn recent_calls_zero_turns_the_view_off_and_bad_flags_exit_2() {
    let tt = Tokentap::demo(&["--recent-calls", "0"]);
    assert!(
        !banner(&tt).await.contains("/ui"),
        "no live view in the banner"
    );
    call(&tt, "gpt-4o-mini", false).await;
    for path in ["/ui", "/api/calls", "/api/summary"] {
        let r = wire::get(tt.addr, path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(
            r.text().contains("--recent-calls 0"),
            "{path}: {}",
            r.text()
        );
    }
    for (args, names) in [
        (&["--trace-url", "http://jaeger/trace/"][..], "--trace-url"),
        (&["--recent-calls", "lots"][..], "--recent-calls"),
    ] {
        let exit = run_to_exit(args, &[]);
        assert_eq!(exit.code, Some(2), "{args:?}: {}", exit.stderr);
        assert_eq!(exit.stderr.trim().lines().count(), 1, "{}", exit.stderr);
        assert!(exit.stderr.contains(names), "{}", exit.stderr);
    }
    let exit = run_to_exit(&["--demo"], &[("TOKENTAP_TRACE_URL", "ftp://x/{trace_id}")]);
    assert_eq!(exit.code, Some(2), "{}", exit.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_client_that_does_not_read_never_holds_up_traffic() {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let tt = Tokentap::demo(&[]);
    // subscribed, then not read while thousands of calls go through: more than
    // the socket buffers, the per-client queue and the broadcast backlog hold
    let resp = wire::open(
        tt.addr,
        wire::request("GET", "/api/calls/stream", &[], Bytes::new()),
    )
    .await;
    let mut body = resp.into_body();
    // (about 4,000 frames fit in the buffers on this machine's loopback)
    const CALLS: usize = 10_000;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let url = format!("{}/v1/chat/completions", tt.url());
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..CALLS / 8 {
                    let req = http::Request::post(&url)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(chat("gpt-4o-mini", false))))
                        .expect("request");
                    let r = client.request(req).await.expect("response");
                    assert_eq!(r.status(), 200);
                    r.into_body().collect().await.expect("body");
                }
            })
        })
        .collect();
    for w in workers {
        within(IO_DEADLINE, "the calls", w).await.expect("worker");
    }
    for _ in 0..500 {
        if get_json(&tt, "/api/summary?window=all").await["calls"] == CALLS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        get_json(&tt, "/api/summary?window=all").await["calls"],
        CALLS
    );

    // now read: every call was either delivered or counted as skipped, none twice
    let (mut events, mut skipped, mut buf) = (0usize, 0usize, String::new());
    while events + skipped < CALLS {
        let frame = within(IO_DEADLINE, "an SSE frame", body.frame())
            .await
            .expect("the stream goes on")
            .expect("a frame");
        if let Some(d) = frame.data_ref() {
            buf.push_str(std::str::from_utf8(d).expect("utf8"));
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.starts_with("event: call\n") {
                events += 1;
            } else if let Some(rest) = block.strip_prefix(": skipped ") {
                skipped += rest
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .expect("a count");
            }
        }
    }
    assert_eq!(events + skipped, CALLS);
    assert!(
        skipped > 0,
        "the slow client skipped calls ({events} delivered)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_chosen_names_are_cut_as_on_the_span() {
    let tt = Tokentap::demo(&[]);
    let huge = "m".repeat(200_000);
    let r = wire::post_json(tt.addr, "/v1/chat/completions", chat(&huge, false)).await;
    assert!(
        r.status.is_client_error() || r.status.is_success(),
        "{}",
        r.status
    );
    let list = calls_when(&tt, "/api/calls", 1).await;
    let model = list[0]["model"].as_str().expect("model");
    assert!(
        model.len() <= 1024 && huge.starts_with(model),
        "cut: {} bytes",
        model.len()
    );
    assert_eq!(list[0]["attributes"]["gen_ai.request.model"], model);
    assert!(
        list[0].to_string().len() < 16 * 1024,
        "one entry stays small"
    );
}
