//! Several upstreams at once (docs/configuration.md, Providers), through the real binary: requests go by
//! path prefix (whole segments, the longest wins, the prefix removed upstream),
//! each call names its provider on spans (received over OTLP) and on `/metrics`;
//! Azure OpenAI's paths are accounted with the deployment as the request model
//! and its `api-key` header stays out of every signal.

#[path = "support/blackbox/mod.rs"]
mod blackbox;
mod support;

use std::process::Command;
use std::time::Duration;

use blackbox::child::{Tokentap, run_to_exit};
use blackbox::upstream::{self, Recorded, Step, Upstream};
use blackbox::wire::{self, request, send};
use support::otlp::{Receiver, Span};

const USAGE: &str = r#"{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}"#;

/// An upstream answering every request with a chat completion naming `model`.
async fn answering(model: &'static str) -> Upstream {
    Upstream::start(move |_: &Recorded| -> Vec<Step> {
        upstream::json(200, &upstream::chat_completion(model, USAGE, ""))
    })
    .await
}

fn targets(up: &Upstream) -> Vec<String> {
    up.requests().into_iter().map(|r| r.target).collect()
}

/// The span whose `url.path` (the client's path) is `path`.
fn span_for<'a>(spans: &'a [Span], path: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.str("url.path") == Some(path))
        .unwrap_or_else(|| panic!("a span for {path}: {spans:#?}"))
}

/// Env for exporting spans (and, with `all`, metrics and logs) to `r` over gRPC.
fn otlp_env(r: &Receiver, all: bool) -> Vec<(&'static str, String)> {
    let on = |yes: bool| if yes { "otlp" } else { "none" }.to_owned();
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", r.endpoint()),
        ("OTEL_TRACES_EXPORTER", on(true)),
        ("OTEL_METRICS_EXPORTER", on(all)),
        ("OTEL_LOGS_EXPORTER", on(all)),
        ("OTEL_METRIC_EXPORT_INTERVAL", "60000".to_owned()),
    ]
}

fn start(args: &[&str], env: &[(&'static str, String)]) -> Tokentap {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Tokentap::start_with(args, &env)
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_split_traffic_by_prefix_and_name_their_provider() {
    let default = answering("gpt-4o-mini").await;
    let groq = answering("llama-3.3-70b-versatile").await;
    let fast = answering("llama-3.1-8b-instant").await;
    let receiver = Receiver::grpc().await;
    let mut env = otlp_env(&receiver, false);
    // the env form: routes separated by spaces (the `--route` flags, when given, replace it)
    env.push((
        "TOKENTAP_ROUTES",
        format!(
            "/groq={}/openai,provider=groq  /groq/fast/={},provider=vllm",
            groq.base_url(),
            fast.base_url()
        ),
    ));
    let tt = start(&["--upstream", &default.base_url()], &env);
    let chat = r#"{"model":"llama-3.3-70b-versatile","messages":[{"role":"user","content":"hi"}]}"#;
    for path in [
        "/groq/v1/chat/completions?trace=1&x=%2Fgroq",
        "/groq/fast/v1/chat/completions",
        "/groqx/v1/chat/completions",
        "/v1/chat/completions",
    ] {
        let r = wire::post_json(tt.addr, path, chat).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let r = wire::get(tt.addr, "/groq").await;
    assert_eq!(r.status, 200);

    // the longest prefix won, and only it was removed; the query went along untouched
    assert_eq!(
        targets(&groq),
        ["/openai/v1/chat/completions?trace=1&x=%2Fgroq", "/openai/"]
    );
    assert_eq!(targets(&fast), ["/v1/chat/completions"]);
    // `/groqx` is not under `/groq`: the default route, path as the client sent it
    assert_eq!(
        targets(&default),
        ["/groqx/v1/chat/completions", "/v1/chat/completions"]
    );
    // the client's request otherwise unchanged
    let sent = &groq.requests()[0];
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(sent.body, chat.as_bytes());

    let page =
        wire::metrics_until(tt.addr, |p| wire::sum(p, "llm_requests_total", &[]) >= 4.0).await;
    let requests =
        |provider: &str| wire::sum(&page, "llm_requests_total", &[("provider", provider)]);
    assert_eq!(
        requests("groq"),
        1.0,
        "{}",
        wire::grep(&page, "llm_requests_total")
    );
    assert_eq!(requests("vllm"), 1.0);
    // an upstream on 127.0.0.1 is no known provider: `openai`
    assert_eq!(requests("openai"), 2.0);
    let tokens = |provider: &str| {
        wire::sum(
            &page,
            "gen_ai_client_token_usage_sum",
            &[
                ("gen_ai_provider_name", provider),
                ("gen_ai_token_type", "input"),
            ],
        )
    };
    assert_eq!(
        tokens("groq"),
        11.0,
        "{}",
        wire::grep(&page, "gen_ai_client_token_usage_sum")
    );
    assert_eq!(tokens("vllm"), 11.0);

    assert!(
        receiver
            .wait_for(Duration::from_secs(20), |r| r.spans().len() >= 5)
            .await,
        "spans: {:?}",
        receiver.spans()
    );
    let spans = receiver.spans();
    let groq_span = span_for(&spans, "/groq/v1/chat/completions");
    assert_eq!(groq_span.str("gen_ai.provider.name"), Some("groq"));
    assert_eq!(groq_span.str("server.address"), Some("127.0.0.1"));
    assert_eq!(
        groq_span.int("server.port"),
        Some(i64::from(groq.addr.port()))
    );
    assert_eq!(
        span_for(&spans, "/groq/fast/v1/chat/completions").str("gen_ai.provider.name"),
        Some("vllm")
    );
    for path in ["/groqx/v1/chat/completions", "/v1/chat/completions"] {
        let s = span_for(&spans, path);
        assert_eq!(s.str("gen_ai.provider.name"), Some("openai"), "{path}");
        assert_eq!(s.int("server.port"), Some(i64::from(default.addr.port())));
    }

    // the flag form, repeated
    let groq_route = format!("/groq={}/openai,provider=groq", groq.base_url());
    let fast_route = format!("/groq/fast={}", fast.base_url());
    let flags = Tokentap::in_front_of(
        &default.base_url(),
        &["--route", &groq_route, "--route", &fast_route],
    );
    let r = wire::post_json(flags.addr, "/groq/fast/v1/embeddings?x=1", "{}").await;
    assert_eq!(r.status, 200);
    let r = wire::post_json(flags.addr, "/groq/v1/embeddings", "{}").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        targets(&fast),
        ["/v1/chat/completions", "/v1/embeddings?x=1"]
    );
    assert_eq!(
        targets(&groq).last().map(String::as_str),
        Some("/openai/v1/embeddings")
    );
}

#[test]
fn bad_routes_are_one_line_config_errors() {
    for (args, env, names) in [
        (
            vec!["--route", "groq=http://127.0.0.1:1"],
            vec![],
            "--route",
        ),
        (vec!["--route", "/groq=ftp://x"], vec![], "--route"),
        (
            vec!["--route", "/groq=http://127.0.0.1:1,color=blue"],
            vec![],
            "unknown option",
        ),
        (
            vec![
                "--route",
                "/a=http://127.0.0.1:1",
                "--route",
                "/a/=http://127.0.0.1:2",
            ],
            vec![],
            "twice",
        ),
        (
            vec![],
            vec![("TOKENTAP_ROUTES", "/ok=http://x /bad")],
            "--route",
        ),
        (vec!["--provider", "open ai"], vec![], "--provider"),
    ] {
        let exit = run_to_exit(&args, &env);
        assert_eq!(exit.code, Some(2), "{args:?} {env:?}: {}", exit.stderr);
        assert!(!exit.started);
        assert_eq!(exit.stderr.trim_end().lines().count(), 1, "{}", exit.stderr);
        assert!(exit.stderr.contains(names), "{names}: {}", exit.stderr);
        assert!(!exit.stderr.contains("panicked"));
    }
}

const API_KEY: &str = "azk-TOKENTAP-apikey-8d3f1c9b7e";
const BEARER: &str = "sk-TOKENTAP-bearer-2a6e4c0f91";

/// SIGTERM (flushes every exporter), without waiting for the exit.
fn sigterm(tt: &Tokentap) {
    let status = Command::new("kill")
        .args(["-TERM", &tt.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_calls_are_accounted_and_api_key_is_never_recorded() {
    let receiver = Receiver::grpc().await;
    let tt = start(
        &[
            "--demo",
            "--demo-chunk-delay",
            "0ms",
            "--provider",
            "azure.ai.openai",
            "--log",
            "debug",
        ],
        &otlp_env(&receiver, true),
    );
    let headers = [
        ("content-type", "application/json"),
        ("api-key", API_KEY),
        ("authorization", &format!("Bearer {BEARER}") as &str),
    ];
    let azure =
        |path: &str, body: &str| send(tt.addr, request("POST", path, &headers, body.to_owned()));
    // no `model` in the body: the deployment names it
    let chat = azure(
        "/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21",
        r#"{"messages":[{"role":"user","content":"What is OpenTelemetry?"}]}"#,
    )
    .await;
    assert_eq!(chat.status, 200, "{}", chat.text());
    assert_eq!(chat.json()["model"], "gpt-4o-mini-2024-07-18");
    let stream = azure(
        "/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21",
        r#"{"stream":true,"messages":[{"role":"user","content":"Stream it."}]}"#,
    )
    .await;
    assert_eq!(stream.status, 200);
    let emb = azure(
        "/openai/deployments/embed/embeddings?api-version=2024-10-21",
        r#"{"input":"hello"}"#,
    )
    .await;
    assert_eq!(emb.status, 200, "{}", emb.text());
    assert_eq!(emb.json()["model"], "text-embedding-3-small");
    let v1 = azure(
        "/openai/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"v1"}]}"#,
    )
    .await;
    assert_eq!(v1.status, 200);
    // a failing call is logged at warn, with more detail
    let failed = azure(
        "/openai/deployments/demo-error-500/chat/completions?api-version=2024-10-21",
        r#"{"messages":[{"role":"user","content":"fail"}]}"#,
    )
    .await;
    assert_eq!(failed.status, 500);

    let page =
        wire::metrics_until(tt.addr, |p| wire::sum(p, "llm_requests_total", &[]) >= 5.0).await;
    let prod_chat = [("provider", "azure.ai.openai"), ("model", "prod-chat")];
    assert_eq!(
        wire::sum(&page, "llm_requests_total", &prod_chat),
        2.0,
        "{}",
        wire::grep(&page, "llm_requests_total")
    );
    // priced by the response model, though the deployment has no price
    assert!(
        wire::sum(&page, "llm_cost_usd_total", &[("model", "prod-chat")]) > 0.0,
        "{}",
        wire::grep(&page, "llm_cost")
    );
    assert_eq!(
        wire::sum(&page, "llm_requests_total", &[("model", "embed")]),
        1.0
    );

    sigterm(&tt);
    assert!(
        receiver
            .wait_for(Duration::from_secs(20), |r| {
                r.spans().len() >= 5
                    && r.metric_names().iter().any(|n| n == "llm_requests_total")
                    && !r.logs().is_empty()
            })
            .await,
        "spans {} metrics {:?} logs {}",
        receiver.spans().len(),
        receiver.metric_names(),
        receiver.logs().len()
    );
    let spans = receiver.spans();
    let span = spans
        .iter()
        .find(|s| {
            s.str("url.path") == Some("/openai/deployments/prod-chat/chat/completions")
                && s.attributes.get("gen_ai.request.stream")
                    == Some(&support::otlp::AttrValue::Bool(false))
        })
        .expect("the Azure chat span");
    println!("{span:#?}");
    assert_eq!(span.name, "chat prod-chat");
    assert_eq!(span.str("gen_ai.provider.name"), Some("azure.ai.openai"));
    assert_eq!(span.str("gen_ai.request.model"), Some("prod-chat"));
    assert_eq!(
        span.str("gen_ai.response.model"),
        Some("gpt-4o-mini-2024-07-18")
    );
    assert!(span.double("llm.cost.usd").is_some_and(|c| c > 0.0));
    println!("{}", wire::grep(&page, "prod-chat"));

    // let the drain threads copy the last lines
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stderr = tt.stderr();
    assert!(stderr.contains("DEBUG"), "debug logging was on: {stderr}");
    let raw = receiver.raw_bytes_seen();
    for secret in [API_KEY, BEARER] {
        assert!(!page.contains(secret), "{secret} on /metrics");
        assert!(!stderr.contains(secret), "{secret} in the log lines");
        assert!(!tt.stdout().contains(secret), "{secret} on stdout");
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} in what was exported over OTLP (spans, metrics, logs)"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_route_fails_alone() {
    let default = answering("gpt-4o-mini").await;
    // a port nothing listens on: bind one, then let it go
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let route = format!("/dead={dead_url},provider=deadco");
    let tt = Tokentap::in_front_of(&default.base_url(), &["--route", &route]);
    let r = wire::post_json(tt.addr, "/dead/v1/chat/completions", wire::NORMAL_CHAT).await;
    r.assert_openai_error(502, "connection_error");
    let r = wire::post_json(tt.addr, "/v1/chat/completions", wire::NORMAL_CHAT).await;
    assert_eq!(r.status, 200);
    let page =
        wire::metrics_until(tt.addr, |p| wire::sum(p, "llm_requests_total", &[]) >= 2.0).await;
    assert_eq!(
        wire::sum(
            &page,
            "llm_requests_total",
            &[("provider", "deadco"), ("status", "error")]
        ),
        1.0,
        "{}",
        wire::grep(&page, "llm_requests_total")
    );
    assert_eq!(
        wire::sum(
            &page,
            "llm_requests_total",
            &[("provider", "openai"), ("status", "success")]
        ),
        1.0
    );
}
